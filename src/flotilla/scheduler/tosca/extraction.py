"""Derive per-node requirements and placement policies from a topology and its inputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flotilla.scheduler.tosca.error import TemplateError, TemplateProblem
from flotilla.scheduler.tosca.function import Resolver, apply_inputs
from flotilla.scheduler.tosca.reader import Reader
from flotilla.scheduler.tosca.requirement import (
    NodeRequirements,
    Placement,
    TemplateRequirements,
)
from flotilla.scheduler.tosca.topology import PolicySpec, Topology
from flotilla.scheduler.tosca.workload import kind_of, node_requirements
from flotilla.schemas import WorkloadKind

__all__ = ["derive", "kind_of"]


def derive(topology: Topology, given: Mapping[str, Any]) -> TemplateRequirements:
    """Apply ``given`` inputs to ``topology`` and derive what every node needs.

    Raises:
        TemplateError: Bad inputs, or values no site could satisfy, each naming node and field.
    """
    inputs = apply_inputs(topology, given)
    resolver = Resolver(topology, inputs)
    problems: list[TemplateProblem] = []
    nodes = tuple(
        node_requirements(Reader(node, resolver, problems), topology) for node in topology.nodes
    )
    placements = tuple(
        _placement(policy, resolver, problems)
        for policy in topology.policies
        if "tosca.policies.Placement" in policy.ancestry
    )
    _check_targets(topology, placements, problems)
    if problems:
        raise TemplateError(problems)
    return TemplateRequirements(
        digest=topology.digest,
        nodes=_attach_volumes(nodes),
        placements=placements,
        inputs=inputs,
        outputs={
            name: resolver.value(output.get("value") if isinstance(output, dict) else output)
            for name, output in topology.outputs.items()
        },
        warnings=topology.warnings,
    )


def _placement(
    policy: PolicySpec, resolver: Resolver, problems: list[TemplateProblem]
) -> Placement:
    properties = resolver.value(policy.properties)

    def text(key: str) -> str | None:
        found = properties.get(key) if isinstance(properties, dict) else None
        return None if found in (None, "") or isinstance(found, dict | list) else str(found)

    return Placement(
        policy=policy.name,
        type=policy.type,
        targets=policy.targets,
        site=text("site") or text("cloud_id"),
        sla_id=text("sla_id"),
        region=text("region"),
        availability_zone=text("availability_zone"),
    )


def _check_targets(
    topology: Topology, placements: tuple[Placement, ...], problems: list[TemplateProblem]
) -> None:
    for placement in placements:
        for target in placement.targets:
            if topology.node(target) is None:
                message = f"target {target!r} is not a node of the template"
                problems.append(
                    TemplateProblem(node=placement.policy, field="targets", message=message)
                )


def _attach_volumes(nodes: tuple[NodeRequirements, ...]) -> tuple[NodeRequirements, ...]:
    # A volume learns which compute node it is attached to from that node's local_storage.
    owners = {v.node: n.name for n in nodes for v in n.volumes}
    return tuple(_with_owner(n, owners.get(n.name)) for n in nodes)


def _with_owner(node: NodeRequirements, owner: str | None) -> NodeRequirements:
    if node.kind is not WorkloadKind.VOLUME or owner is None:
        return node
    fields = {name: getattr(node, name) for name in NodeRequirements.__dataclass_fields__}
    return NodeRequirements(**(fields | {"attached_to": owner}))
