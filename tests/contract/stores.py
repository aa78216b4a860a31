"""PostgreSQL housekeeping shared by the store contract tests."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

T = TypeVar("T")
PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


def pg_url(database: str) -> str:
    """The URL of one database on the test PostgreSQL."""
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"


async def _admin(statement: str) -> None:
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def _in_thread(work: Coroutine[Any, Any, T]) -> T:
    # Module fixtures are synchronous (so memory and SQLite runs need no PostgreSQL), yet
    # are requested from a running loop: their async work runs on a loop of its own.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, work).result()


async def _truncate(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("TRUNCATE attempts, deployments, outbox, handled_keys, journal, cursors")
            )
    finally:
        await engine.dispose()
