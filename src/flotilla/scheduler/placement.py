"""Placement: filter the sites that can run a template, rank them, and say why.

Every site ends up either a ``Candidate`` with a score and the terms that made it, or a
``Rejection`` with the reasons; both are stored with the decision so a user can see why a
deployment went where it went, or why it went nowhere.

With many sites, most of them have no SLA for the requesting group. Only the group's SLA
sites are filtered and scored (found through an index of SLAs by group), and a site's
template fit is cached until its capabilities change (``FitCache``). Every candidate is
listed; rejections are listed up to ``REJECTIONS_LISTED`` sites, preferring the sites that
hold an SLA for the group (the ones a user asks about), and a last entry counts the rest,
so a ranking over a thousand sites stays small enough to store with each attempt and to read.

Requests of one kind (template, group, pins, region, datasets) come again and again, and
between two of them only a few sites change. Each kind keeps a standing of its SLA sites
(``_Board``): the candidates sorted best first and the rejected sites sorted by name. A
ranking first reads the change logs of the registry, the claim book and the site statistics
and judges again only the sites named there; then it drops the sites that are not live or
are excluded. A ranking costs a walk down one sorted list instead of judging every site.
A region pin is not a kind of its own: a pinned request reads the standing of the same
request without the pin and sets aside the sites whose report places them elsewhere
(``_Region``), as it does the sites that are not live.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any, Final

import pydantic_core

from flotilla.scheduler.changes import ChangeLog
from flotilla.scheduler.claim import ClaimBook
from flotilla.scheduler.demand import FitCache, TemplateFit, Usage, fitted_usage, total_usage
from flotilla.scheduler.registry import Freshness, SiteRegistry, SiteView
from flotilla.scheduler.tosca.requirement import TemplateRequirements
from flotilla.schemas import Capacity, Scheduling, SiteState

REJECTIONS_LISTED: Final = 50
"""Rejected sites listed one by one in a ranking; the rest are counted in one last entry."""


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
    _json: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

    def as_json(self) -> dict[str, Any]:
        """Site, score and explanation as stored with an attempt (made once; do not change)."""
        if self._json is None:
            record = {"site": self.site, "score": self.score, "explanation": [*self.explanation]}
            object.__setattr__(self, "_json", record)
            return record
        return self._json

    def json_text(self) -> str:
        """``as_json()`` encoded, once."""
        return _encoded_once(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """A site that cannot run the template, and every reason why."""

    site: str
    reasons: tuple[str, ...]
    _json: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

    def as_json(self) -> dict[str, Any]:
        """Site and reasons as stored with an attempt (made once; do not change)."""
        if self._json is None:
            record = {"site": self.site, "reasons": [*self.reasons]}
            object.__setattr__(self, "_json", record)
            return record
        return self._json

    def json_text(self) -> str:
        """``as_json()`` encoded, once."""
        return _encoded_once(self)


def _encoded_once(entry: Candidate | Rejection) -> str:
    """``entry.as_json()`` encoded, made on the first call and kept on the entry."""
    text = entry._text
    if text is None:
        text = pydantic_core.to_json(entry.as_json()).decode()
        object.__setattr__(entry, "_text", text)
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class Ranking:
    """Candidates best first, and the rejected sites.

    When more than ``REJECTIONS_LISTED`` sites are rejected, ``rejections`` lists that many
    (sites with an SLA for the group first, then by name) and ends with one more entry, not
    a site, whose ``site`` reads ``"<n> more sites"`` and whose reasons count them by kind;
    ``unlisted`` is that ``n``.
    """

    candidates: tuple[Candidate, ...]
    rejections: tuple[Rejection, ...]
    waiting: bool = False  # some site is still within the restart grace: try again shortly
    unlisted: int = 0

    def summary(self) -> str:
        """One line per rejected site, for a deployment's status reason."""
        return "; ".join(f"{r.site}: {', '.join(r.reasons)}" for r in self.rejections)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Pass:
    """What one ranking shares across sites, worked out once per request."""

    request: PlacementRequest
    usage: Usage
    template: int  # the FitCache key of the request's template
    key: int  # names everything a site's outcome depends on besides the site itself
    board: int  # the key of the same request without its region pin: names its standing
    slas: Mapping[str, Sla]  # the SLA each site offers the request, by site name
    now: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class _Outcome:
    """A site's verdict for one kind of request, liveness and exclusion aside."""

    reasons: tuple[str, ...]
    candidate: Candidate | None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Fitted:
    """A site's verdict for one kind of request from its capacity report alone."""

    capacity: Capacity | None  # the report it was made from
    reasons: tuple[str, ...]  # SLA, report, region (if asked) and fit; quotas apart
    fit: TemplateFit | None
    usage: Usage  # what the request would take from the site's quotas
    rejected: _Outcome | None = None  # the outcome when ``reasons`` already rule it out


