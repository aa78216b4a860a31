"""The MQTT mirror: republishes Flotilla's public event stream to Mosquitto for light consumers.

The mirror consumes one bus queue bound to the events exchange (see
``flotilla.broker.topology.mirror_topology``) and publishes each event's JSON to
``<topic_prefix>/<routing key with dots as slashes>`` at QoS 1. A delivery is acknowledged
only after Mosquitto acknowledged the publish; while Mosquitto is unreachable the handler
raises ``RetryableError`` and the bus retries the delivery later, so nothing is lost. The
connection is kept up by one task that reconnects with capped exponential backoff.

This module alone imports ``aiomqtt``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

import aiomqtt
import structlog

from flotilla.backoff import Backoff
from flotilla.bus.port import Bus, Delivery
from flotilla.errors import PermanentError, RetryableError
from flotilla.schemas import Message, encode
from flotilla.settings import MqttSettings

_log = structlog.get_logger("flotilla.bus.mqtt")

_FORBIDDEN_IN_TOPIC = ("+", "#", "\x00")


def mqtt_topic(prefix: str, routing_key: str) -> str:
    """The MQTT topic an event published with ``routing_key`` is mirrored to.

    Args:
        prefix: The topic prefix, e.g. ``flotilla/events``; a trailing slash is ignored.
        routing_key: The AMQP routing key, e.g. ``deployment.status_changed.create_complete``.

    Returns:
        The prefix and the routing key's words as topic levels, e.g.
        ``flotilla/events/deployment/status_changed/create_complete``.

    Raises:
        PermanentError: the routing key is empty or holds an MQTT wildcard or a NUL.
    """
    if not routing_key or any(char in routing_key for char in _FORBIDDEN_IN_TOPIC):
        raise PermanentError(f"routing key {routing_key!r} cannot be an MQTT topic")
    levels = routing_key.replace(".", "/")
    return f"{prefix.rstrip('/')}/{levels}" if prefix else levels


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorPolicy:
    """Timeouts, backoff and concurrency of the mirror.

    Attributes:
        connect_timeout: Bound on connecting and on every MQTT operation but publish.
        publish_timeout: Bound on one QoS 1 publish, until Mosquitto's PUBACK.
        connection_wait: How long a delivery waits for a lost connection before it is
            handed back to the bus for a delayed retry.
        reconnect_delay: First wait before reconnecting; doubles after each failure.
        max_reconnect_delay: Cap of the reconnect wait.
        drain_timeout: On shutdown, how long in-flight deliveries may finish.
        prefetch: Deliveries mirrored concurrently (events may reach MQTT out of order).
    """

    connect_timeout: timedelta = timedelta(seconds=10)
    publish_timeout: timedelta = timedelta(seconds=10)
    connection_wait: timedelta = timedelta(seconds=5)
    reconnect_delay: timedelta = timedelta(seconds=0.5)
    max_reconnect_delay: timedelta = timedelta(seconds=30)
    drain_timeout: timedelta = timedelta(seconds=10)
    prefetch: int = 16


class MqttMirror:
    """Mirrors the events on a bus queue to MQTT topics, reconnecting by itself.

    Example:
        >>> mirror = MqttMirror(bus, settings.mqtt, queue="flotilla.mqtt-mirror")
        >>> await mirror.run()  # until mirror.shutdown() is called elsewhere
    """

    def __init__(
        self,
        bus: Bus,
        settings: MqttSettings,
        *,
        queue: str,
        policy: MirrorPolicy | None = None,
    ) -> None:
        self._bus = bus
        self._settings = settings
        self._queue = queue
        self._policy = policy or MirrorPolicy()
        self._backoff = Backoff(self._policy.reconnect_delay, self._policy.max_reconnect_delay)
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._stopping = asyncio.Event()

    @property
    def is_connected(self) -> bool:
        """Whether the mirror is connected to Mosquitto right now."""
        return self._connected.is_set()

    async def run(self) -> None:
        """Keep the MQTT connection up and mirror the queue until ``shutdown()``.

        Returns at once if ``shutdown()`` was called before.

        Raises:
            PermanentError: the queue does not exist (declare ``mirror_topology()`` first).
        """
        if self._stopping.is_set():
            return
        subscription = await self._bus.subscribe(
            self._queue, self._mirror, prefetch=self._policy.prefetch
        )
        async with asyncio.TaskGroup() as tasks:
            connection = tasks.create_task(self._stay_connected(), name="mqtt-mirror-connection")
            try:
                await self._stopping.wait()
            finally:
                # Stop intake while still connected, so in-flight publishes can complete.
                await subscription.stop(timeout=self._policy.drain_timeout.total_seconds())
                connection.cancel()

    def shutdown(self) -> None:
        """Ask ``run()`` to stop intake, drain in-flight events and disconnect; idempotent."""
        self._stopping.set()

    async def wait_connected(self) -> None:
        """Wait until the mirror is connected to Mosquitto."""
        await self._connected.wait()

    async def _stay_connected(self) -> None:
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                delay = self._backoff.delay()
                _log.warning(
                    "mqtt_connection_failed",
                    host=self._settings.host,
                    port=self._settings.port,
                    error=str(exc),
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay)

    async def _session(self) -> None:
        """Connect once and return (by raising ``MqttError``) when the connection is lost."""
        async with self._new_client() as client:
            self._backoff.reset()
            self._client = client
            self._connected.set()
            _log.info("mqtt_connected", host=self._settings.host, port=self._settings.port)
            try:
                # Nothing is subscribed: the iterator only ends, raising, on disconnection.
                async for _ in client.messages:
                    pass
            finally:
                self._connected.clear()
                self._client = None

    def _new_client(self) -> aiomqtt.Client:
        password = self._settings.password
        return aiomqtt.Client(
            self._settings.host,
            self._settings.port,
            username=self._settings.username,
            password=password.get_secret_value() if password is not None else None,
            timeout=self._policy.connect_timeout.total_seconds(),
        )

    async def _mirror(self, message: Message, delivery: Delivery) -> None:
        """Publish one event at QoS 1; return only once Mosquitto acknowledged it."""
        topic = mqtt_topic(self._settings.topic_prefix, delivery.routing_key)
        client = await self._wait_client(topic)
        try:
            await client.publish(
                topic,
                encode(message),
                qos=1,
                timeout=self._policy.publish_timeout.total_seconds(),
            )
        except aiomqtt.MqttError as exc:
            raise RetryableError(f"MQTT publish failed: {exc}", resource=topic) from exc
        _log.debug("event_mirrored", topic=topic)

    async def _wait_client(self, topic: str) -> aiomqtt.Client:
        try:
            async with asyncio.timeout(self._policy.connection_wait.total_seconds()):
                await self._connected.wait()
        except TimeoutError as exc:
            raise RetryableError(
                f"MQTT broker {self._settings.host}:{self._settings.port} is unreachable",
                resource=topic,
            ) from exc
        client = self._client
        if client is None:  # lost again between the wake-up and now
            raise RetryableError("MQTT connection lost", resource=topic)
        return client


__all__ = ["MirrorPolicy", "MqttMirror", "mqtt_topic"]
