"""What one attempt holds at the site, found by its tag: the basis of reuse, status and release."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk

from flotilla.agents.openstack.cloud import Cloud, Connection, task_group
from flotilla.agents.openstack.naming import ATTEMPT_KEY, AttemptNames
from flotilla.agents.openstack.record import (
    FloatingIpRecord,
    NetworkRecord,
    SecurityGroupRecord,
    ServerRecord,
    VolumeRecord,
)
from flotilla.schemas import ResourceRef


@dataclass(frozen=True, slots=True, kw_only=True)
class Holdings:
    """Every resource of one attempt that exists now."""

    servers: tuple[ServerRecord, ...] = ()
    volumes: tuple[VolumeRecord, ...] = ()
    floating_ips: tuple[FloatingIpRecord, ...] = ()
    security_groups: tuple[SecurityGroupRecord, ...] = ()
    networks: tuple[NetworkRecord, ...] = ()
    keypairs: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        """Whether nothing of the attempt is left."""
        return not (
            self.servers
            or self.volumes
            or self.floating_ips
            or self.security_groups
            or self.networks
            or self.keypairs
        )

    def resources(self) -> tuple[ResourceRef, ...]:
        """The holdings as resource references for reports."""
        refs = [ResourceRef(kind="server", id=s.id, name=s.name, node=s.node) for s in self.servers]
        refs += [
            ResourceRef(kind="volume", id=v.id, name=v.name, node=v.node) for v in self.volumes
        ]
        refs += [
            ResourceRef(kind="floating_ip", id=f.id, name=f.address) for f in self.floating_ips
        ]
        refs += [
            ResourceRef(kind="security_group", id=g.id, name=g.name) for g in self.security_groups
        ]
        refs += [ResourceRef(kind="network", id=n.id, name=n.name) for n in self.networks]
        refs += [ResourceRef(kind="keypair", id=k, name=k) for k in self.keypairs]
        return tuple(refs)


async def holdings(cloud: Cloud, names: AttemptNames) -> Holdings:
    """Everything of the attempt, each service asked at once."""
    tag = names.tag
    async with task_group() as group:
        servers = group.create_task(cloud.read("list servers", lambda c: list_servers(c, tag)))
        volumes = group.create_task(cloud.read("list volumes", lambda c: list_volumes(c, tag)))
        ips = group.create_task(cloud.read("list floating IPs", lambda c: list_ips(c, tag)))
        groups = group.create_task(
            cloud.read("list security groups", lambda c: list_security_groups(c, tag))
        )
        networks = group.create_task(cloud.read("list networks", lambda c: list_networks(c, tag)))
        keypairs = group.create_task(
            cloud.read("list keypairs", lambda c: list_keypairs(c, names.prefix))
        )
    return Holdings(
        servers=tuple(servers.result()),
        volumes=tuple(volumes.result()),
        floating_ips=tuple(ips.result()),
        security_groups=tuple(groups.result()),
        networks=tuple(networks.result()),
        keypairs=tuple(keypairs.result()),
    )


# Blocking listings, run in the cloud's threads -----------------------------------------


def list_servers(c: Connection, tag: str) -> list[ServerRecord]:
    """Servers carrying the tag."""
    return [ServerRecord.of(s) for s in c.compute.servers(details=True, tags=tag)]


def list_volumes(c: Connection, tag: str) -> list[VolumeRecord]:
    """Volumes whose metadata names the attempt; none when the cloud has no volume service."""
    query = json.dumps({ATTEMPT_KEY: tag})
    try:
        return [VolumeRecord.of(v) for v in c.block_storage.volumes(details=True, properties=query)]
    except (sdk.EndpointNotFound, ksa.EndpointNotFound):
        return []


def list_ips(c: Connection, tag: str) -> list[FloatingIpRecord]:
    """Floating IPs carrying the tag or described by it."""
    return [FloatingIpRecord.of(ip) for ip in _tagged(c.network.ips, tag)]


def list_security_groups(c: Connection, tag: str) -> list[SecurityGroupRecord]:
    """Security groups carrying the tag or described by it."""
    return [SecurityGroupRecord.of(g) for g in _tagged(c.network.security_groups, tag)]


def list_networks(c: Connection, tag: str) -> list[NetworkRecord]:
    """Networks carrying the tag or described by it."""
    return [NetworkRecord.of(n) for n in _tagged(c.network.networks, tag)]


def list_keypairs(c: Connection, prefix: str) -> list[str]:
    """Names of the user's keypairs that start with the attempt's prefix."""
    return sorted(k.name for k in c.compute.keypairs() if str(k.name).startswith(prefix))


def _tagged(listing: Callable[..., Iterable[Any]], tag: str) -> list[Any]:
    # Neutron takes tags only after a resource exists; the description is set at creation.
    found = {r.id: r for r in listing(tags=tag)}
    found.update((r.id, r) for r in listing(description=tag))
    return list(found.values())
