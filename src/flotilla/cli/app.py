"""The ``flotilla`` command: the root app, error handling, and sub-command registration."""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError
from rich.console import Console

from flotilla.errors import ConfigurationError, FlotillaError
from flotilla.log import configure_logging
from flotilla.settings import Settings

app = typer.Typer(
    name="flotilla",
    help="Flotilla: TOSCA deployments placed on the best site of a federation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)


def load_settings() -> Settings:
    """Load the process settings once and configure logging (to stderr) from them.

    Raises:
        ConfigurationError: a setting is wrong; the message names each field.
    """
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigurationError(f"invalid settings: {problems}") from exc
    configure_logging(settings.log)
    return settings


def _register() -> None:
    # Sub-command modules register themselves on import; imported here to avoid cycles.
    from flotilla.cli import (  # noqa: F401
        agent,
        broker,
        deployments,
        gateway,
        scheduler,
        schemas,
        template,
        up,
    )

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
