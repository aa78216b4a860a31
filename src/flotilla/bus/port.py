"""The bus port: the one small API every Flotilla component uses to talk on the bus."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol, Self

from flotilla.bus.topology import Topology
from flotilla.schemas import Envelope, Message


class BusState(StrEnum):
    """Lifecycle of a bus (httpx's ``ClientState``): a closed bus refuses to be used."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Where a message is published: an exchange and a routing key.

    ``mandatory`` routes must reach a queue (else ``UnroutableMessageError``); a public
    event stream nobody subscribes to yet is not mandatory, its events are simply dropped.
    """

    exchange: str
    routing_key: str
    mandatory: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One delivery of a message from a queue, as the broker handed it over."""

    body: bytes
    queue: str
    exchange: str
    routing_key: str
    message_id: str | None = None
    user_id: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    retries: int = 0


@dataclass(slots=True)
class Context:
    """What flows through the middleware chain: the delivery, and the message once decoded."""

    delivery: Delivery
    message: Message | None = None


Handler = Callable[[Message, Delivery], Awaitable[None]]
RawHandler = Callable[[Delivery], Awaitable[None]]
Next = Callable[[Context], Awaitable[None]]
Middleware = Callable[[Context, Next], Awaitable[None]]


class Subscription(Protocol):
    """A running consumer of one queue."""

    @property
    def queue(self) -> str:
        """The queue consumed."""
        ...

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Stop taking deliveries, wait up to ``timeout`` for in-flight ones, cancel the rest.

        Cancelled deliveries are not acknowledged, so the broker delivers them again.
        """
        ...


class Bus(Protocol):
    """Publish and consume Flotilla messages with at-least-once delivery."""

    @property
    def state(self) -> BusState:
        """Whether the bus is open."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def declare(self, topology: Topology) -> None:
        """Declare exchanges, queues and bindings; safe to repeat."""
        ...

    async def publish(
        self, message: Envelope, route: Route, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Publish persistently and return once the broker has confirmed the message.

        Raises:
            UnroutableMessageError: no queue is bound for the route.
            BusUnavailableError: the broker did not confirm within the publish timeout.
        """
        ...

    async def subscribe(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int = 16,
        middlewares: Sequence[Middleware] = (),
    ) -> Subscription:
        """Consume ``queue``: decode each delivery and pass it through the chain to ``handler``.

        The outcome decides the acknowledgement (see ``flotilla.bus.outcome``).
        """
        ...

    async def subscribe_raw(
        self, queue: str, handler: RawHandler, *, prefetch: int = 16
    ) -> Subscription:
        """Consume ``queue`` without decoding, e.g. to inspect a dead-letter queue."""
        ...

    async def close(self, *, timeout: float = 10.0) -> None:
        """Stop every subscription (draining up to ``timeout``) and close; safe to repeat."""
        ...
