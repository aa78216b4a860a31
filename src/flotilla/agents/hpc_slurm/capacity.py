"""What a Slurm site offers: nodes and partitions into shapes, associations into quotas.

A shape is one node size in one partition, named after the partition (``gpu``); a partition
whose nodes differ gets one shape per size (``gpu/64c-512000m-4xa100``), and the partition is
the part before the slash. Only partitions that are UP with at least one usable node are
offered. ``available`` counts the idle nodes of that size.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flotilla.agents.hpc_slurm.config import SlurmConfig
from flotilla.agents.hpc_slurm.job import scontrol_fields
from flotilla.schemas import Capabilities, Gpu, QuotaUsage, Shape, WorkloadKind

_GRES_ITEM = re.compile(r"(?:^|,)gpu(?::([^:,(]+))?(?::(\d+))?(?:\([^)]*\))?(?=,|$)")
_BROKEN = ("DOWN", "DRAIN", "FAIL", "MAINT", "NOT_RESPONDING", "FUTURE", "UNKNOWN", "POWER")
# GRES type prefixes whose vendor is known; the site file's gpu_types wins over this guess.
_VENDORS = (
    ("nvidia", ("a10", "a30", "a40", "a100", "a800", "b100", "b200", "gh200", "gtx", "h100")),
    ("nvidia", ("h200", "k20", "k40", "k80", "l4", "l40", "p100", "quadro", "rtx", "t4")),
    ("nvidia", ("tesla", "titan", "v100")),
    ("amd", ("mi50", "mi60", "mi100", "mi210", "mi250", "mi300", "instinct", "radeon")),
    ("intel", ("max", "pvc", "flex")),
)
# Quota resources the scheduler checks, by the TRES that limits them.
_TRES_QUOTAS = {"cpu": "cores", "mem": "ram_mb", "gres/gpu": "gpus", "node": "instances"}
_MEMORY_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "P": 1024**3}


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """One compute node as sinfo or scontrol describe it."""

    name: str
    cpus: int
    memory_mb: int
    gpus: Mapping[str | None, int] = field(default_factory=dict)
    features: tuple[str, ...] = ()
    partitions: tuple[str, ...] = ()
    state: str = "IDLE"
    alloc_cpus: int = 0

    @property
    def is_usable(self) -> bool:
        """Whether jobs can run on the node (not down, drained or in maintenance)."""
        state = self.state.upper().replace("*", "+NOT_RESPONDING")
        return not any(word in state for word in _BROKEN)

    @property
    def is_idle(self) -> bool:
        """Whether a whole-node job could start on it now."""
        return self.is_usable and self.alloc_cpus == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionInfo:
    """One partition as ``scontrol show partition`` describes it."""

    name: str
    is_default: bool = False
    is_up: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociationLimit:
    """The group limits (GrpTRES, and what is used of them) of one account."""

    account: str
    limits: Mapping[str, float] = field(default_factory=dict)
    used: Mapping[str, float] = field(default_factory=dict)


def parse_sinfo_json(text: str) -> list[NodeInfo]:
    """Nodes in the output of ``sinfo --json`` (Slurm 22.05's node list).

    Raises:
        ValueError: not JSON, or a later format without the node list (use scontrol then).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"sinfo did not print JSON: {text[:200]!r}") from exc
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, list):
        raise ValueError("sinfo printed JSON without a node list")  # noqa: TRY004
    return [_sinfo_node(node) for node in nodes if isinstance(node, dict)]


def _sinfo_node(node: dict[str, Any]) -> NodeInfo:
    state = node.get("state")
    words = [*(state if isinstance(state, list) else [state or "UNKNOWN"])]
    words += [str(flag) for flag in node.get("state_flags") or []]
    features = node.get("active_features") or node.get("features") or ""
    return NodeInfo(
        name=str(node.get("name") or node.get("hostname") or ""),
        cpus=_int(node.get("cpus")),
        memory_mb=_int(node.get("real_memory")),
        gpus=parse_gres(str(node.get("gres") or "")),
        features=_features(features),
        partitions=tuple(str(p) for p in node.get("partitions") or ()),
        state="+".join(str(word) for word in words),
        alloc_cpus=_int(node.get("alloc_cpus")),
    )


