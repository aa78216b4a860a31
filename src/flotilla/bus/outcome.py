"""The one table that maps how a handler ended to what the broker does with the delivery."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum

from flotilla.bus.topology import RetryPolicy
from flotilla.errors import PermanentError, RetryableError


class Action(StrEnum):
    """What happens to a delivery after its handler ran."""

    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    REQUEUE = "requeue"


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """An action and, for failures, the reason that travels in the message headers."""

    action: Action
    reason: str = ""
    error_type: str = ""


def decide(error: BaseException | None, *, retries: int, policy: RetryPolicy) -> Decision:
    """Decide the broker action for a handler outcome.

    | outcome                         | action                                        |
    |---------------------------------|-----------------------------------------------|
    | returned                        | ack                                           |
    | cancelled (shutdown)            | no ack: the broker redelivers it              |
    | ``PermanentError``              | dead-letter with the reason                   |
    | ``RetryableError``, other error | delayed retry, dead-letter after the cap      |
    """
    if error is None:
        return Decision(action=Action.ACK)
    error_type = type(error).__name__
    reason = str(error) or error_type
    if isinstance(error, asyncio.CancelledError):
        return Decision(action=Action.REQUEUE, reason="cancelled", error_type=error_type)
    if isinstance(error, PermanentError):
        return Decision(action=Action.DEAD_LETTER, reason=reason, error_type=error_type)
    if retries >= policy.max_retries:
        gave_up = f"gave up after {retries} retries: {reason}"
        return Decision(action=Action.DEAD_LETTER, reason=gave_up, error_type=error_type)
    if not isinstance(error, RetryableError):
        reason = f"unexpected {error_type}: {reason}"
    return Decision(action=Action.RETRY, reason=reason, error_type=error_type)
