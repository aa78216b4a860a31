"""Placement with many sites: capped rejections, cached fits and kept standings stay correct."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import pytest

from flotilla.scheduler.changes import ChangeLog
from flotilla.scheduler.claim import ClaimBook
from flotilla.scheduler.demand import total_usage
from flotilla.scheduler.placement import (
    REJECTIONS_LISTED,
    PlacementRequest,
    Placer,
    SiteStats,
    Sla,
)
from flotilla.scheduler.registry import SiteRegistry
from flotilla.schemas import (
    Capabilities,
    Capacity,
    Gpu,
    Lease,
    QuotaUsage,
    Scheduling,
    SchedulingMode,
    Shape,
    SiteKind,
    SiteState,
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
    before = book.changes.end
    assert book.held("alpha")["cores"] == 8
    assert book.totals("alpha", "g")["cores"] == 4
    book.release("b/1")
    assert book.held("alpha")["cores"] == 4
    assert book.changes.since(before) == ["alpha"]
    book.settle("a/1", Clock().now)
    book.site_reported("alpha", Clock().now + timedelta(seconds=1))
    assert book.held("alpha") == {}
    assert book.held("beta", "g") == {}


def test_claim_book_totals_kept_between_reads_match_the_claims() -> None:
    """Totals that grow with each claim, read at random moments, equal the sum of the claims."""
    rng = random.Random(3)
    book = ClaimBook()
    held: dict[str, tuple[str, str, int]] = {}  # key -> site, group, cores
    for n in range(300):
        key = f"d{rng.randint(0, 40)}/1"
        site, group, cores = rng.choice("ab"), rng.choice("gh"), rng.randint(1, 9)
        if rng.random() < 0.7:
            book.claim(key, site=site, group=group, usage=Counter(cores=cores))
            held[key] = (site, group, cores)
        else:
            book.release(key)
            held.pop(key, None)
        for site in "ab":
            for group in (None, "g", "h"):
                want = sum(c for s, g, c in held.values() if s == site and group in (None, g))
                assert book.totals(site, group).get("cores", 0) == want, f"step {n}"


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


@pytest.mark.parametrize("seed", range(6))
def test_kept_standings_rank_as_a_fresh_placer_does(seed: int) -> None:
    """After any mix of reports, leases, claims, statistics and time, a placer that kept its
    standings from earlier rankings ranks exactly as a new placer on the same state."""
    rng = random.Random(seed)
    clock = Clock()
    registry = SiteRegistry(grace=timedelta(0), clock=clock)
    sites = [f"site-{i:02d}" for i in range(30)]
    groups = ("g", "h", "k")
    slas = [
        Sla(id=f"{g}-{s}", group=g, site=s, preference=rng.choice((0.5, 1.0, 2.0)))
        for s in sites[:-3]  # the last sites have no SLA at all
        for g in groups
        if rng.random() < 0.6
    ]
    requests = [
        PlacementRequest(
            requirements=template(vm(cpus=cpus, count=count)),
            group=group,
            scheduling=Scheduling(region=region),
        )
        for cpus, count in ((1, 1), (4, 1), (4, 3), (16, 1))  # same fit, other usage: 4 x 1, 3
        for group in groups
        for region in (None, None, "north", "south")
    ]
    placer = Placer(registry, slas)
    stats: dict[str, SiteStats] = {}
    claims = 0
    sequences = dict.fromkeys(sites, 0)
    for step in range(400):
        site = rng.choice(sites)
        action = rng.randrange(7)
        if action == 0:  # a capacity report, sometimes with other shapes
            sequences[site] += 1
            shapes = SHAPES if rng.random() < 0.7 else SHAPES[:1]
            regions = rng.sample(("north", "south"), rng.randint(0, 2))
            used = rng.randint(0, 40)
            registry.apply_capacity(capacity(site, sequences[site], used, shapes, regions))
        elif action == 1:  # a lease: ready or draining, short or long
            sequences[site] += 1
            state = SiteState.READY if rng.random() < 0.8 else SiteState.DRAINING
            registry.apply_lease(lease(site, sequences[site], state, rng.randint(1, 20)))
        elif action == 2:
            claims += 1
            usage = total_usage(template(vm(cpus=rng.randint(1, 12))))
            placer.claims.claim(f"d{claims}/1", site=site, group=rng.choice(groups), usage=usage)
        elif action == 3 and claims:
            placer.claims.release(f"d{rng.randint(1, claims)}/1")
        elif action == 4:
            attempts = rng.randint(0, 10)
            stats[site] = SiteStats(attempts=attempts, successes=rng.randint(0, attempts))
            placer.record_stats(site, stats[site])
        elif action == 5:
            clock.now += timedelta(seconds=rng.uniform(0, 4))
        request = replace(
            rng.choice(requests), exclude=frozenset(rng.sample(sites, rng.choice((0, 0, 2))))
        )
        fresh = Placer(registry, slas, claims=placer.claims)
        for name, recorded in stats.items():
            fresh.record_stats(name, recorded)
        assert placer.rank(request) == fresh.rank(request), f"step {step}"


def capacity(
    site: str, sequence: int, used: int, shapes: list[Shape], regions: Sequence[str] = ()
) -> Capacity:
    return Capacity(
        site=site,
        kind=SiteKind.OPENSTACK,
        sequence=sequence,
        capabilities=Capabilities(
            workload_kinds=[WorkloadKind.VIRTUAL_MACHINE], shapes=shapes, regions=list(regions)
        ),
        quotas=[QuotaUsage(resource="cores", limit=40, used=used)],
    )


def lease(site: str, sequence: int, state: SiteState, ttl: int) -> Lease:
    return Lease(
        site=site,
        kind=SiteKind.OPENSTACK,
        state=state,
        ttl=timedelta(seconds=ttl),
        sequence=sequence,
        agent_instance="a",
    )


def test_a_region_pin_sets_aside_the_sites_elsewhere_with_their_own_reasons() -> None:
    """A request pinned to a region is placed only in it. Each site elsewhere is rejected
    for the region and for what its report rules out, not for quotas, after its liveness.
    The unpinned request still sees every site, before and after."""
    clock = Clock()
    registry = SiteRegistry(grace=timedelta(0), clock=clock)
    report(registry, "inside", regions=("north",))
    report(registry, "elsewhere", regions=("south",))
    report(registry, "nameless")  # names no region: elsewhere as well
    report(registry, "full", cores=10, used=9, regions=("south",))
    report(registry, "draining", state=SiteState.DRAINING, regions=("south",))
    report(registry, "small")
    registry.apply_capacity(capacity("small", 2, 0, SHAPES[:1], ["south"]))  # no large flavor
    sites = ("inside", "elsewhere", "nameless", "full", "draining", "small")
    placer = Placer(registry, [Sla(id=site, group="g", site=site) for site in sites])
    anywhere = PlacementRequest(requirements=template(vm(cpus=4)), group="g")
    north = replace(anywhere, scheduling=Scheduling(region="north"))
    before = placer.rank(anywhere)

    ranking = placer.rank(north)

    assert [c.site for c in ranking.candidates] == ["inside"]
    unpinned = {r.site: r.reasons for r in before.rejections}
    assert unpinned["full"] == ("quota cores: needs 4, free 1",)
    assert {r.site: r.reasons for r in ranking.rejections} == {
        "draining": ("site is draining", "not in region 'north'"),
        "elsewhere": ("not in region 'north'",),
        "full": ("not in region 'north'",),
        "nameless": ("not in region 'north'",),
        "small": ("not in region 'north'", *unpinned["small"]),
    }
    assert placer.rank(anywhere) == before
    assert {c.site for c in before.candidates} == {"inside", "elsewhere", "nameless"}


def test_instance_count_is_part_of_the_kind_of_request() -> None:
    """Two requests that differ only in instance count fit alike but use different quota:
    the second is judged on its own usage, not the first one's."""
    clock = Clock()
    registry = SiteRegistry(grace=timedelta(0), clock=clock)
    report(registry, "alpha", cores=10)
    placer = Placer(registry, [Sla(id="a", group="g", site="alpha")])
    one = PlacementRequest(requirements=template(vm(cpus=4, count=1)), group="g")
    five = PlacementRequest(requirements=template(vm(cpus=4, count=5)), group="g")
    assert placer.rank(one).candidates[0].usage["cores"] == 4
    ranking = placer.rank(five)
    assert ranking.candidates == ()
    assert ranking.rejections[0].reasons == ("quota cores: needs 20, free 10",)


