"""Broker topology as data: exchanges, queues, bindings, retry tiers and dead-lettering.

Adapters declare a ``Topology`` idempotently; ``declarations()`` expands the retry and
dead-letter policies into the exchanges and queues that implement them, so both adapters
build exactly the same graph from one description.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from enum import StrEnum


class ExchangeType(StrEnum):
    """AMQP exchange types Flotilla uses."""

    TOPIC = "topic"
    FANOUT = "fanout"
    DIRECT = "direct"


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchange:
    """A durable exchange."""

    name: str
    type: ExchangeType = ExchangeType.TOPIC


@dataclass(frozen=True, slots=True, kw_only=True)
class Queue:
    """A durable queue; quorum by default, with a delivery limit against poison loops."""

    name: str
    quorum: bool = True
    delivery_limit: int | None = 20
    dead_letter_exchange: str | None = None
    dead_letter_to_default: bool = False
    message_ttl: timedelta | None = None
    max_length: int | None = None
    dead_letters: bool = True  # False: expired or over-delivered messages are simply dropped


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    """Routes messages whose routing key matches ``pattern`` from an exchange to a queue."""

    queue: str
    exchange: str
    pattern: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Delayed retry of retryable failures, capped.

    Retry number ``n`` (0-based) waits ``delays[min(n, len(delays) - 1)]``. A tier is an
    exchange and a queue of the same name whose messages expire after the delay and are
    dead-lettered through the default exchange back to the queue named by their routing key.
    """

    prefix: str
    delays: tuple[timedelta, ...] = (
        timedelta(seconds=1),
        timedelta(seconds=5),
        timedelta(seconds=30),
    )
    max_retries: int = 5

    def tier(self, retries: int) -> str:
        """The retry tier (exchange and queue name) used for retry number ``retries``."""
        return self.tier_name(self.delay(retries))

    def delay(self, retries: int) -> timedelta:
        """How long retry number ``retries`` waits."""
        return self.delays[min(retries, len(self.delays) - 1)]

    def tier_name(self, delay: timedelta) -> str:
        """The exchange and queue name of the tier for ``delay``."""
        return f"{self.prefix}.{int(delay.total_seconds() * 1000)}ms"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterPolicy:
    """Where messages that cannot be handled end, with their reason in headers."""

    exchange: str
    queue: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryPolicy:
    """What the bus does with failed deliveries: retry tiers and the dead-letter queue."""

    retry: RetryPolicy
    dead_letter: DeadLetterPolicy


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """Everything to declare on the broker."""

    policy: DeliveryPolicy
    exchanges: tuple[Exchange, ...] = ()
    queues: tuple[Queue, ...] = ()
    bindings: tuple[Binding, ...] = ()

    def declarations(self) -> tuple[tuple[Exchange, ...], tuple[Queue, ...], tuple[Binding, ...]]:
        """Exchanges, queues and bindings including the retry tiers and the dead-letter queue."""
        dead = self.policy.dead_letter
        retry = self.policy.retry
        tiers = tuple(dict.fromkeys(retry.tier_name(delay) for delay in retry.delays))
        exchanges = (
            *self.exchanges,
            Exchange(name=dead.exchange, type=ExchangeType.FANOUT),
            *(Exchange(name=tier, type=ExchangeType.TOPIC) for tier in tiers),
        )
        tier_queues = tuple(
            Queue(
                name=retry.tier_name(delay),
                delivery_limit=None,
                dead_letter_to_default=True,
                message_ttl=delay,
            )
            for delay in dict.fromkeys(retry.delays)
        )
        queues = (
            *(
                _with_dlx(q, dead.exchange) if q.dead_letters and not q.dead_letter_exchange else q
                for q in self.queues
            ),
            Queue(name=dead.queue, delivery_limit=None),
            *tier_queues,
        )
        bindings = (
            *self.bindings,
            Binding(queue=dead.queue, exchange=dead.exchange, pattern="#"),
            *(Binding(queue=tier, exchange=tier, pattern="#") for tier in tiers),
        )
        return exchanges, queues, bindings


def _with_dlx(queue: Queue, exchange: str) -> Queue:
    return replace(queue, dead_letter_exchange=exchange)


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` is zero or more words."""
    return _match(pattern.split("."), routing_key.split(".") if routing_key else [])


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])
