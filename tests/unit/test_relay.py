"""The outbox relay: committed messages reach their queues in order, at least once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flotilla.broker import core_topology, site_topology
from flotilla.broker.topology import (
    DELIVERY_POLICY,
    SCHEDULER_REQUESTS,
    mirror_topology,
    site_commands_queue,
)
from flotilla.bus import MemoryBus, Route
from flotilla.bus.memory import MemoryBroker
from flotilla.errors import BusUnavailableError
from flotilla.scheduler.model import Change, DeploymentRecord, OutboxEntry
from flotilla.scheduler.relay import OutboxRelay
from flotilla.scheduler.store import MemoryStore
from flotilla.schemas import (
    DeleteRequest,
    DeploymentDeleteRequested,
    DeploymentRequest,
    DeploymentStatus,
    DeploymentStatusChanged,
    Envelope,
    Release,
    ReleaseDeployment,
    StatusChange,
    new_id,
)

pytestmark = pytest.mark.timeout(30)

SITE_QUEUE = site_commands_queue("alpha")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FAST = (timedelta(milliseconds=1), timedelta(milliseconds=10))  # retry delays


def record(deployment_id: str) -> DeploymentRecord:
    """A deployment to attach messages to."""
    request = DeploymentRequest(
        deployment_id=deployment_id, template="x", owner="alice", group="physics"
    )
    return DeploymentRecord(
        id=deployment_id,
        request=request,
        status=DeploymentStatus.CREATE_IN_PROGRESS,
        created_at=T0,
        updated_at=T0,
    )


def release(deployment_id: str, attempt: int = 1, site: str = "alpha") -> ReleaseDeployment:
    """A command routed to a site's queue (alpha's is declared)."""
    data = Release(
        deployment_id=deployment_id,
        site=site,
        attempt=attempt,
        idempotency_key=f"{deployment_id}/{attempt}",
        reason="test",
    )
    return ReleaseDeployment.create(data, source="/flotilla/scheduler")


def delete_requested(deployment_id: str) -> DeploymentDeleteRequested:
    """A request routed to the scheduler's requests queue."""
    data = DeleteRequest(deployment_id=deployment_id, requested_by="alice")
    return DeploymentDeleteRequested.create(data, source="/flotilla/scheduler")


def status_changed(deployment_id: str) -> DeploymentStatusChanged:
    """A public event: unroutable until a consumer of the events exchange is declared."""
    data = StatusChange(
        deployment_id=deployment_id,
        status=DeploymentStatus.CREATE_IN_PROGRESS,
        owner="alice",
        group="physics",
    )
    return DeploymentStatusChanged.create(data, source="/flotilla/scheduler")


