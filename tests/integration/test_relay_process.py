"""The outbox relay in a process of its own, on RabbitMQ and a SQLite file.

What the scheduler commits goes out from the child, in order, and leaves the outbox; a
killed child is started again and what it left goes out; shutdown stops it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path

import psutil
import pytest
from structlog.testing import capture_logs

from flotilla.broker import DELIVERY_POLICY, core_topology, site_commands_queue, site_topology
from flotilla.bus import Delivery
from flotilla.bus.rabbitmq import RabbitBus
from flotilla.scheduler.model import Change
from flotilla.scheduler.relay import OutboxRelay
from flotilla.scheduler.relay_process import OpenRelay, RelayProcess
from flotilla.scheduler.sql import SqlStore
from flotilla.schemas import Message, new_id
from tests.unit.test_relay import record, release

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(120)]

SITE_QUEUE = site_commands_queue("alpha")


@asynccontextmanager
async def open_test_relay(amqp_url: str, store_url: str) -> AsyncIterator[OutboxRelay]:
    """The child's relay: its own store and bus, polling hourly so that wakes must work."""
    async with (
        SqlStore(store_url, migrate=False) as store,
        RabbitBus(url=amqp_url, policy=DELIVERY_POLICY, name="relay-child") as bus,
    ):
        yield OutboxRelay(store, bus, poll_interval=timedelta(hours=1))


@asynccontextmanager
async def open_reporting_relay(
    amqp_url: str, store_url: str, report: Path
) -> AsyncIterator[OutboxRelay]:
    """The test relay; as it closes, it writes the child's collector thresholds to ``report``."""
    async with open_test_relay(amqp_url, store_url) as relay:
        yield relay
    await asyncio.to_thread(report.write_text, json.dumps(gc.get_threshold()))


@asynccontextmanager
async def open_failing_relay() -> AsyncIterator[OutboxRelay]:
    """The child's relay when the broker is down: it fails as it opens."""
    raise ConnectionRefusedError("the broker is down")
    yield  # pragma: no cover - never reached; makes this a generator


@dataclass
class Site:
    """Collects the message ids that reach site alpha's command queue."""

    ids: list[str] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def on_command(self, message: Message, delivery: Delivery) -> None:
        async with self.arrived:
            self.ids.append(message.id)
            self.arrived.notify_all()

    async def wait_for(self, count: int) -> list[str]:
        async with asyncio.timeout(30), self.arrived:
            await self.arrived.wait_for(lambda: len(self.ids) >= count)
        return self.ids


@dataclass
class World:
    store: SqlStore
    relay: RelayProcess
    site: Site
    opener: OpenRelay

    async def commit(self, count: int) -> list[str]:
        """Commit one deployment with ``count`` commands; their ids in order."""
        deployment_id = new_id()
        messages = [release(deployment_id, n) for n in range(1, count + 1)]
        await self.store.commit(Change(deployment=record(deployment_id), outbox=messages))
        self.relay.wake()
        return [m.id for m in messages]

    async def outbox_empties(self) -> None:
        async def empty() -> bool:
            return not await self.store.pending()

        await until(empty)


@pytest.fixture
async def world(vhost_url: str, tmp_path: Path) -> AsyncIterator[World]:
    """A store, site alpha listening on the broker, and a relay process not yet running."""
    store_url = f"sqlite:///{tmp_path / 'flotilla.db'}"
    site = Site()
    async with (
        SqlStore(store_url) as store,
        RabbitBus(url=vhost_url, policy=DELIVERY_POLICY, name="relay-test") as bus,
    ):
        await bus.declare(core_topology())
        await bus.declare(site_topology("alpha"))
        await bus.subscribe(SITE_QUEUE, site.on_command)
        opener = partial(open_test_relay, vhost_url, store_url)
        relay = RelayProcess(opener, loop="asyncio", restart_delay=timedelta(milliseconds=50))
        yield World(store=store, relay=relay, site=site, opener=opener)


@asynccontextmanager
async def running(relay: RelayProcess) -> AsyncIterator[None]:
    task = asyncio.create_task(relay.run())
    try:
        yield
    finally:
        await relay.shutdown()
        await task


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait up to 30 s for ``check``: the state of another process, with nothing to await."""
    async with asyncio.timeout(30):
        while not await check():  # noqa: ASYNC110 - polled: it lives in another process
            await asyncio.sleep(0.02)


async def child_pid(relay: RelayProcess) -> int:
    async def started() -> bool:
        return relay.pid is not None

    await until(started)
    assert relay.pid is not None
    return relay.pid


async def gone(pid: int) -> bool:
    """Whether the process has exited (a zombie not yet reaped counts)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_committed_messages_go_out_from_the_child_in_order(world: World) -> None:
    """Sent from another process, the second batch on a wake (the child polls hourly), and
    the outbox empties."""
    async with running(world.relay):
        pid = await child_pid(world.relay)
        first = await world.commit(3)
        await world.site.wait_for(3)
        second = await world.commit(2)  # the child is idle now: only the wake tells it
        received = await world.site.wait_for(5)
        await world.outbox_empties()

    assert pid != os.getpid()
    assert [i for i in received if i in first] == first
    assert [i for i in received if i in second] == second
    assert sorted(received) == sorted(first + second)
    assert await gone(pid)


