"""The union of every Flotilla message and the one adapter that decodes it from bytes."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, TypeAdapter, ValidationError

from flotilla.schemas.command import ProvisionDeployment, ReleaseDeployment
from flotilla.schemas.deployment import (
    DeploymentDeleteRequested,
    DeploymentRequested,
    DeploymentStatusChanged,
)
from flotilla.schemas.envelope import Envelope
from flotilla.schemas.report import (
    DeploymentProvisioned,
    DeploymentReleased,
    ProgressReported,
    ProvisioningFailed,
    ReleaseFailed,
)
from flotilla.schemas.site import SiteCapacity, SiteLease

Message = Annotated[
    DeploymentRequested
    | DeploymentDeleteRequested
    | DeploymentStatusChanged
    | ProvisionDeployment
    | ReleaseDeployment
    | ProgressReported
    | DeploymentProvisioned
    | ProvisioningFailed
    | DeploymentReleased
    | ReleaseFailed
    | SiteLease
    | SiteCapacity,
    Field(discriminator="type"),
]
MESSAGE_TYPES: tuple[type[Envelope], ...] = (
    DeploymentRequested,
    DeploymentDeleteRequested,
    DeploymentStatusChanged,
    ProvisionDeployment,
    ReleaseDeployment,
    ProgressReported,
    DeploymentProvisioned,
    ProvisioningFailed,
    DeploymentReleased,
    ReleaseFailed,
    SiteLease,
    SiteCapacity,
)
MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)


class InvalidMessageError(ValueError):
    """Bytes that are not a valid Flotilla message; ``reason`` says what and where."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def type_name(cls: type[Envelope]) -> str:
    """The CloudEvents ``type`` of a message class."""
    default = cls.model_fields["type"].default
    assert isinstance(default, str)
    return default


def encode(message: Envelope) -> bytes:
    """Serialise a message to its JSON wire form."""
    return message.__pydantic_serializer__.to_json(message)


def decode(body: bytes) -> Message:
    """Parse and validate bytes into a message, upgrading older schema versions.

    Raises:
        InvalidMessageError: with a reason naming each wrong field by its location.
    """
    try:
        return MESSAGE_ADAPTER.validate_json(body)
    except ValidationError as exc:
        raise InvalidMessageError(_describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in error["loc"]) or "<message>"
        problems.append(f"{location}: {error['msg']}")
    return "; ".join(problems[:10]) + (
        f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
    )
