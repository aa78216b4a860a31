"""The Slurm site driver: batch-job nodes become sbatch jobs, followed until they end.

Every job of an attempt is named ``<attempt tag>.<node>``. Before submitting anything,
``provision`` looks the names up (squeue, then sacct), so a redelivered command or a
restarted agent finds the jobs it submitted and follows them instead of submitting again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Self

import structlog
from pydantic import JsonValue

from flotilla.agents import batch
from flotilla.agents.driver import (
    AttemptState,
    ProgressSink,
    ProvisioningError,
    ProvisionResult,
    SiteSnapshot,
    SiteUnavailableError,
    attempt_tag,
)
from flotilla.agents.hpc_slurm.capacity import AssociationLimit, capabilities, quotas
from flotilla.agents.hpc_slurm.cluster import SlurmCluster
from flotilla.agents.hpc_slurm.config import SlurmConfig
from flotilla.agents.hpc_slurm.job import JobInfo, failure_of, job_ref, latest_by_name
from flotilla.agents.hpc_slurm.output import attempt_outputs, job_attributes
from flotilla.agents.hpc_slurm.script import ScriptRequest, job_name, jobs_directory, render
from flotilla.agents.hpc_slurm.ssh import LoginNode, LoginRefusedError
from flotilla.schemas import (
    AttemptRef,
    PlannedNode,
    Provision,
    QuotaUsage,
    Release,
    ResourceRef,
    SiteKind,
    WorkloadKind,
)

_log = structlog.get_logger("flotilla.agents.slurm")

# Polls a job may be missing from squeue, sacct and scontrol before it counts as lost.
_LOST_AFTER = 3
_PHASE_ORDER = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Tracked:
    node: str
    name: str
    job_id: str
    output: str

    @property
    def ref(self) -> ResourceRef:
        return ResourceRef(kind="slurm_job", id=self.job_id, name=self.name, node=self.node)


class SlurmDriver:
    """Batch jobs on a Slurm cluster reached over SSH (``kind: slurm``).

    Args:
        config: The ``slurm:`` section of the site file.
        site: The site's name, for log lines.
    """

    kind = SiteKind.SLURM

    def __init__(self, config: SlurmConfig, *, site: str | None = None) -> None:
        self.config = config
        self._log = _log.bind(site=site) if site else _log
        self._login = LoginNode(config)
        self._cluster = SlurmCluster(self._login, user=config.user, history=config.history)
        self._gpu_types: tuple[str, ...] | None = None
        self._limits: tuple[float, dict[str, dict[str, float]]] | None = None
        # sbatch calls in flight, by attempt tag: a release waits for them before it looks.
        self._submitting: dict[str, set[asyncio.Future[str]]] = {}

    async def __aenter__(self) -> Self:
        self._login.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._login.close()

    # Capacity -----------------------------------------------------------------------------

    async def snapshot(self) -> SiteSnapshot:
        """Partitions as shapes, GPUs by type, InfiniBand, and account quotas.

        Raises:
            SiteUnavailableError: the login node cannot be reached or is refused.
        """
        try:
            nodes = await self._cluster.nodes()
            partitions = await self._cluster.partitions()
            found = await self._quotas()
        except LoginRefusedError as exc:
            raise SiteUnavailableError(exc.message) from exc
        self._gpu_types = tuple(sorted({k for n in nodes for k in n.gpus if k is not None}))
        return SiteSnapshot(capabilities=capabilities(nodes, partitions, self.config), quotas=found)

    async def _quotas(self) -> tuple[QuotaUsage, ...]:
        accounts = sorted({*self.config.group_accounts.values(), self.config.default_account or ""})
        accounts = [account for account in accounts if account]
        if not accounts:
            return ()
        now = time.monotonic()
        if (
            self._limits is None
            or now - self._limits[0] > self.config.quota_refresh.total_seconds()
        ):
            self._limits = (now, await self._cluster.association_limits(accounts))
        limits = self._limits[1]
        if not limits:
            return ()
        used = await self._cluster.association_usage(sorted(limits))
        return quotas(
            self.config,
            [
                AssociationLimit(account=account, limits=tres, used=used.get(account, {}))
                for account, tres in limits.items()
            ],
        )

    # Provision ----------------------------------------------------------------------------

    async def provision(self, order: Provision, progress: ProgressSink) -> ProvisionResult:
        """Submit (or find) one job per batch-job node and follow them until they end.

        Raises:
            ProvisioningError: a node is not a batch job, sbatch refused a job, or a job
                ended other than COMPLETED with exit code 0 (``job_failed``, ``timeout``,
                ``cancelled``, ``out_of_memory``, ``node_fail``...).
            SiteUnavailableError: the login node or the controller cannot be reached.
        """
        try:
            jobs = await self._submit_all(order, progress)
            return await self._follow(order, jobs, progress)
        except LoginRefusedError as exc:
            raise ProvisioningError(exc.message, code=exc.code) from exc

    async def _submit_all(self, order: Provision, progress: ProgressSink) -> list[_Tracked]:
        nodes = _batch_nodes(order)
        tag = attempt_tag(order.deployment_id, order.attempt)
        names = {node.name: job_name(tag, node.name) for node in nodes}
        found = await self._find(tag, list(names.values()))
        base = jobs_directory(self.config, await self._cluster.home())
        tracked: dict[str, _Tracked] = {}
        for node in nodes:
            name = names[node.name]
            job = found.get(name)
            if job is not None:
                self._log.info(
                    "job_found", job_id=job.job_id, state=job.state, **_fields(order, node)
                )
                output = f"{base}/{name}/slurm-{job.job_id}.out"
                tracked[node.name] = _Tracked(
                    node=node.name, name=name, job_id=job.job_id, output=output
                )
                continue
            after = [tracked[d].job_id for d in node.depends_on if d in tracked]
            request = ScriptRequest(
                order=order,
                config=self.config,
                jobs_directory=base,
                gpu_types=await self._site_gpu_types() if node.resources.gpu else (),
                after=after,
            )
            script = render(node, request)
            job_id = await self._submit(tag, script.text, script.directory, node.name)
            self._log.info("job_submitted", job_id=job_id, **_fields(order, node))
            progress(
                "SUBMITTED",
                f"job {job_id} ({node.name}) submitted",
                details={"job_id": job_id, "node": node.name, "job_name": name},
            )
            tracked[node.name] = _Tracked(
                node=node.name, name=name, job_id=job_id, output=script.output_of(job_id)
            )
        return list(tracked.values())

    async def _find(self, tag: str, names: list[str]) -> dict[str, JobInfo]:
        live = await self._cluster.live_jobs(prefix=f"{tag}.")
        found = latest_by_name(job for job in live if job.name in names)
        missing = [name for name in names if name not in found]
        if missing:
            past = await self._cluster.past_jobs(names=missing)
            found |= latest_by_name(past)
        return found

    async def _site_gpu_types(self) -> tuple[str, ...]:
        if self._gpu_types is None:
            nodes = await self._cluster.nodes()
            self._gpu_types = tuple(sorted({k for n in nodes for k in n.gpus if k is not None}))
        return self._gpu_types

    async def _follow(
        self, order: Provision, jobs: list[_Tracked], progress: ProgressSink
    ) -> ProvisionResult:
        reported: dict[str, tuple[str, str | None]] = {}
        lost: Counter[str] = Counter()
        tag = attempt_tag(order.deployment_id, order.attempt)
        while True:
            states = await self._states(tag, jobs)
            for job in jobs:
                info = states.get(job.job_id)
                if info is None:
                    lost[job.job_id] += 1
                    if lost[job.job_id] >= _LOST_AFTER:
                        raise ProvisioningError(
                            f"node {job.node}: Slurm job {job.job_id} is neither queued nor in "
                            "accounting any more",
                            code="job_lost",
                            retryable=True,
                            resources=tuple(j.ref for j in jobs),
                        )
                    continue
                lost.pop(job.job_id, None)
                if reported.get(job.job_id) != (info.state, info.reason):
                    reported[job.job_id] = (info.state, info.reason)
                    _report(progress, job, info)
                if info.is_finished and not info.succeeded:
                    raise await self._failure(order, job, info, jobs)
            if all(states.get(j.job_id) and states[j.job_id].succeeded for j in jobs):
                return await self._result(order, jobs, states)
            await asyncio.sleep(self.config.poll_interval.total_seconds())

    async def _result(
        self, order: Provision, jobs: list[_Tracked], states: Mapping[str, JobInfo]
    ) -> ProvisionResult:
        attributes = {
            job.node: job_attributes(
                states[job.job_id],
                output_path=job.output,
                tail=await self._cluster.output_tail(job.output),
            )
            for job in jobs
        }
        for job in jobs:
            self._log.info("job_completed", deployment_id=order.deployment_id, job_id=job.job_id)
        return ProvisionResult(
            outputs=attempt_outputs(order.plan.outputs, attributes),
            resources=tuple(job.ref for job in jobs),
        )

    async def _states(self, tag: str, jobs: list[_Tracked]) -> dict[str, JobInfo]:
        shared = self.config.poll_interval.total_seconds() / 2
        live = await self._cluster.live_jobs(prefix=f"{tag}.", max_age=shared)
        wanted = {job.job_id for job in jobs}
        states = {info.job_id: info for info in live if info.job_id in wanted}
        # A finished job leaves squeue after MinJobAge; ask accounting, then scontrol.
        missing = [job_id for job_id in wanted if job_id not in states]
        if missing:
            states |= {info.job_id: info for info in await self._cluster.past_jobs(job_ids=missing)}
        for job_id in [job_id for job_id in wanted if job_id not in states]:
            info = await self._cluster.job(job_id)
            if info is not None:
                states[job_id] = info
        return states

    async def _failure(
        self, order: Provision, job: _Tracked, info: JobInfo, jobs: list[_Tracked]
    ) -> ProvisioningError:
        tail = await self._cluster.output_tail(job.output) if info.state != "CANCELLED" else ""
        error = failure_of(replace(info, output=job.output), job.node, tail)
        assert error is not None
        error.resources = tuple(j.ref for j in jobs)
        self._log.info(
            "job_failed",
            deployment_id=order.deployment_id,
            attempt=order.attempt,
            job_id=job.job_id,
            state=info.state,
            exit_code=info.exit_code,
            code=error.code,
        )
        return error

    # Status and release -------------------------------------------------------------------

    async def status(self, attempt: AttemptRef) -> AttemptState | None:
        """The attempt's jobs and their states, or None when Slurm knows none."""
        prefix = f"{attempt_tag(attempt.deployment_id, attempt.attempt)}."
        try:
            jobs = latest_by_name(await self._cluster.past_jobs(prefix=prefix))
            jobs |= latest_by_name(await self._cluster.live_jobs(prefix=prefix))
        except LoginRefusedError as exc:
            raise SiteUnavailableError(exc.message) from exc
        if not jobs:
            return None
        infos = list(jobs.values())
        return AttemptState(
            phase=_phase(infos),
            resources=tuple(job_ref(info, info.name.removeprefix(prefix)) for info in infos),
            finished=all(info.is_finished for info in infos),
            details={info.name: info.state for info in infos},
        )

    async def release(self, order: Release) -> None:
        """Cancel every queued or running job of the attempt; done when none is left.

        Raises:
            ProvisioningError: the jobs are still there after scancel (``release_failed``),
                or the login node refused us.
            SiteUnavailableError: the login node or the controller cannot be reached.
        """
        prefix = f"{attempt_tag(order.deployment_id, order.attempt)}."
        try:
            await self._cancel(prefix, order)
        except LoginRefusedError as exc:
            raise ProvisioningError(exc.message, code=exc.code) from exc

    async def _submit(self, tag: str, text: str, directory: str, node: str) -> str:
        """sbatch one job; shielded, so a cancelled provision still learns of what it sent.

        Once the script is on its way sbatch may submit it even if we stop listening; a
        release of the attempt waits for these calls before it lists the jobs to cancel.
        """
        call = asyncio.ensure_future(self._cluster.submit(text, directory=directory, node=node))
        pending = self._submitting.setdefault(tag, set())
        pending.add(call)
        call.add_done_callback(pending.discard)
        return await asyncio.shield(call)

    async def _cancel(self, prefix: str, order: Release) -> None:
        in_flight = self._submitting.pop(prefix.rstrip("."), set())
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.command_timeout.total_seconds()
        cancelled: set[str] = set()
        while True:
            active = [job for job in await self._cluster.live_jobs(prefix=prefix) if job.is_active]
            if not active:
                if cancelled:
                    self._log.info(
                        "jobs_cancelled",
                        deployment_id=order.deployment_id,
                        attempt=order.attempt,
                        job_ids=sorted(cancelled),
                    )
                return
            if loop.time() > deadline:
                ids = ", ".join(job.job_id for job in active)
                raise ProvisioningError(
                    f"Slurm jobs {ids} are still queued or running after scancel",
                    code="release_failed",
                    retryable=True,
                    resources=tuple(job_ref(job, None) for job in active),
                )
            fresh = [job.job_id for job in active if job.job_id not in cancelled]
            if fresh:
                await self._cluster.cancel(fresh)
                cancelled.update(fresh)
            await asyncio.sleep(0.5)