async def test_the_child_collects_garbage_as_rarely_as_the_scheduler(
    world: World, vhost_url: str, tmp_path: Path
) -> None:
    """Its store and bus frozen, the child's youngest generation is collected every 50,000
    allocations, not every 700: a message relayed allocates many short-lived objects."""
    report = tmp_path / "thresholds.json"
    opener = partial(open_reporting_relay, vhost_url, str(world.store.url), report)
    relay = RelayProcess(opener, loop="asyncio")
    ids = await world.commit(1)  # before the child starts, which reads the outbox first
    async with running(relay):
        assert await world.site.wait_for(1) == ids
    assert json.loads(report.read_text()) == [50_000, 20, 100]


async def test_a_killed_child_is_started_again_and_sends_what_was_left(world: World) -> None:
    """Messages committed while no child runs go out from the next one."""
    async with running(world.relay):
        first = await child_pid(world.relay)
        os.kill(first, signal.SIGKILL)
        ids = await world.commit(2)  # may find no child, or the old one dying
        received = await world.site.wait_for(2)
        second = await child_pid(world.relay)
        await world.outbox_empties()

    assert world.relay.starts >= 2
    assert second != first
    assert received[:2] == ids


async def test_the_child_stops_when_the_scheduler_end_of_its_pipe_closes(world: World) -> None:
    """A killed scheduler closes its end of the pipe: the child sees it and exits."""
    async with running(world.relay):
        pid = await child_pid(world.relay)
        pipe = world.relay._to_child  # what the kernel closes when the scheduler dies
        assert pipe is not None
        pipe.close()
        await until(partial(gone, pid))
        # ...and, the scheduler here being alive, a new child takes its place.
        assert await child_pid(world.relay) != pid


async def test_shutdown_before_run_starts_no_child(world: World) -> None:
    """shutdown() first: run() returns at once, and wake()/room() do not block."""
    await world.relay.shutdown()
    async with asyncio.timeout(5):
        await world.relay.run()
        await world.relay.room()
    world.relay.wake()
    assert world.relay.starts == 0


async def test_children_failing_as_they_open_are_restarted_ever_more_slowly() -> None:
    """A broker or database that is down fails every child: the waits double to the limit
    (a child never ready never starts them afresh, however long it took to fail)."""
    relay = RelayProcess(
        open_failing_relay,
        loop="asyncio",
        restart_delay=timedelta(milliseconds=50),
        restart_limit=timedelta(milliseconds=200),  # shorter than a child's start: never afresh
    )
    with capture_logs() as logs:
        async with running(relay):

            async def four_exits() -> bool:
                return sum(e["event"] == "outbox_relay_process_exited" for e in logs) >= 4

            await until(four_exits)

    exits = [e for e in logs if e["event"] == "outbox_relay_process_exited"]
    assert [e["restart_in"] for e in exits[:4]] == [0.05, 0.1, 0.2, 0.2]
    assert {e["exitcode"] for e in exits} == {1}
    assert {e["log_level"] for e in exits} == {"error"}


async def test_a_child_that_worked_a_while_starts_the_waits_afresh(world: World) -> None:
    """Killed after relaying for longer than the limit, each child is restarted after the
    first wait again, not a doubled one."""
    world.relay = RelayProcess(
        world.opener,
        loop="asyncio",
        restart_delay=timedelta(milliseconds=10),
        restart_limit=timedelta(milliseconds=40),  # far shorter than a child's life here
    )
    with capture_logs() as logs:
        async with running(world.relay):
            for sent in (2, 4):
                await world.commit(2)
                await world.site.wait_for(sent)  # so the child was ready
                pid = await child_pid(world.relay)
                os.kill(pid, signal.SIGKILL)
                await until(partial(gone, pid))

            async def two_exits() -> bool:
                return sum(e["event"] == "outbox_relay_process_exited" for e in logs) >= 2

            await until(two_exits)

    exits = [e for e in logs if e["event"] == "outbox_relay_process_exited"]
    assert [e["restart_in"] for e in exits[:2]] == [0.01, 0.01]
