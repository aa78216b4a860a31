"""Flotilla's AMQP connections: a burst of publishes has room in the writer's queue, and
leaves the client's socket in a few TCP segments."""

from __future__ import annotations

import asyncio
import socket

import psutil
import pytest

from flotilla.bus import Delivery, Route
from flotilla.bus.rabbitmq import WRITE_QUEUE_FRAMES, RabbitBus, connect_robust
from flotilla.schemas import DeleteRequest, DeploymentDeleteRequested, Message, new_id
from tests.unit.test_rabbitmq_wire import data_segments_sent

from .test_rabbit_restart import _delete, restart_topology, writer_queue_size

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]


async def test_connections_queue_a_burst_of_frames(amqp_url: str) -> None:
    """aiormq sizes the writer's queue from its class when a connection is made; a connection
    made through ``connect_robust`` has room for ``WRITE_QUEUE_FRAMES``, not aiormq's 10."""
    connection = await connect_robust(amqp_url)
    async with connection:
        assert writer_queue_size(connection) == WRITE_QUEUE_FRAMES


async def test_a_burst_wider_than_the_writer_queue_is_confirmed_and_delivered(
    amqp_url: str, unique: str
) -> None:
    """Twice as many publishes as the writer's queue holds, all at once: each is confirmed
    and each is delivered once."""
    topology = restart_topology(unique)
    queue, exchange = topology.queues[0].name, topology.exchanges[0].name
    route = Route(exchange=exchange, routing_key="burst")
    messages = [
        DeploymentDeleteRequested.create(
            DeleteRequest(deployment_id=new_id(), requested_by="tests"), source="/tests/burst"
        )
        for _ in range(2 * WRITE_QUEUE_FRAMES)
    ]
    received: list[str] = []
    done = asyncio.Event()

    async def handler(message: Message, delivery: Delivery) -> None:
        received.append(message.id)
        if len(received) == len(messages):
            done.set()

    try:
        async with RabbitBus(url=amqp_url, policy=topology.policy) as bus:
            await bus.declare(topology)
            await bus.subscribe(queue, handler, prefetch=64)
            async with asyncio.timeout(30):
                await asyncio.gather(*(bus.publish(m, route) for m in messages))
                await done.wait()
    finally:
        await _delete(amqp_url, topology)
    assert sorted(received) == sorted(m.id for m in messages)


async def test_a_burst_of_publishes_leaves_in_a_few_segments(amqp_url: str, unique: str) -> None:
    """A burst that fits the writer's queue is written in one pass of the event loop and goes
    out joined: the bus's socket sends far fewer TCP segments with data than there are
    publishes (a sixth to two thirds as many without joining; about five with it)."""
    topology = restart_topology(unique)
    route = Route(exchange=topology.exchanges[0].name, routing_key="burst")
    messages = [
        DeploymentDeleteRequested.create(
            DeleteRequest(deployment_id=new_id(), requested_by="tests"), source="/tests/burst"
        )
        for _ in range(WRITE_QUEUE_FRAMES)
    ]
    others = _broker_sockets()
    try:
        async with RabbitBus(url=amqp_url, policy=topology.policy) as bus:
            await bus.declare(topology)
            (fd,) = _broker_sockets() - others
            with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as sock:
                before = data_segments_sent(sock)
                async with asyncio.timeout(30):
                    await asyncio.gather(*(bus.publish(m, route) for m in messages))
                sent = data_segments_sent(sock) - before
    finally:
        await _delete(amqp_url, topology)
    assert sent < len(messages) / 16, f"{sent} segments for {len(messages)} publishes"


def _broker_sockets() -> set[int]:
    """This process's sockets connected to a broker on port 5672."""
    return {
        c.fd
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == 5672 and c.status == psutil.CONN_ESTABLISHED
    }
