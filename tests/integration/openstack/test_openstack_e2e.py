"""Flotilla end to end on RabbitMQ and PostgreSQL with two OpenStack sites of the testbed.

Gateway, scheduler and agents run as in ``flotilla up --bus``; the agents drive the real
testbed: ``os-low`` is the small project (2 instances, 4 cores, no floating IPs), preferred
by the group's SLA, and ``os-main`` the roomy admin project. Requests go through the
gateway's HTTP API and every check reads what a client sees, or what the cloud holds.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flotilla.agents.config import AgentConfig
from flotilla.agents.driver import attempt_tag
from flotilla.broker import DELIVERY_POLICY, site_topology
from flotilla.bus.rabbitmq import RabbitBus
from flotilla.client import FlotillaClient
from flotilla.scheduler.placement import Sla
from flotilla.stack import Stack, rabbit_buses
from tests.integration.openstack.conftest import (
    DEMO_CLOUD,
    INDIGO_TEMPLATES,
    CloudView,
    admin_settings,
    low_settings,
    remember,
    site_section,
)
from tests.integration.openstack.test_openstack_driver import (
    GPU_VM,
    TWO_WORKERS,
    VM_WITH_VOLUME,
    tiny_vms,
)
from tests.integration.support import settings_for, start_agent

pytestmark = [pytest.mark.openstack, pytest.mark.rabbitmq, pytest.mark.timeout(420)]

GROUP = "local"  # the gateway's group when authentication is off
LOW, MAIN = "os-low", "os-main"


def site_file(name: str, state: Path, section: dict[str, Any]) -> dict[str, Any]:
    """The site file of an OpenStack site whose agent state lives under the test's directory."""
    return {
        "site": name,
        "kind": "openstack",
        "state_dir": str(state / name),
        "lease_interval": 1,
        "capacity_interval": 5,
        "openstack": section,
    }


def openstack_site(name: str, state: Path, section: dict[str, Any]) -> AgentConfig:
    """The site file, loaded."""
    return AgentConfig.model_validate(site_file(name, state, section))


def slas(*sites: tuple[str, float]) -> list[Sla]:
    """One SLA per site for the group, with its preference."""
    return [Sla(id=f"sla-{site}", group=GROUP, site=site, preference=p) for site, p in sites]


@pytest.fixture
async def stack(
    vhost_url: str, database: str, tmp_path: Path, low_project: str
) -> AsyncIterator[Stack]:
    """Both OpenStack sites running, the small one preferred."""
    settings = settings_for(database)
    sites = [
        openstack_site(LOW, tmp_path, site_section(DEMO_CLOUD, project=low_project)),
        openstack_site(MAIN, tmp_path, site_section()),
    ]
    async with Stack(
        settings,
        buses=rabbit_buses(settings, vhost_url),
        sites=sites,
        slas=slas((LOW, 2.0), (MAIN, 1.0)),
        verify_senders=False,  # every part uses guest here; per-site logins are tested apart
        port=0,
    ) as running:
        await running.wait_for_sites([LOW, MAIN], timeout=60)
        yield running


@pytest.fixture
def views(admin_view: CloudView, low_view: CloudView) -> dict[str, CloudView]:
    """Each site's project, seen directly."""
    return {MAIN: admin_view, LOW: low_view}


CREATED = frozenset({"CREATE_COMPLETE", "CREATE_FAILED"})
DELETED = frozenset({"DELETE_COMPLETE", "DELETE_FAILED"})


async def settled(
    client: FlotillaClient, deployment_id: str, final: frozenset[str] = CREATED
) -> dict[str, Any]:
    """The deployment once its status is one of ``final``."""
    async with asyncio.timeout(300):
        while True:
            view = await client.get(deployment_id)
            if view["status"] in final:
                return view
            await asyncio.sleep(1)  # polled as a client would


def remember_everywhere(deployment_id: str) -> None:
    """Release the deployment's first two attempts at both sites after the test."""
    for settings in (admin_settings(), low_settings()):
        for attempt in (1, 2):
            remember(settings, deployment_id, attempt)


async def held_by(views: dict[str, CloudView], view: dict[str, Any]) -> dict[str, list[Any]]:
    """What every attempt of a deployment still holds at its site, non-empty kinds only."""
    left: dict[str, list[Any]] = {}
    for attempt in view["attempts"]:
        tag = attempt_tag(view["id"], attempt["number"])
        for kind, items in (await views[attempt["site"]].held_tag(tag)).items():
            left.setdefault(kind, []).extend(items)
    return {kind: items for kind, items in left.items() if items}


