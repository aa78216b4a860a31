"""The scheduler service: consumes requests, reports and heartbeats; commits; relays; times out.

``run()`` owns every task in one ``asyncio.TaskGroup``. Messages about one deployment are
handled one at a time (a lock per deployment), and each handler commits a single ``Change``,
after which the outbox relay is woken and the deployment's timers are re-armed from the
stored deadlines, so a restarted scheduler resumes with the same timers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import structlog

from flotilla.broker import (
    SCHEDULER_HEARTBEATS,
    SCHEDULER_REPORTS,
    SCHEDULER_REQUESTS,
    site_user,
)
from flotilla.bus import Bus, Delivery, Subscription, sender_must_match
from flotilla.errors import PermanentError
from flotilla.scheduler.lifecycle import Lifecycle
from flotilla.scheduler.model import AttemptOutcome, Change, DeploymentRecord
from flotilla.scheduler.placement import Placer
from flotilla.scheduler.relay import Relay
from flotilla.scheduler.store import Store
from flotilla.schemas import (
    DeploymentDeleteRequested,
    DeploymentProvisioned,
    DeploymentReleased,
    DeploymentRequested,
    Envelope,
    Message,
    ProgressReported,
    ProvisioningFailed,
    ReleaseFailed,
    SiteCapacity,
    SiteLease,
    utc_now,
)

_log = structlog.get_logger("flotilla.scheduler")
_TIMER_RETRY = timedelta(seconds=5)
_OVERALL = 0  # the timer slot of a deployment's overall deadline; attempts count from 1
_Decide = Callable[[], Awaitable[Change | None]]


class SchedulerService:
    """One scheduler process (the active one, when several run)."""

    def __init__(
        self,
        *,
        bus: Bus,
        store: Store,
        lifecycle: Lifecycle,
        placer: Placer,
        relay: Relay,
        verify_senders: bool = True,
        prefetch: int = 64,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._bus = bus
        self._store = store
        self._lifecycle = lifecycle
        self._placer = placer
        self._relay = relay
        self._verify = verify_senders
        self._prefetch = prefetch
        self._clock = clock
        self._locks = DeploymentLocks()
        # Per deployment, one timer per slot (its overall deadline, each attempt in flight).
        self._timers: dict[str, dict[int, tuple[datetime, asyncio.TimerHandle]]] = {}
        self._subscriptions: list[Subscription] = []
        self._stop = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None

    @property
    def prefetch(self) -> int:
        """Messages of each queue worked on at once."""
        return self._prefetch

    @property
    def busy_deployments(self) -> int:
        """Deployments with a step running or waiting for its turn."""
        return len(self._locks)

    @property
    def armed_timers(self) -> int:
        """Timers waiting to fire: overall deadlines and those of attempts in flight."""
        return sum(len(slots) for slots in self._timers.values())

    def armed(self, deployment_id: str) -> dict[int, datetime]:
        """A deployment's armed deadlines by slot: 0 the overall one, n attempt n's."""
        return {slot: at for slot, (at, _) in self._timers.get(deployment_id, {}).items()}

    async def run(self) -> None:
        """Resume deployments in flight, consume until ``shutdown()``, then drain and stop."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            tasks.create_task(self._relay.run())
            await self._resume()
            await self._subscribe()
            await self._stop.wait()
            await self._drain()

    async def shutdown(self) -> None:
        """Ask ``run()`` to stop; safe before start and twice."""
        self._stop.set()

    async def _subscribe(self) -> None:
        # Idempotency is not a middleware here: the handled key is checked under the
        # deployment's lock and written in the same transaction as the step (see _step).
        sender = [sender_must_match(_site_sender)] if self._verify else []
        self._subscriptions = [
            await self._bus.subscribe(
                SCHEDULER_REQUESTS, self._on_request, prefetch=self._prefetch
            ),
            await self._bus.subscribe(
                SCHEDULER_REPORTS, self._on_report, prefetch=self._prefetch, middlewares=sender
            ),
            await self._bus.subscribe(
                SCHEDULER_HEARTBEATS,
                self._on_heartbeat,
                prefetch=self._prefetch,
                middlewares=sender,
            ),
        ]

    async def _drain(self) -> None:
        await asyncio.gather(*(s.stop(timeout=10.0) for s in self._subscriptions))
        for deployment_id in list(self._timers):
            self._disarm(deployment_id)
        await self._relay.shutdown()

    async def _resume(self) -> None:
        """Rebuild claims and timers for every deployment with an operation in flight."""
        in_flight = await self._store.in_flight()
        for record in in_flight:
            await self._restore(record)
        _log.info("scheduler_resumed", deployments=len(in_flight))

    async def _rearm(self, deployment_id: str) -> None:
        """``_restore`` one deployment, if it has an operation in flight."""
        record = await self._store.get(deployment_id)
        if record is not None and record.operation is not None:
            await self._restore(record)

    async def _restore(self, record: DeploymentRecord) -> None:
        """Claims and timers from what is stored: each attempt in flight claims its usage
        (again) and arms its deadline, and the deployment arms its overall deadline."""
        for attempt in await self._store.attempts(record.id):
            if attempt.outcome is AttemptOutcome.IN_PROGRESS:
                await self._lifecycle.reclaim(record, attempt)
                self._arm_site_timer(record.id, attempt.number, attempt.deadline)
            else:
                self._cancel(record.id, attempt.number)
        self._arm_overall_timer(record.id, record.deadline)

    async def _on_request(self, message: Message, delivery: Delivery) -> None:
        lifecycle = self._lifecycle
        if isinstance(message, DeploymentRequested):
            await self._relay.room()  # new work waits while earlier decisions go out
            await self._step(
                message.data.deployment_id,
                lambda: lifecycle.requested(message),
                message,
                not_written=lambda change, error: lifecycle.create_not_written(
                    change, message, error
                ),
            )
        elif isinstance(message, DeploymentDeleteRequested):
            deployment_id = message.data.deployment_id
            await self._step(deployment_id, lambda: lifecycle.delete_requested(message), message)
        else:
            raise PermanentError(f"{message.type} does not belong on {delivery.queue}")

    async def _on_report(self, message: Message, delivery: Delivery) -> None:
        lifecycle = self._lifecycle
        steps: dict[type[Envelope], Callable[[Any], Awaitable[Change | None]]] = {
            DeploymentProvisioned: lifecycle.provisioned,
            ProvisioningFailed: lifecycle.failed,
            DeploymentReleased: lifecycle.released,
            ReleaseFailed: lifecycle.release_failed,
        }
        if isinstance(message, ProgressReported):
            # Progress is for watchers: journaled, never decided on. Under the deployment's
            # lock, so its journal entries are written in the order readers see them.
            async with self._locks.hold(message.data.deployment_id):
                await self._store.record([message])
            return
        step = steps.get(type(message))
        if step is None:
            raise PermanentError(f"{message.type} does not belong on {delivery.queue}")
        deployment_id: str = message.data.deployment_id  # type: ignore[union-attr]
        await self._step(deployment_id, lambda: step(message), message)

    async def _on_heartbeat(self, message: Message, delivery: Delivery) -> None:
        registry = self._placer.registry
        if isinstance(message, SiteLease):
            registry.apply_lease(message.data)
        elif isinstance(message, SiteCapacity):
            if registry.apply_capacity(message.data):
                self._placer.claims.site_reported(message.data.site, self._clock())
        else:
            raise PermanentError(f"{message.type} does not belong on {delivery.queue}")

    async def _step(
        self,
        deployment_id: str,
        decide: Callable[[], Awaitable[Change | None]],
        cause: Envelope | None = None,
        *,
        not_written: Callable[[Change, Exception], Awaitable[None]] | None = None,
    ) -> None:
        """Run one lifecycle step under the deployment's lock and commit what it decided.

        A message already handled (a redelivery) is skipped; a change records the message's
        key in its own transaction, and a step that changes nothing records it alone. A new
        deployment's request is the exception: ``Lifecycle.requested`` creates the deployment
        without reading it, and only when it exists can the request have been handled. The
        store then refuses the create, and ``not_written`` tells a redelivery from a second
        request; it also hears of any other failed commit, to give back what the step
        claimed. The most common step thus costs one commit and no read.
        """
        async with self._locks.hold(deployment_id):
            checked_later = not_written is not None  # by the create's commit
            if cause is not None and not checked_later and await self._store.is_done(cause.id):
                _log.info("duplicate_skipped", message_id=cause.id)
                # Its step may have been written although its commit failed: then nothing
                # armed the deadlines it set, and a create gave its claim back.
                await self._rearm(deployment_id)
                return
            change = await decide()
            if change is None:
                if cause is not None:
                    await self._store.mark_done(cause.id)
                return
            try:
                await self._store.commit(change)
            except Exception as exc:
                if not_written is None:
                    raise
                await not_written(change, exc)  # returns only for a redelivery
                _log.info("duplicate_skipped", message_id=change.handled_key)
                await self._rearm(deployment_id)  # as above
                return
        self._relay.wake()
        for attempt in change.attempts:
            if attempt.outcome is AttemptOutcome.IN_PROGRESS:
                self._arm_site_timer(deployment_id, attempt.number, attempt.deadline)
            else:  # the attempt ended: its deadline no longer matters
                self._cancel(deployment_id, attempt.number)
        if change.deployment.operation is None:
            self._disarm(deployment_id)
        else:
            self._arm_overall_timer(deployment_id, change.deployment.deadline)

    def _arm_site_timer(self, deployment_id: str, number: int, at: datetime | None) -> None:
        self._arm(
            deployment_id, number, at, lambda: self._lifecycle.site_timed_out(deployment_id, number)
        )

    def _arm_overall_timer(self, deployment_id: str, at: datetime | None) -> None:
        self._arm(deployment_id, _OVERALL, at, lambda: self._lifecycle.timed_out(deployment_id))

    def _arm(self, deployment_id: str, slot: int, at: datetime | None, decide: _Decide) -> None:
        """Fire ``decide`` at ``at``, in place of the slot's timer (kept if it is due then);
        no deadline (``at`` None) leaves the slot empty."""
        if at is None:
            self._cancel(deployment_id, slot)
            return
        slots = self._timers.setdefault(deployment_id, {})
        armed = slots.get(slot)
        if armed is not None:
            if armed[0] == at:
                return  # every step of a deployment re-arms the same deadlines
            armed[1].cancel()
        delay = max((at - self._clock()).total_seconds(), 0.0)
        loop = asyncio.get_running_loop()
        slots[slot] = (at, loop.call_later(delay, self._fire, deployment_id, slot, decide))

    def _fire(self, deployment_id: str, slot: int, decide: _Decide) -> None:
        self._forget(deployment_id, slot)  # spent: the same deadline may be armed again
        assert self._tasks is not None
        self._tasks.create_task(self._timer_step(deployment_id, slot, decide))

    async def _timer_step(self, deployment_id: str, slot: int, decide: _Decide) -> None:
        try:
            await self._step(deployment_id, decide)
        except Exception:
            # A timer has no delivery to retry; log once here, the boundary, and re-arm.
            _log.exception("timer_failed", deployment_id=deployment_id)
            self._arm(deployment_id, slot, self._clock() + _TIMER_RETRY, decide)

    def _cancel(self, deployment_id: str, slot: int) -> None:
        armed = self._forget(deployment_id, slot)
        if armed is not None:
            armed[1].cancel()

    def _forget(self, deployment_id: str, slot: int) -> tuple[datetime, asyncio.TimerHandle] | None:
        slots = self._timers.get(deployment_id)
        if slots is None:
            return None
        armed = slots.pop(slot, None)
        if not slots:
            del self._timers[deployment_id]
        return armed

    def _disarm(self, deployment_id: str) -> None:
        for _, handle in self._timers.pop(deployment_id, {}).values():
            handle.cancel()


