"""Run one delivery through its chain and decide its fate; shared by every adapter."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import structlog

from flotilla.bus.outcome import Action, Decision, decide
from flotilla.bus.port import Context, Delivery, Next
from flotilla.bus.topology import RetryPolicy
from flotilla.errors import FlotillaError

_log = structlog.get_logger("flotilla.bus")

RETRIES_HEADER = "x-flotilla-retries"
REASON_HEADER = "x-flotilla-reason"
ERROR_TYPE_HEADER = "x-flotilla-error-type"
ORIGIN_QUEUE_HEADER = "x-flotilla-origin-queue"


async def process(chain: Next, delivery: Delivery, policy: RetryPolicy) -> Decision:
    """Run the chain for a delivery; log a failure once, here, at the handler boundary.

    Cancellation is reported as a ``REQUEUE`` decision and then re-raised by the caller's
    task machinery, never swallowed: the caller must not acknowledge the delivery.
    """
    try:
        await chain(Context(delivery=delivery))
    except asyncio.CancelledError as exc:
        decision = decide(exc, retries=delivery.retries, policy=policy)
        _log.warning("delivery_cancelled", queue=delivery.queue, message_id=delivery.message_id)
        return decision
    except Exception as exc:
        decision = decide(exc, retries=delivery.retries, policy=policy)
        log = _log.warning if decision.action is Action.RETRY else _log.error
        log(
            "delivery_failed",
            queue=delivery.queue,
            message_id=delivery.message_id,
            action=decision.action.value,
            reason=decision.reason,
            error_type=decision.error_type,
            retries=delivery.retries,
            exc_info=not isinstance(exc, FlotillaError),
        )
        return decision
    return decide(None, retries=delivery.retries, policy=policy)


def failure_headers(delivery: Delivery, decision: Decision, *, retries: int) -> dict[str, Any]:
    """Headers for a retried or dead-lettered copy: the original's plus the failure's."""
    headers: Mapping[str, Any] = delivery.headers
    return {
        **{k: v for k, v in headers.items() if not k.startswith("x-death")},
        RETRIES_HEADER: retries,
        REASON_HEADER: decision.reason[:4096],
        ERROR_TYPE_HEADER: decision.error_type,
        ORIGIN_QUEUE_HEADER: delivery.queue,
    }