def parse_scontrol_nodes(text: str) -> list[NodeInfo]:
    """Nodes in the output of ``scontrol -o show node``."""
    nodes = []
    for line in text.splitlines():
        fields = scontrol_fields(line)
        if "NodeName" not in fields:
            continue
        features = fields.get("ActiveFeatures") or fields.get("AvailableFeatures") or ""
        partitions = fields.get("Partitions", "")
        nodes.append(
            NodeInfo(
                name=fields["NodeName"],
                cpus=_int(fields.get("CPUTot") or fields.get("CPUEfctv")),
                memory_mb=_int(fields.get("RealMemory")),
                gpus=parse_gres(fields.get("Gres", "")),
                features=_features(features),
                partitions=tuple(p for p in partitions.split(",") if p),
                state=fields.get("State", "UNKNOWN"),
                alloc_cpus=_int(fields.get("CPUAlloc")),
            )
        )
    return nodes


def parse_partitions(text: str) -> list[PartitionInfo]:
    """Partitions in the output of ``scontrol -o show partition``."""
    found = []
    for line in text.splitlines():
        fields = scontrol_fields(line)
        if "PartitionName" in fields:
            found.append(
                PartitionInfo(
                    name=fields["PartitionName"],
                    is_default=fields.get("Default", "NO").upper() == "YES",
                    is_up=fields.get("State", "UP").upper() == "UP",
                )
            )
    return found


def parse_gres(text: str) -> dict[str | None, int]:
    """GPUs per type in a GRES string (``gpu:a100:2(S:0-1),gpu:2``); None is untyped."""
    gpus: Counter[str | None] = Counter()
    for match in _GRES_ITEM.finditer(text.strip()):
        kind, count = match.group(1), match.group(2)
        if kind is not None and kind.isdigit() and count is None:
            kind, count = None, kind  # gpu:2
        gpus[kind] += int(count) if count else 1
    return dict(gpus)


def gpu_model(kind: str | None, config: SlurmConfig) -> tuple[str | None, str | None]:
    """Vendor and model a GRES GPU type is advertised as."""
    if kind is None:
        return None, None
    known = config.gpu_types.get(kind)
    if known is not None:
        return known.vendor, known.model or kind
    lowered = kind.lower()
    for vendor, prefixes in _VENDORS:
        if lowered.startswith(prefixes):
            return vendor, kind
    return None, kind


def capabilities(
    nodes: Sequence[NodeInfo], partitions: Sequence[PartitionInfo], config: SlurmConfig
) -> Capabilities:
    """Shapes per partition, GPU inventory and InfiniBand, from the nodes and partitions."""
    up = {p.name for p in partitions if p.is_up} if partitions else None
    usable = [node for node in nodes if node.is_usable]
    by_partition: dict[str, list[NodeInfo]] = defaultdict(list)
    for node in usable:
        for name in node.partitions:
            if up is None or name in up:
                by_partition[name].append(node)
    shapes = [
        shape
        for name in sorted(by_partition)
        for shape in _partition_shapes(name, by_partition[name], config)
    ]
    inventory: Counter[tuple[str | None, str | None]] = Counter()
    for node in usable:
        for kind, count in node.gpus.items():
            inventory[gpu_model(kind, config)] += count
    return Capabilities(
        workload_kinds=[WorkloadKind.BATCH_JOB],
        shapes=shapes,
        gpus=[
            Gpu(count=count, vendor=vendor, model=model)
            for (vendor, model), count in sorted(inventory.items(), key=str)
        ],
        infiniband=any(_infiniband(node, config) for node in usable),
    )


def _partition_shapes(name: str, nodes: list[NodeInfo], config: SlurmConfig) -> list[Shape]:
    sizes: dict[tuple[Any, ...], list[NodeInfo]] = defaultdict(list)
    for node in nodes:
        kind, count = _main_gpu(node)
        sizes[(count, node.cpus, node.memory_mb, kind, node.features)].append(node)
    shapes = []
    for (gpus, cpus, memory, kind, features), members in sorted(
        sizes.items(), key=lambda item: item[0][:3], reverse=True
    ):
        vendor, model = gpu_model(kind, config)
        label = name
        if len(sizes) > 1:
            label += f"/{cpus}c-{memory}m" + (f"-{gpus}x{kind or 'gpu'}" if gpus else "")
        shapes.append(
            Shape(
                name=label,
                cpus=cpus,
                memory_mb=memory,
                gpu=Gpu(count=gpus, vendor=vendor, model=model) if gpus else None,
                infiniband=_infiniband(members[0], config),
                features=list(features),
                available=sum(1 for node in members if node.is_idle),
            )
        )
    return shapes


