"""``flotilla template``: check a TOSCA template offline and show what it needs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from flotilla.scheduler.tosca import TemplateError, TemplateParser, TemplateRequirements

app = typer.Typer(
    name="template",
    help="Work with TOSCA templates (no running service needed).",
    no_args_is_help=True,
)


@app.callback()
def _group() -> None:
    """Work with TOSCA templates (no running service needed)."""


def _parse_inputs(pairs: list[str]) -> dict[str, str]:
    inputs: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--input")
        inputs[name.strip()] = value
    return inputs


async def _requirements(text: str, inputs: dict[str, str]) -> TemplateRequirements:
    async with TemplateParser() as parser:
        return await parser.requirements(text, inputs)


@app.command()
def check(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="TOSCA YAML template."),
    ],
    input_: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            metavar="NAME=VALUE",
            help="A template input; repeat for several. Values are read as the input's type.",
        ),
    ] = None,
) -> None:
    """Parse FILE with imports resolved offline; print its requirements as JSON.

    On a bad template or bad inputs, print one problem per line (node.field: message) on
    stderr and exit with status 1.
    """
    inputs = _parse_inputs(input_ or [])
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
