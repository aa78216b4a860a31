"""The time an attempt may spend waiting for the cloud, and the pause between two looks."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime

from flotilla.agents.driver import ProvisioningError
from flotilla.agents.openstack.config import OpenStackSettings
from flotilla.schemas import utc_now


@dataclass(slots=True, kw_only=True)
class Deadline:
    """A monotonic deadline with the poll interval of the site."""

    at: float
    interval: float
    code: str = "timeout"

    @classmethod
    def of(
        cls, settings: OpenStackSettings, until: datetime | None = None, *, code: str = "timeout"
    ) -> Deadline:
        """``build_timeout`` from now, or the order's own deadline when that comes first."""
        budget = settings.build_timeout.total_seconds()
        if until is not None:
            budget = min(budget, (until - utc_now()).total_seconds())
        return cls(
            at=time.monotonic() + budget,
            interval=settings.poll_interval.total_seconds(),
            code=code,
        )

    @property
    def is_past(self) -> bool:
        """Whether the deadline has passed."""
        return time.monotonic() >= self.at

    async def pause(self, waiting_for: str) -> None:
        """Sleep one poll interval, or fail if the deadline comes first.

        Raises:
            ProvisioningError: the deadline passed (``code``, retryable: the site was slow).
        """
        if time.monotonic() + self.interval > self.at:
            raise ProvisioningError(
                f"gave up waiting for {waiting_for}", code=self.code, retryable=True
            )
        await asyncio.sleep(self.interval)
