"""How the SQL stores write rankings: from the encoding they carry, and on PostgreSQL
compressed with lz4 (revision 0003)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from flotilla.scheduler.model import Change, EncodedJson
from flotilla.scheduler.sql import SqlStore
from flotilla.scheduler.sql.migration import alembic_config
from tests.contract.stores import _admin, pg_url
from tests.contract.test_store_contract import make_attempt, make_record

pytestmark = pytest.mark.timeout(60)

# What the column is set to: 'l' for lz4, '' for the server's default.
_COLUMN = (
    "SELECT attcompression::text FROM pg_attribute"
    " WHERE attrelid = 'attempts'::regclass AND attname = 'ranking'"
)


@contextlib.asynccontextmanager
async def new_database() -> AsyncIterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    name = f"flotilla_ranking_{uuid.uuid4().hex[:10]}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield pg_url(name)
    finally:
        await _admin(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database."""
    async with new_database() as url:
        yield url


async def _scalar(engine: AsyncEngine, query: str) -> object:
    async with engine.connect() as conn:
        return (await conn.execute(text(query))).scalar()


def _downgrade_to(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


def big_ranking(sites: int) -> dict[str, object]:
    """A ranking the size a thousand-site federation gives: far past the compression size."""
    return {
        "candidates": [
            {"site": f"site-{n:04}", "score": 7.5, "explanation": ["SLA preference 0.99 x4"]}
            for n in range(sites)
        ],
        "more_candidates": 0,
        "rejected": [
            {"site": f"site-{n:04}", "reasons": ["node server: no image matches ubuntu 22"]}
            for n in range(sites, 2 * sites)
        ],
    }


async def test_rankings_are_stored_with_lz4_and_read_back_whole(database: str) -> None:
    """The store's rankings go to disk lz4-compressed, on a server built with lz4."""
    engine = create_async_engine(database)
    try:
        # Debian's PostgreSQL (what CI runs) is built with lz4; the revision needs it.
        lz4 = await _scalar(
            engine,
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings"
            " WHERE name = 'default_toast_compression'",
        )
        assert lz4 is True, "this test needs a PostgreSQL server built with lz4"
        record = make_record()
        ranking = big_ranking(60)
        attempt = make_attempt(record.id, 1, ranking=ranking)
        async with SqlStore(database) as store:
            await store.commit(Change(deployment=record, attempts=(attempt,), expected_version=0))
            stored = await store.attempts(record.id)

        assert [a.ranking for a in stored] == [ranking]
        assert await _scalar(engine, _COLUMN) == "l"
        method = await _scalar(engine, "SELECT pg_column_compression(ranking) FROM attempts")
        assert method == "lz4"
    finally:
        await engine.dispose()


async def test_downgrade_gives_the_column_back_its_default(database: str) -> None:
    """Revision 0003 undone: new rankings take the server's default compression again."""
    async with SqlStore(database):
        pass  # upgraded to head
    engine = create_async_engine(database)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_downgrade_to, "0002")
        assert await _scalar(engine, _COLUMN) == ""
        assert await _scalar(engine, "SELECT version_num FROM alembic_version") == "0002"
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A new SQLite file, then a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    else:
        async with new_database() as url:
            yield url


async def test_a_ranking_is_written_from_the_encoding_it_carries(sql_url: str) -> None:
    """The store writes an ``EncodedJson`` as its text, without encoding the items again.

    The text here differs from the items on purpose, to show which of the two is written.
    """
    record = make_record()
    ranking = EncodedJson({"rejected": []}, '{"rejected":[{"site":"alpha","reasons":["full"]}]}')
    attempt = make_attempt(record.id, 1, ranking=ranking)
    async with SqlStore(sql_url) as store:
        await store.commit(Change(deployment=record, attempts=(attempt,), expected_version=0))
        (stored,) = await store.attempts(record.id)

    assert stored.ranking == {"rejected": [{"site": "alpha", "reasons": ["full"]}]}
