"""The local site driver: batch jobs as processes on the host that runs the agent.

Each instance of a batch-job node runs under its own runner (``flotilla.agents.local.runner``)
in a new session, with CPU-time and address-space limits and a wall time. The runner records
itself in ``run.json`` before the job starts and the outcome in ``exit.json`` when it ends,
so a provision repeated after a redelivery or an agent restart finds the job again (alive,
or ended) and waits for it or reads its outcome: a job is never started twice.

Jobs get a minimal environment: PATH, HOME and LANG, the site's ``environment``, Flotilla's
``FLOTILLA_SITE``, ``FLOTILLA_DEPLOYMENT_ID``, ``FLOTILLA_ATTEMPT``, ``FLOTILLA_NODE``,
``FLOTILLA_NODE_INDEX``, ``FLOTILLA_NODE_COUNT`` and ``FLOTILLA_WORK_DIR``, then the node's
own ``environment``. The agent's environment (which may hold broker credentials) is never
passed on, and a command is executed as given, never through a shell.

Limits apply to each process of a job (rlimits are per process, inherited by children):
``RLIMIT_CPU`` is the wall time times the node's CPUs (at least one), or the site's
``cpu_time_cap_seconds`` when lower, with SIGXCPU first and SIGKILL after the grace;
``RLIMIT_AS`` is ``memory_mb`` times ``memory_headroom`` when the node gives a memory size.
The runner enforces the wall time, killing the job's process group (SIGTERM, then SIGKILL
after ``kill_grace_seconds``). Outcomes map to failure codes ``job_failed``,
``wall_time_exceeded``, ``cpu_time_exceeded``, ``memory_exceeded`` and ``killed``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil
import structlog
from pydantic import JsonValue, ValidationError

import flotilla
from flotilla.agents.batch import in_dependency_order, safe_name
from flotilla.agents.config import AgentConfig, format_validation_error
from flotilla.agents.driver import (
    AttemptState,
    ProgressSink,
    ProvisioningError,
    ProvisionResult,
    SiteSnapshot,
    attempt_tag,
)
from flotilla.agents.local import process
from flotilla.agents.local.attempt import (
    Look,
    delete_attempt,
    describe,
    instances_on_disk,
    is_started,
    load_spec,
    look_at,
    outputs_of,
    phase_of,
    record_attempt,
    report_progress,
    resource_of,
)
from flotilla.agents.local.config import LocalConfig
from flotilla.agents.local.job import MIB, BatchJob, JobInstance, build_spec
from flotilla.agents.local.record import (
    ATTEMPT,
    RELEASED,
    RUN,
    RUNNER_LOG,
    JobSpec,
    RunRecord,
    read_json,
    write_json_atomic,
)
from flotilla.errors import ConfigurationError
from flotilla.schemas import (
    AttemptRef,
    Capabilities,
    PlannedNode,
    Provision,
    QuotaUsage,
    Release,
    ResourceRef,
    Shape,
    SiteKind,
    WorkloadKind,
)

_log = structlog.get_logger("flotilla.agents.local")

_GIB = 1024 * MIB
# How long a runner may take to record itself before it is taken for broken.
_CLAIM_TIMEOUT = 30.0
_CLAIM_POLL = 0.05
# The runner enforces the wall time; the driver steps in only when the runner did not.
_WALL_TIME_MARGIN = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class _Step:
    """One node of the plan and its instances."""

    node: PlannedNode
    job: BatchJob
    instances: tuple[JobInstance, ...]


def _host_environment() -> dict[str, str]:
    # Only these three variables of the agent's own environment reach a job.
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", str(Path.home())),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }


def _runner_environment(base: dict[str, str]) -> dict[str, str]:
    # The runner imports flotilla and psutil; name where they live, whatever the install.
    roots = dict.fromkeys(
        str(Path(module.__file__ or "").resolve().parent.parent) for module in (flotilla, psutil)
    )
    return base | {"PYTHONPATH": os.pathsep.join(roots)}


class LocalDriver:
    """Runs batch jobs as local processes; see the module's description."""

    kind = SiteKind.LOCAL

    def __init__(
        self, settings: LocalConfig, *, work_dir: Path, environment: dict[str, str]
    ) -> None:
        """A driver keeping its jobs' directories in ``work_dir``.

        Args:
            settings: the ``local:`` section of the site file.
            work_dir: where attempts get their working directories.
            environment: PATH, HOME and LANG for every job.
        """
        self._settings = settings
        self._work_dir = work_dir.resolve()
        self._environment = environment | settings.environment
        self._runner_environment = _runner_environment(environment)
        self._cpus = settings.cpus or float(psutil.cpu_count() or 1)
        self._memory_mb = settings.memory_mb or psutil.virtual_memory().total // MIB
        self._max_jobs = settings.max_jobs or max(1, int(self._cpus))
        self._children: dict[Path, subprocess.Popen[bytes]] = {}
        self._start_lock = asyncio.Lock()

    @property
    def work_dir(self) -> Path:
        """Where attempts get their working directories."""
        return self._work_dir

    async def __aenter__(self) -> Self:
        # Private to the agent's user: specs hold the jobs' environments.
        await asyncio.to_thread(self._work_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Running jobs outlive the agent on purpose: a restarted agent finds them again.
        self._reap()

    async def snapshot(self) -> SiteSnapshot:
        """The host's CPUs and memory (or the configured caps) and the jobs running now."""
        return await asyncio.to_thread(self._read_snapshot)

    async def provision(self, order: Provision, progress: ProgressSink) -> ProvisionResult:
        """Run every batch-job node of the plan in dependency order; return when all ended.

        Raises:
            ProvisioningError: a node is not a batch job, does not fit, or its job failed.
        """
        attempt_dir = self._attempt_dir(order.deployment_id, order.attempt)
        steps = [self._step(node, attempt_dir) for node in in_dependency_order(order.plan.nodes)]
        counts = {step.node.name: len(step.instances) for step in steps}
        await asyncio.to_thread(record_attempt, attempt_dir, counts)
        total, done = sum(counts.values()), 0
        outputs: dict[str, JsonValue] = {}
        resources: list[ResourceRef] = []
        tag = attempt_tag(order.deployment_id, order.attempt)
        try:
            for step in steps:
                await self._start(order, step, progress)
                seen = await self._wait(step, progress, tag=tag, done=done, total=total)
                done += len(seen)
                outputs |= outputs_of(step.node.name, seen)
                resources += [resource_of(s, tag) for s in seen if s.run is not None]
        except ProvisioningError as exc:
            progress("FAILED", exc.message[:1024])
            raise
        progress("COMPLETED", f"{total} job(s) ended successfully", percent=100)
        return ProvisionResult(outputs=outputs | order.plan.outputs, resources=tuple(resources))

    async def status(self, attempt: AttemptRef) -> AttemptState | None:
        """The attempt's jobs as their records and processes show them; None without any."""
        return await asyncio.to_thread(self._read_status, attempt)

    async def release(self, order: Release) -> None:
        """Stop the attempt's jobs (SIGTERM, SIGKILL after the grace); delete or keep its files.

        Raises:
            ProvisioningError: a process of the attempt survived SIGKILL (``release_failed``).
        """
        attempt_dir = self._attempt_dir(order.deployment_id, order.attempt)
        if not attempt_dir.is_dir():
            return
        async with self._start_lock:
            # No instance of this attempt starts from now on.
            await asyncio.to_thread(write_json_atomic, attempt_dir / RELEASED, {"at": time.time()})
        survivors = await asyncio.to_thread(self._stop_attempt, attempt_dir)
        self._reap()
        if survivors:
            pids = ", ".join(str(p.pid) for p in survivors)
            raise ProvisioningError(f"processes {pids} did not stop", code="release_failed")
        if not self._settings.keep_work_dirs:
            await asyncio.to_thread(delete_attempt, attempt_dir)
        _log.info("attempt_released", deployment_id=order.deployment_id, attempt=order.attempt)

    def _attempt_dir(self, deployment_id: str, attempt: int) -> Path:
        return self._work_dir / deployment_id / str(attempt)

    def _step(self, node: PlannedNode, attempt_dir: Path) -> _Step:
        self._check_fits(node)
        instances = tuple(
            JobInstance(
                node=node.name,
                index=index,
                count=node.count,
                directory=attempt_dir / f"{safe_name(node.name)}-{index}",
            )
            for index in range(node.count)
        )
        return _Step(node=node, job=BatchJob.of(node), instances=instances)

    def _check_fits(self, node: PlannedNode) -> None:
        name = f"node {node.name}"
        if node.kind != WorkloadKind.BATCH_JOB:
            raise ProvisioningError(
                f"{name}: the local site runs batch jobs only, not {node.kind.value}",
                code="unsupported_workload",
                resource=node.name,
            )
        if node.image is not None:
            raise ProvisioningError(
                f"{name}: asks for image {node.image}; the local site runs plain processes",
                code="unsupported_workload",
                resource=node.name,
            )
        problem = self._shortfall(node)
        if problem is not None:
            raise ProvisioningError(
                f"{name}: {problem}", code="insufficient_resources", resource=node.name
            )

    def _shortfall(self, node: PlannedNode) -> str | None:
        wanted = node.resources
        if wanted.gpu is not None:
            return "asks for GPUs; the local site has none"
        if wanted.cpus > self._cpus:
            return f"asks for {wanted.cpus:g} CPUs per instance; the site has {self._cpus:g}"
        if wanted.memory_mb > self._memory_mb:
            return f"asks for {wanted.memory_mb} MB per instance; the site has {self._memory_mb} MB"
        return None

    async def _start(self, order: Provision, step: _Step, progress: ProgressSink) -> None:
        pending = [i for i in step.instances if not is_started(i)]
        if not pending:
            return
        attempt_dir = pending[0].directory.parent
        progress("PENDING", f"{step.node.name}: starting {len(pending)} job(s)")
        adopted = await asyncio.to_thread(process.find_runners, attempt_dir)
        for instance in pending:
            if instance.directory not in adopted:
                spec = build_spec(
                    step.node,
                    step.job,
                    instance,
                    settings=self._settings,
                    environment=self._environment | _flotilla_variables(order, instance),
                )
                await self._start_when_free(instance, spec, step.job.script, progress)
        for instance in pending:
            await self._wait_claimed(instance)

    async def _start_when_free(
        self, instance: JobInstance, spec: JobSpec, script: str | None, progress: ProgressSink
    ) -> None:
        while True:
            async with self._start_lock:
                if (instance.directory.parent / RELEASED).exists():
                    raise ProvisioningError("the attempt was released", code="released")
                if is_started(instance) or instance.directory in self._children:
                    return
                running = len(await asyncio.to_thread(process.find_runners, self._work_dir))
                if running < self._max_jobs:
                    await asyncio.to_thread(instance.prepare, spec, script)
                    self._spawn(instance)
                    return
            message = f"{instance.label}: waiting for a free job slot ({running} in use)"
            progress("PENDING", message)
            await asyncio.sleep(self._settings.poll_interval_seconds)

    def _spawn(self, instance: JobInstance) -> None:
        # Spawned on the loop, not in a thread: a cancellation cannot come between starting
        # a runner and remembering it.
        # -P: the runner's directory belongs to the job; nothing there may shadow a module.
        argv = [sys.executable, "-P", "-m", process.RUNNER_MODULE, str(instance.directory)]
        with (instance.directory / RUNNER_LOG).open("ab") as log:
            child = subprocess.Popen(
                argv,
                cwd=instance.directory,
                env=self._runner_environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=True,
                start_new_session=True,
            )
        self._children[instance.directory] = child
        _log.info("job_started", directory=str(instance.directory), runner_pid=child.pid)

    async def _wait_claimed(self, instance: JobInstance) -> None:
        deadline = time.monotonic() + _CLAIM_TIMEOUT
        while not (instance.directory / RUN).exists():
            child = self._children.get(instance.directory)
            ended = child is not None and child.poll() is not None
            if (ended and not (instance.directory / RUN).exists()) or time.monotonic() > deadline:
                log = instance.runner_log_tail()
                raise ProvisioningError(
                    f"node {instance.label}: the job's runner did not start"
                    f"{f': {log}' if log else ''}",
                    code="runner_failed",
                )
            await asyncio.sleep(_CLAIM_POLL)

    async def _wait(
        self, step: _Step, progress: ProgressSink, *, tag: str, done: int, total: int
    ) -> list[Look]:
        while True:
            self._reap()
            seen = await asyncio.to_thread(lambda: [look_at(i) for i in step.instances])
            for look in seen:
                if (failure := look.failure) is not None:
                    # What is left behind: the other instances still running.
                    failure.resources = tuple(resource_of(s, tag) for s in seen if s.running)
                    raise failure
            running = [look for look in seen if look.running]
            if not running:
                return seen
            await self._enforce_wall_time(running)
            report_progress(step.node.name, seen, running, progress, done=done, total=total)
            await asyncio.sleep(self._settings.poll_interval_seconds)

    async def _enforce_wall_time(self, running: list[Look]) -> None:
        for look in running:
            assert look.run is not None
            assert look.spec is not None
            spec = look.spec
            limit = spec.wall_time_seconds + spec.kill_grace_seconds + _WALL_TIME_MARGIN
            if time.time() - look.run.started_at > limit:
                survivors = await asyncio.to_thread(self._stop, [look.run])
                raise ProvisioningError(
                    f"node {look.instance.label}: killed after its wall time of "
                    f"{spec.wall_time_seconds:g} s",
                    code="wall_time_exceeded",
                    resources=tuple(
                        ResourceRef(kind="process", id=str(p.pid), node=spec.node)
                        for p in survivors
                    ),
                )

    def _reap(self) -> None:
        # Only on the loop's thread: collects the exit status of runners this agent started.
        for directory, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[directory]

    def _read_snapshot(self) -> SiteSnapshot:
        runners = process.find_runners(self._work_dir)
        specs = [spec for d in runners if (spec := load_spec(d)) is not None]
        disk = psutil.disk_usage(str(_existing(self._work_dir))).free // _GIB
        shape = Shape(name="local", cpus=self._cpus, memory_mb=self._memory_mb, disk_gb=disk)
        return SiteSnapshot(
            capabilities=Capabilities(workload_kinds=[WorkloadKind.BATCH_JOB], shapes=[shape]),
            quotas=(
                QuotaUsage(resource="cpus", limit=self._cpus, used=sum(s.cpus for s in specs)),
                QuotaUsage(
                    resource="memory_mb",
                    limit=self._memory_mb,
                    used=sum(s.memory_mb for s in specs),
                ),
                QuotaUsage(resource="jobs", limit=self._max_jobs, used=len(runners)),
            ),
        )

    def _read_status(self, ref: AttemptRef) -> AttemptState | None:
        attempt_dir = self._attempt_dir(ref.deployment_id, ref.attempt)
        planned = read_json(attempt_dir / ATTEMPT) if attempt_dir.is_dir() else None
        instances = instances_on_disk(attempt_dir)
        if planned is None and not instances:
            return None
        seen = [look_at(instance) for instance in instances]
        expected = None if planned is None else sum(planned.get("nodes", {}).values())
        phase = phase_of(seen, expected, released=(attempt_dir / RELEASED).exists())
        tag = attempt_tag(ref.deployment_id, ref.attempt)
        return AttemptState(
            phase=phase,
            resources=tuple(resource_of(s, tag) for s in seen if s.running),
            finished=phase in ("RELEASED", "FAILED", "COMPLETED"),
            details={s.instance.label: describe(s) for s in seen},
        )

    def _stop_attempt(self, attempt_dir: Path) -> list[psutil.Process]:
        # A job that ended (exit.json written) and whose runner is gone has nothing to stop;
        # its old runner id may belong to someone else by now.
        records = [
            r
            for i in instances_on_disk(attempt_dir)
            if (r := i.run_record()) and (i.exit_record() is None or process.is_running(r))
        ]
        for directory, runner in process.find_runners(attempt_dir).items():
            if not (directory / RUN).exists():  # started, not yet recorded
                records.append(
                    RunRecord(pid=runner.pid, create_time=runner.create_time(), started_at=0)
                )
        return self._stop(records)

    def _stop(self, records: list[RunRecord]) -> list[psutil.Process]:
        members = process.session_processes(records)
        if members:
            _log.info("jobs_stopping", pids=[p.pid for p in members])
        # A runner stops its job itself within the grace and records it; give it a moment more.
        return process.stop(members, grace=self._settings.kill_grace_seconds + 1)


def _flotilla_variables(order: Provision, instance: JobInstance) -> dict[str, str]:
    return {
        "FLOTILLA_SITE": order.site,
        "FLOTILLA_DEPLOYMENT_ID": order.deployment_id,
        "FLOTILLA_ATTEMPT": str(order.attempt),
        "FLOTILLA_NODE": instance.node,
        "FLOTILLA_NODE_INDEX": str(instance.index),
        "FLOTILLA_NODE_COUNT": str(instance.count),
        "FLOTILLA_WORK_DIR": str(instance.directory),
    }


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def create_driver(config: AgentConfig) -> LocalDriver:
    """The local driver for a site file whose ``kind`` is ``local``.

    Raises:
        ConfigurationError: the ``local:`` section has a wrong or unknown field (named).
    """
    try:
        settings = LocalConfig.model_validate(config.driver)
    except ValidationError as exc:
        raise ConfigurationError(format_validation_error(exc, "local")) from exc
    work_dir = settings.work_dir or config.state_dir / "work"
    return LocalDriver(settings, work_dir=work_dir, environment=_host_environment())
