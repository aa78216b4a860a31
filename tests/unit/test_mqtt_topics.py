"""The MQTT mirror without a broker: topic mapping, topology and lifecycle."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flotilla.broker.topology import EVENTS, mirror_topology
from flotilla.bus import DeadLetterPolicy, DeliveryPolicy, MemoryBus, RetryPolicy, topic_matches
from flotilla.bus.mqtt import MirrorPolicy, MqttMirror, mqtt_topic
from flotilla.errors import PermanentError
from flotilla.settings import MqttSettings

_POLICY = DeliveryPolicy(
    retry=RetryPolicy(prefix="unit.retry"),
    dead_letter=DeadLetterPolicy(exchange="unit.dlx", queue="unit.dlq"),
)

_WORDS = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12),
    min_size=1,
    max_size=6,
)


@pytest.mark.parametrize(
    ("prefix", "routing_key", "topic"),
    [
        (
            "flotilla/events",
            "deployment.status_changed.create_complete",
            "flotilla/events/deployment/status_changed/create_complete",
        ),
        ("flotilla/events/", "deployment.requested", "flotilla/events/deployment/requested"),
        ("", "deployment.requested", "deployment/requested"),
        ("a", "single", "a/single"),
    ],
)
def test_routing_key_words_become_topic_levels(prefix: str, routing_key: str, topic: str) -> None:
    """Each routing key word becomes one topic level under the prefix."""
    assert mqtt_topic(prefix, routing_key) == topic


@pytest.mark.parametrize("routing_key", ["", "deployment.+", "deployment.#", "a\x00b"])
def test_keys_that_are_no_valid_topic_are_permanent_errors(routing_key: str) -> None:
    """Empty keys and keys with MQTT wildcards or NUL are refused as permanent errors."""
    with pytest.raises(PermanentError, match="cannot be an MQTT topic"):
        mqtt_topic("flotilla/events", routing_key)


@given(words=_WORDS)
def test_topic_levels_are_the_routing_key_words(words: list[str]) -> None:
    """The levels after the prefix are exactly the routing key's words, in order."""
    topic = mqtt_topic("flotilla/events", ".".join(words))
    assert topic.split("/")[2:] == words


def test_mirror_queue_receives_every_event_routing_key() -> None:
    """The mirror topology binds its queue to every routing key of the events exchange."""
    topology = mirror_topology("mirror-under-test")
    (binding,) = topology.bindings
    assert (binding.queue, binding.exchange) == ("mirror-under-test", EVENTS)
    assert topic_matches(binding.pattern, "deployment.status_changed.create_complete")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_shutdown_before_run_makes_run_return_at_once() -> None:
    """Shutdown is safe before start and twice; run() then returns without connecting."""
    async with MemoryBus(policy=_POLICY) as bus:
        mirror = MqttMirror(bus, MqttSettings(port=_closed_port()), queue="unit.nowhere")
        mirror.shutdown()
        mirror.shutdown()
        async with asyncio.timeout(5):
            await mirror.run()
        assert not mirror.is_connected


async def test_run_fails_fast_when_the_queue_is_not_declared() -> None:
    """Running against an undeclared queue is a permanent error, not a silent idle mirror."""
    async with MemoryBus(policy=_POLICY) as bus:
        mirror = MqttMirror(bus, MqttSettings(port=_closed_port()), queue="unit.undeclared")
        with pytest.raises(PermanentError, match="no queue named"):
            await mirror.run()


async def test_shutdown_while_mosquitto_is_unreachable_ends_run() -> None:
    """A mirror stuck reconnecting to an unreachable broker still shuts down promptly."""
    async with MemoryBus(policy=_POLICY) as bus:
        await bus.declare(mirror_topology("unit.mirror"))
        policy = MirrorPolicy(reconnect_delay=timedelta(milliseconds=10))
        mirror = MqttMirror(
            bus, MqttSettings(port=_closed_port()), queue="unit.mirror", policy=policy
        )
        async with asyncio.timeout(5), asyncio.TaskGroup() as tasks:
            tasks.create_task(mirror.run())
            with pytest.raises(TimeoutError):  # meanwhile it fails and retries to connect
                async with asyncio.timeout(0.3):
                    await mirror.wait_connected()
            mirror.shutdown()
        assert not mirror.is_connected
