"""The deployment lifecycle: each incoming message or timer becomes one atomic ``Change``.

The lifecycle decides; the service commits the change (state, attempts and outbox in one
transaction) and the relay publishes the outbox. Nothing here publishes or sleeps, so every
transition is a plain async function that unit tests drive directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import pydantic_core

from flotilla.errors import PermanentError, RetryableError
from flotilla.scheduler.demand import total_usage
from flotilla.scheduler.model import (
    AttemptOutcome,
    AttemptRecord,
    Change,
    DeploymentRecord,
    EncodedJson,
    Operation,
    attempt_key,
)
from flotilla.scheduler.placement import Candidate, PlacementRequest, Placer, Ranking
from flotilla.scheduler.plan import site_plan
from flotilla.scheduler.store import StaleWriteError, Store
from flotilla.scheduler.tosca import TemplateError, TemplateRequirements
from flotilla.schemas import (
    DeploymentDeleteRequested,
    DeploymentProvisioned,
    DeploymentReleased,
    DeploymentRequested,
    DeploymentStatus,
    DeploymentStatusChanged,
    Envelope,
    Provision,
    ProvisionDeployment,
    ProvisioningFailed,
    Release,
    ReleaseDeployment,
    ReleaseFailed,
    Scheduling,
    SchedulingMode,
    StatusChange,
    utc_now,
)

S = DeploymentStatus
CANDIDATES_LISTED: Final = 20
"""Candidates listed one by one in the ranking kept with an attempt; the rest are counted."""
_SITE_REPORTS = (DeploymentProvisioned, ProvisioningFailed, DeploymentReleased, ReleaseFailed)


class OperationInProgressError(PermanentError):
    """A deployment already has an operation in flight; a second one is refused."""


class UnknownDeploymentError(PermanentError):
    """A request names a deployment the scheduler does not know."""


class SitesNotReportedError(RetryableError):
    """No site fits yet, but sites are still reporting after a start: retried later."""


class TemplateSource(Protocol):
    """Turns a template and its inputs into requirements (``TemplateParser`` in production)."""

    async def requirements(
        self, template: str, inputs: Mapping[str, Any]
    ) -> TemplateRequirements: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class LifecycleConfig:
    """Defaults for requests that do not say."""

    source: str = "/flotilla/scheduler"
    site_timeout: timedelta = timedelta(minutes=30)
    max_sites: int = 3
    grace: timedelta = timedelta(0)  # after start, "no site" means "not reported yet"


class Lifecycle:
    """Decides what each lifecycle step changes."""

    def __init__(
        self,
        *,
        store: Store,
        placer: Placer,
        templates: TemplateSource,
        config: LifecycleConfig | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._placer = placer
        self._templates = templates
        self._config = config or LifecycleConfig()
        self._clock = clock
        self._grace_until = clock() + self._config.grace

    async def requested(self, message: DeploymentRequested) -> Change | None:
        """A new deployment: validate the template, place it, send the first command.

        Decided without reading the store: nearly every request names a new deployment, so
        the change creates it (``expected_version`` 0) and the store refuses it when the id
        is taken. The service hands a change it could not write to ``create_not_written``.
        Only a deployment whose first attempt holds capacity here is read first, since
        deciding again would replace that attempt's claim; a claim whose deployment was
        never written (its step was cancelled mid-commit) is dropped and the request
        decided afresh. Until a refused create gives its claim back, other decisions see
        it: for a few milliseconds, a site may look fuller than it is.
        """
        request = message.data
        first = attempt_key(request.deployment_id, 1)
        if self._placer.claims.holds(first):
            existing = await self._store.get(request.deployment_id)
            if existing is not None:
                await self._known(message, existing)
                return None
            self._placer.claims.release(first)  # left by a create that was never written
        now = self._clock()
        record = DeploymentRecord(
            id=request.deployment_id,
            request=request,
            status=S.CREATE_IN_PROGRESS,
            operation=Operation.CREATE,
            created_at=now,
            updated_at=now,
            deadline=now + request.timeout if request.timeout else None,
        )
        try:
            requirements = await self._templates.requirements(request.template, request.inputs)
        except TemplateError as exc:
            opened = self._opened(record, message)
            reason = f"Invalid template: {exc}"
            return self._finish(record, S.CREATE_FAILED, reason, message, events=(opened,))
        try:
            return self._first_attempt(record, requirements, message)
        except SitesNotReportedError:
            # A request handled before the restart need not wait for the sites.
            existing = await self._store.get(request.deployment_id)
            if existing is None:
                raise
            await self._known(message, existing)
            return None

    async def create_not_written(
        self, change: Change, message: DeploymentRequested, error: Exception
    ) -> None:
        """The store did not write the deployment ``requested`` created, with ``error``.

        The claim the change made is given back, so no claim outlives a create that was
        not written. Refused as stale, the id exists: this returns when ``message`` was
        handled before (a redelivery, which changes nothing) and refuses any other request.
        Any other error is raised again; the request is decided afresh when it comes back.
        """
        for attempt in change.attempts:
            self._placer.claims.release(attempt.key)
        if not isinstance(error, StaleWriteError) or change.expected_version != 0:
            raise error
        await self._known(message)

    async def _known(
        self, message: DeploymentRequested, existing: DeploymentRecord | None = None
    ) -> None:
        """A request for a deployment that exists: nothing to do if it was handled, else refused.

        The step that handled a request also wrote its deployment, so only then can the
        request's key have been recorded.
        """
        deployment_id = message.data.deployment_id
        existing = existing or await self._store.get(deployment_id)
        if existing is None:  # refused as existing, yet gone: decide again on redelivery
            raise RetryableError(f"deployment {deployment_id} changed while placed")
        if await self._store.is_done(message.id):
            return
        raise _busy_or_exists(existing)

    async def reclaim(self, record: DeploymentRecord, attempt: AttemptRecord) -> None:
        """Hold capacity again for an attempt still in flight (claims live in memory)."""
        claimed = attempt.ranking.get("claimed")
        if isinstance(claimed, dict):
            usage = Counter(claimed)
        else:  # an attempt recorded before the claim was kept with it
            requirements = await self._templates.requirements(
                record.request.template, record.request.inputs
            )
            usage = total_usage(requirements)
        self._placer.claims.claim(attempt.key, site=attempt.site, group=record.group, usage=usage)

    async def provisioned(self, message: DeploymentProvisioned) -> Change | None:
        """A site delivered: the deployment is complete with its outputs."""
        found = await self._current(message.data.deployment_id, message.data.attempt)
        if found is None:
            return None
        record, attempt = found
        done = replace(attempt, outcome=AttemptOutcome.SUCCEEDED, finished_at=self._clock())
        self._placer.claims.settle(attempt.key, self._clock())
        record = replace(record, outputs=dict(message.data.outputs))
        return self._finish(
            record, S.CREATE_COMPLETE, None, message, attempts=(done,), site=attempt.site
        )

    async def failed(self, message: ProvisioningFailed) -> Change | None:
        """A site failed: release there and try the next ranked site, or fail with every cause."""
        found = await self._current(message.data.deployment_id, message.data.attempt)
        if found is None:
            return None
        record, attempt = found
        cause = message.data.cause
        failed = replace(
            attempt,
            outcome=AttemptOutcome.FAILED,
            finished_at=self._clock(),
            cause_code=cause.code,
            cause=cause.message,
        )
        return await self._after_failure(record, failed, message)

    async def site_timed_out(self, deployment_id: str, number: int) -> Change | None:
        """An attempt's site deadline passed without a result: treat it as a failure."""
        found = await self._current(deployment_id, number)
        if found is None:
            return None
        record, attempt = found
        if attempt.deadline is None or attempt.deadline > self._clock():
            return None
        timed_out = replace(
            attempt,
            outcome=AttemptOutcome.TIMED_OUT,
            finished_at=self._clock(),
            cause_code="site_timeout",
            cause=f"no result from site {attempt.site} by {attempt.deadline.isoformat()}",
        )
        return await self._after_failure(record, timed_out, None)

    async def timed_out(self, deployment_id: str) -> Change | None:
        """The overall deadline passed: fail, and clean up the attempt in flight."""
        record = await self._store.get(deployment_id)
        now = self._clock()
        if record is None or record.operation is not Operation.CREATE:
            return None
        if record.deadline is None or record.deadline > now:
            return None
        attempts = await self._store.attempts(deployment_id)
        cancelled = [self._cancel(a, "overall timeout") for a in attempts if _running(a)]
        releases = [self._release(record, a, "overall timeout", None) for a in cancelled]
        return self._finish(
            record,
            S.CREATE_FAILED,
            "Timeout: maximum execution time exceeded",
            None,
            attempts=tuple(cancelled),
            commands=tuple(releases),
        )

    async def delete_requested(self, message: DeploymentDeleteRequested) -> Change:
        """Delete: cancel work in flight and release every attempt that may hold resources."""
        record = await self._store.get(message.data.deployment_id)
        if record is None:
            raise UnknownDeploymentError(
                f"no deployment {message.data.deployment_id}",
                deployment_id=message.data.deployment_id,
            )
        if record.operation is Operation.DELETE or record.status is S.DELETE_COMPLETE:
            raise OperationInProgressError(
                f"deployment {record.id} is already {record.status.value}", deployment_id=record.id
            )
        attempts = await self._store.attempts(record.id)
        touched = tuple(
            self._cancel(a, "deleted") if _running(a) else a for a in attempts if not a.released
        )
        force = message.data.force
        releases = tuple(self._release(record, a, "deleted", message, force=force) for a in touched)
        if not releases:
            return self._finish(record, S.DELETE_COMPLETE, None, message)
        deleting, event = self._transition(record, S.DELETE_IN_PROGRESS, None, message)
        deleting = replace(deleting, operation=Operation.DELETE)
        return self._change(deleting, message, attempts=touched, outbox=(event, *releases))

    async def released(self, message: DeploymentReleased) -> Change | None:
        """A site released an attempt; a delete completes when every attempt is released."""
        record = await self._store.get(message.data.deployment_id)
        attempts = await self._store.attempts(message.data.deployment_id)
        attempt = next((a for a in attempts if a.number == message.data.attempt), None)
        if record is None or attempt is None:
            return None
        done = replace(attempt, released=True)
        self._placer.claims.release(attempt.key)
        remaining = [a for a in attempts if not a.released and a.number != attempt.number]
        if record.operation is Operation.DELETE and not remaining:
            return self._finish(record, S.DELETE_COMPLETE, None, message, attempts=(done,))
        return self._change(record, message, attempts=(done,))

    async def release_failed(self, message: ReleaseFailed) -> Change | None:
        """A site could not release: a delete fails with the site's cause."""
        record = await self._store.get(message.data.deployment_id)
        if record is None:
            return None
        reason = f"release at {message.data.site} failed: {message.data.cause.message}"
        if record.operation is Operation.DELETE:
            return self._finish(record, S.DELETE_FAILED, reason, message, site=message.data.site)
        return self._change(record, message)

    async def _current(
        self, deployment_id: str, number: int
    ) -> tuple[DeploymentRecord, AttemptRecord] | None:
        """The deployment and attempt a report is about, if it is still the live attempt."""
        record = await self._store.get(deployment_id)
        if record is None or record.operation is not Operation.CREATE:
            return None
        attempts = await self._store.attempts(deployment_id)
        attempt = next((a for a in attempts if a.number == number), None)
        if attempt is None or not _running(attempt):
            return None
        return record, attempt

    async def _after_failure(
        self, record: DeploymentRecord, failed: AttemptRecord, cause: Envelope | None
    ) -> Change:
        self._placer.claims.release(failed.key)
        attempts = [a for a in await self._store.attempts(record.id) if a.number != failed.number]
        history = [*attempts, failed]
        requirements = await self._templates.requirements(
            record.request.template, record.request.inputs
        )
        ranking = self._rank(record, requirements, history)
        final = not ranking.candidates or len(history) >= self._max_sites(record)
        if final and record.request.keep_last_attempt:
            kept = replace(failed, kept=True)
            return self._exhausted(record, [*history[:-1], kept], cause, releases=())
        release = self._release(record, failed, failed.cause or "attempt failed", cause)
        if final:
            return self._exhausted(record, history, cause, releases=(release,))
        return self._attempt(
            record, history, requirements, ranking, cause, carried=(failed,), extra=(release,)
        )

    def _first_attempt(
        self,
        record: DeploymentRecord,
        requirements: TemplateRequirements,
        cause: Envelope,
    ) -> Change:
        """Place a new deployment, opening its story with one event or two.

        A deployment placed at once opens with one event that says both (requested, and
        where attempt 1 went), instead of two CREATE_IN_PROGRESS events back to back.
        """
        ranking = self._rank(record, requirements, [])
        if not ranking.candidates:
            if ranking.waiting or self._clock() < self._grace_until:
                # Right after a (re)start the registry is still filling up from heartbeats:
                # the bus retries this request later instead of failing it for lack of sites.
                raise SitesNotReportedError("sites have not reported since the scheduler started")
            reason = f"No site meets the deployment requirements: {ranking.summary()}"
            opened = self._opened(record, cause)
            return self._finish(record, S.CREATE_FAILED, reason, cause, events=(opened,))
        return self._attempt(record, [], requirements, ranking, cause, opening=True)

    def _attempt(
        self,
        record: DeploymentRecord,
        history: list[AttemptRecord],
        requirements: TemplateRequirements,
        ranking: Ranking,
        cause: Envelope | None,
        *,
        carried: tuple[AttemptRecord, ...] = (),
        extra: tuple[Envelope, ...] = (),
        opening: bool = False,
    ) -> Change:
        """Start the next attempt at the best candidate: claim, record, command.

        ``opening``: this is the deployment's first event (``previous`` is empty).
        """
        best = ranking.candidates[0]
        now = self._clock()
        timeout = record.request.site_timeout or self._config.site_timeout
        deadline = min(d for d in (now + timeout, record.deadline) if d is not None)
        attempt = AttemptRecord(
            deployment_id=record.id,
            number=len(history) + 1,
            site=best.site,
            sla_id=best.sla_id,
            started_at=now,
            deadline=deadline,
            # What is claimed is kept with the attempt, so a restart claims the same again.
            ranking=_ranking_json(ranking, best.usage),
        )
        self._placer.claims.claim(attempt.key, site=best.site, group=record.group, usage=best.usage)
        # Known final now (no other candidate, or the last site allowed): a failure there is
        # kept for inspection when the request asks, so the site must not roll it back.
        final = len(ranking.candidates) == 1 or attempt.number >= self._max_sites(record)
        keep = final and record.request.keep_last_attempt
        command = self._provision(record, attempt, requirements, best, cause, keep=keep)
        reason = f"attempt {attempt.number} placed on {best.site}"
        if opening:
            reason = f"deployment requested; {reason}"
        placed, event = self._transition(
            record, S.CREATE_IN_PROGRESS, reason, cause, attempt, opening=opening
        )
        return self._change(
            placed, cause, attempts=(*carried, attempt), outbox=(*extra, event, command)
        )

    def _exhausted(
        self,
        record: DeploymentRecord,
        history: list[AttemptRecord],
        cause: Envelope | None,
        *,
        releases: tuple[Envelope, ...],
    ) -> Change:
        causes = "; ".join(f"{a.site} (attempt {a.number}): {a.cause}" for a in history)
        reason = f"Retries on sites exhausted: {causes}"
        last = history[-1]
        return self._finish(
            record,
            S.CREATE_FAILED,
            reason,
            cause,
            attempts=(last,),
            commands=releases,
            site=last.site,
        )

    def _rank(
        self,
        record: DeploymentRecord,
        requirements: TemplateRequirements,
        history: list[AttemptRecord],
    ) -> Ranking:
        request = PlacementRequest(
            requirements=requirements,
            group=record.group,
            scheduling=_scheduling(record.request.scheduling, requirements),
            exclude=frozenset(a.site for a in history),
        )
        return self._placer.rank(request)

    def _max_sites(self, record: DeploymentRecord) -> int:
        return record.request.max_sites or self._config.max_sites

    def _provision(
        self,
        record: DeploymentRecord,
        attempt: AttemptRecord,
        requirements: TemplateRequirements,
        best: Candidate,
        cause: Envelope | None,
        *,
        keep: bool = False,
    ) -> ProvisionDeployment:
        data = Provision(
            deployment_id=record.id,
            site=attempt.site,
            attempt=attempt.number,
            idempotency_key=attempt.key,
            plan=site_plan(requirements, best, record.group),
            deadline=attempt.deadline,
            owner=record.owner,
            keep_on_failure=keep,
        )
        return ProvisionDeployment.create(data, source=self._config.source, cause=cause)

    def _release(
        self,
        record: DeploymentRecord,
        attempt: AttemptRecord,
        reason: str,
        cause: Envelope | None,
        *,
        force: bool = False,
    ) -> ReleaseDeployment:
        data = Release(
            deployment_id=record.id,
            site=attempt.site,
            attempt=attempt.number,
            idempotency_key=f"{attempt.key}/release",
            reason=reason[:2048],
            force=force,
        )
        return ReleaseDeployment.create(data, source=self._config.source, cause=cause)

    def _cancel(self, attempt: AttemptRecord, why: str) -> AttemptRecord:
        self._placer.claims.release(attempt.key)
        return replace(
            attempt,
            outcome=AttemptOutcome.CANCELLED,
            finished_at=self._clock(),
            cause_code="cancelled",
            cause=why,
        )

    def _finish(
        self,
        record: DeploymentRecord,
        status: DeploymentStatus,
        reason: str | None,
        cause: Envelope | None,
        *,
        events: tuple[Envelope, ...] = (),
        attempts: tuple[AttemptRecord, ...] = (),
        commands: tuple[Envelope, ...] = (),
        site: str | None = None,
    ) -> Change:
        """End the operation in a final status."""
        done, event = self._transition(record, status, reason, cause, site=site)
        done = replace(done, operation=None)
        return self._change(done, cause, attempts=attempts, outbox=(*events, event, *commands))

    def _transition(
        self,
        record: DeploymentRecord,
        status: DeploymentStatus,
        reason: str | None,
        cause: Envelope | None,
        attempt: AttemptRecord | None = None,
        *,
        site: str | None = None,
        opening: bool = False,
    ) -> tuple[DeploymentRecord, DeploymentStatusChanged]:
        updated = replace(record, status=status, status_reason=reason, updated_at=self._clock())
        event = self._event(
            updated,
            previous=None if opening else record.status,
            reason=reason,
            cause=cause,
            site=attempt.site if attempt else site,
            attempt=attempt.number if attempt else None,
        )
        return updated, event

    def _opened(self, record: DeploymentRecord, cause: Envelope) -> DeploymentStatusChanged:
        """The first event of a deployment that is not placed in the same step."""
        return self._event(record, previous=None, reason="deployment requested", cause=cause)

    def _event(
        self,
        record: DeploymentRecord,
        *,
        previous: DeploymentStatus | None,
        reason: str | None,
        cause: Envelope | None,
        site: str | None = None,
        attempt: int | None = None,
    ) -> DeploymentStatusChanged:
        data = StatusChange(
            deployment_id=record.id,
            status=record.status,
            previous=previous,
            reason=reason[:8192] if reason else None,
            site=site,
            attempt=attempt,
            owner=record.owner,
            group=record.group,
        )
        return DeploymentStatusChanged.create(data, source=self._config.source, cause=cause)

    def _change(
        self,
        record: DeploymentRecord,
        cause: Envelope | None,
        *,
        attempts: tuple[AttemptRecord, ...] = (),
        outbox: tuple[Envelope, ...] = (),
    ) -> Change:
        # The journal keeps the public story: status changes, and the site report that caused
        # the step. Commands and requests stay out: they carry plans and templates.
        journal: tuple[Envelope, ...] = tuple(
            m for m in outbox if isinstance(m, DeploymentStatusChanged)
        )
        if isinstance(cause, _SITE_REPORTS):
            journal = (cause, *journal)
        return Change(
            deployment=record,
            attempts=attempts,
            outbox=outbox,
            journal=journal,
            handled_key=cause.id if cause else None,
            expected_version=record.version,  # 0 for a new deployment: create it
        )


