"""Node type to workload kind, and the requirements of each kind of node."""

from __future__ import annotations

from typing import Any

from flotilla.scheduler.tosca.job import batch_requirements, container_requirements
from flotilla.scheduler.tosca.reader import (
    Reader,
    count_of,
    gpu_of,
    port_spec,
    properties_of,
    split_ports,
    text_of,
)
from flotilla.scheduler.tosca.requirement import (
    NodeRequirements,
    OsImage,
    PortRange,
    VolumeAttachment,
)
from flotilla.scheduler.tosca.topology import NodeSpec, Topology
from flotilla.schemas import Port, Resources, WorkloadKind

# First rule whose type is in the node's ancestry wins; the specific types come first.
KIND_RULES: tuple[tuple[tuple[str, ...], WorkloadKind], ...] = (
    (
        (
            "tosca.nodes.flotilla.ContainerApplication",
            "tosca.nodes.indigo.Container.Application.Docker.Marathon",
        ),
        WorkloadKind.CONTAINER_APPLICATION,
    ),
    (
        (
            "tosca.nodes.flotilla.ContainerJob",
            "tosca.nodes.indigo.Container.Application.Docker.Chronos",
        ),
        WorkloadKind.CONTAINER_JOB,
    ),
    (("tosca.nodes.flotilla.BatchJob", "tosca.nodes.indigo.Qcg.Job"), WorkloadKind.BATCH_JOB),
    (("tosca.nodes.Compute",), WorkloadKind.VIRTUAL_MACHINE),
    (("tosca.nodes.BlockStorage",), WorkloadKind.VOLUME),
    (("tosca.nodes.network.Network", "tosca.nodes.network.Port"), WorkloadKind.NETWORK),
)


def kind_of(node: NodeSpec) -> WorkloadKind:
    """The workload kind of a node; software hosted on something else by default."""
    for types, kind in KIND_RULES:
        if node.is_a(*types):
            return kind
    return WorkloadKind.SOFTWARE_COMPONENT


def node_requirements(read: Reader, topology: Topology) -> NodeRequirements:
    """What one node needs, read through ``read`` (which collects problems)."""
    node = read.node
    kind = kind_of(node)
    base: dict[str, Any] = {
        "name": node.name,
        "type": node.type,
        "kind": kind,
        "depends_on": tuple(dict.fromkeys(r.target for r in node.requirements if r.target)),
    }
    if kind is WorkloadKind.VIRTUAL_MACHINE:
        return NodeRequirements(**base, **_virtual_machine(read, topology))
    if kind is WorkloadKind.VOLUME:
        size = read.size_gb("size")
        return NodeRequirements(**base, resources=Resources(cpus=0, disk_gb=size or 0))
    if kind in (WorkloadKind.CONTAINER_APPLICATION, WorkloadKind.CONTAINER_JOB):
        return NodeRequirements(**base, **container_requirements(read, topology))
    if kind is WorkloadKind.BATCH_JOB:
        return NodeRequirements(**base, **batch_requirements(read))
    hosts = node.targets("host") or node.targets("lrms")  # INDIGO hosts software via lrms
    return NodeRequirements(
        **base, host=hosts[0] if hosts else None, properties=properties_of(read)
    )


def _virtual_machine(read: Reader, topology: Topology) -> dict[str, Any]:
    resources = Resources(
        cpus=read.number("capabilities.host.num_cpus", minimum=1) or 1,
        memory_mb=read.size_mb("capabilities.host.mem_size") or 0,
        disk_gb=read.size_gb("capabilities.host.disk_size") or 0,
        gpu=gpu_of(
            read,
            "capabilities.host.num_gpus",
            "capabilities.host.gpu_vendor",
            "capabilities.host.gpu_model",
        ),
        infiniband=bool(read.boolean("capabilities.host.infiniband_support")),
    )
    properties = properties_of(read)
    for hint in ("instance_type", "preemtible_instance", "sgx"):
        found = read.raw(f"capabilities.host.{hint}")
        if found not in (None, ""):
            properties[hint] = found
    return {
        "count": count_of(read),
        "resources": resources,
        "image": _os_image(read),
        **_endpoint_ports(read),
        "public_address": read.text("capabilities.endpoint.network_name") == "PUBLIC",
        "volumes": _volumes(read, topology),
        "properties": properties,
    }


def _os_image(read: Reader) -> OsImage | None:
    image = OsImage(
        name=read.text("capabilities.os.image"),
        type=read.text("capabilities.os.type"),
        distribution=read.text("capabilities.os.distribution"),
        version=read.text("capabilities.os.version"),
        architecture=read.text("capabilities.os.architecture"),
        gpu_driver=read.boolean("capabilities.os.gpu_driver"),
    )
    return None if image == OsImage() else image


def _endpoint_ports(read: Reader) -> dict[str, Any]:
    specs = read.raw("capabilities.endpoint.ports")
    found: list[Port | PortRange] = []
    for name, spec in specs.items() if isinstance(specs, dict) else ():
        found.extend(port_spec(read, f"capabilities.endpoint.ports.{name}", spec))
    single = read.integer("capabilities.endpoint.port", minimum=1)
    if single is not None:
        spec = {"source": single, "protocol": read.text("capabilities.endpoint.protocol")}
        found.extend(port_spec(read, "capabilities.endpoint.port", spec))
    return split_ports(found)


def _volumes(read: Reader, topology: Topology) -> tuple[VolumeAttachment, ...]:
    volumes = []
    for requirement in read.node.requirements:
        target = topology.node(requirement.target or "")
        if requirement.name != "local_storage" or target is None:
            continue
        properties = requirement.relationship.get("properties") or {}
        target_read = read.sibling(target)
        volumes.append(
            VolumeAttachment(
                node=target.name,
                size_gb=target_read.size_gb("size"),
                location=text_of(properties.get("location")),
                device=text_of(properties.get("device")),
            )
        )
    return tuple(volumes)
