"""The scheduler's storage port, and the in-memory implementation for tests and embedded mode.

Besides the state the scheduler decides on, the store keeps a *journal*: every public
event of every deployment (status changes, site reports, progress) under one increasing
sequence. Status changes and reports are journaled in the transaction of the change they
belong to; progress is appended on its own with ``record``. Readers (the gateway's event
streams, logs and callbacks) page through it with ``journal`` and ``journal_since``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime
from itertools import islice
from typing import Protocol

from flotilla.errors import PermanentError, RetryableError
from flotilla.scheduler.model import (
    AttemptRecord,
    Change,
    DeploymentRecord,
    JournalEntry,
    OutboxEntry,
    journal_deployment_id,
)
from flotilla.schemas import DeploymentStatus, Envelope, utc_now

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
            StaleWriteError: ``expected_version`` no longer matches the stored one (for
                ``0``: the deployment exists already).
        """
        ...

    async def is_done(self, key: str) -> bool:
        """Whether the message with this idempotency key was already handled."""
        ...

    async def mark_done(self, key: str) -> None:
        """Record a handled key outside of a change (for messages that change nothing)."""
        ...

    async def pending(
        self, limit: int = 100, *, exclude: Collection[int] = ()
    ) -> list[OutboxEntry]:
        """Outbox messages not yet published, oldest first, leaving out the sequences in
        ``exclude`` (published, and being removed)."""
        ...

    async def mark_sent(self, sequences: list[int]) -> None:
        """Remove published messages from the outbox."""
        ...

    async def record(self, messages: Sequence[Envelope]) -> None:
        """Append events to their deployments' journals outside of a change (e.g. progress).

        A message already in the journal (same id, e.g. a redelivery) is not added again.
        """
        ...

    async def journal(
        self, deployment_id: str, *, after: int = 0, limit: int = 500
    ) -> list[JournalEntry]:
        """A deployment's journal entries with a sequence above ``after``, oldest first."""
        ...

    async def journal_since(self, after: int = 0, *, limit: int = 500) -> list[JournalEntry]:
        """Every deployment's journal entries with a sequence above ``after``, oldest first."""
        ...

    async def journal_head(self) -> int:
        """The highest journal sequence written so far (0 for an empty journal)."""
        ...

    async def list_deployments(
        self,
        *,
        owner: str | None = None,
        groups: Collection[str] | None = None,
        status: DeploymentStatus | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[DeploymentRecord], int]:
        """One page of deployments, newest first, and how many match in total.

        Args:
            owner: Only deployments of this owner.
            groups: Only deployments of these groups (None: any group; empty: none).
            status: Only deployments in this status.
            offset: Matching deployments to skip.
            limit: Most deployments to return.
        """
        ...

    async def cursor(self, name: str) -> int | None:
        """Where the journal reader ``name`` saved its position, if it ever did."""
        ...

    async def save_cursor(self, name: str, position: int) -> None:
        """Save the journal position of the reader ``name``."""
        ...


