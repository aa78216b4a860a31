"""``flotilla gateway``: run the REST gateway process."""

from __future__ import annotations

import typer

from flotilla import runtime
from flotilla.cli.app import app, load_settings

gateway_app = typer.Typer(
    name="gateway",
    help="Run the REST gateway (Flotilla's /v1 API and the INDIGO-compatible API).",
    no_args_is_help=True,
)
app.add_typer(gateway_app, name="gateway")


@gateway_app.command("run")
def run() -> None:
    """Serve until SIGINT or SIGTERM; settings come from FLOTILLA_* variables.

    FLOTILLA_GATEWAY__HOST/PORT say where to listen, FLOTILLA_GATEWAY__OIDC_ISSUER (and
    _AUDIENCE) which tokens to accept; FLOTILLA_GATEWAY__AUTH=false turns tokens off.
    """
    from flotilla.gateway.main import run_gateway  # loads the SQL and AMQP stacks

    settings = load_settings()
    runtime.run(run_gateway(settings), loop=settings.event_loop)
