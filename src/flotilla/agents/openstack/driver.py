"""The OpenStack site driver: servers, volumes, security groups and floating IPs of one project."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Self

import structlog
from pydantic import ValidationError

from flotilla.agents.config import AgentConfig, format_validation_error
from flotilla.agents.driver import (
    AttemptState,
    ProgressSink,
    ProvisioningError,
    ProvisionResult,
    SiteSnapshot,
)
from flotilla.agents.openstack.blueprint import build_blueprint
from flotilla.agents.openstack.capacity import read_snapshot
from flotilla.agents.openstack.cloud import Cloud
from flotilla.agents.openstack.config import OpenStackSettings
from flotilla.agents.openstack.inventory import Holdings, holdings
from flotilla.agents.openstack.naming import AttemptNames
from flotilla.agents.openstack.provisioner import Provisioner
from flotilla.agents.openstack.teardown import Teardown
from flotilla.errors import ConfigurationError, FlotillaError, RetryableError
from flotilla.schemas import AttemptRef, Provision, Release, ResourceRef, SiteKind

_log = structlog.get_logger("flotilla.agents.openstack")


class OpenStackDriver:
    """A ``SiteDriver`` for one OpenStack project.

    Use as an async context manager; it owns the thread pool openstacksdk runs in. Capacity
    snapshots are reused for ``capacity_ttl`` and read afresh after a provision or release.
    """

    kind: SiteKind = SiteKind.OPENSTACK

    def __init__(self, settings: OpenStackSettings, *, site: str | None = None) -> None:
        self.settings = settings
        self.site = site
        self._cloud = Cloud(settings)
        self._snapshot: SiteSnapshot | None = None
        self._snapshot_at = 0.0
        self._snapshot_lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self._cloud.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._cloud.close()

    async def snapshot(self) -> SiteSnapshot:
        """Flavors, images, quotas and free capacity of the project."""
        async with self._snapshot_lock:
            ttl = self.settings.capacity_ttl.total_seconds()
            if self._snapshot is None or time.monotonic() - self._snapshot_at >= ttl:
                self._snapshot = await read_snapshot(self._cloud, self.settings)
                self._snapshot_at = time.monotonic()
            return self._snapshot

    async def provision(self, order: Provision, progress: ProgressSink) -> ProvisionResult:
        """Create, or find and finish, every resource of the attempt; return its outputs.

        On a ``ProvisioningError`` what the attempt holds is deleted first (when the site's
        ``rollback`` is on) and the error lists whatever could not be deleted; the last
        attempt of a keep-last-attempt request (``keep_on_failure``) is left in place and
        the error lists what it holds.
        """
        names = AttemptNames(deployment_id=order.deployment_id, attempt=order.attempt)
        log = _log.bind(deployment_id=order.deployment_id, attempt=order.attempt, site=order.site)
        try:
            blueprint = build_blueprint(order.plan, names, self.settings)
            log.info(
                "provision_started", servers=len(blueprint.servers), volumes=len(blueprint.volumes)
            )
            provisioner = Provisioner(
                cloud=self._cloud,
                settings=self.settings,
                order=order,
                blueprint=blueprint,
                progress=progress,
            )
            result = await provisioner.run()
        except ProvisioningError as exc:
            exc.deployment_id, exc.site = order.deployment_id, order.site
            log.info("provision_failed", code=exc.code, error=exc.message)
            if order.keep_on_failure:
                # The request's last attempt: its resources stay for the user to inspect.
                progress("KEPT", f"failed ({exc.code}); resources kept for inspection")
                held = await holdings(self._cloud, names)
                exc.resources = held.resources()
            elif self.settings.rollback:
                progress("ROLLING_BACK", f"deleting what the attempt created: {exc.code}")
                exc.resources = await self._roll_back(names)
            raise
        finally:
            self._snapshot = None  # quotas and free capacity changed
        log.info("provision_complete", resources=len(result.resources))
        return result

    async def status(self, attempt: AttemptRef) -> AttemptState | None:
        """What the project holds for an attempt, or None when nothing."""
        names = AttemptNames(deployment_id=attempt.deployment_id, attempt=attempt.attempt)
        held = await holdings(self._cloud, names)
        if held.is_empty:
            return None
        return _state(held)

    async def release(self, order: Release) -> None:
        """Delete everything the attempt holds; safe to repeat."""
        names = AttemptNames(deployment_id=order.deployment_id, attempt=order.attempt)
        try:
            await Teardown(cloud=self._cloud, settings=self.settings, names=names).run()
        except FlotillaError as exc:
            exc.deployment_id, exc.site = order.deployment_id, order.site
            raise
        finally:
            self._snapshot = None

    async def _roll_back(self, names: AttemptNames) -> tuple[ResourceRef, ...]:
        """Delete the attempt's resources; what is left when that fails.

        A cloud that could not be reached (a reset connection, a 503) is tried again a few
        times, so a passing hiccup does not leave the attempt's resources behind until its
        release comes.
        """
        log = _log.bind(deployment_id=names.deployment_id, attempt=names.attempt)
        for delay in (*_ROLLBACK_RETRIES, None):
            try:
                await Teardown(cloud=self._cloud, settings=self.settings, names=names).run()
            except RetryableError as exc:
                if delay is None:
                    log.warning("rollback_failed", error=exc.message)
                    return ()
                log.info("rollback_retrying", error=exc.message, delay=delay)
                await asyncio.sleep(delay)
            except FlotillaError as exc:
                log.warning("rollback_failed", error=exc.message)
                return exc.resources if isinstance(exc, ProvisioningError) else ()
            else:
                log.info("rolled_back")
                return ()
        return ()


_ROLLBACK_RETRIES = (0.5, 1.0, 2.0)  # seconds before each further try of a rollback


def _state(held: Holdings) -> AttemptState:
    statuses = {s.status for s in held.servers}
    if "ERROR" in statuses:
        phase = "ERROR"
    elif statuses and statuses <= {"ACTIVE"}:
        phase = "ACTIVE"
    elif statuses:
        phase = "BUILD"
    else:
        phase = "RESOURCES"
    volumes_settled = all(v.status in ("available", "in-use") for v in held.volumes)
    return AttemptState(
        phase=phase,
        resources=held.resources(),
        finished=phase in ("ACTIVE", "ERROR") and volumes_settled,
        details={
            "servers": {s.name: s.status for s in held.servers},
            "volumes": {v.name: v.status for v in held.volumes},
        },
    )


def create_driver(config: AgentConfig) -> OpenStackDriver:
    """The driver for a site file whose ``openstack:`` section is ``config.driver``.

    Raises:
        ConfigurationError: a field of the section is wrong (named).
    """
    try:
        settings = OpenStackSettings.model_validate(config.driver)
    except ValidationError as exc:
        raise ConfigurationError(format_validation_error(exc, "openstack")) from exc
    return OpenStackDriver(settings, site=config.site)