class MemoryStore:
    """A ``Store`` in a dictionary, for unit tests and the embedded mode."""

    def __init__(self) -> None:
        self._deployments: dict[str, DeploymentRecord] = {}
        self._attempts: dict[str, dict[int, AttemptRecord]] = {}
        self._outbox: dict[int, OutboxEntry] = {}
        self._done: set[str] = set()
        self._sequence = 0
        self._journal: dict[int, JournalEntry] = {}
        self._by_deployment: dict[str, list[int]] = {}
        self._journaled: set[str] = set()
        self._journal_sequence = 0
        self._cursors: dict[str, int] = {}

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
        for message in change.journal:
            journal_deployment_id(message)  # refuse before writing anything
        current = self._deployments.get(change.deployment.id)
        stored_version = current.version if current else 0  # 0: not stored yet
        if change.expected_version is not None and stored_version != change.expected_version:
            raise StaleWriteError(
                "deployment already exists"
                if change.expected_version == 0
                else f"deployment changed (version {stored_version or None},"
                f" expected {change.expected_version})",
                deployment_id=change.deployment.id,
            )
        record = replace(change.deployment, version=stored_version + 1)
        self._deployments[record.id] = record
        for attempt in change.attempts:
            self._attempts.setdefault(record.id, {})[attempt.number] = attempt
        for message in change.outbox:
            self._sequence += 1
            self._outbox[self._sequence] = OutboxEntry(sequence=self._sequence, message=message)
        self._append(change.journal)
        if change.handled_key is not None:
            self._done.add(change.handled_key)
        return record

    async def is_done(self, key: str) -> bool:
        """Whether the key was handled."""
        return key in self._done

    async def mark_done(self, key: str) -> None:
        """Record a handled key."""
        self._done.add(key)

    async def pending(
        self, limit: int = 100, *, exclude: Collection[int] = ()
    ) -> list[OutboxEntry]:
        """Unpublished messages, oldest first (sequences are added in order)."""
        entries = self._outbox.values()
        if exclude:
            return list(islice((e for e in entries if e.sequence not in exclude), limit))
        return list(islice(entries, limit))

    async def mark_sent(self, sequences: list[int]) -> None:
        """Forget published messages."""
        for sequence in sequences:
            self._outbox.pop(sequence, None)

    async def record(self, messages: Sequence[Envelope]) -> None:
        """Append events to the journal; ids already journaled are skipped."""
        self._append(messages)

    async def journal(
        self, deployment_id: str, *, after: int = 0, limit: int = 500
    ) -> list[JournalEntry]:
        """A deployment's entries after ``after``, oldest first."""
        sequences = [s for s in self._by_deployment.get(deployment_id, []) if s > after]
        return [self._journal[s] for s in sequences[:limit]]

    async def journal_since(self, after: int = 0, *, limit: int = 500) -> list[JournalEntry]:
        """Every entry after ``after``, oldest first."""
        sequences = [s for s in self._journal if s > after]  # dicts keep insertion order
        return [self._journal[s] for s in sequences[:limit]]

    async def journal_head(self) -> int:
        """The highest sequence written."""
        return self._journal_sequence

    async def list_deployments(
        self,
        *,
        owner: str | None = None,
        groups: Collection[str] | None = None,
        status: DeploymentStatus | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[DeploymentRecord], int]:
        """A page of matching deployments, newest first, and the total."""
        allowed = None if groups is None else set(groups)
        matching = [
            d
            for d in self._deployments.values()
            if (owner is None or d.owner == owner)
            and (allowed is None or d.group in allowed)
            and (status is None or d.status is status)
        ]
        matching.sort(key=lambda d: (d.created_at, d.id), reverse=True)
        return matching[offset : offset + limit], len(matching)

    async def cursor(self, name: str) -> int | None:
        """A reader's saved position."""
        return self._cursors.get(name)

    async def save_cursor(self, name: str, position: int) -> None:
        """Save a reader's position."""
        self._cursors[name] = position

    def _append(self, messages: Sequence[Envelope]) -> None:
        now = utc_now()
        deployment_ids = [journal_deployment_id(m) for m in messages]  # all, or none written
        for message, deployment_id in zip(messages, deployment_ids, strict=True):
            if message.id in self._journaled:
                continue
            self._journal_sequence += 1
            sequence = self._journal_sequence
            self._journal[sequence] = JournalEntry(
                sequence=sequence, deployment_id=deployment_id, time=now, message=message
            )
            self._by_deployment.setdefault(deployment_id, []).append(sequence)
            self._journaled.add(message.id)


def _require_aware(change: Change) -> None:
    """Refuse naive timestamps, as the SQL store does: a time without a zone is ambiguous."""
    records: list[DeploymentRecord | AttemptRecord] = [change.deployment, *change.attempts]
    for record in records:
        for name in ("created_at", "updated_at", "deadline", "started_at", "finished_at"):
            value = getattr(record, name, None)
            if isinstance(value, datetime) and value.tzinfo is None:
                raise PermanentError(f"{type(record).__name__}.{name} has no time zone")
