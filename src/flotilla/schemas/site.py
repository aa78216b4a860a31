"""Periodic site state published by agents: the liveness lease and the capacity snapshot."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from flotilla.schemas.envelope import Envelope, SiteName, WireModel
from flotilla.schemas.workload import Gpu, Name, SiteKind, WorkloadKind


class SiteState(StrEnum):
    """What an agent says about its site in its lease."""

    READY = "ready"
    DRAINING = "draining"
    DOWN = "down"


class Lease(WireModel):
    """A small, frequent proof that a site's agent is alive."""

    site: SiteName
    kind: SiteKind
    state: SiteState = SiteState.READY
    ttl: Annotated[timedelta, Field(gt=timedelta(0), description="Lease validity from `time`.")]
    sequence: Annotated[int, Field(ge=0, description="Increases with every lease of one agent.")]
    agent_instance: Name
    reason: Annotated[str, Field(max_length=2048)] | None = None


class SiteLease(Envelope):
    """An agent renews its site's lease."""

    type: Literal["flotilla.site.lease"] = "flotilla.site.lease"
    data: Lease


class Shape(WireModel):
    """One size of resource a site offers: an OpenStack flavor, a Slurm partition's node."""

    name: Name
    cpus: Annotated[float, Field(ge=0)]
    memory_mb: Annotated[int, Field(ge=0)]
    disk_gb: Annotated[int, Field(ge=0)] = 0
    gpu: Gpu | None = None
    infiniband: bool = False
    features: list[Name] = Field(default_factory=list)
    available: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="How many more of this shape fit now, where the site knows."
    )


class Image(WireModel):
    """An OS image (virtual machines) or a container image a site can run."""

    name: Name
    id: Name | None = None
    os_distribution: Name | None = None
    os_version: Name | None = None
    gpu_driver: Name | None = None


class QuotaUsage(WireModel):
    """A limit and what is used of it, for the whole site or one group's share."""

    resource: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    limit: Annotated[float, Field(ge=0)] | None = Field(default=None, description="None: no limit.")
    used: Annotated[float, Field(ge=0)] = 0
    group: Name | None = None


class Capabilities(WireModel):
    """What a site can run at all."""

    workload_kinds: list[WorkloadKind]
    shapes: list[Shape] = Field(default_factory=list)
    gpus: list[Gpu] = Field(default_factory=list, description="GPU inventory by vendor/model.")
    infiniband: bool = False
    images: list[Image] = Field(default_factory=list)
    datasets: list[Name] = Field(default_factory=list)
    regions: list[Name] = Field(default_factory=list)


class Capacity(WireModel):
    """A site's capabilities, quotas and usage at one moment."""

    site: SiteName
    kind: SiteKind
    sequence: Annotated[int, Field(ge=0)]
    capabilities: Capabilities
    quotas: list[QuotaUsage] = Field(default_factory=list)


class SiteCapacity(Envelope):
    """An agent reports its site's capacity (on change and periodically)."""

    type: Literal["flotilla.site.capacity"] = "flotilla.site.capacity"
    data: Capacity
