"""The Slurm site driver: batch jobs submitted with sbatch over SSH to a login node.

``create_driver`` builds it from a site file's ``slurm:`` section (``SlurmConfig``).
"""

from __future__ import annotations

from pydantic import ValidationError

from flotilla.agents.config import AgentConfig, format_validation_error
from flotilla.agents.driver import SiteDriver
from flotilla.agents.hpc_slurm.config import GpuModel, JumpHost, SlurmConfig
from flotilla.agents.hpc_slurm.driver import SlurmDriver
from flotilla.agents.hpc_slurm.ssh import LoginRefusedError
from flotilla.errors import ConfigurationError

__all__ = [
    "GpuModel",
    "JumpHost",
    "LoginRefusedError",
    "SlurmConfig",
    "SlurmDriver",
    "create_driver",
]


def create_driver(config: AgentConfig) -> SiteDriver:
    """The Slurm driver of a site file.

    Raises:
        ConfigurationError: the ``slurm:`` section is missing a field or has a wrong one.
    """
    try:
        settings = SlurmConfig.model_validate(config.driver)
    except ValidationError as exc:
        raise ConfigurationError(format_validation_error(exc, "slurm")) from exc
    return SlurmDriver(settings, site=config.site)
