"""The ``slurm:`` section of a site file: how to reach the login node and how to submit.

```yaml
site: hpc-bologna
kind: slurm
slurm:
  login_host: login.hpc.example.org
  port: 22
  user: flotilla
  key: {file: /etc/flotilla/hpc-bologna/id_ed25519}   # or {env: SLURM_SSH_PRIVATE_KEY}
  known_hosts: /etc/flotilla/hpc-bologna/known_hosts
  jump:                                  # optional bastion, used as the tunnel
    host: bastion.example.org
    user: flotilla
  default_partition: cpu
  default_account: flotilla
  group_accounts: {physics: phys-hpc, biology: bio-hpc}
```

Host keys are always verified against ``known_hosts``: there is no switch to turn that off.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from flotilla.agents.config import SecretRef

# Names that end up in #SBATCH lines and command lines: no spaces, quotes or newlines.
SLURM_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$"
SlurmName = Annotated[str, StringConstraints(pattern=SLURM_NAME)]
_HOST = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\s@/]+$")]
_USER = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")]


class JumpHost(BaseModel):
    """A bastion the login node is reached through (OpenSSH's ProxyJump)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: _HOST = Field(description="Bastion host name or address.")
    port: int = Field(default=22, ge=1, le=65535, description="Bastion SSH port.")
    user: _USER | None = Field(default=None, description="Login on the bastion; the login's user.")
    key: SecretRef | None = Field(
        default=None, description="Private key for the bastion; the login node's key when unset."
    )
    key_passphrase: SecretRef | None = Field(
        default=None, description="Passphrase of the bastion's key, if it is encrypted."
    )


class GpuModel(BaseModel):
    """How a GRES GPU type is advertised to the scheduler."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vendor: str | None = Field(default=None, description="GPU vendor, e.g. nvidia.")
    model: str | None = Field(default=None, description="GPU model, e.g. A100.")


class SlurmConfig(BaseModel):
    """Settings of the Slurm site driver (the ``slurm:`` section of a site file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    login_host: _HOST = Field(description="Login node host name or address.")
    port: int = Field(default=22, ge=1, le=65535, description="Login node SSH port.")
    user: _USER = Field(description="The account jobs are submitted as.")
    key: SecretRef = Field(description="Private key (OpenSSH format), from a file or variable.")
    key_passphrase: SecretRef | None = Field(
        default=None, description="Passphrase of the private key, if it is encrypted."
    )
    known_hosts: Path = Field(
        description="OpenSSH known_hosts file holding the login node's (and bastion's) host key.",
    )
    jump: JumpHost | None = Field(default=None, description="Optional bastion (jump host).")
    default_partition: SlurmName | None = Field(
        default=None, description="Partition of jobs the plan does not place; Slurm's default."
    )
    default_account: SlurmName | None = Field(
        default=None, description="Account of groups missing from group_accounts."
    )
    group_accounts: dict[str, SlurmName] = Field(
        default_factory=dict, description="Slurm account charged for each Flotilla group."
    )
    allow_template_account: bool = Field(
        default=False,
        description=(
            "Honour a template's own account property. Off by default: every job is submitted "
            "by one login, so a template could otherwise charge another group's allocation."
        ),
    )
    jobs_directory: str = Field(
        default="flotilla-jobs",
        pattern=r"^[A-Za-z0-9_./+-]+$",
        description="Where job scripts and output go; relative paths are under the login's home.",
    )
    default_wall_time: timedelta | None = Field(
        default=None, gt=timedelta(0), description="Time limit of jobs that give none."
    )
    container_command: list[str] = Field(
        default_factory=lambda: ["apptainer", "exec"],
        min_length=1,
        description="How a job with a container image runs: this, the image, then the command.",
    )
    gpu_types: dict[SlurmName, GpuModel] = Field(
        default_factory=dict,
        description="Vendor and model of each GRES GPU type (a100 -> nvidia A100, ...).",
    )
    infiniband_features: list[SlurmName] = Field(
        default_factory=lambda: ["infiniband", "ib"],
        description="Node features that mean InfiniBand; the first is requested as constraint.",
    )
    connect_timeout: timedelta = Field(
        default=timedelta(seconds=10),
        gt=timedelta(0),
        description="Bound of connecting and logging in to the login node (and the bastion).",
    )
    command_timeout: timedelta = Field(
        default=timedelta(seconds=60), gt=timedelta(0), description="Bound of one remote command."
    )
    max_channels: int = Field(
        default=6,
        ge=1,
        le=64,
        description=(
            "Commands run at once on the connection; keep it well below the sshd's "
            "MaxSessions (10 by default), which frees a slot only after a session ends."
        ),
    )
    poll_interval: timedelta = Field(
        default=timedelta(seconds=5),
        gt=timedelta(0),
        description="How often a job is checked while it is pending or running.",
    )
    history: timedelta = Field(
        default=timedelta(days=14),
        gt=timedelta(0),
        description="How far back accounting (sacct) is searched for an attempt's jobs.",
    )
    quota_refresh: timedelta = Field(
        default=timedelta(minutes=5),
        gt=timedelta(0),
        description="How long association limits read with sacctmgr are reused.",
    )

    @field_validator("jobs_directory")
    @classmethod
    def _no_parent(cls, value: str) -> str:
        if ".." in PurePosixPath(value).parts:
            raise ValueError("must not contain '..'")
        return value.rstrip("/") or "/"

    def account_for(self, group: str, plan_account: str | None) -> str | None:
        """The account a group's job is charged to: the plan's, the group's, or the default."""
        return plan_account or self.group_accounts.get(group) or self.default_account

    @property
    def infiniband_constraint(self) -> str | None:
        """The node feature requested for jobs that need InfiniBand."""
        return self.infiniband_features[0] if self.infiniband_features else None
