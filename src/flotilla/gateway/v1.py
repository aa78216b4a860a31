"""Flotilla's own REST API, under ``/v1``.

- ``POST /v1/deployments`` -> 201 ``DeploymentView``
- ``GET /v1/deployments?group=&owner=&status=&offset=&limit=`` -> ``DeploymentPage``
- ``GET /v1/deployments/{id}`` -> ``DeploymentView``
- ``DELETE /v1/deployments/{id}?force=true`` -> 202 ``DeploymentView``
- ``GET /v1/deployments/{id}/template`` -> the TOSCA text (``text/yaml``)
- ``GET /v1/deployments/{id}/attempts/{n}/log`` -> the attempt's log (``text/plain``)
- ``GET /v1/deployments/{id}/events?after=&until_final=`` -> Server-Sent Events
- ``GET /v1/sites`` -> ``SiteList``
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from aiohttp import web

from flotilla.gateway.auth import Identity
from flotilla.gateway.body import model_response, query_bool, query_int, read_json
from flotilla.gateway.deployment import Deployments, Listing, Submission
from flotilla.gateway.error import InvalidRequestError
from flotilla.gateway.metrics import GatewayMetrics
from flotilla.gateway.site import site_list
from flotilla.gateway.stream import EventStream
from flotilla.gateway.view import CreateDeployment, DeploymentPage, deployment_view, parse_body
from flotilla.scheduler.registry import SiteRegistry
from flotilla.schemas import DeploymentStatus

Identify = Callable[[web.Request], Awaitable[Identity]]


class V1Api:
    """The handlers of the ``/v1`` routes."""

    def __init__(
        self,
        *,
        deployments: Deployments,
        identify: Identify,
        stream: EventStream,
        sites: SiteRegistry,
        metrics: GatewayMetrics,
    ) -> None:
        self._deployments = deployments
        self._identify = identify
        self._stream = stream
        self._sites = sites
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        """The route table."""
        deployment = "/v1/deployments/{id}"
        return [
            web.post("/v1/deployments", self.create),
            web.get("/v1/deployments", self.list, allow_head=False),
            web.get(deployment, self.get, allow_head=False),
            web.delete(deployment, self.delete),
            web.get(f"{deployment}/template", self.template, allow_head=False),
            web.get(f"{deployment}/attempts/{{number}}/log", self.attempt_log, allow_head=False),
            web.get(f"{deployment}/events", self.events, allow_head=False),
            web.get("/v1/sites", self.sites, allow_head=False),
        ]

    async def create(self, request: web.Request) -> web.Response:
        """Validate the template, hand the request to the scheduler, answer 201."""
        who = await self._identify(request)
        body = parse_body(CreateDeployment, await read_json(request))
        snapshot = await self._deployments.create(who, submission(body))
        self._metrics.deployments_created.labels("v1").inc()
        location = f"/v1/deployments/{snapshot.record.id}"
        view = deployment_view(snapshot)
        return model_response(view, status=201, headers={"Location": location})

    async def list(self, request: web.Request) -> web.Response:
        """A page of the deployments the caller may see, newest first."""
        who = await self._identify(request)
        listing = Listing(
            owner=request.query.get("owner") or None,
            group=request.query.get("group") or None,
            status=_status(request.query.get("status")),
            offset=query_int(request, "offset", 0),
            limit=query_int(request, "limit", 50, low=1, high=500),
        )
        snapshots, total = await self._deployments.page(who, listing)
        page = DeploymentPage(
            items=[deployment_view(s) for s in snapshots],
            total=total,
            offset=listing.offset,
            limit=listing.limit,
        )
        return model_response(page)

    async def get(self, request: web.Request) -> web.Response:
        """One deployment with its attempts."""
        who = await self._identify(request)
        snapshot = await self._deployments.get(who, request.match_info["id"])
        return model_response(deployment_view(snapshot))

    async def delete(self, request: web.Request) -> web.Response:
        """Ask for the deployment to be deleted everywhere; 202 with its state."""
        who = await self._identify(request)
        force = query_bool(request, "force")
        snapshot = await self._deployments.delete(who, request.match_info["id"], force=force)
        return model_response(deployment_view(snapshot), status=202)

    async def template(self, request: web.Request) -> web.Response:
        """The TOSCA template the deployment was requested with."""
        who = await self._identify(request)
        text = await self._deployments.template(who, request.match_info["id"])
        return web.Response(text=text, content_type="text/yaml")

    async def attempt_log(self, request: web.Request) -> web.Response:
        """One attempt's log: its record and events with their times."""
        who = await self._identify(request)
        try:
            number = int(request.match_info["number"])
        except ValueError:
            raise InvalidRequestError("the attempt number must be an integer") from None
        text = await self._deployments.attempt_log(who, request.match_info["id"], number)
        return web.Response(text=text, content_type="text/plain")

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The deployment's events as Server-Sent Events, resumable with Last-Event-ID."""
        who = await self._identify(request)
        until_final = query_bool(request, "until_final")
        return await self._stream.serve(
            request, who, request.match_info["id"], until_final=until_final
        )

    async def sites(self, request: web.Request) -> web.Response:
        """The federation's sites: state, lease age, capabilities, quotas."""
        who = await self._identify(request)
        return model_response(site_list(self._sites, who))


def submission(body: CreateDeployment) -> Submission:
    """The API-neutral create request of a ``/v1`` body."""
    return Submission(
        template=body.template,
        inputs=body.inputs,
        group=body.group,
        site=body.site,
        sla_id=body.sla_id,
        timeout=_minutes(body.timeout_minutes),
        site_timeout=_minutes(body.site_timeout_minutes),
        max_sites=body.max_sites,
        keep_last_attempt=bool(body.keep_last_attempt),
        callback_url=body.callback_url,
    )


def _minutes(value: int | None) -> timedelta | None:
    return None if value is None else timedelta(minutes=value)


def _status(raw: str | None) -> DeploymentStatus | None:
    if not raw:
        return None
    try:
        return DeploymentStatus(raw.upper())
    except ValueError:
        names = ", ".join(s.value for s in DeploymentStatus)
        raise InvalidRequestError(f"unknown status {raw!r}; one of {names}") from None
