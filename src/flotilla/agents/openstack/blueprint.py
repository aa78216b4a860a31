"""A site plan turned into the OpenStack resources of one attempt, before any call is made.

Compute nodes become ``count`` servers each, with the flavor (``shape``) and image the
scheduler chose, one security group per node, a keypair when the node carries a public key,
and user data when it has some. Block storage nodes become one volume per instance of the
server they attach to. Network nodes follow the TOSCA network profile as INDIGO uses it:

- a Network with ``network_type: public`` is the external network: a port on it means a
  floating IP; with ``network_name`` it is that existing network; with ``cidr`` or
  ``network_type: isolated`` a new network is created; otherwise it is the site's default;
- a Port (a network node that depends on a compute node and a network) gives the compute
  node a NIC on that network, ordered by its ``order`` property.

Software components are configured on the servers by other tools; they create nothing here.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import yaml
from pydantic import JsonValue

from flotilla.agents.driver import ProvisioningError
from flotilla.agents.openstack.config import OpenStackSettings
from flotilla.agents.openstack.naming import AttemptNames
from flotilla.schemas import PlannedNode, SitePlan, WorkloadKind

INVALID_PLAN: Final = "invalid_plan"
_KEY_PROPERTIES = ("public_key", "ssh_public_key", "ssh_key")
_DEFAULT_CIDR = "192.168.0.0/24"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One ingress rule of a security group."""

    protocol: str
    port: int
    remote: str = "0.0.0.0/0"


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityGroupPlan:
    """The security group shared by the instances of one compute node."""

    node: str
    name: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeypairPlan:
    """A user's public key, imported as a keypair."""

    node: str
    name: str
    public_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkPlan:
    """A network (with one subnet) the template asks the site to create."""

    node: str
    name: str
    cidr: str
    gateway: str | None = None
    dhcp: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Nic:
    """A NIC of a server: on a site network (by name or id) or on a created network (by node)."""

    network: str | None = None
    created: str | None = None
    fixed_ip: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerPlan:
    """One server: instance ``index`` of a compute node."""

    node: str
    index: int
    name: str
    flavor: str
    image: str
    security_group: str
    keypair: str | None = None
    user_data: str | None = None  # base64, as nova takes it
    nics: tuple[Nic, ...] = ()
    public: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class VolumePlan:
    """One volume, attached to a server or standing alone."""

    node: str
    index: int
    name: str
    size_gb: int
    server: str | None = None  # the server's name
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Blueprint:
    """Everything one attempt creates, in the order it is created."""

    networks: tuple[NetworkPlan, ...] = ()
    keypairs: tuple[KeypairPlan, ...] = ()
    security_groups: tuple[SecurityGroupPlan, ...] = ()
    servers: tuple[ServerPlan, ...] = ()
    volumes: tuple[VolumePlan, ...] = ()
    skipped: tuple[str, ...] = ()  # nodes that create nothing at this site
    users: Mapping[str, str] = field(default_factory=dict)  # login user by compute node


def build_blueprint(plan: SitePlan, names: AttemptNames, settings: OpenStackSettings) -> Blueprint:
    """The resources of one attempt.

    Raises:
        ProvisioningError: the plan cannot run here (no flavor, no image, an unsupported
            kind of node, a public address without an external network).
    """
    nodes = {node.name: node for node in plan.nodes}
    machines = [n for n in plan.nodes if n.kind is WorkloadKind.VIRTUAL_MACHINE]
    networks = _network_roles(nodes)
    unsupported = [
        n.name
        for n in plan.nodes
        if n.kind not in (WorkloadKind.VIRTUAL_MACHINE, WorkloadKind.VOLUME, WorkloadKind.NETWORK)
        and n.kind is not WorkloadKind.SOFTWARE_COMPONENT
    ]
    if unsupported:
        raise ProvisioningError(
            f"an OpenStack site runs no {', '.join(unsupported)} ({nodes[unsupported[0]].kind})",
            code="unsupported_node",
            resource=unsupported[0],
        )
    servers = tuple(s for m in machines for s in _servers(m, nodes, networks, names, settings))
    return Blueprint(
        networks=tuple(
            _network_plan(nodes[name], names) for name, role in networks.items() if role == _CREATE
        ),
        keypairs=tuple(k for m in machines if (k := _keypair(m, names)) is not None),
        security_groups=tuple(_security_group(m, names, settings) for m in machines),
        servers=servers,
        volumes=tuple(v for n in plan.nodes for v in _volumes(n, nodes, names)),
        skipped=tuple(n.name for n in plan.nodes if n.kind is WorkloadKind.SOFTWARE_COMPONENT),
        users={m.name: user for m in machines if (user := _login_user(m)) is not None},
    )


