"""The local site: batch jobs as processes on the host that runs Flotilla.

It is the default site of Flotilla's embedded mode (``flotilla up``) and a real option for a
workstation. See ``flotilla.agents.local.driver`` for how jobs run and are found again, and
``flotilla.agents.local.config`` for the ``local:`` section of a site file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flotilla.agents.local.config import LocalConfig
    from flotilla.agents.local.driver import LocalDriver, create_driver

__all__ = ["LocalConfig", "LocalDriver", "create_driver"]

_HOMES = {
    "LocalConfig": "flotilla.agents.local.config",
    "LocalDriver": "flotilla.agents.local.driver",
    "create_driver": "flotilla.agents.local.driver",
}


def __getattr__(name: str) -> Any:
    # Imported on first use: every job's runner (``python -m flotilla.agents.local.runner``)
    # imports this package, and stays small and quick to start without pydantic and the rest.
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
