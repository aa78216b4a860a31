"""What each node of a template needs from a site, derived once inputs are applied."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from flotilla.schemas import Port, Resources, WorkloadKind


@dataclass(frozen=True, slots=True, kw_only=True)
class OsImage:
    """The operating system a node needs: an image name, or properties an image must have."""

    name: str | None = None
    type: str | None = None
    distribution: str | None = None
    version: str | None = None
    architecture: str | None = None
    gpu_driver: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VolumeAttachment:
    """A block-storage node attached to a compute node through ``local_storage``."""

    node: str
    size_gb: int | None = None
    location: str | None = None
    device: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PortRange:
    """A range of ports opened together (INDIGO ``source_range``), too wide to list one by one."""

    first: int
    last: int
    protocol: str = "tcp"
    source: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """A placement policy: where its target nodes must (or should) go."""

    policy: str
    type: str
    targets: tuple[str, ...] = ()
    site: str | None = None
    sla_id: str | None = None
    region: str | None = None
    availability_zone: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRequirements:
    """One node: its workload kind and what each of its ``count`` instances needs.

    Attributes:
        host: For software components and containers, the node they run on.
        properties: Kind-specific settings with functions evaluated (command, environment,
            partition, wall time in seconds, flavor hint ...); deploy-time functions stay raw.
    """

    name: str
    type: str
    kind: WorkloadKind
    count: int = 1
    resources: Resources = field(default_factory=lambda: Resources(cpus=0))
    image: OsImage | None = None
    container_image: str | None = None
    ports: tuple[Port, ...] = ()
    port_ranges: tuple[PortRange, ...] = ()
    public_address: bool = False
    host: str | None = None
    attached_to: str | None = None
    volumes: tuple[VolumeAttachment, ...] = ()
    depends_on: tuple[str, ...] = ()
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateRequirements:
    """Everything the scheduler needs to place one template with one set of inputs."""

    digest: str
    nodes: tuple[NodeRequirements, ...]
    placements: tuple[Placement, ...] = ()
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def node(self, name: str) -> NodeRequirements | None:
        """The node called ``name``, if any."""
        return next((n for n in self.nodes if n.name == name), None)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready mapping (pydantic models dumped, durations in seconds)."""
        return {
            "digest": self.digest,
            "nodes": [jsonable(_node_dict(node)) for node in self.nodes],
            "placements": [jsonable(asdict(p)) for p in self.placements],
            "inputs": jsonable(self.inputs),
            "outputs": jsonable(self.outputs),
            "warnings": list(self.warnings),
        }


def _node_dict(node: NodeRequirements) -> dict[str, Any]:
    # asdict() would deep-copy the pydantic models; build the mapping field by field instead.
    data = {name: getattr(node, name) for name in NodeRequirements.__dataclass_fields__}
    data["resources"] = node.resources.model_dump(mode="json")
    data["ports"] = [port.model_dump(mode="json") for port in node.ports]
    data["image"] = asdict(node.image) if node.image else None
    data["volumes"] = [asdict(volume) for volume in node.volumes]
    data["port_ranges"] = [asdict(span) for span in node.port_ranges]
    return data


def jsonable(value: Any) -> Any:
    """``value`` with durations as seconds, dates as ISO text, tuples as lists, keys as text."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value
