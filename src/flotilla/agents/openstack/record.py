"""Plain, typed copies of what openstacksdk returns, taken in the worker thread.

SDK resources are lazy and untyped; the rest of the driver works with these records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flotilla.agents.openstack.naming import instance_of


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerRecord:
    """A server as nova reports it."""

    id: str
    name: str
    status: str
    node: str | None = None
    index: int | None = None
    fixed: tuple[str, ...] = ()
    floating: tuple[str, ...] = ()
    fault: Mapping[str, Any] | None = None
    created: str = ""

    @classmethod
    def of(cls, server: Any) -> ServerRecord:
        """Copy an SDK ``Server``."""
        found = instance_of(dict(server.metadata or {}))
        fixed: list[str] = []
        floating: list[str] = []
        for addresses in (server.addresses or {}).values():
            for address in addresses:
                kind = address.get("OS-EXT-IPS:type", "fixed")
                (floating if kind == "floating" else fixed).append(str(address.get("addr")))
        return cls(
            id=str(server.id),
            name=str(server.name or ""),
            status=str(server.status or "UNKNOWN").upper(),
            node=found[0] if found else None,
            index=found[1] if found else None,
            fixed=tuple(fixed),
            floating=tuple(floating),
            fault=dict(server.fault) if server.fault else None,
            created=str(server.created_at or ""),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VolumeRecord:
    """A volume as cinder reports it."""

    id: str
    name: str
    status: str
    size_gb: int
    node: str | None = None
    index: int | None = None
    servers: tuple[str, ...] = ()  # ids of the servers it is attached to

    @classmethod
    def of(cls, volume: Any) -> VolumeRecord:
        """Copy an SDK ``Volume``."""
        found = instance_of(dict(volume.metadata or {}))
        return cls(
            id=str(volume.id),
            name=str(volume.name or ""),
            status=str(volume.status or "unknown").lower(),
            size_gb=int(volume.size or 0),
            node=found[0] if found else None,
            index=found[1] if found else None,
            servers=tuple(
                str(a["server_id"]) for a in volume.attachments or () if a.get("server_id")
            ),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FloatingIpRecord:
    """A floating IP and the port it points to."""

    id: str
    address: str
    port_id: str | None = None
    tags: tuple[str, ...] = ()

    @classmethod
    def of(cls, ip: Any) -> FloatingIpRecord:
        """Copy an SDK ``FloatingIP``."""
        return cls(
            id=str(ip.id),
            address=str(ip.floating_ip_address or ""),
            port_id=str(ip.port_id) if ip.port_id else None,
            tags=tuple(ip.tags or ()),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleRecord:
    """An ingress rule, in the terms Flotilla creates them."""

    protocol: str | None
    port_min: int | None
    port_max: int | None
    remote: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityGroupRecord:
    """A security group with its ingress rules."""

    id: str
    name: str
    tags: tuple[str, ...] = ()
    rules: tuple[RuleRecord, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, group: Any) -> SecurityGroupRecord:
        """Copy an SDK ``SecurityGroup``."""
        rules = tuple(
            RuleRecord(
                protocol=rule.get("protocol"),
                port_min=rule.get("port_range_min"),
                port_max=rule.get("port_range_max"),
                remote=rule.get("remote_ip_prefix"),
            )
            for rule in group.security_group_rules or ()
            if rule.get("direction") == "ingress"
        )
        return cls(
            id=str(group.id), name=str(group.name or ""), tags=tuple(group.tags or ()), rules=rules
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkRecord:
    """A network (or any neutron resource known by id and name)."""

    id: str
    name: str
    tags: tuple[str, ...] = ()

    @classmethod
    def of(cls, network: Any) -> NetworkRecord:
        """Copy an SDK ``Network``."""
        return cls(id=str(network.id), name=str(network.name or ""), tags=tuple(network.tags or ()))
