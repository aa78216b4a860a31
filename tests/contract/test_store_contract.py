"""The store contract: MemoryStore and SqlStore (SQLite, PostgreSQL) behave the same."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, inspect
from sqlalchemy.ext.asyncio import create_async_engine

from flotilla.errors import PermanentError, RetryableError
from flotilla.scheduler.model import (
    AttemptOutcome,
    AttemptRecord,
    Change,
    DeploymentRecord,
    Operation,
)
from flotilla.scheduler.sql import (
    SqlStore,
    StoreClosedError,
    current_revision,
    head_revision,
    upgrade_to_head,
)
from flotilla.scheduler.sql.table import metadata
from flotilla.scheduler.store import StaleWriteError, Store
from flotilla.schemas import (
    DeleteRequest,
    DeploymentDeleteRequested,
    DeploymentRequest,
    DeploymentStatus,
    Envelope,
    Scheduling,
    SchedulingMode,
    decode,
    encode,
    new_id,
)
from tests.contract.stores import _admin, pg_url

pytestmark = pytest.mark.timeout(60)

TABLES = {
    "deployments",
    "attempts",
    "outbox",
    "handled_keys",
    "journal",
    "cursors",
    "alembic_version",
}
T = TypeVar("T")
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def make_request(**overrides: object) -> DeploymentRequest:
    """A deployment request with every kind of field set."""
    values: dict[str, object] = {
        "deployment_id": new_id(),
        "template": "tosca_definitions_version: tosca_simple_yaml_1_0\n",
        "inputs": {"cpus": 4, "ratio": 0.5, "tags": ["a", "b"], "nested": {"x": None}},
        "owner": "alice",
        "group": "physics",
        "scheduling": Scheduling(mode=SchedulingMode.MANUAL, site="alpha"),
        "timeout": timedelta(hours=2),
        "site_timeout": timedelta(minutes=20, seconds=30),
        "max_sites": 3,
        "callback_url": "https://example.org/cb",
    }
    values.update(overrides)
    return DeploymentRequest.model_validate(values)


def make_record(
    operation: Operation | None = Operation.CREATE, **overrides: object
) -> DeploymentRecord:
    """A new deployment record (version 0, never stored)."""
    request = make_request()
    record = DeploymentRecord(
        id=request.deployment_id,
        request=request,
        status=DeploymentStatus.CREATE_IN_PROGRESS,
        status_reason="placing",
        operation=operation,
        created_at=T0,
        updated_at=T0 + timedelta(seconds=1),
        deadline=T0 + timedelta(hours=2),
        outputs={"endpoint": "https://vm.example.org", "ports": [22, 443]},
    )
    return replace(record, **overrides)  # type: ignore[arg-type]


def make_attempt(deployment_id: str, number: int, **overrides: object) -> AttemptRecord:
    """An attempt of a deployment."""
    attempt = AttemptRecord(
        deployment_id=deployment_id,
        number=number,
        site=f"site-{number}",
        sla_id="sla-1",
        started_at=T0 + timedelta(minutes=number),
        deadline=T0 + timedelta(minutes=number + 20),
        ranking={"score": 0.75, "reasons": ["cheap", "close"]},
    )
    return replace(attempt, **overrides)  # type: ignore[arg-type]


def make_message(deployment_id: str) -> DeploymentDeleteRequested:
    """An outbox message correlated with the deployment."""
    data = DeleteRequest(deployment_id=deployment_id, requested_by="alice")
    return DeploymentDeleteRequested.create(data, source="/flotilla/test")


def announced(
    record: DeploymentRecord,
    key: str,
    *,
    version: int | None,
    attempts: tuple[AttemptRecord, ...] = (),
) -> Change:
    """A change of ``record`` that sends one message and records ``key`` as handled."""
    return Change(
        deployment=record,
        attempts=attempts,
        outbox=(make_message(record.id),),
        handled_key=key,
        expected_version=version,
    )


async def test_commit_and_get_round_trip(store: Store) -> None:
    """A committed deployment reads back equal, with version 1 and aware UTC timestamps."""
    record = make_record()

    committed = await store.commit(Change(deployment=record))
    stored = await store.get(record.id)

    assert committed == replace(record, version=1)
    assert stored == committed
    assert stored is not None
    assert stored.created_at.tzinfo is not None
    assert stored.created_at.utcoffset() == timedelta(0)
    assert await store.get(new_id()) is None


async def test_non_utc_timestamps_read_back_as_the_same_instant(store: Store) -> None:
    """A timestamp in another zone reads back as the same instant."""
    zone = datetime.now().astimezone().tzinfo
    local = T0.astimezone(zone)
    record = make_record(created_at=local, operation=None, outputs={}, deadline=None)

    await store.commit(Change(deployment=record))
    stored = await store.get(record.id)

    assert stored is not None
    assert stored.created_at == T0
    assert stored.deadline is None
    assert stored.operation is None
    assert stored.outputs == {}


async def test_attempts_in_order_and_upserted_by_number(store: Store) -> None:
    """Attempts come back by number; committing the same number again replaces it."""
    record = make_record()
    first, second = make_attempt(record.id, 1), make_attempt(record.id, 2)
    v1 = await store.commit(Change(deployment=record, attempts=(second, first)))

    failed = replace(
        first,
        outcome=AttemptOutcome.FAILED,
        finished_at=T0 + timedelta(minutes=5),
        cause_code="quota",
        cause="quota exceeded",
        released=True,
        kept=True,
    )
    await store.commit(Change(deployment=v1, attempts=(failed,), expected_version=1))

    assert await store.attempts(record.id) == [failed, second]
    assert await store.attempts(new_id()) == []


async def test_in_flight_lists_only_deployments_with_an_operation(store: Store) -> None:
    """in_flight returns the deployments with an operation and none of the settled ones."""
    creating = make_record(Operation.CREATE)
    deleting = make_record(Operation.DELETE)
    settled = make_record(None, status=DeploymentStatus.CREATE_COMPLETE)
    for record in (creating, deleting, settled):
        await store.commit(Change(deployment=record))

    found = {record.id: record.operation for record in await store.in_flight()}

    assert found == {creating.id: Operation.CREATE, deleting.id: Operation.DELETE}


async def test_expected_version_is_checked(store: Store) -> None:
    """A matching expected version bumps the version; no expectation overwrites as is."""
    record = make_record()
    v1 = await store.commit(Change(deployment=record))

    v2 = await store.commit(
        Change(deployment=replace(v1, status_reason="second"), expected_version=1)
    )
    v3 = await store.commit(Change(deployment=replace(v2, status_reason="third")))

    assert (v2.version, v3.version) == (2, 3)
    assert await store.get(record.id) == v3


async def test_stale_write_raises_and_writes_nothing(store: Store) -> None:
    """A stale expected version raises StaleWriteError; no row, message or key is written."""
    record = make_record()
    v1 = await store.commit(Change(deployment=record))
    key = f"stale-{new_id()}"
    stale = announced(
        replace(v1, status=DeploymentStatus.CREATE_FAILED),
        key,
        version=7,
        attempts=(make_attempt(record.id, 1),),
    )

    with pytest.raises(StaleWriteError) as raised:
        await store.commit(stale)

    assert raised.value.deployment_id == record.id
    assert await store.get(record.id) == v1
    assert await store.attempts(record.id) == []
    assert await store.pending() == []
    assert not await store.is_done(key)


async def test_failing_change_writes_nothing(store: Store) -> None:
    """When one part of a change is refused, the deployment and its messages are not written."""
    record = make_record()
    naive = make_attempt(record.id, 1, started_at=datetime(2026, 1, 1))

    with pytest.raises(PermanentError):
        await store.commit(
            Change(deployment=record, attempts=(naive,), outbox=(make_message(record.id),))
        )

    assert await store.get(record.id) is None
    assert await store.pending() == []


async def test_expected_version_of_a_missing_deployment_is_stale(store: Store) -> None:
    """Expecting a version of a deployment that does not exist raises and creates nothing."""
    record = make_record()

    with pytest.raises(StaleWriteError):
        await store.commit(Change(deployment=record, expected_version=1))

    assert await store.get(record.id) is None


async def test_expected_version_zero_creates_and_never_overwrites(store: Store) -> None:
    """Version 0 creates a deployment; a second create of its id is stale and writes nothing."""
    record = make_record()
    key = f"again-{new_id()}"
    created = await store.commit(Change(deployment=record, expected_version=0))
    again = announced(
        replace(record, status_reason="again"),
        key,
        version=0,
        attempts=(make_attempt(record.id, 1),),
    )

    with pytest.raises(StaleWriteError) as raised:
        await store.commit(again)

    assert created == replace(record, version=1)
    assert raised.value.deployment_id == record.id
    assert await store.get(record.id) == created
    assert await store.attempts(record.id) == []
    assert await store.pending() == []
    assert not await store.is_done(key)


async def test_handled_keys(store: Store) -> None:
    """Keys from a change and from mark_done are done; marking twice is harmless."""
    record = make_record()
    in_change, alone, unknown = (f"key-{new_id()}" for _ in range(3))
    await store.commit(Change(deployment=record, handled_key=in_change))
    await store.mark_done(alone)
    await store.mark_done(alone)

    assert await store.is_done(in_change)
    assert await store.is_done(alone)
    assert not await store.is_done(unknown)


async def test_outbox_pending_in_order_and_mark_sent(store: Store) -> None:
    """Messages are pending in commit order, decode back equal, and leave on mark_sent."""
    first, second = make_record(), make_record()
    sent: list[Envelope] = [make_message(first.id), make_message(first.id)]
    sent.append(make_message(second.id))
    await store.commit(Change(deployment=first, outbox=(sent[0], sent[1])))
    await store.commit(Change(deployment=second, outbox=(sent[2],)))

    pending = await store.pending()
    assert [entry.message for entry in pending] == sent
    assert [decode(encode(entry.message)) for entry in pending] == sent
    sequences = [entry.sequence for entry in pending]
    assert sequences == sorted(sequences)
    assert [e.message for e in await store.pending(limit=2)] == sent[:2]

    await store.mark_sent(sequences[:2])
    await store.mark_sent([])
    assert [entry.message for entry in await store.pending()] == sent[2:]
    await store.mark_sent(sequences)
    assert await store.pending() == []


async def test_pending_leaves_out_the_excluded_and_fills_its_limit(store: Store) -> None:
    """Entries a relay is removing are left out, and the read goes past them to the limit."""
    record = make_record()
    sent = tuple(make_message(record.id) for _ in range(5))
    await store.commit(Change(deployment=record, outbox=sent))
    sequences = [entry.sequence for entry in await store.pending()]

    kept = await store.pending(limit=2, exclude={sequences[0], sequences[2]})

    assert [entry.message for entry in kept] == [sent[1], sent[3]]
    assert await store.pending(exclude=set(sequences)) == []
    assert [e.message for e in await store.pending(exclude=())] == list(sent)


async def test_sequences_are_not_reused_after_mark_sent(store: Store) -> None:
    """A message written after the outbox emptied gets a higher sequence than any before."""
    record = make_record()
    v1 = await store.commit(Change(deployment=record, outbox=(make_message(record.id),)))
    [old] = await store.pending()
    await store.mark_sent([old.sequence])

    await store.commit(Change(deployment=v1, outbox=(make_message(record.id),)))

    [new] = await store.pending()
    assert new.sequence > old.sequence


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_migration_creates_schema_and_is_idempotent(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path
) -> None:
    """Migrating an empty database creates the tables at head; a second run changes nothing."""
    name = f"flotilla_migrate_{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    else:
        await _admin(f'CREATE DATABASE "{name}"')
        url = pg_url(name)
    try:
        assert await current_revision(url) is None
        await upgrade_to_head(url)
        async with SqlStore(url, migrate=False) as store:
            record = await store.commit(Change(deployment=make_record()))

        await upgrade_to_head(url)

        assert await current_revision(url) == head_revision()
        assert await _schema_drift(url) == ([], TABLES)
        async with SqlStore(url, migrate=False) as store:
            assert await store.get(record.id) == record
    finally:
        if kind == "postgresql":
            await _admin(f'DROP DATABASE "{name}" WITH (FORCE)')


async def _schema_drift(url: str) -> tuple[list[object], set[str]]:
    """Differences between the migrated database and ``table.py``, and its table names."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:

            def inspect_schema(sync: object) -> tuple[list[object], set[str]]:
                context = MigrationContext.configure(sync, opts={"compare_type": True})  # type: ignore[arg-type]
                diff = compare_metadata(context, metadata)
                return diff, set(inspect(sync).get_table_names())

            return await conn.run_sync(inspect_schema)
    finally:
        await engine.dispose()


