"""Schema migrations with Alembic, shipped in the package and run at start-up.

The revisions live in ``migrations/versions``. They run on the application's own async
engine: ``upgrade_to_head`` opens a connection and hands its synchronous facade to Alembic
(``run_sync``), so SQLite and PostgreSQL need no second, synchronous driver.

To add a revision, change ``table.py``, then run ``generate_revision`` against a scratch
database at head and review the file it writes before shipping it.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from flotilla.scheduler.sql.engine import create_engine
from flotilla.scheduler.sql.error import translated

SCRIPT_LOCATION = Path(__file__).parent / "migrations"
# Serialises concurrent start-ups on PostgreSQL: two schedulers migrating at once would
# both try to create the tables. (The leader lock uses a different key.)
_MIGRATION_LOCK_KEY = 0x666C6F74_6D696772  # "flotmigr"


def alembic_config() -> Config:
    """An Alembic configuration pointing at the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    return config


def head_revision() -> str:
    """The newest revision shipped with this version of Flotilla."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the package ships at least one revision"
    return head


async def upgrade_to_head(url: str, *, timeout: timedelta = timedelta(seconds=60)) -> None:
    """Upgrade the database at ``url`` to the newest revision; a no-op when already there.

    Raises:
        DatabaseUnavailableError: the database could not be reached in time.
        DatabaseError: a migration failed.
    """
    engine = create_engine(url)
    try:
        async with translated("migrate the database", timeout=timeout), engine.begin() as conn:
            await conn.run_sync(_upgrade)
    finally:
        await engine.dispose()


async def current_revision(url: str, *, timeout: timedelta = timedelta(seconds=10)) -> str | None:
    """The revision the database at ``url`` is at, or None when it was never migrated."""
    engine = create_engine(url)
    try:
        async with translated("read the schema revision", timeout=timeout), engine.connect() as c:
            return await c.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()


async def generate_revision(url: str, message: str) -> None:
    """Autogenerate a revision from the difference between ``table.py`` and the database.

    A development tool: the file lands in ``migrations/versions`` and must be reviewed.
    """
    engine = create_engine(url)
    try:
        bound = timedelta(minutes=1)
        async with translated("generate a revision", timeout=bound), engine.connect() as conn:
            await conn.run_sync(_generate, message)
    finally:
        await engine.dispose()


def _generate(connection: Connection, message: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.revision(config, message, autogenerate=True)


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Held until the transaction ends, so the second process finds the schema at head.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
    config = alembic_config()
    config.attributes["connection"] = connection  # read by migrations/env.py
    command.upgrade(config, "head")
