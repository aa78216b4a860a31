"""The scheduler's records: deployments and their attempts, as stored and resumed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from flotilla.errors import PermanentError
from flotilla.schemas import DeploymentRequest, DeploymentStatus, Envelope


class Operation(StrEnum):
    """The one operation a deployment may have in flight."""

    CREATE = "create"
    DELETE = "delete"


class AttemptOutcome(StrEnum):
    """How one attempt at one site ended (or that it has not yet)."""

    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


class EncodedJson(dict[str, Any]):
    """A JSON object that carries its own encoding, for stores that write it as text.

    Made once and never changed: ``text`` must stay the encoding of the items. The
    scheduler builds its rankings this way from parts encoded once and shared by many
    rankings, so a commit does not encode kilobytes of the same site entries again.
    """

    __slots__ = ("text",)

    def __init__(self, items: dict[str, Any], text: str) -> None:
        super().__init__(items)
        self.text = text


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRecord:
    """One try of a deployment at one site, with its cause when it failed."""

    deployment_id: str
    number: int
    site: str
    sla_id: str | None = None
    started_at: datetime
    deadline: datetime | None = None
    finished_at: datetime | None = None
    outcome: AttemptOutcome = AttemptOutcome.IN_PROGRESS
    cause_code: str | None = None
    cause: str | None = None
    released: bool = False
    kept: bool = False
    ranking: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The attempt's idempotency key: deployment id and attempt number."""
        return attempt_key(self.deployment_id, self.number)


def attempt_key(deployment_id: str, number: int) -> str:
    """The idempotency key of a deployment's attempt ``number``."""
    return f"{deployment_id}/{number}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeploymentRecord:
    """A deployment as the scheduler keeps it; ``version`` guards concurrent writers."""

    id: str
    request: DeploymentRequest
    status: DeploymentStatus
    status_reason: str | None = None
    operation: Operation | None = Operation.CREATE
    created_at: datetime
    updated_at: datetime
    deadline: datetime | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    version: int = 0

    @property
    def owner(self) -> str:
        """Who asked for it."""
        return self.request.owner

    @property
    def group(self) -> str:
        """The tenant group it belongs to."""
        return self.request.group


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """Everything one step of the lifecycle writes, atomically.

    The deployment, its touched attempts, the messages to publish (the outbox), the events
    to keep in the deployment's journal and the idempotency key of the message that caused
    the step are written in one transaction, so a crash never loses a decision nor
    publishes one that was not stored, and the journal never disagrees with the state.

    ``expected_version`` guards the deployment: ``0`` creates it (no deployment may have
    its id yet), ``n`` updates it only at version ``n``, and ``None`` writes whatever is
    stored. The lifecycle always guards; ``None`` is for tools and tests.
    """

    deployment: DeploymentRecord
    attempts: tuple[AttemptRecord, ...] = ()
    outbox: tuple[Envelope, ...] = ()
    journal: tuple[Envelope, ...] = ()
    handled_key: str | None = None
    expected_version: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEntry:
    """A stored message waiting to be published."""

    sequence: int
    message: Envelope


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalEntry:
    """One event in a deployment's history, as watchers read it.

    ``sequence`` increases across every deployment in the order the entries were written,
    so a reader resumes after the last sequence it saw. ``time`` is when the store wrote it.
    """

    sequence: int
    deployment_id: str
    time: datetime
    message: Envelope


def journal_deployment_id(message: Envelope) -> str:
    """The deployment a journaled message belongs to: its payload's, else its correlation id.

    Raises:
        PermanentError: the message names no deployment.
    """
    payload = getattr(message, "data", None)
    deployment_id = getattr(payload, "deployment_id", None) or message.correlationid
    if not isinstance(deployment_id, str):
        kind = getattr(message, "type", type(message).__name__)
        raise PermanentError(f"{kind} names no deployment to journal it under")
    return deployment_id
