"""Flavors as Flotilla shapes: size, GPUs, InfiniBand from extra specs; free room from Placement.

GPUs appear in extra specs in several ways, all understood here:

- a Placement resource class: ``resources:VGPU=1``, ``resources:PGPU=1`` or a custom class
  naming vendor and model, ``resources:CUSTOM_GPU_NVIDIA_A100=1``;
- a required trait naming vendor and model next to an anonymous class,
  ``trait:CUSTOM_GPU_NVIDIA_A100=required``;
- PCI passthrough, ``pci_passthrough:alias=a100:2`` (the alias name hints at the model);
- explicit keys, as INDIGO's CMDB sets them: ``gpu_number``, ``gpu_vendor``, ``gpu_model``.

Granular groups (``resources1:``, ``trait2:``) count like ungrouped ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flotilla.schemas import Gpu, Shape

_RESOURCE = re.compile(r"^resources\d*:(?P<rc>[A-Z0-9_]+)$")
_TRAIT = re.compile(r"^trait\d*:(?P<trait>[A-Z0-9_]+)$")
_VENDORS = ("nvidia", "amd", "intel")
_ANONYMOUS_GPU_CLASSES = ("VGPU", "PGPU")
# Model names that identify their vendor when an alias or trait names only the model.
_MODEL_VENDORS = {
    "nvidia": ("a100", "a10", "a30", "a40", "h100", "h200", "l4", "l40", "t4", "v100", "p100"),
    "amd": ("mi100", "mi210", "mi250", "mi300"),
}
_TRUE = {"true", "yes", "1", "required"}


@dataclass(frozen=True, slots=True, kw_only=True)
class FlavorSpec:
    """What the compute API says about one flavor."""

    name: str
    id: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    ephemeral_gb: int = 0
    swap_mb: int = 0
    extra_specs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementQuery:
    """The Placement request nova makes for one instance of a flavor."""

    resources: Mapping[str, int]
    required: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()

    def params(self, limit: int = 1000) -> dict[str, str]:
        """Query parameters of ``GET /allocation_candidates`` (microversion 1.22 or later)."""
        found = {
            "resources": ",".join(f"{rc}:{n}" for rc, n in sorted(self.resources.items())),
            "limit": str(limit),
        }
        traits = [*self.required, *(f"!{t}" for t in self.forbidden)]
        if traits:
            found["required"] = ",".join(traits)
        return found


def shape_of(flavor: FlavorSpec, *, available: int | None = None) -> Shape:
    """The shape a flavor offers."""
    specs = flavor.extra_specs
    features = sorted(t.lower() for t in required_traits(specs) if t.startswith("CUSTOM_"))
    infiniband = has_infiniband(specs)
    if infiniband and "infiniband" not in features:
        features.append("infiniband")
    return Shape(
        name=flavor.name,
        cpus=flavor.vcpus,
        memory_mb=flavor.ram_mb,
        disk_gb=flavor.disk_gb,
        gpu=gpu_of(specs),
        infiniband=infiniband,
        features=features,
        available=available,
    )


def gpu_of(specs: Mapping[str, str]) -> Gpu | None:
    """The GPUs one instance of a flavor gets, from its extra specs."""
    count = 0
    named: tuple[str | None, str | None] = (None, None)
    for rc, amount in resource_amounts(specs).items():
        if rc in _ANONYMOUS_GPU_CLASSES:
            count += amount
        elif rc.startswith("CUSTOM_GPU"):
            count += amount
            named = _vendor_model(rc.removeprefix("CUSTOM_GPU")) or named
    for trait in required_traits(specs):
        if trait.startswith("CUSTOM_GPU") and named == (None, None):
            named = _vendor_model(trait.removeprefix("CUSTOM_GPU")) or named
    alias_count, alias_named = _pci_gpus(specs.get("pci_passthrough:alias", ""))
    count += alias_count
    vendor, model = named[0] or alias_named[0], named[1] or alias_named[1]
    count = _int(specs.get("gpu_number") or specs.get("gpu_count"), count)
    vendor = specs.get("gpu_vendor") or vendor
    model = specs.get("gpu_model") or model
    if count <= 0:
        return None
    return Gpu(count=count, vendor=vendor or None, model=model or None)


def has_infiniband(specs: Mapping[str, str]) -> bool:
    """Whether a flavor's instances get InfiniBand."""
    if any("INFINIBAND" in trait for trait in required_traits(specs)):
        return True
    if str(specs.get("infiniband", "")).lower() in _TRUE:
        return True
    aliases = specs.get("pci_passthrough:alias", "").lower()
    return any(word in aliases for word in ("infiniband", "mlx", "mellanox"))


