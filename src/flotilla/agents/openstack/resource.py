"""Blocking create and delete calls for one attempt's resources, run in the cloud's threads.

Creates tag what they make (nova at creation; neutron right after, with the tag also in the
description, set at creation). Deletes return False when the service says "not now"
(a conflict: still in use, still busy) so that the caller tries again on its next pass,
and treat "not found" as done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from openstack import exceptions as sdk

from flotilla.agents.driver import ProvisioningError
from flotilla.agents.openstack.blueprint import (
    Blueprint,
    KeypairPlan,
    NetworkPlan,
    Nic,
    SecurityGroupPlan,
    ServerPlan,
    VolumePlan,
)
from flotilla.agents.openstack.cloud import Connection
from flotilla.agents.openstack.config import OpenStackSettings
from flotilla.agents.openstack.naming import AttemptNames
from flotilla.agents.openstack.record import (
    FloatingIpRecord,
    RuleRecord,
    SecurityGroupRecord,
    ServerRecord,
    VolumeRecord,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class References:
    """Ids of the site's flavors, images and networks a blueprint names."""

    flavors: Mapping[str, str] = field(default_factory=dict)
    images: Mapping[str, str] = field(default_factory=dict)
    networks: Mapping[str, str] = field(default_factory=dict)  # site networks by name
    external: str | None = None
    created: Mapping[str, str] = field(default_factory=dict)  # created networks by node
    groups: Mapping[str, str] = field(default_factory=dict)  # security groups by name

    def with_created(
        self, *, networks: Mapping[str, str] | None = None, groups: Mapping[str, str] | None = None
    ) -> References:
        """The same references, knowing ids of networks or security groups the attempt made."""
        return replace(
            self,
            created=dict(networks if networks is not None else self.created),
            groups=dict(groups if groups is not None else self.groups),
        )

    def network_of(self, nic: Nic) -> str:
        """The network id a NIC joins."""
        if nic.created is not None:
            return self.created[nic.created]
        return self.networks[nic.network or ""]


def references(c: Connection, plan: Blueprint, settings: OpenStackSettings) -> References:
    """Look up every flavor, image and network the blueprint names.

    Raises:
        ProvisioningError: one of them does not exist here (``not_found``).
    """
    missing: list[str] = []

    def find(kind: str, name: str, finder: Any) -> str:
        try:
            return str(finder(name, ignore_missing=False).id)
        except sdk.NotFoundException:
            missing.append(f"{kind} {name!r}")
            return ""

    flavors = {s.flavor: find("flavor", s.flavor, c.compute.find_flavor) for s in plan.servers}
    images = {s.image: find("image", s.image, c.image.find_image) for s in plan.servers}
    wanted = {n.network for s in plan.servers for n in s.nics if n.network}
    networks = {name: find("network", name, c.network.find_network) for name in wanted}
    external = None
    if any(s.public for s in plan.servers) and settings.external_network:
        external = find("external network", settings.external_network, c.network.find_network)
    if missing:
        raise ProvisioningError(
            f"not found at this site: {', '.join(sorted(set(missing)))}", code="not_found"
        )
    return References(flavors=flavors, images=images, networks=networks, external=external)


# Creating ---------------------------------------------------------------------------------


def ensure_network(
    c: Connection, *, plan: NetworkPlan, names: AttemptNames, existing: str | None
) -> str:
    """The network's id, creating the network and its subnet where missing."""
    network_id = existing
    if network_id is None:
        network = c.network.create_network(name=plan.name, description=names.tag)
        c.network.set_tags(network, names.tags)
        network_id = str(network.id)
    if not any(True for _ in c.network.subnets(network_id=network_id)):
        subnet = c.network.create_subnet(
            name=plan.name,
            description=names.tag,
            network_id=network_id,
            ip_version=4,
            cidr=plan.cidr,
            gateway_ip=plan.gateway,
            is_dhcp_enabled=plan.dhcp,
        )
        c.network.set_tags(subnet, names.tags)
    return network_id


def ensure_security_group(
    c: Connection,
    *,
    plan: SecurityGroupPlan,
    names: AttemptNames,
    existing: SecurityGroupRecord | None,
) -> str:
    """The group's id, creating the group and any rule it lacks."""
    if existing is None:
        group = c.network.create_security_group(name=plan.name, description=names.tag)
        c.network.set_tags(group, names.tags)
        existing = SecurityGroupRecord.of(group)
    have = set(existing.rules)
    for rule in plan.rules:
        wanted = RuleRecord(
            protocol=rule.protocol, port_min=rule.port, port_max=rule.port, remote=rule.remote
        )
        if wanted in have:
            continue
        # A conflict means the rule exists: made by an earlier try whose answer was lost.
        with contextlib.suppress(sdk.ConflictException):
            c.network.create_security_group_rule(
                security_group_id=existing.id,
                direction="ingress",
                ethertype="IPv4",
                protocol=rule.protocol,
                port_range_min=rule.port,
                port_range_max=rule.port,
                remote_ip_prefix=rule.remote,
                description=names.tag,
            )
    return existing.id


def create_keypair(c: Connection, *, plan: KeypairPlan) -> None:
    """Import the user's public key (no private key is ever made or seen)."""
    with contextlib.suppress(sdk.ConflictException):  # imported by an earlier try
        c.compute.create_keypair(name=plan.name, public_key=plan.public_key)


