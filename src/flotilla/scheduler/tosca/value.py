"""TOSCA values: scalar units, and checking input values against their declarations."""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flotilla.scheduler.tosca.preprocess import as_text
from flotilla.scheduler.tosca.topology import InputSpec

_SIZE: dict[str, float] = {
    "b": 1,
    "kb": 10**3,
    "kib": 2**10,
    "mb": 10**6,
    "mib": 2**20,
    "gb": 10**9,
    "gib": 2**30,
    "tb": 10**12,
    "tib": 2**40,
}
_TIME = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_FREQUENCY = {"hz": 1.0, "khz": 1e3, "mhz": 1e6, "ghz": 1e9}
_UNITS: dict[str, dict[str, float]] = {
    "scalar-unit.size": _SIZE,
    "scalar-unit.time": _TIME,
    "scalar-unit.frequency": _FREQUENCY,
}
_SCALAR = re.compile(
    r"^\s*(?P<number>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>[A-Za-z]+)\s*$"
)
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "equal": operator.eq,
    "greater_than": operator.gt,
    "greater_or_equal": operator.ge,
    "less_than": operator.lt,
    "less_or_equal": operator.le,
}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ValueProblemError(ValueError):
    """A value does not fit its declared type or constraint; the message says why."""


def scalar(value: Any, kind: str) -> float:
    """A scalar-unit value in the base unit of ``kind`` (bytes, seconds, hertz).

    Raises:
        ValueProblemError: Not ``<number> <unit>`` with a unit of ``kind``.
    """
    match = _SCALAR.match(value) if isinstance(value, str) else None
    units = _UNITS[kind]
    if match is None or match["unit"].lower() not in units:
        raise ValueProblemError(f"expected a {kind} like {_example(kind)}, got {value!r}")
    return float(match["number"]) * units[match["unit"].lower()]


def _example(kind: str) -> str:
    return {"scalar-unit.size": "'4 GB'", "scalar-unit.time": "'2 h'"}.get(kind, "'2 GHz'")


def size_mb(value: Any) -> int:
    """A size in (decimal, TOSCA) megabytes, rounded up: '4 GB' -> 4000, '1 GiB' -> 1074."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return math.ceil(value)  # INDIGO's Qcg memory properties are plain MB numbers
    return math.ceil(scalar(value, "scalar-unit.size") / 10**6)


def size_gb(value: Any) -> int:
    """A size in (decimal, TOSCA) gigabytes, rounded up: '10 GB' -> 10, '20 GiB' -> 22."""
    return math.ceil(scalar(value, "scalar-unit.size") / 10**9)


def duration(value: Any) -> timedelta:
    """A scalar-unit.time ('2 h') or a clock time ('hh:mm:ss', as INDIGO's Qcg.Job uses)."""
    if isinstance(value, str) and re.fullmatch(r"\d+(:\d{1,2}){1,2}", value.strip()):
        parts = [int(p) for p in value.strip().split(":")]
        while len(parts) < 3:
            parts.insert(0, 0)
        return timedelta(hours=parts[0], minutes=parts[1], seconds=parts[2])
    return timedelta(seconds=scalar(value, "scalar-unit.time"))


def coerce(spec: InputSpec, value: Any) -> Any:
    """``value`` as the type ``spec`` declares, accepting text (from a CLI or a form).

    Raises:
        ValueProblemError: The value cannot be read as that type or breaks a constraint.
    """
    typed = _coerce_type(spec.type, value, spec.entry_type)
    for constraint in spec.constraints:
        _check(spec.type, typed, constraint)
    return typed


def _coerce_type(kind: str, value: Any, entry: str | None = None) -> Any:
    if kind == "string":
        if isinstance(value, list | dict):
            raise ValueProblemError(f"expected a string, got {value!r}")
        return as_text(value)  # INDIGO: numbers and booleans are accepted as text
    if kind == "integer":
        return _integer(value)
    if kind == "float":
        return _number(value)
    if kind == "boolean":
        return _boolean(value)
    if kind in _UNITS:
        scalar(value, kind)
        return value
    if kind == "version":
        return as_text(value)
    if kind == "timestamp":
        return value
    # list, map, range, and data types (a mapping of their properties)
    return _structured(kind, value, entry)


def _integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        return int(value)
    raise ValueProblemError(f"expected an integer, got {value!r}")


def _number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueProblemError(f"expected a number, got {value!r}") from None


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueProblemError(f"expected true or false, got {value!r}")


def _structured(kind: str, value: Any, entry: str | None) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueProblemError(f"expected a {kind} (JSON), got {value!r}") from None
    if kind in ("list", "range") and not isinstance(value, list):
        raise ValueProblemError(f"expected a {kind}, got {value!r}")
    if kind not in ("list", "range") and not isinstance(value, dict):
        raise ValueProblemError(f"expected a {kind} mapping, got {value!r}")
    if entry in ("string", "integer", "float", "boolean"):
        items = value if isinstance(value, list) else value.values()
        for item in items:
            _coerce_type(entry, item)
    return value


def _key(kind: str, value: Any) -> Any:
    return scalar(value, kind) if kind in _UNITS else value


def _check(kind: str, value: Any, constraint: dict[str, Any]) -> None:
    for name, bound in constraint.items():
        try:
            ok = bool(_holds(kind, value, name, bound))
        except (TypeError, ValueError, IndexError):
            ok = False
        if not ok:
            raise ValueProblemError(f"{value!r} breaks constraint {name}: {bound!r}")


def _holds(kind: str, value: Any, name: str, bound: Any) -> Any:
    key = _key(kind, value)
    if name == "valid_values":
        return any(key == _key(kind, _coerce_type(kind, b)) for b in bound)
    if name == "in_range":
        return bool(_key(kind, bound[0]) <= key <= _key(kind, bound[1]))
    if name in ("length", "min_length", "max_length"):
        size = len(value)
        return {"length": size == bound, "min_length": size >= bound}.get(name, size <= bound)
    if name == "pattern":
        return re.fullmatch(str(bound), str(value)) is not None
    compare = _COMPARISONS.get(name)
    return compare is None or compare(key, _key(kind, _coerce_type(kind, bound)))
