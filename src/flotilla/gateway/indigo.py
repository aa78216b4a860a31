"""The INDIGO PaaS Orchestrator's REST API, so its clients (orchent, dashboards) keep working.

Field names, the paged listing, the minute-precision dates (``yyyy-MM-dd'T'HH:mmZ``, UTC)
and the ``{code, title, message}`` errors follow the orchestrator's v3 contract:

- ``POST /deployments`` -> 201 ``DeploymentResource``
- ``GET /deployments?createdBy=&userGroup=&page=&size=`` -> paged ``{links, content, page}``
- ``GET /deployments/{id}`` -> ``DeploymentResource``
- ``DELETE /deployments/{id}?force=`` -> 204 (409 when already being deleted or deleted)
- ``GET /deployments/{id}/template`` -> the stored template (text)
- ``GET /deployments/{id}/log`` -> the deployment's log (text)
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Self

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator
from yarl import URL

from flotilla.gateway.body import model_response, query_bool, query_int, read_json
from flotilla.gateway.deployment import Deployments, Listing, Submission
from flotilla.gateway.metrics import GatewayMetrics
from flotilla.gateway.snapshot import Snapshot
from flotilla.gateway.v1 import Identify
from flotilla.gateway.view import parse_body
from flotilla.schemas import DeploymentStatus
from flotilla.schemas.deployment import HttpUrl

_MAX_SITES = 100


class IndigoModel(BaseModel):
    """Base of the INDIGO bodies: camelCase names on the wire, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class IndigoDeploymentRequest(IndigoModel):
    """``POST /deployments``: INDIGO's ``DeploymentRequest``."""

    template: Annotated[str, Field(min_length=1, description="TOSCA YAML text.")]
    parameters: dict[str, JsonValue] | None = Field(default=None, description="Template inputs.")
    callback: HttpUrl | None = Field(default=None, description="URL POSTed on a final status.")
    timeout_mins: Annotated[int, Field(ge=1)] | None = Field(default=None, alias="timeoutMins")
    provider_timeout_mins: Annotated[int, Field(ge=1)] | None = Field(
        default=None, alias="providerTimeoutMins"
    )
    max_providers_retry: Annotated[int, Field(ge=1)] | None = Field(
        default=None, alias="maxProvidersRetry"
    )
    keep_last_attempt: bool | None = Field(default=None, alias="keepLastAttempt")
    user_group: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None, alias="userGroup"
    )

    @model_validator(mode="after")
    def _provider_timeout_within_timeout(self) -> Self:
        overall, provider = self.timeout_mins, self.provider_timeout_mins
        if overall is not None and provider is not None and provider > overall:
            raise ValueError("providerTimeoutMins must be less than or equal to timeoutMins")
        return self


class Link(IndigoModel):
    """A HATEOAS link."""

    rel: str
    href: str


class CreatedBy(IndigoModel):
    """Who created a deployment: the token's subject and issuer."""

    subject: str
    issuer: str | None


class DeploymentResource(IndigoModel):
    """A deployment with INDIGO's field names."""

    uuid: str
    creation_time: str = Field(alias="creationTime", description="yyyy-MM-dd'T'HH:mmZ, UTC.")
    update_time: str = Field(alias="updateTime", description="yyyy-MM-dd'T'HH:mmZ, UTC.")
    physical_id: str | None = Field(default=None, alias="physicalId")
    status: DeploymentStatus
    status_reason: str | None = Field(alias="statusReason")
    task: str = Field(description="DEPLOYER while an operation runs, else NONE.")
    outputs: dict[str, Any]
    callback: str | None
    user_group: str = Field(alias="userGroup")
    cloud_provider_name: str | None = Field(alias="cloudProviderName")
    created_by: CreatedBy = Field(alias="createdBy")
    links: list[Link]


class PageMetadata(IndigoModel):
    """Spring's page metadata."""

    size: int
    total_elements: int = Field(alias="totalElements")
    total_pages: int = Field(alias="totalPages")
    number: int


class DeploymentResources(IndigoModel):
    """``GET /deployments``: one page of deployments."""

    links: list[Link]
    content: list[DeploymentResource]
    page: PageMetadata


class IndigoError(IndigoModel):
    """INDIGO's error body."""

    code: int
    title: str
    message: str


