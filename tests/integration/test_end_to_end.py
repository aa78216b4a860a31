"""Flotilla end to end on the real RabbitMQ and PostgreSQL, through the REST gateway.

Gateway, scheduler and two local-site agents run as in ``flotilla up --bus``; requests go
through the gateway's HTTP API, jobs are real processes, and every assertion reads what a
client would see: statuses, attempts with their causes, outputs, and the event stream.
"""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from flotilla.agents.config import AgentConfig
from flotilla.broker import DELIVERY_POLICY, site_topology
from flotilla.bus.rabbitmq import RabbitBus
from flotilla.client import FINAL, Event, FlotillaClient
from flotilla.stack import Stack, embedded_slas, rabbit_buses
from tests.integration.support import broker, settings_for, start_agent

pytestmark = [pytest.mark.rabbitmq, pytest.mark.e2e, pytest.mark.timeout(240)]

EXAMPLES = Path(__file__).parents[2] / "examples"
SITES = ("local-1", "local-2")


def local_site(name: str, state: Path) -> AgentConfig:
    """A local site whose state lives under the test's directory."""
    return AgentConfig.model_validate(
        {"site": name, "kind": "local", "state_dir": str(state / name), "lease_interval": 1}
    )


@pytest.fixture
async def stack(vhost_url: str, database: str, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = settings_for(database)
    async with Stack(
        settings,
        buses=rabbit_buses(settings, vhost_url),
        sites=[local_site(name, tmp_path) for name in SITES],
        slas=embedded_slas(SITES),
        verify_senders=False,  # every part uses guest here; per-site logins are tested apart
        port=0,
    ) as running:
        await running.wait_for_sites(SITES)
        yield running


async def collect(
    client: FlotillaClient, deployment_id: str, after: int | None = None
) -> list[Event]:
    """Every event of a deployment until its next final status."""
    async with asyncio.timeout(120):
        return [e async for e in client.events(deployment_id, after=after, until=FINAL)]


def statuses(events: list[Event]) -> list[str]:
    return [e.data["status"] for e in events if e.type.endswith("status_changed")]


async def test_batch_job_completes_with_outputs_then_is_released(stack: Stack) -> None:
    async with FlotillaClient(stack.url) as client:
        created = await client.create(
            (EXAMPLES / "hello-batch.yaml").read_text(), inputs={"greeting": "hello e2e"}
        )
        deployment_id = created["id"]
        events = await collect(client, deployment_id)
        view = await client.get(deployment_id)

        assert view["status"] == "CREATE_COMPLETE", view
        assert view["outputs"]["greeting"] == "hello e2e"
        assert view["outputs"]["hello_exit_code"] == 0
        assert "done" in view["outputs"]["hello_stdout_tail"] or "step 3" in str(view["outputs"])
        assert [a["outcome"] for a in view["attempts"]] == ["succeeded"]
        assert view["attempts"][0]["site"] in SITES

        # The stream is in order, starts with the request and ends at the final status ...
        ids = [e.id for e in events]
        assert ids == sorted(set(ids))
        assert statuses(events)[0] == "CREATE_IN_PROGRESS"
        assert statuses(events)[-1] == "CREATE_COMPLETE"
        assert any(e.type.endswith("progress_reported") for e in events)
        # ... and resumes from any event id with exactly what followed it.
        resumed = await collect(client, deployment_id, after=ids[1])
        assert [e.id for e in resumed] == ids[2:]

        await client.delete(deployment_id)
        after_delete = await collect(client, deployment_id, after=ids[-1])
        assert statuses(after_delete)[-1] == "DELETE_COMPLETE"
        assert any(e.type.endswith(".released") for e in after_delete)
        assert (await client.get(deployment_id))["status"] == "DELETE_COMPLETE"


async def test_a_failing_site_fails_over_and_both_causes_are_shown(stack: Stack) -> None:
    async with FlotillaClient(stack.url) as client:
        created = await client.create((EXAMPLES / "failover-batch.yaml").read_text())
        await collect(client, created["id"])
        view = await client.get(created["id"])

    assert view["status"] == "CREATE_COMPLETE", view
    first, second = view["attempts"]
    assert first["outcome"] == "failed"
    assert first["cause_code"] == "job_failed"
    assert "scratch disk missing" in first["cause"]
    assert first["released"] is True
    assert second["outcome"] == "succeeded"
    assert {first["site"], second["site"]} == set(SITES)


async def test_a_job_failing_everywhere_lists_every_cause(stack: Stack) -> None:
    async with FlotillaClient(stack.url) as client:
        created = await client.create((EXAMPLES / "failing-batch.yaml").read_text())
        await collect(client, created["id"])
        view = await client.get(created["id"])

    assert view["status"] == "CREATE_FAILED"
    assert [a["outcome"] for a in view["attempts"]] == ["failed", "failed"]
    for site in SITES:
        assert site in view["status_reason"]
    assert view["status_reason"].count("input file not found") == 2


async def until_exists(path: Path, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(path.exists):  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.1)


async def test_an_agent_killed_mid_job_resumes_without_running_it_twice(
    vhost_url: str, database: str, tmp_path: Path
) -> None:
    site = "worker-1"
    site_file = tmp_path / "worker-1.yaml"
    site_file.write_text(
        yaml.safe_dump(
            {
                "site": site,
                "kind": "local",
                "state_dir": str(tmp_path / "agent"),
                "lease_interval": 1,
            }
        )
    )
    runs = tmp_path / "runs.log"
    template = f"""\
tosca_definitions_version: tosca_simple_yaml_1_3
topology_template:
  node_templates:
    slow:
      type: tosca.nodes.flotilla.BatchJob
      properties:
        command: ["/bin/sh", "-c", "echo started >> {runs}; sleep 4; echo finished"]
        memory: 64 MB
"""
    settings = settings_for(database)
    admin = RabbitBus(url=vhost_url, policy=DELIVERY_POLICY)
    async with admin:
        await admin.declare(site_topology(site))
    agent = start_agent(site_file, vhost_url)
    try:
        async with Stack(
            settings,
            buses=rabbit_buses(settings, vhost_url),
            slas=embedded_slas([site]),
            verify_senders=False,
            port=0,
        ) as stack:
            await stack.wait_for_sites([site])
            async with FlotillaClient(stack.url) as client:
                created = await client.create(template)
                await until_exists(runs)
                agent.send_signal(signal.SIGKILL)
                agent.wait()
                agent = start_agent(site_file, vhost_url)
                await collect(client, created["id"])
                view = await client.get(created["id"])
    finally:
        agent.terminate()
        agent.wait(timeout=30)

    assert view["status"] == "CREATE_COMPLETE", view
    assert runs.read_text().splitlines() == ["started"]
    assert len(view["attempts"]) == 1
    assert view["outputs"]["slow_exit_code"] == 0


async def test_an_agent_on_its_own_site_login_runs_a_deployment(
    vhost_url: str, database: str, tmp_path: Path
) -> None:
    """The operator's path: add-site prints a login, the agent runs with it, senders checked.

    The agent's broker user may only consume its own command queue and publish its own
    reports; the scheduler accepts reports only from that user. A deployment still completes.
    """
    site = "ws-own-login"
    vhost = vhost_url.rsplit("/", 1)[1]
    env = {
        **os.environ,
        "FLOTILLA_BUS__URL": vhost_url,
        "FLOTILLA_MANAGEMENT__VHOST": urllib.parse.unquote(vhost),
        "FLOTILLA_LOG__LEVEL": "warning",
    }
    broker("init", env=env)
    added = broker("add-site", site, env=env)
    login = dict(line.split("=", 1) for line in added.split() if "=" in line)
    site_url = login["FLOTILLA_BUS__URL"]
    assert f"flotilla-site-{site}" in site_url
    site_file = tmp_path / "site.yaml"
    site_file.write_text(
        yaml.safe_dump(
            {"site": site, "kind": "local", "state_dir": str(tmp_path / "a"), "lease_interval": 1}
        )
    )
    agent = start_agent(site_file, site_url)
    settings = settings_for(database)
    try:
        async with Stack(
            settings,
            buses=rabbit_buses(settings, vhost_url),
            slas=embedded_slas([site]),
            verify_senders=True,
            port=0,
        ) as stack:
            await stack.wait_for_sites([site])
            async with FlotillaClient(stack.url) as client:
                created = await client.create((EXAMPLES / "hello-batch.yaml").read_text())
                await collect(client, created["id"])
                view = await client.get(created["id"])
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        broker("remove-site", site, env=env)

    assert view["status"] == "CREATE_COMPLETE", view
    assert view["attempts"][0]["site"] == site
