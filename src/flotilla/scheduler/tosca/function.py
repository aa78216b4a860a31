"""Applying inputs to a parsed topology: check the inputs, then evaluate intrinsic functions.

This is the part of a parse that depends on inputs, so it runs on every request (in the event
loop, it is pure and fast) while the parse itself is cached. ``get_input``, ``get_property``,
``concat`` and ``token`` are evaluated; functions only known at deploy time (``get_attribute``,
``get_operation_output``, ``get_artifact``) are left in place as their raw mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flotilla.scheduler.tosca.error import TemplateError, TemplateProblem
from flotilla.scheduler.tosca.topology import NodeSpec, Topology
from flotilla.scheduler.tosca.value import ValueProblemError, coerce

_EVALUATED = frozenset({"get_input", "get_property", "concat", "token"})
_DEFERRED = frozenset(
    {"get_attribute", "get_operation_output", "get_artifact", "get_nodes_of_type"}
)
_MAX_DEPTH = 32


def is_deferred(value: Any) -> bool:
    """Whether ``value`` is a function only a site can evaluate at deploy time."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _DEFERRED


def apply_inputs(topology: Topology, given: Mapping[str, Any]) -> dict[str, Any]:
    """The effective input values: given ones checked and typed, defaults for the rest.

    Raises:
        TemplateError: An input is undeclared, missing, or of the wrong type or value.
    """
    problems: list[TemplateProblem] = []
    declared = {spec.name: spec for spec in topology.inputs}
    values: dict[str, Any] = {}
    for name in given:
        if name not in declared:
            problems.append(_input_problem(name, "is not declared by the template"))
    for name, spec in declared.items():
        if name in given and given[name] is not None:
            try:
                values[name] = coerce(spec, given[name])
            except ValueProblemError as exc:
                problems.append(_input_problem(name, str(exc)))
        elif spec.default is not None:
            values[name] = spec.default
        elif spec.required:
            problems.append(_input_problem(name, "is required and has no default"))
    if problems:
        raise TemplateError(problems)
    return values


def _input_problem(name: str, message: str) -> TemplateProblem:
    return TemplateProblem(node=None, field=f"inputs.{name}", message=message)


class Resolver:
    """Evaluates intrinsic functions in raw values against a topology and input values."""

    def __init__(self, topology: Topology, inputs: Mapping[str, Any]) -> None:
        self._topology = topology
        self._inputs = inputs

    def value(self, raw: Any, *, node: str | None = None, depth: int = 0) -> Any:
        """``raw`` with every evaluable function replaced by its value."""
        if depth > _MAX_DEPTH:
            return raw  # a get_property cycle; leave it for the author to see
        if isinstance(raw, list):
            return [self.value(item, node=node, depth=depth + 1) for item in raw]
        if not isinstance(raw, dict):
            return raw
        if len(raw) == 1 and next(iter(raw)) in _EVALUATED:
            name, args = next(iter(raw.items()))
            return self._function(name, args, node=node, depth=depth + 1)
        return {k: self.value(v, node=node, depth=depth + 1) for k, v in raw.items()}

    def _function(self, name: str, args: Any, *, node: str | None, depth: int) -> Any:
        args = self.value(args, node=node, depth=depth)
        if name == "get_input":
            return self._get_input(args)
        if name == "get_property":
            return self._get_property(args, node=node, depth=depth)
        if name == "concat" and isinstance(args, list):
            if any(isinstance(part, dict | list) for part in args):
                return {"concat": args}  # a part is known only at deploy time
            return "".join("" if part is None else str(part) for part in args)
        if name == "token" and isinstance(args, list) and len(args) == 3:
            text, separator, index = args
            if isinstance(text, str):
                parts = text.split(str(separator))
                return parts[int(index)] if -len(parts) <= int(index) < len(parts) else None
        return {name: args}

    def _get_input(self, args: Any) -> Any:
        path = args if isinstance(args, list) else [args]
        return _walk(self._inputs.get(str(path[0])), path[1:])

    def _get_property(self, args: Any, *, node: str | None, depth: int) -> Any:
        if not isinstance(args, list) or len(args) < 2:
            return {"get_property": args}
        owner = self._owner(str(args[0]), node)
        if owner is None:
            return {"get_property": args}
        if args[1] in owner.properties:
            raw, rest = owner.properties[args[1]], args[2:]
        elif len(args) > 2 and args[2] in owner.capabilities.get(str(args[1]), {}):
            raw, rest = owner.capabilities[str(args[1])][args[2]], args[3:]
        else:
            return None
        return _walk(self.value(raw, node=owner.name, depth=depth), rest)

    def _owner(self, entity: str, node: str | None) -> NodeSpec | None:
        current = self._topology.node(node) if node else None
        if entity == "SELF":
            return current
        if entity == "HOST" and current is not None:
            hosts = current.targets("host") or current.targets("lrms")
            return self._topology.node(hosts[0]) if hosts else None
        return self._topology.node(entity)


def _walk(value: Any, path: list[Any]) -> Any:
    for step in path:
        in_list = (
            isinstance(value, list) and isinstance(step, int) and -len(value) <= step < len(value)
        )
        if not (in_list or (isinstance(value, dict) and step in value)):
            return None
        value = value[step]
    return value
