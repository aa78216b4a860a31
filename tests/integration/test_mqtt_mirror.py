"""The MQTT mirror against a private Mosquitto that the tests start, kill and restart.

The machine's shared Mosquitto on port 1883 is never touched: each test runs its own broker
on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import socket
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

import aiomqtt
import httpx
import pytest

from flotilla.broker.topology import EVENTS, mirror_topology, route
from flotilla.bus import (
    Binding,
    Bus,
    DeadLetterPolicy,
    Delivery,
    DeliveryPolicy,
    Exchange,
    Handler,
    MemoryBus,
    Middleware,
    Queue,
    RetryPolicy,
    Route,
    Topology,
)
from flotilla.bus.memory import MemorySubscription
from flotilla.bus.mqtt import MirrorPolicy, MqttMirror, mqtt_topic
from flotilla.bus.rabbitmq import RabbitBus
from flotilla.schemas import (
    DeploymentStatus,
    DeploymentStatusChanged,
    Message,
    StatusChange,
    decode,
    new_id,
)
from flotilla.settings import MqttSettings

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]

MOSQUITTO = "/usr/sbin/mosquitto"
WAIT = 15.0
STATUSES = (
    DeploymentStatus.CREATE_IN_PROGRESS,
    DeploymentStatus.CREATE_COMPLETE,
    DeploymentStatus.DELETE_IN_PROGRESS,
)


class PrivateMosquitto:
    """A Mosquitto process of this test alone, on a fixed loopback port across restarts."""

    def __init__(self, directory: Path, *, persistence: bool) -> None:
        self.port = _free_port()
        self._config = directory / "mosquitto.conf"
        self._config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            f"persistence {'true' if persistence else 'false'}\n"
            f"persistence_location {directory}/\n"
            f"user {getpass.getuser()}\n"
            f"log_dest file {directory / 'mosquitto.log'}\n"
        )
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        self._process = await asyncio.create_subprocess_exec(
            MOSQUITTO,
            "-c",
            str(self._config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await _poll_until_connectable(self.port)

    async def stop(self) -> None:
        """Terminate the broker (it saves its persistent sessions) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        async with asyncio.timeout(WAIT):
            await process.wait()


class Inbox:
    """Mirrored events received by subscribers, by message id, with their topics."""

    def __init__(self) -> None:
        self.topics: dict[str, str] = {}
        self.messages: dict[str, Message] = {}
        self._changed = asyncio.Condition()

    async def collect(self, client: aiomqtt.Client) -> None:
        """Record every message of ``client`` until its connection is lost."""
        with contextlib.suppress(aiomqtt.MqttError):
            async for received in client.messages:
                assert isinstance(received.payload, bytes)
                message = decode(received.payload)
                async with self._changed:
                    self.topics[message.id] = str(received.topic)
                    self.messages[message.id] = message
                    self._changed.notify_all()

    async def wait_ids(self, ids: Sequence[str]) -> None:
        """Wait until every id in ``ids`` was received."""
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: set(ids) <= self.topics.keys())


class RecordingBus(MemoryBus):
    """A memory bus that remembers which messages were delivered again after a failure."""

    def __init__(self, *, policy: DeliveryPolicy) -> None:
        super().__init__(policy=policy)
        self.retried: set[str] = set()
        self._changed = asyncio.Condition()

    async def wait_retried(self, ids: Sequence[str]) -> None:
        """Wait until every id in ``ids`` was delivered again after a failure."""
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: set(ids) <= self.retried)

    async def subscribe(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int = 16,
        middlewares: Sequence[Middleware] = (),
    ) -> MemorySubscription:
        """Subscribe ``handler``, noting each delivery that is a retry."""

        async def recording(message: Message, delivery: Delivery) -> None:
            if delivery.retries:
                async with self._changed:
                    self.retried.add(message.id)
                    self._changed.notify_all()
            await handler(message, delivery)

        return await super().subscribe(queue, recording, prefetch=prefetch, middlewares=middlewares)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _poll_until_connectable(port: int) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return


def _policy(unique: str) -> DeliveryPolicy:
    return DeliveryPolicy(
        retry=RetryPolicy(
            prefix=f"test.{unique}.retry",
            delays=(timedelta(milliseconds=50), timedelta(milliseconds=200)),
            max_retries=1000,
        ),
        dead_letter=DeadLetterPolicy(exchange=f"test.{unique}.dlx", queue=f"test.{unique}.dlq"),
    )


def _events(count: int) -> list[DeploymentStatusChanged]:
    return [
        DeploymentStatusChanged.create(
            StatusChange(
                deployment_id=new_id(),
                status=STATUSES[n % len(STATUSES)],
                owner="alice",
                group="physics",
            ),
            source="/flotilla/test",
        )
        for n in range(count)
    ]


async def _publish(
    bus: Bus, events: Sequence[DeploymentStatusChanged], *, exchange: str = EVENTS
) -> list[str]:
    for event in events:
        assert route(event).exchange == EVENTS
        await bus.publish(event, Route(exchange=exchange, routing_key=route(event).routing_key))
    return [event.id for event in events]


@contextlib.asynccontextmanager
async def _subscriber(
    port: int, prefix: str, inbox: Inbox, *, identifier: str | None = None
) -> AsyncIterator[aiomqtt.Client]:
    """A QoS 1 subscriber on the mirrored topics, feeding ``inbox`` in a task."""
    persistent = identifier is not None
    client = aiomqtt.Client(
        "127.0.0.1", port, identifier=identifier, clean_session=not persistent, timeout=WAIT
    )
    async with client, asyncio.TaskGroup() as tasks:
        await client.subscribe(f"{prefix}/#", qos=1)
        collector = tasks.create_task(inbox.collect(client))
        try:
            yield client
        finally:
            collector.cancel()


