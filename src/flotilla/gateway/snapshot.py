"""A deployment as the gateway shows it: its record and its attempts, read together."""

from __future__ import annotations

from dataclasses import dataclass

from flotilla.scheduler.model import AttemptRecord, DeploymentRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """A deployment and its attempts, first to last."""

    record: DeploymentRecord
    attempts: tuple[AttemptRecord, ...] = ()

    @property
    def site(self) -> str | None:
        """The site of the current attempt, or of the last one when none runs."""
        return self.attempts[-1].site if self.attempts else None
