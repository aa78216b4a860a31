"""A Slurm site end to end: gateway, scheduler and the Slurm agent on RabbitMQ and PostgreSQL.

The agent drives the Slurm testbed over SSH (directly or through its bastion); requests go
through the gateway's HTTP API, and every check reads what a client sees (status, attempts,
causes, outputs) or what Slurm itself says (squeue, sacct) on the login node.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
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
from flotilla.schemas import SiteState
from flotilla.stack import Stack, rabbit_buses
from tests.integration.slurm.conftest import LoginShell, jump_section, site_section
from tests.integration.support import settings_for, start_agent

pytestmark = [pytest.mark.slurm, pytest.mark.rabbitmq, pytest.mark.e2e, pytest.mark.timeout(240)]

EXAMPLES = Path(__file__).parents[3] / "examples"
SITE = "hpc-testbed"
# Without authentication every request belongs to the group "local".
SLAS = [Sla(id="sla-hpc-testbed", group="local", site=SITE)]
StackFactory = Callable[..., AbstractAsyncContextManager[Stack]]


def slurm_site(env: dict[str, str], state: Path, **slurm: Any) -> dict[str, Any]:
    """The site file of the testbed as a Slurm site (a mapping, as YAML would give it)."""
    return {
        "site": SITE,
        "kind": "slurm",
        "state_dir": str(state),
        "lease_interval": 1,
        "slurm": site_section(env, **slurm),
    }


@pytest.fixture
def run_stack(
    vhost_url: str, database: str, slurm_env: dict[str, str], tmp_path: Path
) -> StackFactory:
    """Start gateway, scheduler and the Slurm site's agent with the given ``slurm:`` settings."""

    @asynccontextmanager
    async def started(*, wait: bool = True, **slurm: Any) -> AsyncIterator[Stack]:
        settings = settings_for(database)
        site = AgentConfig.model_validate(slurm_site(slurm_env, tmp_path / "agent", **slurm))
        async with Stack(
            settings,
            buses=rabbit_buses(settings, vhost_url),
            sites=[site],
            slas=SLAS,
            verify_senders=False,
            port=0,
        ) as stack:
            if wait:
                await stack.wait_for_sites([SITE])
            yield stack

    return started


FINAL = ("CREATE_COMPLETE", "CREATE_FAILED", "DELETE_COMPLETE", "DELETE_FAILED")


async def finished(
    client: FlotillaClient, deployment_id: str, statuses: tuple[str, ...] = FINAL
) -> dict[str, Any]:
    """The deployment once its status is one of ``statuses`` (a final one by default)."""
    async with asyncio.timeout(150):
        while True:
            view = await client.get(deployment_id)
            if view["status"] in statuses:
                return view
            await asyncio.sleep(0.5)


def job_name(deployment_id: str, node: str, attempt: int = 1) -> str:
    """The Slurm job name the agent gives a node of a deployment's attempt."""
    return f"{attempt_tag(deployment_id, attempt)}.{node}"


async def wait_running(login: LoginShell, name: str, timeout: float = 60) -> str:
    """The job id once squeue shows the named job RUNNING."""
    async with asyncio.timeout(timeout):
        while True:
            for line in await login.queued(name):
                job_id, state = line.split()
                if state == "RUNNING":
                    return job_id
            await asyncio.sleep(0.5)


def sleeper(seconds: int) -> str:
    """A template whose batch job sleeps (node ``nap``)."""
    return f"""\
tosca_definitions_version: tosca_simple_yaml_1_3
topology_template:
  node_templates:
    nap:
      type: tosca.nodes.flotilla.BatchJob
      properties:
        command: ["/bin/sh", "-c", "echo started; sleep {seconds}; echo finished"]
        memory: 64 MB
        wall_time: 10 m
"""


