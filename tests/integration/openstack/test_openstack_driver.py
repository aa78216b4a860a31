"""The OpenStack driver against the real testbed: plans from real TOSCA, checks by tag.

Every plan comes from a template through the scheduler's requirement extraction and its
fit against the site's own capacity report, as a placement decision would carry it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

import pytest

from flotilla.agents.driver import ProvisioningError
from flotilla.agents.openstack import OpenStackDriver
from flotilla.schemas import AttemptRef, Gpu, WorkloadKind
from tests.integration.openstack.conftest import (
    INDIGO_EXAMPLES,
    INDIGO_TEMPLATES,
    LOW_COMPUTE_QUOTAS,
    CloudView,
    admin_settings,
    assert_released,
    order_for,
    plan_for,
    progress,
    release_of,
    resource_ids,
)

pytestmark = [pytest.mark.openstack, pytest.mark.timeout(300)]

INDIGO_IMPORT = """\
tosca_definitions_version: tosca_simple_yaml_1_0
imports:
  - indigo_custom_types: https://raw.githubusercontent.com/indigo-dc/tosca-types/master/custom_types.yaml
"""
PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOKa7bdersht69NIb/7LP/Ydo32AntkeluUyKgZTXa3+ flotilla-test"
)

VM_WITH_VOLUME = """\
tosca_definitions_version: tosca_simple_yaml_1_3
topology_template:
  node_templates:
    server:
      type: tosca.nodes.Compute
      capabilities:
        host:
          properties: {num_cpus: 1, mem_size: 512 MB}
      requirements:
        - local_storage:
            node: data
            relationship:
              type: tosca.relationships.AttachesTo
              properties: {location: /data}
    data:
      type: tosca.nodes.BlockStorage
      properties: {size: 2 GB}
  outputs:
    volume_id:
      value: {get_attribute: [data, volume_id]}
    server_address:
      value: {get_attribute: [server, private_address]}
"""

TWO_WORKERS = (
    INDIGO_IMPORT
    + """\
topology_template:
  node_templates:
    workers:
      type: tosca.nodes.indigo.Compute
      capabilities:
        scalable:
          properties: {count: 2}
        host:
          properties: {num_cpus: 1, mem_size: 512 MB}
        os:
          properties: {distribution: ubuntu, version: 16.04}
  outputs:
    addresses:
      value: {get_attribute: [workers, private_address]}
"""
)

GPU_VM = (
    INDIGO_IMPORT
    + """\
topology_template:
  node_templates:
    trainer:
      type: tosca.nodes.indigo.Compute
      capabilities:
        host:
          properties:
            {num_cpus: 2, mem_size: 8 GB, num_gpus: 1, gpu_vendor: NVIDIA, gpu_model: A100}
        os:
          properties: {distribution: ubuntu, version: 16.04}
  outputs:
    trainer_id:
      value: {get_attribute: [trainer, tosca_id]}
"""
)


def tiny_vms(count: int, *, public: bool = False) -> str:
    """INDIGO compute nodes of the smallest size, ``count`` of them."""
    endpoint = "endpoint: {properties: {network_name: PUBLIC}}" if public else ""
    return (
        INDIGO_IMPORT
        + f"""\
topology_template:
  node_templates:
    vm:
      type: tosca.nodes.indigo.Compute
      capabilities:
        {endpoint}
        scalable:
          properties: {{count: {count}}}
        host:
          properties: {{num_cpus: 1, mem_size: 512 MB}}
"""
    )


async def test_snapshot_reports_flavors_with_gpus_images_and_quotas(
    admin_driver: OpenStackDriver, low_driver: OpenStackDriver
) -> None:
    """Shapes carry GPUs from extra specs and Placement's free counts; quotas come from limits."""
    snapshot = await admin_driver.snapshot()
    capabilities = snapshot.capabilities
    shapes = {shape.name: shape for shape in capabilities.shapes}
    assert {"m1.tiny", "m1.small", "m1.medium", "m1.large", "g1.a100x1", "g1.vgpu1"} <= set(shapes)
    assert shapes["g1.a100x1"].gpu == Gpu(count=1, vendor="nvidia", model="a100")
    assert shapes["g1.vgpu1"].gpu == Gpu(count=1)
    assert shapes["g1.pci-a100x2"].gpu == Gpu(count=2, vendor="nvidia", model="a100")
    assert shapes["m1.tiny"].gpu is None
    assert (shapes["m1.small"].cpus, shapes["m1.small"].memory_mb) == (1, 2048)
    assert shapes["g1.a100x1"].available is not None
    assert shapes["g1.a100x1"].available <= 4
    assert shapes["m1.tiny"].available is not None
    assert shapes["m1.tiny"].available > 0
    assert shapes["g1.pci-a100x2"].available is None  # Placement does not count PCI devices
    assert any(g.vendor == "nvidia" and g.model == "a100" for g in capabilities.gpus)
    assert {WorkloadKind.VIRTUAL_MACHINE, WorkloadKind.VOLUME} <= set(capabilities.workload_kinds)
    images = {image.name: image for image in capabilities.images}
    assert "cirros-fake" in images
    assert images["ubuntu-16.04"].id == images["cirros-fake"].id
    assert images["ubuntu-16.04"].os_distribution == "ubuntu"
    assert capabilities.regions == ["RegionOne"]
    quotas = {q.resource: q for q in snapshot.quotas}
    assert {"cores", "ram_mb", "instances", "volumes", "volume_gb", "floating_ips"} <= set(quotas)

    low = await low_driver.snapshot()
    low_quotas = {q.resource: q.limit for q in low.quotas}
    assert low_quotas["instances"] == LOW_COMPUTE_QUOTAS["instances"]
    assert low_quotas["cores"] == LOW_COMPUTE_QUOTAS["cores"]
    assert low_quotas["floating_ips"] == 0
    # The project may not read Placement (admin only by default): free counts are unknown.
    assert all(shape.available is None for shape in low.capabilities.shapes)


