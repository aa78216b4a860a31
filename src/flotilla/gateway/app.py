"""The gateway: Flotilla's REST API and the INDIGO-compatible one, as one aiohttp app.

``Gateway(...).build_app()`` returns the application; whoever runs it (``run_gateway`` as
its own process, ``flotilla up`` embedded) owns the server. The app starts the callback
sender with it and ends open event streams when it shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from flotilla.bus import Bus, BusState
from flotilla.errors import FlotillaError
from flotilla.gateway.auth import LOCAL_IDENTITY, Authenticator, Identity
from flotilla.gateway.body import model_response
from flotilla.gateway.callback import CallbackSender
from flotilla.gateway.deployment import Deployments
from flotilla.gateway.error import InvalidTokenError, http_status, problems
from flotilla.gateway.indigo import IndigoApi, IndigoError
from flotilla.gateway.metrics import GatewayMetrics
from flotilla.gateway.openapi import openapi_document
from flotilla.gateway.stream import EventStream
from flotilla.gateway.v1 import V1Api
from flotilla.gateway.view import ErrorBody, ErrorDetail, Problem
from flotilla.scheduler.lifecycle import TemplateSource
from flotilla.scheduler.registry import SiteRegistry
from flotilla.scheduler.store import Store
from flotilla.schemas import utc_now
from flotilla.settings import GatewaySettings

_log = structlog.get_logger("flotilla.gateway")
_PROBE_ID = "00000000-0000-0000-0000-000000000000"
_READY_TIMEOUT = 2.0
_MAX_BODY = 4 * 1024 * 1024


class Gateway:
    """The REST gateway over the scheduler's store and the bus.

    Args:
        store: The scheduler's store, read for views, listings, logs and events.
        bus: Where deployment and delete requests are published.
        parser: Validates templates before a request is published (``TemplateParser``).
        sites: The site registry behind ``/v1/sites``.
        auth: Checks bearer tokens; None turns authentication off (embedded mode), and
            every caller is then the admin-like local user of group ``local``.
        settings: Wait bounds, poll interval and callback settings.
        clock: The current time.
    """

    def __init__(
        self,
        store: Store,
        bus: Bus,
        parser: TemplateSource,
        sites: SiteRegistry,
        auth: Authenticator | None,
        settings: GatewaySettings,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._bus = bus
        self._sites = sites
        self._auth = auth
        self._settings = settings
        self._stop = asyncio.Event()
        self.metrics = GatewayMetrics()
        self.deployments = Deployments(
            store=store, bus=bus, templates=parser, wait=settings.create_wait, clock=clock
        )
        self.callbacks = CallbackSender(store=store, settings=settings, metrics=self.metrics)
        self._openapi: dict[str, Any] | None = None

    def build_app(self) -> web.Application:
        """The aiohttp application with every route, middleware and background task."""
        app = web.Application(
            middlewares=[self.metrics.middleware, _errors], client_max_size=_MAX_BODY
        )
        stream = EventStream(self.deployments, poll=self._settings.poll_interval, stop=self._stop)
        v1 = V1Api(
            deployments=self.deployments,
            identify=self.identify,
            stream=stream,
            sites=self._sites,
            metrics=self.metrics,
        )
        indigo = IndigoApi(
            deployments=self.deployments, identify=self.identify, metrics=self.metrics
        )
        app.add_routes(v1.routes())
        app.add_routes(indigo.routes())
        app.add_routes(
            [
                web.get("/healthz", self._healthz, allow_head=False),
                web.get("/readyz", self._readyz, allow_head=False),
                web.get("/metrics", self._metrics, allow_head=False),
                web.get("/openapi.json", self._openapi_json, allow_head=False),
            ]
        )
        app.cleanup_ctx.append(self._background)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def identify(self, request: web.Request) -> Identity:
        """The caller of a request (the local user when authentication is off)."""
        if self._auth is None:
            return LOCAL_IDENTITY
        return await self._auth.authenticate(request.headers.get("Authorization"))

    async def shutdown(self) -> None:
        """End open event streams and stop the callback sender; safe to call twice."""
        self._stop.set()
        await self.callbacks.shutdown()

    async def _background(self, app: web.Application) -> AsyncIterator[None]:
        if self._settings.callback_secret is None:
            _log.warning("callbacks_unsigned", reason="gateway.callback_secret is not set")
        await self.callbacks.prepare()
        task = asyncio.create_task(self.callbacks.run(), name="flotilla-gateway-callbacks")
        yield
        await self.shutdown()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _on_shutdown(self, app: web.Application) -> None:
        self._stop.set()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = {"store": "ok", "bus": "ok"}
        try:
            async with asyncio.timeout(_READY_TIMEOUT):
                await self._store.get(_PROBE_ID)
        except (FlotillaError, TimeoutError) as exc:
            checks["store"] = f"failing: {type(exc).__name__}"
        if self._bus.state is not BusState.OPEN:
            checks["bus"] = f"failing: the bus is {self._bus.state.value}"
        ready = all(value == "ok" for value in checks.values())
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return self.metrics.exposition()

    async def _openapi_json(self, request: web.Request) -> web.Response:
        if self._openapi is None:
            self._openapi = openapi_document()
        return web.json_response(self._openapi)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure with a JSON error in the caller's dialect; never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        phrase = HTTPStatus(exc.status).phrase
        return _error(request, exc.status, phrase.lower().replace(" ", "_"), exc.text or phrase)
    except FlotillaError as exc:
        status, code = http_status(exc)
        if status >= 500 and not exc.retryable:
            _log.error("request_failed", method=request.method, path=request.path, error=str(exc))
            return _error(request, status, code, "internal error; the gateway logged the details")
        _log.info("request_refused", method=request.method, path=request.path, status=status)
        response = _error(request, status, code, exc.message, problems(exc))
        if isinstance(exc, InvalidTokenError):
            response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response
    except Exception:
        _log.exception("request_failed", method=request.method, path=request.path)
        return _error(request, 500, "internal", "internal error; the gateway logged the details")


def _error(
    request: web.Request,
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
) -> web.Response:
    if _is_indigo(request.path):
        # INDIGO answers an invalid template with 400; its message names node and field.
        status = 400 if code == "invalid_template" else status
        body = IndigoError(code=status, title=HTTPStatus(status).phrase, message=message)
        return model_response(body, status=status)
    listed = None if details is None else [Problem.model_validate(d) for d in details]
    error = ErrorBody(error=ErrorDetail(code=code, message=message, problems=listed))
    return web.Response(
        text=error.model_dump_json(exclude_none=True),
        status=status,
        content_type="application/json",
    )


def _is_indigo(path: str) -> bool:
    return path == "/deployments" or path.startswith("/deployments/")
