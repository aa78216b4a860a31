"""``SqlStore``: the scheduler's ``Store`` on SQLAlchemy 2 async, SQLite or PostgreSQL.

Every ``commit`` is one transaction: the deployment (guarded by its version), its attempts,
its outbox messages and the handled key are all written, or none is. That is the
transactional outbox: a crash never loses a decision nor publishes one that was not stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import ColumnElement, RowMapping, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from flotilla.errors import MessageDecodeError
from flotilla.scheduler.model import (
    AttemptOutcome,
    AttemptRecord,
    Change,
    DeploymentRecord,
    JournalEntry,
    Operation,
    OutboxEntry,
    journal_deployment_id,
)
from flotilla.scheduler.sql.engine import create_engine
from flotilla.scheduler.sql.error import StoreClosedError, translated
from flotilla.scheduler.sql.migration import upgrade_to_head
from flotilla.scheduler.sql.table import (
    AttemptRow,
    CursorRow,
    DeploymentRow,
    HandledKeyRow,
    JournalRow,
    OutboxRow,
)
from flotilla.scheduler.store import StaleWriteError
from flotilla.schemas import (
    DeploymentRequest,
    DeploymentStatus,
    Envelope,
    InvalidMessageError,
    decode,
    encode,
    utc_now,
)

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[T]]


class StoreState(StrEnum):
    """Lifecycle of a store: a closed store refuses to be used."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class SqlStore:
    """A ``Store`` in a SQL database.

    Use it as an async context manager, or ``await SqlStore.open(url)`` and ``close()``.
    Opening runs the Alembic migrations up to head unless ``migrate`` is false.

    Args:
        url: ``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://user@host/db``; the
            plain dialect names ``sqlite://`` and ``postgresql://`` get the async driver.
        migrate: Upgrade the schema to the newest revision when opening.
        timeout: Bound of each store call, connection included.
    """

    def __init__(
        self, url: str, *, migrate: bool = True, timeout: timedelta = timedelta(seconds=10)
    ) -> None:
        self._url = url
        self._migrate = migrate
        self._timeout = timeout
        self._engine: AsyncEngine | None = None
        self._state = StoreState.UNOPENED
        self._sql: _Statements | None = None

    @classmethod
    async def open(
        cls, url: str, *, migrate: bool = True, timeout: timedelta = timedelta(seconds=10)
    ) -> Self:
        """Open a store (migrating it first); the caller must ``close()`` it."""
        store = cls(url, migrate=migrate, timeout=timeout)
        return await store.__aenter__()

    @property
    def state(self) -> StoreState:
        """Whether the store is open."""
        return self._state

    async def __aenter__(self) -> Self:
        if self._state is not StoreState.UNOPENED:
            raise StoreClosedError(f"the store is already {self._state.value}")
        if self._migrate:
            await upgrade_to_head(self._url, timeout=self._timeout * 6)
        self._engine = create_engine(self._url, pool_pre_ping=True)
        self._sql = _statements(self._engine.dialect.name)
        self._state = StoreState.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every pooled connection; safe to call twice."""
        if self._state is StoreState.CLOSED:
            return
        self._state = StoreState.CLOSED
        if self._engine is not None:
            async with translated("close the store", timeout=self._timeout):
                await self._engine.dispose()

    async def get(self, deployment_id: str) -> DeploymentRecord | None:
        """One deployment, if it exists."""

        async def work(conn: AsyncConnection) -> DeploymentRecord | None:
            query = self._statements().get_deployment
            row = (await conn.execute(query, {"match_id": deployment_id})).mappings().one_or_none()
            return None if row is None else _deployment(row)

        return await self._run("read a deployment", work)

    async def attempts(self, deployment_id: str) -> list[AttemptRecord]:
        """A deployment's attempts, first to last."""

        async def work(conn: AsyncConnection) -> list[AttemptRecord]:
            query = self._statements().get_attempts
            rows = (await conn.execute(query, {"match_id": deployment_id})).mappings()
            return [_attempt(row) for row in rows]

        return await self._run("read attempts", work)

    async def in_flight(self) -> list[DeploymentRecord]:
        """Deployments with an operation in progress, to resume after a restart."""

        async def work(conn: AsyncConnection) -> list[DeploymentRecord]:
            query = select(DeploymentRow).where(DeploymentRow.operation.is_not(None))
            return [_deployment(row) for row in (await conn.execute(query)).mappings()]

        return await self._run("list in-flight deployments", work)

    async def commit(self, change: Change) -> DeploymentRecord:
        """Write a change in one transaction and return the deployment with its new version.

        Raises:
            StaleWriteError: ``expected_version`` no longer matches the stored one; nothing
                of the change is written.
            DatabaseUnavailableError: the database could not be reached in time.
        """

        async def work(conn: AsyncConnection) -> DeploymentRecord:
            version = await self._write_deployment(conn, change)
            await self._write_attempts(conn, change)
            await self._write_outbox(conn, change)
            await self._write_journal(conn, change.journal)
            if change.handled_key is not None:
                await self._write_key(conn, change.handled_key)
            return replace(change.deployment, version=version)

        return await self._run("commit a deployment change", work)

    async def is_done(self, key: str) -> bool:
        """Whether the message with this idempotency key was already handled."""

        async def work(conn: AsyncConnection) -> bool:
            query = self._statements().get_key
            return (await conn.execute(query, {"match_key": key})).first() is not None

        return await self._run("read a handled key", work)

    async def mark_done(self, key: str) -> None:
        """Record a handled key outside of a change (for messages that change nothing)."""

        async def work(conn: AsyncConnection) -> None:
            await self._write_key(conn, key)

        await self._run("record a handled key", work)

    async def pending(self, limit: int = 100) -> list[OutboxEntry]:
        """Outbox messages not yet published, oldest first.

        Raises:
            MessageDecodeError: a stored message no longer decodes (e.g. after a downgrade).
        """

        async def work(conn: AsyncConnection) -> list[OutboxEntry]:
            query = select(OutboxRow).order_by(OutboxRow.sequence).limit(limit)
            return [_entry(row) for row in (await conn.execute(query)).mappings()]

        return await self._run("read the outbox", work)

    async def mark_sent(self, sequences: list[int]) -> None:
        """Remove published messages from the outbox."""
        if not sequences:
            return

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(delete(OutboxRow).where(OutboxRow.sequence.in_(sequences)))

        await self._run("remove sent messages", work)

    async def record(self, messages: Sequence[Envelope]) -> None:
        """Append events to their deployments' journals outside of a change.

        A message already journaled (same id, e.g. a redelivery) is not added again.
        """
        if not messages:
            return

        async def work(conn: AsyncConnection) -> None:
            await self._write_journal(conn, messages)

        await self._run("journal events", work)

    async def journal(
        self, deployment_id: str, *, after: int = 0, limit: int = 500
    ) -> list[JournalEntry]:
        """A deployment's journal entries with a sequence above ``after``, oldest first.

        Raises:
            MessageDecodeError: a stored event no longer decodes.
        """

        async def work(conn: AsyncConnection) -> list[JournalEntry]:
            query = (
                select(JournalRow)
                .where(JournalRow.deployment_id == deployment_id, JournalRow.sequence > after)
                .order_by(JournalRow.sequence)
                .limit(limit)
            )
            return [_journal_entry(row) for row in (await conn.execute(query)).mappings()]

        return await self._run("read a journal", work)

    async def journal_since(self, after: int = 0, *, limit: int = 500) -> list[JournalEntry]:
        """Every deployment's journal entries with a sequence above ``after``, oldest first.

        Raises:
            MessageDecodeError: a stored event no longer decodes.
        """

        async def work(conn: AsyncConnection) -> list[JournalEntry]:
            query = (
                select(JournalRow)
                .where(JournalRow.sequence > after)
                .order_by(JournalRow.sequence)
                .limit(limit)
            )
            return [_journal_entry(row) for row in (await conn.execute(query)).mappings()]

        return await self._run("read the journal", work)

    async def journal_head(self) -> int:
        """The highest journal sequence written so far (0 for an empty journal)."""

        async def work(conn: AsyncConnection) -> int:
            head = await conn.scalar(select(func.max(JournalRow.sequence)))
            return int(head or 0)

        return await self._run("read the journal head", work)

    async def list_deployments(
        self,
        *,
        owner: str | None = None,
        groups: Collection[str] | None = None,
        status: DeploymentStatus | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[DeploymentRecord], int]:
        """One page of deployments, newest first, and how many match in total."""
        if groups is not None and not groups:
            return [], 0
        conditions: list[ColumnElement[bool]] = []
        if owner is not None:
            conditions.append(DeploymentRow.owner == owner)
        if groups is not None:
            conditions.append(DeploymentRow.group_name.in_(sorted(groups)))
        if status is not None:
            conditions.append(DeploymentRow.status == status.value)

        async def work(conn: AsyncConnection) -> tuple[list[DeploymentRecord], int]:
            count = select(func.count()).select_from(DeploymentRow).where(*conditions)
            total = int(await conn.scalar(count) or 0)
            query = (
                select(DeploymentRow)
                .where(*conditions)
                .order_by(DeploymentRow.created_at.desc(), DeploymentRow.id.desc())
                .offset(offset)
                .limit(limit)
            )
            rows = (await conn.execute(query)).mappings()
            return [_deployment(row) for row in rows], total

        return await self._run("list deployments", work)

    async def cursor(self, name: str) -> int | None:
        """Where the journal reader ``name`` saved its position, if it ever did."""

        async def work(conn: AsyncConnection) -> int | None:
            query = select(CursorRow.position).where(CursorRow.name == name)
            position = await conn.scalar(query)
            return None if position is None else int(position)

        return await self._run("read a cursor", work)

    async def save_cursor(self, name: str, position: int) -> None:
        """Save the journal position of the reader ``name``."""
        values = {"name": name, "position": position, "updated_at": utc_now()}

        async def work(conn: AsyncConnection) -> None:
            upsert = self._insert(CursorRow).values(**values)
            await conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[CursorRow.name],
                    set_={"position": position, "updated_at": values["updated_at"]},
                )
            )

        await self._run("save a cursor", work)

    async def _run(self, what: str, work: Work[T]) -> T:
        """Run ``work`` in one transaction, bounded and with errors translated."""
        engine = self._require_open()
        async with translated(what, timeout=self._timeout), engine.begin() as conn:
            return await work(conn)

    def _statements(self) -> _Statements:
        self._require_open()
        assert self._sql is not None  # made when the store opened
        return self._sql

    async def _write_deployment(self, conn: AsyncConnection, change: Change) -> int:
        """Insert or update the deployment row and return its new version."""
        sql = self._statements()
        values = _deployment_values(change.deployment)
        expected = change.expected_version
        if expected is None:
            # Like MemoryStore: no expectation means create, or overwrite whatever is there.
            result = await conn.execute(sql.upsert_deployment, {**values, "version": 1})
            return int(result.scalar_one())
        del values["id"]
        guard = {"match_id": change.deployment.id, "match_version": expected}
        updated = await conn.execute(
            sql.update_deployment, {**values, "version": expected + 1, **guard}
        )
        if updated.rowcount == 0:
            stored = await conn.scalar(
                select(DeploymentRow.version).where(DeploymentRow.id == change.deployment.id)
            )
            raise StaleWriteError(
                f"deployment changed (version {stored}, expected {expected})",
                deployment_id=change.deployment.id,
            )
        return expected + 1

    async def _write_attempts(self, conn: AsyncConnection, change: Change) -> None:
        """Upsert the touched attempts by (deployment, number)."""
        for attempt in change.attempts:
            values = _attempt_values(attempt, change.deployment.id)
            await conn.execute(self._statements().upsert_attempt, values)

    async def _write_outbox(self, conn: AsyncConnection, change: Change) -> None:
        """Append the change's messages to the outbox, in order."""
        if not change.outbox:
            return
        now = utc_now()
        rows = [
            {"message_id": m.id, "message": encode(m).decode(), "created_at": now}
            for m in change.outbox
        ]
        # One row per statement keeps the sequence in the change's order on every dialect.
        for row in rows:
            await conn.execute(self._statements().insert_outbox, row)

    async def _write_journal(self, conn: AsyncConnection, messages: Sequence[Envelope]) -> None:
        """Append events to the journal in order; an id already there is skipped."""
        now = utc_now()
        # One row per statement keeps the sequence in the given order on every dialect.
        for message in messages:
            row = {
                "message_id": message.id,
                "deployment_id": journal_deployment_id(message),
                "type": getattr(message, "type", type(message).__name__),
                "time": now,
                "message": encode(message).decode(),
            }
            await conn.execute(self._statements().insert_journal, row)

    async def _write_key(self, conn: AsyncConnection, key: str) -> None:
        """Insert a handled key unless it is already there (marking twice is harmless)."""
        await conn.execute(self._statements().insert_key, {"key": key, "created_at": utc_now()})

    def _insert(self, table: type[Any]) -> postgresql.Insert | sqlite.Insert:
        """The dialect's INSERT, which has ``ON CONFLICT`` on both SQLite and PostgreSQL."""
        if self._require_open().dialect.name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def _require_open(self) -> AsyncEngine:
        if self._state is not StoreState.OPEN or self._engine is None:
            raise StoreClosedError(f"the store is {self._state.value}; open it with 'async with'")
        return self._engine


