"""Commands the scheduler sends to one site: provision a resolved plan, release a deployment."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, JsonValue

from flotilla.schemas.envelope import DeploymentId, Envelope, SiteName, WireModel
from flotilla.schemas.workload import Name, Resources, WorkloadKind

Attempt = Annotated[int, Field(ge=1, description="1 for the first site tried, then 2, ...")]
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=256)]


class Port(WireModel):
    """A port a node exposes."""

    port: Annotated[int, Field(ge=1, le=65535)]
    protocol: Literal["tcp", "udp"] = "tcp"
    source: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description="CIDR allowed to reach the port; None means anywhere."
    )


class PlannedNode(WireModel):
    """One TOSCA node resolved for one site: what to create and how many."""

    name: Name
    kind: WorkloadKind
    count: Annotated[int, Field(ge=0, le=10_000)] = 1
    resources: Resources = Field(default_factory=Resources)
    shape: Name | None = Field(default=None, description="Site flavor or partition chosen.")
    image: Name | None = None
    ports: list[Port] = Field(default_factory=list)
    public_address: bool = False
    depends_on: list[Name] = Field(default_factory=list)
    attached_to: Name | None = Field(
        default=None, description="For volumes: the node they attach to."
    )
    properties: dict[str, JsonValue] = Field(
        default_factory=dict, description="Kind-specific settings (command, environment, ...)."
    )


class SitePlan(WireModel):
    """Everything a site needs to provision one deployment, resolved for that site."""

    nodes: list[PlannedNode]
    outputs: dict[str, JsonValue] = Field(default_factory=dict)
    group: Name
    account: Name | None = Field(default=None, description="Site-side account or project.")


class Provision(WireModel):
    """Provision a deployment at a site (one attempt)."""

    deployment_id: DeploymentId
    site: SiteName
    attempt: Attempt
    idempotency_key: IdempotencyKey
    plan: SitePlan
    deadline: AwareDatetime | None = Field(default=None, description="Give up after this time.")
    owner: Name
    keep_on_failure: bool = Field(
        default=False,
        description="The last attempt of a keep-last-attempt request: on failure, leave what "
        "was created in place for inspection instead of rolling it back.",
    )


class ProvisionDeployment(Envelope):
    """The scheduler's placement decision, sent to the chosen site."""

    type: Literal["flotilla.site.provision"] = "flotilla.site.provision"
    data: Provision


class Release(WireModel):
    """Release everything one attempt of a deployment holds at a site."""

    deployment_id: DeploymentId
    site: SiteName
    attempt: Attempt
    idempotency_key: IdempotencyKey
    reason: Annotated[str, Field(max_length=2048)]
    force: bool = False


class ReleaseDeployment(Envelope):
    """The scheduler asks a site to release a deployment's resources."""

    type: Literal["flotilla.site.release"] = "flotilla.site.release"
    data: Release
