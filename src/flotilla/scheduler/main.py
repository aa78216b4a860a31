"""The scheduler process: wire the real adapters together and run until told to stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import structlog

from flotilla import runtime
from flotilla.broker import DELIVERY_POLICY
from flotilla.bus import Bus
from flotilla.bus.rabbitmq import RabbitBus
from flotilla.log import configure_logging
from flotilla.scheduler.leader import leader_election
from flotilla.scheduler.lifecycle import Lifecycle, LifecycleConfig, TemplateSource
from flotilla.scheduler.placement import Placer, Sla
from flotilla.scheduler.registry import SiteRegistry
from flotilla.scheduler.relay import OutboxRelay, Relay
from flotilla.scheduler.relay_process import BEHIND_AFTER, RelayProcess
from flotilla.scheduler.service import SchedulerService
from flotilla.scheduler.sla import load_slas
from flotilla.scheduler.sql import SqlStore
from flotilla.scheduler.store import Store
from flotilla.scheduler.tosca import TemplateParser
from flotilla.settings import Settings

_log = structlog.get_logger("flotilla.scheduler")


async def run_scheduler(settings: Settings) -> None:
    """Wait for leadership, then schedule until SIGINT/SIGTERM or leadership is lost."""
    config = settings.scheduler
    slas = load_slas(config.sla_file) if config.sla_file else []
    url = config.store_url.get_secret_value()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    election = leader_election(url)
    _log.info("scheduler_waiting_for_leadership")
    await _until(election.wait_leadership(), stop)
    if stop.is_set():
        await election.release()
        return
    _log.info("scheduler_leading", slas=len(slas))
    bus = RabbitBus.from_settings(settings.bus, policy=DELIVERY_POLICY, name="flotilla-scheduler")
    async with bus, SqlStore(url) as store, TemplateParser() as parser:
        relay = (
            RelayProcess(partial(open_relay, settings), loop=settings.event_loop)
            if config.relay_process
            else None
        )
        service = build_scheduler(
            settings, bus=bus, store=store, parser=parser, slas=slas, relay=relay
        )
        runtime.tune_collector()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(service.run())
            watch = tasks.create_task(election.run())
            await _until(election.lost.wait(), stop)
            if election.lost.is_set():
                _log.error("scheduler_lost_leadership")
            await service.shutdown()
            watch.cancel()
    await election.release()
    _log.info("scheduler_stopped")


def build_scheduler(
    settings: Settings,
    *,
    bus: Bus,
    store: Store,
    parser: TemplateSource,
    slas: list[Sla],
    verify_senders: bool | None = None,
    registry: SiteRegistry | None = None,
    relay: Relay | None = None,
) -> SchedulerService:
    """Wire a scheduler service from its settings and adapters (also used by ``flotilla up``).

    Without ``relay``, the outbox is published from this process.
    """
    config = settings.scheduler
    placer = Placer(registry or SiteRegistry(grace=config.grace), slas)
    lifecycle = Lifecycle(
        store=store,
        placer=placer,
        templates=parser,
        config=LifecycleConfig(
            site_timeout=config.site_timeout, max_sites=config.max_sites, grace=config.grace
        ),
    )
    return SchedulerService(
        bus=bus,
        store=store,
        lifecycle=lifecycle,
        placer=placer,
        relay=relay or OutboxRelay(store, bus),
        verify_senders=config.verify_senders if verify_senders is None else verify_senders,
        prefetch=config.prefetch,
    )


@asynccontextmanager
async def open_relay(settings: Settings) -> AsyncIterator[OutboxRelay]:
    """The relay of the scheduler's ``RelayProcess``, on connections of its own."""
    configure_logging(settings.log)
    bus = RabbitBus.from_settings(
        settings.bus, policy=DELIVERY_POLICY, name="flotilla-scheduler-relay"
    )
    url = settings.scheduler.store_url.get_secret_value()
    async with bus, SqlStore(url, migrate=False) as store:
        yield OutboxRelay(store, bus, behind_after=BEHIND_AFTER)


async def _until(work: Coroutine[Any, Any, object], stop: asyncio.Event) -> None:
    """Await ``work`` unless ``stop`` is set first (then ``work`` is cancelled)."""
    job = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({job, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (job, stopper):
            task.cancel()
        await asyncio.gather(job, stopper, return_exceptions=True)
