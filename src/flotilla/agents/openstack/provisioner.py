"""Provision one attempt: find what exists, create what is missing, wait, connect, report.

Every step looks at what the attempt already holds (by tag) before creating anything, so a
redelivered command, or an agent restarted half-way, continues instead of duplicating. A
create whose answer was lost can still leave a twin behind; the last step deletes twins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol, TypeVar

import structlog
from pydantic import JsonValue

from flotilla.agents.driver import ProgressSink, ProvisioningError, ProvisionResult
from flotilla.agents.openstack import resource
from flotilla.agents.openstack.blueprint import Blueprint, ServerPlan, VolumePlan
from flotilla.agents.openstack.cloud import Cloud, task_group
from flotilla.agents.openstack.config import OpenStackSettings
from flotilla.agents.openstack.deadline import Deadline
from flotilla.agents.openstack.error import fault_error
from flotilla.agents.openstack.inventory import (
    Holdings,
    holdings,
    list_ips,
    list_servers,
    list_volumes,
)
from flotilla.agents.openstack.naming import AttemptNames
from flotilla.agents.openstack.output import NodeFacts, fill_outputs
from flotilla.agents.openstack.record import FloatingIpRecord, ServerRecord, VolumeRecord
from flotilla.agents.openstack.resource import References
from flotilla.schemas import Provision

_log = structlog.get_logger("flotilla.agents.openstack")
_READY_VOLUME = ("available", "in-use")
_FAILED_VOLUME = ("error", "error_restoring", "error_extending")


class _Instance(Protocol):
    @property
    def node(self) -> str | None: ...
    @property
    def index(self) -> int | None: ...


_R = TypeVar("_R", bound=_Instance)


@dataclass(slots=True, kw_only=True)
class _Made:
    """What the attempt has so far, by the blueprint's names."""

    servers: dict[str, ServerRecord] = field(default_factory=dict)
    volumes: dict[str, VolumeRecord] = field(default_factory=dict)
    floating_ips: dict[str, FloatingIpRecord] = field(default_factory=dict)  # by server name