def _fitted(
    *, capacity: Capacity | None, reasons: list[str], fit: TemplateFit | None, usage: Usage
) -> _Fitted:
    rejected = _Outcome(reasons=tuple(reasons), candidate=None) if reasons else None
    return _Fitted(
        capacity=capacity, reasons=tuple(reasons), fit=fit, usage=usage, rejected=rejected
    )


@dataclass(slots=True, kw_only=True)
class _SiteMemo:
    """Why a site without an SLA is rejected, by request key, while its report holds."""

    capacity: Capacity | None
    reasons: dict[int, tuple[str, ...]] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class _Region:
    """A standing's sites whose capacity report places them outside one region.

    ``rejections`` are made when a site is first listed and forgotten when it is judged
    again; a site without a report yet is not outside (it is rejected for that).
    """

    name: str
    outside: set[str]
    rejections: dict[str, Rejection] = field(default_factory=dict)

    def update(self, site: str, fitted: _Fitted | None) -> None:
        """Follow the site's new judgement (None: it left the standing)."""
        self.rejections.pop(site, None)
        if fitted is not None and _elsewhere(fitted, self.name):
            self.outside.add(site)
        else:
            self.outside.discard(site)

    def rejection(self, site: str, fitted: _Fitted) -> Rejection:
        """Why the site is rejected for a request pinned to this region."""
        rejection = self.rejections.get(site)
        if rejection is None:
            # The reasons a pinned request's own judgement gives: its report rules it out.
            reasons = (f"not in region {self.name!r}", *fitted.reasons)
            rejection = self.rejections[site] = Rejection(site=site, reasons=reasons)
        return rejection


def _elsewhere(fitted: _Fitted, region: str) -> bool:
    capacity = fitted.capacity
    return capacity is not None and region not in capacity.capabilities.regions


# (-score, site, candidate): best first when sorted. Sites are unique in a list, so tuples
# compare on score and site alone and never reach the candidate.
_Entry = tuple[float, str, Candidate]