_PUBLIC, _DEFAULT, _CREATE = "public", "default", "create"


def _network_roles(nodes: Mapping[str, PlannedNode]) -> dict[str, str]:
    """Each Network node's role: public, default, create, or an existing network's name."""
    roles = {}
    for node in nodes.values():
        if node.kind is not WorkloadKind.NETWORK or _is_port(node, nodes):
            continue
        props = node.properties
        kind = str(props.get("network_type") or "").lower()
        named = str(props.get("network_name") or "")
        if kind == "public" or named.upper() == "PUBLIC":
            roles[node.name] = _PUBLIC
        elif named and named.upper() != "PRIVATE":
            roles[node.name] = named
        elif kind == "isolated" or props.get("cidr"):
            roles[node.name] = _CREATE
        else:
            roles[node.name] = _DEFAULT
    return roles


def _is_port(node: PlannedNode, nodes: Mapping[str, PlannedNode]) -> bool:
    return any(
        (dep := nodes.get(name)) is not None and dep.kind is WorkloadKind.VIRTUAL_MACHINE
        for name in node.depends_on
    )


def _servers(
    machine: PlannedNode,
    nodes: Mapping[str, PlannedNode],
    networks: Mapping[str, str],
    names: AttemptNames,
    settings: OpenStackSettings,
) -> list[ServerPlan]:
    flavor = machine.shape or _text(machine.properties.get("instance_type"))
    if not flavor:
        raise ProvisioningError(
            f"node {machine.name}: the plan names no flavor",
            code=INVALID_PLAN,
            resource=machine.name,
        )
    image = settings.site_image(machine.image) if machine.image else settings.default_image
    if not image:
        raise ProvisioningError(
            f"node {machine.name}: the plan names no image and the site has no default_image",
            code=INVALID_PLAN,
            resource=machine.name,
        )
    nics, public = _nics(machine, nodes, networks, settings)
    if public and not settings.external_network:
        raise ProvisioningError(
            f"node {machine.name}: a public address needs external_network in the site file",
            code=INVALID_PLAN,
            resource=machine.name,
        )
    keypair = names.keypair(machine.name) if _public_key(machine) else None
    user_data = _user_data(machine.properties)
    return [
        ServerPlan(
            node=machine.name,
            index=index,
            name=names.server(machine.name, index),
            flavor=flavor,
            image=image,
            security_group=names.security_group(machine.name),
            keypair=keypair,
            user_data=user_data,
            nics=nics if machine.count == 1 else tuple(_no_fixed_ip(n) for n in nics),
            public=public,
            metadata=names.metadata(machine.name, index),
        )
        for index in range(machine.count)
    ]


def _nics(
    machine: PlannedNode,
    nodes: Mapping[str, PlannedNode],
    networks: Mapping[str, str],
    settings: OpenStackSettings,
) -> tuple[tuple[Nic, ...], bool]:
    """The server's NICs in port order, and whether it gets a floating IP."""
    ports = sorted(
        (
            n
            for n in nodes.values()
            if n.kind is WorkloadKind.NETWORK and machine.name in n.depends_on
        ),
        key=lambda port: _int(port.properties.get("order"), 0),
    )
    public = machine.public_address
    nics: list[Nic] = []
    for port in ports:
        link = next((d for d in port.depends_on if d in networks), None)
        role = networks.get(link or "", _DEFAULT)
        fixed_ip = _text(port.properties.get("ip_address"))
        if role == _PUBLIC:
            public = True
        elif role == _CREATE:
            nics.append(Nic(created=link, fixed_ip=fixed_ip))
        else:
            nics.append(
                Nic(network=settings.network if role == _DEFAULT else role, fixed_ip=fixed_ip)
            )
    return tuple(nics) or (Nic(network=settings.network),), public