def _running(attempt: AttemptRecord) -> bool:
    return attempt.outcome is AttemptOutcome.IN_PROGRESS


def _busy_or_exists(record: DeploymentRecord) -> PermanentError:
    if record.operation is not None:
        return OperationInProgressError(
            f"deployment {record.id} already has a {record.operation.value} in progress",
            deployment_id=record.id,
        )
    return PermanentError(f"deployment {record.id} already exists", deployment_id=record.id)


def _scheduling(requested: Scheduling, requirements: TemplateRequirements) -> Scheduling:
    """The request's pin, completed by placement policies written in the template."""
    site, sla_id, region = requested.site, requested.sla_id, requested.region
    for policy in requirements.placements:
        site = site or policy.site
        sla_id = sla_id or policy.sla_id
        region = region or policy.region
    if (site, sla_id, region) == (requested.site, requested.sla_id, requested.region):
        return requested
    mode = SchedulingMode.MANUAL if (site or sla_id) else requested.mode
    return Scheduling(mode=mode, site=site, sla_id=sla_id, region=region)


def _ranking_json(ranking: Ranking, claimed: Mapping[str, int]) -> EncodedJson:
    """The ranking kept with an attempt: the best candidates, the listed rejections, and
    what the attempt claimed at its site.

    Candidates past ``CANDIDATES_LISTED`` are counted, not listed: with hundreds of sites
    every attempt would otherwise store hundreds of scores nobody reads.
    """
    listed = ranking.candidates[:CANDIDATES_LISTED]
    more = len(ranking.candidates) - len(listed)
    claim = dict(claimed)
    # The entries are made once per candidate and rejection and shared by every ranking
    # that lists them: nothing changes a stored ranking, and thousands of attempts then
    # hold a few lists each instead of a tree of dicts that every full collection walks.
    # Their encodings are made once too, and joined here, so a store writes a ranking
    # without encoding the same kilobytes of site entries for every attempt.
    items = {
        "candidates": [c.as_json() for c in listed],
        "more_candidates": more,
        "rejected": [r.as_json() for r in ranking.rejections],
        "claimed": claim,
    }
    candidates = ",".join(c.json_text() for c in listed)
    rejected = ",".join(r.json_text() for r in ranking.rejections)
    text = (
        f'{{"candidates":[{candidates}],"more_candidates":{more},'
        f'"rejected":[{rejected}],"claimed":{pydantic_core.to_json(claim).decode()}}}'
    )
    return EncodedJson(items, text)
