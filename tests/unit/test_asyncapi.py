"""The AsyncAPI document and the schema export describe every message on its real route."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from flotilla.broker.asyncapi import channels, document, route_template
from flotilla.broker.topology import core_topology, route
from flotilla.cli import schemas as _schemas_command  # noqa: F401 - registers `schemas`
from flotilla.cli.app import app
from flotilla.schemas import MESSAGE_TYPES, Envelope, type_name


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    """The generated document."""
    return document()


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` anywhere in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_document_is_asyncapi_3(doc: dict[str, Any]) -> None:
    """The document declares AsyncAPI 3.0.0 and an AMQP server."""
    assert doc["asyncapi"] == "3.0.0"
    assert {s["protocol"] for s in doc["servers"].values()} == {"amqp"}
    assert doc["info"]["title"]
    assert doc["info"]["version"]


def test_every_message_type_is_documented(doc: dict[str, Any]) -> None:
    """Each message type has a component message, a payload schema and a channel."""
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert names == {type_name(cls) for cls in MESSAGE_TYPES}
    for message in doc["components"]["messages"].values():
        assert _resolve(doc, message["payload"]["$ref"])["type"] == "object"
    on_channels = {
        ref["$ref"] for channel in doc["channels"].values() for ref in channel["messages"].values()
    }
    assert on_channels == {f"#/components/messages/{cls.__name__}" for cls in MESSAGE_TYPES}


def test_channels_reference_existing_messages_and_exchanges(doc: dict[str, Any]) -> None:
    """Every channel's messages resolve, and its exchange is one the topology declares."""
    exchanges = {e.name for e in core_topology().declarations()[0]}
    for channel in doc["channels"].values():
        for ref in channel["messages"].values():
            assert _resolve(doc, ref["$ref"])["contentType"] == "application/json"
        assert channel["bindings"]["amqp"]["exchange"]["name"] in exchanges


def test_operations_reference_existing_channels(doc: dict[str, Any]) -> None:
    """Each operation's channel and messages are $refs that exist, the messages on that channel."""
    assert doc["operations"]
    for operation in doc["operations"].values():
        assert operation["action"] in {"send", "receive"}
        channel_ref = operation["channel"]["$ref"]
        channel = _resolve(doc, channel_ref)
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/")
            assert _resolve(doc, message["$ref"]) in channel["messages"].values()


def test_each_channel_has_a_sender_and_a_receiver(doc: dict[str, Any]) -> None:
    """Every channel is published by one actor and consumed by another."""
    actions: dict[str, set[str]] = {}
    for operation in doc["operations"].values():
        actions.setdefault(operation["channel"]["$ref"], set()).add(operation["action"])
    assert set(actions) == {f"#/channels/{cid}" for cid in doc["channels"]}
    assert all(found == {"send", "receive"} for found in actions.values())


def test_channel_parameters_match_the_address(doc: dict[str, Any]) -> None:
    """A ``{site}`` in a channel address is a declared parameter, and vice versa."""
    for channel in doc["channels"].values():
        address = channel["address"]
        assert {f"{{{name}}}" for name in channel.get("parameters", {})} == {
            part for part in address.split(".") if part.startswith("{")
        }


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=type_name)
def test_route_template_matches_the_real_route(cls: type[Envelope]) -> None:
    """Filling a template's parameters gives the routing key ``route()`` gives a real message."""
    template = route_template(cls)
    fields: dict[str, Any] = {"data": _Filled()}
    probe = cls.model_construct(**fields)
    assert route(probe).exchange == template.exchange
    expected = template.routing_key.replace("{site}", "site-x").replace("{status}", "unknown")
    assert route(probe).routing_key == expected


class _Filled:
    site = "site-x"

    class status:  # noqa: N801 - mimics an enum member's ``.value``
        value = "UNKNOWN"


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    """Every ``$ref`` in the document, schemas included, points at something that exists."""
    refs = set(_refs(doc))
    assert any(ref.startswith("#/components/schemas/") for ref in refs)
    for ref in refs:
        assert isinstance(_resolve(doc, ref), dict), ref


def test_channels_cover_every_message_once() -> None:
    """No message type is on two channels."""
    listed = [cls for channel in channels() for cls in channel.messages]
    assert sorted(c.__name__ for c in listed) == sorted(c.__name__ for c in MESSAGE_TYPES)


def test_export_writes_schemas_and_asyncapi(tmp_path: Path) -> None:
    """``flotilla schemas export DIR`` writes one schema per type, the union and asyncapi.yaml."""
    result = CliRunner().invoke(app, ["schemas", "export", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    expected = {f"{type_name(cls)}.schema.json" for cls in MESSAGE_TYPES}
    expected |= {"message.schema.json", "asyncapi.yaml"}
    assert {p.name for p in out.iterdir()} == expected
    for name in expected - {"asyncapi.yaml"}:
        schema = json.loads((out / name).read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert all(isinstance(_resolve(schema, ref), dict) for ref in _refs(schema))
        assert f"wrote {out / name}" in result.output
    assert yaml.safe_load((out / "asyncapi.yaml").read_text()) == document()
