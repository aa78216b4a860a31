"""The in-memory bus: the same semantics as RabbitMQ, inside one process.

Used by unit tests and the embedded single-process mode. A ``MemoryBroker`` holds the
exchanges and queues; each component opens its own ``MemoryBus`` on it with its own user,
as it would open its own connection to RabbitMQ. Acknowledgement, redelivery on
cancellation, the delivery limit, delayed retry and dead-lettering behave as on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self

from flotilla.bus.dispatch import RETRIES_HEADER, failure_headers, process
from flotilla.bus.middleware import build_chain, build_raw_chain
from flotilla.bus.outcome import Action, Decision
from flotilla.bus.port import (
    BusState,
    Delivery,
    Handler,
    Middleware,
    Next,
    RawHandler,
    Route,
)
from flotilla.bus.topology import (
    Binding,
    DeliveryPolicy,
    ExchangeType,
    Queue,
    Topology,
    topic_matches,
)
from flotilla.errors import BusClosedError, PermanentError, UnroutableMessageError
from flotilla.schemas import Envelope, encode


@dataclass(slots=True)
class _Queued:
    delivery: Delivery
    delivery_count: int = 0


@dataclass(slots=True)
class _MemoryQueue:
    spec: Queue
    items: asyncio.Queue[_Queued] = field(default_factory=asyncio.Queue)


class MemoryBroker:
    """Exchanges, queues and bindings shared by the ``MemoryBus`` instances of one process."""

    def __init__(self) -> None:
        self._exchanges: dict[str, ExchangeType] = {}
        self._queues: dict[str, _MemoryQueue] = {}
        self._bindings: list[Binding] = []

    def declare(self, topology: Topology) -> None:
        """Declare exchanges, queues and bindings; repeating a declaration is a no-op."""
        exchanges, queues, bindings = topology.declarations()
        for exchange in exchanges:
            known = self._exchanges.setdefault(exchange.name, exchange.type)
            if known is not exchange.type:
                raise PermanentError(f"exchange {exchange.name!r} exists as {known}")
        for queue in queues:
            self._queues.setdefault(queue.name, _MemoryQueue(spec=queue))
        for binding in bindings:
            if binding not in self._bindings:
                self._bindings.append(binding)

    def queue(self, name: str) -> _MemoryQueue:
        """A declared queue."""
        try:
            return self._queues[name]
        except KeyError:
            raise PermanentError(f"no queue named {name!r}") from None

    def depth(self, name: str) -> int:
        """Messages ready in a queue (not counting unacknowledged ones)."""
        return self.queue(name).items.qsize()

    def route(self, delivery: Delivery) -> int:
        """Put a delivery into every queue its exchange routes it to; return how many."""
        targets = self._targets(delivery.exchange, delivery.routing_key)
        for name in targets:
            self._queues[name].items.put_nowait(_Queued(delivery=replace(delivery, queue=name)))
        return len(targets)

    def _targets(self, exchange: str, routing_key: str) -> list[str]:
        if exchange == "":
            return [routing_key] if routing_key in self._queues else []
        kind = self._exchanges.get(exchange)
        if kind is None:
            raise PermanentError(f"no exchange named {exchange!r}")
        names = [
            binding.queue
            for binding in self._bindings
            if binding.exchange == exchange
            and (
                kind is ExchangeType.FANOUT
                or (kind is ExchangeType.DIRECT and binding.pattern == routing_key)
                or (kind is ExchangeType.TOPIC and topic_matches(binding.pattern, routing_key))
            )
        ]
        return list(dict.fromkeys(names))


class MemorySubscription:
    """Consumes one memory queue with up to ``prefetch`` deliveries in flight."""

    def __init__(self, bus: MemoryBus, queue: str, chain: Next, prefetch: int) -> None:
        self._bus = bus
        self._queue = queue
        self._chain = chain
        self._workers = [asyncio.create_task(self._work()) for _ in range(prefetch)]
        self._busy: set[asyncio.Task[None]] = set()
        self._stopped = False

    @property
    def queue(self) -> str:
        """The queue consumed."""
        return self._queue

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Stop intake, let in-flight deliveries finish up to ``timeout``, cancel the rest."""
        if self._stopped:
            return
        self._stopped = True
        idle = [w for w in self._workers if w not in self._busy]
        for worker in idle:
            worker.cancel()
        busy = [w for w in self._workers if w in self._busy]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=timeout)
            for worker in pending:
                worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self) -> None:
        items = self._bus.broker.queue(self._queue).items
        current = asyncio.current_task()
        assert current is not None
        while not self._stopped:
            queued = await items.get()
            self._busy.add(current)
            try:
                await self._handle(queued)
            finally:
                self._busy.discard(current)

    async def _handle(self, queued: _Queued) -> None:
        delivery = queued.delivery
        if queued.delivery_count:
            delivery = replace(delivery, redelivered=True)
        decision = await process(self._chain, delivery, self._bus.policy.retry)
        self._bus.settle(queued, decision)
        if decision.action is Action.REQUEUE:
            raise asyncio.CancelledError


