"""The parsed, validated shape of a template: plain picklable data, independent of inputs.

The worker process builds a ``Topology`` from tosca-parser's model once per template text; the
event loop caches it and applies inputs to it (``function.py``) as often as needed. Property
values are the author's raw values (functions unevaluated) with type defaults filled in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class InputSpec:
    """A declared input: its type, default and constraints."""

    name: str
    type: str
    required: bool = True
    default: Any = None
    constraints: tuple[dict[str, Any], ...] = ()
    entry_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RequirementSpec:
    """One requirement of a node: its name, target node and relationship properties."""

    name: str
    target: str | None
    relationship: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    """A node template with its type ancestry and raw values."""

    name: str
    type: str
    ancestry: tuple[str, ...]
    properties: dict[str, Any] = field(default_factory=dict)
    capabilities: dict[str, dict[str, Any]] = field(default_factory=dict)
    requirements: tuple[RequirementSpec, ...] = ()
    artifacts: dict[str, Any] = field(default_factory=dict)

    def is_a(self, *types: str) -> bool:
        """Whether the node's type is, or derives from, one of ``types``."""
        return any(t in self.ancestry for t in types)

    def targets(self, requirement: str) -> list[str]:
        """Names of the nodes this node's requirements called ``requirement`` point at."""
        return [r.target for r in self.requirements if r.name == requirement and r.target]


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySpec:
    """A policy: type ancestry, raw properties (including INDIGO extras) and target nodes."""

    name: str
    type: str
    ancestry: tuple[str, ...]
    properties: dict[str, Any] = field(default_factory=dict)
    targets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """A validated template, before inputs are applied."""

    digest: str
    description: str | None
    inputs: tuple[InputSpec, ...]
    nodes: tuple[NodeSpec, ...]
    policies: tuple[PolicySpec, ...] = ()
    outputs: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def node(self, name: str) -> NodeSpec | None:
        """The node called ``name``, if any."""
        return next((n for n in self.nodes if n.name == name), None)
