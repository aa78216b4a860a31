"""Placement: filter the sites that can run a template, rank them, and say why.

Every site ends up either a ``Candidate`` with a score and the terms that made it, or a
``Rejection`` with the reasons; both are stored with the decision so a user can see why a
deployment went where it went, or why it went nowhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from flotilla.scheduler.claim import ClaimBook
from flotilla.scheduler.demand import (
    HOSTED_KINDS,
    SIZED_KINDS,
    Usage,
    matching_image,
    needs_image,
    smallest_fitting_shape,
    total_usage,
)
from flotilla.scheduler.registry import Freshness, SiteRegistry, SiteView
from flotilla.scheduler.tosca.requirement import NodeRequirements, TemplateRequirements
from flotilla.schemas import Capacity, QuotaUsage, Scheduling, SiteState


@dataclass(frozen=True, slots=True, kw_only=True)
class Sla:
    """A group's agreement with a site: it may use the site, with a preference and limits."""

    id: str
    group: str
    site: str
    preference: float = 1.0
    limits: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteStats:
    """Recent history of attempts at a site."""

    attempts: int = 0
    successes: int = 0
    median_seconds: float | None = None

    @property
    def success_rate(self) -> float:
        """Share of recent attempts that succeeded; 0.5 when there is no history yet."""
        return (self.successes + 1) / (self.attempts + 2)


@dataclass(frozen=True, slots=True, kw_only=True)
class Weights:
    """How much each ranking term counts."""

    preference: float = 4.0
    headroom: float = 2.0
    success: float = 3.0
    speed: float = 1.0
    locality: float = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementRequest:
    """One template to place, for one group, with the request's own constraints."""

    requirements: TemplateRequirements
    group: str
    scheduling: Scheduling = field(default_factory=Scheduling)
    datasets: tuple[str, ...] = ()
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """A site that can run the template: its score, why, and the resolved shapes and images."""

    site: str
    sla_id: str
    score: float
    explanation: tuple[str, ...]
    shapes: Mapping[str, str]
    images: Mapping[str, str]
    usage: Usage


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """A site that cannot run the template, and every reason why."""

    site: str
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ranking:
    """Candidates best first, and the rejected sites."""

    candidates: tuple[Candidate, ...]
    rejections: tuple[Rejection, ...]
    waiting: bool = False  # some site is still within the restart grace: try again shortly

    def summary(self) -> str:
        """One line per rejected site, for a deployment's status reason."""
        return "; ".join(f"{r.site}: {', '.join(r.reasons)}" for r in self.rejections)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Fit:
    sla: Sla
    shapes: dict[str, str]
    images: dict[str, str]


class Placer:
    """Filters and ranks the registry's sites for a request, holding claims for decisions."""

    def __init__(
        self,
        registry: SiteRegistry,
        slas: Sequence[Sla],
        *,
        claims: ClaimBook | None = None,
        image_aliases: Mapping[str, Mapping[str, str]] | None = None,
        weights: Weights | None = None,
    ) -> None:
        self.registry = registry
        self.claims = claims or ClaimBook()
        self._slas = list(slas)
        self._aliases = image_aliases or {}
        self._weights = weights or Weights()
        self._stats: dict[str, SiteStats] = {}

    def record_stats(self, site: str, stats: SiteStats) -> None:
        """Set a site's recent attempt history, used in ranking."""
        self._stats[site] = stats

    def rank(self, request: PlacementRequest) -> Ranking:
        """Every known site, as a candidate (best first) or a rejection with reasons."""
        usage = total_usage(request.requirements)
        candidates: list[Candidate] = []
        rejections: list[Rejection] = []
        waiting = False
        for view in sorted(self.registry, key=lambda v: v.name):
            reasons, fit = self._filter(view, request, usage)
            waiting |= self.registry.freshness(view.name) is Freshness.PENDING
            if fit is None:
                rejections.append(Rejection(site=view.name, reasons=tuple(reasons)))
            else:
                candidates.append(self._score(view, request, usage, fit))
        candidates.sort(key=lambda c: (-c.score, c.site))
        return Ranking(candidates=tuple(candidates), rejections=tuple(rejections), waiting=waiting)

    def _filter(
        self, view: SiteView, request: PlacementRequest, usage: Usage
    ) -> tuple[list[str], _Fit | None]:
        reasons = _liveness(self.registry.freshness(view.name), view)
        if view.name in request.exclude:
            reasons.append("already tried for this deployment")
        sla = self._sla(view.name, request)
        if sla is None:
            reasons.append(f"no SLA for group {request.group!r}{_pin_note(request.scheduling)}")
        if view.capacity is None:
            return [*reasons, "no capacity report yet"], None
        if not _region_ok(request.scheduling, view.capacity):
            reasons.append(f"not in region {request.scheduling.region!r}")
        fit_reasons, shapes, images = self._fit_nodes(view.capacity, request.requirements)
        reasons += fit_reasons
        reasons += _quota_problems(view, request.group, usage, self.claims, sla)
        if reasons or sla is None:
            return reasons, None
        return reasons, _Fit(sla=sla, shapes=shapes, images=images)

    def _sla(self, site: str, request: PlacementRequest) -> Sla | None:
        pin = request.scheduling
        for sla in self._slas:
            if sla.group != request.group or sla.site != site:
                continue
            if pin.site is not None and pin.site != site:
                continue
            if pin.sla_id is not None and pin.sla_id != sla.id:
                continue
            return sla
        return None

    def _fit_nodes(
        self, capacity: Capacity, requirements: TemplateRequirements
    ) -> tuple[list[str], dict[str, str], dict[str, str]]:
        reasons: list[str] = []
        shapes: dict[str, str] = {}
        images: dict[str, str] = {}
        caps = capacity.capabilities
        aliases = self._aliases.get(capacity.site, {})
        for node in requirements.nodes:
            if node.kind not in HOSTED_KINDS and node.kind not in caps.workload_kinds:
                reasons.append(f"node {node.name}: site does not run {node.kind.value}")
                continue
            if node.kind in SIZED_KINDS and caps.shapes:
                shape = smallest_fitting_shape(node, caps.shapes)
                if shape is None:
                    reasons.append(f"node {node.name}: no flavor or node fits {_describe(node)}")
                else:
                    shapes[node.name] = shape.name
            if needs_image(node):
                image = matching_image(node.image, caps.images, aliases)
                if image is None:
                    reasons.append(f"node {node.name}: no image matches {_image_text(node)}")
                else:
                    images[node.name] = image
        return reasons, shapes, images

    def _score(
        self, view: SiteView, request: PlacementRequest, usage: Usage, fit: _Fit
    ) -> Candidate:
        w = self._weights
        stats = self._stats.get(view.name, SiteStats())
        assert view.capacity is not None
        headroom = _headroom(view, request.group, usage, self.claims)
        speed = 1.0 / (1.0 + (stats.median_seconds or 300.0) / 300.0)
        held = set(view.capacity.capabilities.datasets)
        locality = (
            len(held.intersection(request.datasets)) / len(request.datasets)
            if request.datasets
            else 0.0
        )
        terms = {
            "SLA preference": (w.preference, fit.sla.preference),
            "quota headroom": (w.headroom, headroom),
            "success rate": (w.success, stats.success_rate),
            "provisioning speed": (w.speed, speed),
            "data locality": (w.locality, locality),
        }
        score = sum(weight * value for weight, value in terms.values())
        explanation = tuple(
            f"{name} {value:.2f} x{weight:g}" for name, (weight, value) in terms.items()
        )
        return Candidate(
            site=view.name,
            sla_id=fit.sla.id,
            score=round(score, 4),
            explanation=explanation,
            shapes=fit.shapes,
            images=fit.images,
            usage=usage,
        )


