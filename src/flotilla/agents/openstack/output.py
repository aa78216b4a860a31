"""A completed attempt's outputs: per-node facts, and the template's outputs filled from them.

The scheduler passes the template's outputs with deploy-time functions left as written,
e.g. ``{"get_attribute": ["simple_node", "public_address", 0]}``. The attributes a site knows
after provisioning are filled here: ``public_address``, ``private_address`` (and their
``*_ip`` spellings) and ``ip_address`` as lists, as INDIGO declares them; ``tosca_id``/``id``,
``tosca_name``/``name`` and ``volume_id`` as a string for a single instance (a list for
several); ``endpoint`` with ``ip_address`` or ``credential`` (the login user and keypair
name, never a private key). An index picks one instance. ``concat`` joins what it can;
anything unknown becomes null.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import JsonValue

NODES_KEY: Final = "nodes"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFacts:
    """What one node became: ids, names and addresses of its instances, in instance order."""

    kind: Literal["server", "volume"] = "server"
    ids: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    private_addresses: tuple[str, ...] = ()
    public_addresses: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    user: str | None = None
    keypair: str | None = None
    extra: Mapping[str, JsonValue] = field(default_factory=dict)

    def summary(self) -> dict[str, JsonValue]:
        """The facts as an output value."""
        found: dict[str, JsonValue] = {"ids": list(self.ids), "names": list(self.names)}
        if self.kind == "server":
            found["private_address"] = list(self.private_addresses)
            found["public_address"] = list(self.public_addresses)
        if self.volumes:
            found["volumes"] = list(self.volumes)
        found.update(self.extra)
        return found

    def attribute(self, name: str, rest: Sequence[JsonValue]) -> JsonValue:
        """The value of ``get_attribute: [node, name, *rest]``."""
        if name in ("public_address", "public_ip"):
            return _index(list(self.public_addresses), rest)
        if name in ("private_address", "private_ip"):
            return _index(list(self.private_addresses), rest)
        if name == "ip_address":
            return _index(list(self.public_addresses or self.private_addresses), rest)
        if name in ("tosca_id", "id", "volume_id"):
            return _single(list(self.ids), rest)
        if name in ("tosca_name", "name"):
            return _single(list(self.names), rest)
        if name == "endpoint":
            return self._endpoint(rest)
        return None

    def _endpoint(self, rest: Sequence[JsonValue]) -> JsonValue:
        what = rest[0] if rest else None
        if what == "credential":
            credential: JsonValue = {"user": self.user, "keypair": self.keypair}
            return credential if len(rest) < 2 or isinstance(rest[1], int) else None
        if what == "ip_address":
            return self.attribute("ip_address", rest[1:])
        return None


def fill_outputs(
    outputs: Mapping[str, JsonValue], facts: Mapping[str, NodeFacts]
) -> dict[str, JsonValue]:
    """The template's outputs with node attributes filled, plus the facts under ``nodes``.

    A template output named ``nodes`` keeps its own value.
    """
    filled = {name: resolve(value, facts) for name, value in outputs.items()}
    filled.setdefault(NODES_KEY, {name: f.summary() for name, f in facts.items()})
    return filled


def resolve(value: JsonValue, facts: Mapping[str, NodeFacts]) -> JsonValue:
    """One output value with the functions this site can answer evaluated."""
    if isinstance(value, list):
        return [resolve(item, facts) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        return {key: resolve(item, facts) for key, item in value.items()}
    (function, args), *_ = value.items()
    if function == "get_attribute" and isinstance(args, list) and len(args) >= 2:
        node = facts.get(str(args[0]))
        return node.attribute(str(args[1]), args[2:]) if node is not None else None
    if function == "concat" and isinstance(args, list):
        parts = [resolve(arg, facts) for arg in args]
        return None if any(p is None for p in parts) else "".join(_text(p) for p in parts)
    if function.startswith(("get_", "token", "join")):
        return None
    return {function: resolve(args, facts)}


def _index(values: list[str], rest: Sequence[JsonValue]) -> JsonValue:
    if not rest:
        return list(values)
    position = rest[0]
    if isinstance(position, int) and -len(values) <= position < len(values):
        return values[position]
    return None


def _single(values: list[str], rest: Sequence[JsonValue]) -> JsonValue:
    """A string attribute: the value itself for one instance, else one value per instance."""
    if not rest and len(values) == 1:
        return values[0]
    return _index(values, rest)


def _text(value: JsonValue) -> str:
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return "" if value is None else str(value)