@dataclass(frozen=True, slots=True, kw_only=True)
class _Statements:
    """The statements of the hot paths, built once per store with their values as parameters.

    SQLAlchemy then compiles each once and finds it in its cache by the same object, instead
    of building, coercing and keying a new statement with the values inside for every call.
    """

    get_deployment: Any
    get_attempts: Any
    get_key: Any
    upsert_deployment: Any
    update_deployment: Any
    upsert_attempt: Any
    insert_outbox: Any
    insert_journal: Any
    insert_key: Any


# What an upsert overwrites: every column but the key (and the version, which it counts).
_DEPLOYMENT_COLUMNS = tuple(
    c.name for c in DeploymentRow.__table__.columns if c.name not in ("id", "version")
)
_ATTEMPT_COLUMNS = tuple(
    c.name for c in AttemptRow.__table__.columns if c.name not in ("deployment_id", "number")
)


def _statements(dialect: str) -> _Statements:
    """The statements for ``dialect``; its INSERT has ``ON CONFLICT`` on SQLite and PostgreSQL."""
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    deployment = dialect_insert(DeploymentRow)
    attempt = dialect_insert(AttemptRow)
    return _Statements(
        get_deployment=select(DeploymentRow).where(DeploymentRow.id == bindparam("match_id")),
        get_attempts=select(AttemptRow)
        .where(AttemptRow.deployment_id == bindparam("match_id"))
        .order_by(AttemptRow.number),
        get_key=select(HandledKeyRow.key).where(HandledKeyRow.key == bindparam("match_key")),
        upsert_deployment=deployment.on_conflict_do_update(
            index_elements=[DeploymentRow.id],
            set_={
                **{name: deployment.excluded[name] for name in _DEPLOYMENT_COLUMNS},
                "version": DeploymentRow.version + 1,
            },
        ).returning(DeploymentRow.version),
        # The columns set are the parameters' keys; match_* are the guard's.
        update_deployment=update(DeploymentRow).where(
            DeploymentRow.id == bindparam("match_id"),
            DeploymentRow.version == bindparam("match_version"),
        ),
        upsert_attempt=attempt.on_conflict_do_update(
            index_elements=[AttemptRow.deployment_id, AttemptRow.number],
            set_={name: attempt.excluded[name] for name in _ATTEMPT_COLUMNS},
        ),
        insert_outbox=insert(OutboxRow),
        insert_journal=dialect_insert(JournalRow).on_conflict_do_nothing(
            index_elements=["message_id"]
        ),
        insert_key=dialect_insert(HandledKeyRow).on_conflict_do_nothing(
            index_elements=[HandledKeyRow.key]
        ),
    )


