"""The RabbitMQ bus: the production ``Bus``, and the only module that imports aio-pika.

Publishing is persistent, ``mandatory`` and confirmed; a publish that meets a dropped
connection waits for the robust reconnection and tries again until the broker confirms or
the publish timeout expires. Each subscription consumes on its own channel with manual
acknowledgement and runs every delivery through the same chain and outcome table as the
memory bus (``flotilla.bus.dispatch``); retries and dead-letters are confirmed copies
published before the original is acknowledged, so a crash in between duplicates a message
but never loses one. Deliveries that finish in the same pass of the event loop are
acknowledged together (``_Acks``).

aio-pika keeps the connection and channels alive (robust reconnection); messages go in
and out on aiormq's channel under each robust one, with pamqp's properties, because
aio-pika's ``Message``, ``IncomingMessage`` and second task per delivery cost a quarter of
the client's CPU per message published and a third per message consumed (measured raw).
What one pass of the event loop writes leaves in one socket write (``rabbitmq_wire``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self, cast
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import (
    AMQPError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    PublishError,
)
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import ChannelAccessRefused
from pamqp.commands import Basic

from flotilla.bus.dispatch import RETRIES_HEADER, failure_headers, process
from flotilla.bus.middleware import build_chain, build_raw_chain
from flotilla.bus.outcome import Action, Decision
from flotilla.bus.port import BusState, Delivery, Handler, Middleware, Next, RawHandler, Route
from flotilla.bus.rabbitmq_wire import CoalescingTransportFactory
from flotilla.bus.topology import DeliveryPolicy, Queue, Topology
from flotilla.errors import (
    BusClosedError,
    BusUnavailableError,
    PermanentError,
    UnroutableMessageError,
)
from flotilla.schemas import Envelope, encode
from flotilla.settings import BusSettings

_log = structlog.get_logger("flotilla.bus")

SENDER_HEADER = "x-flotilla-sender"
"""The original sender of a retried or dead-lettered copy (the copy's user_id is ours)."""

Properties = Basic.Properties
_PERSISTENT = 2  # delivery mode: written to disk
# Headers the broker owns; a republished copy must not carry the previous queue's history.
_BROKER_HEADERS = ("x-death", "x-first-death", "x-last-death", "x-delivery-count")
# Errors after which the same publish may succeed once the robust connection is back.
_TRANSIENT = (AMQPError, ConnectionError, OSError, RuntimeError)
_FIRST_BACKOFF = 0.05

WRITE_QUEUE_FRAMES: Final = 256
"""Frames an AMQP connection may queue for its writer (aiormq's own default is 10)."""


class RabbitBus:
    """A ``Bus`` on RabbitMQ, through one robust connection.

    Args:
        url: The AMQP URL, e.g. ``amqp://user:password@host:5672/vhost``.
        policy: Where retried and dead-lettered deliveries go.
        user: The login; set as ``user_id`` on every message so the broker vouches for
            the sender. Defaults to the URL's user.
        publish_timeout: Seconds a publish may wait for a confirm, reconnection included.
        heartbeat: AMQP heartbeat in seconds, to notice a dead peer.
        reconnect_interval: Seconds between reconnection attempts.
        name: Connection name shown in the management UI.
    """

    def __init__(
        self,
        *,
        url: str,
        policy: DeliveryPolicy,
        user: str | None = None,
        publish_timeout: float = 30.0,
        heartbeat: int = 30,
        reconnect_interval: float = 1.0,
        name: str = "flotilla",
    ) -> None:
        self.policy = policy
        self._url = url
        self._user = user if user is not None else _url_user(url)
        self._publish_timeout = publish_timeout
        self._heartbeat = heartbeat
        self._reconnect_interval = reconnect_interval
        self._name = name
        self._state = BusState.UNOPENED
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._subscriptions: list[RabbitSubscription] = []

    @classmethod
    def from_settings(
        cls,
        settings: BusSettings,
        *,
        policy: DeliveryPolicy,
        name: str,
        url: str | None = None,
    ) -> RabbitBus:
        """A bus configured from the process settings; ``url`` overrides theirs."""
        return cls(
            url=url or settings.url.get_secret_value(),
            policy=policy,
            publish_timeout=settings.publish_timeout,
            heartbeat=settings.heartbeat,
            reconnect_interval=settings.reconnect_interval,
            name=name,
        )

    @property
    def state(self) -> BusState:
        """Whether the bus is open."""
        return self._state

    @property
    def reconnect_interval(self) -> float:
        """Seconds between attempts to reconnect, or to consume again."""
        return self._reconnect_interval

    @property
    def user(self) -> str | None:
        """The login whose name the broker stamps on published messages."""
        return self._user

    async def __aenter__(self) -> Self:
        if self._state is not BusState.UNOPENED:
            raise BusClosedError(f"the bus is {self._state.value}; it opens only once")
        try:
            self._connection = await connect_robust(
                self._url,
                heartbeat=self._heartbeat,
                reconnect_interval=self._reconnect_interval,
                client_properties={"connection_name": self._name},
            )
            self._channel = await self._open_channel(publisher_confirms=True)
        except _TRANSIENT as exc:
            await self._close_connection()
            raise BusUnavailableError(f"cannot connect to RabbitMQ: {exc}") from exc
        self._state = BusState.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def declare(self, topology: Topology) -> None:
        """Declare exchanges, quorum queues with their retry/dead-letter arguments, bindings.

        Raises:
            PermanentError: an entity exists with other arguments.
            BusUnavailableError: the broker is unreachable.
        """
        self._require_open()
        exchanges, queues, bindings = topology.declarations()
        channel = await self._open_channel(publisher_confirms=False)
        try:
            for exchange in exchanges:
                await channel.declare_exchange(
                    exchange.name, type=exchange.type.value, durable=True, robust=False
                )
            for queue in queues:
                await channel.declare_queue(
                    queue.name, durable=True, arguments=_queue_arguments(queue), robust=False
                )
            for binding in bindings:
                amqp_queue = await channel.get_queue(binding.queue, ensure=False)
                await amqp_queue.bind(binding.exchange, binding.pattern)
        except (ChannelPreconditionFailed, ChannelNotFoundEntity, ChannelAccessRefused) as exc:
            raise PermanentError(f"cannot declare the topology: {exc}") from exc
        except _TRANSIENT as exc:
            raise BusUnavailableError(f"cannot declare the topology: {exc}") from exc
        finally:
            with contextlib.suppress(*_TRANSIENT):
                await channel.close()

    async def publish(
        self, message: Envelope, route: Route, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Publish persistently and return once the broker has confirmed the message.

        Raises:
            UnroutableMessageError: no queue is bound for the route.
            BusUnavailableError: not confirmed within the publish timeout.
        """
        self._require_open()
        await self._publish(
            encode(message),
            message_properties(message, user=self._user, headers=headers),
            route.exchange,
            route.routing_key,
            mandatory=route.mandatory,
        )

    async def subscribe(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int = 16,
        middlewares: Sequence[Middleware] = (),
    ) -> RabbitSubscription:
        """Consume ``queue`` through the standard chain and ``middlewares`` into ``handler``."""
        return await self._start(queue, build_chain(middlewares, handler), prefetch)

    async def subscribe_raw(
        self, queue: str, handler: RawHandler, *, prefetch: int = 16
    ) -> RabbitSubscription:
        """Consume ``queue`` without decoding, e.g. to inspect a dead-letter queue."""
        return await self._start(queue, build_raw_chain(handler), prefetch)

    async def close(self, *, timeout: float = 10.0) -> None:
        """Stop every subscription (draining up to ``timeout``) and close; safe to repeat."""
        if self._state is BusState.CLOSED:
            return
        self._state = BusState.CLOSED
        await asyncio.gather(*(s.stop(timeout=timeout) for s in self._subscriptions))
        await self._close_connection()

    async def settle(
        self,
        message: DeliveredMessage,
        delivery: Delivery,
        decision: Decision,
        acks: _Acks,
    ) -> None:
        """Carry out the broker action for a finished delivery (see ``flotilla.bus.outcome``).

        The acknowledgement goes out with the others of this pass of the loop (``acks``).
        """
        if decision.action is Action.REQUEUE:
            await _requeue(message)
            acks.settled(message)
            return
        if decision.action is Action.RETRY:
            tier = self.policy.retry.tier(delivery.retries)
            await self._forward(message, delivery, decision, tier, retries=delivery.retries + 1)
        elif decision.action is Action.DEAD_LETTER:
            exchange = self.policy.dead_letter.exchange
            await self._forward(message, delivery, decision, exchange, retries=delivery.retries)
        acks.ack(message)

    def delivery(self, message: DeliveredMessage, queue: str) -> Delivery:
        """Convert an aiormq delivery from ``queue`` into the port's ``Delivery``."""
        properties = message.header.properties
        headers: dict[str, Any] = dict(properties.headers or {})
        user_id = properties.user_id
        sender = headers.get(SENDER_HEADER)
        # Only a copy we forwarded ourselves (user_id is our login, which the broker
        # vouches for) may speak for its original sender; anyone else's header is a claim.
        if isinstance(sender, str) and user_id is not None and user_id == self._user:
            user_id = sender
        frame = message.delivery
        assert isinstance(frame, Basic.Deliver)
        return Delivery(
            body=message.body,
            queue=queue,
            exchange=frame.exchange or "",
            routing_key=frame.routing_key or "",
            message_id=properties.message_id,
            user_id=user_id,
            headers=headers,
            redelivered=bool(frame.redelivered),
            retries=_retries(headers.get(RETRIES_HEADER)),
        )

    async def _forward(
        self,
        message: DeliveredMessage,
        delivery: Delivery,
        decision: Decision,
        exchange: str,
        *,
        retries: int,
    ) -> None:
        headers = {
            key: value
            for key, value in failure_headers(delivery, decision, retries=retries).items()
            if not key.startswith(_BROKER_HEADERS)
        }
        if delivery.user_id is not None:
            headers[SENDER_HEADER] = delivery.user_id
        original = message.header.properties
        properties = Properties(
            headers=headers,
            content_type=original.content_type,
            delivery_mode=_PERSISTENT,
            message_id=original.message_id,
            message_type=original.message_type,
            correlation_id=original.correlation_id,
            timestamp=original.timestamp,
            user_id=self._user,
        )
        await self._publish(message.body, properties, exchange, delivery.queue)

    async def _publish(
        self,
        body: bytes,
        properties: Properties,
        exchange: str,
        routing_key: str,
        *,
        mandatory: bool = True,
    ) -> None:
        # Not _require_open(): while close() drains, finished handlers still forward copies.
        channel = self._channel
        if channel is None:
            raise BusClosedError("the bus is closed")
        last_error: BaseException | None = None
        backoff = _FIRST_BACKOFF
        try:
            async with asyncio.timeout(self._publish_timeout):
                while True:
                    try:
                        await self._publish_once(
                            channel, body, properties, exchange, routing_key, mandatory=mandatory
                        )
                    except _TRANSIENT as exc:
                        last_error = exc
                        _log.warning("publish_retrying", exchange=exchange, error=repr(exc))
                    else:
                        return
                    # The error may arrive before the channel notices it is closed; the
                    # backoff keeps this loop from spinning until the restore starts.
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._reconnect_interval)
                    await channel.ready()
        except TimeoutError as exc:
            raise BusUnavailableError(
                f"RabbitMQ did not confirm a message to {exchange!r} "
                f"within {self._publish_timeout}s: {last_error!r}"
            ) from (last_error or exc)

    async def _publish_once(
        self,
        channel: AbstractRobustChannel,
        body: bytes,
        properties: Properties,
        exchange: str,
        routing_key: str,
        *,
        mandatory: bool,
    ) -> None:
        # Straight on aiormq's channel: aio-pika's Message and Exchange would only rebuild
        # these properties. ``wait=False`` skips waiting for the frame to be written on its
        # own, as the broker's confirm comes after it anyway.
        try:
            wire = cast(aiormq.Channel, await channel.get_underlay_channel())
            await wire.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=mandatory,
                wait=False,
            )
        except PublishError as exc:
            raise UnroutableMessageError(
                f"no queue bound on {exchange!r} for {routing_key!r}"
            ) from exc
        except ChannelNotFoundEntity as exc:
            raise UnroutableMessageError(f"cannot publish to {exchange!r}: {exc}") from exc
        except (ChannelAccessRefused, ChannelPreconditionFailed) as exc:
            raise PermanentError(f"RabbitMQ refused a message to {exchange!r}: {exc}") from exc

    async def _start(self, queue: str, chain: Next, prefetch: int) -> RabbitSubscription:
        self._require_open()
        channel = await self._open_channel(publisher_confirms=False)
        try:
            await channel.set_qos(prefetch_count=prefetch)
            await channel.declare_queue(queue, passive=True, robust=False)
            subscription = RabbitSubscription(self, queue, chain, channel)
            await subscription.start()
        except BaseException as exc:
            with contextlib.suppress(*_TRANSIENT):
                await channel.close()
            if isinstance(exc, ChannelNotFoundEntity):
                raise PermanentError(f"no queue named {queue!r}") from exc
            if isinstance(exc, _TRANSIENT):
                raise BusUnavailableError(f"cannot consume {queue!r}: {exc}") from exc
            raise
        self._subscriptions.append(subscription)
        return subscription

    async def _open_channel(self, *, publisher_confirms: bool) -> AbstractRobustChannel:
        assert self._connection is not None
        channel = self._connection.channel(
            publisher_confirms=publisher_confirms, on_return_raises=publisher_confirms
        )
        await channel
        return channel

    async def _close_connection(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(*_TRANSIENT):
                await connection.close()

    def _require_open(self) -> AbstractRobustChannel:
        if self._state is not BusState.OPEN or self._channel is None:
            raise BusClosedError(f"the bus is {self._state.value}; open it with 'async with'")
        return self._channel


class RabbitSubscription:
    """Consumes one queue on its own channel, each delivery handled in a tracked task.

    It consumes on aiormq's channel under the robust one: aio-pika's consumer would wrap
    each delivery in an ``IncomingMessage`` and a second task. So the subscription itself
    consumes again whenever the robust channel reopens after a reconnection, and when the
    broker cancels the consumer (the queue was deleted, say), until the queue is back.
    """

    def __init__(
        self,
        bus: RabbitBus,
        queue: str,
        chain: Next,
        channel: AbstractRobustChannel,
    ) -> None:
        self._bus = bus
        self._queue = queue
        self._chain = chain
        self._channel = channel
        self._tasks: set[asyncio.Task[None]] = set()
        self._acks = _Acks(queue)
        self._consumer: tuple[aiormq.abc.AbstractChannel, str] | None = None
        self._again: asyncio.Future[None] | None = None  # consuming again, after a cancel
        self._stopped = False

    @property
    def queue(self) -> str:
        """The queue consumed."""
        return self._queue

    async def start(self) -> None:
        """Start consuming, and consume again each time the robust channel reopens."""
        await self._consume()
        self._channel.reopen_callbacks.add(self._reopened)

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Stop intake, let in-flight deliveries finish up to ``timeout``, cancel the rest.

        Cancelled deliveries are not acknowledged, so the broker delivers them again.
        """
        if self._stopped:
            return
        self._stopped = True
        self._channel.reopen_callbacks.discard(self._reopened)
        if self._again is not None:
            self._again.cancel()
        await self._cancel_consumer(timeout)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._acks.drain()
        # Closing the channel returns prefetched deliveries that never reached a handler.
        with contextlib.suppress(*_TRANSIENT):
            await self._channel.close()

    async def _consume(self) -> None:
        wire = await self._channel.get_underlay_channel()
        wire.on_consumer_cancel_callbacks.add(self._cancelled_by_broker)
        consumed = await wire.basic_consume(self._queue, self._on_message)
        assert consumed.consumer_tag is not None
        self._consumer = (wire, consumed.consumer_tag)

    def _reopened(self, *_: object) -> None:
        self._consume_again()

    def _cancelled_by_broker(self, frame: Basic.Cancel) -> None:
        consumer = self._consumer
        if consumer is not None and frame.consumer_tag == consumer[1]:
            _log.warning("consumer_cancelled_by_broker", queue=self.queue)
            self._consumer = None
            self._consume_again()

    def _consume_again(self) -> None:
        """Consume again, in a task of its own, until it works or the subscription stops.

        Not inside the robust channel's reopening: a consume the broker refuses (no such
        queue) closes the channel, and a channel that closes while it reopens stays closed.
        """
        if self._stopped or (self._again is not None and not self._again.done()):
            return
        self._again = asyncio.ensure_future(self._keep_consuming_again())

    async def _keep_consuming_again(self) -> None:
        while not self._stopped:
            try:
                await self._channel.ready()
                await self._consume()
            except Exception as exc:
                # Refused (the queue is gone, say): the channel closes and reopens, and
                # this tries again, no faster than reconnecting.
                _log.warning("consume_again_failed", queue=self.queue, error=repr(exc))
                await asyncio.sleep(self._bus.reconnect_interval)
            else:
                return

    async def _cancel_consumer(self, limit: float) -> None:
        if self._consumer is None:
            return
        wire, tag = self._consumer
        try:
            async with asyncio.timeout(limit):
                await wire.basic_cancel(tag)
        except (TimeoutError, *_TRANSIENT) as exc:
            # The channel close below stops the consumer as well.
            _log.warning("consumer_cancel_failed", queue=self.queue, error=repr(exc))

    async def _on_message(self, message: DeliveredMessage) -> None:
        if self._stopped:
            return  # left unacknowledged: the channel close hands it back to the broker
        # aiormq already runs each delivery in a task of its own; tracking that task lets
        # stop() drain and cancel exactly the deliveries in flight without a second task.
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._acks.started(message)
        try:
            await self._handle(message)
        finally:
            self._tasks.discard(task)

    async def _handle(self, message: DeliveredMessage) -> None:
        delivery = self._bus.delivery(message, self.queue)
        decision = await process(self._chain, delivery, self._bus.policy.retry)
        try:
            await self._bus.settle(message, delivery, decision, self._acks)
        except Exception as exc:
            # Unsettled means unacknowledged: the broker delivers it again.
            _log.error(
                "delivery_settle_failed",
                queue=self.queue,
                message_id=delivery.message_id,
                action=decision.action.value,
                error=repr(exc),
            )
            with contextlib.suppress(*_TRANSIENT):
                await _requeue(message)
                self._acks.settled(message)
        if decision.action is Action.REQUEUE:
            raise asyncio.CancelledError


class _Acks:
    """The acknowledgements of one consumer channel, sent together at the end of a loop pass.

    Deliveries finish out of order. Those finished in one pass of the event loop are
    acknowledged together: one ``basic.ack`` with ``multiple`` covers every delivery up to
    the first one still being handled, and each finished delivery after that one is
    acknowledged on its own, so a slow handler never holds back the others' acks (which
    would stall the prefetch window). On a consumer's own channel the delivery tags run 1,
    2, 3, ..., so "every delivery up to" is exact. A reconnection opens a new channel whose
    tags start again; acks still owed on the old one are dropped, and the broker delivers
    those messages again.

    Acks leave one after another, each written before the next is handed to aiormq. Its
    frame buffer is small and, when full, lets a later frame overtake one waiting for room;
    an ack ``multiple`` up to 600 overtaking an earlier one up to 587 would make the broker
    close the channel over the now unknown tag 587.
    """

    def __init__(self, queue: str) -> None:
        self._queue = queue
        self._channel: object = None  # the aiormq channel the tags below are of
        self._next = 1  # the lowest tag neither acknowledged nor settled otherwise
        self._owed: dict[int, DeliveredMessage] = {}  # finished, ack not sent yet
        self._settled: set[int] = set()  # above ``_next``, acked or requeued on its own
        self._flush: asyncio.Handle | None = None
        self._outgoing: deque[tuple[DeliveredMessage, bool]] = deque()  # in order
        self._sender: asyncio.Task[None] | None = None

    def started(self, message: DeliveredMessage) -> None:
        """A delivery reached its handler; the first one of a new channel starts afresh."""
        channel = _channel_of(message)
        if channel is not None and channel is not self._channel:
            self._channel, self._next = channel, 1
            self._owed.clear()
            self._settled.clear()

    def ack(self, message: DeliveredMessage) -> None:
        """Acknowledge ``message`` with the others finished in this pass of the loop."""
        tag = self._tag(message)
        if tag is not None:
            self._owed[tag] = message
            if self._flush is None:
                self._flush = asyncio.get_running_loop().call_soon(self.flush)

    def settled(self, message: DeliveredMessage) -> None:
        """``message`` was requeued on its own; a later ``multiple`` ack may pass over it."""
        tag = self._tag(message)
        if tag is not None:
            self._settled.add(tag)

    def flush(self) -> None:
        """Send the acknowledgements owed now."""
        if self._flush is not None:
            self._flush.cancel()  # a no-op when this is that call
            self._flush = None
        last = None
        while True:
            if (message := self._owed.pop(self._next, None)) is not None:
                last = message
            elif self._next in self._settled:
                self._settled.remove(self._next)
            else:
                break
            self._next += 1
        if last is not None:
            self._send(last, multiple=True)
        for tag, message in self._owed.items():
            self._send(message, multiple=False)
            self._settled.add(tag)
        self._owed.clear()

    async def drain(self) -> None:
        """Send what is owed and wait until it is written."""
        self.flush()
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)

    def _tag(self, message: DeliveredMessage) -> int | None:
        """The delivery tag, if ``message`` came on the current channel."""
        if _channel_of(message) is not self._channel:
            return None  # its channel is gone: the broker delivers it again
        return _tag_of(message)

    def _send(self, message: DeliveredMessage, *, multiple: bool) -> None:
        self._outgoing.append((message, multiple))
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send_in_order())

    async def _send_in_order(self) -> None:
        try:
            while self._outgoing:
                message, multiple = self._outgoing.popleft()
                try:
                    await message.channel.basic_ack(_tag_of(message), multiple=multiple)
                except Exception as exc:
                    # Unacknowledged, the message is delivered again once its channel closes.
                    _log.warning("delivery_ack_failed", queue=self._queue, error=repr(exc))
        finally:
            self._sender = None


async def connect_robust(url: str, **kwargs: Any) -> AbstractRobustConnection:
    """``aio_pika.connect_robust`` with the connection settings every Flotilla client shares.

    aiormq lets a connection queue ``FRAME_BUFFER_SIZE`` frames (10) for its writer. A
    publisher that finds the queue full waits while holding its channel's lock, and the
    publishers queued on that lock then get it one per pass of the event loop: a burst of
    publishes (the relay has up to 64 in flight) leaves one frame at a time and comes back
    as as many small confirms. With room for ``WRITE_QUEUE_FRAMES`` the burst goes out
    together, and the bench measured about a tenth less CPU per placement over the
    scheduler, the broker and the load together. aiormq reads the size from its class
    when it makes a connection, so it is raised for the whole process, reconnections
    included.

    The connection's socket joins the frames written in one pass of the event loop into
    one write (``flotilla.bus.rabbitmq_wire``): such a burst otherwise leaves as a TCP
    segment per publish, which the broker reads one at a time.
    """
    aiormq.Connection.FRAME_BUFFER_SIZE = max(
        aiormq.Connection.FRAME_BUFFER_SIZE, WRITE_QUEUE_FRAMES
    )
    connection = await aio_pika.connect_robust(url, connection_class=_Connection, **kwargs)
    return cast(AbstractRobustConnection, connection)


class _Connection(aio_pika.RobustConnection):
    """aio-pika's robust connection on a socket that joins the writes of one loop pass.

    aio-pika passes aiormq only the parameters it knows, so the transport factory is added
    to what it hands aiormq on every (re)connection (``flotilla.bus.rabbitmq_wire``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kwargs["transport_factory"] = CoalescingTransportFactory()


def message_properties(
    message: Envelope, *, user: str | None, headers: Mapping[str, Any] | None = None
) -> Properties:
    """The AMQP properties ``message`` is published with: persistent JSON, its id, type,
    deployment and time, and ``user`` as the login the broker vouches for."""
    return Properties(
        headers=dict(headers) if headers else None,
        content_type="application/json",
        delivery_mode=_PERSISTENT,
        message_id=message.id,
        message_type=getattr(message, "type", None),
        correlation_id=message.correlationid,
        timestamp=message.time,
        user_id=user,
    )


def _channel_of(message: DeliveredMessage) -> object:
    """The AMQP channel a delivery came on; None once that channel is closed."""
    channel = message.channel
    return None if channel.is_closed else channel


def _tag_of(message: DeliveredMessage) -> int:
    tag = message.delivery_tag
    assert tag is not None  # a consumer's delivery always has one
    return tag


async def _requeue(message: DeliveredMessage) -> None:
    """Hand ``message`` back to its queue, to be delivered again."""
    await message.channel.basic_nack(_tag_of(message), requeue=True)


def _queue_arguments(queue: Queue) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    if queue.quorum:
        arguments["x-queue-type"] = "quorum"
        if queue.delivery_limit is not None:
            arguments["x-delivery-limit"] = queue.delivery_limit
    if queue.dead_letter_to_default:
        # Expired retry copies go back via the default exchange to the queue named by
        # their routing key, which is the queue they failed in.
        arguments["x-dead-letter-exchange"] = ""
    elif queue.dead_letter_exchange:
        arguments["x-dead-letter-exchange"] = queue.dead_letter_exchange
    if queue.quorum and "x-dead-letter-exchange" in arguments:
        # At-most-once dead-lettering would drop a message whose retry delay expires while
        # the target is unavailable; at-least-once requires reject-publish overflow.
        arguments["x-dead-letter-strategy"] = "at-least-once"
        arguments["x-overflow"] = "reject-publish"
    if queue.message_ttl is not None:
        arguments["x-message-ttl"] = int(queue.message_ttl.total_seconds() * 1000)
    if queue.max_length is not None:
        arguments["x-max-length"] = queue.max_length
    return arguments


def _retries(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _url_user(url: str) -> str | None:
    username = urlsplit(url).username
    return unquote(username) if username else None


__all__ = [
    "SENDER_HEADER",
    "WRITE_QUEUE_FRAMES",
    "RabbitBus",
    "RabbitSubscription",
    "connect_robust",
    "message_properties",
]
