"""Messages about deployments as a whole: requests from upstream and status changes."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, JsonValue, StringConstraints, model_validator

from flotilla.schemas.envelope import DeploymentId, Envelope, SiteName, WireModel

HttpUrl = Annotated[str, StringConstraints(pattern=r"^https?://[^\s/$.?#][^\s]*$", max_length=2048)]
PositiveDuration = Annotated[timedelta, Field(gt=timedelta(0))]


class DeploymentStatus(StrEnum):
    """Lifecycle states, with the INDIGO orchestrator's names so its clients keep working."""

    CREATE_IN_PROGRESS = "CREATE_IN_PROGRESS"
    CREATE_COMPLETE = "CREATE_COMPLETE"
    CREATE_FAILED = "CREATE_FAILED"
    UPDATE_IN_PROGRESS = "UPDATE_IN_PROGRESS"
    UPDATE_COMPLETE = "UPDATE_COMPLETE"
    UPDATE_FAILED = "UPDATE_FAILED"
    DELETE_IN_PROGRESS = "DELETE_IN_PROGRESS"
    DELETE_COMPLETE = "DELETE_COMPLETE"
    DELETE_FAILED = "DELETE_FAILED"
    UNKNOWN = "UNKNOWN"


class SchedulingMode(StrEnum):
    """Whether the scheduler chooses the site or the request pins it."""

    AUTOMATIC = "automatic"
    MANUAL = "manual"


class Scheduling(WireModel):
    """How the site is chosen: automatically, or pinned to a site or an SLA."""

    mode: SchedulingMode = SchedulingMode.AUTOMATIC
    site: SiteName | None = None
    sla_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    region: Annotated[str, Field(min_length=1, max_length=128)] | None = None

    @model_validator(mode="after")
    def _manual_names_a_target(self) -> Scheduling:
        if self.mode is SchedulingMode.MANUAL and self.site is None and self.sla_id is None:
            raise ValueError("manual scheduling needs a site or an sla_id")
        return self


class DeploymentRequest(WireModel):
    """What an upstream service asks for: a TOSCA template, its inputs, and how to run it."""

    deployment_id: DeploymentId
    template: Annotated[str, Field(min_length=1, description="TOSCA YAML text.")]
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    owner: Annotated[str, Field(min_length=1, max_length=256, description="Requesting user.")]
    group: Annotated[str, Field(min_length=1, max_length=256, description="Tenant group.")]
    scheduling: Scheduling = Field(default_factory=Scheduling)
    timeout: PositiveDuration | None = Field(default=None, description="Overall deadline.")
    site_timeout: PositiveDuration | None = Field(default=None, description="Per-site deadline.")
    max_sites: Annotated[int, Field(ge=1, le=100)] | None = None
    keep_last_attempt: bool = False
    callback_url: HttpUrl | None = None


class DeploymentRequested(Envelope):
    """An upstream service asks for a new deployment."""

    type: Literal["flotilla.deployment.requested"] = "flotilla.deployment.requested"
    data: DeploymentRequest


class DeleteRequest(WireModel):
    """Delete a deployment everywhere it has resources."""

    deployment_id: DeploymentId
    requested_by: Annotated[str, Field(min_length=1, max_length=256)]
    force: bool = False


class DeploymentDeleteRequested(Envelope):
    """An upstream service asks to delete a deployment."""

    type: Literal["flotilla.deployment.delete_requested"] = "flotilla.deployment.delete_requested"
    data: DeleteRequest


class StatusChange(WireModel):
    """A deployment moved from one lifecycle state to another."""

    deployment_id: DeploymentId
    status: DeploymentStatus
    previous: DeploymentStatus | None = None
    reason: Annotated[str, Field(max_length=8192)] | None = None
    site: SiteName | None = None
    attempt: Annotated[int, Field(ge=1)] | None = None
    owner: Annotated[str, Field(min_length=1, max_length=256)]
    group: Annotated[str, Field(min_length=1, max_length=256)]


class DeploymentStatusChanged(Envelope):
    """The scheduler changed a deployment's status (the public lifecycle event)."""

    type: Literal["flotilla.deployment.status_changed"] = "flotilla.deployment.status_changed"
    data: StatusChange
