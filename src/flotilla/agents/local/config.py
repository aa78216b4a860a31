"""The ``local:`` section of a site file.

Every field has a default, so ``local: {}`` (or no section at all) runs jobs under the
agent's state directory with the host's CPUs and memory:

```yaml
site: workstation
kind: local
local:
  work_dir: /scratch/flotilla     # default: <state_dir>/work
  cpus: 4                         # advertise and allow at most 4 CPUs (default: the host's)
  memory_mb: 8192                 # at most 8 GiB (default: the host's memory)
  max_jobs: 4                     # processes running at once (default: the CPU count)
  keep_work_dirs: true            # keep output after release (default)
```

Working directories are kept after a release by default, so the user can read a job's
output; set ``keep_work_dirs: false`` to delete an attempt's directory when it is released.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class LocalConfig(BaseModel):
    """Settings of the local site driver (the ``local:`` section of a site file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    work_dir: Path | None = Field(
        default=None,
        description=(
            "Where each attempt gets its working directories; <state_dir>/work when unset."
        ),
    )
    cpus: float | None = Field(
        default=None, gt=0, description="CPUs offered to jobs; the host's CPU count when unset."
    )
    memory_mb: int | None = Field(
        default=None, gt=0, description="Memory offered to jobs in MiB; the host's when unset."
    )
    max_jobs: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Job processes running at once; the number of CPUs offered when unset.",
    )
    memory_headroom: float = Field(
        default=2.0,
        ge=1.0,
        le=64.0,
        description=(
            "RLIMIT_AS is memory_mb times this factor: a process maps more address space "
            "than it keeps resident (shared libraries, allocator arenas)."
        ),
    )
    cpu_time_cap_seconds: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Upper bound of RLIMIT_CPU; by default a job may use its wall time times its CPUs."
        ),
    )
    default_wall_time_seconds: float = Field(
        default=3600.0, gt=0, description="Wall time of a job whose template gives none."
    )
    kill_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="Time between SIGTERM and SIGKILL when a job is stopped.",
    )
    keep_work_dirs: bool = Field(
        default=True,
        description="Keep an attempt's working directories (and output) after its release.",
    )
    poll_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often running jobs are checked and their progress reported.",
    )
    environment: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Variables every job gets, on top of PATH, HOME and LANG; the agent's own "
            "environment is never passed on."
        ),
    )
