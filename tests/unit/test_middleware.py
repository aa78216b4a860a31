"""The middleware chain: log context per delivery, sender checks, idempotency."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog

from flotilla.broker import DELIVERY_POLICY, core_topology, route, site_topology, site_user
from flotilla.bus import Delivery, MemoryIdempotencyStore, idempotent
from flotilla.bus.memory import MemoryBroker, MemoryBus
from flotilla.schemas import (
    AttemptRef,
    DeploymentReleased,
    Message,
    Release,
    ReleaseDeployment,
    new_id,
)


async def _handle_one(
    bus: MemoryBus, queue: str, publish: MemoryBus, message: Any, **kwargs: Any
) -> dict[str, Any]:
    seen: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def handler(received: Message, delivery: Delivery) -> None:
        seen.set_result(structlog.contextvars.get_contextvars())

    await bus.subscribe(queue, handler, **kwargs)
    await publish.publish(message, route(message))
    async with asyncio.timeout(5):
        return await seen


async def test_handlers_log_with_message_deployment_and_site() -> None:
    """While a handler runs, log lines carry the message id, deployment id and site."""
    async with MemoryBus(policy=DELIVERY_POLICY) as bus:
        await bus.declare(core_topology())
        await bus.declare(site_topology("alpha"))
        did = new_id()
        data = Release(deployment_id=did, site="alpha", attempt=1, idempotency_key="k", reason="r")
        command = ReleaseDeployment.create(data, source="/test")
        context = await _handle_one(bus, "flotilla.site.alpha.commands", bus, command)
    assert context == {"message_id": command.id, "deployment_id": did, "site": "alpha"}
    assert structlog.contextvars.get_contextvars() == {}


async def test_a_duplicate_is_acknowledged_without_running_the_handler() -> None:
    """The idempotency middleware skips a message id it has already handled."""
    store = MemoryIdempotencyStore()
    calls: list[str] = []
    done = asyncio.Event()
    queue = "flotilla.site.alpha.commands"
    async with MemoryBus(policy=DELIVERY_POLICY) as bus:
        await bus.declare(core_topology())
        await bus.declare(site_topology("alpha"))

        async def handler(message: Message, delivery: Delivery) -> None:
            calls.append(message.id)
            if message.data.reason == "last":  # type: ignore[union-attr]
                done.set()

        # One delivery at a time, so the copies are handled in the order they were sent.
        await bus.subscribe(queue, handler, prefetch=1, middlewares=[idempotent(store)])
        command, last = (_release(reason) for reason in ("first", "last"))
        for message in (command, command, command, last):
            await bus.publish(message, route(message))
        async with asyncio.timeout(5):
            await done.wait()
    assert calls == [command.id, last.id]


def _release(reason: str) -> ReleaseDeployment:
    data = Release(
        deployment_id=new_id(), site="alpha", attempt=1, idempotency_key="k", reason=reason
    )
    return ReleaseDeployment.create(data, source="/test")


@pytest.mark.parametrize(
    ("user", "accepted"), [(site_user("alpha"), True), (site_user("beta"), False)]
)
async def test_sender_must_be_the_site_it_reports_for(user: str, accepted: bool) -> None:
    """A report about alpha is handled only when alpha's login sent it."""
    from flotilla.bus import sender_must_match

    broker = MemoryBroker()
    async with (
        MemoryBus(policy=DELIVERY_POLICY, broker=broker) as scheduler,
        MemoryBus(policy=DELIVERY_POLICY, broker=broker, user=user) as site,
    ):
        await scheduler.declare(core_topology())
        report = DeploymentReleased.create(
            AttemptRef(deployment_id=new_id(), site="alpha", attempt=1), source="/sites/x"
        )
        check = sender_must_match(lambda m: site_user(m.data.site))  # type: ignore[union-attr]
        if accepted:
            context = await _handle_one(
                scheduler, "flotilla.scheduler.reports", site, report, middlewares=[check]
            )
            assert context["site"] == "alpha"
        else:
            await scheduler.subscribe("flotilla.scheduler.reports", _never, middlewares=[check])
            await site.publish(report, route(report))
            async with asyncio.timeout(5):
                dead = await broker.queue(DELIVERY_POLICY.dead_letter.queue).items.get()
            assert "may not publish" in dead.delivery.headers["x-flotilla-reason"]


async def _never(message: Message, delivery: Delivery) -> None:
    raise AssertionError("a forged report reached the handler")
