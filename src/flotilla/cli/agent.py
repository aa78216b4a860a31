"""``flotilla agent``: run one site's agent from its site file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flotilla import runtime
from flotilla.cli.app import app, load_settings


@app.command("agent")
def agent(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="The site file (YAML).", show_default=False)
    ],
    check: Annotated[
        bool, typer.Option("--check", help="Validate the site file and driver settings, then exit.")
    ] = False,
) -> None:
    """Run the agent of the site described by a site file until SIGINT or SIGTERM."""
    from flotilla.agents.config import load_agent_config
    from flotilla.agents.registry import create_driver

    settings = load_settings()
    site = load_agent_config(config)
    create_driver(site)  # validates the driver's section before anything connects
    if check:
        typer.echo(f"{config}: site {site.site} ({site.kind.value}) is valid")
        return
    from flotilla.agents.main import run_agent

    runtime.run(run_agent(site, settings), loop=settings.event_loop)