async def test_unreachable_database_is_retryable() -> None:
    """Opening a store on a port nobody listens on raises a RetryableError."""
    url = "postgresql+asyncpg://postgres@127.0.0.1:1/nothing"

    with pytest.raises(RetryableError):
        await SqlStore.open(url, timeout=timedelta(seconds=5))


async def test_closed_store_refuses_use(tmp_path: Path) -> None:
    """A closed SqlStore raises StoreClosedError instead of touching a disposed engine."""
    store = await SqlStore.open(f"sqlite+aiosqlite:///{tmp_path / 'closed.db'}")
    await store.close()
    await store.close()

    with pytest.raises(StoreClosedError):
        await store.get(new_id())


async def test_concurrent_commits_fail_alone(store: Store) -> None:
    """Commits made at once each get their own outcome: a stale or refused one fails alone."""
    settled, updated, taken = make_record(), make_record(), make_record()
    v1 = await store.commit(Change(deployment=settled))
    u1 = await store.commit(Change(deployment=updated))
    t1 = await store.commit(Change(deployment=taken))
    fresh, naive_owner = make_record(), make_record()
    keys = [f"key-{new_id()}" for _ in range(5)]
    naive = make_attempt(naive_owner.id, 1, started_at=datetime(2026, 1, 1))
    changes = [
        announced(fresh, keys[0], version=0),
        announced(replace(v1, status_reason="stale"), keys[1], version=7),
        announced(naive_owner, keys[2], version=None, attempts=(naive,)),
        announced(
            replace(u1, status_reason="second"),
            keys[3],
            version=1,
            attempts=(make_attempt(u1.id, 1),),
        ),
        announced(replace(t1, status_reason="created twice"), keys[4], version=0),
    ]

    outcomes = await asyncio.gather(*(store.commit(c) for c in changes), return_exceptions=True)

    assert outcomes[0] == replace(fresh, version=1)
    assert isinstance(outcomes[1], StaleWriteError)
    assert outcomes[1].deployment_id == v1.id
    assert isinstance(outcomes[2], PermanentError)
    assert outcomes[3] == replace(u1, status_reason="second", version=2)
    assert isinstance(outcomes[4], StaleWriteError)
    assert await store.get(t1.id) == t1
    assert await store.get(fresh.id) == outcomes[0]
    assert await store.get(v1.id) == v1
    assert await store.get(naive_owner.id) is None
    assert await store.get(u1.id) == outcomes[3]
    assert await store.attempts(u1.id) == [make_attempt(u1.id, 1)]
    pending = [entry.message for entry in await store.pending()]
    assert pending == [changes[0].outbox[0], changes[3].outbox[0]]
    assert [await store.is_done(key) for key in keys] == [True, False, False, True, False]