def _batch_nodes(order: Provision) -> list[PlannedNode]:
    nodes = []
    for node in order.plan.nodes:
        if node.kind is not WorkloadKind.BATCH_JOB:
            raise ProvisioningError(
                f"node {node.name}: a Slurm site runs batch jobs, not {node.kind.value}",
                code="unsupported_workload",
                resource=node.name,
            )
        if node.count > 0:
            nodes.append(node)
    # A job can only wait for jobs submitted before it: dependencies go first.
    return batch.in_dependency_order(nodes)


def _report(progress: ProgressSink, job: _Tracked, info: JobInfo) -> None:
    reason = f": {info.reason}" if info.reason and info.reason != "None" else ""
    details: dict[str, JsonValue] = {"job_id": job.job_id, "node": job.node, "state": info.state}
    if info.reason and info.reason != "None":
        details["reason"] = info.reason
    if info.is_finished and info.exit_code is not None:
        details["exit_code"] = info.exit_code
    progress(
        info.state, f"job {job.job_id} ({job.node}) {info.state.lower()}{reason}", details=details
    )


def _phase(jobs: list[JobInfo]) -> str:
    failed = [job.state for job in jobs if job.is_finished and not job.succeeded]
    if failed:
        return failed[0]
    active = [job.state for job in jobs if not job.is_finished]
    if not active:
        return "COMPLETED"
    known = [state for state in _PHASE_ORDER if state in active]
    return known[0] if known else active[0]


def _fields(order: Provision, node: PlannedNode) -> dict[str, object]:
    return {"deployment_id": order.deployment_id, "attempt": order.attempt, "node": node.name}
