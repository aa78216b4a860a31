"""Lifecycle: placement, failover with causes, timeouts, delete, one operation at a time."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from flotilla.errors import PermanentError, RetryableError
from flotilla.scheduler.lifecycle import (
    CANDIDATES_LISTED,
    Lifecycle,
    LifecycleConfig,
    OperationInProgressError,
)
from flotilla.scheduler.model import AttemptOutcome, Change, EncodedJson
from flotilla.scheduler.placement import REJECTIONS_LISTED, Placer, Sla
from flotilla.scheduler.registry import SiteRegistry
from flotilla.scheduler.sql.error import DatabaseUnavailableError
from flotilla.scheduler.store import MemoryStore, StaleWriteError
from flotilla.scheduler.tosca import TemplateError, TemplateProblem, TemplateRequirements
from flotilla.schemas import (
    AttemptRef,
    DeleteRequest,
    DeploymentDeleteRequested,
    DeploymentProvisioned,
    DeploymentReleased,
    DeploymentRequest,
    DeploymentRequested,
    DeploymentStatus,
    DeploymentStatusChanged,
    Failure,
    FailureCause,
    ProvisionDeployment,
    Provisioned,
    ProvisioningFailed,
    ReleaseDeployment,
    new_id,
)
from tests.unit.test_placement import Clock, report, template, vm

S = DeploymentStatus
SLAS = [Sla(id=f"sla-{s}", group="physics", site=s) for s in ("alpha", "beta", "gamma")]


class Templates:
    """A template source that returns fixed requirements, or refuses one template."""

    def __init__(self, requirements: TemplateRequirements) -> None:
        self.requirements_value = requirements

    async def requirements(self, template: str, inputs: Mapping[str, Any]) -> TemplateRequirements:
        if template == "bad":
            raise TemplateError(
                [TemplateProblem(node="server", field="num_cpus", message="must be >= 1")]
            )
        return self.requirements_value


class Harness:
    """Drives a lifecycle over a memory store, committing every change like the service."""

    def __init__(
        self,
        clock: Clock,
        *,
        sites: tuple[str, ...] = ("alpha", "beta", "gamma"),
        slas: list[Sla] = SLAS,
    ) -> None:
        self.clock = clock
        self.registry = SiteRegistry(grace=timedelta(0), clock=clock)
        for i, site in enumerate(sites):
            report(self.registry, site, cores=100 - i)  # alpha ranks first, then beta
        self.store = MemoryStore()
        self.placer = Placer(self.registry, slas)
        self.lifecycle = Lifecycle(
            store=self.store,
            placer=self.placer,
            templates=Templates(template(vm())),
            config=LifecycleConfig(site_timeout=timedelta(minutes=5)),
            clock=clock,
        )
        self.sent: list[Any] = []

    async def commit(self, change: Change | None) -> None:
        assert change is not None
        await self.store.commit(change)
        self.sent.extend(change.outbox)

    async def request(self, message: DeploymentRequested) -> Change | None:
        """Decide a request and commit it, handing a refused create back like the service."""
        change = await self.lifecycle.requested(message)
        if change is None:
            return None
        try:
            await self.commit(change)
        except Exception as exc:
            await self.lifecycle.create_not_written(change, message, exc)
            return None
        return change

    async def complete(self, deployment_id: str, site: str = "alpha") -> None:
        """The site delivers attempt 1 and then reports capacity, which ends its claim."""
        done = Provisioned(deployment_id=deployment_id, site=site, attempt=1)
        await self.commit(
            await self.lifecycle.provisioned(DeploymentProvisioned.create(done, source="/s"))
        )
        self.clock.now += timedelta(seconds=1)
        self.placer.claims.site_reported(site, self.clock.now)

    def restarted(self, *, grace: timedelta) -> Lifecycle:
        """A lifecycle over the same store just after a start: no site has reported yet."""
        return Lifecycle(
            store=self.store,
            placer=Placer(SiteRegistry(grace=timedelta(0), clock=self.clock), SLAS),
            templates=Templates(template(vm())),
            config=LifecycleConfig(grace=grace),
            clock=self.clock,
        )

    def commands(self, cls: type) -> list[Any]:
        return [m for m in self.sent if isinstance(m, cls)]

    def statuses(self) -> list[DeploymentStatus]:
        return [m.data.status for m in self.sent if isinstance(m, DeploymentStatusChanged)]


def request(deployment_id: str, **fields: Any) -> DeploymentRequested:
    data = DeploymentRequest(
        deployment_id=deployment_id, template="t", owner="ann", group="physics", **fields
    )
    return DeploymentRequested.create(data, source="/test")


def failed(deployment_id: str, site: str, attempt: int, message: str) -> ProvisioningFailed:
    cause = FailureCause(code="quota_exceeded", message=message, retryable=False)
    data = Failure(deployment_id=deployment_id, site=site, attempt=attempt, cause=cause)
    return ProvisioningFailed.create(data, source=f"/sites/{site}")


@pytest.fixture
def harness() -> Harness:
    return Harness(Clock())


async def test_request_is_placed_on_the_best_site(harness: Harness) -> None:
    """A request yields CREATE_IN_PROGRESS and a provision command for the top-ranked site."""
    did = new_id()
    await harness.commit(await harness.lifecycle.requested(request(did)))
    (command,) = harness.commands(ProvisionDeployment)
    assert command.data.site == "alpha"
    assert command.data.plan.nodes[0].shape == "m1.large"
    assert command.data.idempotency_key == f"{did}/1"
    record = await harness.store.get(did)
    assert record is not None
    assert record.status is S.CREATE_IN_PROGRESS


async def test_attempt_keeps_the_best_candidates_and_counts_the_rest() -> None:
    """The ranking kept with an attempt lists the best candidates with their explanations,
    counts the candidates past the cap, and lists rejected sites with reasons."""
    sites = tuple(f"site-{i:02d}" for i in range(CANDIDATES_LISTED + 5))
    slas = [Sla(id=f"sla-{s}", group="physics", site=s) for s in sites]
    harness = Harness(Clock(), sites=(*sites, "outsider"), slas=slas)
    did = new_id()
    await harness.commit(await harness.lifecycle.requested(request(did)))
    (attempt,) = await harness.store.attempts(did)
    ranking = attempt.ranking
    listed = ranking["candidates"]
    assert [c["site"] for c in listed] == list(sites[:CANDIDATES_LISTED])  # best first
    assert listed[0]["site"] == attempt.site
    assert any(line.startswith("quota headroom") for line in listed[0]["explanation"])
    assert ranking["more_candidates"] == 5
    assert ranking["rejected"] == [{"site": "outsider", "reasons": ["no SLA for group 'physics'"]}]
    assert ranking["claimed"]["cores"] == 4  # the whole m1.large flavor


async def test_the_kept_ranking_carries_its_own_encoding() -> None:
    """A stored ranking is written from its own text, which decodes to the same ranking:
    candidates, listed rejections, the summary of the sites past the list, and the claim."""
    sites = tuple(f"site-{i:02d}" for i in range(CANDIDATES_LISTED + 5))
    outsiders = tuple(f"outsider-{i:02d}" for i in range(REJECTIONS_LISTED + 7))
    slas = [Sla(id=f"sla-{s}", group="physics", site=s) for s in sites]
    harness = Harness(Clock(), sites=(*sites, *outsiders), slas=slas)
    did = new_id()
    await harness.commit(await harness.lifecycle.requested(request(did)))
    (attempt,) = await harness.store.attempts(did)
    ranking = attempt.ranking

    assert isinstance(ranking, EncodedJson)
    assert json.loads(ranking.text) == ranking
    assert len(ranking["rejected"]) == REJECTIONS_LISTED + 1
    assert ranking["rejected"][-1]["site"] == "7 more sites"
    assert isinstance(ranking["candidates"][0]["score"], float)


async def test_provisioned_completes_with_outputs(harness: Harness) -> None:
    """A provisioned report completes the deployment and stores its outputs."""
    did = new_id()
    await harness.commit(await harness.lifecycle.requested(request(did)))
    done = Provisioned(deployment_id=did, site="alpha", attempt=1, outputs={"ip": "10.0.0.5"})
    await harness.commit(
        await harness.lifecycle.provisioned(DeploymentProvisioned.create(done, source="/s"))
    )
    record = await harness.store.get(did)
    assert record is not None
    assert (record.status, record.outputs, record.operation) == (
        S.CREATE_COMPLETE,
        {"ip": "10.0.0.5"},
        None,
    )


async def test_failure_fails_over_and_records_every_cause(harness: Harness) -> None:
    """Each failure releases at its site and moves on; exhaustion lists every attempt's cause."""
    did = new_id()
    await harness.commit(await harness.lifecycle.requested(request(did, max_sites=2)))
    await harness.commit(await harness.lifecycle.failed(failed(did, "alpha", 1, "no cores left")))
    assert [c.data.site for c in harness.commands(ProvisionDeployment)] == ["alpha", "beta"]
    assert [r.data.site for r in harness.commands(ReleaseDeployment)] == ["alpha"]
    await harness.commit(await harness.lifecycle.failed(failed(did, "beta", 2, "image missing")))
    record = await harness.store.get(did)
    assert record is not None
    assert record.status is S.CREATE_FAILED
    assert record.status_reason == (
        "Retries on sites exhausted: alpha (attempt 1): no cores left; "
        "beta (attempt 2): image missing"
    )
    attempts = await harness.store.attempts(did)
    assert [(a.site, a.outcome) for a in attempts] == [
        ("alpha", AttemptOutcome.FAILED),
        ("beta", AttemptOutcome.FAILED),
    ]
    assert [r.data.site for r in harness.commands(ReleaseDeployment)] == ["alpha", "beta"]


