"""The Flotilla bus: publish and consume messages with at-least-once delivery.

Two adapters implement the same port: ``MemoryBus`` (unit tests and the embedded mode) and
``RabbitBus`` (production, in ``flotilla.bus.rabbitmq``, which alone imports aio-pika).
"""

from flotilla.bus.idempotency import IdempotencyStore, MemoryIdempotencyStore
from flotilla.bus.memory import MemoryBus
from flotilla.bus.middleware import idempotent, sender_must_match
from flotilla.bus.outcome import Action, Decision, decide
from flotilla.bus.port import (
    Bus,
    BusState,
    Context,
    Delivery,
    Handler,
    Middleware,
    Next,
    RawHandler,
    Route,
    Subscription,
)
from flotilla.bus.topology import (
    Binding,
    DeadLetterPolicy,
    DeliveryPolicy,
    Exchange,
    ExchangeType,
    Queue,
    RetryPolicy,
    Topology,
    topic_matches,
)

__all__ = [
    "Action",
    "Binding",
    "Bus",
    "BusState",
    "Context",
    "DeadLetterPolicy",
    "Decision",
    "Delivery",
    "DeliveryPolicy",
    "Exchange",
    "ExchangeType",
    "Handler",
    "IdempotencyStore",
    "MemoryBus",
    "MemoryIdempotencyStore",
    "Middleware",
    "Next",
    "Queue",
    "RawHandler",
    "RetryPolicy",
    "Route",
    "Subscription",
    "Topology",
    "decide",
    "idempotent",
    "sender_must_match",
    "topic_matches",
]
