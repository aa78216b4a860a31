"""Gateway, scheduler and site agents in one process: ``flotilla up`` and end-to-end tests.

Each component gets its own bus connection under its own login, exactly as when they run
as separate processes; only the process boundary is gone. On the in-memory bus the logins
are simulated, so the scheduler still checks that a site's reports come from that site.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import structlog
from aiohttp import web

from flotilla.agents.config import AgentConfig
from flotilla.agents.main import open_inbox
from flotilla.agents.registry import create_driver
from flotilla.agents.service import AgentService
from flotilla.broker import (
    DELIVERY_POLICY,
    SCHEDULER_USER,
    core_topology,
    site_topology,
    site_user,
)
from flotilla.bus import Bus
from flotilla.bus.memory import MemoryBroker, MemoryBus
from flotilla.gateway import Authenticator, Gateway, SiteBoard
from flotilla.scheduler.main import build_scheduler
from flotilla.scheduler.placement import Sla
from flotilla.scheduler.service import SchedulerService
from flotilla.scheduler.sql import SqlStore
from flotilla.scheduler.tosca import TemplateParser
from flotilla.settings import Settings

_log = structlog.get_logger("flotilla.stack")

BusFactory = Callable[[str], Bus]
"""Make an unopened bus for a login (the component's broker user)."""

GATEWAY_USER = "flotilla-gateway"


def memory_buses() -> BusFactory:
    """Buses on one in-memory broker, each under its own simulated login."""
    broker = MemoryBroker()
    return lambda user: MemoryBus(policy=DELIVERY_POLICY, broker=broker, user=user)


def rabbit_buses(settings: Settings, url: str | None = None) -> BusFactory:
    """Buses on RabbitMQ; every component uses the URL's login (one login for all)."""
    from flotilla.bus.rabbitmq import RabbitBus  # keeps aio-pika out of memory-only runs

    return lambda user: RabbitBus.from_settings(
        settings.bus, policy=DELIVERY_POLICY, name=user, url=url
    )


def embedded_slas(sites: Sequence[str], group: str = "local") -> list[Sla]:
    """SLAs that let ``group`` (the embedded mode's only group) use every given site."""
    return [Sla(id=f"sla-{group}-{site}", group=group, site=site) for site in sites]


@dataclass
class _Agent:
    config: AgentConfig
    service: AgentService
    task: asyncio.Task[None]
    resources: contextlib.AsyncExitStack


class Stack:
    """Run Flotilla's parts together until the ``async with`` block ends.

    Args:
        settings: Process settings (store URL, scheduler defaults, gateway settings).
        buses: Where each component's bus comes from.
        sites: Site files of the agents to run in this process (none: agents run elsewhere).
        slas: SLAs for placement.
        verify_senders: Require site reports to come from the site's own login; turn it
            off when every component shares one broker login.
        auth: Token checking for the gateway; None turns authentication off.
        gateway: Serve the REST gateway.
        host: Gateway address.
        port: Gateway port; 0 picks a free one (see ``url``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        buses: BusFactory,
        sites: Sequence[AgentConfig] = (),
        slas: Sequence[Sla] = (),
        verify_senders: bool = True,
        auth: Authenticator | None = None,
        gateway: bool = True,
        host: str = "127.0.0.1",
        port: int = 8080,
    ) -> None:
        self.settings = settings
        self._buses = buses
        self._site_configs = list(sites)
        self._slas = list(slas)
        self._verify = verify_senders
        self._auth = auth
        self._with_gateway = gateway
        self._host = host
        self._port = port
        self._resources = contextlib.AsyncExitStack()
        self._agents: dict[str, _Agent] = {}
        self._scheduler: SchedulerService | None = None
        self._scheduler_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.store: SqlStore | None = None
        self.registry = SiteBoard(grace=settings.scheduler.grace)
        self.url = ""

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._resources.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        for site in list(self._agents):
            await self.stop_agent(site)
        if self._scheduler is not None and self._scheduler_task is not None:
            await self._scheduler.shutdown()
            await asyncio.gather(self._scheduler_task, return_exceptions=True)
        await self._resources.aclose()

    async def _start(self) -> None:
        enter = self._resources.enter_async_context
        scheduler_bus = await enter(self._buses(SCHEDULER_USER))
        await scheduler_bus.declare(core_topology())
        for config in self._site_configs:
            await scheduler_bus.declare(site_topology(config.site))
        url = self.settings.scheduler.store_url.get_secret_value()
        self.store = store = await enter(SqlStore(url))
        parser = await enter(TemplateParser())
        self._scheduler = build_scheduler(
            self.settings,
            bus=scheduler_bus,
            store=store,
            parser=parser,
            slas=self._slas,
            verify_senders=self._verify,
            registry=self.registry,
        )
        self._scheduler_task = asyncio.create_task(self._scheduler.run(), name="scheduler")
        for config in self._site_configs:
            await self.start_agent(config)
        if self._with_gateway:
            gateway_bus = await enter(self._buses(GATEWAY_USER))
            gateway = Gateway(
                store=store,
                bus=gateway_bus,
                parser=parser,
                sites=self.registry,
                auth=self._auth,
                settings=self.settings.gateway,
            )
            self._runner = web.AppRunner(gateway.build_app(), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self._host, self._port)
            await site.start()
            port = self._runner.addresses[0][1] if self._port == 0 else self._port
            self.url = f"http://{self._host}:{port}"
            _log.info("gateway_listening", url=self.url)

    async def wait_for_sites(self, names: Sequence[str], timeout: float = 30.0) -> None:
        """Wait until the scheduler has heard a capacity report from every named site.

        Raises:
            TimeoutError: a site did not report in time.
        """

        def missing() -> bool:
            views = [self.registry.get(name) for name in names]
            return any(view is None or view.capacity is None for view in views)

        async with asyncio.timeout(timeout):
            while missing():  # noqa: ASYNC110 - the registry has no change signal to wait on
                await asyncio.sleep(0.05)

    async def start_agent(self, config: AgentConfig) -> None:
        """Start (or start again) the agent of one site."""
        resources = contextlib.AsyncExitStack()
        try:
            bus = await resources.enter_async_context(self._buses(site_user(config.site)))
            inbox = await resources.enter_async_context(open_inbox(config))
            driver = await resources.enter_async_context(create_driver(config))
        except BaseException:
            await resources.aclose()
            raise
        service = AgentService(config=config, driver=driver, bus=bus, inbox=inbox)
        task = asyncio.create_task(service.run(), name=f"agent-{config.site}")
        self._agents[config.site] = _Agent(config, service, task, resources)

    async def stop_agent(self, site: str) -> None:
        """Stop one site's agent; its unfinished work stays in its inbox."""
        agent = self._agents.pop(site)
        await agent.service.shutdown()
        await asyncio.gather(agent.task, return_exceptions=True)
        await agent.resources.aclose()