async def test_keep_last_attempt_skips_the_final_release(harness: Harness) -> None:
    """With keep_last_attempt the last failed site keeps its resources for inspection."""
    did = new_id()
    await harness.commit(
        await harness.lifecycle.requested(request(did, max_sites=1, keep_last_attempt=True))
    )
    await harness.commit(await harness.lifecycle.failed(failed(did, "alpha", 1, "boom")))
    assert harness.commands(ReleaseDeployment) == []
    (attempt,) = await harness.store.attempts(did)
    assert attempt.kept
    # The site was told up front, so it leaves a failure in place instead of rolling back.
    (command,) = harness.commands(ProvisionDeployment)
    assert command.data.keep_on_failure


async def test_only_the_last_possible_attempt_is_kept_on_failure(harness: Harness) -> None:
    """keep_on_failure goes to the attempt that cannot be followed by another, not before."""
    did = new_id()
    await harness.commit(
        await harness.lifecycle.requested(request(did, max_sites=2, keep_last_attempt=True))
    )
    await harness.commit(await harness.lifecycle.failed(failed(did, "alpha", 1, "boom")))
    first, second = harness.commands(ProvisionDeployment)
    assert (first.data.keep_on_failure, second.data.keep_on_failure) == (False, True)
    assert [r.data.site for r in harness.commands(ReleaseDeployment)] == ["alpha"]


