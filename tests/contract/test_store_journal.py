"""The store's read side: journal, listings and cursors, alike on memory, SQLite, PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

from flotilla.errors import PermanentError
from flotilla.scheduler.model import Change, DeploymentRecord
from flotilla.scheduler.sql import SqlStore
from flotilla.scheduler.sql.migration import alembic_config
from flotilla.scheduler.store import StaleWriteError, Store
from flotilla.schemas import (
    DeploymentStatus,
    DeploymentStatusChanged,
    Envelope,
    Lease,
    Progress,
    ProgressReported,
    SiteKind,
    SiteLease,
    StatusChange,
    new_id,
)
from tests.contract.stores import _admin, pg_url
from tests.contract.test_store_contract import T0, make_record, make_request

pytestmark = pytest.mark.timeout(60)


def status_event(record: DeploymentRecord, status: DeploymentStatus) -> DeploymentStatusChanged:
    """A status change of a deployment."""
    data = StatusChange(
        deployment_id=record.id, status=status, owner=record.owner, group=record.group
    )
    return DeploymentStatusChanged.create(data, source="/flotilla/test")


def progress(deployment_id: str, message: str) -> ProgressReported:
    """A progress report of attempt 1 at alpha."""
    data = Progress(
        deployment_id=deployment_id, site="alpha", attempt=1, phase="BUILD", message=message
    )
    return ProgressReported.create(data, source="/sites/alpha")


def messages(entries: list[object]) -> list[Envelope]:
    return [entry.message for entry in entries]  # type: ignore[attr-defined]


async def test_journal_keeps_each_deployments_events_in_order(store: Store) -> None:
    """Journaled events read back per deployment, in write order, with increasing sequences."""
    first, second = make_record(), make_record()
    e1 = status_event(first, DeploymentStatus.CREATE_IN_PROGRESS)
    e2 = status_event(second, DeploymentStatus.CREATE_IN_PROGRESS)
    p1 = progress(first.id, "creating server")
    e3 = status_event(first, DeploymentStatus.CREATE_COMPLETE)
    v1 = await store.commit(Change(deployment=first, journal=(e1,)))
    await store.commit(Change(deployment=second, journal=(e2,)))
    await store.record([p1])
    await store.commit(Change(deployment=v1, journal=(e3,), expected_version=1))

    entries = await store.journal(first.id)

    assert messages(entries) == [e1, p1, e3]
    assert {entry.deployment_id for entry in entries} == {first.id}
    sequences = [entry.sequence for entry in entries]
    assert sequences == sorted(sequences)
    assert all(entry.time.utcoffset() == timedelta(0) for entry in entries)
    assert messages(await store.journal(first.id, after=sequences[0])) == [p1, e3]
    assert messages(await store.journal(first.id, limit=2)) == [e1, p1]
    assert messages(await store.journal(second.id)) == [e2]
    assert await store.journal(new_id()) == []


async def test_journal_since_spans_deployments_and_head_is_the_last(store: Store) -> None:
    """journal_since pages through every deployment's events; journal_head is the newest."""
    head = await store.journal_head()
    first, second = make_record(), make_record()
    written = [status_event(first, DeploymentStatus.CREATE_IN_PROGRESS)]
    await store.commit(Change(deployment=first, journal=(written[0],)))
    written.append(status_event(second, DeploymentStatus.CREATE_IN_PROGRESS))
    await store.commit(Change(deployment=second, journal=(written[1],)))
    written.append(progress(first.id, "booting"))
    await store.record([written[2]])

    entries = await store.journal_since(head)

    assert messages(entries) == written
    assert await store.journal_head() == entries[-1].sequence
    assert messages(await store.journal_since(entries[0].sequence, limit=1)) == written[1:2]


async def test_a_message_is_journaled_once(store: Store) -> None:
    """Recording the same message twice (a redelivery) keeps one entry."""
    record = make_record()
    await store.commit(Change(deployment=record))
    report = progress(record.id, "50%")

    await store.record([report])
    await store.record([report])
    await store.record([])

    assert messages(await store.journal(record.id)) == [report]


