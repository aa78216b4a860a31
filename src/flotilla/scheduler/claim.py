"""Capacity claims: what the scheduler has promised to sites but they have not reported yet.

A claim is made when a decision is taken, so a burst of requests does not all land on the one
site whose last report looked empty. It ends when the attempt fails or is released, or, once
the attempt succeeded, when the site sends a capacity report taken after that success (its
usage now includes the deployment).

Claims are indexed by site and their totals are kept until the site's claims change, because
placement reads the totals of every candidate site for every request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from flotilla.scheduler.changes import ChangeLog
from flotilla.scheduler.demand import Usage
from flotilla.schemas import Capacity, QuotaUsage


@dataclass(slots=True, kw_only=True)
class _Claim:
    site: str
    group: str
    usage: Usage
    settled_at: datetime | None = None


class ClaimBook:
    """Outstanding claims by attempt key (deployment id and attempt number)."""

    def __init__(self) -> None:
        self._claims: dict[str, _Claim] = {}
        self._by_site: dict[str, dict[str, _Claim]] = {}
        # Totals per site, for all groups (key None) and per group; dropped on any change.
        self._totals: dict[str, dict[str | None, Usage]] = {}
        self.changes = ChangeLog()  # names each site whose claims changed
        self._applicable: dict[str, tuple[Capacity, dict[str, dict[str, QuotaUsage]]]] = {}

    def claim(self, key: str, *, site: str, group: str, usage: Usage) -> None:
        """Hold ``usage`` at ``site`` for the attempt ``key`` (repeating a claim replaces it)."""
        self.release(key)
        claim = _Claim(site=site, group=group, usage=Counter(usage))
        self._claims[key] = claim
        self._by_site.setdefault(site, {})[key] = claim
        # Totals already worked out grow by the claim; a release works them out afresh.
        for total_group, total in self._totals.get(site, {}).items():
            if total_group is None or total_group == group:
                total.update(claim.usage)
        self.changes.add(site)

    def holds(self, key: str) -> bool:
        """Whether the attempt ``key`` holds a claim (in flight, or settled and not reported)."""
        return key in self._claims

    def release(self, key: str) -> None:
        """Drop a claim: the attempt failed, was released, or never started."""
        claim = self._claims.pop(key, None)
        if claim is not None:
            self._forget(key, claim.site)

    def settle(self, key: str, at: datetime) -> None:
        """The attempt succeeded at ``at``; the claim ends with the next capacity report."""
        claim = self._claims.get(key)
        if claim is not None:
            claim.settled_at = at

    def site_reported(self, site: str, received: datetime) -> None:
        """A capacity report arrived: settled claims it already includes are dropped."""
        done = [
            key
            for key, claim in self._by_site.get(site, {}).items()
            if claim.settled_at is not None and claim.settled_at <= received
        ]
        for key in done:
            del self._claims[key]
            self._forget(key, site)

    def held(self, site: str, group: str | None = None) -> Usage:
        """The usage claimed at a site, for one group or for all."""
        return Counter(self._total(site, group))

    def totals(self, site: str, group: str | None = None) -> Mapping[str, int]:
        """Like ``held``, as a read-only view that is not copied (valid until the next change)."""
        return MappingProxyType(self._total(site, group))

    def quota_room(self, capacity: Capacity, group: str, usage: Usage) -> tuple[list[str], float]:
        """Whether ``usage`` fits the site's quotas after what is claimed there.

        Returns:
            The quotas it would exceed, as reasons, and the headroom: the smallest share of
            any limited resource still free afterwards (0..1).
        """
        problems = []
        headroom = 1.0
        claimed = self._total(capacity.site, None)
        for resource, quota in self._quotas(capacity, group).items():
            if quota.limit is None:
                continue
            free = quota.limit - quota.used - claimed.get(resource, 0)
            need = usage[resource]
            if need and need > free:
                problems.append(f"quota {resource}: needs {need:g}, free {max(free, 0):g}")
            if quota.limit:
                headroom = min(headroom, max(free - need, 0.0) / quota.limit)
        return problems, headroom

    def _quotas(self, capacity: Capacity, group: str) -> dict[str, QuotaUsage]:
        """``_applicable_quotas``, kept while the site's report is the same."""
        kept = self._applicable.get(capacity.site)
        if kept is None or kept[0] is not capacity:
            kept = self._applicable[capacity.site] = (capacity, {})
        quotas = kept[1].get(group)
        if quotas is None:
            quotas = kept[1][group] = _applicable_quotas(capacity, group)
        return quotas

    def _total(self, site: str, group: str | None) -> Usage:
        per_site = self._totals.setdefault(site, {})
        total = per_site.get(group)
        if total is None:
            total = Counter()
            for claim in self._by_site.get(site, {}).values():
                if group is None or claim.group == group:
                    total.update(claim.usage)
            per_site[group] = total
        return total

    def _forget(self, key: str, site: str) -> None:
        claims = self._by_site.get(site)
        if claims is not None:
            claims.pop(key, None)
            if not claims:
                del self._by_site[site]
        self._totals.pop(site, None)
        self.changes.add(site)


def _applicable_quotas(capacity: Capacity, group: str) -> dict[str, QuotaUsage]:
    """The quota per resource: a group's own share wins over the site-wide one."""
    quotas: dict[str, QuotaUsage] = {}
    for quota in capacity.quotas:
        if quota.group is None:
            quotas.setdefault(quota.resource, quota)
        elif quota.group == group:
            quotas[quota.resource] = quota
    return quotas
