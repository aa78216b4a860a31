"""The scheduler service end to end on the in-memory bus: request to final status, failover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from flotilla.broker import (
    DELIVERY_POLICY,
    EVENTS,
    core_topology,
    route,
    site_commands_queue,
    site_topology,
    site_user,
)
from flotilla.bus import Binding, Delivery, Queue, Topology
from flotilla.bus.memory import MemoryBroker, MemoryBus
from flotilla.scheduler.lifecycle import Lifecycle
from flotilla.scheduler.model import Change, DeploymentRecord
from flotilla.scheduler.placement import Placer, Sla
from flotilla.scheduler.registry import SiteRegistry
from flotilla.scheduler.relay import OutboxRelay
from flotilla.scheduler.service import DeploymentLocks, SchedulerService
from flotilla.scheduler.sql.error import DatabaseUnavailableError
from flotilla.scheduler.store import MemoryStore
from flotilla.schemas import (
    Capabilities,
    Capacity,
    DeploymentProvisioned,
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
    SiteCapacity,
    SiteKind,
    SiteLease,
    WorkloadKind,
    decode,
    new_id,
)
from tests.unit.test_lifecycle import Templates
from tests.unit.test_placement import SHAPES, template, vm

SITES = ("alpha", "beta")


async def eventually(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it is true, failing after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


WATCH = "test.events"


@dataclass
class Federation:
    """A scheduler on a memory broker, with one bus per site agent and an event watcher."""

    broker: MemoryBroker
    upstream: MemoryBus
    sites: dict[str, MemoryBus]
    events: asyncio.Queue[DeploymentStatusChanged]
    commands: dict[str, asyncio.Queue[Message]]
    service: SchedulerService
    placer: Placer
    store: MemoryStore

    async def publish_as(self, site: str, message: Envelope) -> None:
        await self.sites[site].publish(message, route(message))

    async def status(self, deployment_id: str, wanted: DeploymentStatus) -> DeploymentStatusChanged:
        async with asyncio.timeout(10):
            while True:
                event = await self.events.get()
                if event.data.deployment_id == deployment_id and event.data.status is wanted:
                    return event


async def report_site(bus: MemoryBus, site: str, cores: float, sequence: int = 1) -> None:
    lease = Lease(
        site=site,
        kind=SiteKind.OPENSTACK,
        ttl=timedelta(minutes=5),
        sequence=sequence,
        agent_instance="t",
    )
    capacity = Capacity(
        site=site,
        kind=SiteKind.OPENSTACK,
        sequence=sequence,
        capabilities=Capabilities(workload_kinds=[WorkloadKind.VIRTUAL_MACHINE], shapes=SHAPES),
        quotas=[QuotaUsage(resource="cores", limit=cores)],
    )
    for message in (
        SiteLease.create(lease, source=f"/sites/{site}"),
        SiteCapacity.create(capacity, source=f"/sites/{site}"),
    ):
        await bus.publish(message, route(message))


@pytest.fixture
async def federation() -> AsyncIterator[Federation]:
    broker = MemoryBroker()
    scheduler_bus = MemoryBus(policy=DELIVERY_POLICY, broker=broker, user="flotilla-scheduler")
    upstream = MemoryBus(policy=DELIVERY_POLICY, broker=broker, user="portal")
    site_buses = {
        s: MemoryBus(policy=DELIVERY_POLICY, broker=broker, user=site_user(s)) for s in SITES
    }
    async with scheduler_bus, upstream:
        for bus in site_buses.values():
            await bus.__aenter__()
        await scheduler_bus.declare(core_topology())
        for site in SITES:
            await scheduler_bus.declare(site_topology(site))
        await scheduler_bus.declare(
            Topology(
                policy=DELIVERY_POLICY,
                queues=(Queue(name=WATCH),),
                bindings=(Binding(queue=WATCH, exchange=EVENTS, pattern="deployment.#"),),
            )
        )
        events: asyncio.Queue[DeploymentStatusChanged] = asyncio.Queue()
        commands: dict[str, asyncio.Queue[Message]] = {s: asyncio.Queue() for s in SITES}

        async def watch(delivery: Delivery) -> None:
            message = decode(delivery.body)
            assert isinstance(message, DeploymentStatusChanged)
            events.put_nowait(message)

        await upstream.subscribe_raw(WATCH, watch)
        for site in SITES:

            async def take(message: Message, delivery: Delivery, site: str = site) -> None:
                commands[site].put_nowait(message)

            await site_buses[site].subscribe(site_commands_queue(site), take)

        store = MemoryStore()
        registry = SiteRegistry(grace=timedelta(0))
        placer = Placer(registry, [Sla(id=f"sla-{s}", group="physics", site=s) for s in SITES])
        service = SchedulerService(
            bus=scheduler_bus,
            store=store,
            lifecycle=Lifecycle(store=store, placer=placer, templates=Templates(template(vm()))),
            placer=placer,
            relay=OutboxRelay(store, scheduler_bus),
        )
        task = asyncio.create_task(service.run())
        await report_site(site_buses["alpha"], "alpha", cores=100)
        await report_site(site_buses["beta"], "beta", cores=50)
        await eventually(lambda: all(registry.get(s) and registry.get(s).capacity for s in SITES))
        yield Federation(broker, upstream, site_buses, events, commands, service, placer, store)
        await service.shutdown()
        await task
        for bus in site_buses.values():
            await bus.close()


async def next_command(federation: Federation, site: str) -> Message:
    async with asyncio.timeout(10):
        return await federation.commands[site].get()


async def submit(federation: Federation, **fields: Any) -> str:
    """Request a deployment of physics' template; ``fields`` add to the request."""
    did = new_id()
    request = DeploymentRequest(
        deployment_id=did, template="t", owner="ann", group="physics", **fields
    )
    message = DeploymentRequested.create(request, source="/portal")
    await federation.upstream.publish(message, route(message))
    return did


