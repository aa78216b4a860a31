"""Placement: filtering with reasons, ranking with explanations, claims against bursts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from flotilla.scheduler.claim import ClaimBook
from flotilla.scheduler.demand import total_usage
from flotilla.scheduler.placement import PlacementRequest, Placer, SiteStats, Sla
from flotilla.scheduler.registry import Freshness, SiteRegistry
from flotilla.scheduler.tosca.requirement import NodeRequirements, OsImage, TemplateRequirements
from flotilla.schemas import (
    Capabilities,
    Capacity,
    Gpu,
    Image,
    Lease,
    QuotaUsage,
    Resources,
    Scheduling,
    SchedulingMode,
    Shape,
    SiteKind,
    SiteState,
    WorkloadKind,
)

VM = WorkloadKind.VIRTUAL_MACHINE
SHAPES = [
    Shape(name="m1.small", cpus=1, memory_mb=2048, disk_gb=20),
    Shape(name="m1.large", cpus=4, memory_mb=8192, disk_gb=80),
    Shape(
        name="g1.a100",
        cpus=8,
        memory_mb=32768,
        disk_gb=100,
        gpu=Gpu(count=1, vendor="NVIDIA", model="A100"),
    ),
]
IMAGES = [Image(name="ubuntu-22.04", os_distribution="ubuntu", os_version="22.04")]


class Clock:
    """A settable clock for lease expiry."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def vm(
    name: str = "server",
    *,
    cpus: float = 2,
    memory_mb: int = 4096,
    count: int = 1,
    gpu: Gpu | None = None,
    image: OsImage | None = None,
) -> NodeRequirements:
    return NodeRequirements(
        name=name,
        type="tosca.nodes.indigo.Compute",
        kind=VM,
        count=count,
        resources=Resources(cpus=cpus, memory_mb=memory_mb, disk_gb=10, gpu=gpu),
        image=image,
    )


def template(*nodes: NodeRequirements) -> TemplateRequirements:
    return TemplateRequirements(digest="d", nodes=nodes)


