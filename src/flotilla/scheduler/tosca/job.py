"""Requirements of container applications, container jobs and batch jobs.

Flotilla's own types carry their resources as properties. INDIGO's Marathon and Chronos apps
take theirs from the ``host`` capability of the Docker runtime node they are hosted on, and
INDIGO's ``Qcg.Job`` describes cores, memory and nodes in its own vocabulary.
"""

from __future__ import annotations

import math
from typing import Any

from flotilla.scheduler.tosca.reader import (
    Reader,
    count_of,
    gpu_of,
    port_spec,
    properties_of,
    split_ports,
)
from flotilla.scheduler.tosca.requirement import PortRange
from flotilla.scheduler.tosca.topology import Topology
from flotilla.schemas import Port, Resources

_FLOTILLA = "tosca.nodes.flotilla.Workload"
_WORKLOAD_SETTINGS = ("command", "arguments", "environment")


def container_requirements(read: Reader, topology: Topology) -> dict[str, Any]:
    """Requirements of a container application or job, Flotilla's or INDIGO's."""
    if read.node.is_a(_FLOTILLA):
        return _flotilla_container(read)
    hosts = read.node.targets("host")
    runtime = topology.node(hosts[0]) if hosts else None
    host = read.sibling(runtime) if runtime is not None else None
    properties = properties_of(read)
    if "environment_variables" in properties:
        properties["environment"] = properties.pop("environment_variables")
    if isinstance(properties.get("command"), str):
        properties["command"] = ["/bin/sh", "-c", properties["command"]]
    return {
        "count": count_of(host) if host else 1,
        "resources": _runtime_resources(host),
        "container_image": read.artifact("image") or read.text("image"),
        **(ports := _published_ports(host)),
        "public_address": bool(ports["ports"] or ports["port_ranges"]),
        "host": runtime.name if runtime else None,
        "properties": properties,
    }


def _runtime_resources(host: Reader | None) -> Resources:
    if host is None:
        return Resources()
    return Resources(
        cpus=host.number("capabilities.host.num_cpus") or 1,
        memory_mb=host.size_mb("capabilities.host.mem_size") or 0,
        gpu=gpu_of(
            host,
            "capabilities.host.num_gpus",
            "capabilities.host.gpu_vendor",
            "capabilities.host.gpu_model",
        ),
    )


def _published_ports(host: Reader | None) -> dict[str, Any]:
    specs = host.raw("capabilities.host.publish_ports") if host else None
    found: list[Port | PortRange] = []
    if host is None or not isinstance(specs, list):
        return split_ports(found)
    for index, spec in enumerate(specs):
        found.extend(port_spec(host, f"capabilities.host.publish_ports[{index}]", spec))
    return split_ports(found)


def _flotilla_resources(read: Reader) -> Resources:
    return Resources(
        cpus=1 if (cpus := read.number("cpus")) is None else cpus,
        memory_mb=read.size_mb("memory") or 0,
        disk_gb=read.size_gb("disk") or 0,
        gpu=gpu_of(read, "gpus", "gpu_vendor", "gpu_model"),
        infiniband=bool(read.boolean("infiniband")),
    )


def _flotilla_container(read: Reader) -> dict[str, Any]:
    application = read.node.is_a("tosca.nodes.flotilla.ContainerApplication")
    specs = read.raw("ports")
    found: list[Port | PortRange] = []
    for index, spec in enumerate(specs if isinstance(specs, list) else ()):
        # Flotilla's Port says port/source (CIDR); INDIGO's PortSpec says source/remote_cidr.
        indigo = _as_indigo_port(spec)
        found.extend(port_spec(read, f"ports[{index}]", indigo))
    count = read.integer("replicas" if application else "parallelism")
    properties = properties_of(read, *_WORKLOAD_SETTINGS, "completions", "retries")
    wall_time = read.duration("wall_time")
    if wall_time is not None:
        properties["wall_time_seconds"] = wall_time.total_seconds()
    return {
        "count": 1 if count is None else count,
        "resources": _flotilla_resources(read),
        "container_image": read.text("image"),
        **split_ports(found),
        "public_address": bool(read.boolean("public")),
        "properties": properties,
    }


def _as_indigo_port(spec: Any) -> Any:
    if not isinstance(spec, dict):
        return spec
    return {
        "source": spec.get("port"),
        "protocol": spec.get("protocol"),
        "remote_cidr": spec.get("source"),
    }


def batch_requirements(read: Reader) -> dict[str, Any]:
    """Requirements of a batch job: Flotilla's ``BatchJob`` or INDIGO's ``Qcg.Job``."""
    if read.node.is_a(_FLOTILLA):
        properties = properties_of(read, *_WORKLOAD_SETTINGS, "script", "partition", "account")
        properties |= properties_of(read, "working_directory")
        nodes = read.integer("nodes", minimum=1)
        return {
            "count": nodes or 1,
            "resources": _flotilla_resources(read),
            "container_image": read.text("image"),
            "properties": _with_wall_time(read, "wall_time", properties),
        }
    return _qcg_job(read)


def _qcg_job(read: Reader) -> dict[str, Any]:
    nodes = read.integer("total_nodes", minimum=1) or 1
    total = read.integer("total_cores", minimum=1)
    cores = read.integer("cores_per_node", minimum=1) or math.ceil((total or nodes) / nodes)
    per_core = read.size_mb("memory_per_core")
    memory = read.size_mb("memory_per_node") or (per_core or 0) * cores
    executable, arguments = read.text("executable"), read.raw("arguments")
    command = [executable] if executable else []
    command += arguments if isinstance(arguments, list) else ([arguments] if arguments else [])
    properties = properties_of(read, "environment", "directory", "batch_system_options")
    properties |= {"command": [str(c) for c in command]} if command else {}
    if (queue := read.text("queue")) is not None:
        properties["partition"] = queue
    return {
        "count": nodes,
        "resources": Resources(
            cpus=cores,
            memory_mb=memory,
            gpu=gpu_of(read, "gpus", "gpu_vendor", "gpu_model"),
        ),
        "properties": _with_wall_time(read, "wall_clock", properties),
    }


def _with_wall_time(read: Reader, where: str, properties: dict[str, Any]) -> dict[str, Any]:
    wall_time = read.duration(where)
    if wall_time is not None:
        properties["wall_time_seconds"] = wall_time.total_seconds()
    return properties