async def test_request_reaches_create_complete(federation: Federation) -> None:
    """A request is placed on alpha, alpha reports success, and CREATE_COMPLETE is published."""
    did = await submit(federation)
    command = await next_command(federation, "alpha")
    assert isinstance(command, ProvisionDeployment)
    done = Provisioned(deployment_id=did, site="alpha", attempt=1, outputs={"ip": "10.1.1.1"})
    await federation.publish_as("alpha", DeploymentProvisioned.create(done, source="/sites/alpha"))
    event = await federation.status(did, DeploymentStatus.CREATE_COMPLETE)
    assert event.data.site == "alpha"


async def test_failure_fails_over_to_the_next_site(federation: Federation) -> None:
    """alpha fails; the same deployment is commanded to beta and completes there."""
    did = await submit(federation)
    await next_command(federation, "alpha")
    cause = FailureCause(code="quota_exceeded", message="cores", retryable=False)
    failure = Failure(deployment_id=did, site="alpha", attempt=1, cause=cause)
    await federation.publish_as("alpha", ProvisioningFailed.create(failure, source="/sites/alpha"))
    release = await next_command(federation, "alpha")
    assert release.type == "flotilla.site.release"
    command = await next_command(federation, "beta")
    assert isinstance(command, ProvisionDeployment)
    assert command.data.attempt == 2
    done = Provisioned(deployment_id=did, site="beta", attempt=2)
    await federation.publish_as("beta", DeploymentProvisioned.create(done, source="/sites/beta"))
    await federation.status(did, DeploymentStatus.CREATE_COMPLETE)


async def test_a_site_cannot_report_for_another(federation: Federation) -> None:
    """A report about alpha sent with beta's credentials is dead-lettered, not applied."""
    did = await submit(federation)
    await next_command(federation, "alpha")
    forged = Provisioned(deployment_id=did, site="alpha", attempt=1)
    await federation.publish_as("beta", DeploymentProvisioned.create(forged, source="/sites/beta"))
    async with asyncio.timeout(10):
        dead = await federation.broker.queue(DELIVERY_POLICY.dead_letter.queue).items.get()
    assert "may not publish" in dead.delivery.headers["x-flotilla-reason"]


async def test_a_redelivered_request_is_decided_once(federation: Federation) -> None:
    """The same request message published twice yields one provision command."""
    did = new_id()
    request = DeploymentRequest(deployment_id=did, template="t", owner="ann", group="physics")
    message = DeploymentRequested.create(request, source="/portal")
    for _ in range(2):
        await federation.upstream.publish(message, route(message))
    await next_command(federation, "alpha")
    done = Provisioned(deployment_id=did, site="alpha", attempt=1)
    await federation.publish_as("alpha", DeploymentProvisioned.create(done, source="/sites/alpha"))
    await federation.status(did, DeploymentStatus.CREATE_COMPLETE)
    assert federation.commands["alpha"].empty()
    assert federation.commands["beta"].empty()
    assert federation.broker.depth(DELIVERY_POLICY.dead_letter.queue) == 0


