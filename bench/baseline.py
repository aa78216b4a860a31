"""What the benches' bare aio-pika baselines share: aiormq as it comes.

Importing Flotilla's RabbitMQ bus and opening it widens aiormq's write queue for the whole
process (``flotilla.bus.rabbitmq.connect_robust``). A baseline that should show what plain
aio-pika does connects inside ``aiormq_defaults()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aiormq
import aiormq.abc


@contextlib.contextmanager
def aiormq_defaults() -> Iterator[None]:
    """Connections made inside get aiormq's own write queue size, as plain aio-pika would."""
    widened = aiormq.Connection.FRAME_BUFFER_SIZE
    aiormq.Connection.FRAME_BUFFER_SIZE = aiormq.abc.AbstractConnection.FRAME_BUFFER_SIZE
    try:
        yield
    finally:
        aiormq.Connection.FRAME_BUFFER_SIZE = widened