def _deployment_values(record: DeploymentRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "request": record.request.model_dump(mode="json"),
        "owner": record.owner,
        "group_name": record.group,
        "status": record.status.value,
        "status_reason": record.status_reason,
        "operation": None if record.operation is None else record.operation.value,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "deadline": record.deadline,
        "outputs": record.outputs,
    }


def _deployment(row: RowMapping) -> DeploymentRecord:
    operation = row["operation"]
    return DeploymentRecord(
        id=row["id"],
        request=DeploymentRequest.model_validate(row["request"]),
        status=DeploymentStatus(row["status"]),
        status_reason=row["status_reason"],
        operation=None if operation is None else Operation(operation),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        deadline=row["deadline"],
        outputs=row["outputs"],
        version=row["version"],
    )


def _attempt_values(attempt: AttemptRecord, deployment_id: str) -> dict[str, Any]:
    # Keyed by the change's deployment, as MemoryStore files attempts under it.
    return {
        "deployment_id": deployment_id,
        "number": attempt.number,
        "site": attempt.site,
        "sla_id": attempt.sla_id,
        "started_at": attempt.started_at,
        "deadline": attempt.deadline,
        "finished_at": attempt.finished_at,
        "outcome": attempt.outcome.value,
        "cause_code": attempt.cause_code,
        "cause": attempt.cause,
        "released": attempt.released,
        "kept": attempt.kept,
        "ranking": attempt.ranking,
    }


def _attempt(row: RowMapping) -> AttemptRecord:
    values = dict(row)
    values["outcome"] = AttemptOutcome(values["outcome"])
    return AttemptRecord(**values)


def _entry(row: RowMapping) -> OutboxEntry:
    try:
        message: Envelope = decode(row["message"].encode())
    except InvalidMessageError as exc:
        raise MessageDecodeError(
            f"outbox entry {row['sequence']} no longer decodes: {exc.reason}",
            resource=f"outbox/{row['sequence']}",
        ) from exc
    return OutboxEntry(sequence=row["sequence"], message=message)


def _journal_entry(row: RowMapping) -> JournalEntry:
    try:
        message: Envelope = decode(row["message"].encode())
    except InvalidMessageError as exc:
        raise MessageDecodeError(
            f"journal entry {row['sequence']} no longer decodes: {exc.reason}",
            resource=f"journal/{row['sequence']}",
        ) from exc
    return JournalEntry(
        sequence=row["sequence"],
        deployment_id=row["deployment_id"],
        time=row["time"],
        message=message,
    )