GPU_JOB = """\
tosca_definitions_version: tosca_simple_yaml_1_3
topology_template:
  node_templates:
    train:
      type: tosca.nodes.flotilla.BatchJob
      properties:
        command: ["/bin/sh", "-c", "echo gpus=$CUDA_VISIBLE_DEVICES"]
        memory: 256 MB
        gpus: {count}
        gpu_vendor: NVIDIA
        gpu_model: A100
        wall_time: 5 m
"""


async def test_batch_job_completes_with_its_exit_code_then_is_deleted(
    run_stack: StackFactory, login: LoginShell
) -> None:
    """hello-batch on Slurm: CREATE_COMPLETE with exit code and output, then DELETE_COMPLETE."""
    async with run_stack() as stack, FlotillaClient(stack.url) as client:
        template = (EXAMPLES / "hello-batch.yaml").read_text()
        created = await client.create(template, inputs={"greeting": "hello slurm"})
        view = await finished(client, created["id"])

        assert view["status"] == "CREATE_COMPLETE", view
        outputs = view["outputs"]
        assert outputs["greeting"] == "hello slurm"
        assert outputs["hello_exit_code"] == 0
        assert outputs["hello_state"] == "COMPLETED"
        assert "step 3" in outputs["hello_stdout_tail"]
        assert [(a["site"], a["outcome"]) for a in view["attempts"]] == [(SITE, "succeeded")]
        [line] = await login.settled(job_name(created["id"], "hello"))
        assert line.split("|")[:3] == [str(outputs["hello_job_id"]), "COMPLETED", "0:0"]

        await client.delete(created["id"])
        deleted = await finished(client, created["id"], ("DELETE_COMPLETE", "DELETE_FAILED"))
        assert deleted["status"] == "DELETE_COMPLETE", deleted


async def test_a_failing_job_ends_create_failed_with_its_cause(run_stack: StackFactory) -> None:
    """A job exiting 2 ends CREATE_FAILED; the attempt's cause has the code and the message."""
    async with run_stack() as stack, FlotillaClient(stack.url) as client:
        created = await client.create((EXAMPLES / "failing-batch.yaml").read_text())
        view = await finished(client, created["id"])

    assert view["status"] == "CREATE_FAILED", view
    [attempt] = view["attempts"]
    assert attempt["outcome"] == "failed"
    assert attempt["cause_code"] == "job_failed"
    assert "exit code 2" in attempt["cause"]
    assert "input file not found: data.csv" in attempt["cause"]


async def test_a_gpu_job_gets_its_gres(run_stack: StackFactory, login: LoginShell) -> None:
    """One A100 asked for in TOSCA is allocated as gres/gpu:a100 by Slurm."""
    async with run_stack() as stack, FlotillaClient(stack.url) as client:
        created = await client.create(GPU_JOB.format(count=1))
        view = await finished(client, created["id"])

    assert view["status"] == "CREATE_COMPLETE", view
    assert view["outputs"]["train_stdout_tail"] == "gpus=0"
    [line] = await login.settled(job_name(created["id"], "train"))
    assert "gres/gpu:a100=1" in line.split("|")[3]


async def test_more_gpus_than_the_site_has_are_not_placed(
    run_stack: StackFactory, login: LoginShell
) -> None:
    """Four GPUs per node on a site whose nodes have two: not placed there, no job submitted."""
    async with run_stack() as stack, FlotillaClient(stack.url) as client:
        created = await client.create(GPU_JOB.format(count=4))
        view = await finished(client, created["id"])

    assert view["status"] == "CREATE_FAILED", view
    assert view["attempts"] == []
    assert "4 GPU" in view["status_reason"]
    assert await login.accounted(job_name(created["id"], "train")) == []


