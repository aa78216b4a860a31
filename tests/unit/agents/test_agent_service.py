"""The agent runtime on the in-memory bus, around a scripted driver."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from flotilla.agents.config import AgentConfig
from flotilla.agents.driver import (
    AttemptState,
    ProgressSink,
    ProvisioningError,
    ProvisionResult,
    SiteSnapshot,
    SiteUnavailableError,
)
from flotilla.agents.inbox import Inbox
from flotilla.agents.service import AgentService
from flotilla.broker import (
    DELIVERY_POLICY,
    REPORTS,
    core_topology,
    route,
    site_topology,
    site_user,
)
from flotilla.bus import Binding, Delivery, Queue, Topology
from flotilla.bus.memory import MemoryBroker, MemoryBus
from flotilla.schemas import (
    AttemptRef,
    Capabilities,
    DeploymentProvisioned,
    DeploymentReleased,
    Message,
    PlannedNode,
    ProgressReported,
    Provision,
    ProvisionDeployment,
    ProvisioningFailed,
    Release,
    ReleaseDeployment,
    ResourceRef,
    SiteCapacity,
    SiteKind,
    SiteLease,
    SitePlan,
    SiteState,
    WorkloadKind,
    new_id,
)

SITE = "alpha"
WATCH = "test.reports"


@dataclass
class ScriptedDriver:
    """A driver whose provisions wait for the test to let them finish."""

    kind: SiteKind = SiteKind.LOCAL
    started: list[tuple[str, int]] = field(default_factory=list)
    released: list[tuple[str, int]] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    fail: dict[str, ProvisioningError] = field(default_factory=dict)
    down: bool = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def snapshot(self) -> SiteSnapshot:
        if self.down:
            raise SiteUnavailableError("login node unreachable")
        return SiteSnapshot(capabilities=Capabilities(workload_kinds=[WorkloadKind.BATCH_JOB]))

    async def provision(self, order: Provision, progress: ProgressSink) -> ProvisionResult:
        self.started.append((order.deployment_id, order.attempt))
        progress("RUNNING", "step 1")
        progress("RUNNING", "step 2")
        await self.gates.setdefault(order.deployment_id, asyncio.Event()).wait()
        if order.deployment_id in self.fail:
            raise self.fail[order.deployment_id]
        return ProvisionResult(
            outputs={"answer": 42},
            resources=(ResourceRef(kind="process", id="1", node="job"),),
        )

    async def status(self, attempt: AttemptRef) -> AttemptState | None:
        return None

    async def release(self, order: Release) -> None:
        self.released.append((order.deployment_id, order.attempt))


@dataclass
class Rig:
    broker: MemoryBroker
    scheduler: MemoryBus
    reports: asyncio.Queue[Message]
    config: AgentConfig
    driver: ScriptedDriver

    async def command(self, message: ProvisionDeployment | ReleaseDeployment) -> None:
        await self.scheduler.publish(message, route(message))

    async def next(self, kind: type[Message]) -> Message:
        async with asyncio.timeout(5):
            while True:
                message = await self.reports.get()
                if isinstance(message, kind):
                    return message


def provision(deployment_id: str, attempt: int = 1) -> ProvisionDeployment:
    plan = SitePlan(nodes=[PlannedNode(name="job", kind=WorkloadKind.BATCH_JOB)], group="g")
    order = Provision(
        deployment_id=deployment_id,
        site=SITE,
        attempt=attempt,
        idempotency_key=f"{deployment_id}/{attempt}",
        plan=plan,
        owner="alice",
    )
    return ProvisionDeployment.create(order, source="test")


def release(deployment_id: str, attempt: int = 1) -> ReleaseDeployment:
    order = Release(
        deployment_id=deployment_id,
        site=SITE,
        attempt=attempt,
        idempotency_key=f"{deployment_id}/{attempt}/release",
        reason="deleted",
    )
    return ReleaseDeployment.create(order, source="test")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    broker = MemoryBroker()
    scheduler = MemoryBus(policy=DELIVERY_POLICY, broker=broker, user="flotilla-scheduler")
    reports: asyncio.Queue[Message] = asyncio.Queue()

    async def watch(message: Message, delivery: Delivery) -> None:
        await reports.put(message)

    async with scheduler:
        await scheduler.declare(core_topology())
        await scheduler.declare(site_topology(SITE))
        await scheduler.declare(
            Topology(
                policy=DELIVERY_POLICY,
                queues=(Queue(name=WATCH),),
                bindings=(Binding(queue=WATCH, exchange=REPORTS, pattern="site.#"),),
            )
        )
        await scheduler.subscribe(WATCH, watch, prefetch=1)
        config = AgentConfig.model_validate(
            {"site": SITE, "kind": "local", "state_dir": str(tmp_path), "lease_interval": 0.05}
        )
        yield Rig(broker, scheduler, reports, config, ScriptedDriver())


@contextlib.asynccontextmanager
async def running_agent(rig: Rig) -> AsyncIterator[AgentService]:
    """An agent on its own bus (the site's login), stopped at the end."""
    bus = MemoryBus(policy=DELIVERY_POLICY, broker=rig.broker, user=site_user(SITE))
    async with bus, Inbox(rig.config.state_dir / "inbox.sqlite3") as inbox:
        agent = AgentService(
            config=rig.config,
            driver=rig.driver,
            bus=bus,
            inbox=inbox,
            progress_interval=0.01,
            retry_delays=(0.01,),
        )
        task = asyncio.create_task(agent.run())
        try:
            yield agent
        finally:
            await agent.shutdown()
            await task


async def test_provision_streams_progress_then_reports_outputs(rig: Rig) -> None:
    deployment = new_id()
    async with running_agent(rig):
        await rig.command(provision(deployment))
        progress = await rig.next(ProgressReported)
        assert isinstance(progress, ProgressReported)
        assert progress.data.phase == "RUNNING"
        rig.driver.gates[deployment].set()
        done = await rig.next(DeploymentProvisioned)
    assert isinstance(done, DeploymentProvisioned)
    assert done.data.outputs == {"answer": 42}
    assert done.data.resources[0].kind == "process"
    assert done.causationid is not None


async def test_duplicate_command_provisions_once(rig: Rig) -> None:
    deployment = new_id()
    command = provision(deployment)
    async with running_agent(rig):
        await rig.command(command)
        await rig.command(command)
        await rig.next(ProgressReported)
        rig.driver.gates[deployment].set()
        await rig.next(DeploymentProvisioned)
        await rig.command(command)  # after completion too
        await asyncio.sleep(0.05)
    assert rig.driver.started == [(deployment, 1)]


async def test_failure_is_reported_with_its_cause(rig: Rig) -> None:
    deployment = new_id()
    rig.driver.fail[deployment] = ProvisioningError(
        "job exited with 3", code="job_failed", resource="job"
    )
    async with running_agent(rig):
        await rig.command(provision(deployment))
        rig.driver.gates.setdefault(deployment, asyncio.Event()).set()
        failed = await rig.next(ProvisioningFailed)
    assert isinstance(failed, ProvisioningFailed)
    assert failed.data.cause.code == "job_failed"
    assert failed.data.cause.resource == "job"
    assert "exited with 3" in failed.data.cause.message


async def test_release_cancels_the_provision_in_flight(rig: Rig) -> None:
    deployment = new_id()
    async with running_agent(rig):
        await rig.command(provision(deployment))
        await rig.next(ProgressReported)
        await rig.command(release(deployment))
        released = await rig.next(DeploymentReleased)
    assert isinstance(released, DeploymentReleased)
    assert rig.driver.released == [(deployment, 1)]
    remaining = [rig.reports.get_nowait() for _ in range(rig.reports.qsize())]
    assert not any(isinstance(m, DeploymentProvisioned | ProvisioningFailed) for m in remaining)


async def test_unfinished_work_resumes_after_a_restart(rig: Rig) -> None:
    deployment = new_id()
    async with running_agent(rig):
        await rig.command(provision(deployment))
        await rig.next(ProgressReported)
    # The agent stopped mid-provision; the command was acknowledged, only the inbox has it.
    rig.driver.gates[deployment].set()
    async with running_agent(rig):
        done = await rig.next(DeploymentProvisioned)
    assert isinstance(done, DeploymentProvisioned)
    assert rig.driver.started == [(deployment, 1), (deployment, 1)]


async def test_a_late_provision_of_a_released_attempt_is_not_run(rig: Rig) -> None:
    deployment = new_id()
    async with running_agent(rig):
        await rig.command(release(deployment))
        await rig.next(DeploymentReleased)
        await rig.command(provision(deployment))
        await asyncio.sleep(0.05)
    assert rig.driver.started == []


async def test_leases_capacity_down_and_draining(rig: Rig) -> None:
    async with running_agent(rig):
        lease = await rig.next(SiteLease)
        capacity = await rig.next(SiteCapacity)
        rig.driver.down = True
        while True:
            lease = await rig.next(SiteLease)
            assert isinstance(lease, SiteLease)
            if lease.data.state is SiteState.DOWN:
                break
    assert isinstance(capacity, SiteCapacity)
    assert capacity.data.capabilities.workload_kinds == [WorkloadKind.BATCH_JOB]
    assert lease.data.reason == "login node unreachable"
    await asyncio.sleep(0.05)
    leases = [rig.reports.get_nowait() for _ in range(rig.reports.qsize())]
    last = [m for m in leases if isinstance(m, SiteLease)][-1]
    assert last.data.state is SiteState.DRAINING