async def test_site_timeout_fails_over(harness: Harness) -> None:
    """An attempt with no result by its deadline counts as failed and the next site is tried."""
    did = new_id()
    await harness.commit(await harness.lifecycle.requested(request(did)))
    assert await harness.lifecycle.site_timed_out(did, 1) is None  # not due yet
    harness.clock.now += timedelta(minutes=6)
    report(harness.registry, "beta", seq=2)  # keep beta's lease fresh
    await harness.commit(await harness.lifecycle.site_timed_out(did, 1))
    assert [c.data.site for c in harness.commands(ProvisionDeployment)] == ["alpha", "beta"]
    first = (await harness.store.attempts(did))[0]
    assert first.outcome is AttemptOutcome.TIMED_OUT
    assert first.cause is not None
    assert first.cause.startswith("no result from site alpha")


async def test_overall_timeout_fails_and_cleans_up(harness: Harness) -> None:
    """The overall deadline fails the deployment and releases the attempt in flight."""
    did = new_id()
    await harness.commit(
        await harness.lifecycle.requested(request(did, timeout=timedelta(minutes=2)))
    )
    harness.clock.now += timedelta(minutes=3)
    await harness.commit(await harness.lifecycle.timed_out(did))
    record = await harness.store.get(did)
    assert record is not None
    assert record.status is S.CREATE_FAILED
    assert record.status_reason == "Timeout: maximum execution time exceeded"
    assert [r.data.site for r in harness.commands(ReleaseDeployment)] == ["alpha"]