def indigo_time(moment: datetime) -> str:
    """A time as INDIGO writes it: UTC, to the minute, ``2025-01-31T10:12+0000``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M+0000")


def created_by(owner: str) -> CreatedBy:
    """Subject and issuer of an owner recorded as ``subject@issuer``."""
    subject, at, issuer = owner.rpartition("@")
    if not at or "://" not in issuer:
        return CreatedBy(subject=owner, issuer=None)
    return CreatedBy(subject=subject, issuer=issuer)


def resource(snapshot: Snapshot, base: URL) -> DeploymentResource:
    """The INDIGO view of a deployment; links are absolute, under ``base``."""
    record = snapshot.record
    self_url = str(base / "deployments" / record.id)
    values: dict[str, Any] = {
        "uuid": record.id,
        "creationTime": indigo_time(record.created_at),
        "updateTime": indigo_time(record.updated_at),
        "status": record.status,
        "statusReason": record.status_reason,
        "task": "DEPLOYER" if record.operation is not None else "NONE",
        "outputs": dict(record.outputs),
        "callback": record.request.callback_url,
        "userGroup": record.group,
        "cloudProviderName": snapshot.site,
        "createdBy": created_by(record.owner),
        "links": [
            Link(rel="self", href=self_url),
            Link(rel="template", href=f"{self_url}/template"),
            Link(rel="log", href=f"{self_url}/log"),
        ],
    }
    return DeploymentResource.model_validate(values)


class IndigoApi:
    """The handlers of the INDIGO-compatible ``/deployments`` routes."""

    def __init__(
        self, *, deployments: Deployments, identify: Identify, metrics: GatewayMetrics
    ) -> None:
        self._deployments = deployments
        self._identify = identify
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        """The route table."""
        return [
            web.post("/deployments", self.create),
            web.get("/deployments", self.list, allow_head=False),
            web.get("/deployments/{id}", self.get, allow_head=False),
            web.delete("/deployments/{id}", self.delete),
            web.get("/deployments/{id}/template", self.template, allow_head=False),
            web.get("/deployments/{id}/log", self.log, allow_head=False),
        ]

    async def create(self, request: web.Request) -> web.Response:
        """Create a deployment from an INDIGO ``DeploymentRequest``; 201."""
        who = await self._identify(request)
        body = parse_body(IndigoDeploymentRequest, await read_json(request))
        snapshot = await self._deployments.create(who, submission(body))
        self._metrics.deployments_created.labels("indigo").inc()
        created = resource(snapshot, _base(request))
        location = created.links[0].href
        return model_response(created, status=201, by_alias=True, headers={"Location": location})

    async def list(self, request: web.Request) -> web.Response:
        """A page of deployments, newest first: ``createdBy``, ``userGroup``, ``page``, ``size``."""
        who = await self._identify(request)
        number = query_int(request, "page", 0)
        size = query_int(request, "size", 10, low=1, high=1000)
        creator = request.query.get("createdBy") or None
        listing = Listing(
            owner=who.owner if creator == "me" else creator,
            group=request.query.get("userGroup") or None,
            offset=number * size,
            limit=size,
        )
        snapshots, total = await self._deployments.page(who, listing)
        pages = math.ceil(total / size)
        base = _base(request)
        body = DeploymentResources.model_validate(
            {
                "links": _page_links(request, number, pages),
                "content": [resource(s, base) for s in snapshots],
                "page": {
                    "size": size,
                    "totalElements": total,
                    "totalPages": pages,
                    "number": number,
                },
            }
        )
        return model_response(body, by_alias=True)

    async def get(self, request: web.Request) -> web.Response:
        """One deployment."""
        who = await self._identify(request)
        snapshot = await self._deployments.get(who, request.match_info["id"])
        return model_response(resource(snapshot, _base(request)), by_alias=True)

    async def delete(self, request: web.Request) -> web.Response:
        """Delete a deployment; 204, or 409 when it is already being deleted or deleted."""
        who = await self._identify(request)
        force = query_bool(request, "force")
        await self._deployments.delete(who, request.match_info["id"], force=force)
        return web.Response(status=204)

    async def template(self, request: web.Request) -> web.Response:
        """The template the deployment was created with."""
        who = await self._identify(request)
        text = await self._deployments.template(who, request.match_info["id"])
        return web.Response(text=text, content_type="text/plain")

    async def log(self, request: web.Request) -> web.Response:
        """The deployment's log: every event, then every attempt's outcome."""
        who = await self._identify(request)
        text = await self._deployments.log(who, request.match_info["id"])
        return web.Response(text=text, content_type="text/plain")


def submission(body: IndigoDeploymentRequest) -> Submission:
    """The API-neutral create request of an INDIGO body."""
    retries = body.max_providers_retry
    return Submission(
        template=body.template,
        inputs=body.parameters or {},
        group=body.user_group,
        timeout=_minutes(body.timeout_mins),
        site_timeout=_minutes(body.provider_timeout_mins),
        max_sites=None if retries is None else min(retries, _MAX_SITES),
        keep_last_attempt=bool(body.keep_last_attempt),
        callback_url=body.callback,
    )


def _minutes(value: int | None) -> timedelta | None:
    return None if value is None else timedelta(minutes=value)


def _base(request: web.Request) -> URL:
    return request.url.origin()


def _page_links(request: web.Request, number: int, pages: int) -> list[Link]:
    def at(page: int) -> str:
        return str(request.url.update_query(page=str(page)))

    links = [Link(rel="self", href=str(request.url))]
    if pages:
        links.insert(0, Link(rel="first", href=at(0)))
        if number > 0:
            links.insert(1, Link(rel="prev", href=at(min(number - 1, pages - 1))))
        if number + 1 < pages:
            links.append(Link(rel="next", href=at(number + 1)))
        links.append(Link(rel="last", href=at(pages - 1)))
    return links
