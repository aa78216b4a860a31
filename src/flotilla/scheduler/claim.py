"""Capacity claims: what the scheduler has promised to sites but they have not reported yet.

A claim is made when a decision is taken, so a burst of requests does not all land on the one
site whose last report looked empty. It ends when the attempt fails or is released, or, once
the attempt succeeded, when the site sends a capacity report taken after that success (its
usage now includes the deployment).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from flotilla.scheduler.demand import Usage


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

    def claim(self, key: str, *, site: str, group: str, usage: Usage) -> None:
        """Hold ``usage`` at ``site`` for the attempt ``key`` (repeating a claim replaces it)."""
        self._claims[key] = _Claim(site=site, group=group, usage=Counter(usage))

    def release(self, key: str) -> None:
        """Drop a claim: the attempt failed, was released, or never started."""
        self._claims.pop(key, None)

    def settle(self, key: str, at: datetime) -> None:
        """The attempt succeeded at ``at``; the claim ends with the next capacity report."""
        claim = self._claims.get(key)
        if claim is not None:
            claim.settled_at = at

    def site_reported(self, site: str, received: datetime) -> None:
        """A capacity report arrived: settled claims it already includes are dropped."""
        done = [
            key
            for key, claim in self._claims.items()
            if claim.site == site and claim.settled_at is not None and claim.settled_at <= received
        ]
        for key in done:
            del self._claims[key]

    def held(self, site: str, group: str | None = None) -> Usage:
        """The usage claimed at a site, for one group or for all."""
        total: Usage = Counter()
        for claim in self._claims.values():
            if claim.site == site and (group is None or claim.group == group):
                total.update(claim.usage)
        return total