async def test_indigo_single_node_template_completes_with_outputs(
    admin_driver: OpenStackDriver, admin_view: CloudView
) -> None:
    """The catalogue's single VM: a server of the chosen flavor, a floating IP, its outputs."""
    template = (INDIGO_TEMPLATES / "simple-node.yml").read_text()
    plan = await plan_for(admin_driver, template)
    (node,) = plan.nodes
    assert (node.shape, node.image, node.public_address) == ("m1.small", "ubuntu-16.04", True)
    order = order_for(admin_driver, plan)

    result = await admin_driver.provision(order, progress())

    held = await admin_view.held(order)
    (server,) = held["servers"]
    assert server.status == "ACTIVE"
    assert server.flavor["original_name"] == "m1.small"
    (ip,) = held["floating_ips"]
    assert result.outputs["node_ip"] == ip.floating_ip_address
    assert ip.port_id is not None
    assert result.outputs["node_creds"] == {"user": None, "keypair": None}
    assert resource_ids(result, "server") == [server.id]
    nodes = result.outputs["nodes"]
    assert isinstance(nodes, dict)
    assert nodes["simple_node"]["ids"] == [server.id]  # type: ignore[index,call-overload]
    await assert_released(admin_driver, admin_view, order)


async def test_indigo_instance_type_template_opens_its_ports(
    admin_driver: OpenStackDriver, admin_view: CloudView
) -> None:
    """The instance-type example boots with its endpoint ports open and a public address."""
    template = (INDIGO_EXAMPLES / "node_with_instance_type.yaml").read_text()
    plan = await plan_for(admin_driver, template)
    order = order_for(admin_driver, plan)

    result = await admin_driver.provision(order, progress())

    held = await admin_view.held(order)
    (group,) = held["security_groups"]
    opened = {
        (rule["protocol"], rule["port_range_min"])
        for rule in group.security_group_rules
        if rule["direction"] == "ingress"
    }
    assert {("tcp", 22), ("tcp", 9000), ("tcp", 9001)} <= opened
    (server,) = held["servers"]
    assert [g["name"] for g in server.security_groups] == [group.name]
    assert result.outputs["node_ip"] == held["floating_ips"][0].floating_ip_address
    await assert_released(admin_driver, admin_view, order)


async def test_vm_with_volume_gets_it_attached(
    admin_driver: OpenStackDriver, admin_view: CloudView
) -> None:
    """A BlockStorage node becomes a volume attached to its server; outputs name both."""
    plan = await plan_for(admin_driver, VM_WITH_VOLUME)
    order = order_for(admin_driver, plan)

    result = await admin_driver.provision(order, progress())

    held = await admin_view.held(order)
    (server,) = held["servers"]
    (volume,) = held["volumes"]
    assert (volume.size, volume.status) == (2, "in-use")
    assert [a["server_id"] for a in volume.attachments] == [server.id]
    assert result.outputs["volume_id"] == volume.id
    assert result.outputs["server_address"] == [
        a["addr"] for addresses in server.addresses.values() for a in addresses
    ]
    assert resource_ids(result, "volume") == [volume.id]
    await assert_released(admin_driver, admin_view, order)


