"""The AsyncAPI 3.0 description of the Flotilla bus, generated from the models and the topology.

Nothing here is written by hand per message: channels come from ``route()`` applied to a
probe of each message type (so a routing key's variable parts become ``{site}``-style
parameters), payloads from the pydantic models, and who sends and receives from the
exchange a message travels on.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Self

from pydantic.json_schema import models_json_schema

import flotilla
from flotilla.broker import topology
from flotilla.broker.topology import COMMANDS, EVENTS, REPORTS, REQUESTS, core_topology, route
from flotilla.bus import Route
from flotilla.schemas import MESSAGE_ADAPTER, MESSAGE_TYPES, DeploymentStatus, Envelope, type_name

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_SCHEMA_REF = "#/components/schemas/{model}"

# Who publishes on each exchange and who consumes from it: the trust model of the bus.
ACTORS: dict[str, tuple[str, str]] = {
    REQUESTS: ("upstream service", "scheduler"),
    COMMANDS: ("scheduler", "site agent"),
    REPORTS: ("site agent", "scheduler"),
    EVENTS: ("scheduler", "event consumer"),
}
_PARAMETERS: dict[str, dict[str, Any]] = {
    "site": {"description": "Site name: lowercase letters, digits and inner hyphens."},
    "status": {
        "description": "The new deployment status, lowercased.",
        "enum": [status.value.lower() for status in DeploymentStatus],
    },
}


class _Parameter(str):
    """A routing-key parameter that reads as ``{name}`` wherever ``route()`` formats it."""

    __slots__ = ()

    def __new__(cls, name: str) -> Self:
        return super().__new__(cls, "{" + name + "}")

    @property
    def value(self) -> Self:
        # Enum-valued fields (e.g. ``status``) are formatted through ``.value``.
        return self

    def lower(self) -> Self:
        return self


class _Probe:
    """Stands in for a message's payload: every field is a routing-key parameter."""

    def __getattr__(self, name: str) -> _Parameter:
        return _Parameter(name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Channel:
    """One exchange and routing-key template, and the message types sent on it."""

    id: str
    route: Route
    messages: tuple[type[Envelope], ...]

    @property
    def parameters(self) -> list[str]:
        """The ``{name}`` parameters of the routing key, in order."""
        return re.findall(r"\{(\w+)\}", self.route.routing_key)


def route_template(cls: type[Envelope]) -> Route:
    """The route of a message type, with its variable parts as ``{name}`` parameters."""
    fields: dict[str, Any] = {"data": _Probe()}  # unvalidated: the probe is not a payload
    return route(cls.model_construct(**fields))


def channels() -> list[Channel]:
    """One channel per exchange and routing-key template, in message-type order."""
    grouped: dict[tuple[str, str], list[type[Envelope]]] = {}
    for cls in MESSAGE_TYPES:
        template = route_template(cls)
        grouped.setdefault((template.exchange, template.routing_key), []).append(cls)
    return [
        Channel(
            id=_channel_id(exchange, key),
            route=Route(exchange=exchange, routing_key=key),
            messages=tuple(classes),
        )
        for (exchange, key), classes in grouped.items()
    ]


def message_json_schemas() -> dict[str, dict[str, Any]]:
    """A standalone JSON Schema per message type, keyed by type, plus ``message`` (the union)."""
    schemas = {
        type_name(cls): _standalone(cls.model_json_schema(), type_name(cls))
        for cls in MESSAGE_TYPES
    }
    schemas["message"] = _standalone(MESSAGE_ADAPTER.json_schema(), "message")
    return schemas


def document(*, host: str = "localhost:5672", vhost: str = "/") -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the bus, as a JSON-compatible dict."""
    all_channels = channels()
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Flotilla bus",
            "version": flotilla.__version__,
            "description": inspect.getdoc(topology) or "",
        },
        "defaultContentType": "application/json",
        "servers": {"rabbitmq": _server(host)},
        "channels": {c.id: _channel(c, vhost) for c in all_channels},
        "operations": dict(_operations(all_channels)),
        "components": {"messages": _messages(), "schemas": _schemas()},
    }


def _channel_id(exchange: str, routing_key: str) -> str:
    # ``$`` marks a parameter and is safe in a URI fragment, unlike braces.
    key = re.sub(r"\{(\w+)\}", r"$\1", routing_key)
    return f"{exchange.removeprefix('flotilla.')}.{key}"


def _server(host: str) -> dict[str, Any]:
    return {
        "host": host,
        "protocol": "amqp",
        "protocolVersion": "0-9-1",
        "description": "RabbitMQ. Sites log in as flotilla-site-<site> with topic permissions "
        "limited to their own routing keys; the broker validates the user_id property.",
    }


def _channel(channel: Channel, vhost: str) -> dict[str, Any]:
    sender, receiver = ACTORS[channel.route.exchange]
    spec: dict[str, Any] = {
        "address": channel.route.routing_key,
        "title": f"{channel.route.exchange} {channel.route.routing_key}",
        "description": f"Published by the {sender} on {channel.route.exchange}, "
        f"consumed by the {receiver}.",
        "messages": {
            cls.__name__: {"$ref": f"#/components/messages/{cls.__name__}"}
            for cls in channel.messages
        },
        "bindings": {"amqp": _exchange_binding(channel.route.exchange, vhost)},
    }
    if channel.parameters:
        spec["parameters"] = {name: _PARAMETERS.get(name, {}) for name in channel.parameters}
    return spec


def _exchange_binding(exchange: str, vhost: str) -> dict[str, Any]:
    declared = {e.name: e for e in core_topology().declarations()[0]}
    return {
        "is": "routingKey",
        "exchange": {
            "name": exchange,
            "type": declared[exchange].type.value,
            "durable": True,
            "autoDelete": False,
            "vhost": vhost,
        },
        "bindingVersion": AMQP_BINDING_VERSION,
    }


def _operations(all_channels: Iterable[Channel]) -> Iterable[tuple[str, dict[str, Any]]]:
    for channel in all_channels:
        sender, receiver = ACTORS[channel.route.exchange]
        for action, actor in (("send", sender), ("receive", receiver)):
            op_id = f"{_camel(actor)}{action.title()}.{channel.id}"
            yield op_id, _operation(channel, action, actor)


def _operation(channel: Channel, action: str, actor: str) -> dict[str, Any]:
    ref = f"#/channels/{channel.id}"
    verb = "publishes" if action == "send" else "consumes"
    operation: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": ref},
        "summary": f"The {actor} {verb} {', '.join(type_name(c) for c in channel.messages)}.",
        "tags": [{"name": actor}],
        "messages": [{"$ref": f"{ref}/messages/{cls.__name__}"} for cls in channel.messages],
    }
    if action == "send":
        # Persistent, mandatory (unroutable is an error) and confirmed; user_id is validated.
        binding = {"deliveryMode": 2, "mandatory": True, "bindingVersion": AMQP_BINDING_VERSION}
    else:
        binding = {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}
    operation["bindings"] = {"amqp": binding}
    return operation


def _messages() -> dict[str, Any]:
    return {
        cls.__name__: {
            "name": type_name(cls),
            "title": cls.__name__,
            "summary": inspect.getdoc(cls) or "",
            "contentType": "application/json",
            "payload": {"$ref": _SCHEMA_REF.format(model=cls.__name__)},
            "bindings": {
                "amqp": {"messageType": type_name(cls), "bindingVersion": AMQP_BINDING_VERSION}
            },
        }
        for cls in MESSAGE_TYPES
    }


def _schemas() -> dict[str, Any]:
    _, top = models_json_schema(
        [(cls, "validation") for cls in MESSAGE_TYPES], ref_template=_SCHEMA_REF
    )
    schemas: dict[str, Any] = top.get("$defs", {})
    return schemas


def _standalone(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": f"{name}.schema.json", **schema}


def _camel(words: str) -> str:
    first, *rest = words.split()
    return first + "".join(word.title() for word in rest)