class Provisioner:
    """Runs one ``Provision`` order against one cloud."""

    def __init__(
        self,
        *,
        cloud: Cloud,
        settings: OpenStackSettings,
        order: Provision,
        blueprint: Blueprint,
        progress: ProgressSink,
    ) -> None:
        self._cloud = cloud
        self._settings = settings
        self._order = order
        self._plan = blueprint
        self._report = progress
        self._names = AttemptNames(deployment_id=order.deployment_id, attempt=order.attempt)
        self._deadline = Deadline.of(settings, order.deadline)
        self._made = _Made()
        self._log = _log.bind(deployment_id=order.deployment_id, attempt=order.attempt)

    async def run(self) -> ProvisionResult:
        """Provision everything the blueprint names and return the outputs.

        Raises:
            ProvisioningError: the cloud refused, or a resource failed or took too long.
            SiteUnavailableError: the cloud could not be reached.
        """
        self._report("PREPARING", "looking for resources of this attempt", percent=0)
        have = await holdings(self._cloud, self._names)
        refs = await self._cloud.read(
            "look up flavors, images and networks",
            partial(resource.references, plan=self._plan, settings=self._settings),
        )
        refs = refs.with_created(networks=await self._networks(have))
        self._report("CREATING", "security groups and keypairs", percent=5)
        refs = refs.with_created(groups=await self._groups_and_keys(have))
        await self._servers_and_volumes(have, refs)
        await self._wait_ready()
        await self._attach_volumes()
        await self._floating_ips(refs)
        final = await self._remove_twins()
        self._report("COMPLETE", "every resource is ready", percent=100)
        return ProvisionResult(outputs=self._outputs(), resources=final.resources())

    # Creating ----------------------------------------------------------------------------

    async def _networks(self, have: Holdings) -> dict[str, str]:
        """Ids of the template's networks by node, created where missing."""
        found = {n.name: n.id for n in have.networks}
        ids: dict[str, str] = {}
        for network in self._plan.networks:
            ids[network.node] = await self._cloud.call(
                f"create network {network.name}",
                partial(
                    resource.ensure_network,
                    plan=network,
                    names=self._names,
                    existing=found.get(network.name),
                ),
            )
        return ids

    async def _groups_and_keys(self, have: Holdings) -> dict[str, str]:
        """Security groups (ids by name) and keypairs, created where missing."""
        groups = {g.name: g for g in have.security_groups}
        ids: dict[str, asyncio.Task[str]] = {}
        async with task_group() as tasks:
            for group in self._plan.security_groups:
                call = partial(
                    resource.ensure_security_group,
                    plan=group,
                    names=self._names,
                    existing=groups.get(group.name),
                )
                ids[group.name] = tasks.create_task(
                    self._cloud.call(f"create security group {group.name}", call)
                )
            for key in self._plan.keypairs:
                if key.name not in have.keypairs:
                    call_key = partial(resource.create_keypair, plan=key)
                    tasks.create_task(self._cloud.call(f"import keypair {key.name}", call_key))
        return {name: task.result() for name, task in ids.items()}

    async def _servers_and_volumes(self, have: Holdings, refs: References) -> None:
        servers = _by_instance(have.servers)
        volumes = _by_instance(have.volumes)
        todo = [s for s in self._plan.servers if (s.node, s.index) not in servers]
        self._report("CREATING", f"{len(todo)} of {len(self._plan.servers)} servers", percent=10)
        async with task_group() as tasks:
            for volume in self._plan.volumes:
                found = volumes.get((volume.node, volume.index))
                if found:
                    self._made.volumes[volume.name] = found[0]
                else:
                    tasks.create_task(self._create_volume(volume))
            for server in self._plan.servers:
                twins = servers.get((server.node, server.index))
                if twins:
                    self._made.servers[server.name] = _keeper(twins)
                    self._log.info("server_reused", server=server.name, id=twins[0].id)
                else:
                    tasks.create_task(self._create_server(server, refs))

    async def _create_server(self, plan: ServerPlan, refs: References) -> None:
        call = partial(resource.create_server, plan=plan, refs=refs, names=self._names)
        created = await self._cloud.call(f"create server {plan.name}", call)
        self._made.servers[plan.name] = created
        self._log.info("server_created", server=plan.name, id=created.id, flavor=plan.flavor)

    async def _create_volume(self, plan: VolumePlan) -> None:
        call = partial(resource.create_volume, plan=plan)
        created = await self._cloud.call(f"create volume {plan.name}", call)
        self._made.volumes[plan.name] = created
        self._log.info("volume_created", volume=plan.name, id=created.id, size_gb=plan.size_gb)

    # Waiting -----------------------------------------------------------------------------

    async def _wait_ready(self) -> None:
        """Wait until every server is ACTIVE and every volume usable; fail on ERROR."""
        total = len(self._made.servers) + len(self._made.volumes)
        while True:
            ready = await self._look()
            percent = 15 + 55 * ready / max(total, 1)
            self._report(
                "BUILDING", f"{ready} of {total} servers and volumes ready", percent=percent
            )
            if ready == total:
                return
            await self._deadline.pause(f"the servers and volumes of {self._names.tag}")

    async def _look(self) -> int:
        """Refresh what was made from the cloud; how many servers and volumes are ready."""
        tag = self._names.tag
        servers = {
            s.id: s for s in await self._cloud.read("list servers", partial(list_servers, tag=tag))
        }
        volumes = {
            v.id: v for v in await self._cloud.read("list volumes", partial(list_volumes, tag=tag))
        }
        ready = 0
        for name, known in self._made.servers.items():
            server = self._made.servers[name] = servers.get(known.id, known)
            if server.status == "ERROR":
                raise fault_error(await self._fault(server), server=name)
            ready += server.status == "ACTIVE"
        for name, made in self._made.volumes.items():
            volume = self._made.volumes[name] = volumes.get(made.id, made)
            if volume.status in _FAILED_VOLUME:
                raise ProvisioningError(
                    f"volume {name} went to {volume.status}", code="volume_failed", resource=name
                )
            ready += volume.status in _READY_VOLUME
        return ready

    async def _fault(self, server: ServerRecord) -> Mapping[str, Any] | None:
        """Nova's fault record of a server (listings may leave it out)."""
        if server.fault is not None:
            return server.fault
        found = await self._cloud.read(
            f"read the fault of {server.name}", partial(resource.get_server, server_id=server.id)
        )
        return found.fault if found is not None else None

    # Connecting --------------------------------------------------------------------------

    async def _attach_volumes(self) -> None:
        """Attach each volume to its server, then wait until cinder says so."""
        pending = [v for v in self._plan.volumes if v.server is not None]
        if not pending:
            return
        self._report("ATTACHING", f"{len(pending)} volumes", percent=75)
        for plan in pending:
            volume = self._made.volumes[plan.name]
            server = self._made.servers[plan.server or ""]
            if server.id in volume.servers or volume.status != "available":
                continue
            call = partial(resource.attach, server_id=server.id, volume_id=volume.id)
            await self._cloud.call(f"attach volume {plan.name} to {server.name}", call)
            self._log.info("volume_attached", volume=plan.name, server=server.name)
        while True:
            await self._look()
            waiting = [
                p.name
                for p in pending
                if self._made.servers[p.server or ""].id not in self._made.volumes[p.name].servers
            ]
            if not waiting:
                return
            await self._deadline.pause(f"volumes {', '.join(waiting)} to be attached")

    async def _floating_ips(self, refs: References) -> None:
        public = [s for s in self._plan.servers if s.public]
        if not public:
            return
        self._report("ADDRESSING", f"{len(public)} floating IPs", percent=85)
        tagged = await self._cloud.read("list floating IPs", partial(list_ips, tag=self._names.tag))
        spare = [ip for ip in tagged if ip.port_id is None]
        for plan in public:  # one at a time: two servers must not take the same spare IP
            call = partial(
                resource.ensure_floating_ip,
                server_id=self._made.servers[plan.name].id,
                refs=refs,
                names=self._names,
                tagged=tagged,
                spare=spare,
            )
            ip = await self._cloud.call(f"give {plan.name} a floating IP", call)
            self._made.floating_ips[plan.name] = ip
            spare = [s for s in spare if s.id != ip.id]
            self._log.info("floating_ip_ready", server=plan.name, address=ip.address)

    async def _remove_twins(self) -> Holdings:
        """Delete servers and volumes made twice for one instance (a create answered late).

        Returns:
            What the attempt holds, twins left out.
        """
        current = await holdings(self._cloud, self._names)
        kept = {s.id for s in self._made.servers.values()}
        kept |= {v.id for v in self._made.volumes.values()}
        twins = [s for s in current.servers if s.id not in kept and s.node is not None]
        spare = [v for v in current.volumes if v.id not in kept and v.status == "available"]
        for server in twins:
            self._log.warning("twin_server_deleted", server=server.name, id=server.id)
            call = partial(resource.delete_server, server_id=server.id)
            await self._cloud.call(f"delete twin server {server.name}", call)
        for volume in spare:
            self._log.warning("twin_volume_deleted", volume=volume.name, id=volume.id)
            call = partial(resource.delete_volume, volume_id=volume.id)
            await self._cloud.call(f"delete twin volume {volume.name}", call)
        return replace(
            current,
            servers=tuple(s for s in current.servers if s not in twins),
            volumes=tuple(v for v in current.volumes if v not in spare),
        )

    # Results -----------------------------------------------------------------------------

    def _outputs(self) -> dict[str, JsonValue]:
        facts = {node: self._server_facts(node) for node in _nodes(self._plan.servers)}
        for node in _nodes(self._plan.volumes):
            records = [self._made.volumes[v.name] for v in self._plan.volumes if v.node == node]
            facts[node] = NodeFacts(
                kind="volume",
                ids=tuple(r.id for r in records),
                names=tuple(r.name for r in records),
            )
        return fill_outputs(self._order.plan.outputs, facts)

    def _server_facts(self, node: str) -> NodeFacts:
        plans = [s for s in self._plan.servers if s.node == node]
        records = [self._made.servers[s.name] for s in plans]
        names = {s.name for s in plans}
        return NodeFacts(
            ids=tuple(r.id for r in records),
            names=tuple(r.name for r in records),
            private_addresses=tuple(r.fixed[0] if r.fixed else "" for r in records),
            public_addresses=tuple(
                ip.address for s in plans if (ip := self._made.floating_ips.get(s.name))
            ),
            volumes=tuple(
                self._made.volumes[v.name].id for v in self._plan.volumes if v.server in names
            ),
            user=self._plan.users.get(node),
            keypair=next((k.name for k in self._plan.keypairs if k.node == node), None),
        )


def _by_instance(records: Iterable[_R]) -> dict[tuple[str, int], list[_R]]:
    found: dict[tuple[str, int], list[_R]] = {}
    for record in records:
        if record.node is not None and record.index is not None:
            found.setdefault((record.node, record.index), []).append(record)
    return found


def _keeper(servers: list[ServerRecord]) -> ServerRecord:
    """Of twins, the one to keep: an ACTIVE one if any, else the oldest."""
    return min(servers, key=lambda s: (s.status != "ACTIVE", s.created, s.id))


def _nodes(items: Iterable[ServerPlan] | Iterable[VolumePlan]) -> list[str]:
    return list(dict.fromkeys(item.node for item in items))
