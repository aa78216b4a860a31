"""Hypothesis strategies derived from pydantic wire models, constraints included.

Walks each model's fields (types, ``Annotated`` constraints, patterns, nested models) so
that every generated value is one the model's own rules accept.
"""

from __future__ import annotations

import types
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from hypothesis import strategies as st
from pydantic import AwareDatetime, BaseModel, StringConstraints, ValidationError
from pydantic.fields import FieldInfo

_JSON_LEAVES = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
_JSON = st.recursive(
    _JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def model_strategy(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    """Instances of ``model`` with every field drawn within its constraints."""
    fields = {
        name: _field(info)
        for name, info in model.model_fields.items()
        if not (name == "type" and get_origin(info.annotation) is Literal)
    }
    if "schemaversion" in fields:
        # Producers always write the current version; older ones are tested separately.
        fields["schemaversion"] = st.just(model.SCHEMA_VERSION)
    # Cross-field rules (e.g. manual scheduling names a site) are not field constraints:
    # combinations that break them are discarded rather than special-cased here.
    return (
        st.fixed_dictionaries(fields)
        .map(lambda values: _validate(model, values))
        .filter(lambda instance: instance is not None)
    )


def _validate(model: type[BaseModel], values: dict[str, Any]) -> BaseModel | None:
    try:
        return model.model_validate(values)
    except ValidationError:
        return None


def _field(info: FieldInfo) -> st.SearchStrategy[Any]:
    return _for(info.annotation, list(info.metadata))


def _for(annotation: Any, constraints: list[Any]) -> st.SearchStrategy[Any]:
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *meta = get_args(annotation)
        return _for(inner, constraints + _flatten(meta))
    if origin in (Union, types.UnionType):
        return st.one_of(*(_for(arg, constraints) for arg in get_args(annotation)))
    if origin is Literal:
        return st.sampled_from(get_args(annotation))
    if origin is list:
        return st.lists(_for(get_args(annotation)[0], []), max_size=3)
    if origin is dict:
        return st.dictionaries(st.text(max_size=10), _JSON, max_size=3)
    return _scalar(annotation, constraints)


def _flatten(meta: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for item in meta:
        flat.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return flat


def _bounds(constraints: list[Any]) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    for c in constraints:
        if isinstance(c, at.Ge):
            bounds["min"] = c.ge
        elif isinstance(c, at.Gt):
            bounds["min_excl"] = c.gt
        elif isinstance(c, at.Le):
            bounds["max"] = c.le
        elif isinstance(c, at.MinLen):
            bounds["min_len"] = c.min_length
        elif isinstance(c, at.MaxLen):
            bounds["max_len"] = c.max_length
        elif (isinstance(c, StringConstraints) and c.pattern) or getattr(c, "pattern", None):
            bounds["pattern"] = c.pattern
    return bounds


def _scalar(annotation: Any, constraints: list[Any]) -> st.SearchStrategy[Any]:
    b = _bounds(constraints)
    if annotation is type(None):
        return st.none()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_strategy(annotation)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return st.sampled_from(list(annotation))
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        low = b.get("min", b.get("min_excl", -(2**31) - 1) + 1)
        return st.integers(min_value=low, max_value=b.get("max", 2**31))
    if annotation is float:
        low = b.get("min", b.get("min_excl", -1e9))
        return st.floats(min_value=low, max_value=b.get("max", 1e9), allow_nan=False).filter(
            lambda x: "min_excl" not in b or x > b["min_excl"]
        )
    if annotation is str:
        if "pattern" in b:
            return st.from_regex(b["pattern"], fullmatch=True).filter(
                lambda s: len(s) <= b.get("max_len", 10**6)
            )
        return st.text(min_size=b.get("min_len", 0), max_size=min(b.get("max_len", 30), 30))
    if annotation is timedelta:
        return st.timedeltas(min_value=timedelta(milliseconds=1), max_value=timedelta(days=30))
    if annotation in (datetime, AwareDatetime):
        return st.datetimes(timezones=st.just(UTC))
    return _JSON
