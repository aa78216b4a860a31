"""The scheduler on RabbitMQ and PostgreSQL survives SIGKILL mid-burst, restarted or replaced.

Two simulated sites report heartbeats and answer commands over the real broker; one fails a
third of its deployments so failover happens under the crash too. Every request must reach
CREATE_COMPLETE exactly once, and no site may get two different provision commands for one
deployment (a redelivered copy of the same command, same idempotency key, is harmless).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from flotilla.broker import (
    DELIVERY_POLICY,
    EVENTS,
    SCHEDULER_HEARTBEATS,
    SCHEDULER_REPORTS,
    SCHEDULER_REQUESTS,
    core_topology,
    route,
    site_commands_queue,
    site_topology,
)
from flotilla.bus import Binding, Delivery, Queue, Topology
from flotilla.bus.rabbitmq import RabbitBus
from flotilla.schemas import (
    AttemptRef,
    Capabilities,
    Capacity,
    DeploymentProvisioned,
    DeploymentReleased,
    DeploymentRequest,
    DeploymentRequested,
    DeploymentStatus,
    DeploymentStatusChanged,
    Envelope,
    Failure,
    FailureCause,
    Lease,
    Message,
    ProvisionDeployment,
    Provisioned,
    ProvisioningFailed,
    QuotaUsage,
    ReleaseDeployment,
    Shape,
    SiteCapacity,
    SiteKind,
    SiteLease,
    WorkloadKind,
    decode,
    new_id,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(300)]

TEMPLATE = """\
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  inputs:
    cores: {type: integer, default: 1}
  node_templates:
    job:
      type: tosca.nodes.flotilla.BatchJob
      properties:
        command: ["echo", "hello"]
        cpus: {get_input: cores}
        memory: 1 GB
"""
BURST = 120


async def rabbitmqctl(*args: str) -> None:
    """Run a rabbitmqctl command (queue housekeeping the AMQP client cannot do)."""
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "-q",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await process.wait()


@dataclass
class Sites:
    """Two simulated sites on the real broker, and what they and the event stream saw."""

    names: tuple[str, str]
    failing: set[str] = field(default_factory=set)
    provisions: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))
    finals: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    sequence: int = 0

    def capacity(self, site: str) -> SiteCapacity:
        shape = Shape(name="node", cpus=64, memory_mb=256_000, available=1000)
        data = Capacity(
            site=site,
            kind=SiteKind.SLURM,
            sequence=self.sequence,
            capabilities=Capabilities(workload_kinds=[WorkloadKind.BATCH_JOB], shapes=[shape]),
            quotas=[QuotaUsage(resource="cores", limit=1_000_000)],
        )
        return SiteCapacity.create(data, source=f"/sites/{site}")

    def lease(self, site: str) -> SiteLease:
        data = Lease(
            site=site,
            kind=SiteKind.SLURM,
            ttl=timedelta(seconds=5),
            sequence=self.sequence,
            agent_instance="test",
        )
        return SiteLease.create(data, source=f"/sites/{site}")


def reply(sites: Sites, site: str, message: Message) -> Envelope | None:
    """What a site answers to a command: failure for the failing set at the first site."""
    if isinstance(message, ReleaseDeployment):
        ref = AttemptRef(
            deployment_id=message.data.deployment_id, site=site, attempt=message.data.attempt
        )
        return DeploymentReleased.create(ref, source=f"/sites/{site}", cause=message)
    if not isinstance(message, ProvisionDeployment):
        return None
    data = message.data
    sites.provisions[data.deployment_id].append((site, data.idempotency_key))
    if site == sites.names[0] and data.deployment_id in sites.failing:
        cause = FailureCause(code="quota_exceeded", message="no room", retryable=False)
        failure = Failure(
            deployment_id=data.deployment_id, site=site, attempt=data.attempt, cause=cause
        )
        return ProvisioningFailed.create(failure, source=f"/sites/{site}", cause=message)
    done = Provisioned(deployment_id=data.deployment_id, site=site, attempt=data.attempt)
    return DeploymentProvisioned.create(done, source=f"/sites/{site}", cause=message)


@pytest.fixture
async def sites(amqp_url: str, unique: str) -> AsyncIterator[tuple[Sites, RabbitBus]]:
    """Declare the topology, purge the scheduler's queues, and run two simulated sites."""
    sites = Sites(names=(f"t{unique[:6]}a", f"t{unique[:6]}b"))
    watch = f"test.events.{unique}"
    async with RabbitBus(url=amqp_url, policy=DELIVERY_POLICY, name="crash-sites") as bus:
        await bus.declare(core_topology())
        for site in sites.names:
            await bus.declare(site_topology(site))
        await bus.declare(
            Topology(
                policy=DELIVERY_POLICY,
                queues=(Queue(name=watch, delivery_limit=None),),
                bindings=(
                    Binding(queue=watch, exchange=EVENTS, pattern="deployment.status_changed.#"),
                ),
            )
        )
        for queue in (SCHEDULER_REQUESTS, SCHEDULER_REPORTS, SCHEDULER_HEARTBEATS):
            await rabbitmqctl("purge_queue", queue)

        async def watch_events(delivery: Delivery) -> None:
            message = decode(delivery.body)
            if (
                isinstance(message, DeploymentStatusChanged)
                and message.data.status is DeploymentStatus.CREATE_COMPLETE
            ):
                sites.finals[message.data.deployment_id].add(message.id)

        await bus.subscribe_raw(watch, watch_events)
        for site in sites.names:

            async def on_command(message: Message, delivery: Delivery, site: str = site) -> None:
                answer = reply(sites, site, message)
                if answer is not None:
                    await bus.publish(answer, route(answer))

            await bus.subscribe(site_commands_queue(site), on_command, prefetch=32)

        async def heartbeats() -> None:
            while True:
                sites.sequence += 1
                for site in sites.names:
                    for message in (sites.lease(site), sites.capacity(site)):
                        await bus.publish(message, route(message))
                await asyncio.sleep(0.5)

        beat = asyncio.create_task(heartbeats())
        try:
            yield sites, bus
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
        await bus.close()
    await rabbitmqctl("delete_queue", watch)
    for site in sites.names:
        await rabbitmqctl("delete_queue", site_commands_queue(site))


