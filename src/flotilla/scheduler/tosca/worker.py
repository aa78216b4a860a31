"""The parse itself, run in the parser's worker process: text in, ``Topology`` out.

Everything here blocks and touches tosca-parser's process-wide state; ``parser.py`` makes sure
it only ever runs in a single-worker process, never on the event loop.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
from typing import Any

from toscaparser.common.exception import ExceptionCollector  # type: ignore[import-untyped]
from toscaparser.tosca_template import ToscaTemplate  # type: ignore[import-untyped]

from flotilla.scheduler.tosca import compat
from flotilla.scheduler.tosca.diagnosis import diagnose
from flotilla.scheduler.tosca.error import TemplateError, TemplateProblem
from flotilla.scheduler.tosca.library import TypeLibrary, resolve_imports
from flotilla.scheduler.tosca.preprocess import (
    coerce_string_inputs,
    load_document,
    topology_section,
    withhold_indexed_outputs,
)
from flotilla.scheduler.tosca.topology import (
    InputSpec,
    NodeSpec,
    PolicySpec,
    RequirementSpec,
    Topology,
)

_library: TypeLibrary | None = None


class _Template(ToscaTemplate):  # type: ignore[misc]
    """tosca-parser's template, minus its final raise: ``diagnosis`` decides what is fatal."""

    def verify_template(self) -> None:
        return None


def initialize() -> None:
    """Prepare the worker process: patches, quiet logging, the type library."""
    global _library
    _exit_with_parent()
    compat.apply()
    # tosca-parser logs warnings (missing inputs, assumed versions) meant for its own CLI.
    logging.getLogger("tosca").setLevel(logging.CRITICAL)
    logging.getLogger("tosca.model").setLevel(logging.CRITICAL)
    _library = TypeLibrary.load()


def _exit_with_parent() -> None:
    """End this worker when the process that started it dies, however it died.

    The pool stops its workers when its owner shuts it down, but an owner killed outright
    (SIGKILL, the OOM killer) tells them nothing: each waits on its call queue, whose pipe
    it holds both ends of, so it would idle on forever under init. The parent's sentinel,
    a pipe whose other end only the parent holds, becomes readable when the parent is gone.
    """
    parent = multiprocessing.parent_process()
    if parent is None:  # called in the parent's own process (tests, the CLI)
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(0)  # a parse under way has nobody left to answer

    threading.Thread(target=watch, name="flotilla-parent-watch", daemon=True).start()