async def test_scalable_count_gives_two_servers(
    admin_driver: OpenStackDriver, admin_view: CloudView
) -> None:
    """``scalable.count: 2`` makes two servers; the output lists both addresses."""
    plan = await plan_for(admin_driver, TWO_WORKERS)
    order = order_for(admin_driver, plan)

    result = await admin_driver.provision(order, progress())

    held = await admin_view.held(order)
    assert sorted(s.name for s in held["servers"]) == [
        f"flotilla-{order.deployment_id}-1-workers-0",
        f"flotilla-{order.deployment_id}-1-workers-1",
    ]
    assert all(s.status == "ACTIVE" for s in held["servers"])
    addresses = result.outputs["addresses"]
    assert isinstance(addresses, list)
    assert len(set(addresses)) == 2
    await assert_released(admin_driver, admin_view, order)


async def test_gpu_vm_lands_on_the_gpu_flavor(
    admin_driver: OpenStackDriver, admin_view: CloudView
) -> None:
    """An A100 request is fitted to g1.a100x1 and Placement allocates the GPU to it."""
    plan = await plan_for(admin_driver, GPU_VM)
    assert plan.nodes[0].shape == "g1.a100x1"
    order = order_for(admin_driver, plan)

    result = await admin_driver.provision(order, progress())

    held = await admin_view.held(order)
    (server,) = held["servers"]
    assert server.status == "ACTIVE"
    assert server.flavor["original_name"] == "g1.a100x1"
    assert result.outputs["trainer_id"] == server.id
    allocations = await admin_view.call(
        lambda: admin_view.connection.placement.get(
            f"/allocations/{server.id}", microversion="1.28"
        ).json()
    )
    used = {rc for alloc in allocations["allocations"].values() for rc in alloc["resources"]}
    assert "CUSTOM_GPU_NVIDIA_A100" in used
    await assert_released(admin_driver, admin_view, order)


async def test_over_the_instance_quota_fails_with_the_quota_cause_and_rolls_back(
    low_driver: OpenStackDriver, low_view: CloudView
) -> None:
    """Three servers in a project allowed two: quota_exceeded, permanent, nothing left."""
    order = order_for(low_driver, await plan_for(low_driver, tiny_vms(3)))

    with pytest.raises(ProvisioningError) as raised:
        await low_driver.provision(order, progress())

    assert raised.value.code == "quota_exceeded"
    assert not raised.value.retryable
    assert "instances" in raised.value.message.lower()
    assert raised.value.resources == ()
    left = await low_view.held(order)
    assert {kind: items for kind, items in left.items() if items} == {}


async def test_a_floating_ip_over_quota_fails_with_the_quota_cause(
    low_driver: OpenStackDriver, low_view: CloudView
) -> None:
    """A public address in a project without floating IPs fails with quota_exceeded."""
    order = order_for(low_driver, await plan_for(low_driver, tiny_vms(1, public=True)))

    with pytest.raises(ProvisioningError) as raised:
        await low_driver.provision(order, progress())

    assert raised.value.code == "quota_exceeded"
    assert "floatingip" in raised.value.message.lower()
    left = await low_view.held(order)
    assert {kind: items for kind, items in left.items() if items} == {}


async def test_a_kept_last_attempt_is_left_in_place_until_released(
    low_driver: OpenStackDriver, low_view: CloudView
) -> None:
    """keep_on_failure: the failed attempt's server stays, is reported, and release removes it."""
    plan = await plan_for(low_driver, tiny_vms(1, public=True))
    order = order_for(low_driver, plan).model_copy(update={"keep_on_failure": True})

    with pytest.raises(ProvisioningError) as raised:
        await low_driver.provision(order, progress())

    assert raised.value.code == "quota_exceeded"
    kept = await low_view.held(order)
    assert len(kept["servers"]) == 1
    assert any(ref.kind == "server" for ref in raised.value.resources)

    await low_driver.release(release_of(order))
    left = await low_view.held(order)
    assert {kind: items for kind, items in left.items() if items} == {}


async def test_a_flavor_no_host_can_hold_fails_with_no_valid_host(
    admin_view: CloudView,
) -> None:
    """A flavor bigger than any host: the server goes to ERROR, the cause is no_valid_host."""
    name = f"flotilla-it-huge-{uuid.uuid4().hex[:6]}"
    compute = admin_view.connection.compute
    flavor = await admin_view.call(compute.create_flavor, name=name, vcpus=1, ram=400_000, disk=1)
    template = tiny_vms(1).replace("mem_size: 512 MB", "mem_size: 390 GB")
    try:
        async with OpenStackDriver(admin_settings(), site="os-admin") as driver:
            plan = await plan_for(driver, template)
            assert plan.nodes[0].shape == name
            order = order_for(driver, plan)
            with pytest.raises(ProvisioningError) as raised:
                await driver.provision(order, progress())
    finally:
        await admin_view.call(compute.delete_flavor, flavor)

    assert raised.value.code == "no_valid_host"
    assert not raised.value.retryable
    left = await admin_view.held(order)
    assert {kind: items for kind, items in left.items() if items} == {}


