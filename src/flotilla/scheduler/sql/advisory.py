"""A PostgreSQL session-level advisory lock on a dedicated connection, for leader election.

The lock belongs to the connection's server session: when the holder's process dies, the
kernel closes its socket, the server ends the session and the lock is free again. TCP
keepalives (see ``engine``) cover a holder whose host vanished without closing anything.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import NullPool

from flotilla.errors import ConfigurationError, FlotillaError
from flotilla.scheduler.sql.engine import create_engine, parse_url
from flotilla.scheduler.sql.error import translated

LEADER_KEY = 0x666C6F74_6C656164  # "flotlead": one active scheduler per database

# A bigint advisory key shows in pg_locks as classid (high half), objid (low half), objsubid 1.
_HELD = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND objsubid = 1"
    " AND classid::bigint = :high AND objid::bigint = :low"
)


class AdvisoryLock:
    """``pg_try_advisory_lock`` held on one connection of its own.

    Args:
        url: A PostgreSQL URL.
        key: The lock's key; every scheduler of one database must use the same.
        timeout: Bound of each round trip, connecting included.
    """

    def __init__(
        self, url: str, *, key: int = LEADER_KEY, timeout: timedelta = timedelta(seconds=5)
    ) -> None:
        if parse_url(url).get_backend_name() != "postgresql":
            raise ConfigurationError(f"advisory locks need PostgreSQL, not {url!r}")
        self._url = url
        self._key = key
        self._timeout = timeout
        self._engine: AsyncEngine | None = None
        self._conn: AsyncConnection | None = None

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; True when this connection holds it."""
        try:
            async with translated("take the leader lock", timeout=self._timeout):
                conn = await self._connection()
                query = text("SELECT pg_try_advisory_lock(:key)")
                acquired = bool(await conn.scalar(query, {"key": self._key}))
        except BaseException:
            await self._discard()
            raise
        # A standby keeps its connection: polling costs a query, not a new backend.
        return acquired

    async def is_held(self) -> bool:
        """Whether this connection still holds the lock (False once the session is gone)."""
        if self._conn is None:
            return False
        high, low = (self._key >> 32) & 0xFFFFFFFF, self._key & 0xFFFFFFFF
        try:
            async with translated("check the leader lock", timeout=self._timeout):
                count = await self._conn.scalar(_HELD, {"high": high, "low": low})
        except BaseException:
            await self._discard()
            raise
        return bool(count)

    async def release(self) -> None:
        """Give the lock up by closing its connection; safe to call twice."""
        await self._discard()

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            # No pool: the lock lives exactly as long as this one connection.
            self._engine = create_engine(self._url, poolclass=NullPool)
            conn = await self._engine.connect()
            # Autocommit, so the session never sits "idle in transaction" while it leads.
            self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    async def _discard(self) -> None:
        conn, engine = self._conn, self._engine
        self._conn = self._engine = None
        # Closing the session is what frees the lock; an error means it is already gone.
        with contextlib.suppress(FlotillaError):
            async with translated("close the leader lock", timeout=self._timeout):
                if conn is not None:
                    await conn.close()
                if engine is not None:
                    await engine.dispose()
