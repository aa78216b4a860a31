"""The gateway's own site view: fed from its heartbeat queue, with lease ages and own quotas."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

import pytest

from flotilla.broker import DELIVERY_POLICY, core_topology, gateway_topology, route, site_user
from flotilla.bus.memory import MemoryBroker, MemoryBus
from flotilla.gateway import Identity, SiteBoard
from flotilla.gateway.site import apply_heartbeat, site_list
from flotilla.schemas import (
    Capabilities,
    Capacity,
    Lease,
    QuotaUsage,
    SiteCapacity,
    SiteKind,
    SiteLease,
    WorkloadKind,
)
from tests.unit.gateway.conftest import eventually
from tests.unit.test_placement import Clock

pytestmark = pytest.mark.timeout(30)


def lease(site: str, sequence: int = 1) -> SiteLease:
    data = Lease(
        site=site,
        kind=SiteKind.SLURM,
        ttl=timedelta(seconds=30),
        sequence=sequence,
        agent_instance="a1",
    )
    return SiteLease.create(data, source=f"/sites/{site}")


def capacity(site: str) -> SiteCapacity:
    data = Capacity(
        site=site,
        kind=SiteKind.SLURM,
        sequence=1,
        capabilities=Capabilities(workload_kinds=[WorkloadKind.BATCH_JOB]),
        quotas=[
            QuotaUsage(resource="cores", limit=512, used=64),
            QuotaUsage(resource="cores", limit=128, used=8, group="physics"),
            QuotaUsage(resource="cores", limit=64, used=1, group="chemistry"),
        ],
    )
    return SiteCapacity.create(data, source=f"/sites/{site}")


async def test_heartbeats_reach_the_gateway_queue_and_board() -> None:
    """Leases and capacity published by a site land on the gateway's queue and its board."""
    broker = MemoryBroker()
    board = SiteBoard(grace=timedelta(0))
    async with (
        MemoryBus(policy=DELIVERY_POLICY, broker=broker, user="flotilla-gateway") as gateway,
        MemoryBus(policy=DELIVERY_POLICY, broker=broker, user=site_user("hpc")) as site,
    ):
        await gateway.declare(core_topology())
        await gateway.declare(gateway_topology("test.gateway.heartbeats"))
        feed = await gateway.subscribe("test.gateway.heartbeats", partial(apply_heartbeat, board))
        for message in (lease("hpc"), capacity("hpc")):
            await site.publish(message, route(message))
        await eventually(lambda: (view := board.get("hpc")) is not None and view.capacity)
        await feed.stop()

    view = board.get("hpc")
    assert view is not None
    assert view.capacity is not None
    assert board.lease_received("hpc") is not None
    # The scheduler's own heartbeat queue got them too: each consumer has its queue.
    assert broker.depth("flotilla.scheduler.heartbeats") == 2


def test_site_list_shows_lease_age_and_only_own_group_quotas() -> None:
    """Lease age counts from receipt; a caller sees site-wide quotas and their groups' only."""
    clock = Clock()
    board = SiteBoard(grace=timedelta(0), clock=clock)
    board.apply_lease(lease("hpc").data)
    board.apply_capacity(capacity("hpc").data)
    clock.now += timedelta(seconds=12)

    [item] = site_list(board, Identity(subject="ann", groups=("physics",))).items
    [admin_item] = site_list(board, Identity(subject="root", admin=True)).items
    clock.now += timedelta(seconds=60)
    [stale] = site_list(board, Identity(subject="ann", groups=("physics",))).items

    assert item.lease_age_seconds == 12
    assert item.lease_expires_in_seconds == 18
    assert (item.fresh, item.state, item.kind) == (True, "ready", "slurm")
    assert [(q.group, q.limit) for q in item.quotas] == [(None, 512), ("physics", 128)]
    assert len(admin_item.quotas) == 3
    assert (stale.fresh, stale.freshness.value) == (False, "stale")