@pytest.fixture
def scheduler_env(
    database: str, amqp_url: str, tmp_path: Path, sites: tuple[Sites, RabbitBus]
) -> dict[str, str]:
    """Environment of a scheduler process for this test's database and sites."""
    names = sites[0].names
    sla = tmp_path / "sla.yaml"
    sla.write_text("".join(f"- {{id: sla-{s}, group: physics, site: {s}}}\n" for s in names))
    return {
        **os.environ,
        "FLOTILLA_BUS__URL": amqp_url,
        "FLOTILLA_SCHEDULER__STORE_URL": database,
        "FLOTILLA_SCHEDULER__SLA_FILE": str(sla),
        "FLOTILLA_SCHEDULER__VERIFY_SENDERS": "false",
        "FLOTILLA_SCHEDULER__GRACE": "PT10S",
        "FLOTILLA_LOG__FORMAT": "json",
    }


@pytest.fixture
def schedulers(
    scheduler_env: dict[str, str], tmp_path: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Scheduler processes started by the test; all killed at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def start(
    schedulers: list[subprocess.Popen[bytes]], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    code = "from flotilla.cli import main; main()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "scheduler", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )
    schedulers.append(process)
    return process


async def burst(bus: RabbitBus, sites: Sites) -> list[str]:
    """Publish the burst of requests; every third fails at the first site."""
    ids = []
    for index in range(BURST):
        did = new_id()
        ids.append(did)
        if index % 3 == 0:
            sites.failing.add(did)
        request = DeploymentRequest(
            deployment_id=did,
            template=TEMPLATE,
            inputs={"cores": 1 + index % 4},
            owner="ann",
            group="physics",
        )
        message = DeploymentRequested.create(request, source="/portal")
        await bus.publish(message, route(message))
    return ids


async def until(condition: object, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if condition():  # type: ignore[operator]
                return
            await asyncio.sleep(0.1)


def assert_each_completed_once(sites: Sites, ids: list[str]) -> None:
    """One CREATE_COMPLETE per deployment, and never two commands for one deployment at one site."""
    assert {did: len(sites.finals[did]) for did in ids} == dict.fromkeys(ids, 1)
    failovers = [d for d in ids if len({site for site, _ in sites.provisions[d]}) == 2]
    assert failovers, "no deployment failed over: the test would not exercise failover"
    for did in ids:
        keys_by_site: dict[str, set[str]] = defaultdict(set)
        for site, key in sites.provisions[did]:
            keys_by_site[site].add(key)
        assert all(len(keys) == 1 for keys in keys_by_site.values()), (did, sites.provisions[did])
        # Ranking may send a deployment to either site first; only the first site fails.
        failed_first = did in sites.failing and sites.provisions[did][0][0] == sites.names[0]
        expected_sites = 2 if failed_first else 1
        assert len(keys_by_site) == expected_sites, (did, sites.provisions[did])


async def test_sigkill_mid_burst_then_restart(
    sites: tuple[Sites, RabbitBus],
    scheduler_env: dict[str, str],
    schedulers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """A scheduler killed mid-burst and started again finishes every request exactly once."""
    state, bus = sites
    first = start(schedulers, scheduler_env, tmp_path / "scheduler-1.log")
    ids = await burst(bus, state)
    await until(lambda: sum(bool(state.finals[d]) for d in ids) >= BURST // 4, timeout=120)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    done_at_kill = sum(bool(state.finals[d]) for d in ids)
    start(schedulers, scheduler_env, tmp_path / "scheduler-2.log")
    await until(lambda: all(state.finals[d] for d in ids), timeout=180)
    assert done_at_kill < BURST, "the kill came after the burst was already done"
    assert_each_completed_once(state, ids)


async def test_standby_takes_over_when_the_active_scheduler_is_killed(
    sites: tuple[Sites, RabbitBus],
    scheduler_env: dict[str, str],
    schedulers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """With a standby running, killing the active scheduler mid-burst loses nothing."""
    state, bus = sites
    active = start(schedulers, scheduler_env, tmp_path / "active.log")
    warmup = await burst(bus, state)
    await until(lambda: any(state.finals[d] for d in warmup), timeout=120)
    start(schedulers, scheduler_env, tmp_path / "standby.log")
    ids = warmup + await burst(bus, state)
    await until(lambda: sum(bool(state.finals[d]) for d in ids) >= len(ids) // 2, timeout=120)
    active.send_signal(signal.SIGKILL)
    active.wait(timeout=30)
    done_at_kill = sum(bool(state.finals[d]) for d in ids)
    await until(lambda: all(state.finals[d] for d in ids), timeout=180)
    assert done_at_kill < len(ids), "the kill came after the burst was already done"
    assert_each_completed_once(state, ids)
