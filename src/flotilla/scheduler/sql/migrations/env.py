"""Alembic's entry point: run the revisions on the connection ``upgrade_to_head`` passes in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from flotilla.scheduler.sql.table import metadata


def run_migrations(connection: Connection) -> None:
    """Run the pending revisions in the caller's transaction."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


_connection: Connection | None = context.config.attributes.get("connection")
if _connection is None:
    raise RuntimeError("run migrations with flotilla.scheduler.sql.upgrade_to_head(url)")
run_migrations(_connection)
