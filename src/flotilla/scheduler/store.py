"""The scheduler's storage port, and the in-memory implementation for tests and embedded mode."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Protocol

from flotilla.errors import PermanentError, RetryableError
from flotilla.scheduler.model import AttemptRecord, Change, DeploymentRecord, OutboxEntry
from flotilla.schemas import DeploymentStatus

FINAL_STATUSES = frozenset(
    {
        DeploymentStatus.CREATE_COMPLETE,
        DeploymentStatus.CREATE_FAILED,
        DeploymentStatus.DELETE_COMPLETE,
        DeploymentStatus.DELETE_FAILED,
        DeploymentStatus.UPDATE_COMPLETE,
        DeploymentStatus.UPDATE_FAILED,
    }
)


class StaleWriteError(RetryableError):
    """Another writer changed the deployment since it was read; retrying re-reads it."""


class Store(Protocol):
    """Durable state of the scheduler: deployments, attempts, outbox, handled keys."""

    async def get(self, deployment_id: str) -> DeploymentRecord | None:
        """One deployment, if it exists."""
        ...

    async def attempts(self, deployment_id: str) -> list[AttemptRecord]:
        """A deployment's attempts, first to last."""
        ...

    async def in_flight(self) -> list[DeploymentRecord]:
        """Deployments with an operation in progress, to resume after a restart."""
        ...

    async def commit(self, change: Change) -> DeploymentRecord:
        """Write a change atomically and return the deployment with its new version.

        Raises:
            StaleWriteError: ``expected_version`` no longer matches the stored one.
        """
        ...

    async def is_done(self, key: str) -> bool:
        """Whether the message with this idempotency key was already handled."""
        ...

    async def mark_done(self, key: str) -> None:
        """Record a handled key outside of a change (for messages that change nothing)."""
        ...

    async def pending(self, limit: int = 100) -> list[OutboxEntry]:
        """Outbox messages not yet published, oldest first."""
        ...

    async def mark_sent(self, sequences: list[int]) -> None:
        """Remove published messages from the outbox."""
        ...


class MemoryStore:
    """A ``Store`` in a dictionary, for unit tests and the embedded mode."""

    def __init__(self) -> None:
        self._deployments: dict[str, DeploymentRecord] = {}
        self._attempts: dict[str, dict[int, AttemptRecord]] = {}
        self._outbox: dict[int, OutboxEntry] = {}
        self._done: set[str] = set()
        self._sequence = 0

    async def get(self, deployment_id: str) -> DeploymentRecord | None:
        """One deployment, if it exists."""
        return self._deployments.get(deployment_id)

    async def attempts(self, deployment_id: str) -> list[AttemptRecord]:
        """A deployment's attempts, first to last."""
        return [a for _, a in sorted(self._attempts.get(deployment_id, {}).items())]

    async def in_flight(self) -> list[DeploymentRecord]:
        """Deployments with an operation in progress."""
        return [d for d in self._deployments.values() if d.operation is not None]

    async def commit(self, change: Change) -> DeploymentRecord:
        """Apply a change; all of it or nothing."""
        _require_aware(change)
        current = self._deployments.get(change.deployment.id)
        stored_version = current.version if current else None
        if change.expected_version is not None and stored_version != change.expected_version:
            raise StaleWriteError(
                f"deployment changed (version {stored_version},"
                f" expected {change.expected_version})",
                deployment_id=change.deployment.id,
            )
        record = replace(change.deployment, version=(stored_version or 0) + 1)
        self._deployments[record.id] = record
        for attempt in change.attempts:
            self._attempts.setdefault(record.id, {})[attempt.number] = attempt
        for message in change.outbox:
            self._sequence += 1
            self._outbox[self._sequence] = OutboxEntry(sequence=self._sequence, message=message)
        if change.handled_key is not None:
            self._done.add(change.handled_key)
        return record

    async def is_done(self, key: str) -> bool:
        """Whether the key was handled."""
        return key in self._done

    async def mark_done(self, key: str) -> None:
        """Record a handled key."""
        self._done.add(key)

    async def pending(self, limit: int = 100) -> list[OutboxEntry]:
        """Unpublished messages, oldest first."""
        return [self._outbox[s] for s in sorted(self._outbox)[:limit]]

    async def mark_sent(self, sequences: list[int]) -> None:
        """Forget published messages."""
        for sequence in sequences:
            self._outbox.pop(sequence, None)


def _require_aware(change: Change) -> None:
    """Refuse naive timestamps, as the SQL store does: a time without a zone is ambiguous."""
    records: list[DeploymentRecord | AttemptRecord] = [change.deployment, *change.attempts]
    for record in records:
        for name in ("created_at", "updated_at", "deadline", "started_at", "finished_at"):
            value = getattr(record, name, None)
            if isinstance(value, datetime) and value.tzinfo is None:
                raise PermanentError(f"{type(record).__name__}.{name} has no time zone")
