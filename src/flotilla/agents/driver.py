"""The one port every site driver implements, and the errors a driver raises.

A driver knows one kind of site (local processes, Slurm over SSH, OpenStack, Kubernetes).
The agent runtime (``flotilla.agents.service``) does everything else: it consumes the site's
command queue, keeps commands in its local inbox, limits concurrency, coalesces progress,
sends leases and capacity reports, and turns a driver's results and errors into reports.

Rules every driver follows:

- **Idempotent by deployment and attempt.** ``provision`` may be called again for the same
  ``(deployment_id, attempt)`` after a redelivery or an agent restart. It must find what
  already exists (by tag, name or job comment carrying ``attempt_tag(...)``) and continue
  from there, never create a second copy. ``release`` is safe to repeat and succeeds when
  nothing is left.
- **Never block the event loop.** Blocking SDKs run in an executor the driver owns; every
  remote call is bounded by a timeout.
- **No secrets in results.** Outputs, resource references, progress and error messages end
  up in public events: never put credentials, tokens or private keys in them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from pydantic import JsonValue

from flotilla.errors import FlotillaError, RetryableError
from flotilla.schemas import (
    AttemptRef,
    Capabilities,
    FailureCause,
    Provision,
    QuotaUsage,
    Release,
    ResourceRef,
    SiteKind,
)


def attempt_tag(deployment_id: str, attempt: int) -> str:
    """The tag a driver puts on every resource of one attempt, to find them again."""
    return f"flotilla-{deployment_id}-{attempt}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteSnapshot:
    """What a site can run and how much of its quota is used, at one moment."""

    capabilities: Capabilities
    quotas: tuple[QuotaUsage, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisionResult:
    """A completed attempt: the template's outputs and what was created."""

    outputs: Mapping[str, JsonValue] = field(default_factory=dict)
    resources: tuple[ResourceRef, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptState:
    """What a site holds for one attempt right now (``status``)."""

    phase: str
    resources: tuple[ResourceRef, ...] = ()
    finished: bool = False
    details: Mapping[str, JsonValue] = field(default_factory=dict)


class ProgressSink(Protocol):
    """Where a driver reports how an attempt moves; latest wins, never blocks."""

    def __call__(
        self,
        phase: str,
        message: str = "",
        *,
        percent: float | None = None,
        details: Mapping[str, JsonValue] | None = None,
    ) -> None: ...


class ProvisioningError(FlotillaError):
    """An attempt failed at the site, with a cause a user can act on.

    ``code`` is a short snake_case word (``quota_exceeded``, ``no_valid_host``,
    ``job_failed``, ``timeout``...). ``retryable`` says whether the *same site* may succeed
    later; the scheduler fails over either way. ``resources`` lists what is left behind.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        retryable: bool = False,
        resource: str | None = None,
        resources: tuple[ResourceRef, ...] = (),
    ) -> None:
        super().__init__(message, resource=resource)
        self.code = code
        self.retryable = retryable
        self.resources = resources

    def cause(self) -> FailureCause:
        """The cause as it travels in a failure report."""
        return FailureCause(
            code=self.code,
            message=self.message[:8192],
            retryable=self.retryable,
            resource=self.resource,
        )


class SiteUnavailableError(RetryableError):
    """The site cannot be reached (login node down, API not answering); try again later."""


class SiteDriver(Protocol):
    """One kind of site, as the agent runtime drives it.

    Used as an async context manager: ``__aenter__`` opens connections or executors,
    ``__aexit__`` closes them. The agent creates one driver per process.
    """

    kind: SiteKind

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def snapshot(self) -> SiteSnapshot:
        """Capabilities, quotas and usage of the site.

        Raises:
            SiteUnavailableError: the site cannot be reached (the agent reports it DOWN).
        """
        ...

    async def provision(self, order: Provision, progress: ProgressSink) -> ProvisionResult:
        """Create (or find and continue) every resource of the plan; return when complete.

        Raises:
            ProvisioningError: the attempt failed, with its cause.
            SiteUnavailableError: the site could not be reached; the runtime retries.
        """
        ...

    async def status(self, attempt: AttemptRef) -> AttemptState | None:
        """What the site holds for an attempt, or None when it holds nothing."""
        ...

    async def release(self, order: Release) -> None:
        """Delete everything the attempt holds; succeed when nothing is left.

        Raises:
            ProvisioningError: something could not be deleted (reported as release_failed).
            SiteUnavailableError: the site could not be reached; the runtime retries.
        """
        ...