class DeploymentLocks:
    """One lock per deployment, kept only while a step holds it or waits for it.

    A lock per deployment ever seen would grow the scheduler by one lock per deployment
    for as long as it runs.
    """

    def __init__(self) -> None:
        self._locks: dict[str, _HeldLock] = {}

    def __len__(self) -> int:
        """Deployments whose lock is held or awaited now."""
        return len(self._locks)

    def hold(self, deployment_id: str) -> _HeldLock:
        """``async with locks.hold(id):`` runs the block alone for that deployment."""
        lock = self._locks.get(deployment_id)
        if lock is None:
            lock = self._locks[deployment_id] = _HeldLock(self._locks, deployment_id)
        return lock


class _HeldLock:
    """A deployment's lock that leaves its table when the last holder or waiter is done."""

    __slots__ = ("_key", "_lock", "_table", "_users")

    def __init__(self, table: dict[str, _HeldLock], key: str) -> None:
        self._table = table
        self._key = key
        self._lock = asyncio.Lock()
        self._users = 0

    async def __aenter__(self) -> None:
        self._users += 1
        try:
            await self._lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()
        self._leave()

    def _leave(self) -> None:
        self._users -= 1
        if self._users == 0:
            del self._table[self._key]


def _site_sender(message: Message) -> str | None:
    """The broker user a site report must come from."""
    site = getattr(message.data, "site", None)
    return site_user(site) if isinstance(site, str) else None
