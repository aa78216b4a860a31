"""SLAs from a configuration file: which group may use which site, with what preference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from flotilla.errors import ConfigurationError
from flotilla.scheduler.placement import Sla


class _SlaEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(min_length=1)]
    group: Annotated[str, Field(min_length=1)]
    site: Annotated[str, Field(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")]
    preference: Annotated[float, Field(ge=0, le=1)] = 1.0
    limits: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)


_ENTRIES = TypeAdapter(list[_SlaEntry])


def load_slas(path: Path) -> list[Sla]:
    """Read SLAs from a YAML list; errors name the entry and field.

    Raises:
        ConfigurationError: the file is missing, not YAML, or an entry is wrong.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read SLA file {path}: {exc}") from exc
    try:
        entries = _ENTRIES.validate_python(raw or [])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigurationError(f"{path}: entry {where}: {first['msg']}") from exc
    ids = [e.id for e in entries]
    if len(ids) != len(set(ids)):
        raise ConfigurationError(f"{path}: SLA ids must be unique")
    return [
        Sla(id=e.id, group=e.group, site=e.site, preference=e.preference, limits=dict(e.limits))
        for e in entries
    ]
