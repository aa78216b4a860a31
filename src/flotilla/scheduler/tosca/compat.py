"""Narrow patches of tosca-parser, applied once in the parser's worker process.

tosca-parser collects errors as formatted strings in a process-wide list and may fetch imports
over the network. The patches here (1) refuse every remote load, (2) remember which node, policy,
input and property was being checked when an error was collected, so a problem can name the
node and field, (3) keep the keyword arguments of its exceptions for classification, and
(4) accept an integer where a float is declared.
They wrap functions without changing what they do otherwise; tosca-parser is pinned to 2.x.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import toscaparser.functions  # type: ignore[import-untyped]
import toscaparser.imports  # type: ignore[import-untyped]
import toscaparser.tosca_template  # type: ignore[import-untyped]
import toscaparser.utils.urlutils  # type: ignore[import-untyped]
import toscaparser.utils.validateutils  # type: ignore[import-untyped]
import toscaparser.utils.yamlparser  # type: ignore[import-untyped]
from toscaparser.common import exception as tosca_exception  # type: ignore[import-untyped]
from toscaparser.entity_template import EntityTemplate  # type: ignore[import-untyped]
from toscaparser.nodetemplate import NodeTemplate  # type: ignore[import-untyped]
from toscaparser.parameters import Input  # type: ignore[import-untyped]
from toscaparser.policy import Policy  # type: ignore[import-untyped]
from toscaparser.properties import Property  # type: ignore[import-untyped]


class RemoteImportRefusedError(Exception):
    """tosca-parser tried to read a URL; the type library should have resolved it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """What tosca-parser was checking: an entity (node or policy) and/or a field."""

    entity: str | None = None
    entity_type: str | None = None
    field: str | None = None


_stack: list[Frame] = []
_applied = False


@contextmanager
def _frame(frame: Frame) -> Iterator[None]:
    _stack.append(frame)
    try:
        yield
    finally:
        _stack.pop()


def current() -> Frame:
    """The innermost entity and field being checked (the worker is single-threaded)."""
    entity = next((f for f in reversed(_stack) if f.entity is not None), Frame())
    field = next((f.field for f in reversed(_stack) if f.field is not None), None)
    return Frame(entity=entity.entity, entity_type=entity.entity_type, field=field)


def _within(make: Callable[..., Frame]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _frame(make(*args, **kwargs)):
                return method(*args, **kwargs)

        return wrapper

    return decorate


def _entity_type(template: Any) -> str | None:
    value = template.get("type") if isinstance(template, dict) else None
    return value if isinstance(value, str) else None


def _entity_init_frame(self: Any, name: str, template: Any, *_: Any, **__: Any) -> Frame:
    return Frame(entity=name, entity_type=_entity_type(template))


def _entity_frame(self: Any, *_: Any, **__: Any) -> Frame:
    return Frame(entity=self.name, entity_type=self.type)


def _requirements_frame(self: Any, *_: Any, **__: Any) -> Frame:
    return Frame(entity=self.name, entity_type=self.type, field="requirements")


def _property_frame(self: Any, *_: Any, **__: Any) -> Frame:
    return Frame(field=self.name)


def _input_frame(self: Any, *_: Any, **__: Any) -> Frame:
    return Frame(field=f"inputs.{self.name}")


def _function_frame(tosca_tpl: Any, node_template: Any, *_: Any, **__: Any) -> Frame:
    name = getattr(node_template, "name", None)
    return Frame(entity=name, entity_type=getattr(node_template, "type", None))


def _refuse_remote(load: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(load)
    def guarded(path: str, a_file: bool = True) -> Any:
        if not a_file:
            raise RemoteImportRefusedError(path)
        return load(path, a_file)

    return guarded


def _never_accessible(url: str) -> bool:
    raise RemoteImportRefusedError(url)


def _float_or_integer(validate: Callable[[Any], Any]) -> Callable[[Any], Any]:
    # YAML reads "cpus: 64" as an integer; tosca-parser would reject it for a float property.
    @functools.wraps(validate)
    def lenient(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return validate(value)

    return lenient


def _tag(append: Callable[[BaseException], None]) -> Callable[[BaseException], None]:
    @functools.wraps(append)
    def tagged(exception: BaseException) -> None:
        exception.flotilla_frame = current()  # type: ignore[attr-defined]
        append(exception)

    return tagged


def _keep_kwargs(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def keeping(self: Any, **kwargs: Any) -> None:
        self.flotilla_kwargs = kwargs
        init(self, **kwargs)

    return keeping


def apply() -> None:
    """Install the patches (idempotent); called by the worker process before its first parse."""
    global _applied
    if _applied:
        return
    _applied = True
    load = toscaparser.utils.yamlparser.load_yaml
    guarded = _refuse_remote(load)
    # Each module bound the loader to its own name at import time, so patch every binding.
    toscaparser.utils.yamlparser.load_yaml = guarded
    toscaparser.imports.YAML_LOADER = guarded
    toscaparser.tosca_template.YAML_LOADER = guarded
    toscaparser.utils.urlutils.UrlUtils.url_accessible = staticmethod(_never_accessible)
    validateutils = toscaparser.utils.validateutils
    validateutils.validate_float = _float_or_integer(validateutils.validate_float)
    collector = tosca_exception.ExceptionCollector
    collector.appendException = staticmethod(_tag(collector.appendException))
    exc = tosca_exception.TOSCAException
    exc.__init__ = _keep_kwargs(exc.__init__)
    EntityTemplate.__init__ = _within(_entity_init_frame)(EntityTemplate.__init__)
    NodeTemplate.validate = _within(_entity_frame)(NodeTemplate.validate)
    NodeTemplate._validate_relationship_occurrences = _within(_requirements_frame)(
        NodeTemplate._validate_relationship_occurrences
    )
    Policy.validate = _within(_entity_frame)(Policy.validate)
    Property.validate = _within(_property_frame)(Property.validate)
    Input.validate = _within(_input_frame)(Input.validate)
    toscaparser.functions.get_function = _within(_function_frame)(
        toscaparser.functions.get_function
    )
