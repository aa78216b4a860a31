"""The agent process: read the site file, connect, and run the site until told to stop."""

from __future__ import annotations

import asyncio
import signal

import structlog

from flotilla.agents.config import AgentConfig
from flotilla.agents.inbox import Inbox
from flotilla.agents.registry import create_driver
from flotilla.agents.service import AgentService
from flotilla.broker import DELIVERY_POLICY, site_user
from flotilla.bus.rabbitmq import RabbitBus
from flotilla.settings import Settings

_log = structlog.get_logger("flotilla.agents")


def open_inbox(config: AgentConfig) -> Inbox:
    """The agent's inbox file under its state directory."""
    return Inbox(config.state_dir / f"{config.site}-inbox.sqlite3")


async def run_agent(config: AgentConfig, settings: Settings) -> None:
    """Run one site's agent on RabbitMQ until SIGINT or SIGTERM.

    The broker URL comes from the site file's ``broker.url`` reference (the site's own
    login, as ``flotilla broker add-site`` created it), else from ``FLOTILLA_BUS__URL``.
    """
    url = (config.broker.url.read() if config.broker.url else settings.bus.url).get_secret_value()
    driver = create_driver(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    bus = RabbitBus.from_settings(
        settings.bus, policy=DELIVERY_POLICY, name=f"{site_user(config.site)}-agent", url=url
    )
    async with bus, open_inbox(config) as inbox, driver:
        service = AgentService(config=config, driver=driver, bus=bus, inbox=inbox)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(service.run())
            await stop.wait()
            await service.shutdown()