async def test_a_request_for_a_finished_deployment_is_refused_once_nothing_is_held(
    federation: Federation,
) -> None:
    """After a deployment completes and alpha's report ends its claim, the same request
    message again sends nothing, while another request for the id is dead-lettered; neither
    leaves capacity claimed."""
    did = new_id()
    request = DeploymentRequest(deployment_id=did, template="t", owner="ann", group="physics")
    message = DeploymentRequested.create(request, source="/portal")
    await federation.upstream.publish(message, route(message))
    await next_command(federation, "alpha")
    done = Provisioned(deployment_id=did, site="alpha", attempt=1)
    await federation.publish_as("alpha", DeploymentProvisioned.create(done, source="/sites/alpha"))
    await federation.status(did, DeploymentStatus.CREATE_COMPLETE)
    await report_site(federation.sites["alpha"], "alpha", cores=100, sequence=2)
    claims = federation.placer.claims
    await eventually(lambda: claims.held("alpha")["cores"] == 0)

    await federation.upstream.publish(message, route(message))
    second = DeploymentRequested.create(request, source="/portal")
    await federation.upstream.publish(second, route(second))
    async with asyncio.timeout(10):
        dead = await federation.broker.queue(DELIVERY_POLICY.dead_letter.queue).items.get()
    assert f"deployment {did} already exists" in dead.delivery.headers["x-flotilla-reason"]
    # The redelivery took the deployment's lock first and was not refused.
    assert decode(dead.delivery.body).id == second.id
    assert federation.broker.depth(DELIVERY_POLICY.dead_letter.queue) == 0
    assert federation.commands["alpha"].empty()
    assert federation.commands["beta"].empty()
    assert claims.held("alpha")["cores"] == 0
    assert claims.held("beta")["cores"] == 0


def lose_the_answer_of_the_next_commit(store: MemoryStore, mp: pytest.MonkeyPatch) -> None:
    """The store's next commit is written but reports an error, as when its answer is lost."""
    written = store.commit

    async def written_then_lost(change: Change) -> DeploymentRecord:
        mp.setattr(store, "commit", written)  # only this commit
        await written(change)
        raise DatabaseUnavailableError("commit: no answer within 0:00:10")

    mp.setattr(store, "commit", written_then_lost)