async def test_provisioning_again_after_a_cancel_keeps_one_server_per_instance(
    admin_view: CloudView, openstack_env: dict[str, str]
) -> None:
    """A provision cancelled mid-way and run again by a new driver reuses what exists."""
    async with OpenStackDriver(admin_settings(), site="os-admin") as first:
        order = order_for(first, await plan_for(first, TWO_WORKERS))
        running = asyncio.create_task(first.provision(order, progress()))
        async with asyncio.timeout(120):
            while not (await admin_view.held(order))["servers"]:
                assert not running.done(), running
                await asyncio.sleep(0.2)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    before = {s.id for s in (await admin_view.held(order))["servers"]}

    async with OpenStackDriver(admin_settings(), site="os-admin") as second:
        result = await second.provision(order, progress())
        held = await admin_view.held(order)
        names = sorted(s.name for s in held["servers"])
        assert names == sorted(set(names))
        assert len(names) == 2
        assert before <= {s.id for s in held["servers"]}
        assert sorted(resource_ids(result, "server")) == sorted(s.id for s in held["servers"])
        state = await second.status(
            AttemptRef(deployment_id=order.deployment_id, site=order.site, attempt=1)
        )
        assert state is not None
        assert state.phase == "ACTIVE"
        assert state.finished
        await assert_released(second, admin_view, order)


async def test_release_is_safe_to_repeat_and_on_nothing(
    admin_driver: OpenStackDriver, admin_view: CloudView
) -> None:
    """Releasing twice, or releasing an attempt that holds nothing, succeeds."""
    order = order_for(admin_driver, await plan_for(admin_driver, tiny_vms(1)))
    await admin_driver.release(release_of(order))  # nothing made yet
    await admin_driver.provision(order, progress())
    await assert_released(admin_driver, admin_view, order)
    await admin_driver.release(release_of(order))
    state = await admin_driver.status(
        AttemptRef(deployment_id=order.deployment_id, site=order.site, attempt=1)
    )
    assert state is None


async def test_user_key_and_user_data_reach_the_server(
    admin_driver: OpenStackDriver, admin_view: CloudView
) -> None:
    """The user's public key is imported as the server's keypair; user data is passed as is."""
    script = "#!/bin/sh\necho flotilla > /etc/motd\n"
    template = (
        INDIGO_IMPORT
        + f"""\
node_types:
  example.nodes.ScriptedCompute:
    derived_from: tosca.nodes.indigo.Compute
    properties:
      user_data:
        type: string
        required: false
topology_template:
  node_templates:
    box:
      type: example.nodes.ScriptedCompute
      properties:
        user_data: {json.dumps(script)}
        os_users:
          - os_user_name: alice
            os_user_ssh_public_key: {PUBLIC_KEY}
      capabilities:
        host:
          properties: {{num_cpus: 1, mem_size: 512 MB}}
  outputs:
    login:
      value: {{get_attribute: [box, endpoint, credential, 0]}}
"""
    )
    order = order_for(admin_driver, await plan_for(admin_driver, template))

    result = await admin_driver.provision(order, progress())

    held = await admin_view.held(order)
    (keypair,) = held["keypairs"]
    stored = await admin_view.call(admin_view.connection.compute.get_keypair, keypair.name)
    assert stored.public_key.split()[:2] == PUBLIC_KEY.split()[:2]
    (server,) = held["servers"]
    assert server.key_name == keypair.name
    assert base64.b64decode(server.user_data).decode() == script
    assert result.outputs["login"] == {"user": "alice", "keypair": keypair.name}
    await assert_released(admin_driver, admin_view, order)


async def test_template_network_and_port_give_the_server_its_nic(
    admin_driver: OpenStackDriver, admin_view: CloudView
) -> None:
    """A Network with a CIDR is created; the Port bound to the server puts its NIC there."""
    template = """\
tosca_definitions_version: tosca_simple_yaml_1_3
topology_template:
  node_templates:
    lan:
      type: tosca.nodes.network.Network
      properties: {cidr: 192.168.77.0/24, ip_version: 4}
    lan_port:
      type: tosca.nodes.network.Port
      properties: {order: 0}
      requirements:
        - binding: box
        - link: lan
    box:
      type: tosca.nodes.Compute
      capabilities:
        host:
          properties: {num_cpus: 1, mem_size: 512 MB}
  outputs:
    address:
      value: {get_attribute: [box, private_address]}
"""
    order = order_for(admin_driver, await plan_for(admin_driver, template))

    result = await admin_driver.provision(order, progress())

    held = await admin_view.held(order)
    (network,) = held["networks"]
    (server,) = held["servers"]
    assert list(server.addresses) == [network.name]
    (address,) = result.outputs["address"]  # type: ignore[misc]
    assert str(address).startswith("192.168.77.")
    await assert_released(admin_driver, admin_view, order)
