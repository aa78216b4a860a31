"""Targeted rewrites of a template dict so that tosca-parser accepts INDIGO conventions.

Each rewrite keeps the author's meaning; what tosca-parser cannot be told is kept aside in the
raw copy that requirement extraction reads (see ``topology.py``).
"""

from __future__ import annotations

from typing import Any

import yaml

from flotilla.scheduler.tosca.error import TemplateError, TemplateProblem


def load_document(text: str) -> dict[str, Any]:
    """Parse YAML text into a template mapping.

    Raises:
        TemplateError: The text is not YAML, or not a mapping with a TOSCA version.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "template"
        problem = TemplateProblem(node=None, field=where, message=f"not YAML: {exc}")
        raise TemplateError([problem]) from exc
    if not isinstance(document, dict):
        problem = TemplateProblem(node=None, field="template", message="must be a YAML mapping")
        raise TemplateError([problem])
    if "tosca_definitions_version" not in document:
        problem = TemplateProblem(
            node=None, field="tosca_definitions_version", message="missing; this is not TOSCA"
        )
        raise TemplateError([problem])
    return document


def topology_section(document: dict[str, Any]) -> dict[str, Any]:
    """The ``topology_template`` mapping (empty when absent or malformed)."""
    section = document.get("topology_template")
    return section if isinstance(section, dict) else {}


def coerce_string_inputs(document: dict[str, Any]) -> None:
    """Turn non-string defaults of string inputs into strings, in place.

    INDIGO templates declare ``type: string`` with ``default: true`` or ``default: 8080``; the
    INDIGO orchestrator (Java) reads them as text, tosca-parser rejects them.
    """
    inputs = topology_section(document).get("inputs")
    for definition in (inputs or {}).values() if isinstance(inputs, dict) else ():
        if not isinstance(definition, dict) or definition.get("type") != "string":
            continue
        if "default" in definition and definition["default"] is not None:
            definition["default"] = as_text(definition["default"])
        for constraint in definition.get("constraints") or ():
            if isinstance(constraint, dict) and isinstance(constraint.get("valid_values"), list):
                constraint["valid_values"] = [as_text(v) for v in constraint["valid_values"]]


def as_text(value: Any) -> Any:
    """A scalar as the text YAML would show; other values unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def withhold_indexed_outputs(document: dict[str, Any]) -> None:
    """Remove outputs that index into a property list, in place.

    tosca-parser crashes (AttributeError while formatting an error) on outputs such as
    ``get_property: [node, os_users, 0]``. Outputs do not affect placement; the raw copy keeps
    them and they are evaluated without tosca-parser.
    """
    outputs = topology_section(document).get("outputs")
    if not isinstance(outputs, dict):
        return
    for name in [name for name, output in outputs.items() if _indexes_property(output)]:
        del outputs[name]


def _indexes_property(value: Any) -> bool:
    if isinstance(value, dict):
        args = value.get("get_property")
        if isinstance(args, list) and len(args) > 2:
            return True
        return any(_indexes_property(item) for item in value.values())
    if isinstance(value, list):
        return any(_indexes_property(item) for item in value)
    return False
