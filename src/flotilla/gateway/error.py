"""What the gateway refuses, and the one table that turns each refusal into an HTTP status.

Handlers raise these (or let a Flotilla error through); the error middleware renders them
in the caller's dialect (Flotilla's ``/v1`` or INDIGO's), so no handler builds an error body.
"""

from __future__ import annotations

from typing import Any

from flotilla.errors import FlotillaError, PermanentError, RetryableError
from flotilla.scheduler.tosca import TemplateError


class InvalidRequestError(PermanentError):
    """The request is malformed: bad JSON, an unknown field, a value out of range."""


class InvalidTokenError(PermanentError):
    """No bearer token, or one that is expired, forged, or meant for someone else."""


class AccessDeniedError(PermanentError):
    """The caller is known but may not do this (e.g. use a group they are not in)."""


class DeploymentNotFoundError(PermanentError):
    """No deployment with this id is visible to the caller."""


class DeploymentBusyError(PermanentError):
    """The deployment's state forbids the operation (a delete already under way)."""


class GatewayUnavailableError(RetryableError):
    """Something the gateway depends on (bus, store, token issuer) is not answering."""


# Most specific first: the first class an error is an instance of decides its status.
_STATUS: tuple[tuple[type[FlotillaError], int, str], ...] = (
    (InvalidRequestError, 400, "invalid_request"),
    (InvalidTokenError, 401, "invalid_token"),
    (AccessDeniedError, 403, "forbidden"),
    (DeploymentNotFoundError, 404, "not_found"),
    (DeploymentBusyError, 409, "conflict"),
    (TemplateError, 422, "invalid_template"),
    (RetryableError, 503, "unavailable"),
)


def http_status(error: FlotillaError) -> tuple[int, str]:
    """The HTTP status and the error code a Flotilla error is answered with.

    Anything not in the table (a database refusing a statement, a stored message that no
    longer decodes) is the gateway's fault, not the caller's: 500.
    """
    for kind, status, code in _STATUS:
        if isinstance(error, kind):
            return status, code
    return 500, "internal"


def problems(error: FlotillaError) -> list[dict[str, Any]] | None:
    """The template problems an error carries (node, field, message), if any."""
    if isinstance(error, TemplateError):
        return [problem.as_dict() for problem in error.problems]
    return None
