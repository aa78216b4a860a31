"""Value types shared by plans and capacity reports: what a node needs and what a site has."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from flotilla.schemas.envelope import WireModel

Name = Annotated[str, Field(min_length=1, max_length=255)]


class WorkloadKind(StrEnum):
    """What a TOSCA node turns into at a site."""

    VIRTUAL_MACHINE = "virtual_machine"
    CONTAINER_APPLICATION = "container_application"
    CONTAINER_JOB = "container_job"
    BATCH_JOB = "batch_job"
    VOLUME = "volume"
    NETWORK = "network"
    SOFTWARE_COMPONENT = "software_component"


class SiteKind(StrEnum):
    """The kinds of site an agent can drive."""

    OPENSTACK = "openstack"
    KUBERNETES = "kubernetes"
    SLURM = "slurm"
    LOCAL = "local"


class Gpu(WireModel):
    """GPUs of one vendor and model: requested by a node, or offered by a shape."""

    count: Annotated[int, Field(ge=1, le=1024)]
    vendor: Name | None = None
    model: Name | None = None


class Resources(WireModel):
    """Hardware for one instance of a node."""

    cpus: Annotated[float, Field(ge=0, le=1_000_000)] = 1
    memory_mb: Annotated[int, Field(ge=0)] = 0
    disk_gb: Annotated[int, Field(ge=0)] = 0
    gpu: Gpu | None = None
    infiniband: bool = False
