"""The gateway's use cases: create, read, list and delete deployments for one caller.

Both APIs (Flotilla's ``/v1`` and the INDIGO-compatible one) go through ``Deployments``,
so tenancy is enforced in one place: a caller sees and deletes only the deployments of
their groups (an admin sees all), and a deployment they may not see is "not found".

Writes go to the scheduler over the bus; the gateway never writes the store. After
publishing, it waits briefly for the scheduler to record the request so the answer shows
the real state, and otherwise answers with the state the request implies.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from pydantic import JsonValue, ValidationError

from flotilla.broker import route
from flotilla.bus import Bus
from flotilla.errors import BusClosedError, UnroutableMessageError
from flotilla.gateway.auth import Identity
from flotilla.gateway.error import (
    AccessDeniedError,
    DeploymentBusyError,
    DeploymentNotFoundError,
    GatewayUnavailableError,
    InvalidRequestError,
)
from flotilla.gateway.history import attempt_log, deployment_log
from flotilla.gateway.snapshot import Snapshot
from flotilla.gateway.view import describe
from flotilla.scheduler.lifecycle import TemplateSource
from flotilla.scheduler.model import DeploymentRecord, JournalEntry, Operation
from flotilla.scheduler.store import Store
from flotilla.schemas import (
    DeleteRequest,
    DeploymentDeleteRequested,
    DeploymentRequest,
    DeploymentRequested,
    DeploymentStatus,
    Envelope,
    Scheduling,
    SchedulingMode,
    new_id,
    utc_now,
)

_log = structlog.get_logger("flotilla.gateway")
_POLL = 0.05  # seconds between two looks at the store while waiting for the scheduler
_RECENT = 10_000  # requests remembered until the scheduler records them
_DELETE_GRACE = 60.0  # seconds a published delete blocks a second one before it is recorded
_DELETES = frozenset({DeploymentStatus.DELETE_COMPLETE, DeploymentStatus.DELETE_FAILED})
SOURCE = "/flotilla/gateway"


@dataclass(frozen=True, slots=True, kw_only=True)
class Submission:
    """A create request, whichever API it came through."""

    template: str
    inputs: Mapping[str, JsonValue] = field(default_factory=dict)
    group: str | None = None
    site: str | None = None
    sla_id: str | None = None
    timeout: timedelta | None = None
    site_timeout: timedelta | None = None
    max_sites: int | None = None
    keep_last_attempt: bool = False
    callback_url: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Listing:
    """What to list: filters and the page."""

    owner: str | None = None
    group: str | None = None
    status: DeploymentStatus | None = None
    offset: int = 0
    limit: int = 50


class Deployments:
    """Deployments as one caller may see and change them.

    Args:
        store: The scheduler's store (read only).
        bus: Where requests are published.
        templates: Validates templates before anything is published.
        wait: How long a create or delete waits for the scheduler to record it.
        clock: The current time.
    """

    def __init__(
        self,
        *,
        store: Store,
        bus: Bus,
        templates: TemplateSource,
        wait: timedelta = timedelta(seconds=2),
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._bus = bus
        self._templates = templates
        self._wait_for = wait.total_seconds()
        self._clock = clock
        self._recent: OrderedDict[str, DeploymentRecord] = OrderedDict()
        # Deletes published but not yet recorded: id -> (until when, version at publish).
        self._deleting: dict[str, tuple[float, int]] = {}

    @property
    def store(self) -> Store:
        """The store the deployments are read from."""
        return self._store

    async def create(self, who: Identity, submission: Submission) -> Snapshot:
        """Validate the template, publish the request and return the deployment.

        Raises:
            AccessDeniedError: the caller may not use the group.
            TemplateError: the template or its inputs are invalid (problems name node, field).
            InvalidRequestError: a field is out of range.
            GatewayUnavailableError: the request could not be handed to the scheduler.
        """
        group = submission.group or who.default_group
        if group is None:
            raise AccessDeniedError("your token lists no group: name one in the request")
        if not who.may_use(group):
            raise AccessDeniedError(f"you are not a member of group {group!r}")
        await self._templates.requirements(submission.template, dict(submission.inputs))
        request = _request(who, group, submission)
        await self._publish(DeploymentRequested.create(request, source=SOURCE))
        self._remember(request)
        _log.info("deployment_submitted", deployment_id=request.deployment_id, group=group)
        record = await self._wait(request.deployment_id, lambda r: r is not None)
        return await self._snapshot(record or self._recent[request.deployment_id])

    async def get(self, who: Identity, deployment_id: str) -> Snapshot:
        """One deployment with its attempts.

        Raises:
            DeploymentNotFoundError: it does not exist or the caller may not see it.
        """
        return await self._snapshot(await self._visible(who, deployment_id))

    async def page(self, who: Identity, listing: Listing) -> tuple[list[Snapshot], int]:
        """A page of the deployments the caller may see, newest first, and the total.

        Raises:
            AccessDeniedError: the listing names a group the caller is not in.
        """
        if listing.group is not None and not who.may_use(listing.group):
            raise AccessDeniedError(f"you are not a member of group {listing.group!r}")
        groups = None if who.admin else who.groups
        if listing.group is not None:
            groups = (listing.group,)
        records, total = await self._store.list_deployments(
            owner=listing.owner,
            groups=groups,
            status=listing.status,
            offset=listing.offset,
            limit=listing.limit,
        )
        return list(await asyncio.gather(*(self._snapshot(r) for r in records))), total

    async def delete(self, who: Identity, deployment_id: str, *, force: bool = False) -> Snapshot:
        """Ask the scheduler to delete a deployment everywhere it holds resources.

        Raises:
            DeploymentNotFoundError: it does not exist or the caller may not see it.
            DeploymentBusyError: it is being deleted, is deleted, or is not recorded yet.
        """
        record = await self._visible(who, deployment_id)
        self._refuse_busy(record)
        data = DeleteRequest(deployment_id=deployment_id, requested_by=who.owner, force=force)
        await self._publish(DeploymentDeleteRequested.create(data, source=SOURCE))
        self._deleting[deployment_id] = (time.monotonic() + _DELETE_GRACE, record.version)
        _log.info("deployment_delete_requested", deployment_id=deployment_id, force=force)
        version = record.version

        def deleting(found: DeploymentRecord | None) -> bool:
            return found is not None and found.version > version and _is_deleting(found)

        found = await self._wait(deployment_id, deleting)
        if found is None or not deleting(found):
            found = replace(
                record,
                status=DeploymentStatus.DELETE_IN_PROGRESS,
                status_reason="delete requested",
                operation=Operation.DELETE,
                updated_at=self._clock(),
            )
        return await self._snapshot(found)

    async def template(self, who: Identity, deployment_id: str) -> str:
        """The TOSCA template a deployment was requested with."""
        return (await self._visible(who, deployment_id)).request.template

    async def journal(
        self, who: Identity, deployment_id: str, *, after: int = 0, limit: int = 500
    ) -> list[JournalEntry]:
        """A page of the deployment's events after the sequence ``after``."""
        await self._visible(who, deployment_id)
        return await self._store.journal(deployment_id, after=after, limit=limit)

    async def attempt_log(self, who: Identity, deployment_id: str, number: int) -> str:
        """The log of one attempt: its record, then its events with their times.

        Raises:
            DeploymentNotFoundError: no such deployment or attempt for the caller.
        """
        snapshot = await self.get(who, deployment_id)
        attempt = next((a for a in snapshot.attempts if a.number == number), None)
        if attempt is None:
            raise DeploymentNotFoundError(
                f"deployment {deployment_id} has no attempt {number}", deployment_id=deployment_id
            )
        return attempt_log(attempt, await self._all_entries(deployment_id))

    async def log(self, who: Identity, deployment_id: str) -> str:
        """The log of the whole deployment: every event, then every attempt's outcome."""
        snapshot = await self.get(who, deployment_id)
        return deployment_log(snapshot, await self._all_entries(deployment_id))

    async def _all_entries(self, deployment_id: str, cap: int = 20_000) -> list[JournalEntry]:
        entries: list[JournalEntry] = []
        while len(entries) < cap:
            after = entries[-1].sequence if entries else 0
            page = await self._store.journal(deployment_id, after=after, limit=500)
            entries.extend(page)
            if len(page) < 500:
                break
        return entries

    async def _visible(self, who: Identity, deployment_id: str) -> DeploymentRecord:
        record = await self._store.get(deployment_id)
        if record is None:
            record = self._recent.get(deployment_id)
        else:
            self._recent.pop(deployment_id, None)
        if record is None or not who.may_use(record.group):
            raise DeploymentNotFoundError(
                f"no deployment {deployment_id}", deployment_id=deployment_id
            )
        return record

    def _refuse_busy(self, record: DeploymentRecord) -> None:
        if record.version == 0:
            raise DeploymentBusyError(
                f"deployment {record.id} is not recorded by the scheduler yet; retry shortly",
                deployment_id=record.id,
            )
        if (
            record.operation is Operation.DELETE
            or record.status is DeploymentStatus.DELETE_COMPLETE
        ):
            raise DeploymentBusyError(
                f"deployment {record.id} is already {record.status.value}", deployment_id=record.id
            )
        until, version = self._deleting.get(record.id, (0.0, 0))
        if until > time.monotonic() and record.version <= version:
            # Published, and the scheduler has not recorded anything since.
            raise DeploymentBusyError(
                f"a delete of deployment {record.id} is already in progress",
                deployment_id=record.id,
            )
        self._deleting.pop(record.id, None)

    async def _snapshot(self, record: DeploymentRecord) -> Snapshot:
        attempts = await self._store.attempts(record.id) if record.version else []
        return Snapshot(record=record, attempts=tuple(attempts))

    async def _publish(self, message: Envelope) -> None:
        try:
            await self._bus.publish(message, route(message))
        except UnroutableMessageError as exc:
            raise GatewayUnavailableError(
                "no scheduler queue is bound for requests; is the scheduler set up?"
            ) from exc
        except BusClosedError as exc:
            raise GatewayUnavailableError("the gateway's bus connection is closed") from exc

    async def _wait(
        self, deployment_id: str, done: Callable[[DeploymentRecord | None], bool]
    ) -> DeploymentRecord | None:
        """The stored deployment once ``done`` holds for it, or as it is when time is up."""
        deadline = time.monotonic() + self._wait_for
        while True:
            found = await self._store.get(deployment_id)
            if done(found) or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(_POLL)

    def _remember(self, request: DeploymentRequest) -> None:
        now = self._clock()
        self._recent[request.deployment_id] = DeploymentRecord(
            id=request.deployment_id,
            request=request,
            status=DeploymentStatus.CREATE_IN_PROGRESS,
            status_reason="waiting for the scheduler",
            operation=Operation.CREATE,
            created_at=now,
            updated_at=now,
        )
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)


def _is_deleting(record: DeploymentRecord) -> bool:
    return record.operation is Operation.DELETE or record.status in _DELETES


def _request(who: Identity, group: str, submission: Submission) -> DeploymentRequest:
    pinned = submission.site is not None or submission.sla_id is not None
    values: dict[str, Any] = {
        "deployment_id": new_id(),
        "template": submission.template,
        "inputs": dict(submission.inputs),
        "owner": who.owner,
        "group": group,
        "scheduling": Scheduling(
            mode=SchedulingMode.MANUAL if pinned else SchedulingMode.AUTOMATIC,
            site=submission.site,
            sla_id=submission.sla_id,
        ),
        "timeout": submission.timeout,
        "site_timeout": submission.site_timeout,
        "max_sites": submission.max_sites,
        "keep_last_attempt": submission.keep_last_attempt,
        "callback_url": submission.callback_url,
    }
    try:
        return DeploymentRequest.model_validate(values)
    except ValidationError as exc:
        raise InvalidRequestError(describe(exc)) from None
