"""Site plans become the servers, volumes, groups, keys and networks of one attempt."""

from __future__ import annotations

import base64

import pytest

from flotilla.agents.driver import ProvisioningError
from flotilla.agents.openstack.blueprint import Nic, Rule, build_blueprint
from flotilla.agents.openstack.config import OpenStackSettings
from flotilla.agents.openstack.naming import AttemptNames
from flotilla.schemas import PlannedNode, Port, Resources, SitePlan, WorkloadKind

VM = WorkloadKind.VIRTUAL_MACHINE
NAMES = AttemptNames(deployment_id="0b5e8a53-6f5c-4a4e-9d5e-0d6b7c2f7a10", attempt=1)
SETTINGS = OpenStackSettings(
    cloud="c",
    network="private",
    external_network="public",
    images={"ubuntu-22.04": "Ubuntu 22.04 LTS"},
)


def _plan(*nodes: PlannedNode) -> SitePlan:
    return SitePlan(nodes=list(nodes), group="g")


def _vm(name: str = "web", **fields: object) -> PlannedNode:
    return PlannedNode.model_validate(
        {"name": name, "kind": VM, "shape": "m1.small", "image": "ubuntu-22.04", **fields}
    )


def test_count_gives_one_server_per_instance_with_flavor_image_and_group() -> None:
    """Each instance is a server with the plan's flavor, the site's image and the node's group."""
    blueprint = build_blueprint(_plan(_vm(count=2, ports=[Port(port=8888)])), NAMES, SETTINGS)
    assert [s.name for s in blueprint.servers] == [NAMES.server("web", 0), NAMES.server("web", 1)]
    server = blueprint.servers[0]
    assert (server.flavor, server.image, server.security_group) == (
        "m1.small",
        "Ubuntu 22.04 LTS",
        NAMES.security_group("web"),
    )
    assert server.nics == (Nic(network="private"),)
    assert server.metadata["flotilla_index"] == "0"
    (group,) = blueprint.security_groups
    assert group.rules == (Rule(protocol="tcp", port=22), Rule(protocol="tcp", port=8888))


def test_volumes_follow_the_instances_of_their_server() -> None:
    """A block-storage node attached to a scaled node gives one volume per instance."""
    disk = PlannedNode(
        name="data", kind=WorkloadKind.VOLUME, resources=Resources(disk_gb=10), attached_to="web"
    )
    blueprint = build_blueprint(_plan(_vm(count=2), disk), NAMES, SETTINGS)
    assert [(v.name, v.size_gb, v.server) for v in blueprint.volumes] == [
        (NAMES.volume("data", 0), 10, NAMES.server("web", 0)),
        (NAMES.volume("data", 1), 10, NAMES.server("web", 1)),
    ]


def test_public_key_user_and_user_data_come_from_properties() -> None:
    """An INDIGO os_users key becomes a keypair; user_data is passed base64-encoded."""
    properties = {
        "os_users": [{"os_user_name": "alice", "os_user_ssh_public_key": "ssh-ed25519 AAAA alice"}],
        "user_data": "#!/bin/sh\necho hi\n",
    }
    blueprint = build_blueprint(_plan(_vm(properties=properties)), NAMES, SETTINGS)
    (key,) = blueprint.keypairs
    assert (key.name, key.public_key) == (NAMES.keypair("web"), "ssh-ed25519 AAAA alice")
    server = blueprint.servers[0]
    assert server.keypair == key.name
    assert base64.b64decode(server.user_data or "").decode() == "#!/bin/sh\necho hi\n"
    assert blueprint.users == {"web": "alice"}


def test_cloud_config_mapping_becomes_cloud_config_user_data() -> None:
    """A cloud_config mapping is sent as a #cloud-config document."""
    blueprint = build_blueprint(
        _plan(_vm(properties={"cloud_config": {"packages": ["git"]}})), NAMES, SETTINGS
    )
    text = base64.b64decode(blueprint.servers[0].user_data or "").decode()
    assert text.startswith("#cloud-config\n")
    assert "- git" in text


def test_ports_order_nics_and_a_public_network_means_a_floating_ip() -> None:
    """TOSCA ports give NICs in order; a created network is made; a public one is a floating IP."""
    lan = PlannedNode(name="lan", kind=WorkloadKind.NETWORK, properties={"cidr": "10.9.0.0/24"})
    wan = PlannedNode(name="wan", kind=WorkloadKind.NETWORK, properties={"network_type": "public"})
    lan_port = PlannedNode(
        name="p0", kind=WorkloadKind.NETWORK, depends_on=["web", "lan"], properties={"order": 1}
    )
    wan_port = PlannedNode(
        name="p1", kind=WorkloadKind.NETWORK, depends_on=["web", "wan"], properties={"order": 0}
    )
    default = PlannedNode(name="priv", kind=WorkloadKind.NETWORK, properties={})
    priv_port = PlannedNode(
        name="p2", kind=WorkloadKind.NETWORK, depends_on=["web", "priv"], properties={"order": 0}
    )
    blueprint = build_blueprint(
        _plan(_vm(), lan, wan, lan_port, wan_port, default, priv_port), NAMES, SETTINGS
    )
    (network,) = blueprint.networks
    assert (network.node, network.cidr) == ("lan", "10.9.0.0/24")
    server = blueprint.servers[0]
    assert server.nics == (Nic(network="private"), Nic(created="lan"))
    assert server.public


def test_software_components_create_nothing() -> None:
    """Software hosted on a server is someone else's job at an OpenStack site."""
    app = PlannedNode(name="app", kind=WorkloadKind.SOFTWARE_COMPONENT, depends_on=["web"])
    blueprint = build_blueprint(_plan(_vm(), app), NAMES, SETTINGS)
    assert blueprint.skipped == ("app",)
    assert len(blueprint.servers) == 1


@pytest.mark.parametrize(
    ("node", "settings", "fragment"),
    [
        (_vm(shape=None), SETTINGS, "names no flavor"),
        (_vm(image=None), SETTINGS, "no default_image"),
        (
            _vm(public_address=True),
            SETTINGS.model_copy(update={"external_network": None}),
            "external_network",
        ),
        (
            PlannedNode(name="job", kind=WorkloadKind.BATCH_JOB),
            SETTINGS,
            "runs no job",
        ),
    ],
)
def test_plans_the_site_cannot_run_are_refused_before_anything_is_made(
    node: PlannedNode, settings: OpenStackSettings, fragment: str
) -> None:
    """A missing flavor, image or external network, or a foreign kind, is a clear refusal."""
    with pytest.raises(ProvisioningError) as raised:
        build_blueprint(_plan(node), NAMES, settings)
    assert fragment in raised.value.message
    assert not raised.value.retryable


def test_instance_type_stands_in_for_a_missing_shape_and_default_image_for_a_missing_image() -> (
    None
):
    """Without a shape the node's instance_type is used; without an image the site default."""
    settings = SETTINGS.model_copy(update={"default_image": "cirros"})
    node = _vm(shape=None, image=None, properties={"instance_type": "m1.large"})
    server = build_blueprint(_plan(node), NAMES, settings).servers[0]
    assert (server.flavor, server.image) == ("m1.large", "cirros")
