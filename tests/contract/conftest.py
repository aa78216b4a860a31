"""The bus contract harness: one open bus per adapter on a fresh, uuid-named topology.

Every contract test takes ``harness`` and runs once on ``MemoryBus`` and once on
``RabbitBus``, so both adapters are held to the same observable behaviour. The store
contract tests take ``store``: an empty MemoryStore, SQLite and PostgreSQL store in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from flotilla.bus import (
    Binding,
    Bus,
    DeadLetterPolicy,
    Delivery,
    DeliveryPolicy,
    Exchange,
    MemoryBus,
    Queue,
    RetryPolicy,
    Topology,
)
from flotilla.bus.memory import MemoryBroker
from flotilla.bus.rabbitmq import RabbitBus
from flotilla.scheduler.sql import SqlStore, upgrade_to_head
from flotilla.scheduler.store import MemoryStore, Store
from flotilla.schemas import DeleteRequest, DeploymentDeleteRequested, Message, new_id
from tests.contract.stores import _admin, _in_thread, _truncate, pg_url

USER = "guest"
WAIT = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Names:
    """The uuid-named entities of one test."""

    exchange: str
    work: str
    other: str
    dead_exchange: str
    dead_queue: str
    retry_prefix: str


@dataclass(slots=True)
class Recorder:
    """Collects what a handler saw and lets a test await a condition on it."""

    seen: list[tuple[Message | None, Delivery]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def record(self, message: Message | None, delivery: Delivery) -> None:
        """Remember one delivery and wake the waiters."""
        async with self.changed:
            self.seen.append((message, delivery))
            self.changed.notify_all()

    async def handler(self, message: Message, delivery: Delivery) -> None:
        """A decoding handler that records."""
        await self.record(message, delivery)

    async def raw_handler(self, delivery: Delivery) -> None:
        """A raw handler that records."""
        await self.record(None, delivery)

    def deliveries(self, message_id: str | None = None) -> list[Delivery]:
        """Deliveries seen so far, optionally only those of one message."""
        return [d for _, d in self.seen if message_id is None or d.message_id == message_id]

    async def wait_for(self, message_id: str, count: int = 1) -> list[Delivery]:
        """Wait until ``count`` deliveries of ``message_id`` were seen."""
        async with asyncio.timeout(WAIT), self.changed:
            await self.changed.wait_for(lambda: len(self.deliveries(message_id)) >= count)
        return self.deliveries(message_id)


RawPublish = Callable[[str, bytes, str], Awaitable[None]]


@dataclass(slots=True, kw_only=True)
class Harness:
    """An open bus of one adapter with its topology declared, and helpers around it."""

    kind: str
    bus: Bus
    names: Names
    policy: DeliveryPolicy
    make_bus: Callable[[], Bus]
    publish_raw: RawPublish
    """Publish bytes on the work exchange with a routing key and message id, bypassing encode."""


def make_names(unique: str) -> Names:
    """Names for one test, unique across runs and parallel workers."""
    base = f"test.contract.{unique}"
    return Names(
        exchange=f"{base}.ex",
        work=f"{base}.work",
        other=f"{base}.other",
        dead_exchange=f"{base}.dead",
        dead_queue=f"{base}.dead",
        retry_prefix=f"{base}.retry",
    )


def make_policy(names: Names) -> DeliveryPolicy:
    """Short retry delays so the retry path runs in well under a second."""
    return DeliveryPolicy(
        retry=RetryPolicy(
            prefix=names.retry_prefix,
            delays=(timedelta(seconds=0.2), timedelta(seconds=0.5)),
            max_retries=2,
        ),
        dead_letter=DeadLetterPolicy(exchange=names.dead_exchange, queue=names.dead_queue),
    )


def make_topology(names: Names, policy: DeliveryPolicy) -> Topology:
    """A topic exchange with two queues: ``work.*`` and ``other.#``."""
    return Topology(
        policy=policy,
        exchanges=(Exchange(name=names.exchange),),
        queues=(Queue(name=names.work), Queue(name=names.other)),
        bindings=(
            Binding(queue=names.work, exchange=names.exchange, pattern="work.*"),
            Binding(queue=names.other, exchange=names.exchange, pattern="other.#"),
        ),
    )


def make_message(requested_by: str = "contract") -> DeploymentDeleteRequested:
    """A valid message with a fresh id."""
    data = DeleteRequest(deployment_id=new_id(), requested_by=requested_by)
    return DeploymentDeleteRequested.create(data, source="/flotilla/test")


@pytest.fixture
def names(unique: str) -> Names:
    """This test's entity names."""
    return make_names(unique)


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def harness(
    request: pytest.FixtureRequest, names: Names, amqp_url: str
) -> AsyncIterator[Harness]:
    """An open bus of each adapter with the test's topology declared; closed afterwards."""
    policy = make_policy(names)
    topology = make_topology(names, policy)
    if request.param == "memory":
        broker = MemoryBroker()

        async def publish_memory(routing_key: str, body: bytes, message_id: str) -> None:
            delivery = Delivery(
                body=body,
                queue="",
                exchange=names.exchange,
                routing_key=routing_key,
                message_id=message_id,
                user_id=USER,
            )
            assert broker.route(delivery)

        async with MemoryBus(policy=policy, broker=broker, user=USER) as bus:
            await bus.declare(topology)
            yield Harness(
                kind="memory",
                bus=bus,
                names=names,
                policy=policy,
                make_bus=lambda: MemoryBus(policy=policy, broker=broker, user=USER),
                publish_raw=publish_memory,
            )
        return

    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(on_return_raises=True)

        async def publish_rabbit(routing_key: str, body: bytes, message_id: str) -> None:
            exchange = await channel.get_exchange(names.exchange, ensure=False)
            message = aio_pika.Message(body=body, message_id=message_id, user_id=USER)
            await exchange.publish(message, routing_key, mandatory=True)

        async with RabbitBus(url=amqp_url, policy=policy, name="contract") as bus:
            await bus.declare(topology)
            yield Harness(
                kind="rabbitmq",
                bus=bus,
                names=names,
                policy=policy,
                make_bus=lambda: RabbitBus(url=amqp_url, policy=policy),
                publish_raw=publish_rabbit,
            )
        await _delete_topology(connection, topology)
    finally:
        await connection.close()


async def _delete_topology(connection: Any, topology: Topology) -> None:
    """Remove the test's queues and exchanges so the broker does not accumulate them."""
    exchanges, queues, _ = topology.declarations()
    channel = await connection.channel()
    for queue in queues:
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await channel.queue_delete(queue.name)
    for exchange in exchanges:
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await channel.exchange_delete(exchange.name)
    await channel.close()


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this module, migrated to head; dropped afterwards."""
    name = f"flotilla_store_{uuid.uuid4().hex[:10]}"
    _in_thread(_admin(f'CREATE DATABASE "{name}"'))
    try:
        _in_thread(upgrade_to_head(pg_url(name)))
        yield name
    finally:
        _in_thread(_admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An empty store of each kind."""
    if request.param == "memory":
        yield MemoryStore()
        return
    async with SqlStore(await _empty_database(request, request.param, tmp_path)) as sql_store:
        yield sql_store


@pytest.fixture(params=["sqlite", "postgresql"])
async def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    """An empty SqlStore on each database."""
    async with SqlStore(await _empty_database(request, request.param, tmp_path)) as sql_store:
        yield sql_store


async def _empty_database(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    """The URL of a new SQLite file, or of this module's PostgreSQL database emptied."""
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'flotilla.db'}"
    url = pg_url(request.getfixturevalue("pg_database"))
    await _truncate(url)
    return url