def _liveness(freshness: Freshness, view: SiteView) -> list[str]:
    if freshness is Freshness.STALE:
        return ["lease expired"]
    if freshness is Freshness.PENDING:
        return ["not reported since the scheduler started"]
    if view.state is not SiteState.READY:
        return [f"site is {view.state.value}"]
    return []


def _pin_note(pin: Scheduling) -> str:
    if pin.site is not None:
        return f" (pinned to site {pin.site!r})"
    if pin.sla_id is not None:
        return f" (pinned to SLA {pin.sla_id!r})"
    return ""


def _region_ok(pin: Scheduling, capacity: Capacity) -> bool:
    return pin.region is None or pin.region in capacity.capabilities.regions


def _applicable_quotas(capacity: Capacity, group: str) -> dict[str, QuotaUsage]:
    """The quota per resource: a group's own share wins over the site-wide one."""
    quotas: dict[str, QuotaUsage] = {}
    for quota in capacity.quotas:
        if quota.group is None:
            quotas.setdefault(quota.resource, quota)
        elif quota.group == group:
            quotas[quota.resource] = quota
    return quotas


def _free(quota: QuotaUsage, claimed: float) -> float | None:
    return None if quota.limit is None else quota.limit - quota.used - claimed


def _quota_problems(
    view: SiteView, group: str, usage: Usage, claims: ClaimBook, sla: Sla | None
) -> list[str]:
    assert view.capacity is not None
    problems = []
    claimed = claims.held(view.name)
    for resource, quota in _applicable_quotas(view.capacity, group).items():
        free = _free(quota, claimed[resource])
        if usage[resource] and free is not None and usage[resource] > free:
            problems.append(f"quota {resource}: needs {usage[resource]:g}, free {max(free, 0):g}")
    if sla is not None:
        mine = claims.held(view.name, group)
        for resource, limit in sla.limits.items():
            if usage[resource] + mine[resource] > limit:
                problems.append(f"SLA {sla.id} limit {resource}: {limit:g}")
    return problems


def _headroom(view: SiteView, group: str, usage: Usage, claims: ClaimBook) -> float:
    """The smallest share of any limited resource still free after this request (0..1)."""
    assert view.capacity is not None
    claimed = claims.held(view.name)
    shares = [1.0]
    for resource, quota in _applicable_quotas(view.capacity, group).items():
        free = _free(quota, claimed[resource])
        if free is not None and quota.limit:
            shares.append(max(free - usage[resource], 0.0) / quota.limit)
    return min(shares)


def _describe(node: NodeRequirements) -> str:
    resources = node.resources
    gpu = f", {resources.gpu.count} GPU" if resources.gpu else ""
    ib = ", InfiniBand" if resources.infiniband else ""
    return f"{resources.cpus:g} CPUs, {resources.memory_mb} MB{gpu}{ib}"


def _image_text(node: NodeRequirements) -> str:
    image = node.image
    parts = [image.name, image.distribution, image.version] if image else []
    return " ".join(str(p) for p in parts if p) or "the requested OS"