async def test_a_create_written_though_its_commit_failed_is_put_right_when_redelivered(
    federation: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first commit is written but reports an error (its answer was lost): the request
    comes back, is found handled, and its deployment gets its claim and timers back, with
    one command sent."""
    store = federation.store
    lose_the_answer_of_the_next_commit(store, monkeypatch)
    did = await submit(federation, timeout=timedelta(minutes=5))
    command = await next_command(federation, "alpha")
    assert isinstance(command, ProvisionDeployment)
    service, claims = federation.service, federation.placer.claims
    # Retried after a second: the attempt's and the deployment's deadlines are armed again.
    await eventually(lambda: service.armed(did).keys() == {0, 1})
    assert claims.held("alpha")["cores"] == 4
    assert federation.commands["alpha"].empty()
    assert federation.broker.depth(DELIVERY_POLICY.dead_letter.queue) == 0
    record = await store.get(did)
    assert record is not None
    assert record.status is DeploymentStatus.CREATE_IN_PROGRESS


async def test_a_failover_written_though_its_commit_failed_arms_its_deadline_when_redelivered(
    federation: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alpha's failure is decided and written, but the commit reports an error: the report
    comes back, is skipped as handled, and attempt 2's deadline replaces attempt 1's."""
    did = await submit(federation, timeout=timedelta(minutes=5))
    await next_command(federation, "alpha")
    service, store = federation.service, federation.store
    assert service.armed(did).keys() == {0, 1}
    lose_the_answer_of_the_next_commit(store, monkeypatch)
    cause = FailureCause(code="quota_exceeded", message="cores", retryable=False)
    failure = Failure(deployment_id=did, site="alpha", attempt=1, cause=cause)
    await federation.publish_as("alpha", ProvisioningFailed.create(failure, source="/sites/alpha"))
    command = await next_command(federation, "beta")
    assert isinstance(command, ProvisionDeployment)
    assert command.data.attempt == 2
    await eventually(lambda: service.armed(did).keys() == {0, 2})
    assert federation.broker.depth(DELIVERY_POLICY.dead_letter.queue) == 0


async def test_deployment_locks_are_forgotten_once_released() -> None:
    """Steps of one deployment run one at a time; its lock is gone when the last is done."""
    locks = DeploymentLocks()
    inside: list[str] = []
    order: list[str] = []

    async def step(name: str) -> None:
        async with locks.hold("d1"):
            inside.append(name)
            assert len(inside) == 1  # alone for d1
            await asyncio.sleep(0.01)
            order.append(name)
            inside.remove(name)

    async with asyncio.TaskGroup() as group:
        for name in ("first", "second", "third"):
            group.create_task(step(name))
        await asyncio.sleep(0)
        assert len(locks) == 1  # one held, two waiting, one lock
    assert order == ["first", "second", "third"]
    assert len(locks) == 0

    for n in range(100):  # many deployments, one after another
        async with locks.hold(f"d{n}"):
            pass
    assert len(locks) == 0


async def test_a_cancelled_waiter_leaves_no_lock_behind() -> None:
    locks = DeploymentLocks()
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("d1"):
            held.set()
            await release.wait()

    async def waiter() -> None:
        async with locks.hold("d1"):
            raise AssertionError("never reached: cancelled while waiting")

    first = asyncio.create_task(holder())
    await held.wait()
    second = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    release.set()
    await first
    assert len(locks) == 0


async def test_the_service_keeps_no_lock_for_a_finished_step(federation: Federation) -> None:
    """After a deployment's steps, the service holds no lock for it (nothing grows)."""
    did = await submit(federation)
    await next_command(federation, "alpha")
    done = Provisioned(deployment_id=did, site="alpha", attempt=1, outputs={})
    await federation.publish_as("alpha", DeploymentProvisioned.create(done, source="/sites/alpha"))
    await federation.status(did, DeploymentStatus.CREATE_COMPLETE)
    assert federation.service.busy_deployments == 0


async def test_each_deadline_keeps_one_timer_through_failover(federation: Federation) -> None:
    """Every step re-arms a deployment's timers from its stored deadlines: the overall
    deadline stays one timer, a failed attempt's timer goes with it, and none is left once
    the deployment is complete."""
    did = await submit(federation, timeout=timedelta(hours=1))
    await next_command(federation, "alpha")
    assert federation.service.armed_timers == 2  # the overall deadline, attempt 1's

    cause = FailureCause(code="quota_exceeded", message="cores", retryable=False)
    failure = Failure(deployment_id=did, site="alpha", attempt=1, cause=cause)
    await federation.publish_as("alpha", ProvisioningFailed.create(failure, source="/sites/alpha"))
    await next_command(federation, "alpha")  # release
    await next_command(federation, "beta")
    await eventually(lambda: federation.service.busy_deployments == 0)
    assert federation.service.armed_timers == 2  # the overall deadline, attempt 2's

    done = Provisioned(deployment_id=did, site="beta", attempt=2)
    await federation.publish_as("beta", DeploymentProvisioned.create(done, source="/sites/beta"))
    await federation.status(did, DeploymentStatus.CREATE_COMPLETE)
    assert federation.service.armed_timers == 0


async def test_a_silent_site_times_out_and_the_next_one_is_tried(federation: Federation) -> None:
    """alpha never answers: its attempt's deadline fires in the service, alpha is told to
    release and beta gets attempt 2."""
    await submit(federation, site_timeout=timedelta(milliseconds=200))
    await next_command(federation, "alpha")
    release = await next_command(federation, "alpha")
    assert release.type == "flotilla.site.release"
    command = await next_command(federation, "beta")
    assert isinstance(command, ProvisionDeployment)
    assert command.data.attempt == 2


async def test_the_overall_deadline_fails_the_deployment_and_leaves_no_timer(
    federation: Federation,
) -> None:
    """Nobody answers within the overall deadline: the service fails the deployment with the
    timeout as its reason, tells the site to release, and keeps no timer for it."""
    did = await submit(federation, timeout=timedelta(milliseconds=300))
    await next_command(federation, "alpha")
    failed = await federation.status(did, DeploymentStatus.CREATE_FAILED)
    assert "Timeout" in (failed.data.reason or "")
    release = await next_command(federation, "alpha")
    assert release.type == "flotilla.site.release"
    await eventually(lambda: federation.service.armed_timers == 0)