def digest(text: str) -> str:
    """The cache key of a template text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_text(text: str) -> Topology:
    """Parse and validate a template (no inputs) into a ``Topology``.

    Raises:
        TemplateError: Every problem found, each naming node and field.
    """
    if _library is None:
        initialize()
    assert _library is not None
    document = load_document(text)
    imports, local, problems = resolve_imports(document, _library)
    if problems:
        raise TemplateError(problems)
    document["imports"] = imports
    coerce_string_inputs(document)
    raw = copy.deepcopy(document)
    withhold_indexed_outputs(document)
    raw_nodes = topology_section(raw).get("node_templates") or {}
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        problem = TemplateProblem(
            node=None, field="topology_template.node_templates", message="no node templates"
        )
        raise TemplateError([problem])
    tosca = _run_parser(document, local)
    found = diagnose(ExceptionCollector.getExceptions(), raw_nodes)
    if found.problems:
        raise TemplateError(found.problems)
    return _topology(tosca, raw, digest(text), tuple(found.warnings))


def _run_parser(document: dict[str, Any], local: dict[str, str]) -> Any:
    # tosca-parser prints some messages; the CLI's stdout must stay pure JSON.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return _Template(yaml_dict_tpl=document, local_defs=local, parsed_params=None)
        except compat.RemoteImportRefusedError as exc:
            message = f"remote import {exc} refused: not in the type library"
            problem = TemplateProblem(node=None, field="imports", message=message)
            raise TemplateError([problem]) from exc
        except Exception as exc:
            # tosca-parser may crash on input it does not expect; report it, do not die.
            problem = TemplateProblem(
                node=None, field="template", message=f"tosca-parser failed: {exc!r}"
            )
            raise TemplateError([problem]) from exc


def _topology(tosca: Any, raw: dict[str, Any], key: str, warnings: tuple[str, ...]) -> Topology:
    section = topology_section(raw)
    raw_nodes: dict[str, Any] = section.get("node_templates") or {}
    raw_inputs: dict[str, Any] = section.get("inputs") or {}
    return Topology(
        digest=key,
        description=tosca.description,
        inputs=tuple(_input(name, spec) for name, spec in raw_inputs.items()),
        nodes=tuple(_node(node, raw_nodes.get(node.name) or {}) for node in tosca.nodetemplates),
        policies=tuple(_policy(policy, section) for policy in tosca.policies or ()),
        outputs=dict(section.get("outputs") or {}),
        warnings=warnings,
    )


def _input(name: str, spec: Any) -> InputSpec:
    spec = spec if isinstance(spec, dict) else {}
    entry = spec.get("entry_schema")
    return InputSpec(
        name=name,
        type=str(spec.get("type", "string")),
        required=_truthy(spec.get("required", True)),
        default=spec.get("default"),
        constraints=tuple(c for c in spec.get("constraints") or () if isinstance(c, dict)),
        entry_type=entry.get("type") if isinstance(entry, dict) else entry,
    )


def _truthy(value: Any) -> bool:
    return value not in (False, "no", "false", "False", 0)


def _ancestry(type_definition: Any) -> tuple[str, ...]:
    names: list[str] = []
    while type_definition is not None and len(names) < 64:
        names.append(type_definition.type)
        type_definition = type_definition.parent_type
    return tuple(names)


def _node(node: Any, raw: dict[str, Any]) -> NodeSpec:
    defaults = {
        p.name: p.default
        for p in node.type_definition.get_properties_def_objects()
        if p.default is not None
    }
    raw_caps = raw.get("capabilities") or {}
    capabilities = {}
    for cap in node.get_capabilities_objects():
        cap_raw = (raw_caps.get(cap.name) or {}).get("properties") or {}
        cap_defaults = {p.name: p.default for p in cap.definition.get_properties_def_objects()}
        merged = {k: v for k, v in cap_defaults.items() if v is not None}
        capabilities[cap.name] = merged | cap_raw
    return NodeSpec(
        name=node.name,
        type=node.type,
        ancestry=_ancestry(node.type_definition),
        properties=defaults | (raw.get("properties") or {}),
        capabilities=capabilities,
        requirements=tuple(_requirements(raw.get("requirements"))),
        artifacts=dict(raw.get("artifacts") or {}),
    )


def _requirements(raw: Any) -> list[RequirementSpec]:
    specs = []
    for entry in raw if isinstance(raw, list) else ():
        for name, value in entry.items() if isinstance(entry, dict) else ():
            target = value.get("node") if isinstance(value, dict) else value
            relationship = value.get("relationship") if isinstance(value, dict) else None
            specs.append(
                RequirementSpec(
                    name=name,
                    target=target if isinstance(target, str) else None,
                    relationship=relationship if isinstance(relationship, dict) else {},
                )
            )
    return specs


def _policy(policy: Any, section: dict[str, Any]) -> PolicySpec:
    raw = _raw_policy(section, policy.name)
    return PolicySpec(
        name=policy.name,
        type=policy.type,
        ancestry=_ancestry(policy.type_definition),
        properties=dict(raw.get("properties") or {}),
        targets=tuple(str(t) for t in raw.get("targets") or ()),
    )


def _raw_policy(section: dict[str, Any], name: str) -> dict[str, Any]:
    policies = section.get("policies") or []
    items = policies.items() if isinstance(policies, dict) else []
    for entry in policies if isinstance(policies, list) else ():
        items = [*items, *(entry.items() if isinstance(entry, dict) else ())]
    return next((v for k, v in items if k == name and isinstance(v, dict)), {})
