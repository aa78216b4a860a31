"""The site's capacity report: flavors, images, quotas and usage, free room from Placement.

- Shapes are the flavors the project can use, GPUs and InfiniBand read from extra specs
  (``flavor.py``); ``available`` is how many more instances Placement can fit, when the
  project may read Placement (it is admin-only by default), else unknown.
- Images are the active images, with their ``os_distro``/``os_version`` properties, plus
  the site file's image names.
- Quotas come from the limits APIs: compute (cores, ram_mb, instances), block storage
  (volumes, volume_gb) and network (floating_ips, security_groups, networks, ports).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk

from flotilla.agents.driver import SiteSnapshot
from flotilla.agents.openstack.cloud import Cloud, Connection, task_group
from flotilla.agents.openstack.config import OpenStackSettings
from flotilla.agents.openstack.flavor import FlavorSpec, fitting_count, placement_query, shape_of
from flotilla.schemas import Capabilities, Gpu, Image, QuotaUsage, Shape, WorkloadKind

_log = structlog.get_logger("flotilla.agents.openstack")
_PLACEMENT_VERSION = "1.29"  # provider summaries with root providers, forbidden traits
_COMPUTE_QUOTAS = (  # Flotilla name, limit attribute, used attribute
    ("cores", "total_cores", "total_cores_used"),
    ("ram_mb", "total_ram", "total_ram_used"),
    ("instances", "instances", "instances_used"),
)
_VOLUME_QUOTAS = (
    ("volumes", "max_total_volumes", "total_volumes_used"),
    ("volume_gb", "max_total_volume_gigabytes", "total_gigabytes_used"),
)
_NETWORK_QUOTAS = (
    ("floating_ips", "floating_ips"),
    ("security_groups", "security_groups"),
    ("networks", "networks"),
    ("ports", "ports"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageSpec:
    """What the image API says about one image."""

    name: str
    id: str
    os_distro: str | None = None
    os_version: str | None = None
    gpu_driver: str | None = None


async def read_snapshot(cloud: Cloud, settings: OpenStackSettings) -> SiteSnapshot:
    """Capabilities and quotas of the site now.

    Raises:
        SiteUnavailableError: an API could not be reached.
    """
    async with task_group() as group:
        flavors = group.create_task(cloud.read("list flavors", list_flavors))
        images = group.create_task(cloud.read("list images", list_images))
        compute = group.create_task(cloud.read("read compute limits", compute_quotas))
        volume = group.create_task(cloud.read("read volume limits", volume_quotas))
        network = group.create_task(cloud.read("read network quotas", network_quotas))
        group.create_task(cloud.read("check networks", partial(check_networks, settings=settings)))
    available = await cloud.read(
        "read free capacity from Placement", partial(free_counts, flavors=flavors.result())
    )
    shapes = [shape_of(f, available=available.get(f.name)) for f in flavors.result()]
    kinds = [WorkloadKind.VIRTUAL_MACHINE, WorkloadKind.NETWORK]
    if volume.result() is not None:
        kinds.insert(1, WorkloadKind.VOLUME)
    capabilities = Capabilities(
        workload_kinds=kinds,
        shapes=shapes,
        gpus=gpu_inventory(shapes),
        infiniband=any(s.infiniband for s in shapes),
        images=offered_images(images.result(), settings),
        regions=[cloud.region] if cloud.region else [],
    )
    quotas = (*compute.result(), *(volume.result() or ()), *network.result())
    return SiteSnapshot(capabilities=capabilities, quotas=quotas)


def gpu_inventory(shapes: Sequence[Shape]) -> list[Gpu]:
    """Free GPUs by vendor and model: the most any flavor of that GPU still fits."""
    best: dict[tuple[str | None, str | None], int] = {}
    for shape in shapes:
        if shape.gpu is None or shape.available == 0:
            continue
        free = shape.gpu.count * (shape.available if shape.available is not None else 1)
        key = (shape.gpu.vendor, shape.gpu.model)
        best[key] = max(best.get(key, 0), free)
    return [Gpu(count=n, vendor=v, model=m) for (v, m), n in sorted(best.items(), key=str)]


def offered_images(images: Sequence[ImageSpec], settings: OpenStackSettings) -> list[Image]:
    """The site's images, then the site file's names for them."""
    offered = [
        Image(
            name=i.name,
            id=i.id,
            os_distribution=i.os_distro,
            os_version=i.os_version,
            gpu_driver=i.gpu_driver,
        )
        for i in images
    ]
    for alias, entry in settings.images.items():
        target = next((i for i in images if entry.image in (i.name, i.id)), None)
        if target is None:
            _log.warning("image_alias_missing", alias=alias, image=entry.image)
            continue
        offered.append(
            Image(
                name=alias,
                id=target.id,
                os_distribution=entry.os_distribution or target.os_distro,
                os_version=entry.os_version or target.os_version,
                gpu_driver=entry.gpu_driver or target.gpu_driver,
            )
        )
    return offered


# Blocking reads, run in the cloud's threads ------------------------------------------------


def list_flavors(c: Connection) -> list[FlavorSpec]:
    """The flavors the project may use, with their extra specs."""
    return [
        FlavorSpec(
            name=str(f.name),
            id=str(f.id),
            vcpus=int(f.vcpus or 0),
            ram_mb=int(f.ram or 0),
            disk_gb=int(f.disk or 0),
            ephemeral_gb=int(f.ephemeral or 0),
            swap_mb=int(f.swap or 0),
            extra_specs={str(k): str(v) for k, v in (f.extra_specs or {}).items()},
        )
        for f in c.compute.flavors(details=True)
        if not f.is_disabled
    ]


def list_images(c: Connection) -> list[ImageSpec]:
    """Active images the project can boot."""
    found = []
    for image in c.image.images(status="active"):
        if not image.name:
            continue
        extra = image.properties or {}
        found.append(
            ImageSpec(
                name=str(image.name),
                id=str(image.id),
                os_distro=_text(image.os_distro or extra.get("os_distribution")),
                os_version=_text(image.os_version),
                gpu_driver=_text(extra.get("gpu_driver")),
            )
        )
    return found


def compute_quotas(c: Connection) -> list[QuotaUsage]:
    """Compute limits and usage of the project."""
    absolute = c.compute.get_limits().absolute
    return [
        _quota(name, getattr(absolute, lim), getattr(absolute, used))
        for name, lim, used in _COMPUTE_QUOTAS
    ]


def volume_quotas(c: Connection) -> list[QuotaUsage] | None:
    """Block-storage limits and usage; None when the cloud has no volume service."""
    try:
        absolute = c.block_storage.get_limits().absolute
    except (sdk.EndpointNotFound, ksa.EndpointNotFound):
        return None
    return [
        _quota(name, getattr(absolute, lim), getattr(absolute, used))
        for name, lim, used in _VOLUME_QUOTAS
    ]


def network_quotas(c: Connection) -> list[QuotaUsage]:
    """Network quotas and usage of the project."""
    project = c.current_project_id
    if project is None:
        return []
    quota = c.network.get_quota(project, details=True)
    found = []
    for name, attribute in _NETWORK_QUOTAS:
        detail = getattr(quota, attribute, None)
        if isinstance(detail, Mapping):
            found.append(_quota(name, detail.get("limit"), detail.get("used")))
    return found


def check_networks(c: Connection, *, settings: OpenStackSettings) -> None:
    """Warn (once per snapshot) when the site file names a network the project cannot see."""
    for name in filter(None, (settings.network, settings.external_network)):
        try:
            c.network.find_network(name, ignore_missing=False)
        except sdk.NotFoundException:
            _log.warning("network_missing", network=name)


def free_counts(c: Connection, *, flavors: Sequence[FlavorSpec]) -> dict[str, int | None]:
    """How many more instances of each flavor Placement can fit; empty when not allowed."""
    counts: dict[str, int | None] = {}
    for flavor in flavors:
        query = placement_query(flavor)
        if query is None:
            counts[flavor.name] = None
            continue
        try:
            response = c.placement.get(
                "/allocation_candidates", params=query.params(), microversion=_PLACEMENT_VERSION
            )
        except (sdk.EndpointNotFound, ksa.EndpointNotFound):
            return {}
        if response.status_code in (401, 403):
            _log.debug("placement_not_allowed")
            return {}
        sdk.raise_from_response(response)
        summaries: dict[str, Any] = response.json().get("provider_summaries") or {}
        counts[flavor.name] = fitting_count(summaries, query)
    return counts


def _quota(name: str, limit: Any, used: Any) -> QuotaUsage:
    number = None if limit is None or int(limit) < 0 else float(limit)
    return QuotaUsage(resource=name, limit=number, used=max(float(used or 0), 0.0))


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