def report(
    registry: SiteRegistry,
    site: str,
    *,
    cores: float = 100,
    used: float = 0,
    seq: int = 1,
    state: SiteState = SiteState.READY,
    regions: tuple[str, ...] = (),
) -> None:
    registry.apply_lease(
        Lease(
            site=site,
            kind=SiteKind.OPENSTACK,
            state=state,
            ttl=timedelta(seconds=10),
            sequence=seq,
            agent_instance="a",
        )
    )
    registry.apply_capacity(
        Capacity(
            site=site,
            kind=SiteKind.OPENSTACK,
            sequence=seq,
            capabilities=Capabilities(
                workload_kinds=[VM], shapes=SHAPES, images=IMAGES, regions=list(regions)
            ),
            quotas=[QuotaUsage(resource="cores", limit=cores, used=used)],
        )
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(clock: Clock) -> SiteRegistry:
    registry = SiteRegistry(grace=timedelta(0), clock=clock)
    report(registry, "alpha")
    report(registry, "beta")
    return registry


SLAS = [
    Sla(id="sla-a", group="physics", site="alpha"),
    Sla(id="sla-b", group="physics", site="beta", preference=0.5),
]


def test_smallest_fitting_flavor_and_matching_image_are_chosen(registry: SiteRegistry) -> None:
    """A 2-CPU ubuntu VM gets m1.large (m1.small is too small) and the ubuntu image."""
    node = vm(image=OsImage(distribution="Ubuntu", version="22"))
    ranking = Placer(registry, SLAS).rank(
        PlacementRequest(requirements=template(node), group="physics")
    )
    best = ranking.candidates[0]
    assert best.site == "alpha"
    assert best.shapes == {"server": "m1.large"}
    assert best.images == {"server": "ubuntu-22.04"}


def test_a_named_instance_type_is_used_where_the_site_has_it(registry: SiteRegistry) -> None:
    """INDIGO's host.instance_type picks that flavor by name; elsewhere the size decides."""
    node = replace(vm(cpus=1, memory_mb=1024), properties={"instance_type": "m1.large"})
    best = (
        Placer(registry, SLAS)
        .rank(PlacementRequest(requirements=template(node), group="physics"))
        .candidates[0]
    )
    assert best.shapes == {"server": "m1.large"}
    other = replace(vm(cpus=1, memory_mb=1024), properties={"instance_type": "x9.huge"})
    fallback = (
        Placer(registry, SLAS)
        .rank(PlacementRequest(requirements=template(other), group="physics"))
        .candidates[0]
    )
    assert fallback.shapes == {"server": "m1.small"}


def test_gpu_request_only_fits_the_gpu_flavor(registry: SiteRegistry) -> None:
    """A node asking for an NVIDIA A100 lands on the GPU flavor; an H100 fits nowhere."""
    placer = Placer(registry, SLAS)
    a100 = placer.rank(
        PlacementRequest(requirements=template(vm(gpu=Gpu(count=1, model="a100"))), group="physics")
    )
    assert a100.candidates[0].shapes == {"server": "g1.a100"}
    h100 = placer.rank(
        PlacementRequest(requirements=template(vm(gpu=Gpu(count=1, model="H100"))), group="physics")
    )
    assert h100.candidates == ()
    assert "node server: no flavor or node fits 2 CPUs, 4096 MB, 1 GPU" in h100.summary()


def test_stale_lease_and_draining_site_are_rejected(registry: SiteRegistry, clock: Clock) -> None:
    """A site whose lease expired, or that is draining, is not chosen, and the reason says so."""
    clock.now += timedelta(seconds=11)
    report(registry, "beta", seq=2, state=SiteState.DRAINING)
    ranking = Placer(registry, SLAS).rank(
        PlacementRequest(requirements=template(vm()), group="physics")
    )
    assert ranking.candidates == ()
    reasons = {r.site: r.reasons for r in ranking.rejections}
    assert reasons["alpha"] == ("lease expired",)
    assert reasons["beta"] == ("site is draining",)


def test_group_without_sla_is_rejected(registry: SiteRegistry) -> None:
    """A group with no SLA at a site cannot use it."""
    ranking = Placer(registry, SLAS).rank(
        PlacementRequest(requirements=template(vm()), group="biology")
    )
    assert ranking.candidates == ()
    assert all("no SLA for group 'biology'" in r.reasons[0] for r in ranking.rejections)


def test_manual_scheduling_pins_the_site(registry: SiteRegistry) -> None:
    """A request pinned to beta is only placed on beta, even though alpha ranks higher."""
    pin = Scheduling(mode=SchedulingMode.MANUAL, site="beta")
    ranking = Placer(registry, SLAS).rank(
        PlacementRequest(requirements=template(vm()), group="physics", scheduling=pin)
    )
    assert [c.site for c in ranking.candidates] == ["beta"]


def test_quota_headroom_is_checked(registry: SiteRegistry) -> None:
    """Needing more cores than a site has free rejects it with the quota as the reason."""
    report(registry, "alpha", cores=10, used=8, seq=2)
    ranking = Placer(registry, SLAS).rank(
        PlacementRequest(requirements=template(vm(cpus=4)), group="physics")
    )
    assert [c.site for c in ranking.candidates] == ["beta"]
    assert ranking.rejections[0].reasons == ("quota cores: needs 4, free 2",)


def test_a_site_that_cannot_fit_is_rejected_for_that_alone(registry: SiteRegistry) -> None:
    """A site whose flavors cannot hold the request gives that reason, not its quotas too,
    and keeps giving it when claims at the site change."""
    report(registry, "alpha", cores=10, used=9, seq=2)  # full as well as too small
    placer = Placer(registry, SLAS)
    request = PlacementRequest(requirements=template(vm(cpus=64)), group="physics")
    first = placer.rank(request)
    assert first.candidates == ()
    alpha = next(r for r in first.rejections if r.site == "alpha")
    assert alpha.reasons
    assert not any(reason.startswith("quota") for reason in alpha.reasons)
    small = placer.rank(PlacementRequest(requirements=template(vm()), group="physics"))
    placer.claims.claim("d/1", site="alpha", group="physics", usage=small.candidates[0].usage)
    again = next(r for r in placer.rank(request).rejections if r.site == "alpha")
    assert again.reasons == alpha.reasons


def test_a_vm_uses_its_whole_flavor_of_the_quota(registry: SiteRegistry) -> None:
    """2 CPUs asked on the 8-CPU GPU flavor count 8 cores: a site with 6 free is refused."""
    report(registry, "alpha", cores=10, used=4, seq=2)
    node = vm(cpus=2, gpu=Gpu(count=1, model="a100"))
    ranking = Placer(registry, SLAS).rank(
        PlacementRequest(requirements=template(node), group="physics")
    )
    assert [c.site for c in ranking.candidates] == ["beta"]
    assert ranking.candidates[0].usage["cores"] == 8
    assert ranking.rejections[0].reasons == ("quota cores: needs 8, free 6",)


def test_claims_spread_a_burst_over_sites(registry: SiteRegistry) -> None:
    """Claims made at decision time stop a burst from overfilling the best site."""
    report(registry, "alpha", cores=8, seq=2)
    placer = Placer(registry, SLAS)
    request = PlacementRequest(requirements=template(vm(cpus=4)), group="physics")
    chosen = []
    for i in range(4):
        best = placer.rank(request).candidates[0]
        placer.claims.claim(f"d{i}/1", site=best.site, group="physics", usage=best.usage)
        chosen.append(best.site)
    assert chosen.count("alpha") == 2
    assert chosen.count("beta") == 2


def test_settled_claim_ends_with_the_next_capacity_report(clock: Clock) -> None:
    """A successful attempt's claim is dropped once a later report includes its usage."""
    book = ClaimBook()
    usage = total_usage(template(vm(cpus=4)))
    book.claim("d/1", site="alpha", group="g", usage=usage)
    book.settle("d/1", clock.now)
    book.site_reported("alpha", clock.now - timedelta(seconds=1))
    assert book.held("alpha")["cores"] == 4
    book.site_reported("alpha", clock.now + timedelta(seconds=1))
    assert book.held("alpha")["cores"] == 0


def test_ranking_prefers_success_and_explains_it(registry: SiteRegistry) -> None:
    """A site that keeps failing ranks below one that succeeds, and the terms are shown."""
    placer = Placer(
        registry, [Sla(id="a", group="g", site="alpha"), Sla(id="b", group="g", site="beta")]
    )
    placer.record_stats("alpha", SiteStats(attempts=10, successes=1))
    placer.record_stats("beta", SiteStats(attempts=10, successes=10))
    ranking = placer.rank(PlacementRequest(requirements=template(vm()), group="g"))
    assert [c.site for c in ranking.candidates] == ["beta", "alpha"]
    assert any(term.startswith("success rate 0.92") for term in ranking.candidates[0].explanation)


def test_restart_grace_marks_unreported_sites_pending(clock: Clock) -> None:
    """After a restart a known site is pending, not stale, until the grace period ends."""
    registry = SiteRegistry(grace=timedelta(seconds=30), clock=clock)
    registry.restore("alpha", SiteKind.OPENSTACK)
    assert registry.freshness("alpha") is Freshness.PENDING
    ranking = Placer(registry, SLAS).rank(
        PlacementRequest(requirements=template(vm()), group="physics")
    )
    assert ranking.waiting
    clock.now += timedelta(seconds=31)
    assert registry.freshness("alpha") is Freshness.STALE


def test_older_reports_are_ignored(registry: SiteRegistry) -> None:
    """A capacity report with an older sequence does not overwrite a newer one."""
    report(registry, "alpha", cores=10, seq=5)
    assert not registry.apply_capacity(
        Capacity(
            site="alpha",
            kind=SiteKind.OPENSTACK,
            sequence=4,
            capabilities=Capabilities(workload_kinds=[]),
        )
    )
    view = registry.get("alpha")
    assert view is not None
    assert view.capacity is not None
    assert view.capacity.quotas[0].limit == 10
