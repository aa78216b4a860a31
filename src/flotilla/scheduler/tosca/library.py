"""The local TOSCA type library: every import a template may use, resolved without the network."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from flotilla.scheduler.tosca.error import TemplateProblem

TYPES_DIR = Path(__file__).parent / "types"
FLOTILLA_TYPES = "flotilla_types.yaml"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Rule:
    pattern: re.Pattern[str]
    local: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TypeLibrary:
    """Maps import references (remote URLs, ``flotilla_types.yaml``) to files shipped here.

    A reference that matches no rule, or whose file is missing, is an error: nothing is ever
    fetched, so a template cannot make the scheduler reach an arbitrary URL.
    """

    root: Path
    rules: tuple[_Rule, ...]

    @classmethod
    def load(cls, root: Path = TYPES_DIR) -> TypeLibrary:
        """Read the import map of the library in ``root``."""
        document = json.loads((root / "import-map.json").read_text(encoding="utf-8"))
        rules = tuple(
            _Rule(pattern=re.compile(rule["match"]), local=rule["local"])
            for rule in document["rules"]
        )
        return cls(root=root, rules=rules)

    @property
    def flotilla_types(self) -> Path:
        """Flotilla's own types file, added to every template."""
        return self.root / FLOTILLA_TYPES

    def locate(self, reference: str) -> Path | None:
        """The local file for an import reference, or None if the library does not have it."""
        for rule in self.rules:
            match = rule.pattern.match(reference)
            if match:
                path = self.root / rule.local.replace("{1}", match.group(1))
                return path if path.is_file() else None
        return None

    def closure(self, references: list[str]) -> dict[str, Path]:
        """Every reference reachable from ``references`` through nested imports, with its file.

        Raises:
            KeyError: A nested import of a library file is not in the library (a packaging bug).
        """
        found: dict[str, Path] = {}
        pending = list(references)
        while pending:
            reference = pending.pop()
            if reference in found:
                continue
            path = self.locate(reference)
            if path is None:
                raise KeyError(reference)
            found[reference] = path
            pending.extend(_nested_references(path))
        return found


@cache
def _nested_references(path: Path) -> tuple[str, ...]:
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return tuple(reference for _, reference in import_entries(document.get("imports")))


def import_entries(imports: Any) -> list[tuple[str | None, str]]:
    """The (name, reference) pairs of an ``imports:`` section; unusable entries are skipped.

    TOSCA allows ``- url``, ``- name: url`` and ``- name: {file: url, ...}``.
    """
    entries: list[tuple[str | None, str]] = []
    for entry in imports if isinstance(imports, list) else []:
        if isinstance(entry, str):
            entries.append((None, entry))
        elif isinstance(entry, dict):
            for name, value in entry.items():
                reference = value.get("file") if isinstance(value, dict) else value
                if isinstance(reference, str):
                    entries.append((str(name), reference))
    return entries


def resolve_imports(
    template: dict[str, Any], library: TypeLibrary
) -> tuple[list[dict[str, str]], dict[str, str], list[TemplateProblem]]:
    """Rewrite a template's imports to library files.

    Returns:
        The imports section to hand to tosca-parser (absolute local paths, Flotilla's types
        appended), the URL-to-file map tosca-parser needs for the library's own nested imports,
        and one problem per import the library does not have.
    """
    imports = template.get("imports")
    if imports is not None and not isinstance(imports, list):
        return [], {}, [TemplateProblem(node=None, field="imports", message="must be a list")]
    rewritten: list[dict[str, str]] = []
    problems: list[TemplateProblem] = []
    references: list[str] = [FLOTILLA_TYPES]
    for index, entry in enumerate(imports or []):
        found = import_entries([entry])
        if not found:
            problems.append(
                TemplateProblem(node=None, field=f"imports[{index}]", message="names no file")
            )
        for name, reference in found:
            path = library.locate(reference)
            if path is None:
                problems.append(_unknown_import(index, reference))
                continue
            references.append(reference)
            rewritten.append({name or f"import_{index}": str(path)})
    rewritten.append({"flotilla_types": str(library.flotilla_types)})
    local = {ref: str(path) for ref, path in library.closure(references).items()}
    return rewritten, local, problems


def _unknown_import(index: int, reference: str) -> TemplateProblem:
    return TemplateProblem(
        node=None,
        field=f"imports[{index}]",
        message=(
            f"import {reference!r} is not in Flotilla's type library; imports are resolved "
            "offline and never fetched"
        ),
    )