class WatchedStore(MemoryStore):
    """A MemoryStore that lets a test await a condition on its outbox."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Condition()
        self.reads = 0

    async def pending(
        self, limit: int = 100, *, exclude: Collection[int] = ()
    ) -> list[OutboxEntry]:
        """Pending entries; counts the read."""
        entries = await super().pending(limit, exclude=exclude)
        self.reads += 1
        await self._notify()
        return entries

    async def mark_sent(self, sequences: list[int]) -> None:
        """Forget published messages and wake the waiters."""
        await super().mark_sent(sequences)
        await self._notify()

    async def wait_until(self, check: Callable[[list[OutboxEntry]], bool]) -> None:
        """Wait (up to 5 s) until ``check`` holds for the pending entries."""
        async with asyncio.timeout(5), self.changed:
            while not check(await super().pending(limit=1000)):
                await self.changed.wait()

    async def wait_empty(self) -> None:
        """Wait until the outbox is empty."""
        await self.wait_until(lambda entries: not entries)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()


@dataclass(slots=True)
class World:
    """A memory broker with the core and site alpha topology, a bus on it, and a store."""

    broker: MemoryBroker
    bus: MemoryBus
    store: WatchedStore

    async def commit(self, *messages: Envelope) -> None:
        """Commit a new deployment change carrying ``messages`` in its outbox."""
        deployment_id = messages[0].correlationid or new_id()
        await self.store.commit(Change(deployment=record(deployment_id), outbox=messages))

    def received(self, queue: str) -> list[str]:
        """Message ids that reached ``queue``, in order (taking them off the queue)."""
        items = self.broker.queue(queue).items
        return [items.get_nowait().delivery.message_id or "" for _ in range(items.qsize())]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    """An open memory bus with the scheduler's and site alpha's queues declared."""
    broker = MemoryBroker()
    async with MemoryBus(policy=DELIVERY_POLICY, broker=broker, user="scheduler") as bus:
        await bus.declare(core_topology())
        await bus.declare(site_topology("alpha"))
        yield World(broker=broker, bus=bus, store=WatchedStore())


@asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[asyncio.Task[None]]:
    """Run the relay in a task for the block, then shut it down."""
    task = asyncio.create_task(relay.run())
    try:
        yield task
    finally:
        await relay.shutdown()
        await task


async def test_messages_reach_their_queues_in_order(world: World) -> None:
    """Committed messages arrive in commit order on their queues and the outbox empties."""
    a, b = new_id(), new_id()
    first, second, third = release(a, 1), release(a, 2), delete_requested(b)
    await world.commit(first, second)
    await world.commit(third)

    async with running(OutboxRelay(world.store, world.bus, retry_delays=FAST)):
        await world.store.wait_empty()

    assert world.received(SITE_QUEUE) == [first.id, second.id]
    assert world.received(SCHEDULER_REQUESTS) == [third.id]


async def test_wake_relays_without_waiting_for_the_poll(world: World) -> None:
    """With an hour-long poll interval, wake() after a commit publishes at once."""
    relay = OutboxRelay(world.store, world.bus, poll_interval=timedelta(hours=1))
    async with running(relay):
        async with asyncio.timeout(5), world.store.changed:  # the first, empty round
            await world.store.changed.wait_for(lambda: world.store.reads > 0)
        message = release(new_id())
        await world.commit(message)
        relay.wake()
        await world.store.wait_empty()

    assert world.received(SITE_QUEUE) == [message.id]


class StallingStore(WatchedStore):
    """A store whose mark_sent hangs while ``stalling``: the relay "crashes" after the confirm."""

    def __init__(self) -> None:
        super().__init__()
        self.stalling = True
        self.marking = asyncio.Event()

    async def mark_sent(self, sequences: list[int]) -> None:
        """While stalling, signal and hang until cancelled; else mark as usual."""
        if self.stalling:
            self.marking.set()
            await asyncio.Event().wait()
        await super().mark_sent(sequences)


async def test_crash_before_mark_sent_republishes_with_the_same_id(world: World) -> None:
    """A relay killed between publish and mark_sent leaves the entry; the next one resends it."""
    store = world.store = StallingStore()
    message = release(new_id())
    await world.commit(message)
    crashed = asyncio.create_task(OutboxRelay(store, world.bus).run())
    async with asyncio.timeout(5):
        await store.marking.wait()
    crashed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await crashed
    assert [entry.message.id for entry in await store.pending()] == [message.id]

    store.stalling = False  # the restarted process, on the same durable outbox
    async with running(OutboxRelay(store, world.bus)):
        await store.wait_empty()

    assert world.received(SITE_QUEUE) == [message.id, message.id]


class GatedRemovalStore(WatchedStore):
    """A store whose removals wait for ``gate``; ``removals`` lists what each one took."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.removing = asyncio.Event()
        self.removals: list[list[int]] = []

    async def mark_sent(self, sequences: list[int]) -> None:
        """Wait for the gate, then remove."""
        self.removals.append(list(sequences))
        self.removing.set()
        await self.gate.wait()
        await super().mark_sent(sequences)