async def test_vm_templates_complete_with_outputs_and_delete_leaves_nothing(
    stack: Stack, views: dict[str, CloudView]
) -> None:
    """Single VM, VM with volume, scaled pair and GPU VM complete; deleting empties the site."""
    templates = {
        "single": tiny_vms(1),
        "volume": VM_WITH_VOLUME,
        "pair": TWO_WORKERS,
        "gpu": GPU_VM,
    }
    async with FlotillaClient(stack.url) as client:
        created = {
            name: (await client.create(text, site=MAIN))["id"] for name, text in templates.items()
        }
        for deployment_id in created.values():
            remember_everywhere(deployment_id)
        views_done = await asyncio.gather(*(settled(client, d) for d in created.values()))
        done = dict(zip(created, views_done, strict=True))

        for name, view in done.items():
            assert view["status"] == "CREATE_COMPLETE", (name, view)
            assert [a["site"] for a in view["attempts"]] == [MAIN]
        assert done["volume"]["outputs"]["volume_id"]
        assert len(done["volume"]["outputs"]["server_address"]) == 1
        assert len(set(done["pair"]["outputs"]["addresses"])) == 2
        assert (
            done["gpu"]["outputs"]["trainer_id"]
            == done["gpu"]["outputs"]["nodes"]["trainer"]["ids"][0]
        )
        held = {name: await held_by(views, view) for name, view in done.items()}
        assert len(held["pair"]["servers"]) == 2
        assert held["gpu"]["servers"][0].flavor["original_name"] == "g1.a100x1"
        assert held["volume"]["volumes"][0].status == "in-use"

        for deployment_id in created.values():
            await client.delete(deployment_id)
        deleted = await asyncio.gather(*(settled(client, d, DELETED) for d in created.values()))
        for name, view in zip(created, deleted, strict=True):
            assert view["status"] == "DELETE_COMPLETE", (name, view)
            assert await held_by(views, view) == {}, name


async def test_over_the_first_sites_quota_fails_there_and_completes_on_the_second(
    stack: Stack, views: dict[str, CloudView]
) -> None:
    """The preferred small site has no floating IPs: quota_exceeded there, complete on main."""
    template = (INDIGO_TEMPLATES / "simple-node.yml").read_text()
    async with FlotillaClient(stack.url) as client:
        created = await client.create(template)
        remember_everywhere(created["id"])
        view = await settled(client, created["id"])

        assert view["status"] == "CREATE_COMPLETE", view
        first, second = view["attempts"]
        assert (first["site"], first["outcome"], first["cause_code"]) == (
            LOW,
            "failed",
            "quota_exceeded",
        )
        assert "floatingip" in first["cause"].lower()
        assert (second["site"], second["outcome"]) == (MAIN, "succeeded")
        held = await held_by(views, view)
        (ip,) = held["floating_ips"]
        assert view["outputs"]["node_ip"] == ip.floating_ip_address
        assert len(held["servers"]) == 1
        # The failed attempt was rolled back and released at the small site.
        assert first["released"] is True
        left = await views[LOW].held_tag(attempt_tag(created["id"], 1))
        assert {kind: items for kind, items in left.items() if items} == {}

        await client.delete(created["id"])
        assert await held_by(views, await settled(client, created["id"], DELETED)) == {}


async def test_a_flavor_that_cannot_fit_is_never_chosen(stack: Stack) -> None:
    """A node bigger than every flavor is refused by placement, naming each site's reason."""
    template = tiny_vms(1).replace("mem_size: 512 MB", "mem_size: 600 GB")
    async with FlotillaClient(stack.url) as client:
        created = await client.create(template)
        view = await settled(client, created["id"])

    assert view["status"] == "CREATE_FAILED", view
    assert view["attempts"] == []
    for site in (LOW, MAIN):
        assert site in view["status_reason"]
    assert "no flavor" in view["status_reason"]


async def test_an_agent_killed_mid_provision_resumes_without_a_second_server(
    vhost_url: str, database: str, tmp_path: Path, admin_view: CloudView
) -> None:
    """SIGKILL once the first server exists; the restarted agent finishes with the same servers."""
    site = "os-restart"
    path = tmp_path / f"{site}.yaml"
    path.write_text(yaml.safe_dump(site_file(site, tmp_path, site_section())))
    admin = RabbitBus(url=vhost_url, policy=DELIVERY_POLICY)
    async with admin:
        await admin.declare(site_topology(site))
    agent = start_agent(path, vhost_url)
    settings = settings_for(database)
    try:
        async with Stack(
            settings,
            buses=rabbit_buses(settings, vhost_url),
            slas=slas((site, 1.0)),
            verify_senders=False,
            port=0,
        ) as stack:
            await stack.wait_for_sites([site], timeout=60)
            async with FlotillaClient(stack.url) as client:
                created = await client.create(TWO_WORKERS)
                remember(admin_settings(), created["id"], 1)
                tag = attempt_tag(created["id"], 1)
                async with asyncio.timeout(120):
                    while not (await admin_view.held_tag(tag))["servers"]:  # noqa: ASYNC110
                        await asyncio.sleep(0.2)  # the cloud has no event to wait on
                agent.send_signal(signal.SIGKILL)
                await asyncio.to_thread(agent.wait)
                before = {s.id for s in (await admin_view.held_tag(tag))["servers"]}
                agent = start_agent(path, vhost_url)
                view = await settled(client, created["id"])
                held = await admin_view.held_tag(tag)

                assert view["status"] == "CREATE_COMPLETE", view
                assert len(view["attempts"]) == 1
                assert len(held["servers"]) == 2
                assert before <= {s.id for s in held["servers"]}
                assert sorted(view["outputs"]["addresses"]) == sorted(
                    a["addr"] for s in held["servers"] for n in s.addresses.values() for a in n
                )

                await client.delete(created["id"])
                deleted = await settled(client, created["id"], DELETED)
                assert deleted["status"] == "DELETE_COMPLETE"
                left = await admin_view.held_tag(tag)
                assert {kind: items for kind, items in left.items() if items} == {}
    finally:
        agent.terminate()
        await asyncio.to_thread(agent.wait, 30)
