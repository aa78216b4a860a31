"""The gateway process: wire the real adapters together and serve until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from functools import partial

import structlog
from aiohttp import web

from flotilla.broker import DELIVERY_POLICY, gateway_topology, site_user
from flotilla.bus import Middleware, sender_must_match
from flotilla.bus.rabbitmq import RabbitBus
from flotilla.gateway.app import Gateway
from flotilla.gateway.auth import Authenticator, OidcAuthenticator
from flotilla.gateway.site import SiteBoard, apply_heartbeat
from flotilla.scheduler.sql import SqlStore
from flotilla.scheduler.tosca import TemplateParser
from flotilla.schemas import Message
from flotilla.settings import Settings

_log = structlog.get_logger("flotilla.gateway")
GATEWAY_NAME = "flotilla-gateway"


async def run_gateway(settings: Settings) -> None:
    """Serve the REST gateway until SIGINT or SIGTERM.

    The gateway reads the scheduler's database (``FLOTILLA_SCHEDULER__STORE_URL``),
    publishes requests on RabbitMQ (``FLOTILLA_BUS__URL``) and keeps its own view of the
    sites from its heartbeat queue (``FLOTILLA_GATEWAY__HEARTBEAT_QUEUE``).

    Raises:
        ConfigurationError: authentication is on and no issuer is configured.
    """
    config = settings.gateway
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    board = SiteBoard(grace=settings.scheduler.grace)
    async with contextlib.AsyncExitStack() as stack:
        auth: Authenticator | None = None
        if config.auth:
            auth = await stack.enter_async_context(OidcAuthenticator.from_settings(config))
        else:
            _log.warning("gateway_auth_disabled", identity="local")
        bus = RabbitBus.from_settings(settings.bus, policy=DELIVERY_POLICY, name=GATEWAY_NAME)
        await stack.enter_async_context(bus)
        url = settings.scheduler.store_url.get_secret_value()
        store = await stack.enter_async_context(SqlStore(url))
        parser = await stack.enter_async_context(TemplateParser())
        await bus.declare(gateway_topology(config.heartbeat_queue))
        checks: list[Middleware] = (
            [sender_must_match(_site_sender)] if settings.scheduler.verify_senders else []
        )
        feed = await bus.subscribe(
            config.heartbeat_queue,
            partial(apply_heartbeat, board),
            prefetch=settings.bus.prefetch,
            middlewares=checks,
        )
        stack.push_async_callback(feed.stop)
        gateway = Gateway(store, bus, parser, board, auth, config)
        runner = web.AppRunner(gateway.build_app(), access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, config.host, config.port).start()
        _log.info("gateway_listening", host=config.host, port=config.port, auth=config.auth)
        await stop.wait()
        _log.info("gateway_stopping")
    _log.info("gateway_stopped")


def _site_sender(message: Message) -> str | None:
    """The broker user a site's heartbeat must come from."""
    site = getattr(message.data, "site", None)
    return site_user(site) if isinstance(site, str) else None