@dataclass(slots=True, kw_only=True)
class _Board:
    """One kind of request's standing at its SLA sites, liveness and exclusion aside.

    ``ranked`` holds the sites whose outcome is a candidate, best first; ``rejected`` the
    names of the others, sorted. ``positions`` are how far the registry's, the claim book's
    and the statistics' change logs have been read.
    """

    slas: Mapping[str, Sla]
    outcomes: dict[str, _Outcome] = field(default_factory=dict)
    ranked: list[_Entry] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    positions: tuple[int, ...] = ()
    fits: dict[str, _Fitted] = field(default_factory=dict)
    rejections: dict[str, Rejection] = field(default_factory=dict)  # of ``rejected``, when live
    regions: dict[str, _Region] = field(default_factory=dict)  # asked for by pinned requests

    def region(self, name: str) -> _Region:
        """The sites outside region ``name``, kept up to date from the first time asked."""
        region = self.regions.get(name)
        if region is None:
            fits = self.fits
            outside = {site for site in self.outcomes if _elsewhere(fits[site], name)}
            region = self.regions[name] = _Region(name=name, outside=outside)
        return region

    def put(self, site: str, outcome: _Outcome | None) -> None:
        """Replace the site's outcome (None: forget the site), keeping both lists sorted.

        The site's fit in ``fits`` must be the one the outcome was judged on.
        """
        for region in self.regions.values():
            region.update(site, None if outcome is None else self.fits[site])
        old = self.outcomes.pop(site, None)
        if old is not None:
            if old.candidate is not None:
                del self.ranked[bisect_left(self.ranked, (-old.candidate.score, site))]
            else:
                del self.rejected[bisect_left(self.rejected, site)]
                del self.rejections[site]
        if outcome is None:
            return
        self.outcomes[site] = outcome
        candidate = outcome.candidate
        if candidate is not None:
            insort(self.ranked, (-candidate.score, site, candidate))
        else:
            insort(self.rejected, site)
            self.rejections[site] = Rejection(site=site, reasons=outcome.reasons)


_NO_STATS = SiteStats()
_NOWHERE: frozenset[str] = frozenset()
_MAX_KEYS = 512  # distinct kinds of request remembered before the memos start afresh
_MAX_OUTCOMES = 64  # per site
_MAX_BOARDS = 256  # kinds of request with a standing kept; past that the least recently used goes


