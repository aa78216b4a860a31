"""The ``flotilla`` command: the root app, error handling, and sub-command registration."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from flotilla.errors import FlotillaError

app = typer.Typer(
    name="flotilla",
    help="Flotilla: TOSCA deployments placed on the best site of a federation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def _register() -> None:
    # Sub-command modules register themselves on import; imported here to avoid cycles.
    from flotilla.cli import broker, schemas, template  # noqa: F401

    app.add_typer(template.app, name="template")


def main() -> None:
    """Run the CLI; a Flotilla error is one clear line on stderr and a non-zero exit."""
    _register()
    try:
        app()
    except FlotillaError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2 if exc.retryable else 1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