async def test_delete_cancels_in_flight_and_completes_on_release(harness: Harness) -> None:
    """Delete during create cancels the attempt, releases it, and completes when released."""
    did = new_id()
    await harness.commit(await harness.lifecycle.requested(request(did)))
    delete = DeploymentDeleteRequested.create(
        DeleteRequest(deployment_id=did, requested_by="ann"), source="/t"
    )
    await harness.commit(await harness.lifecycle.delete_requested(delete))
    assert harness.statuses()[-1] is S.DELETE_IN_PROGRESS
    with pytest.raises(OperationInProgressError):
        await harness.lifecycle.delete_requested(delete)
    released = DeploymentReleased.create(
        AttemptRef(deployment_id=did, site="alpha", attempt=1), source="/s"
    )
    await harness.commit(await harness.lifecycle.released(released))
    record = await harness.store.get(did)
    assert record is not None
    assert record.status is S.DELETE_COMPLETE


async def test_second_create_is_refused(harness: Harness) -> None:
    """A second request for a deployment with an operation in flight is refused with a reason."""
    did = new_id()
    await harness.commit(await harness.lifecycle.requested(request(did)))
    with pytest.raises(OperationInProgressError, match="already has a create in progress"):
        await harness.lifecycle.requested(request(did))


async def test_a_handled_request_seen_again_changes_nothing(harness: Harness) -> None:
    """The same request message again (a redelivery) decides nothing and is not refused;
    another request for the same deployment still is."""
    did = new_id()
    message = request(did)
    await harness.commit(await harness.lifecycle.requested(message))
    assert await harness.lifecycle.requested(message) is None
    with pytest.raises(OperationInProgressError):
        await harness.lifecycle.requested(request(did))


async def test_a_request_for_a_finished_deployment_is_refused_and_claims_nothing(
    harness: Harness,
) -> None:
    """Once nothing is held for a deployment its request is decided without a read; the
    store refuses the create, the claim it made is given back, and the request is refused."""
    did = new_id()
    await harness.request(request(did))
    await harness.complete(did)
    assert harness.placer.claims.held("alpha")["cores"] == 0
    change = await harness.lifecycle.requested(request(did))
    assert change is not None
    assert change.expected_version == 0  # a create, with its claim made
    assert harness.placer.claims.held("alpha")["cores"] == 4
    with pytest.raises(StaleWriteError, match="already exists") as refused:
        await harness.commit(change)
    with pytest.raises(PermanentError, match=f"deployment {did} already exists"):
        await harness.lifecycle.create_not_written(change, request(did), refused.value)
    assert harness.placer.claims.held("alpha")["cores"] == 0
    record = await harness.store.get(did)
    assert record is not None
    assert record.status is S.CREATE_COMPLETE
    assert len(harness.commands(ProvisionDeployment)) == 1


async def test_a_handled_request_redelivered_after_it_finished_changes_nothing(
    harness: Harness,
) -> None:
    """The same request message after its deployment finished: the refused create was a
    redelivery, so nothing is refused, held or sent."""
    did = new_id()
    message = request(did)
    await harness.request(message)
    await harness.complete(did)
    before = await harness.store.get(did)
    assert await harness.request(message) is None
    assert await harness.store.get(did) == before
    assert harness.placer.claims.held("alpha")["cores"] == 0
    assert len(harness.commands(ProvisionDeployment)) == 1


async def test_a_request_whose_create_was_never_committed_is_decided_afresh(
    harness: Harness,
) -> None:
    """A create whose commit never ended (its step was cancelled) leaves its claim; the
    request delivered again is placed anew, holding one claim, instead of being retried
    forever as a deployment that should exist."""
    message = request(new_id())
    assert await harness.lifecycle.requested(message) is not None  # never committed
    assert harness.placer.claims.held("alpha")["cores"] == 4
    change = await harness.request(message)
    assert change is not None
    (command,) = harness.commands(ProvisionDeployment)
    assert command.data.site == "alpha"  # ranked without the stale claim
    assert harness.placer.claims.held("alpha")["cores"] == 4
    assert harness.placer.claims.held("beta")["cores"] == 0


