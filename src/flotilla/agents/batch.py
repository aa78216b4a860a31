"""The properties of a batch-job node, as every site that runs batch jobs reads them.

A planned batch-job node (Flotilla's ``BatchJob`` or INDIGO's ``Qcg.Job``) carries its
``command``, ``arguments``, ``environment``, ``wall_time_seconds``, ``script`` and working
directory as properties. Sites subclass ``BatchJob`` to read their own extras (a Slurm
partition, a container image) and to add their own checks in ``check``.
"""

from __future__ import annotations

import graphlib
import hashlib
import re
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from flotilla.agents.config import format_validation_error
from flotilla.agents.driver import ProvisioningError
from flotilla.schemas import PlannedNode

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def safe_name(name: str) -> str:
    """A node name fit for file and job names, distinct for distinct node names.

    Unsafe characters become ``_``; when any was replaced, a short hash of the real name
    is appended, so ``a b`` and ``a_b`` never share a directory or a job name.
    """
    safe = _UNSAFE.sub("_", name)
    if safe == name:
        return safe
    return f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def in_dependency_order(nodes: list[PlannedNode]) -> list[PlannedNode]:
    """Nodes so that each comes after the nodes it depends on (template order otherwise).

    Raises:
        ProvisioningError: the nodes depend on each other in a cycle.
    """
    by_name = {node.name: node for node in nodes}
    graph = {node.name: [d for d in node.depends_on if d in by_name] for node in nodes}
    try:
        return [by_name[name] for name in graphlib.TopologicalSorter(graph).static_order()]
    except graphlib.CycleError as exc:
        raise ProvisioningError(
            f"nodes depend on each other in a cycle: {' -> '.join(exc.args[1])}",
            code="invalid_plan",
        ) from exc


def _text(value: Any) -> Any:
    """Template values as the strings a command line or environment holds."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return ""
    return value


class BatchJob(BaseModel):
    """What a batch-job node runs; properties a site does not use are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    command: list[str] = Field(default_factory=list)
    arguments: list[str] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)
    wall_time_seconds: float | None = Field(default=None, gt=0)
    script: str | None = None
    working_directory: str | None = None
    directory: str | None = Field(default=None, description="INDIGO Qcg.Job's working directory.")

    @field_validator("command", "arguments", mode="before")
    @classmethod
    def _words(cls, value: Any) -> Any:
        return [_text(item) for item in value] if isinstance(value, list) else value

    @field_validator("environment", mode="before")
    @classmethod
    def _variables(cls, value: Any) -> Any:
        return {k: _text(v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("environment")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
        return value

    @model_validator(mode="after")
    def _no_nul(self) -> Self:
        # No program argument, environment entry or path can hold a NUL byte.
        texts = [*self.command, *self.arguments, *self.environment, *self.environment.values()]
        texts += [t for t in (self.script, self.working_directory, self.directory) if t]
        if any("\x00" in text for text in texts):
            raise ValueError("a command, argument, variable or path contains a NUL byte")
        return self

    @classmethod
    def of(cls, node: PlannedNode) -> Self:
        """The job settings of ``node``.

        Raises:
            ProvisioningError: a property is malformed, or neither command nor script is given.
        """
        try:
            job = cls.model_validate(node.properties)
        except ValidationError as exc:
            where = f"node {node.name}: properties"
            raise ProvisioningError(
                format_validation_error(exc, where), code="invalid_job"
            ) from exc
        if job.script is None and not job.command:
            raise ProvisioningError(
                f"node {node.name}: give a command or a script to run", code="invalid_job"
            )
        job.check(node)
        return job

    def check(self, node: PlannedNode) -> None:
        """A site's own checks of a valid job; raise ProvisioningError naming the node."""
