"""The event loop a long-running Flotilla process runs on, and its garbage collector.

uvloop by default: an AMQP publish with its confirm, plus the consume and ack of the
message, costs about a third less client CPU on uvloop's loop than on asyncio's own
(0.23 against 0.37 ms per message, raw aio-pika on a local RabbitMQ).
``bench/scheduler.py --loop asyncio`` compares the whole scheduler, where the difference
is smaller than a shared machine's noise. ``FLOTILLA_EVENT_LOOP=asyncio`` selects the
standard loop, for instance to rule uvloop out while chasing a problem.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from flotilla.settings import EventLoop

_T = TypeVar("_T")


def loop_factory(loop: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory ``asyncio.Runner`` takes for ``loop``; ``None`` is asyncio's default."""
    return uvloop.new_event_loop if loop == "uvloop" else None


def run(main: Coroutine[Any, Any, _T], *, loop: EventLoop = "uvloop") -> _T:
    """Run ``main`` to completion on a new event loop of the kind ``loop`` names."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)


def tune_collector() -> None:
    """Make the garbage collector cheap for a long-running process that handles messages.

    Call it once the process's long-lived objects exist (its store, bus and registry).
    Everything allocated until then lives as long as the process, so it is frozen out of
    collections (otherwise long pauses in decisions). Each message handled allocates many
    small short-lived objects without cycles; with the default threshold of 700 the
    youngest generation is collected several times per message, which cost about a quarter
    of the scheduler's CPU and a sixth of its relay process's in ``bench/scheduler.py``. A
    larger first threshold collects it every 50,000 allocations instead; the memory held
    meanwhile is a few megabytes.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
