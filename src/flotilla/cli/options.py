"""Options shared by several commands."""

from __future__ import annotations

from typing import Annotated

import typer

InputsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        "-i",
        metavar="NAME=VALUE",
        help="A template input; repeat for several. Values are read as the input's type.",
    ),
]


def parse_inputs(pairs: list[str] | None) -> dict[str, str]:
    """``NAME=VALUE`` pairs as a mapping.

    Raises:
        typer.BadParameter: a pair has no ``=`` or no name.
    """
    inputs: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--input")
        inputs[name.strip()] = value
    return inputs
