"""Placement with many sites: capped rejections, cached fits and memoised outcomes stay correct."""

from __future__ import annotations

from datetime import timedelta

from flotilla.scheduler.claim import ClaimBook
from flotilla.scheduler.demand import total_usage
from flotilla.scheduler.placement import REJECTIONS_LISTED, PlacementRequest, Placer, Sla
from flotilla.scheduler.registry import SiteRegistry
from flotilla.schemas import (
    Capabilities,
    Capacity,
    Gpu,
    QuotaUsage,
    Scheduling,
    SchedulingMode,
    SiteKind,
    WorkloadKind,
)
from tests.unit.test_placement import SHAPES, Clock, report, template, vm


def many_sites(clock: Clock, count: int) -> SiteRegistry:
    registry = SiteRegistry(grace=timedelta(0), clock=clock)
    for i in range(count):
        report(registry, f"site-{i:03d}")
    return registry


def test_rejections_beyond_the_cap_are_counted_with_sla_sites_listed_first() -> None:
    """Of 120 rejected sites, 50 are listed (the group's SLA sites first) and one entry counts
    the other 70."""
    clock = Clock()
    registry = many_sites(clock, 120)
    slas = [Sla(id=f"sla-{i}", group="g", site=f"site-{i:03d}") for i in range(100, 110)]
    big = vm(cpus=1000)  # fits no flavor anywhere
    ranking = Placer(registry, slas).rank(PlacementRequest(requirements=template(big), group="g"))
    assert ranking.candidates == ()
    assert len(ranking.rejections) == REJECTIONS_LISTED + 1
    listed, more = ranking.rejections[:-1], ranking.rejections[-1]
    sites = [r.site for r in listed]
    assert sites == sorted(sites)
    assert {f"site-{i:03d}" for i in range(100, 110)} <= set(sites)
    assert ranking.unlisted == 70
    assert more.site == "70 more sites"
    assert more.reasons == ("70 with no SLA for group 'g'",)
    assert "70 more sites: 70 with no SLA for group 'g'" in ranking.summary()


def test_every_rejection_is_listed_under_the_cap() -> None:
    """With few sites every rejected site is listed by name with all its reasons."""
    clock = Clock()
    registry = many_sites(clock, 3)
    ranking = Placer(registry, []).rank(PlacementRequest(requirements=template(vm()), group="g"))
    assert [r.site for r in ranking.rejections] == ["site-000", "site-001", "site-002"]
    assert ranking.unlisted == 0
    assert all(r.reasons == ("no SLA for group 'g'",) for r in ranking.rejections)


def test_templates_with_the_same_digest_are_fitted_apart() -> None:
    """Fits are cached by what a template asks for, not by its digest."""
    clock = Clock()
    registry = many_sites(clock, 1)
    placer = Placer(registry, [Sla(id="s", group="g", site="site-000")])
    small = placer.rank(PlacementRequest(requirements=template(vm()), group="g"))
    gpu = template(vm(gpu=Gpu(count=1, model="H100")))
    assert gpu.digest == template(vm()).digest
    refused = placer.rank(PlacementRequest(requirements=gpu, group="g"))
    assert small.candidates[0].shapes == {"server": "m1.large"}
    assert refused.candidates == ()
    assert refused.rejections[0].reasons[0].startswith("node server: no flavor or node fits")


def test_changed_capabilities_renew_the_cached_fit() -> None:
    """A site that drops its flavors in a new report is no longer a candidate."""
    clock = Clock()
    registry = many_sites(clock, 1)
    placer = Placer(registry, [Sla(id="s", group="g", site="site-000")])
    request = PlacementRequest(requirements=template(vm()), group="g")
    assert placer.rank(request).candidates
    registry.apply_capacity(
        Capacity(
            site="site-000",
            kind=SiteKind.OPENSTACK,
            sequence=2,
            capabilities=Capabilities(
                workload_kinds=[WorkloadKind.VIRTUAL_MACHINE], shapes=SHAPES[:1]
            ),
        )
    )
    ranking = placer.rank(request)
    assert ranking.candidates == ()
    assert ranking.rejections[0].reasons == ("node server: no flavor or node fits 2 CPUs, 4096 MB",)