async def test_a_slow_removal_holds_back_nothing_and_nothing_goes_twice(world: World) -> None:
    """While a removal waits on the store, later entries go out and the published ones are
    not published again; the waiting removal and the next one then empty the outbox."""
    store = world.store = GatedRemovalStore()
    first, second, third = release(new_id()), release(new_id()), release(new_id())
    await world.commit(first)
    relay = OutboxRelay(store, world.bus, poll_interval=timedelta(milliseconds=10))

    async with running(relay):
        async with asyncio.timeout(5):
            await store.removing.wait()  # the first entry's removal is held
        await world.commit(second)
        await world.commit(third)
        relay.wake()
        queue = world.broker.queue(SITE_QUEUE).items
        async with asyncio.timeout(5), store.changed:  # the relay reads again every 10 ms
            await store.changed.wait_for(lambda: queue.qsize() == 3)
        assert len(await store.pending()) == 3  # all published, none removed yet
        store.gate.set()
        await store.wait_empty()

    assert world.received(SITE_QUEUE) == [first.id, second.id, third.id]
    assert len(store.removals) == 2  # the held one, then the two published meanwhile
    assert len(store.removals[1]) == 2


async def test_stopping_removes_what_was_published(world: World) -> None:
    """A relay that stops removes what it published before it returns."""
    store = world.store = GatedRemovalStore()
    message = release(new_id())
    await world.commit(message)
    relay = OutboxRelay(store, world.bus)
    task = asyncio.create_task(relay.run())
    async with asyncio.timeout(5):
        await store.removing.wait()
    stopping = asyncio.create_task(relay.shutdown())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waits for the removal under way
    store.gate.set()
    async with asyncio.timeout(5):
        await stopping
        await task

    assert await store.pending() == []
    assert world.received(SITE_QUEUE) == [message.id]


class BrokenRemovalStore(WatchedStore):
    """A store whose removals fail with an error that is not the store being unavailable."""

    async def mark_sent(self, sequences: list[int]) -> None:
        """Fail."""
        raise RuntimeError("disk on fire (simulated)")


async def test_a_removal_that_fails_fails_the_relay(world: World) -> None:
    """An unexpected error removing published entries ends the relay with that error."""
    store = world.store = BrokenRemovalStore()
    await world.commit(release(new_id()))
    relay = OutboxRelay(store, world.bus, poll_interval=timedelta(milliseconds=10))

    with pytest.raises(RuntimeError, match="disk on fire"):
        async with asyncio.timeout(5):
            await relay.run()


