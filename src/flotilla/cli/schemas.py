"""``flotilla schemas``: publish the wire contracts as JSON Schema and AsyncAPI files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from flotilla.broker.asyncapi import document, message_json_schemas
from flotilla.cli.app import app

schemas_app = typer.Typer(
    name="schemas", help="Export the message schemas and the bus description.", no_args_is_help=True
)
app.add_typer(schemas_app, name="schemas")


@schemas_app.command("export")
def export(
    directory: Annotated[
        Path, typer.Argument(help="Directory to write into (created if missing).", file_okay=False)
    ],
    host: Annotated[
        str, typer.Option(help="Broker host:port named in the AsyncAPI servers.")
    ] = "localhost:5672",
) -> None:
    """Write <type>.schema.json per message type, message.schema.json and asyncapi.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [
        _write_json(directory / f"{name}.schema.json", schema)
        for name, schema in message_json_schemas().items()
    ]
    written.append(_write_yaml(directory / "asyncapi.yaml", document(host=host)))
    for path in written:
        typer.echo(f"wrote {path}")


def _write_json(path: Path, content: dict[str, Any]) -> Path:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _write_yaml(path: Path, content: dict[str, Any]) -> Path:
    # sort_keys=False keeps AsyncAPI's conventional order (asyncapi, info, servers, ...).
    text = yaml.safe_dump(content, sort_keys=False, allow_unicode=True, width=100)
    path.write_text(text, encoding="utf-8")
    return path
