"""Names and tags of one attempt's resources, and how they are recognised again."""

from __future__ import annotations

from flotilla.agents.driver import attempt_tag
from flotilla.agents.openstack.naming import AttemptNames, instance_of

DEPLOYMENT = "0b5e8a53-6f5c-4a4e-9d5e-0d6b7c2f7a10"


def test_every_name_starts_with_the_attempt_tag() -> None:
    """Servers, volumes, groups, keypairs and networks are named after the attempt and node."""
    names = AttemptNames(deployment_id=DEPLOYMENT, attempt=2)
    tag = attempt_tag(DEPLOYMENT, 2)
    assert names.tag == tag
    assert names.tags == [tag, f"flotilla-{DEPLOYMENT}"]
    assert names.server("web", 1) == f"{tag}-web-1"
    assert names.volume("data", 0) == f"{tag}-data-0"
    assert names.security_group("web") == f"{tag}-web"
    assert names.keypair("web") == f"{tag}-web"
    assert names.network("lan") == f"{tag}-lan"
    assert all(len(t) <= 60 for t in names.tags)  # nova's limit on a tag


def test_attempt_one_does_not_claim_attempt_ten() -> None:
    """Name prefixes never let one attempt find another's resources."""
    first = AttemptNames(deployment_id=DEPLOYMENT, attempt=1)
    tenth = AttemptNames(deployment_id=DEPLOYMENT, attempt=10)
    assert first.owns(first.server("web", 0))
    assert not first.owns(tenth.server("web", 0))
    assert not tenth.owns(first.keypair("web"))
    assert not first.owns(None)


def test_metadata_names_node_and_instance() -> None:
    """Metadata written at creation gives back the node and instance index."""
    names = AttemptNames(deployment_id=DEPLOYMENT, attempt=1)
    assert instance_of(names.metadata("web", 3)) == ("web", 3)
    assert instance_of(names.metadata("data")) == ("data", 0)
    assert instance_of({"other": "x"}) is None
    assert instance_of({"flotilla_node": "web", "flotilla_index": "x"}) is None
