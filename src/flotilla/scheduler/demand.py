"""What a template asks of a site: per-node fits (shape, image) and the total for quotas."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from flotilla.scheduler.tosca.requirement import NodeRequirements, OsImage, TemplateRequirements
from flotilla.schemas import Gpu, Image, Resources, Shape, WorkloadKind

# Quota resource names the agents report and the scheduler checks.
CORES = "cores"
RAM_MB = "ram_mb"
INSTANCES = "instances"
GPUS = "gpus"
VOLUMES = "volumes"
VOLUME_GB = "volume_gb"

SIZED_KINDS = frozenset(
    {
        WorkloadKind.VIRTUAL_MACHINE,
        WorkloadKind.BATCH_JOB,
        WorkloadKind.CONTAINER_APPLICATION,
        WorkloadKind.CONTAINER_JOB,
    }
)
HOSTED_KINDS = frozenset({WorkloadKind.SOFTWARE_COMPONENT})

Usage = Counter[str]


def total_usage(requirements: TemplateRequirements) -> Usage:
    """The quota resources a whole template consumes."""
    usage: Usage = Counter()
    for node in requirements.nodes:
        usage.update(node_usage(node))
    return usage


def node_usage(node: NodeRequirements) -> Usage:
    """The quota resources all instances of one node consume."""
    usage: Usage = Counter()
    resources = node.resources
    if node.kind in SIZED_KINDS:
        usage[INSTANCES] += node.count
        usage[CORES] += int(node.count * resources.cpus + 0.999)
        usage[RAM_MB] += node.count * resources.memory_mb
        usage[GPUS] += node.count * (resources.gpu.count if resources.gpu else 0)
    elif node.kind is WorkloadKind.VOLUME:
        usage[VOLUMES] += node.count
        usage[VOLUME_GB] += node.count * resources.disk_gb
    return +usage


def smallest_fitting_shape(node: NodeRequirements, shapes: list[Shape]) -> Shape | None:
    """The smallest shape that fits one instance of the node, GPU-less shapes first."""
    fitting = [shape for shape in shapes if shape_fits(node.resources, shape, node.kind)]
    return min(fitting, key=_shape_size, default=None)


def shape_fits(resources: Resources, shape: Shape, kind: WorkloadKind) -> bool:
    """Whether one instance with ``resources`` fits in ``shape``."""
    if shape.cpus < resources.cpus or shape.memory_mb < resources.memory_mb:
        return False
    # Disk is the root disk of a virtual machine; jobs and containers use other storage.
    if kind is WorkloadKind.VIRTUAL_MACHINE and shape.disk_gb < resources.disk_gb:
        return False
    if resources.infiniband and not (shape.infiniband or "infiniband" in shape.features):
        return False
    return gpu_fits(resources.gpu, shape.gpu)


def gpu_fits(wanted: Gpu | None, offered: Gpu | None) -> bool:
    """Whether an offered GPU set satisfies the wanted count, vendor and model."""
    if wanted is None:
        return True
    if offered is None or offered.count < wanted.count:
        return False
    return _same(wanted.vendor, offered.vendor) and _same(wanted.model, offered.model)


def matching_image(
    wanted: OsImage | None, images: list[Image], aliases: Mapping[str, str]
) -> str | None:
    """The site image satisfying the wanted OS, by name (or alias) or by OS properties."""
    if wanted is None:
        return None
    if wanted.name:
        name = aliases.get(wanted.name, wanted.name)
        return next((i.name for i in images if name in (i.name, i.id)), None)
    for image in images:
        if _os_matches(wanted, image):
            return image.name
    return None


def needs_image(node: NodeRequirements) -> bool:
    """Whether the node asks for a particular OS image."""
    wanted = node.image
    return (
        node.kind is WorkloadKind.VIRTUAL_MACHINE
        and wanted is not None
        and any((wanted.name, wanted.distribution, wanted.version, wanted.gpu_driver))
    )


def _os_matches(wanted: OsImage, image: Image) -> bool:
    if wanted.distribution and not _same(wanted.distribution, image.os_distribution):
        return False
    if wanted.version and not (image.os_version or "").startswith(str(wanted.version)):
        return False
    return not (wanted.gpu_driver and not image.gpu_driver)


def _same(wanted: str | None, offered: str | None) -> bool:
    return wanted is None or (offered is not None and wanted.casefold() == offered.casefold())


def _shape_size(shape: Shape) -> tuple[int, float, int, int]:
    return (shape.gpu.count if shape.gpu else 0, shape.cpus, shape.memory_mb, shape.disk_gb)
