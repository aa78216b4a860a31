"""The envelope every Flotilla message carries, with CloudEvents attribute names.

A message is a CloudEvents 1.0 event in structured JSON mode: the context attributes sit at
the top level and the payload under ``data``. Flotilla adds three extension attributes
(CloudEvents extension names are lowercase alphanumerics): ``correlationid`` (the
deployment the message belongs to), ``causationid`` (the id of the message that caused this
one) and ``schemaversion`` (the version of this message type's schema).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

SiteName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"),
    Field(
        description="Site name: lowercase letters, digits and inner hyphens (used in routing keys)."
    ),
]
DeploymentId = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
    Field(description="Deployment id: a lowercase UUID."),
]
Upgrader = Callable[[dict[str, Any]], dict[str, Any]]


def new_id() -> str:
    """A fresh message or deployment id."""
    return str(uuid.uuid4())


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class WireModel(BaseModel):
    """Base of every model that crosses the bus: immutable, and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


class Envelope(WireModel):
    """CloudEvents context attributes plus Flotilla's correlation, causation and version.

    Subclasses set ``type`` to a ``Literal`` (the discriminator of the message union),
    ``data`` to their payload model, ``SCHEMA_VERSION`` to the current version of that
    payload, and register in ``UPGRADERS`` one function per older version that turns a
    payload of version ``n`` into one of version ``n + 1``.
    """

    SCHEMA_VERSION: ClassVar[int] = 1
    UPGRADERS: ClassVar[dict[int, Upgrader]] = {}

    specversion: Literal["1.0"] = "1.0"
    id: Annotated[str, Field(min_length=1, max_length=128, default_factory=new_id)]
    source: Annotated[
        str, Field(min_length=1, max_length=256, description="Producer, e.g. /flotilla/scheduler.")
    ]
    subject: str | None = Field(default=None, description="Deployment id or site name.")
    time: AwareDatetime = Field(default_factory=utc_now)
    datacontenttype: Literal["application/json"] = "application/json"
    correlationid: str | None = Field(default=None, description="The deployment this concerns.")
    causationid: str | None = Field(default=None, description="Id of the message that caused this.")
    schemaversion: Annotated[int, Field(ge=1, description="Version of this type's payload schema.")]

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, raw: Any) -> Any:
        """Accept payloads of older schema versions by upgrading them step by step."""
        if not isinstance(raw, dict):
            return raw
        version = raw.get("schemaversion")
        if not isinstance(version, int) or isinstance(version, bool):
            return raw  # field validation reports the wrong type with its location
        if version > cls.SCHEMA_VERSION:
            raise ValueError(
                f"schemaversion {version} is newer than the supported {cls.SCHEMA_VERSION}"
            )
        data = raw.get("data")
        if version < cls.SCHEMA_VERSION and isinstance(data, dict):
            for step in range(max(version, 1), cls.SCHEMA_VERSION):
                data = cls.UPGRADERS[step](data)
            return {**raw, "data": data, "schemaversion": cls.SCHEMA_VERSION}
        return raw

    @classmethod
    def create(cls, data: Any, *, source: str, cause: Envelope | None = None) -> Self:
        """Build a message of this type, following ``cause`` for correlation and causation.

        The subject and correlation id default to the payload's deployment id (or its site
        for site-level messages), so callers only say what is specific to them.
        """
        deployment_id = getattr(data, "deployment_id", None)
        subject = deployment_id or getattr(data, "site", None)
        correlation = deployment_id or (cause.correlationid if cause else None)
        # ``data`` is declared by each subclass, so it goes through validation, not __init__.
        return cls.model_validate(
            {
                "source": source,
                "subject": subject,
                "correlationid": correlation,
                "causationid": cause.id if cause else None,
                "schemaversion": cls.SCHEMA_VERSION,
                "data": data,
            }
        )
