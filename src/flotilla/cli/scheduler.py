"""``flotilla scheduler``: run the scheduler process."""

from __future__ import annotations

import typer

from flotilla import runtime
from flotilla.cli.app import app, load_settings

scheduler_app = typer.Typer(
    name="scheduler",
    help="Run the scheduler (one is active; others stand by).",
    no_args_is_help=True,
)
app.add_typer(scheduler_app, name="scheduler")


@scheduler_app.command("run")
def run() -> None:
    """Run until SIGINT or SIGTERM; settings come from FLOTILLA_* variables."""
    from flotilla.scheduler.main import run_scheduler  # loads the SQL and AMQP stacks

    settings = load_settings()
    runtime.run(run_scheduler(settings), loop=settings.event_loop)
