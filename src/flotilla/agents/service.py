"""The agent runtime: one site's commands in, its reports, leases and capacity out.

Any ``SiteDriver`` plugs in. The runtime:

- consumes the site's command queue and keeps each command in the ``Inbox`` before it
  acknowledges it, so a command is never lost and a redelivered one is recognised;
- runs provisions and releases as tasks, at most ``concurrency`` at once; a release
  cancels the provision of the same attempt first (delete cancels work in flight);
- resumes unfinished commands after a restart: drivers are idempotent by attempt, so a
  provision resumed finds what the first run created and goes on tracking it;
- coalesces progress (latest wins, at most one report per ``progress_interval``);
- sends a lease every ``lease_interval`` and a capacity report on change and at least every
  ``capacity_interval``; a site the driver cannot reach is announced DOWN, and an agent
  that stops announces DRAINING.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import TypeVar

import structlog
from pydantic import JsonValue

from flotilla.agents.config import AgentConfig
from flotilla.agents.driver import (
    ProgressSink,
    ProvisioningError,
    SiteDriver,
    SiteSnapshot,
    SiteUnavailableError,
)
from flotilla.agents.inbox import Command, Inbox
from flotilla.broker import route, site_commands_queue
from flotilla.bus import Bus, Delivery, Subscription
from flotilla.errors import FlotillaError, PermanentError, RetryableError
from flotilla.schemas import (
    AttemptRef,
    Capacity,
    DeploymentProvisioned,
    DeploymentReleased,
    Envelope,
    Failure,
    FailureCause,
    Lease,
    Message,
    Progress,
    ProgressReported,
    ProvisionDeployment,
    Provisioned,
    ProvisioningFailed,
    ReleaseDeployment,
    ReleaseFailed,
    SiteCapacity,
    SiteLease,
    SiteState,
    utc_now,
)

_log = structlog.get_logger("flotilla.agents")

# Back-off between tries when the site cannot be reached; the last value repeats.
_RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
_MAX_TRIES = 12
_T = TypeVar("_T")


class AgentService:
    """One site's agent around one driver."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        driver: SiteDriver,
        bus: Bus,
        inbox: Inbox,
        instance: str | None = None,
        progress_interval: float = 0.5,
        retry_delays: tuple[float, ...] = _RETRY_DELAYS,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.config = config
        self._driver = driver
        self._bus = bus
        self._inbox = inbox
        self._instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self._progress_interval = progress_interval
        self._retry_delays = retry_delays
        self._clock = clock
        self._source = f"flotilla/agent/{config.site}"
        self._slots = asyncio.Semaphore(config.concurrency)
        self._work: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._releases: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._capacity_changed = asyncio.Event()
        self._lease_sequence = 0
        self._capacity_sequence = 0
        self._site_down: str | None = None
        self._draining = False
        self._subscription: Subscription | None = None

    @property
    def site(self) -> str:
        """The site this agent runs."""
        return self.config.site

    async def run(self) -> None:
        """Resume unfinished commands, consume until ``shutdown()``, then drain."""
        heartbeat = asyncio.create_task(self._heartbeat(), name="agent-heartbeat")
        try:
            for command in await self._inbox.unfinished():
                _log.info("command_resumed", **_fields(command))
                self._start(command)
            self._subscription = await self._bus.subscribe(
                site_commands_queue(self.site),
                self._on_command,
                prefetch=max(self.config.concurrency * 2, 8),
            )
            _log.info("agent_started", site=self.site, instance=self._instance)
            await self._stop.wait()
        finally:
            self._draining = True
            await self._drain()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._send_lease(SiteState.DRAINING, "agent stopping")
            _log.info("agent_stopped", site=self.site)

    async def shutdown(self) -> None:
        """Ask ``run()`` to stop; work in flight stays in the inbox for the next start."""
        self._stop.set()

    async def _drain(self) -> None:
        if self._subscription is not None:
            await self._subscription.stop(timeout=5.0)
        tasks = [*self._work.values(), *self._releases]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Commands ---------------------------------------------------------------------------

    async def _on_command(self, message: Message, delivery: Delivery) -> None:
        if not isinstance(message, ProvisionDeployment | ReleaseDeployment):
            raise PermanentError(f"{message.type} does not belong on {delivery.queue}")
        if message.data.site != self.site:
            raise PermanentError(
                f"command for site {message.data.site!r} reached the agent of {self.site!r}"
            )
        accepted = await self._inbox.accept(message)
        if not accepted.new:
            _log.info("duplicate_command", finished=accepted.finished, **_fields(message))
            return
        _log.info("command_accepted", **_fields(message))
        self._start(message)

    def _start(self, command: Command) -> None:
        data = command.data
        attempt = (data.deployment_id, data.attempt)
        if isinstance(command, ProvisionDeployment):
            if attempt in self._work:
                return
            task = asyncio.create_task(self._provision(command), name=f"provision-{attempt}")
            self._work[attempt] = task
            task.add_done_callback(lambda _: self._work.pop(attempt, None))
        else:
            task = asyncio.create_task(self._release(command), name=f"release-{attempt}")
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def _provision(self, command: ProvisionDeployment) -> None:
        order = command.data
        ref = AttemptRef(deployment_id=order.deployment_id, site=order.site, attempt=order.attempt)
        if await self._inbox.released(order.deployment_id, order.attempt):
            await self._inbox.finish(command)
            return
        async with self._slots:
            progress = _ProgressStream(ref, self._report_progress, self._progress_interval)
            report: Envelope
            try:
                result = await self._retrying(
                    lambda: self._driver.provision(order, progress), order.deadline
                )
            except ProvisioningError as exc:
                _log.info("provision_failed", code=exc.code, **_fields(command))
                failure = Failure(**ref.model_dump(), cause=exc.cause(), resources=exc.resources)
                report = ProvisioningFailed.create(failure, source=self._source, cause=command)
            except RetryableError as exc:
                report = self._failed(ref, command, "site_unavailable", exc.message, True)
            except (asyncio.CancelledError, KeyboardInterrupt):
                await progress.close(flush=False)
                raise
            except Exception as exc:
                # A driver bug must not leave the deployment waiting for its site timeout.
                _log.exception("provision_crashed", **_fields(command))
                report = self._failed(ref, command, "agent_error", _describe(exc), False)
            else:
                done = Provisioned(
                    **ref.model_dump(),
                    outputs=dict(result.outputs),
                    resources=list(result.resources),
                )
                report = DeploymentProvisioned.create(done, source=self._source, cause=command)
                _log.info("provisioned", **_fields(command))
            await progress.close(flush=True)
            if await self._report(report, command):
                await self._inbox.finish(command)
            self._capacity_changed.set()

    async def _release(self, command: ReleaseDeployment) -> None:
        order = command.data
        ref = AttemptRef(deployment_id=order.deployment_id, site=order.site, attempt=order.attempt)
        running = self._work.get((order.deployment_id, order.attempt))
        if running is not None:
            _log.info("provision_cancelled", **_fields(command))
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        await self._inbox.finish_provision(order.deployment_id, order.attempt)
        report: Envelope
        try:
            await self._retrying(lambda: self._driver.release(order), None)
        except ProvisioningError as exc:
            failure = Failure(**ref.model_dump(), cause=exc.cause(), resources=exc.resources)
            report = ReleaseFailed.create(failure, source=self._source, cause=command)
        except RetryableError as exc:
            failure = Failure(**ref.model_dump(), cause=_cause("site_unavailable", exc.message))
            report = ReleaseFailed.create(failure, source=self._source, cause=command)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:
            _log.exception("release_crashed", **_fields(command))
            failure = Failure(**ref.model_dump(), cause=_cause("agent_error", _describe(exc)))
            report = ReleaseFailed.create(failure, source=self._source, cause=command)
        else:
            report = DeploymentReleased.create(ref, source=self._source, cause=command)
            _log.info("released", **_fields(command))
        if await self._report(report, command):
            await self._inbox.finish(command)
        self._capacity_changed.set()

    async def _report(self, report: Envelope, command: Command) -> bool:
        """Publish an attempt's final report; False when the broker refuses it for good.

        The command then stays unfinished in the inbox: the next start of the agent runs it
        again (the driver finds what exists) and reports once more.
        """
        try:
            await self._publish(report)
        except FlotillaError as exc:
            _log.error(
                "report_refused",
                error=exc.message,
                report=type(report).__name__,
                **_fields(command),
            )
            return False
        return True

    def _failed(
        self,
        ref: AttemptRef,
        command: Command,
        code: str,
        message: str,
        retryable: bool,
    ) -> ProvisioningFailed:
        failure = Failure(**ref.model_dump(), cause=_cause(code, message, retryable))
        return ProvisioningFailed.create(failure, source=self._source, cause=command)

    async def _retrying(self, call: Callable[[], Awaitable[_T]], deadline: datetime | None) -> _T:
        """Call, and call again after a pause while the site cannot be reached."""
        for tries in range(1, _MAX_TRIES + 1):
            try:
                return await call()
            except (SiteUnavailableError, RetryableError) as exc:
                delay = self._retry_delays[min(tries, len(self._retry_delays)) - 1]
                late = deadline is not None and self._clock() + timedelta(seconds=delay) > deadline
                if tries == _MAX_TRIES or late:
                    raise
                _log.warning("site_call_retried", error=exc.message, delay=delay, tries=tries)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # Reports ----------------------------------------------------------------------------

    async def _report_progress(self, progress: Progress) -> None:
        await self._publish(ProgressReported.create(progress, source=self._source))

    async def _publish(self, message: Envelope) -> None:
        """Publish with confirms; while the broker is away, keep trying (reports matter)."""
        delay = 0.5
        while True:
            try:
                await self._bus.publish(message, route(message))
            except RetryableError as exc:
                _log.warning("report_publish_retried", error=exc.message, delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            else:
                return

    async def _heartbeat(self) -> None:
        """Leases on a fixed beat; capacity on change and at least every capacity_interval."""
        lease_every = self.config.lease_interval.total_seconds()
        capacity_every = self.config.capacity_interval.total_seconds()
        loop = asyncio.get_running_loop()
        last: SiteSnapshot | None = None
        last_sent = float("-inf")
        while True:
            snapshot = await self._snapshot()
            state = SiteState.DOWN if self._site_down else SiteState.READY
            await self._send_lease(state, self._site_down)
            now = loop.time()
            if snapshot is not None and (snapshot != last or now - last_sent >= capacity_every):
                await self._send_capacity(snapshot)
                last, last_sent = snapshot, now
            self._capacity_changed.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as its timeout fires, and the beat never stops.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(lease_every):
                    await self._capacity_changed.wait()

    async def _snapshot(self) -> SiteSnapshot | None:
        try:
            snapshot = await self._driver.snapshot()
        except SiteUnavailableError as exc:
            if self._site_down is None:
                _log.warning("site_down", site=self.site, error=exc.message)
            self._site_down = exc.message[:2048]
            return None
        except Exception as exc:
            _log.exception("snapshot_failed", site=self.site)
            self._site_down = f"capacity report failed: {_describe(exc)}"[:2048]
            return None
        if self._site_down is not None:
            _log.info("site_up", site=self.site)
        self._site_down = None
        return snapshot

    async def _send_lease(self, state: SiteState, reason: str | None) -> None:
        self._lease_sequence += 1
        lease = Lease(
            site=self.site,
            kind=self.config.kind,
            state=state,
            ttl=self.config.ttl,
            sequence=self._lease_sequence,
            agent_instance=self._instance,
            reason=reason,
        )
        message = SiteLease.create(lease, source=self._source)
        try:
            await self._bus.publish(message, route(message))
        except RetryableError as exc:
            # A lost lease is replaced by the next one; never block the beat on it.
            _log.warning("lease_not_sent", error=exc.message)

    async def _send_capacity(self, snapshot: SiteSnapshot) -> None:
        self._capacity_sequence += 1
        capacity = Capacity(
            site=self.site,
            kind=self.config.kind,
            sequence=self._capacity_sequence,
            capabilities=snapshot.capabilities,
            quotas=list(snapshot.quotas),
        )
        message = SiteCapacity.create(capacity, source=self._source)
        try:
            await self._bus.publish(message, route(message))
        except RetryableError as exc:
            _log.warning("capacity_not_sent", error=exc.message)


class _ProgressStream:
    """A ``ProgressSink`` that publishes the latest progress, at most once per interval."""

    def __init__(
        self,
        ref: AttemptRef,
        publish: Callable[[Progress], Awaitable[None]],
        interval: float,
    ) -> None:
        self._ref = ref
        self._publish = publish
        self._interval = interval
        self._latest: Progress | None = None
        self._sent: Progress | None = None
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="progress")

    def __call__(
        self,
        phase: str,
        message: str = "",
        *,
        percent: float | None = None,
        details: Mapping[str, JsonValue] | None = None,
    ) -> None:
        self._latest = Progress(
            **self._ref.model_dump(),
            phase=phase,
            message=message[:8192],
            percent=percent,
            details=dict(details or {}),
        )
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._send()
            await asyncio.sleep(self._interval)

    async def _send(self) -> None:
        latest = self._latest
        if latest is not None and latest is not self._sent:
            self._sent = latest
            await self._publish(latest)

    async def close(self, *, flush: bool) -> None:
        """Stop the stream; with ``flush``, publish the latest progress not yet sent."""
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        except Exception:
            # Progress is best effort: a report it could not send must not stop the
            # attempt's final report.
            _log.exception("progress_failed", deployment_id=self._ref.deployment_id)
            return
        if flush:
            try:
                await self._send()
            except Exception:
                _log.exception("progress_failed", deployment_id=self._ref.deployment_id)


_: type[ProgressSink] = _ProgressStream  # the stream is a ProgressSink


def _cause(code: str, message: str, retryable: bool = False) -> FailureCause:
    return FailureCause(code=code, message=message[:8192], retryable=retryable)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fields(command: Command) -> dict[str, object]:
    data = command.data
    return {"deployment_id": data.deployment_id, "attempt": data.attempt, "site": data.site}