def resource_amounts(specs: Mapping[str, str]) -> dict[str, int]:
    """Placement resource classes the extra specs ask for (granular groups summed)."""
    found: dict[str, int] = {}
    for key, value in specs.items():
        match = _RESOURCE.match(key)
        if match:
            found[match["rc"]] = found.get(match["rc"], 0) + _int(value, 0)
    return found


def required_traits(specs: Mapping[str, str]) -> list[str]:
    """Traits a flavor requires of its host."""
    return [m["trait"] for k, v in specs.items() if (m := _TRAIT.match(k)) and v == "required"]


def forbidden_traits(specs: Mapping[str, str]) -> list[str]:
    """Traits a flavor forbids on its host."""
    return [m["trait"] for k, v in specs.items() if (m := _TRAIT.match(k)) and v == "forbidden"]


def placement_query(flavor: FlavorSpec) -> PlacementQuery | None:
    """The Placement request for one instance; None when Placement cannot count it.

    PCI passthrough devices are usually not Placement inventory, so a count from
    Placement would promise capacity that may not exist.
    """
    if "pci_passthrough:alias" in flavor.extra_specs:
        return None
    disk = flavor.disk_gb + flavor.ephemeral_gb + math.ceil(flavor.swap_mb / 1024)
    resources = {"VCPU": flavor.vcpus, "MEMORY_MB": flavor.ram_mb, "DISK_GB": disk}
    resources.update(resource_amounts(flavor.extra_specs))  # explicit amounts override
    return PlacementQuery(
        resources={rc: n for rc, n in resources.items() if n > 0},
        required=tuple(sorted(required_traits(flavor.extra_specs))),
        forbidden=tuple(sorted(forbidden_traits(flavor.extra_specs))),
    )


def fitting_count(summaries: Mapping[str, Any], query: PlacementQuery) -> int:
    """How many instances fit, from ``provider_summaries`` of ``GET /allocation_candidates``.

    Providers of one tree (a compute node and its nested GPU providers) pool their free
    amounts; each tree fits as many instances as its scarcest resource class allows.
    """
    trees: dict[str, dict[str, int]] = {}
    for uuid, summary in summaries.items():
        root = str(summary.get("root_provider_uuid") or uuid)
        free = trees.setdefault(root, {})
        for rc, usage in (summary.get("resources") or {}).items():
            left = int(usage.get("capacity", 0)) - int(usage.get("used", 0))
            free[rc] = free.get(rc, 0) + max(left, 0)
    total = 0
    for free in trees.values():
        counts = [free.get(rc, 0) // amount for rc, amount in query.resources.items()]
        total += min(counts, default=0)
    return total


def _vendor_model(words: str) -> tuple[str | None, str | None] | None:
    """Vendor and model from ``NVIDIA_A100_80GB``-like words; None when there are none."""
    parts = [p for p in re.split(r"[_\-\s]+", words.lower()) if p]
    if not parts:
        return None
    vendor = parts[0] if parts[0] in _VENDORS else None
    rest = parts[1:] if vendor else parts
    model = "-".join(rest) or None
    return vendor or _vendor_of(model), model


def _vendor_of(model: str | None) -> str | None:
    if model is None:
        return None
    head = model.split("-")[0]
    return next((v for v, models in _MODEL_VENDORS.items() if head in models), None)


def _pci_gpus(aliases: str) -> tuple[int, tuple[str | None, str | None]]:
    """Count, and vendor and model, from ``alias:count[,alias:count]`` (network aliases skipped)."""
    count = 0
    named: tuple[str | None, str | None] = (None, None)
    for item in filter(None, (a.strip() for a in aliases.split(","))):
        name, _, number = item.partition(":")
        if any(word in name.lower() for word in ("infiniband", "mlx", "mellanox", "nic")):
            continue
        count += _int(number or "1", 1)
        named = _vendor_model(name) or named
    return count, named


def _int(value: object, default: int) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default
