"""The journal of deployment events, reader cursors, and owner/group columns for listings.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

``deployments`` gains ``owner`` and ``group_name``, copied from the stored request (existing
rows are backfilled) and indexed, so listings filter by tenant without reading JSON. The
columns are added with an empty default because SQLite can only add a NOT NULL column that
has one, and rebuilding the table instead would cascade-delete its attempts.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_BACKFILL = {
    "postgresql": (
        "UPDATE deployments SET owner = COALESCE(request->>'owner', ''),"
        " group_name = COALESCE(request->>'group', '')"
    ),
    "sqlite": (
        "UPDATE deployments SET owner = COALESCE(json_extract(request, '$.owner'), ''),"
        " group_name = COALESCE(json_extract(request, '$.group'), '')"
    ),
}


def timestamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    """A timezone-aware timestamp column (stored as UTC text on SQLite)."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Add the tenant columns (backfilled), the journal and the cursors."""
    for column in ("owner", "group_name"):
        op.add_column(
            "deployments",
            sa.Column(column, sa.String(length=256), nullable=False, server_default=""),
        )
        op.create_index(f"ix_deployments_{column}", "deployments", [column])
    op.execute(_BACKFILL[op.get_bind().dialect.name])
    op.create_table(
        "journal",
        sa.Column("sequence", SERIAL, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("deployment_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=128), nullable=False),
        timestamp("time"),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("sequence", name="pk_journal"),
        sa.UniqueConstraint("message_id", name="uq_journal_message_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_journal_deployment_id_sequence", "journal", ["deployment_id", "sequence"])
    op.create_table(
        "cursors",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        timestamp("updated_at"),
        sa.PrimaryKeyConstraint("name", name="pk_cursors"),
    )


def downgrade() -> None:
    """Drop the cursors, the journal and the tenant columns."""
    op.drop_table("cursors")
    op.drop_index("ix_journal_deployment_id_sequence", table_name="journal")
    op.drop_table("journal")
    for column in ("group_name", "owner"):
        op.drop_index(f"ix_deployments_{column}", table_name="deployments")
        op.drop_column("deployments", column)