class Placer:
    """Filters and ranks the registry's sites for a request, holding claims for decisions.

    A site's outcome for a kind of request (template, group, pin, region, datasets) is
    kept until the site sends a new capacity report, its claims or its stats change; only
    liveness and the request's exclusions are judged afresh for every request.
    """

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
        self._by_group = _index(self._slas)
        self._aliases = image_aliases or {}
        self._weights = weights or Weights()
        self._stats: dict[str, SiteStats] = {}
        self._fits = FitCache()
        self._keys: dict[tuple[object, ...], int] = {}
        self._pins: dict[tuple[str, str | None, str | None], dict[str, Sla]] = {}
        self._memos: dict[str, _SiteMemo] = {}  # reasons at sites without an SLA
        self._stat_changes = ChangeLog()
        self._boards: dict[int, _Board] = {}

    def record_stats(self, site: str, stats: SiteStats) -> None:
        """Set a site's recent attempt history, used in ranking."""
        self._stats[site] = stats
        self._stat_changes.add(site)

    def rank(self, request: PlacementRequest) -> Ranking:
        """Every known site, as a candidate (best first) or a rejection with reasons."""
        run = self._pass(request)
        board = self._board(run)
        down = self.registry.not_live(run.now)
        exclude = request.exclude
        pin = request.scheduling.region
        region = None if pin is None else board.region(pin)
        outside = _NOWHERE if region is None else region.outside
        if down or exclude or outside:
            candidates = [
                c
                for _, s, c in board.ranked
                if s not in down and s not in exclude and s not in outside
            ]
        else:
            candidates = [c for _, _, c in board.ranked]
        rejected, more = self._listing(run, board, down, region)
        rejections, unlisted = self._rejections(run, list(rejected), more, len(candidates))
        return Ranking(
            candidates=tuple(candidates),
            rejections=rejections,
            waiting=self.registry.any_pending(now=run.now),
            unlisted=unlisted,
        )

    def _listing(
        self, run: _Pass, board: _Board, down: Set[str], region: _Region | None
    ) -> tuple[list[Rejection], int]:
        """The board's rejected sites to list, by name, and how many more there are.

        Rejected are the sites rejected on their outcome, and the candidates that are not
        live, are excluded or are outside the pinned region. A live site that is not
        excluded is listed with the rejection the board (or the region, when the site is
        outside it) made when it judged the site; the others gain their liveness reasons.
        """
        exclude = run.request.exclude
        outside = _NOWHERE if region is None else region.outside
        blocked = sorted(
            site
            for site in {*down, *exclude, *outside}
            if (outcome := board.outcomes.get(site)) is not None and outcome.candidate is not None
        )
        rejected: list[Rejection] = []  # the first REJECTIONS_LISTED, by name
        for site in islice(heapq.merge(board.rejected, blocked), REJECTIONS_LISTED):
            own = None
            if region is not None and site in outside:
                own = region.rejection(site, board.fits[site])
            if site not in down and site not in exclude:
                rejected.append(own or board.rejections[site])
                continue
            view = self.registry.get(site)
            assert view is not None  # a site with an outcome has a view
            reasons = own.reasons if own else board.outcomes[site].reasons
            reasons = (*_live_reasons(self.registry, view, run), *reasons)
            rejected.append(Rejection(site=site, reasons=reasons))
        more = len(board.rejected) + len(blocked) - len(rejected)
        return rejected, more

    def _pass(self, request: PlacementRequest) -> _Pass:
        pin = request.scheduling
        template = self._fits.key(request.requirements)
        # The fit's key leaves instance counts out (they do not change a fit), but the
        # usage checked against quotas and claimed depends on them.
        counts = tuple(node.count for node in request.requirements.nodes)
        kind = (
            template,
            counts,
            request.group,
            pin.site,
            pin.sla_id,
            pin.region,
            request.datasets,
        )
        if len(self._keys) >= _MAX_KEYS:  # keys restart from 0: forget what they named
            self._keys.clear()
            self._memos.clear()
            self._boards.clear()
        key = self._key(kind)
        return _Pass(
            request=request,
            usage=total_usage(request.requirements),
            template=template,
            key=key,
            board=key if pin.region is None else self._key((*kind[:5], None, kind[6])),
            slas=self._slas_for(request),
            now=self.registry.now(),
        )

    def _key(self, kind: tuple[object, ...]) -> int:
        key = self._keys.get(kind)
        if key is None:
            key = self._keys[kind] = len(self._keys)
        return key

    def _board(self, run: _Pass) -> _Board:
        """The standing for the request's kind, brought up to date with the change logs."""
        logs = (self.registry.changes, self.claims.changes, self._stat_changes)
        board = self._boards.pop(run.board, None)  # put back last: the most recently used
        changed = None if board is None else _changed_since(logs, board.positions)
        if board is None or changed is None:  # new, or fell behind what the logs keep
            board = _Board(slas=run.slas)
            changed = set(run.slas)
            if len(self._boards) >= _MAX_BOARDS:
                del self._boards[next(iter(self._boards))]
        positions = tuple(log.end for log in logs)
        for site in changed:  # should a judgement fail, the board is dropped, not half kept
            sla = board.slas.get(site)
            if sla is None:
                continue  # no SLA here: not a site of this standing
            view = self.registry.get(site)
            # An SLA for a site that never reported is not a known site.
            stats = self._stats.get(site, _NO_STATS)
            outcome = None if view is None else self._judge(view, run, sla, stats, board.fits)
            if outcome is None or outcome is not board.outcomes.get(site):
                board.put(site, outcome)
        board.positions = positions
        self._boards[run.board] = board
        return board

    def _slas_for(self, request: PlacementRequest) -> Mapping[str, Sla]:
        """The SLA each site offers the request's group, honouring a pinned site or SLA."""
        pin = request.scheduling
        kind = (request.group, pin.site, pin.sla_id)
        chosen = self._pins.get(kind)
        if chosen is None:
            if len(self._pins) >= _MAX_KEYS:
                self._pins.clear()
            chosen = self._pins[kind] = _pinned(self._by_group.get(request.group, {}), pin)
        return chosen

    def _reasons_without_sla(self, view: SiteView, run: _Pass) -> tuple[str, ...]:
        """A site without an SLA for the request is ruled out by its report alone."""
        memo = self._memos.get(view.name)
        if memo is None or memo.capacity is not view.capacity:
            memo = self._memos[view.name] = _SiteMemo(capacity=view.capacity)
        reasons = memo.reasons.get(run.key)
        if reasons is None:
            if len(memo.reasons) >= _MAX_OUTCOMES:
                memo.reasons.clear()
            region = run.request.scheduling.region
            reasons = memo.reasons[run.key] = self._fit(view, run, None, region).reasons
        return reasons

    def _judge(
        self,
        view: SiteView,
        run: _Pass,
        sla: Sla | None,
        stats: SiteStats,
        fits: dict[str, _Fitted],
    ) -> _Outcome:
        """Everything but liveness, exclusion and a region pin: SLA, fit, quotas; and the score.

        ``fits``: the fits of the same kind of request, by site, to reuse while the site's
        capacity report is the same (claims and statistics change far more often).
        """
        fitted = fits.get(view.name)
        if fitted is None or fitted.capacity is not view.capacity:
            fitted = fits[view.name] = self._fit(view, run, sla, None)  # region: apart
        if fitted.rejected is not None:
            # Ruled out by the report alone: claims and statistics cannot change that, so
            # the same outcome stands (and quotas are not worth a reason there).
            return fitted.rejected
        capacity = fitted.capacity
        # Without a report or an SLA there would have been reasons.
        assert capacity is not None
        assert sla is not None
        usage = fitted.usage
        problems, headroom = _quota(capacity, run.request.group, usage, self.claims, sla)
        if problems:
            return _Outcome(reasons=tuple(problems), candidate=None)
        assert fitted.fit is not None  # there is a fit wherever there is a report
        candidate = self._score(capacity, run, sla, fitted.fit, headroom, stats, usage)
        return _Outcome(reasons=(), candidate=candidate)

    def _fit(self, view: SiteView, run: _Pass, sla: Sla | None, region: str | None) -> _Fitted:
        """What depends on the site's capacity report alone: SLA, ``region``, fit and usage."""
        request = run.request
        reasons: list[str] = []
        if sla is None:
            reasons.append(f"no SLA for group {request.group!r}{_pin_note(request.scheduling)}")
        capacity = view.capacity
        if capacity is None:
            reasons.append("no capacity report yet")
            return _fitted(capacity=None, reasons=reasons, fit=None, usage=run.usage)
        if region is not None and region not in capacity.capabilities.regions:
            reasons.append(f"not in region {region!r}")
        aliases = self._aliases.get(view.name, {})
        fit = self._fits.fit(
            view.name, capacity.capabilities, run.template, request.requirements, aliases
        )
        reasons += fit.reasons
        usage = (
            fitted_usage(request.requirements, fit.shapes, capacity.capabilities.shapes)
            if not fit.reasons
            else run.usage
        )
        return _fitted(capacity=capacity, reasons=reasons, fit=fit, usage=usage)

    def _rejections(
        self, run: _Pass, rejected: list[Rejection], more: int, placed: int
    ) -> tuple[tuple[Rejection, ...], int]:
        """The listed rejections, by site name, and how many more sites were rejected."""
        names = self.registry.names()
        without_sla = len(names) - placed - len(rejected) - more
        room = min(REJECTIONS_LISTED - len(rejected), without_sla)
        listed = rejected  # already by name: the SLA sites are visited in name order
        if room > 0:  # the reasons of sites without an SLA are worked out only when listed
            listed += self._rejections_without_sla(run, names, room)
            listed.sort(key=lambda r: r.site)
        unlisted = more + without_sla - room
        if not unlisted:
            return tuple(listed), 0
        return (*listed, _unlisted(run.request, more, unlisted - more)), unlisted

    def _rejections_without_sla(
        self, run: _Pass, names: Sequence[str], count: int
    ) -> list[Rejection]:
        found: list[Rejection] = []
        for name in names:
            view = self.registry.get(name)
            if name in run.slas or view is None:
                continue
            reasons = (
                *_live_reasons(self.registry, view, run),
                *self._reasons_without_sla(view, run),
            )
            found.append(Rejection(site=name, reasons=reasons))
            if len(found) == count:
                break
        return found

    def _score(
        self,
        capacity: Capacity,
        run: _Pass,
        sla: Sla,
        fit: TemplateFit,
        headroom: float,
        stats: SiteStats,
        usage: Usage,
    ) -> Candidate:
        w = self._weights
        datasets = run.request.datasets
        speed = 1.0 / (1.0 + (stats.median_seconds or 300.0) / 300.0)
        locality = 0.0
        if datasets:
            held = set(capacity.capabilities.datasets)
            locality = len(held.intersection(datasets)) / len(datasets)
        terms = {
            "SLA preference": (w.preference, sla.preference),
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
            site=capacity.site,
            sla_id=sla.id,
            score=round(score, 4),
            explanation=explanation,
            shapes=fit.shapes,
            images=fit.images,
            usage=usage,
        )


