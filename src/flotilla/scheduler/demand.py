"""What a template asks of a site: per-node fits (shape, image) and the total for quotas.

Whether a template fits a site depends only on the site's capabilities (workload kinds,
flavors, images), which rarely change, so ``FitCache`` keeps each site's fits until its
capabilities do: with many sites, placement then fits each template once per site, not
once per request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from flotilla.scheduler.tosca.requirement import NodeRequirements, OsImage, TemplateRequirements
from flotilla.schemas import Capabilities, Gpu, Image, Resources, Shape, WorkloadKind

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


def fitted_usage(
    requirements: TemplateRequirements, shapes: Mapping[str, str], offered: list[Shape]
) -> Usage:
    """The quota a template consumes at one site, with the flavors chosen there.

    A virtual machine takes its whole flavor out of the compute quota, so a node asking for
    2 CPUs on an 8-CPU flavor uses 8 cores. Batch jobs and containers use what they ask for,
    whatever size the site's nodes are.
    """
    if not any(node.kind is WorkloadKind.VIRTUAL_MACHINE for node in requirements.nodes):
        return total_usage(requirements)
    by_name = {shape.name: shape for shape in offered}
    usage: Usage = Counter()
    for node in requirements.nodes:
        shape = by_name.get(shapes.get(node.name, ""))
        if node.kind is WorkloadKind.VIRTUAL_MACHINE and shape is not None:
            usage.update(node_usage(node, _flavor_resources(node.resources, shape)))
        else:
            usage.update(node_usage(node))
    return usage


def _flavor_resources(asked: Resources, shape: Shape) -> Resources:
    return Resources(
        cpus=max(asked.cpus, shape.cpus),
        memory_mb=max(asked.memory_mb, shape.memory_mb),
        disk_gb=max(asked.disk_gb, shape.disk_gb),
        gpu=shape.gpu or asked.gpu,
        infiniband=asked.infiniband,
    )


def node_usage(node: NodeRequirements, resources: Resources | None = None) -> Usage:
    """The quota resources all instances of one node consume (as asked, or as given)."""
    usage: Usage = Counter()
    resources = resources or node.resources
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
    return _first_fitting(node, sorted(shapes, key=_shape_size))


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateFit:
    """How a template fits one site's capabilities: the shapes and images chosen, or why not.

    ``shapes`` and ``images`` are read-only: a cached fit is shared by many decisions.
    """

    reasons: tuple[str, ...]
    shapes: Mapping[str, str]
    images: Mapping[str, str]


def fit_template(
    requirements: TemplateRequirements,
    capabilities: Capabilities,
    aliases: Mapping[str, str],
) -> TemplateFit:
    """Fit every node of a template: its workload kind, smallest shape and image, or why not."""
    return _fit(requirements, capabilities, sorted(capabilities.shapes, key=_shape_size), aliases)


def _fit(
    requirements: TemplateRequirements,
    capabilities: Capabilities,
    by_size: list[Shape],
    aliases: Mapping[str, str],
) -> TemplateFit:
    reasons: list[str] = []
    shapes: dict[str, str] = {}
    images: dict[str, str] = {}
    for node in requirements.nodes:
        if node.kind not in HOSTED_KINDS and node.kind not in capabilities.workload_kinds:
            reasons.append(f"node {node.name}: site does not run {node.kind.value}")
            continue
        if node.kind in SIZED_KINDS and by_size:
            shape = _first_fitting(node, by_size)
            if shape is None:
                reasons.append(f"node {node.name}: no flavor or node fits {describe(node)}")
            else:
                shapes[node.name] = shape.name
        if needs_image(node):
            image = matching_image(node.image, capabilities.images, aliases)
            if image is None:
                reasons.append(f"node {node.name}: no image matches {image_text(node)}")
            else:
                images[node.name] = image
    return TemplateFit(
        reasons=tuple(reasons), shapes=MappingProxyType(shapes), images=MappingProxyType(images)
    )


def template_signature(requirements: TemplateRequirements) -> Hashable:
    """What fitting a template depends on, comparable across requests (digests may repeat)."""
    return tuple(
        (
            node.name,
            node.kind,
            node.resources,
            node.image if needs_image(node) else None,
            _instance_type(node),
        )
        for node in requirements.nodes
    )


@dataclass(slots=True, kw_only=True)
class _SiteFits:
    capabilities: Capabilities
    by_size: list[Shape]
    fits: dict[int, TemplateFit] = field(default_factory=dict)


class FitCache:
    """Template fits per site, kept while the site's capabilities stay the same.

    A template is named by a small key (``key()``), taken once per request; ``fit()`` is
    then a dictionary lookup for every site that already fitted that template. A capacity
    report with equal capabilities keeps the site's fits; changed ones drop them. Image
    aliases must not change for the cache's lifetime.

    Args:
        max_templates: Distinct templates remembered; past that the cache starts afresh.
    """

    def __init__(self, *, max_templates: int = 256) -> None:
        self._max = max_templates
        self._keys: dict[Hashable, int] = {}
        self._next_key = 0
        self._sites: dict[str, _SiteFits] = {}

    def key(self, requirements: TemplateRequirements) -> int:
        """The key of a template's fits (never reused for another template)."""
        signature = template_signature(requirements)
        key = self._keys.get(signature)
        if key is None:
            if len(self._keys) >= self._max:
                self._keys.clear()
                self._sites.clear()
            key = self._keys[signature] = self._next_key
            self._next_key += 1
        return key

    def fit(
        self,
        site: str,
        capabilities: Capabilities,
        key: int,
        requirements: TemplateRequirements,
        aliases: Mapping[str, str],
    ) -> TemplateFit:
        """How the template ``key`` (``requirements``) fits ``site`` with ``capabilities``."""
        entry = self._sites.get(site)
        if entry is None or entry.capabilities is not capabilities:
            entry = self._renew(site, entry, capabilities)
        fit = entry.fits.get(key)
        if fit is None:
            fit = entry.fits[key] = _fit(requirements, capabilities, entry.by_size, aliases)
        return fit

    def _renew(self, site: str, entry: _SiteFits | None, capabilities: Capabilities) -> _SiteFits:
        if entry is not None and entry.capabilities == capabilities:
            entry.capabilities = capabilities  # a newer report of the same capabilities
            return entry
        by_size = sorted(capabilities.shapes, key=_shape_size)
        entry = self._sites[site] = _SiteFits(capabilities=capabilities, by_size=by_size)
        return entry


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


def describe(node: NodeRequirements) -> str:
    """A node's size in words, for rejection reasons."""
    resources = node.resources
    gpu = f", {resources.gpu.count} GPU" if resources.gpu else ""
    ib = ", InfiniBand" if resources.infiniband else ""
    return f"{resources.cpus:g} CPUs, {resources.memory_mb} MB{gpu}{ib}"


def image_text(node: NodeRequirements) -> str:
    """The OS a node asks for, in words, for rejection reasons."""
    image = node.image
    parts = [image.name, image.distribution, image.version] if image else []
    return " ".join(str(p) for p in parts if p) or "the requested OS"


def _first_fitting(node: NodeRequirements, by_size: list[Shape]) -> Shape | None:
    """The flavor the node names (INDIGO's ``instance_type``) when the site has it, else the
    first shape (of shapes sorted by size, smallest first) that fits the node."""
    named = _instance_type(node)
    if named is not None:
        chosen = next((s for s in by_size if s.name == named), None)
        if chosen is not None:
            return chosen
    return next((s for s in by_size if shape_fits(node.resources, s, node.kind)), None)


def _instance_type(node: NodeRequirements) -> str | None:
    named = node.properties.get("instance_type")
    return named if isinstance(named, str) else None


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
