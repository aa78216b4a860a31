"""Delete everything one attempt holds, in dependency order, until nothing is left.

Order: floating IPs; volumes detached, then deleted; servers (once no volume of the attempt
is attached to them, or when detaching takes too long); then, with servers and volumes
gone, security groups, networks and keypairs. Each pass lists what is left by tag and asks
for the next deletions; a service that answers "not now" is asked again on the next pass.
Running it again when nothing is left returns at once.
"""

from __future__ import annotations

import time
from functools import partial

import structlog

from flotilla.agents.driver import ProvisioningError
from flotilla.agents.openstack import resource
from flotilla.agents.openstack.cloud import Cloud, task_group
from flotilla.agents.openstack.config import OpenStackSettings
from flotilla.agents.openstack.deadline import Deadline
from flotilla.agents.openstack.inventory import Holdings, holdings
from flotilla.agents.openstack.naming import AttemptNames

_log = structlog.get_logger("flotilla.agents.openstack")
_DELETABLE_VOLUME = ("available", "error", "error_restoring", "error_extending", "error_managing")
_BUSY_VOLUME = ("attaching", "detaching", "reserved", "creating", "deleting", "downloading")
RELEASE_FAILED = "release_failed"


class Teardown:
    """Deletes one attempt's resources."""

    def __init__(self, *, cloud: Cloud, settings: OpenStackSettings, names: AttemptNames) -> None:
        self._cloud = cloud
        self._names = names
        self._deadline = Deadline.of(settings, code=RELEASE_FAILED)
        # After this long, servers are deleted even with volumes still attached to them.
        self._patience = Deadline(
            at=time.monotonic() + settings.build_timeout.total_seconds() / 2,
            interval=settings.poll_interval.total_seconds(),
        )
        self._log = _log.bind(deployment_id=names.deployment_id, attempt=names.attempt)

    async def run(self) -> None:
        """Delete until nothing of the attempt is left.

        Raises:
            ProvisioningError: something is still there when the build timeout has passed
                (``release_failed``, with what is left).
            SiteUnavailableError: the cloud could not be reached.
        """
        left = await holdings(self._cloud, self._names)
        if left.is_empty:
            return
        self._log.info("release_started", resources=len(left.resources()))
        while not left.is_empty:
            await self._pass(left)
            left = await holdings(self._cloud, self._names)
            if left.is_empty:
                break
            try:
                await self._deadline.pause(f"the resources of {self._names.tag} to go away")
            except ProvisioningError as exc:
                exc.resources = left.resources()
                raise
        self._log.info("release_done")

    async def _pass(self, left: Holdings) -> None:
        """Ask for every deletion the current state allows."""
        cloud = self._cloud
        async with task_group() as tasks:
            for ip in left.floating_ips:
                tasks.create_task(
                    cloud.call(
                        f"release floating IP {ip.address}",
                        partial(resource.delete_ip, ip_id=ip.id),
                    )
                )
            for volume in left.volumes:
                if volume.status == "in-use":
                    for server_id in volume.servers:
                        call = partial(resource.detach, server_id=server_id, volume_id=volume.id)
                        tasks.create_task(cloud.call(f"detach volume {volume.name}", call))
                elif volume.status in _DELETABLE_VOLUME:
                    call = partial(resource.delete_volume, volume_id=volume.id)
                    tasks.create_task(cloud.call(f"delete volume {volume.name}", call))
            busy = any(v.status in _BUSY_VOLUME for v in left.volumes)
            holding = {s for v in left.volumes for s in v.servers}
            for server in left.servers:
                if (busy or server.id in holding) and not self._patience.is_past:
                    continue  # volumes first
                call = partial(resource.delete_server, server_id=server.id)
                tasks.create_task(cloud.call(f"delete server {server.name}", call))
        if left.servers or left.volumes:
            return
        async with task_group() as tasks:
            for group in left.security_groups:
                call = partial(resource.delete_security_group, group_id=group.id)
                tasks.create_task(cloud.call(f"delete security group {group.name}", call))
            for network in left.networks:
                call = partial(resource.delete_network, network_id=network.id)
                tasks.create_task(cloud.call(f"delete network {network.name}", call))
            for name in left.keypairs:
                tasks.create_task(
                    cloud.call(
                        f"delete keypair {name}", partial(resource.delete_keypair, name=name)
                    )
                )