async def _declare_memory_mirror(bus: MemoryBus, unique: str) -> str:
    """Declare the mirror topology, with the test's delivery policy, and return its queue."""
    queue = f"test.{unique}.mqtt-mirror"
    await bus.declare(dataclasses.replace(mirror_topology(queue), policy=bus.policy))
    return queue


@contextlib.asynccontextmanager
async def _running_mirror(
    bus: Bus, port: int, prefix: str, queue: str
) -> AsyncIterator[MqttMirror]:
    """A connected mirror of ``queue``, shut down on exit."""
    settings = MqttSettings(host="127.0.0.1", port=port, topic_prefix=prefix)
    policy = MirrorPolicy(
        publish_timeout=timedelta(seconds=2),
        connection_wait=timedelta(milliseconds=100),
        reconnect_delay=timedelta(milliseconds=50),
        max_reconnect_delay=timedelta(milliseconds=500),
    )
    mirror = MqttMirror(bus, settings, queue=queue, policy=policy)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(mirror.run())
        try:
            async with asyncio.timeout(WAIT):
                await mirror.wait_connected()
            yield mirror
        finally:
            mirror.shutdown()


@pytest.fixture
async def rabbit_topology(unique: str, management_url: str) -> AsyncIterator[Topology]:
    """A uuid-named events exchange and mirror queue on RabbitMQ, deleted afterwards."""
    base = f"test.mirror.{unique}"
    topology = Topology(
        policy=_policy(unique),
        exchanges=(Exchange(name=f"{base}.events"),),
        queues=(Queue(name=f"{base}.mqtt-mirror"),),
        bindings=(Binding(queue=f"{base}.mqtt-mirror", exchange=f"{base}.events", pattern="#"),),
    )
    yield topology
    exchanges, queues, _ = topology.declarations()
    async with httpx.AsyncClient(base_url=management_url, auth=("guest", "guest")) as api:
        for queue in queues:
            await api.delete(f"/api/queues/%2F/{queue.name}")
        for exchange in exchanges:
            await api.delete(f"/api/exchanges/%2F/{exchange.name}")


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[PrivateMosquitto]:
    """A private Mosquitto without persistence."""
    broker = PrivateMosquitto(tmp_path, persistence=False)
    await broker.start()
    yield broker
    await broker.stop()


@pytest.fixture
async def persistent_mosquitto(tmp_path: Path) -> AsyncIterator[PrivateMosquitto]:
    """A private Mosquitto that keeps persistent sessions and their queues across a restart."""
    broker = PrivateMosquitto(tmp_path, persistence=True)
    await broker.start()
    yield broker
    await broker.stop()


async def test_events_are_mirrored_to_mapped_topics(
    mosquitto: PrivateMosquitto, unique: str
) -> None:
    """Events published on the events exchange reach MQTT subscribers as the same JSON."""
    prefix = f"flotilla-test/{unique}/events"
    inbox = Inbox()
    events = _events(6)
    async with (
        RecordingBus(policy=_policy(unique)) as bus,
        _subscriber(mosquitto.port, prefix, inbox),
        _running_mirror(bus, mosquitto.port, prefix, await _declare_memory_mirror(bus, unique)),
    ):
        await inbox.wait_ids(await _publish(bus, events))

    for event in events:
        assert inbox.messages[event.id] == event
        assert inbox.topics[event.id] == mqtt_topic(prefix, route(event).routing_key)
        assert inbox.topics[event.id].endswith(f"/status_changed/{event.data.status.lower()}")


async def test_events_published_while_mosquitto_is_down_arrive_after_restart(
    persistent_mosquitto: PrivateMosquitto, unique: str
) -> None:
    """After Mosquitto restarts, the mirror reconnects and delivers what failed meanwhile."""
    broker = persistent_mosquitto
    prefix = f"flotilla-test/{unique}/events"
    inbox = Inbox()
    subscriber_id = f"flotilla-test-{unique}"
    async with (
        RecordingBus(policy=_policy(unique)) as bus,
        _running_mirror(bus, broker.port, prefix, await _declare_memory_mirror(bus, unique)),
    ):
        async with _subscriber(broker.port, prefix, inbox, identifier=subscriber_id):
            await inbox.wait_ids(await _publish(bus, _events(3)))
            await broker.stop()

        during = await _publish(bus, _events(5))
        await bus.wait_retried(during)  # each failed while Mosquitto was down

        await broker.start()
        async with _subscriber(broker.port, prefix, inbox, identifier=subscriber_id):
            after = await _publish(bus, _events(3))
            await inbox.wait_ids([*during, *after])

    assert len(inbox.topics) == 11


@pytest.mark.rabbitmq
async def test_events_from_rabbitmq_are_mirrored(
    mosquitto: PrivateMosquitto, rabbit_topology: Topology, unique: str, amqp_url: str
) -> None:
    """Events published on a real RabbitMQ events exchange reach MQTT subscribers."""
    prefix = f"flotilla-test/{unique}/events"
    inbox = Inbox()
    events = _events(6)
    exchange = rabbit_topology.exchanges[0].name
    async with RabbitBus(url=amqp_url, policy=rabbit_topology.policy, name="mirror-test") as bus:
        await bus.declare(rabbit_topology)
        queue = rabbit_topology.queues[0].name
        async with (
            _subscriber(mosquitto.port, prefix, inbox),
            _running_mirror(bus, mosquitto.port, prefix, queue),
        ):
            await inbox.wait_ids(await _publish(bus, events, exchange=exchange))

    assert {inbox.messages[event.id] for event in events} == set(events)