async def test_concurrent_commits_keep_the_outbox_and_journal_in_call_order(store: Store) -> None:
    """Messages of commits made at once are pending, and journaled, in the order of the calls."""
    records = [make_record() for _ in range(30)]
    changes = [
        Change(
            deployment=record,
            outbox=(make_message(record.id), make_message(record.id)),
            journal=(make_message(record.id),),
        )
        for record in records
    ]

    await asyncio.gather(*(store.commit(change) for change in changes))

    pending = [entry.message for entry in await store.pending()]
    assert pending == [message for change in changes for message in change.outbox]
    journal = [entry.message for entry in await store.journal_since(0)]
    assert journal == [change.journal[0] for change in changes]


async def test_concurrent_commits_of_one_deployment_are_written_in_turn(store: Store) -> None:
    """Two commits of the same deployment at once: the first wins, the second is stale."""
    v1 = await store.commit(Change(deployment=make_record()))
    first = Change(deployment=replace(v1, status_reason="first"), expected_version=1)
    second = Change(deployment=replace(v1, status_reason="second"), expected_version=1)
    overwrite = Change(deployment=replace(v1, status_reason="third"))

    outcomes = await asyncio.gather(
        store.commit(first), store.commit(second), store.commit(overwrite), return_exceptions=True
    )

    assert outcomes[0] == replace(first.deployment, version=2)
    assert isinstance(outcomes[1], StaleWriteError)
    assert outcomes[2] == replace(overwrite.deployment, version=3)
    assert await store.get(v1.id) == outcomes[2]


