"""Leader election: of the schedulers sharing a database, exactly one is active.

A standby polls a lock until it gets it; the leader keeps checking that it still holds it.
The lock is one the operating system or the database frees when its holder dies, so a
killed leader is replaced within about one ``poll_interval`` (plus TCP keepalive time when
a PostgreSQL holder's whole host vanished):

- PostgreSQL: a session-level advisory lock on a dedicated connection
  (``flotilla.scheduler.sql.AdvisoryLock``).
- SQLite (one machine): an exclusive ``flock`` on a file next to the database.

Losing the lock is not fenced: a leader that lost it keeps running until its next check
(at most ``poll_interval``) notices and sets ``lost``. The scheduler must stop its work on
``lost``; optimistic concurrency on deployment versions turns most writes of a deposed
leader into ``StaleWriteError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import structlog

from flotilla.errors import ConfigurationError, FlotillaError
from flotilla.scheduler.sql import AdvisoryLock, parse_url, sqlite_path

_log = structlog.get_logger("flotilla.scheduler.leader")


class LeaderLock(Protocol):
    """A lock that is freed when its holder dies."""

    async def try_acquire(self) -> bool:
        """Take the lock if free; True when held by this object."""
        ...

    async def is_held(self) -> bool:
        """Whether this object still holds the lock."""
        ...

    async def release(self) -> None:
        """Free the lock if held; safe to call twice."""
        ...


class LeaderElection(Protocol):
    """Decides which of several schedulers is active."""

    @property
    def is_leader(self) -> bool:
        """Whether this process holds leadership right now."""
        ...

    @property
    def lost(self) -> asyncio.Event:
        """Set when leadership, once held, was lost; the scheduler must stop."""
        ...

    async def wait_leadership(self) -> None:
        """Return once this process is the leader (polling until then)."""
        ...

    async def run(self) -> None:
        """Keep checking the lock is held; set ``lost`` and return when it is not."""
        ...

    async def release(self) -> None:
        """Give up leadership (or stop trying); safe to call twice."""
        ...


class FileLock:
    """An exclusive ``flock`` on a file, freed by the kernel when the holder's process dies.

    Args:
        path: The lock file; created if missing and never deleted (deleting a lock file
            lets two processes lock two different files of the same name).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    async def try_acquire(self) -> bool:
        """Take the lock if no other open file holds it."""
        if self._fd is not None:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # LOCK_NB makes this a quick syscall, safe to run on the event loop.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who leads, for a human looking
        self._fd = fd
        return True

    async def is_held(self) -> bool:
        """Whether the lock is held and the file at ``path`` is still the one locked."""
        if self._fd is None:
            return False
        try:
            return os.stat(self._path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False  # someone removed it: a newcomer can lock a new file of that name

    async def release(self) -> None:
        """Unlock and close the file."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock


class Election:
    """A ``LeaderElection`` over any ``LeaderLock``.

    Args:
        lock: The lock that designates the leader.
        poll_interval: How often a standby tries the lock and a leader checks it.
        name: Who this is, for the logs.
    """

    def __init__(
        self,
        lock: LeaderLock,
        *,
        poll_interval: timedelta = timedelta(seconds=1),
        name: str = "scheduler",
    ) -> None:
        self._lock = lock
        self._poll = poll_interval.total_seconds()
        self._name = name
        self._leader = False
        self._lost = asyncio.Event()
        self._released = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        """Whether this process holds leadership right now."""
        return self._leader

    @property
    def lost(self) -> asyncio.Event:
        """Set when leadership, once held, was lost."""
        return self._lost

    async def wait_leadership(self) -> None:
        """Try the lock every ``poll_interval`` until this process holds it.

        Raises:
            ConfigurationError: after ``release()``, which ends the candidacy.
        """
        logged = False
        while not self._leader:
            if self._released.is_set():
                raise ConfigurationError("this election was released; create a new one")
            if await self._try():
                self._leader = True
                _log.info("leadership_acquired", name=self._name)
                return
            if not logged:
                _log.info("leadership_standby", name=self._name)
                logged = True
            await self._pause()

    async def run(self) -> None:
        """Check the lock every ``poll_interval`` while leading; set ``lost`` when gone."""
        while self._leader and not self._released.is_set():
            await self._pause()
            if self._released.is_set():
                return
            if not await self._still_held():
                self._leader = False
                self._lost.set()
                _log.error("leadership_lost", name=self._name)
                await self._lock.release()
                return

    async def release(self) -> None:
        """Step down (or stop standing by) and free the lock."""
        if self._released.is_set():
            return
        self._released.set()
        was_leader, self._leader = self._leader, False
        await self._lock.release()
        if was_leader:
            _log.info("leadership_released", name=self._name)

    async def _try(self) -> bool:
        try:
            return await self._lock.try_acquire()
        except FlotillaError as exc:
            # The database may be down for everyone; keep standing by.
            _log.warning("leadership_try_failed", name=self._name, error=str(exc))
            return False

    async def _still_held(self) -> bool:
        try:
            return await self._lock.is_held()
        except FlotillaError as exc:
            # Unconfirmed counts as lost: better no leader for a moment than two.
            _log.warning("leadership_check_failed", name=self._name, error=str(exc))
            return False

    async def _pause(self) -> None:
        # Ends early on release(), so shutdown does not wait a full interval.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll):
                await self._released.wait()


def leader_election(
    url: str, *, poll_interval: timedelta = timedelta(seconds=1), name: str = "scheduler"
) -> Election:
    """The election that fits the scheduler's database URL.

    PostgreSQL uses an advisory lock in that database; SQLite a ``flock`` on
    ``<database>.lock`` beside the file.

    Raises:
        ConfigurationError: an in-memory SQLite database, which no second process can share.
    """
    lock: LeaderLock
    if parse_url(url).get_backend_name() == "postgresql":
        lock = AdvisoryLock(url)
    else:
        path = sqlite_path(url)
        if path is None:
            raise ConfigurationError("an in-memory SQLite database cannot be shared; use a file")
        lock = FileLock(path.with_name(path.name + ".lock"))
    return Election(lock, poll_interval=poll_interval, name=name)
