"""Fixtures of the OpenStack tests: the real testbed (``testbeds/openstack.sh``), up once per run.

Two sites live on the testbed: the admin project (``testbed-admin``: roomy quotas, may read
Placement) and a small project made here, ``flotilla-it-low``, reached as the testbed's
non-admin user ``demo``, with 2 instances, 4 cores and no floating IPs. The testbed stays
up after the tests (``testbeds/openstack.sh down`` ends it).

Checks of what exists in the cloud go through openstacksdk directly, listing by the
attempt's tag, never through the driver under test.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import pytest
from pydantic import JsonValue

from flotilla.agents.driver import ProvisionResult, attempt_tag
from flotilla.agents.openstack import OpenStackDriver, OpenStackSettings
from flotilla.scheduler.demand import fit_template, total_usage
from flotilla.scheduler.placement import Candidate
from flotilla.scheduler.plan import site_plan
from flotilla.scheduler.tosca import TemplateParser
from flotilla.schemas import Provision, Release, SitePlan
from tests.integration.support import testbed_env

CORPUS = Path(
    os.environ.get("FLOTILLA_TOSCA_CORPUS", Path(__file__).parents[4] / "shared" / "tosca-corpus")
)
INDIGO_TEMPLATES = CORPUS / "templates" / "indigo-dc-tosca-templates"
INDIGO_EXAMPLES = CORPUS / "templates" / "indigo-dc-tosca-types" / "examples"
ADMIN_CLOUD = "testbed-admin"
DEMO_CLOUD = "testbed-demo"
LOW_PROJECT = "flotilla-it-low"
LOW_COMPUTE_QUOTAS = {"instances": 2, "cores": 4, "ram": 8192}
LOW_NETWORK_QUOTAS = {"floating_ips": 0}
GROUP = "physics"
# The INDIGO templates ask for Ubuntu 16.04 by distribution and version: the site file
# offers the testbed's only image under that description.
IMAGES = {
    "ubuntu-16.04": {"image": "cirros-fake", "os_distribution": "ubuntu", "os_version": "16.04"}
}


@pytest.fixture(scope="session")
def openstack_env() -> dict[str, str]:
    """The testbed's clouds.yaml (``OS_CLIENT_CONFIG_FILE``), exported for openstacksdk."""
    env = testbed_env("openstack")
    os.environ.update(env)  # openstacksdk reads OS_CLIENT_CONFIG_FILE
    return env


@pytest.fixture(scope="session")
def low_project(openstack_env: dict[str, str]) -> str:
    """The small project (made once, kept): demo is a member; quotas set every run."""
    admin = openstack.connect(cloud=ADMIN_CLOUD)
    try:
        identity = admin.identity
        project = identity.find_project(
            LOW_PROJECT, domain_id="default"
        ) or identity.create_project(
            name=LOW_PROJECT, domain_id="default", description="Flotilla's small test site"
        )
        demo = identity.find_user("demo", domain_id="default")
        for role in ("member", "reader"):
            identity.assign_project_role_to_user(project, demo, identity.find_role(role))
        admin.set_compute_quotas(project.id, **LOW_COMPUTE_QUOTAS)
        admin.network.update_quota(project.id, **LOW_NETWORK_QUOTAS)
    finally:
        admin.close()
    return LOW_PROJECT


def site_section(cloud: str = ADMIN_CLOUD, **overrides: Any) -> dict[str, Any]:
    """An ``openstack:`` site-file section for the testbed, polling every half second."""
    section: dict[str, Any] = {
        "cloud": cloud,
        "network": "private",
        "external_network": "public",
        "images": IMAGES,
        "default_image": "cirros-fake",
        "poll_interval": 0.5,
        "call_timeout": 60,
        "build_timeout": 180,
        "capacity_ttl": 0,
    }
    return section | overrides


def admin_settings(**overrides: Any) -> OpenStackSettings:
    """The admin project as a site."""
    return OpenStackSettings.model_validate(site_section(**overrides))


def low_settings(**overrides: Any) -> OpenStackSettings:
    """The small project as a site."""
    return OpenStackSettings.model_validate(
        site_section(DEMO_CLOUD, project=LOW_PROJECT, **overrides)
    )


@pytest.fixture
async def admin_driver(openstack_env: dict[str, str]) -> AsyncIterator[OpenStackDriver]:
    """An open driver on the admin project."""
    async with OpenStackDriver(admin_settings(), site="os-admin") as driver:
        yield driver


@pytest.fixture
async def low_driver(low_project: str) -> AsyncIterator[OpenStackDriver]:
    """An open driver on the small project."""
    async with OpenStackDriver(low_settings(), site="os-low") as driver:
        yield driver


