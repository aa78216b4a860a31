"""``flotilla template``: check a TOSCA template offline and show what it needs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from flotilla.cli.options import InputsOption, parse_inputs
from flotilla.scheduler.tosca import TemplateError, TemplateParser, TemplateRequirements

app = typer.Typer(
    name="template",
    help="Work with TOSCA templates (no running service needed).",
    no_args_is_help=True,
)


@app.callback()
def _group() -> None:
    """Work with TOSCA templates (no running service needed)."""


async def _requirements(text: str, inputs: dict[str, str]) -> TemplateRequirements:
    async with TemplateParser() as parser:
        return await parser.requirements(text, inputs)


@app.command()
def check(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="TOSCA YAML template."),
    ],
    input_: InputsOption = None,
) -> None:
    """Parse FILE with imports resolved offline; print its requirements as JSON.

    On a bad template or bad inputs, print one problem per line (node.field: message) on
    stderr and exit with status 1.
    """
    inputs = parse_inputs(input_)
    text = file.read_text(encoding="utf-8")
    try:
        requirements = asyncio.run(_requirements(text, inputs))
    except TemplateError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(code=1) from None
    for warning in requirements.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(json.dumps(requirements.as_json(), indent=2, default=str))
