"""Turn the errors tosca-parser collected into problems naming node and field, or warnings.

Some errors are INDIGO conventions the INDIGO orchestrator accepts; they become warnings so
that every catalogue template parses. Everything else is a problem.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flotilla.scheduler.tosca.compat import Frame
from flotilla.scheduler.tosca.error import TemplateProblem

# Filled in by the INDIGO orchestrator at deploy time, so templates legitimately omit them.
DEPLOY_TIME_PROPERTIES = frozenset(
    {
        "deployment_id",
        "orchestrator",
        "orchestrator_url",
        "iam_access_token",
        "iam_client_id",
        "iam_client_secret",
        "iam_client_token",
        "iam_clues_client_id",
        "iam_clues_client_secret",
        "iam_subject",
        "proxy_host",
        "proxycache_host",
    }
)
# Types whose definitions dropped properties that published templates still set.
_LENIENT_TYPE_PREFIXES = ("tosca.nodes.indigo.", "tosca.policies.indigo.")
_INVALID_TYPE = re.compile(r'Type "(?P<type>[^"]+)" is not a valid type')
_OCCURRENCES = re.compile(r'Relationship "(?P<req>[^"]+)" in template "(?P<node>[^"]+)"')


@dataclass(slots=True, kw_only=True)
class Diagnosis:
    """Problems and warnings found in one parse."""

    problems: list[TemplateProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def diagnose(errors: Iterable[BaseException], raw_nodes: dict[str, Any]) -> Diagnosis:
    """Classify tosca-parser's collected errors.

    Args:
        errors: The exceptions tosca-parser collected, tagged by ``compat``.
        raw_nodes: The template's node templates, to check INDIGO conventions against.
    """
    result = Diagnosis()
    for error in errors:
        frame: Frame = getattr(error, "flotilla_frame", Frame())
        kwargs: dict[str, Any] = getattr(error, "flotilla_kwargs", {})
        _classify(error, frame, kwargs, raw_nodes, result)
    return result


def _classify(
    error: BaseException,
    frame: Frame,
    kwargs: dict[str, Any],
    raw_nodes: dict[str, Any],
    result: Diagnosis,
) -> None:
    name = type(error).__name__
    lenient = (frame.entity_type or "").startswith(_LENIENT_TYPE_PREFIXES)
    if name == "UnknownFieldError" and lenient and _about_properties(kwargs):
        result.warnings.append(f"{frame.entity}: ignored property {kwargs.get('field')!r}")
        return
    if name == "MissingRequiredFieldError" and _about_properties(kwargs):
        _missing_properties(frame, kwargs, result)
        return
    if name == "ValidationError" and _hosted_through_lrms(str(error), raw_nodes):
        return
    problem = _problem(error, frame, kwargs)
    if '"None"' in problem.message and any(
        (p.node, p.field) == (problem.node, problem.field) for p in result.problems
    ):
        return  # tosca-parser goes on checking a value it already rejected, as None
    result.problems.append(problem)


def _about_properties(kwargs: dict[str, Any]) -> bool:
    return str(kwargs.get("what", "")).startswith('"properties" of template')


def _missing_properties(frame: Frame, kwargs: dict[str, Any], result: Diagnosis) -> None:
    required = kwargs.get("required")
    missing = required if isinstance(required, list) else [required]
    lenient_policy = (frame.entity_type or "").startswith("tosca.policies.indigo.")
    for prop in missing:
        if lenient_policy and prop == "sla_id":
            # Manual scheduling: INDIGO pins by region or availability zone without an SLA.
            continue
        if prop in DEPLOY_TIME_PROPERTIES:
            result.warnings.append(f"{frame.entity}: {prop!r} is left to deploy time")
        else:
            message = "required property has no value"
            problem = TemplateProblem(node=frame.entity, field=str(prop), message=message)
            result.problems.append(problem)


def _hosted_through_lrms(message: str, raw_nodes: dict[str, Any]) -> bool:
    # INDIGO hosts software on a front end through a requirement named lrms, not host.
    match = _OCCURRENCES.search(message)
    if not match or match["req"] != "host" or "wrong number of occurrences" not in message:
        return False
    node = raw_nodes.get(match["node"])
    requirements = node.get("requirements") if isinstance(node, dict) else None
    return any(isinstance(r, dict) and "lrms" in r for r in requirements or ())


def _problem(error: BaseException, frame: Frame, kwargs: dict[str, Any]) -> TemplateProblem:
    message = str(error).strip()
    invalid_type = _INVALID_TYPE.search(message)
    if invalid_type and frame.entity:
        kind = "policy type" if (frame.entity_type or "").startswith("tosca.policies") else "type"
        text = f"unknown {kind} {invalid_type['type']!r} (not in the type library)"
        return TemplateProblem(node=frame.entity, field="type", message=text)
    field_name: Any = kwargs.get("field") or frame.field
    if not field_name:
        field_name = "requirements" if "equirement" in message else "template"
    return TemplateProblem(node=frame.entity, field=str(field_name), message=message)