def _changed_since(logs: Sequence[ChangeLog], positions: Sequence[int]) -> set[str] | None:
    """The sites named in the logs since ``positions``; None when one no longer has them."""
    changed: set[str] = set()
    for log, position in zip(logs, positions, strict=True):
        names = log.since(position)
        if names is None:
            return None
        changed.update(names)
    return changed


def _index(slas: Sequence[Sla]) -> dict[str, dict[str, list[Sla]]]:
    """SLAs by group, then by site name in order, each site's in their given order."""
    index: dict[str, dict[str, list[Sla]]] = {}
    for sla in slas:
        index.setdefault(sla.group, {}).setdefault(sla.site, []).append(sla)
    return {group: dict(sorted(sites.items())) for group, sites in index.items()}


def _pinned(by_site: Mapping[str, list[Sla]], pin: Scheduling) -> dict[str, Sla]:
    """The first SLA per site that the pin allows (all of them when nothing is pinned)."""
    if pin.site is not None:
        by_site = {pin.site: list(by_site[pin.site])} if pin.site in by_site else {}
    chosen: dict[str, Sla] = {}
    for site, slas in by_site.items():
        sla = next((s for s in slas if pin.sla_id is None or s.id == pin.sla_id), None)
        if sla is not None:
            chosen[site] = sla
    return chosen


