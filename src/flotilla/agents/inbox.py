"""The agent's inbox: commands accepted from the queue, kept on disk until they are done.

An agent acknowledges a command only once the inbox holds it. A provision that runs for
hours then occupies no broker delivery slot (so a release can still arrive and cancel it),
and an agent killed mid-way finds its unfinished commands here when it starts again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import aiosqlite

from flotilla.errors import FlotillaError
from flotilla.schemas import (
    ProvisionDeployment,
    ReleaseDeployment,
    decode,
    encode,
    utc_now,
)

Command = ProvisionDeployment | ReleaseDeployment

_SCHEMA = """
CREATE TABLE IF NOT EXISTS command (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    body BLOB NOT NULL,
    accepted_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS command_attempt ON command (deployment_id, attempt);
"""


@dataclass(frozen=True, slots=True)
class Accepted:
    """The answer to ``Inbox.accept``: whether the command is new, and if not, whether done."""

    new: bool
    finished: bool = False


def command_key(command: Command) -> str:
    """The inbox key of a command: its kind and the scheduler's idempotency key."""
    kind = "provision" if isinstance(command, ProvisionDeployment) else "release"
    return f"{kind}:{command.data.idempotency_key}"


class Inbox:
    """Accepted commands in a SQLite file under the agent's state directory."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None

    async def __aenter__(self) -> Self:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self._path)
        await self._db.executescript("PRAGMA journal_mode=WAL;" + _SCHEMA)
        await self._db.commit()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise FlotillaError("the inbox is not open")
        return self._db

    async def accept(self, command: Command) -> Accepted:
        """Store a command durably unless its key is already there."""
        data = command.data
        kind = "provision" if isinstance(command, ProvisionDeployment) else "release"
        cursor = await self._conn.execute(
            "INSERT INTO command (key, kind, deployment_id, attempt, body, accepted_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
            (
                command_key(command),
                kind,
                data.deployment_id,
                data.attempt,
                encode(command),
                utc_now().isoformat(),
            ),
        )
        await self._conn.commit()
        if cursor.rowcount == 1:
            return Accepted(new=True)
        row = await self._one(
            "SELECT finished_at FROM command WHERE key = ?", (command_key(command),)
        )
        return Accepted(new=False, finished=row is not None and row[0] is not None)

    async def finish(self, command: Command) -> None:
        """Mark a command done; it is not resumed again."""
        await self._conn.execute(
            "UPDATE command SET finished_at = ? WHERE key = ?",
            (utc_now().isoformat(), command_key(command)),
        )
        await self._conn.commit()

    async def finish_provision(self, deployment_id: str, attempt: int) -> None:
        """Mark an attempt's provision done because the attempt was released."""
        await self._conn.execute(
            "UPDATE command SET finished_at = ? WHERE kind = 'provision'"
            " AND deployment_id = ? AND attempt = ? AND finished_at IS NULL",
            (utc_now().isoformat(), deployment_id, attempt),
        )
        await self._conn.commit()

    async def released(self, deployment_id: str, attempt: int) -> bool:
        """Whether a release of this attempt was accepted (a late provision is then moot)."""
        row = await self._one(
            "SELECT 1 FROM command WHERE kind = 'release' AND deployment_id = ? AND attempt = ?",
            (deployment_id, attempt),
        )
        return row is not None

    async def unfinished(self) -> list[Command]:
        """Commands accepted but not finished, in the order they were accepted."""
        cursor = await self._conn.execute(
            "SELECT body FROM command WHERE finished_at IS NULL ORDER BY rowid"
        )
        commands: list[Command] = []
        for (body,) in await cursor.fetchall():
            message = decode(body)
            if isinstance(message, ProvisionDeployment | ReleaseDeployment):
                commands.append(message)
        return commands

    async def _one(self, sql: str, args: tuple[object, ...]) -> tuple[object, ...] | None:
        cursor = await self._conn.execute(sql, args)
        row = await cursor.fetchone()
        return tuple(row) if row is not None else None
