"""The site registry: what the scheduler knows of each site, fed by leases and capacity reports."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from flotilla.scheduler.changes import ChangeLog
from flotilla.schemas import Capacity, Lease, SiteKind, SiteState, utc_now


class Freshness(StrEnum):
    """Whether a site may be chosen now."""

    FRESH = "fresh"
    STALE = "stale"
    PENDING = "pending"  # not heard from since a scheduler restart, still within the grace period


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteView:
    """The latest lease and capacity of one site, with when the scheduler received them."""

    name: str
    kind: SiteKind
    state: SiteState = SiteState.READY
    lease_expires: datetime | None = None
    lease_sequence: int = -1
    capacity: Capacity | None = None
    capacity_received: datetime | None = None


class SiteRegistry:
    """Sites by name; a site whose lease has expired is stale and is not chosen.

    Lease expiry is measured from when the scheduler received the lease (its own clock), so
    a site's clock skew cannot keep it alive. After a restart every site known from storage
    gets ``grace`` to report before it is judged stale.

    ``changes`` names each site when it first appears and whenever its capacity report is
    replaced; ``not_live()`` is the set of sites that cannot be chosen right now. Together
    they let placement keep its standings up to date without visiting every site.
    """

    def __init__(
        self, *, grace: timedelta = timedelta(seconds=30), clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._sites: dict[str, SiteView] = {}
        self._names: tuple[str, ...] | None = ()  # sorted; None once a new site appears
        self._clock = clock
        self._grace_until = clock() + grace
        self.changes = ChangeLog()
        self._down: set[str] = set()  # not ready, or no lease unexpired when last looked
        self._expiries: list[tuple[datetime, str]] = []  # heap: when each lease expires
        self._looked = datetime.min.replace(tzinfo=self._grace_until.tzinfo)

    def __iter__(self) -> Iterator[SiteView]:
        return iter(list(self._sites.values()))

    def get(self, name: str) -> SiteView | None:
        """The view of one site, if known."""
        return self._sites.get(name)

    def names(self) -> tuple[str, ...]:
        """Every known site's name, sorted (kept until a new site appears)."""
        if self._names is None:
            self._names = tuple(sorted(self._sites))
        return self._names

    def now(self) -> datetime:
        """The registry's clock, against which leases expire."""
        return self._clock()

    def restore(self, name: str, kind: SiteKind) -> None:
        """Remember a site known from storage; it is pending until it reports or grace ends."""
        if name not in self._sites:
            self._put(SiteView(name=name, kind=kind))

    def apply_lease(self, lease: Lease) -> bool:
        """Record a lease; an older or repeated sequence is ignored. Returns whether applied."""
        view = self._sites.get(lease.site) or SiteView(name=lease.site, kind=lease.kind)
        if lease.sequence <= view.lease_sequence:
            return False
        self._put(
            replace(
                view,
                kind=lease.kind,
                state=lease.state,
                lease_expires=self._clock() + lease.ttl,
                lease_sequence=lease.sequence,
            )
        )
        return True

    def apply_capacity(self, capacity: Capacity) -> bool:
        """Record a capacity report; an older sequence is ignored. Returns whether applied."""
        view = self._sites.get(capacity.site) or SiteView(name=capacity.site, kind=capacity.kind)
        if view.capacity is not None and capacity.sequence <= view.capacity.sequence:
            return False
        self._put(
            replace(view, kind=capacity.kind, capacity=capacity, capacity_received=self._clock())
        )
        return True

    def freshness(self, name: str, *, now: datetime | None = None) -> Freshness:
        """Whether the site's lease is valid at ``now`` (default: the clock's now).

        A site never heard from is pending, not stale, while the restart grace lasts.
        """
        view = self._sites.get(name)
        now = self._clock() if now is None else now
        if view is not None and view.lease_expires is not None and view.lease_expires > now:
            return Freshness.FRESH
        if view is not None and view.lease_expires is None and now < self._grace_until:
            return Freshness.PENDING
        return Freshness.STALE

    def not_live(self, now: datetime) -> Set[str]:
        """The sites that cannot be chosen at ``now``: not ready, or no lease valid then.

        The set is the registry's own (read it, do not keep it): it is updated in place.
        """
        if now < self._looked:  # the clock went back: judge every site again
            self._down = {name for name, view in self._sites.items() if not _live(view, now)}
            self._renew_expiries()
        self._looked = now
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            expires, name = heapq.heappop(expiries)
            view = self._sites.get(name)
            if view is not None and view.lease_expires == expires:  # not renewed since
                self._down.add(name)
        return self._down

    def any_pending(self, *, now: datetime | None = None) -> bool:
        """Whether some site is still pending: not heard from, and within the restart grace."""
        now = self._clock() if now is None else now
        if now >= self._grace_until:
            return False
        return any(view.lease_expires is None for view in self._sites.values())

    def _put(self, view: SiteView) -> None:
        before = self._sites.get(view.name)
        self._sites[view.name] = view
        if before is None:
            self._names = None
        if before is None or before.capacity is not view.capacity:
            self.changes.add(view.name)
        if before is None or (before.state, before.lease_expires) != (
            view.state,
            view.lease_expires,
        ):
            if view.lease_expires is not None:
                self._expire_at(view.lease_expires, view.name)
            if view.state is SiteState.READY and view.lease_expires is not None:
                self._down.discard(view.name)
            else:
                self._down.add(view.name)

    def _expire_at(self, expires: datetime, name: str) -> None:
        """Remember when a lease expires; renewed leases leave their old entries behind.

        Those are skipped when they come up, but a registry that is not asked for
        ``not_live()`` for a while would pile them up, so past a few per site the heap is
        made again from the current leases alone.
        """
        heapq.heappush(self._expiries, (expires, name))
        if len(self._expiries) > 4 * len(self._sites) + 64:
            self._renew_expiries()

    def _renew_expiries(self) -> None:
        """The heap made afresh from the current leases alone (expired ones included)."""
        self._expiries = [
            (view.lease_expires, name)
            for name, view in self._sites.items()
            if view.lease_expires is not None
        ]
        heapq.heapify(self._expiries)


def _live(view: SiteView, now: datetime) -> bool:
    expires = view.lease_expires
    return view.state is SiteState.READY and expires is not None and expires > now
