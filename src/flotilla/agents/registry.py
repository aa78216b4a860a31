"""Which driver runs which kind of site; drivers are imported only when used."""

from __future__ import annotations

import importlib

from flotilla.agents.config import AgentConfig
from flotilla.agents.driver import SiteDriver
from flotilla.errors import ConfigurationError
from flotilla.schemas import SiteKind

# Each module exposes ``create_driver(config: AgentConfig) -> SiteDriver``, which validates
# ``config.driver`` with its own model and raises ConfigurationError naming the field.
_DRIVERS: dict[SiteKind, str] = {
    SiteKind.LOCAL: "flotilla.agents.local",
    SiteKind.SLURM: "flotilla.agents.hpc_slurm",
    SiteKind.OPENSTACK: "flotilla.agents.openstack",
}


def create_driver(config: AgentConfig) -> SiteDriver:
    """The driver for the site file's ``kind``.

    Raises:
        ConfigurationError: no driver for the kind, or the driver's section is wrong.
    """
    module_name = _DRIVERS.get(config.kind)
    if module_name is None:
        supported = ", ".join(sorted(kind.value for kind in _DRIVERS))
        raise ConfigurationError(f"kind: no driver for {config.kind.value!r} (have {supported})")
    module = importlib.import_module(module_name)
    driver: SiteDriver = module.create_driver(config)
    return driver
