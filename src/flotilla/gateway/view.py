"""Bodies of Flotilla's own ``/v1`` API: what callers send and what they get back.

Request bodies refuse unknown fields (a typo must not silently become a default); the
same models generate the OpenAPI document, so it cannot drift from what is enforced.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from flotilla.gateway.error import InvalidRequestError
from flotilla.gateway.snapshot import Snapshot
from flotilla.scheduler.model import AttemptOutcome, AttemptRecord
from flotilla.scheduler.registry import Freshness
from flotilla.schemas import Capabilities, DeploymentStatus, QuotaUsage
from flotilla.schemas.deployment import HttpUrl
from flotilla.schemas.envelope import SiteName

Minutes = Annotated[int, Field(ge=1, le=525_600)]  # at most a year
M = TypeVar("M", bound=BaseModel)


class ApiModel(BaseModel):
    """Base of the API's bodies: immutable and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class CreateDeployment(ApiModel):
    """``POST /v1/deployments``: a TOSCA template, its inputs, and how to run it."""

    template: Annotated[str, Field(min_length=1, description="TOSCA YAML text.")]
    inputs: dict[str, JsonValue] = Field(default_factory=dict, description="Template inputs.")
    group: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None, description="Tenant group; default: the first group of the caller's token."
    )
    site: SiteName | None = Field(default=None, description="Pin the deployment to this site.")
    sla_id: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None, description="Pin the deployment to this SLA."
    )
    timeout_minutes: Minutes | None = Field(default=None, description="Overall deadline.")
    site_timeout_minutes: Minutes | None = Field(default=None, description="Per-site deadline.")
    max_sites: Annotated[int, Field(ge=1, le=100)] | None = Field(
        default=None, description="Sites to try at most."
    )
    keep_last_attempt: bool | None = Field(
        default=None, description="Keep the resources of the last failed attempt for debugging."
    )
    callback_url: HttpUrl | None = Field(
        default=None,
        description="Receives a POST of the deployment when it reaches a final status.",
    )

    @model_validator(mode="after")
    def _site_timeout_within_timeout(self) -> Self:
        overall, per_site = self.timeout_minutes, self.site_timeout_minutes
        if overall is not None and per_site is not None and per_site > overall:
            raise ValueError("site_timeout_minutes must not exceed timeout_minutes")
        return self


class CandidateView(ApiModel):
    """A site that could run the deployment: its score and the terms that made it."""

    site: str
    score: float
    explanation: list[str]


class RejectionView(ApiModel):
    """A site that could not run the deployment, and why (or a count of further sites)."""

    site: str
    reasons: list[str]


class PlacementView(ApiModel):
    """Why an attempt went where it went: the ranking made when it was placed."""

    candidates: list[CandidateView] = Field(description="The best candidates, best first.")
    more_candidates: int = Field(0, description="Candidates ranked lower and not listed.")
    rejected: list[RejectionView] = Field(
        description="Rejected sites by name (those with an SLA for the group first); a last"
        " entry may count the sites not listed."
    )


class AttemptView(ApiModel):
    """One try at one site, with the cause when it failed, and why that site was chosen."""

    number: int
    site: str
    started_at: datetime
    finished_at: datetime | None
    outcome: AttemptOutcome
    cause_code: str | None
    cause: str | None
    released: bool
    kept: bool
    placement: PlacementView | None = None


class DeploymentView(ApiModel):
    """A deployment: status, outputs, and every attempt with its cause."""

    id: str
    status: DeploymentStatus
    status_reason: str | None
    owner: str
    group: str
    created_at: datetime
    updated_at: datetime
    outputs: dict[str, Any]
    operation: Literal["create", "delete"] | None
    site: str | None = Field(description="The site of the current or last attempt.")
    attempts: list[AttemptView]


class DeploymentPage(ApiModel):
    """``GET /v1/deployments``: one page, newest first."""

    items: list[DeploymentView]
    total: int
    offset: int
    limit: int


class SiteItem(ApiModel):
    """A site as the federation last heard of it."""

    site: str
    kind: str
    state: str
    freshness: Freshness
    fresh: bool
    lease_age_seconds: float | None = Field(
        description="Seconds since the last lease was received (null when unknown)."
    )
    lease_expires_in_seconds: float | None = Field(
        description="Seconds until the lease expires (negative: expired)."
    )
    capabilities: Capabilities | None
    quotas: list[QuotaUsage]


class SiteList(ApiModel):
    """``GET /v1/sites``."""

    items: list[SiteItem]


class Problem(ApiModel):
    """One problem of a template, naming the node and the field."""

    node: str | None
    field: str
    message: str


class ErrorDetail(ApiModel):
    """What went wrong, in words a caller can act on."""

    code: str
    message: str
    problems: list[Problem] | None = None


class ErrorBody(ApiModel):
    """Every ``/v1`` error response."""

    error: ErrorDetail


def deployment_view(snapshot: Snapshot) -> DeploymentView:
    """The ``/v1`` view of a deployment."""
    record = snapshot.record
    return DeploymentView(
        id=record.id,
        status=record.status,
        status_reason=record.status_reason,
        owner=record.owner,
        group=record.group,
        created_at=record.created_at,
        updated_at=record.updated_at,
        outputs=dict(record.outputs),
        operation=None if record.operation is None else record.operation.value,
        site=snapshot.site,
        attempts=[_attempt_view(a) for a in snapshot.attempts],
    )


def _attempt_view(attempt: AttemptRecord) -> AttemptView:
    return AttemptView(
        number=attempt.number,
        site=attempt.site,
        started_at=attempt.started_at,
        finished_at=attempt.finished_at,
        outcome=attempt.outcome,
        cause_code=attempt.cause_code,
        cause=attempt.cause,
        released=attempt.released,
        kept=attempt.kept,
        placement=_placement_view(attempt.ranking),
    )


def _placement_view(ranking: dict[str, Any]) -> PlacementView | None:
    """The stored ranking as the API shows it; None for an attempt stored without one."""
    if "candidates" not in ranking:
        return None
    return PlacementView(
        candidates=[CandidateView(**c) for c in ranking["candidates"]],
        more_candidates=ranking.get("more_candidates", 0),
        rejected=[RejectionView(**r) for r in ranking.get("rejected", [])],
    )


def parse_body(model: type[M], body: object) -> M:
    """Validate a decoded JSON body, naming each wrong or unknown field.

    Raises:
        InvalidRequestError: the body does not match ``model``.
    """
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequestError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """A validation error as one line: ``unknown field 'x'; timeout: must be >= 1``."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "body"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown field {where!r}")
        else:
            problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems[:10])