@pytest.mark.parametrize("same_message", [True, False], ids=["redelivery", "second request"])
async def test_a_failed_commit_of_a_known_deployment_leaves_no_claim(
    harness: Harness, same_message: bool
) -> None:
    """A request for a finished deployment claims as it is decided; when its commit fails
    (the database is away) the claim is given back and the error raised for a retry, which
    is then told apart as before, with nothing left claimed."""
    did = new_id()
    message = request(did)
    await harness.request(message)
    await harness.complete(did)
    again = message if same_message else request(did)
    change = await harness.lifecycle.requested(again)
    assert change is not None
    assert harness.placer.claims.held("alpha")["cores"] == 4
    away = DatabaseUnavailableError("commit: no answer within 0:00:10")
    with pytest.raises(DatabaseUnavailableError):
        await harness.lifecycle.create_not_written(change, again, away)
    assert harness.placer.claims.held("alpha")["cores"] == 0
    if same_message:
        assert await harness.request(again) is None
    else:
        with pytest.raises(PermanentError, match="already exists"):
            await harness.request(again)
    assert harness.placer.claims.held("alpha")["cores"] == 0


async def test_a_handled_request_seen_again_within_the_start_grace_is_not_retried(
    harness: Harness,
) -> None:
    """Right after a start no site has reported; a request handled before it changes nothing
    at once instead of waiting for the sites."""
    did = new_id()
    message = request(did)
    await harness.request(message)
    restarted = harness.restarted(grace=timedelta(seconds=30))
    assert await restarted.requested(message) is None
    with pytest.raises(OperationInProgressError):
        await restarted.requested(request(did))
    with pytest.raises(RetryableError, match="not reported since the scheduler started"):
        await restarted.requested(request(new_id()))


async def test_bad_template_fails_with_node_and_field(harness: Harness) -> None:
    """A template error ends CREATE_FAILED with the node and field in the reason."""
    did = new_id()
    data = DeploymentRequest(deployment_id=did, template="bad", owner="ann", group="physics")
    await harness.commit(
        await harness.lifecycle.requested(DeploymentRequested.create(data, source="/t"))
    )
    record = await harness.store.get(did)
    assert record is not None
    assert record.status is S.CREATE_FAILED
    assert record.status_reason is not None
    assert "server.num_cpus" in record.status_reason


async def test_no_site_fits_explains_each_rejection(harness: Harness) -> None:
    """With no eligible site the reason names every site and why it was rejected."""
    did = new_id()
    data = DeploymentRequest(deployment_id=did, template="t", owner="ann", group="chemistry")
    await harness.commit(
        await harness.lifecycle.requested(DeploymentRequested.create(data, source="/t"))
    )
    record = await harness.store.get(did)
    assert record is not None
    assert record.status_reason is not None
    assert record.status_reason.startswith(
        "No site meets the deployment requirements: alpha: no SLA"
    )


async def test_late_report_of_a_superseded_attempt_is_ignored(harness: Harness) -> None:
    """A success from an attempt that already failed over changes nothing."""
    did = new_id()
    await harness.commit(await harness.lifecycle.requested(request(did)))
    await harness.commit(await harness.lifecycle.failed(failed(did, "alpha", 1, "boom")))
    late = Provisioned(deployment_id=did, site="alpha", attempt=1)
    assert (
        await harness.lifecycle.provisioned(DeploymentProvisioned.create(late, source="/s")) is None
    )


async def test_no_site_within_the_start_grace_is_retried_not_failed(harness: Harness) -> None:
    """Right after a start, an empty ranking is a retryable error, not CREATE_FAILED."""
    lifecycle = harness.restarted(grace=timedelta(seconds=30))
    with pytest.raises(RetryableError, match="not reported since the scheduler started"):
        await lifecycle.requested(request(new_id()))
    harness.clock.now += timedelta(seconds=31)
    change = await lifecycle.requested(request(new_id()))
    assert change.deployment.status is S.CREATE_FAILED


async def test_reclaim_holds_capacity_again_after_a_restart(harness: Harness) -> None:
    """An attempt in flight claims its usage again in a fresh placer (claims live in memory)."""
    did = new_id()
    await harness.commit(await harness.lifecycle.requested(request(did)))
    record = await harness.store.get(did)
    (attempt,) = await harness.store.attempts(did)
    assert record is not None
    restarted = Placer(harness.registry, SLAS)
    lifecycle = Lifecycle(
        store=harness.store, placer=restarted, templates=Templates(template(vm()))
    )
    assert restarted.claims.held("alpha")["cores"] == 0
    await lifecycle.reclaim(record, attempt)
    # The same as was claimed when placed: the 2-CPU VM's whole 4-CPU flavor.
    claimed_when_placed = harness.placer.claims.held("alpha")["cores"]
    assert restarted.claims.held("alpha")["cores"] == claimed_when_placed == 4