def create_server(
    c: Connection, *, plan: ServerPlan, refs: References, names: AttemptNames
) -> ServerRecord:
    """Ask nova for the server, tagged at creation; it starts in BUILD."""
    networks = []
    for nic in plan.nics:
        entry = {"uuid": refs.network_of(nic)}
        if nic.fixed_ip:
            entry["fixed_ip"] = nic.fixed_ip
        networks.append(entry)
    attrs: dict[str, Any] = {
        "name": plan.name,
        "flavor_id": refs.flavors[plan.flavor],
        "image_id": refs.images[plan.image],
        "networks": networks,
        # by id: a name could match a twin made by a create whose answer was lost
        "security_groups": [{"name": refs.groups.get(plan.security_group, plan.security_group)}],
        "tags": names.tags,
        "metadata": dict(plan.metadata),
    }
    if plan.keypair:
        attrs["key_name"] = plan.keypair
    if plan.user_data:
        attrs["user_data"] = plan.user_data
    server = c.compute.create_server(**attrs)  # the answer holds adminPass: never log it
    return ServerRecord(
        id=str(server.id), name=plan.name, status="BUILD", node=plan.node, index=plan.index
    )


def get_server(c: Connection, *, server_id: str) -> ServerRecord | None:
    """One server with all nova says about it (its fault too), or None when gone."""
    try:
        return ServerRecord.of(c.compute.get_server(server_id))
    except sdk.NotFoundException:
        return None


def create_volume(c: Connection, *, plan: VolumePlan) -> VolumeRecord:
    """Ask cinder for the volume, its metadata naming the attempt."""
    volume = c.block_storage.create_volume(
        name=plan.name, size=plan.size_gb, metadata=dict(plan.metadata)
    )
    return VolumeRecord(
        id=str(volume.id),
        name=plan.name,
        status=str(volume.status or "creating"),
        size_gb=plan.size_gb,
        node=plan.node,
        index=plan.index,
    )


def attach(c: Connection, *, server_id: str, volume_id: str) -> None:
    """Attach a volume to a server."""
    with contextlib.suppress(sdk.ConflictException):  # attaching already (an earlier try)
        c.compute.create_volume_attachment(server_id, volume_id)


def ensure_floating_ip(
    c: Connection,
    *,
    server_id: str,
    refs: References,
    names: AttemptNames,
    tagged: Sequence[FloatingIpRecord],
    spare: Sequence[FloatingIpRecord],
) -> FloatingIpRecord:
    """The server's floating IP: the one it has, a spare one of the attempt, or a new one."""
    ports = list(c.network.ports(device_id=server_id))
    if not ports:
        raise ProvisioningError(
            f"server {server_id} has no port for a floating IP", code="no_port", retryable=True
        )
    port_ids = {str(p.id) for p in ports}
    for ip in tagged:
        if ip.port_id in port_ids:
            return ip
    routed = set(refs.networks.values())
    port = next((p for p in ports if str(p.network_id) in routed), ports[0])
    if spare:
        updated = c.network.update_ip(spare[0].id, port_id=str(port.id))
        return FloatingIpRecord.of(updated)
    created = c.network.create_ip(
        floating_network_id=refs.external, port_id=str(port.id), description=names.tag
    )
    c.network.set_tags(created, names.tags)
    return replace(FloatingIpRecord.of(created), tags=tuple(names.tags))


# Deleting ---------------------------------------------------------------------------------


def delete_server(c: Connection, server_id: str) -> bool:
    """Ask nova to delete a server."""
    return _deleting(lambda: c.compute.delete_server(server_id, ignore_missing=True))


def delete_volume(c: Connection, volume_id: str) -> bool:
    """Ask cinder to delete a volume (it must be detached)."""
    return _deleting(lambda: c.block_storage.delete_volume(volume_id, ignore_missing=True))


def detach(c: Connection, server_id: str, volume_id: str) -> bool:
    """Ask nova to detach a volume from a server."""
    return _deleting(lambda: c.compute.delete_volume_attachment(server_id, volume_id))


def delete_ip(c: Connection, ip_id: str) -> bool:
    """Release a floating IP."""
    return _deleting(lambda: c.network.delete_ip(ip_id, ignore_missing=True))


def delete_security_group(c: Connection, group_id: str) -> bool:
    """Delete a security group (it fails while ports still use it)."""
    return _deleting(lambda: c.network.delete_security_group(group_id, ignore_missing=True))


def delete_network(c: Connection, network_id: str) -> bool:
    """Delete a network and its subnets (it fails while ports are on it)."""
    return _deleting(lambda: c.network.delete_network(network_id, ignore_missing=True))


def delete_keypair(c: Connection, name: str) -> bool:
    """Delete a keypair."""
    return _deleting(lambda: c.compute.delete_keypair(name, ignore_missing=True))


def _deleting(call: Any) -> bool:
    try:
        call()
    except sdk.NotFoundException:
        return True
    except (sdk.ConflictException, sdk.BadRequestException):
        # Still in use or busy (nova and cinder answer 400 or 409): try again next pass.
        return False
    return True
