"""The scheduler's tables, declared once for the store and for Alembic's comparisons."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Explicit constraint names, so a later migration can refer to them on both dialects.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every dialect.

    SQLite has no time zones and returns naive values; PostgreSQL returns them in the
    session's zone. Both come back as UTC, and a naive value is refused on the way in
    rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes; store aware ones in UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}; timestamps must be aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Hand back an aware UTC datetime."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite only autoincrements a column declared exactly INTEGER PRIMARY KEY.
Serial = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base of the scheduler's tables."""

    metadata = MetaData(naming_convention=NAMING)


class DeploymentRow(Base):
    """One deployment; ``version`` is the optimistic-concurrency counter."""

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(32))
    status_reason: Mapped[str | None] = mapped_column(Text)
    # Indexed: in_flight() scans for deployments with an operation at every start-up.
    operation: Mapped[str | None] = mapped_column(String(16), index=True)
    # Copied out of ``request`` so listings filter by tenant without reading JSON.
    owner: Mapped[str] = mapped_column(String(256), index=True, server_default="")
    group_name: Mapped[str] = mapped_column(String(256), index=True, server_default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    deadline: Mapped[datetime | None] = mapped_column(UtcDateTime)
    outputs: Mapped[dict[str, Any]] = mapped_column(Json)
    version: Mapped[int] = mapped_column(Integer)


class AttemptRow(Base):
    """One attempt of a deployment at one site."""

    __tablename__ = "attempts"

    deployment_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(String(64))
    sla_id: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    deadline: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    outcome: Mapped[str] = mapped_column(String(16))
    cause_code: Mapped[str | None] = mapped_column(String(64))
    cause: Mapped[str | None] = mapped_column(Text)
    released: Mapped[bool] = mapped_column(Boolean)
    kept: Mapped[bool] = mapped_column(Boolean)
    ranking: Mapped[dict[str, Any]] = mapped_column(Json)


class OutboxRow(Base):
    """A message written with the state change that decided it, waiting to be published."""

    __tablename__ = "outbox"
    __table_args__ = {"sqlite_autoincrement": True}  # never reuse a sequence after a delete

    sequence: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class HandledKeyRow(Base):
    """The idempotency key of a message already handled."""

    __tablename__ = "handled_keys"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class JournalRow(Base):
    """One event in a deployment's history; ``sequence`` orders every deployment's events."""

    __tablename__ = "journal"
    __table_args__ = (
        Index("ix_journal_deployment_id_sequence", "deployment_id", "sequence"),
        {"sqlite_autoincrement": True},  # never reuse a sequence: readers resume after one
    )

    sequence: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    # Unique: a redelivered report or progress message is journaled once.
    message_id: Mapped[str] = mapped_column(String(128), unique=True)
    deployment_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(128))
    time: Mapped[datetime] = mapped_column(UtcDateTime)
    message: Mapped[str] = mapped_column(Text)


class CursorRow(Base):
    """Where a journal reader (e.g. the gateway's callback sender) got to."""

    __tablename__ = "cursors"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


metadata = Base.metadata
