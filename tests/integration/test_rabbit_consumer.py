"""RabbitBus subscriptions that lose their consumer without losing the connection."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from flotilla.bus import Delivery, Route
from flotilla.bus.rabbitmq import RabbitBus
from flotilla.schemas import DeleteRequest, DeploymentDeleteRequested, Message, new_id

from .test_rabbit_restart import _delete, restart_topology

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]


def message() -> DeploymentDeleteRequested:
    return DeploymentDeleteRequested.create(
        DeleteRequest(deployment_id=new_id(), requested_by="tests"), source="/tests/consumer"
    )


async def test_a_consumer_the_broker_cancels_consumes_again(amqp_url: str, unique: str) -> None:
    """The queue is deleted under the subscription (the broker cancels its consumer) and
    declared again: what is published to the new queue is handled, with no restart."""
    topology = restart_topology(unique)
    queue, exchange = topology.queues[0].name, topology.exchanges[0].name
    route = Route(exchange=exchange, routing_key="delete")
    received: asyncio.Queue[str] = asyncio.Queue()

    async def handler(message: Message, delivery: Delivery) -> None:
        await received.put(message.id)

    try:
        async with RabbitBus(url=amqp_url, policy=topology.policy, reconnect_interval=0.2) as bus:
            await bus.declare(topology)
            await bus.subscribe(queue, handler)
            first = message()
            await bus.publish(first, route)
            async with asyncio.timeout(10):
                assert await received.get() == first.id

            connection = await aio_pika.connect(amqp_url)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(queue)
            await asyncio.sleep(0.5)  # the broker's cancel reaches the subscription
            await bus.declare(topology)
            second = message()
            await bus.publish(second, route)
            async with asyncio.timeout(20):
                assert await received.get() == second.id
    finally:
        await _delete(amqp_url, topology)