def test_a_new_claim_is_seen_by_the_next_ranking() -> None:
    """A claim at a site ends its memoised verdict: the quota it used up is reported."""
    clock = Clock()
    registry = SiteRegistry(grace=timedelta(0), clock=clock)
    report(registry, "alpha", cores=6)
    placer = Placer(registry, [Sla(id="a", group="g", site="alpha")])
    request = PlacementRequest(requirements=template(vm(cpus=4)), group="g")
    best = placer.rank(request).candidates[0]
    placer.claims.claim("d/1", site="alpha", group="g", usage=best.usage)
    ranking = placer.rank(request)
    assert ranking.candidates == ()
    assert ranking.rejections[0].reasons == ("quota cores: needs 4, free 2",)
    placer.claims.release("d/1")
    assert [c.site for c in placer.rank(request).candidates] == ["alpha"]


def test_liveness_is_judged_at_every_ranking() -> None:
    """A memoised candidate whose lease has since expired is rejected as stale."""
    clock = Clock()
    registry = many_sites(clock, 1)
    placer = Placer(registry, [Sla(id="s", group="g", site="site-000")])
    request = PlacementRequest(requirements=template(vm()), group="g")
    assert placer.rank(request).candidates
    clock.now += timedelta(seconds=11)
    ranking = placer.rank(request)
    assert ranking.candidates == ()
    assert ranking.rejections[0].reasons == ("lease expired",)
    excluded = PlacementRequest(requirements=template(vm()), group="g", exclude=frozenset({"x"}))
    assert placer.rank(excluded).rejections[0].reasons == ("lease expired",)


def test_pinned_sla_selects_among_a_sites_slas() -> None:
    """A request pinned to an SLA id gets that SLA when a site offers the group several."""
    clock = Clock()
    registry = many_sites(clock, 1)
    slas = [
        Sla(id="first", group="g", site="site-000"),
        Sla(id="second", group="g", site="site-000", preference=0.1),
    ]
    placer = Placer(registry, slas)
    plain = placer.rank(PlacementRequest(requirements=template(vm()), group="g"))
    assert plain.candidates[0].sla_id == "first"
    pin = Scheduling(mode=SchedulingMode.MANUAL, sla_id="second")
    pinned = placer.rank(PlacementRequest(requirements=template(vm()), group="g", scheduling=pin))
    assert pinned.candidates[0].sla_id == "second"


def test_claim_book_totals_follow_claims_and_reports() -> None:
    """Totals per site and per group track claims, releases and settled reports."""
    book = ClaimBook()
    usage = total_usage(template(vm(cpus=4)))
    book.claim("a/1", site="alpha", group="g", usage=usage)
    book.claim("b/1", site="alpha", group="h", usage=usage)
    before = book.revision("alpha")
    assert book.held("alpha")["cores"] == 8
    assert book.totals("alpha", "g")["cores"] == 4
    book.release("b/1")
    assert book.held("alpha")["cores"] == 4
    assert book.revision("alpha") != before
    book.settle("a/1", Clock().now)
    book.site_reported("alpha", Clock().now + timedelta(seconds=1))
    assert book.held("alpha") == {}
    assert book.held("beta", "g") == {}


def test_registry_names_are_sorted_and_follow_new_sites() -> None:
    """The sorted name list includes a site as soon as it first reports."""
    clock = Clock()
    registry = many_sites(clock, 2)
    assert registry.names() == ("site-000", "site-001")
    registry.apply_capacity(
        Capacity(
            site="site-0005",
            kind=SiteKind.OPENSTACK,
            sequence=1,
            capabilities=Capabilities(workload_kinds=[]),
            quotas=[QuotaUsage(resource="cores", limit=1)],
        )
    )
    assert registry.names() == ("site-000", "site-0005", "site-001")