class MemoryBus:
    """A ``Bus`` on a ``MemoryBroker``, for tests and the embedded mode."""

    def __init__(
        self,
        *,
        policy: DeliveryPolicy,
        broker: MemoryBroker | None = None,
        user: str | None = None,
    ) -> None:
        self.broker = broker or MemoryBroker()
        self.policy = policy
        self._user = user
        self._state = BusState.UNOPENED
        self._subscriptions: list[MemorySubscription] = []
        self._timers: set[asyncio.TimerHandle] = set()

    @property
    def state(self) -> BusState:
        """Whether the bus is open."""
        return self._state

    async def __aenter__(self) -> Self:
        if self._state is BusState.CLOSED:
            raise BusClosedError("a closed bus cannot be opened again")
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
        """Declare the topology on the broker."""
        self._require_open()
        self.broker.declare(topology)

    async def publish(
        self, message: Envelope, route: Route, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Route a message to its queues; an unroutable mandatory message raises."""
        self._require_open()
        delivery = Delivery(
            body=encode(message),
            queue="",
            exchange=route.exchange,
            routing_key=route.routing_key,
            message_id=message.id,
            user_id=self._user,
            headers=dict(headers or {}),
        )
        if not self.broker.route(delivery) and route.mandatory:
            raise UnroutableMessageError(
                f"no queue bound on {route.exchange!r} for {route.routing_key!r}"
            )

    async def subscribe(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int = 16,
        middlewares: Sequence[Middleware] = (),
    ) -> MemorySubscription:
        """Consume ``queue`` through the standard chain and ``middlewares`` into ``handler``."""
        return self._start(queue, build_chain(middlewares, handler), prefetch)

    async def subscribe_raw(
        self, queue: str, handler: RawHandler, *, prefetch: int = 16
    ) -> MemorySubscription:
        """Consume ``queue`` without decoding."""
        return self._start(queue, build_raw_chain(handler), prefetch)

    async def close(self, *, timeout: float = 10.0) -> None:
        """Stop every subscription, draining up to ``timeout``; safe to call twice."""
        if self._state is BusState.CLOSED:
            return
        self._state = BusState.CLOSED
        for timer in self._timers:
            timer.cancel()
        await asyncio.gather(*(s.stop(timeout=timeout) for s in self._subscriptions))

    def settle(self, queued: _Queued, decision: Decision) -> None:
        """Carry out the broker action for a finished delivery."""
        delivery = queued.delivery
        if decision.action is Action.ACK:
            return
        if decision.action is Action.REQUEUE:
            queued.delivery_count += 1
            limit = self.broker.queue(delivery.queue).spec.delivery_limit
            if limit is not None and queued.delivery_count > limit:
                exceeded = Decision(action=Action.DEAD_LETTER, reason="delivery_limit exceeded")
                self._dead_letter(delivery, exceeded)
            else:
                self.broker.queue(delivery.queue).items.put_nowait(queued)
            return
        if decision.action is Action.DEAD_LETTER:
            self._dead_letter(delivery, decision)
            return
        retried = replace(
            delivery,
            headers=failure_headers(delivery, decision, retries=delivery.retries + 1),
            retries=delivery.retries + 1,
            redelivered=False,
        )
        delay = self.policy.retry.delay(delivery.retries).total_seconds()
        loop = asyncio.get_running_loop()
        self._timers = {t for t in self._timers if t.when() > loop.time()}
        self._timers.add(loop.call_later(delay, self._retry_due, retried))

    def _retry_due(self, delivery: Delivery) -> None:
        with contextlib.suppress(PermanentError):
            self.broker.queue(delivery.queue).items.put_nowait(_Queued(delivery=delivery))

    def _dead_letter(self, delivery: Delivery, decision: Decision) -> None:
        headers = failure_headers(delivery, decision, retries=delivery.retries)
        copy = replace(
            delivery,
            exchange=self.policy.dead_letter.exchange,
            routing_key=delivery.queue,
            headers=headers,
        )
        self.broker.route(copy)

    def _start(self, queue: str, chain: Next, prefetch: int) -> MemorySubscription:
        self._require_open()
        self.broker.queue(queue)  # fail now, not in a worker, if the queue does not exist
        subscription = MemorySubscription(self, queue, chain, prefetch)
        self._subscriptions.append(subscription)
        return subscription

    def _require_open(self) -> None:
        if self._state is not BusState.OPEN:
            raise BusClosedError(f"the bus is {self._state.value}; open it with 'async with'")


__all__ = ["RETRIES_HEADER", "MemoryBroker", "MemoryBus", "MemorySubscription"]