async def plan_for(
    driver: OpenStackDriver, template: str, inputs: Mapping[str, Any] | None = None
) -> SitePlan:
    """The plan the scheduler would send this site: real TOSCA, real fit against its report."""
    async with TemplateParser() as parser:
        requirements = await parser.requirements(template, dict(inputs or {}))
    capabilities = (await driver.snapshot()).capabilities
    fit = fit_template(requirements, capabilities, {})
    assert fit.reasons == (), fit.reasons
    candidate = Candidate(
        site=driver.site or "site",
        sla_id="sla",
        score=1.0,
        explanation=(),
        shapes=fit.shapes,
        images=fit.images,
        usage=total_usage(requirements),
    )
    return site_plan(requirements, candidate, GROUP)


def order_for(driver: OpenStackDriver, plan: SitePlan, attempt: int = 1) -> Provision:
    """A provision order for a fresh deployment (released after the test, whatever happens)."""
    order = Provision(
        deployment_id=str(uuid.uuid4()),
        site=driver.site or "site",
        attempt=attempt,
        idempotency_key=uuid.uuid4().hex,
        plan=plan,
        owner="alice",
    )
    remember(driver.settings, order.deployment_id, attempt)
    return order


# Attempts a test may have left at a site; released after each test even when it failed.
_MADE: list[tuple[OpenStackSettings, str, int]] = []


def remember(settings: OpenStackSettings, deployment_id: str, attempt: int) -> None:
    """Release this attempt at that site once the test is over."""
    _MADE.append((settings, deployment_id, attempt))


@pytest.fixture(autouse=True)
async def _leftovers_released() -> AsyncIterator[None]:
    """Whatever a test made is released after it (a no-op when the test released it)."""
    yield
    made = list(_MADE)
    _MADE.clear()
    for settings, deployment_id, attempt in made:
        async with OpenStackDriver(settings, site="cleanup") as driver:
            await driver.release(
                Release(
                    deployment_id=deployment_id,
                    site="cleanup",
                    attempt=attempt,
                    idempotency_key=uuid.uuid4().hex,
                    reason="test over",
                )
            )


def release_of(order: Provision) -> Release:
    """The release of an order's attempt."""
    return Release(
        deployment_id=order.deployment_id,
        site=order.site,
        attempt=order.attempt,
        idempotency_key=uuid.uuid4().hex,
        reason="test done",
    )


@dataclass
class Progress:
    """A ``ProgressSink`` that keeps every report."""

    phases: list[tuple[str, str]]

    def __call__(
        self,
        phase: str,
        message: str = "",
        *,
        percent: float | None = None,
        details: Mapping[str, JsonValue] | None = None,
    ) -> None:
        self.phases.append((phase, message))


def progress() -> Progress:
    """A fresh progress recorder."""
    return Progress(phases=[])


def resource_ids(result: ProvisionResult, kind: str) -> list[str]:
    """Ids of the result's resources of one kind."""
    return [r.id for r in result.resources if r.kind == kind]


class CloudView:
    """What one project holds, seen through openstacksdk directly (blocking calls in threads)."""

    def __init__(self, cloud: str, project: str | None = None) -> None:
        overrides = {"project_name": project} if project else {}
        self.connection = openstack.connect(cloud=cloud, **overrides)

    async def held(self, order: Provision) -> dict[str, list[Any]]:
        """Every resource tagged with the order's attempt, by kind."""
        return await self.held_tag(attempt_tag(order.deployment_id, order.attempt))

    async def held_tag(self, tag: str) -> dict[str, list[Any]]:
        """Every resource tagged with an attempt tag, by kind."""
        return await asyncio.to_thread(self._held, tag)

    def _held(self, tag: str) -> dict[str, list[Any]]:
        c = self.connection
        volumes = c.block_storage.volumes(
            details=True, properties=json.dumps({"flotilla_attempt": tag})
        )
        return {
            "servers": list(c.compute.servers(details=True, tags=tag)),
            "volumes": list(volumes),
            "floating_ips": list(
                {
                    ip.id: ip for ip in [*c.network.ips(tags=tag), *c.network.ips(description=tag)]
                }.values()
            ),
            "security_groups": list(c.network.security_groups(tags=tag)),
            "networks": list(c.network.networks(tags=tag)),
            "keypairs": [k for k in c.compute.keypairs() if k.name.startswith(f"{tag}-")],
        }

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Any SDK call, in a thread."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()


@pytest.fixture
def admin_view(openstack_env: dict[str, str]) -> Iterator[CloudView]:
    """The admin project seen directly."""
    view = CloudView(ADMIN_CLOUD)
    yield view
    view.close()


@pytest.fixture
def low_view(low_project: str) -> Iterator[CloudView]:
    """The small project seen directly."""
    view = CloudView(DEMO_CLOUD, LOW_PROJECT)
    yield view
    view.close()


async def assert_released(driver: OpenStackDriver, view: CloudView, order: Provision) -> None:
    """Release the attempt and check that nothing tagged with it is left."""
    await driver.release(release_of(order))
    left = await view.held(order)
    assert {kind: items for kind, items in left.items() if items} == {}
