"""Attempts' rankings compressed with lz4 on a PostgreSQL server that has it.

Revision ID: 0003
Revises: 0002

Every attempt stores its ranking: about 8 KB of JSON with a thousand sites, which
PostgreSQL compresses before writing. Storing it took about two fifths of the database's
CPU per placement, most of it in the default compression (pglz); lz4 halves that, for
rows about a sixth larger (measured in the README's benchmark section). Only values
written after the upgrade use it.

A server built without lz4 (it lists the method in ``default_toast_compression``'s values
only when it has it), one older than PostgreSQL 14, and SQLite keep what they have: this
revision changes nothing there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_HAS_LZ4 = sa.text(
    "SELECT count(*) FROM pg_settings"
    " WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
)


def upgrade() -> None:
    """Compress new rankings with lz4 where the server can."""
    if _has_lz4():
        op.execute("ALTER TABLE attempts ALTER COLUMN ranking SET COMPRESSION lz4")


def downgrade() -> None:
    """Back to the server's default compression for new rankings."""
    if _has_lz4():
        op.execute("ALTER TABLE attempts ALTER COLUMN ranking SET COMPRESSION DEFAULT")


def _has_lz4() -> bool:
    bind = op.get_bind()
    return bind.dialect.name == "postgresql" and bool(bind.execute(_HAS_LZ4).scalar())
