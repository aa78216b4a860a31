"""Reading typed values out of a node, collecting a problem (node and field) for each bad one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal, TypeVar

from flotilla.scheduler.tosca import value
from flotilla.scheduler.tosca.error import TemplateProblem
from flotilla.scheduler.tosca.function import Resolver, is_deferred
from flotilla.scheduler.tosca.requirement import PortRange
from flotilla.scheduler.tosca.topology import NodeSpec
from flotilla.schemas import Gpu, Port

_MAX_LISTED_PORTS = 16
_T = TypeVar("_T", int, timedelta)


class Reader:
    """Typed access to one node's raw values, functions evaluated.

    A value that is absent, ``None`` or known only at deploy time reads as ``None``; a value of
    the wrong type or out of range adds a problem and also reads as ``None``.
    """

    def __init__(self, node: NodeSpec, resolver: Resolver, problems: list[TemplateProblem]) -> None:
        self.node = node
        self._resolver = resolver
        self._problems = problems

    def sibling(self, node: NodeSpec) -> Reader:
        """A reader for another node that reports into the same problem list."""
        return Reader(node, self._resolver, self._problems)

    def artifact(self, name: str) -> str | None:
        """The evaluated ``file`` of an artifact (a container image, for instance)."""
        found = self.node.artifacts.get(name)
        file = found.get("file") if isinstance(found, dict) else found
        resolved = self._resolver.value(file, node=self.node.name)
        return str(resolved) if isinstance(resolved, str | int | float) and resolved else None

    def raw(self, where: str) -> Any:
        """The evaluated value at ``where``: ``prop`` or ``capabilities.<cap>.<prop>``."""
        parts = where.split(".")
        if parts[0] == "capabilities" and len(parts) == 3:
            found = self.node.capabilities.get(parts[1], {}).get(parts[2])
        else:
            found = self.node.properties.get(where)
        resolved = self._resolver.value(found, node=self.node.name)
        return None if is_deferred(resolved) else resolved

    def fail(self, where: str, message: str) -> None:
        """Record a problem with the field ``where`` of this node."""
        self._problems.append(TemplateProblem(node=self.node.name, field=where, message=message))

    def text(self, where: str) -> str | None:
        """A string value (numbers are read as text)."""
        found = self.raw(where)
        return None if found is None or isinstance(found, dict | list) else str(found)

    def integer(self, where: str, *, minimum: int = 0) -> int | None:
        """A whole number of at least ``minimum``."""
        found = self.raw(where)
        if found is None or found == "":
            return None
        try:
            number = int(found) if not isinstance(found, bool) and float(found) % 1 == 0 else None
        except (TypeError, ValueError):
            number = None
        if number is None:
            self.fail(where, f"expected a whole number, got {found!r}")
        elif number < minimum:
            self.fail(where, f"must be at least {minimum}, got {number}")
            return None
        return number

    def number(self, where: str, *, minimum: float = 0) -> float | None:
        """A number of at least ``minimum``."""
        found = self.raw(where)
        if found is None or found == "":
            return None
        try:
            number = float(found)
        except (TypeError, ValueError):
            self.fail(where, f"expected a number, got {found!r}")
            return None
        if number < minimum:
            self.fail(where, f"must be at least {minimum:g}, got {number:g}")
            return None
        return number

    def boolean(self, where: str) -> bool | None:
        """A boolean (``true``/``yes``/``1`` and their opposites accepted as text)."""
        found = self.raw(where)
        if found is None or isinstance(found, bool):
            return found
        text = str(found).strip().lower()
        if text in ("true", "yes", "1", "false", "no", "0"):
            return text in ("true", "yes", "1")
        self.fail(where, f"expected true or false, got {found!r}")
        return None

    def size_mb(self, where: str) -> int | None:
        """A scalar-unit.size in megabytes (plain numbers are megabytes)."""
        return self._convert(where, value.size_mb)

    def size_gb(self, where: str) -> int | None:
        """A scalar-unit.size in gigabytes."""
        return self._convert(where, value.size_gb)

    def duration(self, where: str) -> timedelta | None:
        """A scalar-unit.time or an ``hh:mm:ss`` clock time."""
        return self._convert(where, value.duration)

    def _convert(self, where: str, convert: Callable[[Any], _T]) -> _T | None:
        found = self.raw(where)
        if found is None or found == "":
            return None
        try:
            converted = convert(found)
        except value.ValueProblemError as exc:
            self.fail(where, str(exc))
            return None
        if converted < type(converted)():
            self.fail(where, f"must not be negative, got {found!r}")
            return None
        return converted


def properties_of(read: Reader, *names: str) -> dict[str, Any]:
    wanted = names or tuple(read.node.properties)
    found = {name: read.raw(name) for name in wanted}
    return {name: value for name, value in found.items() if value not in (None, "", [], {})}


def gpu_of(read: Reader, count: str, vendor: str, model: str) -> Gpu | None:
    number = read.integer(count)
    if not number:
        return None
    return Gpu(count=number, vendor=read.text(vendor) or None, model=read.text(model) or None)


def count_of(read: Reader) -> int:
    for where in ("count", "default_instances", "min_instances"):
        found = read.integer(f"capabilities.scalable.{where}")
        if found is not None:
            return found
    return 1


def port_spec(read: Reader, where: str, spec: Any) -> list[Port | PortRange]:
    """Ports of an INDIGO PortSpec: ``source`` or ``source_range``, ``protocol``, ``remote_cidr``.

    Narrow ranges are listed port by port; wide ones stay a ``PortRange``.
    """
    if not isinstance(spec, dict):
        read.fail(where, f"expected a port specification, got {spec!r}")
        return []
    protocol = str(spec.get("protocol") or "tcp").lower()
    span = spec.get("source_range")
    bounds: list[Any] = (
        span if isinstance(span, list) and len(span) == 2 else [spec.get("source")] * 2
    )
    try:
        first, last = int(bounds[0]), int(bounds[1])
    except (TypeError, ValueError):
        read.fail(where, f"expected a port number, got {spec.get('source')!r}")
        return []
    if protocol not in ("tcp", "udp") or not 1 <= first <= last <= 65535:
        read.fail(where, f"not a valid {protocol} port or range: {first}-{last}")
        return []
    cidr = spec.get("remote_cidr")
    source = str(cidr) if isinstance(cidr, str) and cidr else None
    if last - first >= _MAX_LISTED_PORTS:
        return [PortRange(first=first, last=last, protocol=protocol, source=source)]
    kind: Literal["tcp", "udp"] = "udp" if protocol == "udp" else "tcp"
    return [Port(port=port, protocol=kind, source=source) for port in range(first, last + 1)]


def split_ports(found: list[Port | PortRange]) -> dict[str, Any]:
    """``ports`` and ``port_ranges`` fields from a mixed list, duplicates dropped."""
    ports = tuple(dict.fromkeys(p for p in found if isinstance(p, Port)))
    spans = tuple(dict.fromkeys(p for p in found if isinstance(p, PortRange)))
    return {"ports": ports, "port_ranges": spans}


def text_of(found: Any) -> str | None:
    return None if found is None or isinstance(found, dict | list) else str(found)