@pytest.mark.parametrize("route", ["direct", "bastion"])
async def test_delete_cancels_a_running_job(
    run_stack: StackFactory, login: LoginShell, slurm_env: dict[str, str], route: str
) -> None:
    """Deleting a deployment whose job runs cancels the job; squeue no longer lists it."""
    extra = {"jump": jump_section(slurm_env)} if route == "bastion" else {}
    async with run_stack(**extra) as stack, FlotillaClient(stack.url) as client:
        created = await client.create(sleeper(300))
        name = job_name(created["id"], "nap")
        await wait_running(login, name)

        await client.delete(created["id"])
        view = await finished(client, created["id"], ("DELETE_COMPLETE", "DELETE_FAILED"))

    assert view["status"] == "DELETE_COMPLETE", view
    await login.wait_gone(name)
    [line] = await login.settled(name)
    assert line.split("|")[1].startswith("CANCELLED")


async def test_an_unknown_host_key_keeps_the_site_down(
    run_stack: StackFactory, login: LoginShell, tmp_path: Path
) -> None:
    """With the login node's key unknown the site is DOWN, nothing is placed or submitted."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    async with (
        run_stack(wait=False, known_hosts=str(empty)) as stack,
        FlotillaClient(stack.url) as client,
    ):
        async with asyncio.timeout(30):
            # The registry has no change signal to wait on.
            while (view := stack.registry.get(SITE)) is None or view.state is not SiteState.DOWN:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        assert view.capacity is None
        created = await client.create((EXAMPLES / "hello-batch.yaml").read_text())
        deployment = await finished(client, created["id"])

    assert deployment["status"] == "CREATE_FAILED", deployment
    assert deployment["attempts"] == []
    assert await login.accounted(job_name(created["id"], "hello")) == []


async def test_capacity_seen_by_the_scheduler_matches_sinfo(
    run_stack: StackFactory, login: LoginShell
) -> None:
    """The shapes the scheduler holds for the site are sinfo's partitions and node sizes."""
    async with run_stack() as stack:
        view = stack.registry.get(SITE)
    assert view is not None
    assert view.capacity is not None
    shapes = {
        s.name: (s.cpus, s.memory_mb, s.gpu.count if s.gpu else 0)
        for s in view.capacity.capabilities.shapes
    }
    rows = await login.run("sinfo -h -o '%R|%c|%m|%G'")
    expected = {}
    for row in rows.split():
        partition, cpus, memory, gres = row.split("|")
        expected[partition] = (float(cpus), int(memory), int(gres.split("(")[0].split(":")[-1]))
    assert shapes == expected


async def test_an_agent_killed_mid_job_resumes_the_same_job(
    vhost_url: str, database: str, slurm_env: dict[str, str], login: LoginShell, tmp_path: Path
) -> None:
    """SIGKILL the agent while its job runs; the restarted agent follows that job, submits none."""
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(slurm_site(slurm_env, tmp_path / "agent")))
    settings = settings_for(database)
    admin = RabbitBus(url=vhost_url, policy=DELIVERY_POLICY)
    async with admin:
        await admin.declare(site_topology(SITE))
    agent = start_agent(site_file, vhost_url)
    try:
        async with (
            Stack(
                settings,
                buses=rabbit_buses(settings, vhost_url),
                slas=SLAS,
                verify_senders=False,
                port=0,
            ) as stack,
            FlotillaClient(stack.url) as client,
        ):
            await stack.wait_for_sites([SITE])
            created = await client.create(sleeper(8))
            name = job_name(created["id"], "nap")
            job_id = await wait_running(login, name)
            agent.send_signal(signal.SIGKILL)
            await asyncio.to_thread(agent.wait)
            agent = start_agent(site_file, vhost_url)
            view = await finished(client, created["id"])
    finally:
        agent.terminate()
        await asyncio.to_thread(agent.wait, 30)

    assert view["status"] == "CREATE_COMPLETE", view
    assert len(view["attempts"]) == 1
    assert str(view["outputs"]["nap_job_id"]) == job_id
    accounted = await login.settled(name)
    assert [line.split("|")[0] for line in accounted] == [job_id]