async def test_events_recorded_at_once_keep_their_order_and_fail_alone(store: Store) -> None:
    """Concurrent ``record`` calls journal in call order; one naming no deployment fails
    and writes none of its events, the others are kept."""
    first, second = make_record(), make_record()
    for record in (first, second):
        await store.commit(Change(deployment=record))
    calls = [[progress(first.id, f"{n}%"), progress(second.id, f"{n}%")] for n in range(10)]
    lease = Lease(
        site="alpha",
        kind=SiteKind.SLURM,
        ttl=timedelta(seconds=5),
        sequence=1,
        agent_instance="test",
    )
    orphan = SiteLease.create(lease, source="/sites/alpha")
    refused = [progress(first.id, "never"), orphan]
    calls.insert(5, refused)

    outcomes = await asyncio.gather(*(store.record(c) for c in calls), return_exceptions=True)

    assert [type(o) for o in outcomes] == [*[type(None)] * 5, PermanentError, *[type(None)] * 5]
    kept = [c for c in calls if c is not refused]
    assert messages(await store.journal(first.id)) == [c[0] for c in kept]
    assert messages(await store.journal_since(0)) == [m for c in kept for m in c]


async def test_a_stale_change_journals_nothing(store: Store) -> None:
    """The journal is part of the change's transaction: a refused change leaves no event."""
    record = make_record()
    v1 = await store.commit(Change(deployment=record))
    stale = Change(
        deployment=v1,
        journal=(status_event(v1, DeploymentStatus.CREATE_FAILED),),
        expected_version=5,
    )

    with pytest.raises(StaleWriteError):
        await store.commit(stale)

    assert await store.journal(record.id) == []


async def test_list_deployments_filters_pages_and_counts(store: Store) -> None:
    """Listings filter by owner, groups and status, newest first, with the total count."""
    records = []
    for n, (owner, group) in enumerate(
        [("ann", "physics"), ("bob", "physics"), ("ann", "chemistry"), ("cid", "biology")]
    ):
        request = make_request(owner=owner, group=group)
        record = make_record(
            request=request, id=request.deployment_id, created_at=T0 + timedelta(minutes=n)
        )
        records.append(record)
    records[3] = replace(records[3], status=DeploymentStatus.CREATE_FAILED, operation=None)
    for record in records:
        await store.commit(Change(deployment=record))
    ids = [record.id for record in records]

    def found(page: tuple[list[DeploymentRecord], int]) -> tuple[list[str], int]:
        return [record.id for record in page[0]], page[1]

    assert found(await store.list_deployments()) == (ids[::-1], 4)
    assert found(await store.list_deployments(owner="ann")) == ([ids[2], ids[0]], 2)
    assert found(await store.list_deployments(groups=["physics"])) == ([ids[1], ids[0]], 2)
    assert found(await store.list_deployments(groups=("physics", "biology"), owner="cid")) == (
        [ids[3]],
        1,
    )
    assert found(await store.list_deployments(status=DeploymentStatus.CREATE_FAILED)) == (
        [ids[3]],
        1,
    )
    assert found(await store.list_deployments(groups=[])) == ([], 0)
    assert found(await store.list_deployments(offset=1, limit=2)) == ([ids[2], ids[1]], 4)
    [stored], _ = await store.list_deployments(owner="bob")
    assert stored == replace(records[1], version=1)


async def test_cursors_are_saved_and_overwritten(store: Store) -> None:
    """A reader's cursor is unknown until saved, then reads back its latest position."""
    name = f"reader-{new_id()}"
    assert await store.cursor(name) is None

    await store.save_cursor(name, 7)
    await store.save_cursor(name, 42)

    assert await store.cursor(name) == 42


def _upgrade_to(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_migration_backfills_owner_and_group(kind: str, tmp_path: Path) -> None:
    """Deployments written before revision 0002 are listed by the owner and group they had."""
    name = f"flotilla_backfill_{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    else:
        await _admin(f'CREATE DATABASE "{name}"')
        url = pg_url(name)
    record = make_record(request=make_request(owner="dora", group="astro"))
    record = replace(record, id=record.request.deployment_id)
    try:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_upgrade_to, "0001")
                await conn.execute(
                    text(
                        "INSERT INTO deployments (id, request, status, operation, created_at,"
                        " updated_at, outputs, version) VALUES (:id, :request, :status, NULL,"
                        " :at, :at, :outputs, 1)"
                    ),
                    {
                        "id": record.id,
                        "request": record.request.model_dump_json(),
                        "status": "CREATE_COMPLETE",
                        "at": T0,
                        "outputs": "{}",
                    },
                )
        finally:
            await engine.dispose()

        async with SqlStore(url) as store:
            page, total = await store.list_deployments(owner="dora", groups=["astro"])

        assert total == 1
        assert [found.id for found in page] == [record.id]
    finally:
        if kind == "postgresql":
            await _admin(f'DROP DATABASE "{name}" WITH (FORCE)')
