"""``SqlStore``: the scheduler's ``Store`` on SQLAlchemy 2 async, SQLite or PostgreSQL.

Every ``commit`` is atomic: the deployment (guarded by its version), its attempts, its
outbox messages and the handled key are all written, or none is. That is the transactional
outbox: a crash never loses a decision nor publishes one that was not stored.

Commits, recorded events, deployment reads and handled-key lookups are grouped
(``Batcher``): those that arrive while the database is busy go out together, in one
transaction with one statement per kind of row, which is what lets one scheduler place
hundreds of requests a second. A change the database refuses is written again alone, so
it fails alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    RowMapping,
    all_,
    any_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from flotilla.errors import FlotillaError, MessageDecodeError
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
from flotilla.scheduler.sql.batch import Batcher, Outcome
from flotilla.scheduler.sql.engine import create_engine
from flotilla.scheduler.sql.error import DatabaseError, StoreClosedError, translated
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
Item = TypeVar("Item")  # an item of a batch
R = TypeVar("R")  # what a batch gives back for each item
Work = Callable[[AsyncConnection], Awaitable[T]]
BATCH_LIMIT = 128
"""The most calls of one kind written or read in one transaction."""


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
        self._commits = Batcher(
            self._commit_batch, limit=BATCH_LIMIT, key=lambda change: change.deployment.id
        )
        self._gets = Batcher(self._get_batch, limit=BATCH_LIMIT)
        self._done_keys = Batcher(self._done_batch, limit=BATCH_LIMIT)
        self._records = Batcher(self._record_batch, limit=BATCH_LIMIT)

    @classmethod
    async def open(
        cls, url: str, *, migrate: bool = True, timeout: timedelta = timedelta(seconds=10)
    ) -> Self:
        """Open a store (migrating it first); the caller must ``close()`` it."""
        store = cls(url, migrate=migrate, timeout=timeout)
        return await store.__aenter__()

    @property
    def url(self) -> str:
        """The database URL the store was made with."""
        return self._url

    @property
    def state(self) -> StoreState:
        """Whether the store is open."""
        return self._state

    @property
    def batching(self) -> dict[str, tuple[int, int]]:
        """Calls and the batches they went out in so far, per grouped call
        (``commit``, ``get``, ``is_done``, ``record``): how much group commit shares."""
        batchers: dict[str, Batcher[Any, Any]] = {
            "commit": self._commits,
            "get": self._gets,
            "is_done": self._done_keys,
            "record": self._records,
        }
        return {name: (b.calls, b.batches) for name, b in batchers.items()}

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
        """Close every pooled connection; safe to call twice.

        Calls already queued are refused with ``StoreClosedError``; a batch being written
        finishes first.
        """
        if self._state is StoreState.CLOSED:
            return
        self._state = StoreState.CLOSED
        for batcher in (self._commits, self._gets, self._done_keys, self._records):
            await batcher.wait_idle()
        if self._engine is not None:
            async with translated("close the store", timeout=self._timeout):
                await self._engine.dispose()

    async def get(self, deployment_id: str) -> DeploymentRecord | None:
        """One deployment, if it exists."""
        self._require_open()
        return await self._gets(deployment_id)

    async def attempts(self, deployment_id: str) -> list[AttemptRecord]:
        """A deployment's attempts, first to last."""

        async def work(conn: AsyncConnection) -> list[AttemptRecord]:
            query = self._statements().get_attempts
            rows = (await conn.execute(query, {"match_id": deployment_id})).mappings()
            return [_attempt(row) for row in rows]

        return await self._alone("read attempts", work)

    async def in_flight(self) -> list[DeploymentRecord]:
        """Deployments with an operation in progress, to resume after a restart."""

        async def work(conn: AsyncConnection) -> list[DeploymentRecord]:
            query = select(DeploymentRow).where(DeploymentRow.operation.is_not(None))
            return [_deployment(row) for row in (await conn.execute(query)).mappings()]

        return await self._alone("list in-flight deployments", work)

    async def commit(self, change: Change) -> DeploymentRecord:
        """Write a change atomically and return the deployment with its new version.

        Changes committed at the same time share a transaction; messages reach the outbox
        and the journal in the order of the ``commit`` calls.

        Raises:
            StaleWriteError: ``expected_version`` no longer matches the stored one; nothing
                of the change is written.
            DatabaseError: the database refused the change; nothing of it is written.
            DatabaseUnavailableError: the database could not be reached in time.
        """
        self._require_open()
        return await self._commits(change)

    async def is_done(self, key: str) -> bool:
        """Whether the message with this idempotency key was already handled."""
        self._require_open()
        return await self._done_keys(key)

    async def mark_done(self, key: str) -> None:
        """Record a handled key outside of a change (for messages that change nothing)."""

        async def work(conn: AsyncConnection) -> None:
            await self._write_key(conn, key)

        await self._alone("record a handled key", work)

    async def pending(
        self, limit: int = 100, *, exclude: Collection[int] = ()
    ) -> list[OutboxEntry]:
        """Outbox messages not yet published, oldest first, leaving out ``exclude``.

        Raises:
            MessageDecodeError: a stored message no longer decodes (e.g. after a downgrade).
        """

        async def work(conn: AsyncConnection) -> list[OutboxEntry]:
            query = self._statements().pending.limit(limit)
            rows = await conn.execute(query, {"excluded": sorted(exclude)})
            return [_entry(row) for row in rows.mappings()]

        return await self._alone("read the outbox", work)

    async def mark_sent(self, sequences: list[int]) -> None:
        """Remove published messages from the outbox."""
        if not sequences:
            return

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(self._statements().mark_sent, {"sent": sequences})

        await self._alone("remove sent messages", work)

    async def record(self, messages: Sequence[Envelope]) -> None:
        """Append events to their deployments' journals outside of a change.

        A message already journaled (same id, e.g. a redelivery) is not added again.
        Events recorded at the same time (progress from many sites) share a transaction,
        in the order of the calls.

        Raises:
            PermanentError: a message names no deployment; none of this call's is written.
        """
        if not messages:
            return
        self._require_open()
        await self._records(tuple(messages))

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

        return await self._alone("read a journal", work)

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

        return await self._alone("read the journal", work)

    async def journal_head(self) -> int:
        """The highest journal sequence written so far (0 for an empty journal)."""

        async def work(conn: AsyncConnection) -> int:
            head = await conn.scalar(select(func.max(JournalRow.sequence)))
            return int(head or 0)

        return await self._alone("read the journal head", work)

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

        return await self._alone("read a cursor", work)

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

        await self._alone("save a cursor", work)

    async def _run(self, what: str, work: Work[T]) -> T:
        """Run ``work`` in one transaction, bounded and with errors translated."""
        engine = self._require_open()
        async with translated(what, timeout=self._timeout), engine.begin() as conn:
            return await work(conn)

    async def _alone(self, what: str, work: Work[T]) -> T:
        """Run ``work``, one statement, with no transaction around it (bounded, translated).

        A single statement is atomic by itself; leaving out BEGIN and COMMIT saves two
        round trips to the database, which under load wait their turn in the event loop.
        """
        engine = self._require_open()
        async with (
            translated(what, timeout=self._timeout),
            engine.connect() as conn,
        ):
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            return await work(conn)

    def _statements(self) -> _Statements:
        self._require_open()
        assert self._sql is not None  # made when the store opened
        return self._sql

    async def _get_batch(self, ids: list[str]) -> list[Outcome[DeploymentRecord | None]]:
        """The deployments of ``ids`` (None where there is none), in one query."""

        async def work(conn: AsyncConnection) -> dict[str, RowMapping]:
            query = self._statements().get_deployments
            rows = (await conn.execute(query, {"match_ids": sorted(set(ids))})).mappings()
            return {row["id"]: row for row in rows}

        found = await self._alone("read deployments", work)
        return [_outcome(_deployment, found.get(deployment_id)) for deployment_id in ids]

    async def _done_batch(self, keys: list[str]) -> list[Outcome[bool]]:
        """Which of ``keys`` were handled, in one query."""

        async def work(conn: AsyncConnection) -> set[str]:
            query = self._statements().get_keys
            return set((await conn.execute(query, {"match_keys": sorted(set(keys))})).scalars())

        done = await self._alone("read handled keys", work)
        return [key in done for key in keys]

    async def _commit_batch(self, changes: list[Change]) -> list[Outcome[DeploymentRecord]]:
        """Write ``changes`` in one transaction; when the database refuses it, each alone.

        A stale change fails alone inside the batch.
        """

        async def work(conn: AsyncConnection) -> list[Outcome[DeploymentRecord]]:
            return await self._write_changes(conn, changes)

        what = "commit a deployment change"
        if len(changes) > 1:
            what = f"commit {len(changes)} deployment changes"
        return await self._each_alone_if_refused(what, work, changes, self._commit_batch)

    async def _record_batch(self, calls: list[tuple[Envelope, ...]]) -> list[Outcome[None]]:
        """Journal the events of several ``record`` calls in one transaction."""
        now = utc_now()
        outcomes: list[Outcome[None]] = []
        rows: list[dict[str, Any]] = []
        for messages in calls:
            try:
                rows += [_journal_values(message, now) for message in messages]
            except FlotillaError as exc:  # names no deployment: refused before writing
                outcomes.append(exc)
            else:
                outcomes.append(None)

        async def work(conn: AsyncConnection) -> list[Outcome[None]]:
            if rows:
                await conn.execute(self._statements().insert_journal, rows)
            return outcomes

        return await self._each_alone_if_refused("journal events", work, calls, self._record_batch)

    async def _each_alone_if_refused(
        self,
        what: str,
        work: Work[list[Outcome[R]]],
        items: list[Item],
        write: Callable[[list[Item]], Awaitable[list[Outcome[R]]]],
    ) -> list[Outcome[R]]:
        """Run a batch's ``work`` in one transaction; if the database refuses it, ``write``
        each item alone, so that only the refused one fails.

        A refused statement (a constraint, a value the column does not take) undoes the
        whole transaction without saying whose row it was. A database that cannot be
        reached fails the whole batch.
        """
        try:
            return await self._run(what, work)
        except DatabaseError:
            if len(items) == 1:
                raise
            return [await _settled(write([item])) for item in items]

    async def _write_changes(
        self, conn: AsyncConnection, changes: list[Change]
    ) -> list[Outcome[DeploymentRecord]]:
        """Write each change's rows, a statement per kind of row (each deployment once).

        The deployment comes first: created (expected version 0) if no row has its id,
        updated if its version is the one expected, or (no expectation) written over.
        A change whose deployment is refused as stale writes nothing else.
        """
        sql = self._statements()
        values = {c.deployment.id: _deployment_values(c.deployment) for c in changes}
        created = await self._create_deployments(
            conn, [values[c.deployment.id] for c in changes if c.expected_version == 0]
        )
        overwritten = await self._overwrite_deployments(
            conn, [values[c.deployment.id] for c in changes if c.expected_version is None]
        )
        outcomes: list[Outcome[DeploymentRecord]] = []
        kept: list[Change] = []
        for change in changes:
            deployment_id = change.deployment.id
            if change.expected_version is None:
                version = overwritten[deployment_id]
            elif change.expected_version == 0:
                if deployment_id not in created:
                    stale = StaleWriteError(
                        "deployment already exists", deployment_id=deployment_id
                    )
                    outcomes.append(stale)
                    continue
                version = 1
            else:
                try:
                    version = await self._update_deployment(conn, change, values[deployment_id])
                except StaleWriteError as exc:
                    outcomes.append(exc)
                    continue
            kept.append(change)
            outcomes.append(replace(change.deployment, version=version))
        now = utc_now()
        for statement, params in (
            (
                sql.upsert_attempt,
                [_attempt_values(a, c.deployment.id) for c in kept for a in c.attempts],
            ),
            (sql.insert_outbox, [_outbox_values(m, now) for c in kept for m in c.outbox]),
            (sql.insert_journal, [_journal_values(m, now) for c in kept for m in c.journal]),
            (sql.insert_key, [_key_values(c.handled_key, now) for c in kept if c.handled_key]),
        ):
            # Rows go one by one in the given order (executemany), so the outbox and the
            # journal number them in the order of the changes on every dialect.
            if params:
                await conn.execute(statement, params)
        return outcomes

    async def _create_deployments(
        self, conn: AsyncConnection, rows: list[dict[str, Any]]
    ) -> set[str]:
        """Insert the deployments no row has the id of yet, in one statement; their ids."""
        if not rows:
            return set()
        inserted = await conn.execute(
            self._statements().create_deployments, [{**row, "version": 1} for row in rows]
        )
        return set(inserted.scalars())

    async def _overwrite_deployments(
        self, conn: AsyncConnection, rows: list[dict[str, Any]]
    ) -> dict[str, int]:
        """Create or overwrite deployments whatever their version; their new versions.

        Like MemoryStore: no expectation means create, or write over what is there. The
        statement counts the stored version up itself; the one read first is what it finds
        unless another process writes the same deployment meanwhile, and then the next
        guarded write of this one is refused as stale.
        """
        if not rows:
            return {}
        sql = self._statements()
        found = await conn.execute(sql.get_versions, {"match_ids": [row["id"] for row in rows]})
        stored: dict[str, int] = {row.id: row.version for row in found}
        await conn.execute(sql.upsert_deployment, [{**row, "version": 1} for row in rows])
        return {row["id"]: stored.get(row["id"], 0) + 1 for row in rows}

    async def _update_deployment(
        self, conn: AsyncConnection, change: Change, values: dict[str, Any]
    ) -> int:
        """Update a deployment guarded by its expected version and return the new version."""
        expected = change.expected_version
        assert expected is not None  # only guarded changes come here
        guard = {"match_id": change.deployment.id, "match_version": expected}
        columns = {name: value for name, value in values.items() if name != "id"}
        updated = await conn.execute(
            self._statements().update_deployment, {**columns, "version": expected + 1, **guard}
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

    async def _write_key(self, conn: AsyncConnection, key: str) -> None:
        """Insert a handled key unless it is already there (marking twice is harmless)."""
        await conn.execute(self._statements().insert_key, _key_values(key, utc_now()))

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

    get_deployments: Any
    get_versions: Any
    get_attempts: Any
    get_keys: Any
    pending: Any
    mark_sent: Any
    create_deployments: Any
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
    deployment_ids = _one_of(DeploymentRow.id, "match_ids", dialect)
    return _Statements(
        get_deployments=select(DeploymentRow).where(deployment_ids),
        get_versions=select(DeploymentRow.id, DeploymentRow.version).where(deployment_ids),
        get_attempts=select(AttemptRow)
        .where(AttemptRow.deployment_id == bindparam("match_id"))
        .order_by(AttemptRow.number),
        get_keys=select(HandledKeyRow.key).where(_one_of(HandledKeyRow.key, "match_keys", dialect)),
        # The outbox, oldest first, less what a relay published and is removing.
        pending=select(OutboxRow)
        .where(_one_of(OutboxRow.sequence, "excluded", dialect, negate=True))
        .order_by(OutboxRow.sequence),
        mark_sent=delete(OutboxRow).where(_one_of(OutboxRow.sequence, "sent", dialect)),
        # Given a list, one INSERT with a row of values each; RETURNING names those inserted.
        create_deployments=deployment.on_conflict_do_nothing(
            index_elements=[DeploymentRow.id]
        ).returning(DeploymentRow.id),
        upsert_deployment=deployment.on_conflict_do_update(
            index_elements=[DeploymentRow.id],
            set_={
                **{name: deployment.excluded[name] for name in _DEPLOYMENT_COLUMNS},
                "version": DeploymentRow.version + 1,
            },
        ),
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


def _one_of(column: Any, name: str, dialect: str, *, negate: bool = False) -> Any:
    """``column`` is one of the list passed as ``name`` (with ``negate``, none of it).

    PostgreSQL takes the list as one array, so the statement is the same whatever its
    length and is prepared once; SQLite gets an ``IN`` with one parameter per value.
    """
    if dialect == "postgresql":
        values = bindparam(name, type_=ARRAY(column.type))
        return column != all_(values) if negate else column == any_(values)
    values = bindparam(name, expanding=True)
    return column.not_in(values) if negate else column.in_(values)


def _outcome(convert: Callable[[RowMapping], T], row: RowMapping | None) -> Outcome[T | None]:
    """``convert(row)``, None for no row, or the error converting it raised."""
    if row is None:
        return None
    try:
        return convert(row)
    except Exception as exc:
        return exc


async def _settled(outcomes: Awaitable[list[Outcome[T]]]) -> Outcome[T]:
    """The one outcome of a batch of one, its error included."""
    try:
        [outcome] = await outcomes
    except FlotillaError as exc:
        return exc
    return outcome


def _outbox_values(message: Envelope, now: datetime) -> dict[str, Any]:
    return {"message_id": message.id, "message": encode(message).decode(), "created_at": now}


def _journal_values(message: Envelope, now: datetime) -> dict[str, Any]:
    return {
        "message_id": message.id,
        "deployment_id": journal_deployment_id(message),
        "type": getattr(message, "type", type(message).__name__),
        "time": now,
        "message": encode(message).decode(),
    }


def _key_values(key: str, now: datetime) -> dict[str, Any]:
    return {"key": key, "created_at": now}


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
