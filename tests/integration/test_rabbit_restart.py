"""RabbitBus across a broker restart: confirmed messages survive, the bus reconnects alone."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from flotilla.bus import (
    Binding,
    DeadLetterPolicy,
    Delivery,
    DeliveryPolicy,
    Exchange,
    Queue,
    RetryPolicy,
    Route,
    Topology,
)
from flotilla.bus.rabbitmq import WRITE_QUEUE_FRAMES, RabbitBus
from flotilla.schemas import DeleteRequest, DeploymentDeleteRequested, Message, new_id

pytestmark = [pytest.mark.rabbitmq, pytest.mark.disruptive, pytest.mark.timeout(240)]

PUBLISHERS = 4
BEFORE_RESTART = 100
AFTER_RESTART = 100


@dataclass(slots=True)
class Tally:
    """Message ids confirmed to publishers and seen by the consumer."""

    confirmed: set[str] = field(default_factory=set)
    confirmed_after_restart: int = 0
    received: set[str] = field(default_factory=set)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    restarted: bool = False

    async def on_confirmed(self, message_id: str) -> None:
        """A publish() returned."""
        async with self.changed:
            self.confirmed.add(message_id)
            self.confirmed_after_restart += self.restarted
            self.changed.notify_all()

    async def on_received(self, message: Message, delivery: Delivery) -> None:
        """The consumer handled a message."""
        async with self.changed:
            self.received.add(message.id)
            self.changed.notify_all()

    async def wait(self, condition: str, limit: float) -> None:
        """Wait until ``condition`` ("before", "after" or "all") holds."""
        predicates = {
            "before": lambda: len(self.confirmed) >= BEFORE_RESTART,
            "after": lambda: self.confirmed_after_restart >= AFTER_RESTART,
            "all": lambda: self.confirmed <= self.received,
        }
        async with asyncio.timeout(limit), self.changed:
            await self.changed.wait_for(predicates[condition])


def restart_topology(unique: str) -> Topology:
    """One exchange and one quorum queue, with the test's own retry and dead-letter names."""
    base = f"test.restart.{unique}"
    policy = DeliveryPolicy(
        retry=RetryPolicy(prefix=f"{base}.retry", delays=(timedelta(seconds=0.5),)),
        dead_letter=DeadLetterPolicy(exchange=f"{base}.dead", queue=f"{base}.dead"),
    )
    return Topology(
        policy=policy,
        exchanges=(Exchange(name=f"{base}.ex"),),
        queues=(Queue(name=f"{base}.work"),),
        bindings=(Binding(queue=f"{base}.work", exchange=f"{base}.ex", pattern="#"),),
    )


async def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl`` without blocking the loop the bus runs on."""
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        _, stderr = await process.communicate()
    assert process.returncode == 0, f"rabbitmqctl {' '.join(args)}: {stderr.decode()}"


async def wait_broker_up(amqp_url: str, limit: float = 120.0) -> None:
    """Poll until the broker accepts connections and can create quorum queues again.

    Connections come back before the quorum-queue subsystem does; a test that starts in
    between gets INTERNAL_ERROR, so the restart is only over once a probe queue works.
    """
    probe = f"flotilla.restart-probe.{uuid.uuid4().hex[:8]}"
    async with asyncio.timeout(limit):
        while True:
            try:
                connection = await aio_pika.connect(amqp_url, timeout=2)
                async with connection, connection.channel() as channel:
                    await channel.declare_queue(
                        probe, durable=True, arguments={"x-queue-type": "quorum"}
                    )
                    await channel.queue_delete(probe, if_unused=False, if_empty=False)
            except (OSError, aio_pika.exceptions.AMQPError, asyncio.CancelledError):
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
                await asyncio.sleep(0.5)  # poll interval, bounded by the deadline above
                continue
            return


@contextlib.asynccontextmanager
async def broker_stopped(amqp_url: str) -> AsyncIterator[None]:
    """Stop the RabbitMQ application for the block; always start it again."""
    await rabbitmqctl("stop_app")
    try:
        yield
    finally:
        await rabbitmqctl("start_app")
        await heal_dead_letter_supervisor()
        await wait_broker_up(amqp_url)


async def heal_dead_letter_supervisor() -> None:
    """Restart quorum queues' dead-letter supervisor if ``start_app`` left it down.

    RabbitMQ 3.10 sometimes comes back without it, and every queue with at-least-once
    dead-lettering then fails to start; later tests must not inherit that broker.
    """
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "-q",
        "eval",
        "whereis(rabbit_fifo_dlx_sup).",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await process.communicate()
    if out.strip() == b"undefined":
        await rabbitmqctl("eval", "supervisor:restart_child(rabbit_sup, rabbit_fifo_dlx_sup).")


async def publish_until(bus: RabbitBus, route: Route, tally: Tally, stop: asyncio.Event) -> None:
    """Publish fresh messages one after another, recording each confirmed one."""
    while not stop.is_set():
        message = DeploymentDeleteRequested.create(
            DeleteRequest(deployment_id=new_id(), requested_by="restart-test"),
            source="/flotilla/test",
        )
        await bus.publish(message, route)
        await tally.on_confirmed(message.id)


def make_bus(amqp_url: str, topology: Topology, name: str) -> RabbitBus:
    """A bus that reconnects quickly and waits out the restart when publishing."""
    return RabbitBus(
        url=amqp_url,
        policy=topology.policy,
        reconnect_interval=0.5,
        publish_timeout=120,
        name=name,
    )


async def test_confirmed_messages_survive_broker_restart(amqp_url: str, unique: str) -> None:
    """Every confirmed message is consumed after a broker restart and publishing resumes alone."""
    topology = restart_topology(unique)
    exchange, queue = topology.exchanges[0].name, topology.queues[0].name
    route = Route(exchange=exchange, routing_key="restart")
    tally, stop = Tally(), asyncio.Event()
    try:
        async with (
            make_bus(amqp_url, topology, "restart-pub") as publisher,
            make_bus(amqp_url, topology, "restart-sub") as consumer,
        ):
            await publisher.declare(topology)
            await consumer.subscribe(queue, tally.on_received, prefetch=32)
            async with asyncio.TaskGroup() as group:
                for _ in range(PUBLISHERS):
                    group.create_task(publish_until(publisher, route, tally, stop))
                await tally.wait("before", 30)
                async with broker_stopped(amqp_url):
                    pass
                tally.restarted = True
                await tally.wait("after", 90)
                # The connection made again after the restart has the same wide writer queue.
                assert publisher._connection is not None
                assert writer_queue_size(publisher._connection) == WRITE_QUEUE_FRAMES
                stop.set()
            await tally.wait("all", 90)
    finally:
        await wait_broker_up(amqp_url)
        await _delete(amqp_url, topology)
    assert tally.confirmed <= tally.received


def writer_queue_size(connection: AbstractRobustConnection) -> int:
    """How many frames the connection's aiormq writer may hold queued."""
    underlay = connection.transport
    assert underlay is not None
    return int(underlay.connection.write_queue.maxsize)


async def _delete(amqp_url: str, topology: Topology) -> None:
    exchanges, queues, _ = topology.declarations()
    connection = await aio_pika.connect(amqp_url)
    async with connection, connection.channel() as channel:
        for queue in queues:
            await channel.queue_delete(queue.name)
        for exchange in exchanges:
            await channel.exchange_delete(exchange.name)
