"""What can be wrong with a template: problems that name the node and the field."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flotilla.errors import PermanentError


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateProblem:
    """One thing wrong with a template.

    Attributes:
        node: The node template (or policy) at fault; None for template-level problems such as
            an import or an input, where ``field`` names the section instead.
        field: Where in the node (``type``, ``num_cpus``, ``requirements.host``) or in the
            template (``imports[0]``, ``inputs.cpus``).
        message: What is wrong, in words a template author can act on.
    """

    node: str | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.node}.{self.field}" if self.node else self.field
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, str | None]:
        """The problem as a JSON-ready mapping."""
        return {"node": self.node, "field": self.field, "message": self.message}


class TemplateError(PermanentError):
    """A template is invalid; ``problems`` lists every problem found, each naming node and field.

    Permanent: the same template with the same inputs fails the same way on every attempt.
    """

    def __init__(self, problems: Iterable[TemplateProblem], *, deployment_id: str | None = None):
        self.problems = tuple(problems)
        count = len(self.problems)
        head = f"template has {count} problem{'s' if count != 1 else ''}"
        super().__init__(
            "; ".join([head, *map(str, self.problems)]),
            deployment_id=deployment_id,
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Exceptions pickle their args, not their keyword fields; the worker process sends
        # this error back to the event loop, so rebuild it from the problems.
        return (_rebuild, (self.problems, self.deployment_id))


def _rebuild(problems: tuple[TemplateProblem, ...], deployment_id: str | None) -> TemplateError:
    return TemplateError(problems, deployment_id=deployment_id)
