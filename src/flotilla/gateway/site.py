"""Sites as the gateway shows them, and the feed that keeps its registry current.

In the embedded mode the gateway shares the scheduler's ``SiteRegistry``. As a process of
its own it keeps a ``SiteBoard``, fed by its own queue of leases and capacity reports
(``flotilla.broker.gateway_topology``); the board also remembers when each lease arrived,
which a plain registry does not, so ``/v1/sites`` can show the lease's age.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from flotilla.bus import Delivery
from flotilla.errors import PermanentError
from flotilla.gateway.auth import Identity
from flotilla.gateway.view import SiteItem, SiteList
from flotilla.scheduler.registry import Freshness, SiteRegistry, SiteView
from flotilla.schemas import Lease, Message, SiteCapacity, SiteLease, utc_now


class SiteBoard(SiteRegistry):
    """A site registry that also remembers when each site's latest lease was received."""

    def __init__(
        self, *, grace: timedelta = timedelta(seconds=30), clock: Callable[[], datetime] = utc_now
    ) -> None:
        super().__init__(grace=grace, clock=clock)
        self._received: dict[str, datetime] = {}

    def apply_lease(self, lease: Lease) -> bool:
        """Record a lease and when it arrived; an older or repeated sequence is ignored."""
        applied = super().apply_lease(lease)
        if applied:
            self._received[lease.site] = self.now()
        return applied

    def lease_received(self, name: str) -> datetime | None:
        """When the site's latest lease arrived, if one did."""
        return self._received.get(name)


async def apply_heartbeat(registry: SiteRegistry, message: Message, delivery: Delivery) -> None:
    """Bus handler of the gateway's heartbeat queue: apply leases and capacity reports."""
    if isinstance(message, SiteLease):
        registry.apply_lease(message.data)
    elif isinstance(message, SiteCapacity):
        registry.apply_capacity(message.data)
    else:
        raise PermanentError(f"{message.type} does not belong on {delivery.queue}")


def site_list(registry: SiteRegistry, who: Identity) -> SiteList:
    """Every known site, by name; quotas are limited to the caller's groups and site-wide ones."""
    now = registry.now()
    views = sorted(registry, key=lambda view: view.name)
    return SiteList(items=[_item(registry, view, who, now) for view in views])


def _item(registry: SiteRegistry, view: SiteView, who: Identity, now: datetime) -> SiteItem:
    freshness = registry.freshness(view.name, now=now)
    received = registry.lease_received(view.name) if isinstance(registry, SiteBoard) else None
    capacity = view.capacity
    quotas = [] if capacity is None else capacity.quotas
    expires = view.lease_expires
    return SiteItem(
        site=view.name,
        kind=view.kind.value,
        state=view.state.value,
        freshness=freshness,
        fresh=freshness is Freshness.FRESH,
        lease_age_seconds=None if received is None else (now - received).total_seconds(),
        lease_expires_in_seconds=None if expires is None else (expires - now).total_seconds(),
        capabilities=None if capacity is None else capacity.capabilities,
        quotas=[q for q in quotas if q.group is None or who.may_use(q.group)],
    )