def test_change_log_forgets_the_oldest_names_past_its_size() -> None:
    """A reader behind what the log keeps is told so, not handed a partial list."""
    log = ChangeLog(keep=2)
    for name in "abcde":
        log.add(name)
    assert log.end == 5
    assert log.since(4) == ["e"]
    assert log.since(0) is None


def test_a_standing_behind_the_change_logs_is_built_again() -> None:
    """When the claim book's log has dropped changes a standing never read, the standing is
    judged afresh and sees them."""
    clock = Clock()
    registry = SiteRegistry(grace=timedelta(0), clock=clock)
    report(registry, "alpha", cores=10)
    report(registry, "beta", cores=10)
    placer = Placer(registry, [Sla(id=s, group="g", site=s) for s in ("alpha", "beta")])
    placer.claims.changes = ChangeLog(keep=1)
    request = PlacementRequest(requirements=template(vm(cpus=4)), group="g")
    assert [c.site for c in placer.rank(request).candidates] == ["alpha", "beta"]
    usage = placer.rank(request).candidates[0].usage
    for n in range(2):
        placer.claims.claim(f"a{n}/1", site="alpha", group="g", usage=usage)
    for n in range(3):  # claims elsewhere push alpha's changes out of the log
        placer.claims.claim(f"o{n}/1", site="other", group="g", usage=usage)
    assert placer.claims.changes.since(0) is None
    ranking = placer.rank(request)
    assert [c.site for c in ranking.candidates] == ["beta"]
    assert ranking.rejections[0].reasons == ("quota cores: needs 4, free 2",)


def test_renewed_leases_do_not_pile_up_while_nobody_ranks() -> None:
    """Thousands of renewals with no ranking in between keep a few expiries per site, and
    liveness is still right afterwards."""
    clock = Clock()
    registry = SiteRegistry(grace=timedelta(0), clock=clock)
    sites = ("alpha", "beta", "gamma")
    for sequence in range(1, 2001):
        for site in sites if sequence <= 1900 else sites[:2]:  # gamma misses the last 100
            registry.apply_lease(lease(site, sequence, SiteState.READY, 10))
        clock.now += timedelta(milliseconds=10)
    assert len(registry._expiries) <= 4 * len(sites) + 64 + 1
    assert registry.not_live(clock.now) == set()
    clock.now += timedelta(seconds=9.5)  # past gamma's last lease, not the others'
    assert registry.not_live(clock.now) == {"gamma"}