def _main_gpu(node: NodeInfo) -> tuple[str | None, int]:
    if not node.gpus:
        return None, 0
    kind, count = max(node.gpus.items(), key=lambda item: (item[1], str(item[0])))
    return kind, count


def _infiniband(node: NodeInfo, config: SlurmConfig) -> bool:
    wanted = {feature.lower() for feature in config.infiniband_features}
    return any(feature.lower() in wanted for feature in node.features)


def parse_sacctmgr_limits(text: str) -> dict[str, dict[str, float]]:
    """GrpTRES limits per account from ``sacctmgr -nP show assoc format=Account,User,GrpTRES``.

    Only account-wide associations (no user, no partition) count.
    """
    limits: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or parts[1] or parts[2]:
            continue
        found = quota_tres(parse_tres(parts[3]))
        if found:
            limits[parts[0]] = found
    return limits


def parse_assoc_usage(text: str) -> dict[str, dict[str, float]]:
    """Used GrpTRES per account from ``scontrol show assoc_mgr flags=assoc``: ``cpu=8(3)``."""
    usage: dict[str, dict[str, float]] = {}
    account: str | None = None
    for line in text.splitlines():
        fields = scontrol_fields(line.strip())
        if "Account" in fields:
            user = fields.get("UserName", "")
            account = fields["Account"] if not user and not fields.get("Partition") else None
        elif account is not None and "GrpTRES" in fields:
            used = {}
            for item in fields["GrpTRES"].split(","):
                key, _, value = item.partition("=")
                found = re.search(r"\(([\d.]+)\)", value)
                if key and found:
                    used[key] = float(found.group(1))
            usage[account] = used
    return usage


def parse_tres(text: str) -> dict[str, float]:
    """A TRES list (``cpu=8,mem=16G,gres/gpu=2``) with memory in MB."""
    tres: dict[str, float] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        found = re.fullmatch(r"([\d.]+)([KMGTP]?)", value.strip())
        if not key or found is None:
            continue
        number = float(found.group(1))
        if key == "mem":
            number *= _MEMORY_UNITS[found.group(2) or "M"]
        tres[key] = number
    return tres


def quotas(config: SlurmConfig, limits: Iterable[AssociationLimit]) -> tuple[QuotaUsage, ...]:
    """Quotas per Flotilla group, from the limits of the account each group is charged to.

    A limit of the default account applies to every group without an account of its own
    (``group`` None); groups with their own account get their own entries, unlimited ones
    included, so the default account's limits never apply to them.
    """
    by_account = {limit.account: limit for limit in limits}
    found: list[QuotaUsage] = []
    default = by_account.get(config.default_account or "")
    limited = set(default.limits) if default else set()
    for group, account in sorted(config.group_accounts.items()):
        own = by_account.get(account)
        for tres in sorted(limited | set(own.limits if own else ())):
            limit = own.limits.get(tres) if own else None
            used = own.used.get(tres, 0.0) if own else 0.0
            found.append(_quota(tres, limit, used, group))
    if default is not None:
        for tres in sorted(default.limits):
            found.append(_quota(tres, default.limits[tres], default.used.get(tres, 0.0), None))
    return tuple(found)


def _quota(tres: str, limit: float | None, used: float, group: str | None) -> QuotaUsage:
    return QuotaUsage(resource=_TRES_QUOTAS[tres], limit=limit, used=used, group=group)


def quota_tres(limits: Mapping[str, float]) -> dict[str, float]:
    """The limits the scheduler understands (cpu, mem, gres/gpu, node)."""
    return {key: value for key, value in limits.items() if key in _TRES_QUOTAS}


def _int(value: Any) -> int:
    if isinstance(value, dict):
        value = value.get("number", 0)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _features(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else str(value).split(",")
    return tuple(
        sorted({str(item).strip() for item in items if str(item).strip() not in ("", "(null)")})
    )