def _live_reasons(registry: SiteRegistry, view: SiteView, run: _Pass) -> tuple[str, ...]:
    """Why a site cannot be chosen right now, whatever the request: liveness and exclusion."""
    excluded = view.name in run.request.exclude
    expires = view.lease_expires
    if view.state is SiteState.READY and expires is not None and expires > run.now:
        return ("already tried for this deployment",) if excluded else ()
    reasons = _liveness(registry.freshness(view.name, now=run.now), view)
    if excluded:
        reasons.append("already tried for this deployment")
    return tuple(reasons)


def _unlisted(request: PlacementRequest, with_sla: int, without_sla: int) -> Rejection:
    """The entry that counts the rejected sites not listed one by one."""
    reasons = []
    if without_sla:
        reasons.append(f"{without_sla} with no SLA for group {request.group!r}")
    if with_sla:
        reasons.append(f"{with_sla} with an SLA for the group but rejected as well")
    return Rejection(site=f"{with_sla + without_sla} more sites", reasons=tuple(reasons))


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


def _quota(
    capacity: Capacity, group: str, usage: Usage, claims: ClaimBook, sla: Sla | None
) -> tuple[list[str], float]:
    """Quota and SLA-limit problems, and the headroom left after this request."""
    problems, headroom = claims.quota_room(capacity, group, usage)
    if sla is not None and sla.limits:
        mine = claims.totals(capacity.site, group)
        for resource, limit in sla.limits.items():
            if usage[resource] + mine.get(resource, 0) > limit:
                problems.append(f"SLA {sla.id} limit {resource}: {limit:g}")
    return problems, headroom
