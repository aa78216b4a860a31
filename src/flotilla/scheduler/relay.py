"""The outbox relay: publishes what the scheduler committed, in order, with confirms.

The scheduler never publishes directly. It writes its messages into the outbox in the
same transaction as the state change (``Store.commit``), calls ``OutboxRelay.wake()``, and
the relay publishes them and only then removes them from the outbox.

Delivery is at-least-once. A crash between the broker's confirm and ``mark_sent`` leaves
the entry in the outbox, so the next relay publishes it again with the same message id.
Consumers are idempotent on the message id (``flotilla.bus.idempotent``), so the repeat
is harmless; what can never happen is a published decision that was not stored, or a
stored one that is never published.

Failures:

- ``RetryableError`` (broker unreachable, no confirm in time): the same entry is retried
  with exponential backoff and nothing behind it is published, so order is kept. Nothing
  is ever dropped.
- ``PermanentError`` (e.g. unroutable: no queue bound, typically a site whose queue is not
  declared yet or was removed): the entry is *parked*, not dropped and not moved. It stays
  in the outbox, is logged once, and is tried again on a slow backoff (up to
  ``park_limit``), because a site added later makes it routable. Dropping would lose a
  decision; blocking the whole outbox behind it would stop every other site. Later entries
  of the same deployment wait behind a parked one, so each deployment's messages stay in
  order; other deployments go ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Protocol, TypeVar

import structlog

from flotilla.broker.topology import route
from flotilla.bus import Bus
from flotilla.errors import PermanentError, RetryableError
from flotilla.scheduler.model import OutboxEntry
from flotilla.scheduler.store import Store

_log = structlog.get_logger("flotilla.scheduler.relay")
T = TypeVar("T")


class Relay(Protocol):
    """What the scheduler service needs of a relay: an ``OutboxRelay`` beside it, or one
    in a process of its own (``flotilla.scheduler.relay_process.RelayProcess``)."""

    def wake(self) -> None: ...

    async def room(self) -> None: ...

    async def run(self) -> None: ...

    async def shutdown(self) -> None: ...


@dataclass(slots=True, kw_only=True)
class _Parked:
    """An entry that failed permanently, and when to try it again."""

    due: float
    delay: float


class OutboxRelay:
    """Publishes pending outbox entries to the bus and removes them once confirmed.

    Args:
        store: Where the outbox lives.
        bus: An open bus; ``publish`` returns once the broker confirmed.
        poll_interval: How often to look for entries when nobody calls ``wake()``
            (another process committed, or a wake-up was missed).
        batch: Entries read from the outbox per round.
        timeout: Bound of each store call and each publish.
        retry_delays: First and longest delay between tries of a retryable failure.
        park_limit: Longest delay between tries of a parked entry.
        concurrency: Deployments whose messages are being published at once.
        behind_after: Full batches read in a row after which the relay is behind and
            ``room()`` makes new work wait.
    """

    def __init__(
        self,
        store: Store,
        bus: Bus,
        *,
        poll_interval: timedelta = timedelta(milliseconds=200),
        batch: int = 100,
        timeout: timedelta = timedelta(seconds=30),
        retry_delays: tuple[timedelta, timedelta] = (
            timedelta(milliseconds=200),
            timedelta(seconds=30),
        ),
        park_limit: timedelta = timedelta(minutes=5),
        concurrency: int = 64,
        behind_after: int = 1,
    ) -> None:
        if behind_after < 1:
            raise ValueError(f"behind_after counts full batches, at least 1, not {behind_after}")
        self._store = store
        self._bus = bus
        self._poll = poll_interval.total_seconds()
        self._batch = batch
        self._timeout = timeout.total_seconds()
        self._first_delay, self._max_delay = (d.total_seconds() for d in retry_delays)
        self._park_limit = park_limit.total_seconds()
        self._parked: dict[int, _Parked] = {}
        self._published: set[int] = set()  # confirmed, not yet removed from the outbox
        self._unremoved: list[int] = []  # of those, the ones no removal has taken yet
        self._removal: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._caught_up.set()
        self._behind_after = behind_after
        self._full_batches = 0  # read in a row
        self.on_behind: Callable[[bool], None] | None = None
        """Told when the relay falls behind (True) and when it catches up (False): what
        ``room()`` waits on, for a scheduler in another process (``RelayProcess``)."""
        self._running = False
        self._finished = asyncio.Event()

    @property
    def parked(self) -> frozenset[int]:
        """Sequences of the entries held back after a permanent failure."""
        return frozenset(self._parked)

    def wake(self) -> None:
        """Relay now: the scheduler calls this after each commit that wrote messages."""
        self._wake.set()

    async def room(self) -> None:
        """Wait while the relay is behind: it read a full batch and has not caught up since.

        The scheduler calls this before taking on new work. Deciding faster than the relay
        publishes only grows the outbox: decisions sit there, unseen by the sites, while
        each publish waits its turn behind more decisions (seconds, at a few hundred
        requests per second). Waiting here keeps a decision's command about a batch
        behind it. A round that sends nothing (every entry held back) ends the wait, so
        parked entries never stop the scheduler taking work.
        """
        if self._running and not self._stopping.is_set():
            await self._caught_up.wait()

    async def run(self) -> None:
        """Relay until ``shutdown()``; returns at once if it was already shut down."""
        if self._stopping.is_set() or self._running:
            return
        self._running = True
        _log.info("outbox_relay_started", batch=self._batch, poll_interval=self._poll)
        try:
            while not self._stopping.is_set():
                # Cleared before reading, so a commit made while relaying is not missed.
                self._wake.clear()
                if await self._relay_batch():
                    continue  # a full batch: there may be more right away
                self._behind(False)
                await self._wait(self._wake, self._poll)
            await self._removed()
        except asyncio.CancelledError:
            if self._removal is not None:
                self._removal.cancel()  # what it held is published again, as after a crash
            raise
        finally:
            self._behind(False)
            self._finished.set()
            _log.info("outbox_relay_stopped")

    async def shutdown(self) -> None:
        """Stop after the entry being published; safe before ``run()`` and twice."""
        self._stopping.set()
        self._wake.set()
        self._caught_up.set()
        if self._running:
            await self._finished.wait()

    async def _relay_batch(self) -> bool:
        """Publish one batch; True when the batch was full and more may be waiting.

        Each deployment's entries go out in order, one confirm at a time; different
        deployments are published concurrently (up to ``concurrency`` in flight), which is
        what lets confirms overlap on the broker. The batch's sent entries are then removed
        from the outbox while the next batch goes out (``_remove_later``).
        """
        # Parked entries sit at the head of the outbox; read past them. Entries published
        # and still being removed are left out of the read, not published again.
        limit = self._batch + len(self._parked)
        published = frozenset(self._published)
        entries = await self._call_store(lambda: self._store.pending(limit, exclude=published))
        if entries is None:
            return False
        if len(entries) >= limit:
            self._full_batches += 1
            if self._full_batches >= self._behind_after:
                self._behind(True)  # full batches: new work waits while they go out
        else:
            self._full_batches = 0
        groups: dict[str, list[OutboxEntry]] = {}
        for entry in entries:
            groups.setdefault(_ordering_key(entry), []).append(entry)
        sent: list[int] = []
        now = asyncio.get_running_loop().time()
        async with asyncio.TaskGroup() as tasks:
            for group in groups.values():
                tasks.create_task(self._relay_group(group, now, sent))
        # Removed while the next batch goes out. Between the confirms above and the delete, a
        # crash leaves the entries in the outbox, and the next relay publishes them again.
        self._remove_later(sent)
        for sequence in sent:
            if self._parked.pop(sequence, None) is not None:
                _log.info("outbox_entry_unparked", sequence=sequence)
        # Forget parked entries that left the outbox some other way.
        listed = {entry.sequence for entry in entries}
        self._parked = {seq: p for seq, p in self._parked.items() if seq in listed}
        # Only a full batch that made progress suggests more is ready; else wait.
        return bool(sent) and len(entries) >= limit

    async def _relay_group(self, group: list[OutboxEntry], now: float, sent: list[int]) -> None:
        """Publish one deployment's entries in order, stopping at the first held back."""
        async with self._slots:
            for entry in group:
                parked = self._parked.get(entry.sequence)
                if self._stopping.is_set() or (parked is not None and parked.due > now):
                    return
                if not await self._publish(entry):
                    return
                sent.append(entry.sequence)

    async def _publish(self, entry: OutboxEntry) -> bool:
        """Publish with retries; False when parked or stopping."""
        attempt = 0
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(self._timeout):
                    await self._bus.publish(entry.message, route(entry.message))
            except (RetryableError, TimeoutError) as exc:
                delay = self._delay(attempt)
                attempt += 1
                _log.warning(
                    "outbox_publish_retrying",
                    sequence=entry.sequence,
                    message_id=entry.message.id,
                    attempt=attempt,
                    delay=round(delay, 3),
                    error=str(exc),
                )
                await self._wait(self._stopping, delay)
            except (PermanentError, TypeError) as exc:  # TypeError: route() knows no route
                self._park(entry, exc)
                return False
            else:
                return True
        return False

    def _behind(self, behind: bool) -> None:
        if behind == (not self._caught_up.is_set()):
            return
        if behind:
            self._caught_up.clear()
        else:
            self._caught_up.set()
        if self.on_behind is not None:
            self.on_behind(behind)

    def _remove_later(self, sent: list[int]) -> None:
        """Have ``sent`` removed from the outbox, without waiting for it.

        Until removed, the entries are left out of the relay's reads, so they are not
        published twice. One removal runs at a time and takes everything published while
        the last one ran, so a busy relay deletes in few statements, and its reads and
        publishes do not wait on them: on SQLite, whose write lock the scheduler holds for
        each of its commits, a delete may wait there for tens of milliseconds.

        Raises:
            Exception: what the last removal failed with, other than the store being
                unavailable (which it retries): the relay fails, as it did on the delete.
        """
        if self._removal is not None and self._removal.done():
            self._removal.result()
            self._removal = None
        if not sent:
            return
        self._published.update(sent)
        self._unremoved += sent
        if self._removal is None:
            self._removal = asyncio.get_running_loop().create_task(self._remove())

    async def _remove(self) -> None:
        """Delete what was published, batch after batch, until nothing is left to delete."""
        while self._unremoved:
            taken, self._unremoved = self._unremoved, []
            while await self._call_store(partial(self._mark_sent, taken)) is None:
                if self._stopping.is_set():
                    return  # left in the outbox: the next relay publishes them again
            self._published.difference_update(taken)

    async def _removed(self) -> None:
        """Wait for the removal under way, if any (on stopping: published, then removed)."""
        if self._removal is not None:
            await self._removal
            self._removal = None

    async def _mark_sent(self, sequences: list[int]) -> bool:
        await self._store.mark_sent(sequences)
        return True

    def _park(self, entry: OutboxEntry, exc: Exception) -> None:
        """Hold an entry back on a slow backoff, logging only the first time."""
        previous = self._parked.get(entry.sequence)
        delay = min(self._park_limit, previous.delay * 2 if previous else self._first_delay * 5)
        due = asyncio.get_running_loop().time() + delay
        self._parked[entry.sequence] = _Parked(due=due, delay=delay)
        if previous is None:
            _log.error(
                "outbox_entry_parked",
                sequence=entry.sequence,
                message_id=entry.message.id,
                message_type=type(entry.message).__name__,
                deployment_id=entry.message.correlationid,
                error=str(exc),
            )

    async def _call_store(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """A bounded store call; None (after a backoff) when the store is unavailable."""
        try:
            async with asyncio.timeout(self._timeout):
                return await call()
        except (RetryableError, TimeoutError) as exc:
            _log.warning("outbox_store_unavailable", error=str(exc))
            await self._wait(self._stopping, self._first_delay * 5)
            return None

    def _delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter, so many relays do not retry in step."""
        ceiling = min(self._max_delay, self._first_delay * 2**attempt)
        return random.uniform(self._first_delay, max(self._first_delay, ceiling))

    async def _wait(self, event: asyncio.Event, seconds: float) -> None:
        """Wait for ``event`` or ``seconds``, whichever comes first.

        ``shutdown()`` sets both events, so every wait ends promptly on stopping.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()


def _ordering_key(entry: OutboxEntry) -> str:
    """What must stay in order: a deployment's messages (else the message itself)."""
    message = entry.message
    return message.correlationid or message.subject or message.id
