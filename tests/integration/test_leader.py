"""Leader election on real PostgreSQL and a real flock: one leader, and a fast takeover."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from flotilla.errors import ConfigurationError
from flotilla.scheduler.leader import Election, FileLock, LeaderLock, leader_election
from flotilla.scheduler.sql import AdvisoryLock

pytestmark = pytest.mark.timeout(60)

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
POLL = timedelta(milliseconds=200)
TAKEOVER = 15.0  # generous: the contract is "within seconds", not a benchmark

# The leader process: take the lock, say so, then hold it until killed.
LEADER_SCRIPT = """
import asyncio, sys
from datetime import timedelta
from pathlib import Path
from flotilla.scheduler.leader import Election, FileLock
from flotilla.scheduler.sql import AdvisoryLock

async def main(kind: str, target: str, key: str) -> None:
    lock = AdvisoryLock(target, key=int(key)) if kind == "postgresql" else FileLock(Path(target))
    election = Election(lock, poll_interval=timedelta(milliseconds=200), name="child")
    await election.wait_leadership()
    print("leader", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:]))
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One lock resource: a PostgreSQL advisory key or a lock file."""

    kind: str
    location: str
    key: int

    def lock(self) -> LeaderLock:
        """A new lock object on the resource (as another process would have)."""
        if self.kind == "postgresql":
            return AdvisoryLock(self.location, key=self.key)
        return FileLock(Path(self.location))

    def election(self, name: str) -> Election:
        """A new election on the resource."""
        return Election(self.lock(), poll_interval=POLL, name=name)


@pytest.fixture(params=["postgresql", "flock"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """A fresh lock resource of each kind: a random advisory key, or a new lock file."""
    key = secrets.randbits(62)  # unique per test, so parallel runs do not contend
    if request.param == "postgresql":
        return Target(kind="postgresql", location=PG_URL, key=key)
    return Target(kind="flock", location=str(tmp_path / "flotilla.db.lock"), key=key)


async def held_elsewhere(target: Target) -> bool:
    """Whether a new lock object on the resource fails to take it."""
    probe = target.lock()
    try:
        return not await probe.try_acquire()
    finally:
        await probe.release()


@asynccontextmanager
async def leader_process(target: Target) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process that holds leadership until killed; killed on exit regardless."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LEADER_SCRIPT,
        target.kind,
        target.location,
        str(target.key),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(TAKEOVER):
            # Unconfigured structlog also writes to stdout: skip its lines.
            while (line := await process.stdout.readline()) != b"leader\n":
                assert line, "the leader process exited before leading"
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_exactly_one_of_two_elections_leads(target: Target) -> None:
    """Of two elections on one lock only the first leads; the second leads once it is released."""
    first, second = target.election("first"), target.election("second")
    try:
        async with asyncio.timeout(TAKEOVER):
            await first.wait_leadership()
        # A negative needs a window: the standby polls about ten times in it and never wins.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2):
                await second.wait_leadership()
        assert (first.is_leader, second.is_leader) == (True, False)

        await first.release()
        async with asyncio.timeout(TAKEOVER):
            await second.wait_leadership()
        assert (first.is_leader, second.is_leader) == (False, True)
    finally:
        await first.release()
        await second.release()


async def test_standby_takes_over_when_the_leader_process_is_killed(target: Target) -> None:
    """SIGKILLing the leading process frees the lock and the standby leads within seconds."""
    standby = target.election("standby")
    try:
        async with leader_process(target) as leader:
            assert await held_elsewhere(target)  # the child holds it
            waiting = asyncio.create_task(standby.wait_leadership())

            leader.kill()  # SIGKILL: no cleanup code runs in the child
            await leader.wait()

            async with asyncio.timeout(TAKEOVER):
                await waiting
        assert standby.is_leader
        assert await held_elsewhere(target)  # and now the standby holds it
    finally:
        await standby.release()


async def test_leader_notices_a_lost_lock(target: Target) -> None:
    """When the lock is taken away, run() sets lost and is_leader turns false."""
    election = target.election("leader")
    try:
        async with asyncio.timeout(TAKEOVER):
            await election.wait_leadership()
        watching = asyncio.create_task(election.run())

        await STEAL[target.kind](target)

        async with asyncio.timeout(TAKEOVER):
            await election.lost.wait()
            await watching
        assert not election.is_leader
    finally:
        await election.release()


async def test_election_for_a_sqlite_url_locks_a_file_beside_the_database(
    tmp_path: Path,
) -> None:
    """A SQLite URL elects with <database>.lock, naming the leader's pid; memory is refused."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'flotilla.db'}"
    first, second = leader_election(url, poll_interval=POLL), leader_election(url)
    try:
        async with asyncio.timeout(TAKEOVER):
            await first.wait_leadership()
        lock_file = tmp_path / "flotilla.db.lock"
        assert lock_file.read_text() == f"{os.getpid()}\n"
        assert await held_elsewhere(Target(kind="flock", location=str(lock_file), key=0))
    finally:
        await first.release()
        await second.release()
    with pytest.raises(ConfigurationError):
        leader_election("sqlite+aiosqlite://")


async def _terminate_holder(target: Target) -> None:
    """End the PostgreSQL session holding the advisory key, as a DBA or failover would."""
    engine = create_async_engine(PG_URL)
    high, low = target.key >> 32, target.key & 0xFFFFFFFF
    query = text(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
        " AND classid::bigint = :high AND objid::bigint = :low AND granted"
    )
    try:
        async with engine.connect() as conn:
            terminated = (await conn.execute(query, {"high": high, "low": low})).scalars().all()
        assert terminated == [True]
    finally:
        await engine.dispose()


async def _remove_lock_file(target: Target) -> None:
    """Delete the lock file, after which a newcomer could lock a new one."""
    await asyncio.to_thread(Path(target.location).unlink)


STEAL: dict[str, Callable[[Target], Awaitable[None]]] = {
    "postgresql": _terminate_holder,
    "flock": _remove_lock_file,
}