def _no_fixed_ip(nic: Nic) -> Nic:
    return Nic(network=nic.network, created=nic.created)


def _network_plan(node: PlannedNode, names: AttemptNames) -> NetworkPlan:
    props = node.properties
    return NetworkPlan(
        node=node.name,
        name=names.network(node.name),
        cidr=_text(props.get("cidr")) or _DEFAULT_CIDR,
        gateway=_text(props.get("gateway_ip")),
        dhcp=props.get("dhcp_enabled") is not False,
    )


def _security_group(
    machine: PlannedNode, names: AttemptNames, settings: OpenStackSettings
) -> SecurityGroupPlan:
    rules = [Rule(protocol="tcp", port=port) for port in settings.open_ports]
    rules += [
        Rule(protocol=p.protocol, port=p.port, remote=p.source or "0.0.0.0/0")
        for p in machine.ports
    ]
    return SecurityGroupPlan(
        node=machine.name,
        name=names.security_group(machine.name),
        rules=tuple(dict.fromkeys(rules)),
    )


def _keypair(machine: PlannedNode, names: AttemptNames) -> KeypairPlan | None:
    key = _public_key(machine)
    if key is None:
        return None
    return KeypairPlan(node=machine.name, name=names.keypair(machine.name), public_key=key)


def _public_key(machine: PlannedNode) -> str | None:
    """The user's public key: a key property, else the first INDIGO ``os_users`` key."""
    props = machine.properties
    for name in _KEY_PROPERTIES:
        if key := _text(props.get(name)):
            return key
    for user in _users(props):
        if key := _text(user.get("os_user_ssh_public_key")):
            return key
    return None


def _login_user(machine: PlannedNode) -> str | None:
    return next(
        (u for user in _users(machine.properties) if (u := _text(user.get("os_user_name")))), None
    )


def _users(props: Mapping[str, JsonValue]) -> list[dict[str, JsonValue]]:
    users = props.get("os_users")
    return [u for u in users if isinstance(u, dict)] if isinstance(users, list) else []


def _user_data(props: Mapping[str, JsonValue]) -> str | None:
    """User data, base64-encoded: ``user_data`` as given, or ``cloud_config`` as cloud-config."""
    given = props.get("user_data")
    text = given if isinstance(given, str) and given.strip() else None  # byte for byte
    config = props.get("cloud_config")
    if text is None and isinstance(config, dict):
        text = "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False)
    return base64.b64encode(text.encode()).decode() if text else None


def _volumes(
    node: PlannedNode, nodes: Mapping[str, PlannedNode], names: AttemptNames
) -> list[VolumePlan]:
    if node.kind is not WorkloadKind.VOLUME:
        return []
    owner = nodes.get(node.attached_to or "")
    size = max(node.resources.disk_gb, 1)
    per_server = max(node.count, 1)
    if owner is None or owner.kind is not WorkloadKind.VIRTUAL_MACHINE:
        return [
            VolumePlan(
                node=node.name,
                index=i,
                name=names.volume(node.name, i),
                size_gb=size,
                metadata=names.metadata(node.name, i),
            )
            for i in range(node.count)
        ]
    return [
        VolumePlan(
            node=node.name,
            index=i,
            name=names.volume(node.name, i),
            size_gb=size,
            server=names.server(owner.name, i // per_server),
            metadata=names.metadata(node.name, i),
        )
        for i in range(owner.count * per_server)
    ]


def _text(value: JsonValue | None) -> str | None:
    return str(value).strip() or None if isinstance(value, str | int | float) else None


def _int(value: JsonValue | None, default: int) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default
