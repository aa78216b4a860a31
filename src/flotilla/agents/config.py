"""The site file an agent runs from: common settings plus one section for its driver.

```yaml
site: hpc-bologna          # the site's name on the bus
kind: slurm                # selects the driver; its section below has the same name
broker:                    # optional: FLOTILLA_BUS__URL otherwise
  url: {file: /etc/flotilla/broker-url}   # or {env: VARIABLE}
concurrency: 4
slurm:
  login_host: login.example.org
  ...
```

Credentials are never inlined: a site file names an environment variable or a file that
holds them (``SecretRef``), so the file can be shared and checked in.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from flotilla.errors import ConfigurationError
from flotilla.schemas import SiteKind

SITE_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"


class SecretRef(BaseModel):
    """Where a secret lives: an environment variable or a file, never the site file itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = Field(default=None, description="Environment variable holding the secret.")
    file: Path | None = Field(default=None, description="File holding the secret.")

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def read(self) -> SecretStr:
        """The secret's value.

        Raises:
            ConfigurationError: the variable is unset or the file cannot be read.
        """
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigurationError(f"environment variable {self.env} is not set")
            return SecretStr(value)
        assert self.file is not None
        try:
            return SecretStr(self.file.read_text().strip())
        except OSError as exc:
            raise ConfigurationError(f"cannot read secret file {self.file}: {exc}") from exc


class BrokerRef(BaseModel):
    """How the agent reaches the broker; the URL carries the site's own login."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: SecretRef | None = Field(
        default=None, description="AMQP URL with the site's credentials (env or file)."
    )


class AgentConfig(BaseModel):
    """Settings every agent has, whatever its kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str = Field(pattern=SITE_NAME, description="The site's name on the bus.")
    kind: SiteKind = Field(description="Which driver runs the site.")
    broker: BrokerRef = Field(default_factory=BrokerRef, description="Broker connection.")
    concurrency: int = Field(default=4, ge=1, le=1000, description="Attempts run at once.")
    lease_interval: timedelta = Field(
        default=timedelta(seconds=5), gt=timedelta(0), description="Time between leases."
    )
    lease_ttl: timedelta | None = Field(
        default=None, description="Lease validity; three lease intervals when unset."
    )
    capacity_interval: timedelta = Field(
        default=timedelta(seconds=60),
        gt=timedelta(0),
        description="Capacity is reported on change and at least this often.",
    )
    state_dir: Path = Field(
        default=Path("flotilla-agent-state"),
        description="Where the agent keeps its inbox of accepted commands.",
    )
    driver: dict[str, Any] = Field(
        default_factory=dict, description="The driver's own section (the key named by kind)."
    )

    @model_validator(mode="before")
    @classmethod
    def _driver_section(cls, data: Any) -> Any:
        # The driver's section is keyed by the kind ("slurm:", "openstack:", ...).
        if isinstance(data, dict) and "driver" not in data:
            kind = data.get("kind")
            if isinstance(kind, str) and isinstance(data.get(kind), dict):
                data = {k: v for k, v in data.items() if k != kind} | {"driver": data[kind]}
        return data

    @property
    def ttl(self) -> timedelta:
        """How long one lease is valid."""
        return self.lease_ttl or self.lease_interval * 3


def format_validation_error(exc: ValidationError, where: str) -> str:
    """One line per wrong field: ``where: field.path: problem``."""
    return "; ".join(
        f"{where}: {'.'.join(str(part) for part in error['loc']) or '(top)'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    )


def load_agent_config(path: Path) -> AgentConfig:
    """Read and validate a site file.

    Raises:
        ConfigurationError: the file is missing, not YAML, or a field is wrong (named).
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"cannot read site file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{path}: expected a mapping at the top level")
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigurationError(format_validation_error(exc, str(path))) from exc
