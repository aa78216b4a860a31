"""Template outputs filled from what the attempt made."""

from __future__ import annotations

from flotilla.agents.openstack.output import NodeFacts, fill_outputs, resolve

FACTS = {
    "web": NodeFacts(
        ids=("s0", "s1"),
        names=("n0", "n1"),
        private_addresses=("10.0.0.5", "10.0.0.6"),
        public_addresses=("172.24.4.10",),
        user="alice",
        keypair="key-web",
    ),
    "data": NodeFacts(ids=("v0",), names=("d0",)),
}


def test_get_attribute_answers_addresses_ids_and_credentials() -> None:
    """Addresses index by instance; credentials name the user and keypair, never a secret."""
    assert resolve({"get_attribute": ["web", "public_address", 0]}, FACTS) == "172.24.4.10"
    assert resolve({"get_attribute": ["web", "private_address"]}, FACTS) == ["10.0.0.5", "10.0.0.6"]
    assert resolve({"get_attribute": ["web", "private_address", 5]}, FACTS) is None
    assert resolve({"get_attribute": ["web", "tosca_id"]}, FACTS) == ["s0", "s1"]
    assert resolve({"get_attribute": ["data", "volume_id"]}, FACTS) == "v0"
    assert resolve({"get_attribute": ["web", "tosca_id", 1]}, FACTS) == "s1"
    assert resolve({"get_attribute": ["web", "endpoint", "credential", 0]}, FACTS) == {
        "user": "alice",
        "keypair": "key-web",
    }
    assert resolve({"get_attribute": ["nope", "public_address"]}, FACTS) is None


def test_concat_joins_and_unknown_functions_are_null() -> None:
    """concat builds URLs from addresses; functions the site cannot answer become null."""
    url = {"concat": ["http://", {"get_attribute": ["web", "public_address", 0]}, ":8888"]}
    assert resolve(url, FACTS) == "http://172.24.4.10:8888"
    assert resolve({"get_operation_output": ["web", "x", "y", "z"]}, FACTS) is None
    assert resolve({"a": 1, "b": [2, {"get_attribute": ["web", "name", 1]}]}, FACTS) == {
        "a": 1,
        "b": [2, "n1"],
    }


def test_fill_outputs_adds_the_node_facts() -> None:
    """Every output is resolved and the per-node facts travel under ``nodes``."""
    filled = fill_outputs({"ip": {"get_attribute": ["web", "public_address", 0]}}, FACTS)
    assert filled["ip"] == "172.24.4.10"
    nodes = filled["nodes"]
    assert isinstance(nodes, dict)
    assert nodes["web"] == {
        "ids": ["s0", "s1"],
        "names": ["n0", "n1"],
        "private_address": ["10.0.0.5", "10.0.0.6"],
        "public_address": ["172.24.4.10"],
    }
    assert fill_outputs({"nodes": "mine"}, FACTS)["nodes"] == "mine"
