"""Fixtures of the integration tests: a private RabbitMQ vhost and PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


async def pg_admin(statement: str) -> None:
    """Run one statement as PostgreSQL's administrator (database housekeeping)."""
    engine = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test; dropped afterwards."""
    name = f"flotilla_it_{uuid.uuid4().hex[:10]}"
    await pg_admin(f'CREATE DATABASE "{name}"')
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    await pg_admin(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
async def vhost_url(management_url: str, amqp_url: str) -> AsyncIterator[str]:
    """The AMQP URL of a fresh RabbitMQ virtual host (guest may do anything in it)."""
    name = f"flotilla-it-{uuid.uuid4().hex[:10]}"
    path = quote(name, safe="")
    async with httpx.AsyncClient(base_url=management_url, auth=("guest", "guest")) as api:
        (await api.put(f"/api/vhosts/{path}")).raise_for_status()
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        (await api.put(f"/api/permissions/{path}/guest", json=everything)).raise_for_status()
        try:
            yield f"{amqp_url.rstrip('/')}/{path}"
        finally:
            await api.delete(f"/api/vhosts/{path}")