async def test_concurrent_reads_each_get_their_answer(store: Store) -> None:
    """Deployments and handled keys read at once come back each to its caller."""
    records = [make_record() for _ in range(10)]
    keys = [f"key-{new_id()}" for _ in records]
    stored = [
        await store.commit(Change(deployment=record, handled_key=key))
        for record, key in zip(records, keys, strict=True)
    ]
    missing = [new_id() for _ in range(5)]
    ids = [r.id for r in records] + missing + [records[0].id]  # one asked twice

    found = await asyncio.gather(*(store.get(deployment_id) for deployment_id in ids))
    done = await asyncio.gather(*(store.is_done(key) for key in [*keys, *missing]))

    assert found == [*stored, *([None] * len(missing)), stored[0]]
    assert done == [True] * len(keys) + [False] * len(missing)


async def test_commits_made_at_once_share_transactions(sql_store: SqlStore) -> None:
    """A burst of commits costs a few transactions, not one each (group commit)."""
    transactions = _count_transactions(sql_store)
    records = [make_record() for _ in range(40)]

    committed = await asyncio.gather(*(sql_store.commit(Change(deployment=r)) for r in records))
    written = transactions()
    found = await asyncio.gather(*(sql_store.get(r.id) for r in records))

    # Calls made while a batch is written wait for the next one: a few batches at most.
    assert written <= 3
    assert transactions() - written <= 3
    assert found == committed == [replace(r, version=1) for r in records]
    # The store counts the same: 40 commits over the transactions that began.
    assert sql_store.batching["commit"] == (40, written)
    assert sql_store.batching["get"][0] == 40


def _count_transactions(store: SqlStore) -> Callable[[], int]:
    """A counter of the transactions ``store`` begins from now on."""
    began = 0

    def count(_conn: object) -> None:
        nonlocal began
        began += 1

    engine = store._require_open()  # the engine is what begins transactions
    event.listen(engine.sync_engine, "begin", count)
    return lambda: began
