"""Reports an agent sends about one attempt of a deployment at its site."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, JsonValue

from flotilla.schemas.command import Attempt
from flotilla.schemas.envelope import DeploymentId, Envelope, SiteName, Upgrader, WireModel
from flotilla.schemas.workload import Name

Text = Annotated[str, Field(max_length=8192)]


class AttemptRef(WireModel):
    """Which attempt of which deployment, at which site."""

    deployment_id: DeploymentId
    site: SiteName
    attempt: Attempt


class Progress(AttemptRef):
    """Where an attempt stands; only the latest value matters."""

    phase: Name = Field(description="Site-level phase, e.g. PENDING, RUNNING, BUILD.")
    message: Text = ""
    percent: Annotated[float, Field(ge=0, le=100)] | None = None
    details: dict[str, JsonValue] = Field(default_factory=dict)


class ProgressReported(Envelope):
    """An agent reports the progress of an attempt."""

    type: Literal["flotilla.deployment.progress_reported"] = "flotilla.deployment.progress_reported"
    data: Progress


class ResourceRef(WireModel):
    """A resource an attempt created at a site (server, volume, job, namespace, ...)."""

    kind: Name
    id: Name
    name: Name | None = None
    node: Name | None = Field(default=None, description="The TOSCA node it belongs to.")


class Provisioned(AttemptRef):
    """An attempt succeeded."""

    outputs: dict[str, JsonValue] = Field(default_factory=dict)
    resources: list[ResourceRef] = Field(default_factory=list)


class DeploymentProvisioned(Envelope):
    """A site finished provisioning an attempt."""

    type: Literal["flotilla.deployment.provisioned"] = "flotilla.deployment.provisioned"
    data: Provisioned


class FailureCause(WireModel):
    """Why something failed, in words a user can act on."""

    code: Annotated[
        str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="e.g. quota_exceeded")
    ]
    message: Text
    retryable: bool
    resource: Name | None = None


class Failure(AttemptRef):
    """An attempt failed."""

    cause: FailureCause
    resources: list[ResourceRef] = Field(default_factory=list, description="What is left behind.")


def _failure_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 carried a flat ``reason`` and ``retryable``; version 2 a structured cause."""
    upgraded = {k: v for k, v in data.items() if k not in ("reason", "retryable")}
    upgraded["cause"] = {
        "code": "unclassified",
        "message": data.get("reason", ""),
        "retryable": data.get("retryable", False),
    }
    return upgraded


class ProvisioningFailed(Envelope):
    """A site could not provision an attempt."""

    SCHEMA_VERSION: ClassVar[int] = 2
    UPGRADERS: ClassVar[dict[int, Upgrader]] = {1: _failure_v1_to_v2}

    type: Literal["flotilla.deployment.provisioning_failed"] = (
        "flotilla.deployment.provisioning_failed"
    )
    data: Failure


class DeploymentReleased(Envelope):
    """A site released everything an attempt held."""

    type: Literal["flotilla.deployment.released"] = "flotilla.deployment.released"
    data: AttemptRef


class ReleaseFailed(Envelope):
    """A site could not release an attempt's resources."""

    type: Literal["flotilla.deployment.release_failed"] = "flotilla.deployment.release_failed"
    data: Failure