class FlakyBus(MemoryBus):
    """A memory bus whose first ``failures`` publishes fail as if the broker were down."""

    def __init__(self, broker: MemoryBroker, failures: int) -> None:
        super().__init__(policy=DELIVERY_POLICY, broker=broker)
        self.failures = failures

    async def publish(
        self, message: Envelope, route: Route, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Fail while failures remain, then publish."""
        if self.failures > 0:
            self.failures -= 1
            raise BusUnavailableError("broker down (simulated)")
        await super().publish(message, route, headers=headers)


async def test_retryable_failures_are_retried_in_order(world: World) -> None:
    """Publishes failing with a RetryableError are retried; nothing is dropped or reordered."""
    deployment = new_id()
    messages = [release(deployment, n) for n in (1, 2, 3)]
    await world.commit(*messages)

    async with FlakyBus(world.broker, failures=5) as bus:
        async with running(OutboxRelay(world.store, bus, retry_delays=FAST)):
            await world.store.wait_empty()
        assert bus.failures == 0

    assert world.received(SITE_QUEUE) == [m.id for m in messages]


async def test_unroutable_entry_is_parked_not_dropped(world: World) -> None:
    """An unroutable message is kept and holds back its deployment only; it goes once routable."""
    held, free = new_id(), new_id()
    command, after = release(held, site="beta"), status_changed(held)
    other = delete_requested(free)
    await world.commit(command, after)
    await world.commit(other)
    relay = OutboxRelay(world.store, world.bus, retry_delays=FAST)

    async with running(relay):
        await world.store.wait_until(
            lambda entries: [e.message.id for e in entries] == [command.id, after.id]
        )
        assert len(relay.parked) == 1

        await world.bus.declare(site_topology("beta"))  # the site's queue appears
        await world.bus.declare(mirror_topology())
        await world.store.wait_empty()

    assert relay.parked == frozenset()
    assert world.received(site_commands_queue("beta")) == [command.id]
    assert world.received("flotilla.mqtt-mirror") == [after.id]
    assert world.received(SCHEDULER_REQUESTS) == [other.id]


async def test_events_nobody_consumes_are_not_parked(world: World) -> None:
    """The public event stream may have no consumer: its events are published and gone."""
    event = status_changed(new_id())
    await world.commit(event)
    relay = OutboxRelay(world.store, world.bus, retry_delays=FAST)

    async with running(relay):
        await world.store.wait_empty()

    assert relay.parked == frozenset()


async def test_shutdown_is_idempotent_and_safe_before_run(world: World) -> None:
    """shutdown() before run() and twice is harmless, and run() then returns at once."""
    await world.commit(release(new_id()))
    relay = OutboxRelay(world.store, world.bus)

    await relay.shutdown()
    await relay.shutdown()
    async with asyncio.timeout(1):
        await relay.run()

    assert len(await world.store.pending()) == 1


class GatedBus(MemoryBus):
    """A memory bus that publishes ``allowed`` messages, then holds the rest until opened."""

    def __init__(self, broker: MemoryBroker, allowed: int) -> None:
        super().__init__(policy=DELIVERY_POLICY, broker=broker)
        self.allowed = allowed
        self.gate = asyncio.Event()
        self.held = asyncio.Event()

    async def publish(
        self, message: Envelope, route: Route, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Publish at once while allowed, else wait for the gate."""
        if self.allowed > 0:
            self.allowed -= 1
        else:
            self.held.set()
            await self.gate.wait()
        await super().publish(message, route, headers=headers)


async def test_room_waits_while_the_relay_is_behind(world: World) -> None:
    """After a full batch went out, new work waits until a round finds the outbox drained."""
    for _ in range(4):
        await world.commit(release(new_id()))
    relay = OutboxRelay(world.store, world.bus, batch=2)
    async with asyncio.timeout(1):
        await relay.room()  # not running: nothing to wait for

    async with GatedBus(world.broker, allowed=2) as bus:
        relay = OutboxRelay(world.store, bus, batch=2)
        async with running(relay):
            async with asyncio.timeout(5):
                await bus.held.wait()  # the first batch went out; the second is held
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await relay.room()
            bus.gate.set()
            async with asyncio.timeout(5):
                await relay.room()
            await world.store.wait_empty()


async def test_parked_entries_never_hold_back_new_work(world: World) -> None:
    """A full batch of entries held back behind a parked one is not "behind": room() is free."""
    command = release(new_id(), site="beta")  # no queue for beta: parked
    await world.commit(command, status_changed(command.data.deployment_id))
    relay = OutboxRelay(world.store, world.bus, batch=1, retry_delays=FAST)

    async with running(relay):
        await world.store.wait_until(lambda entries: len(relay.parked) == 1)
        async with asyncio.timeout(1):
            await relay.room()

    assert len(await world.store.pending()) == 2


async def test_room_waits_only_after_behind_after_full_batches_in_a_row(world: World) -> None:
    """With behind_after=2, one full batch leaves room; the second makes new work wait, and
    on_behind hears of falling behind and of catching up."""
    for _ in range(6):
        await world.commit(release(new_id()))
    told: list[bool] = []

    async with GatedBus(world.broker, allowed=0) as bus:
        relay = OutboxRelay(world.store, bus, batch=2, behind_after=2)
        relay.on_behind = told.append
        async with running(relay):
            async with asyncio.timeout(5):
                await bus.held.wait()  # one full batch read, its first publish held
                await relay.room()
            assert told == []
            bus.allowed, bus.held = 2, asyncio.Event()
            bus.gate.set()
            async with asyncio.timeout(5):
                await world.store.wait_empty()
                await relay.room()

    assert told == [True, False]


async def test_behind_after_counts_at_least_one_batch(world: World) -> None:
    """A relay that could never be behind is refused."""
    with pytest.raises(ValueError, match="at least 1"):
        OutboxRelay(world.store, world.bus, behind_after=0)
