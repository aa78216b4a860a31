"""One instance of a batch-job node on the local site: its spec, its files and how it ended."""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from pathlib import Path

from flotilla.agents import batch
from flotilla.agents.driver import ProvisioningError
from flotilla.agents.local.config import LocalConfig
from flotilla.agents.local.record import (
    EXIT,
    RUN,
    RUNNER_LOG,
    SPAWN_FAILED,
    SPEC,
    STDERR,
    STDOUT,
    TERMINATED,
    WALL_TIME,
    ExitRecord,
    JobSpec,
    RunRecord,
)
from flotilla.schemas import PlannedNode

MIB = 1024 * 1024
TAIL_LINES = 20
_TAIL_BYTES = 16 * 1024
_SCRIPT = "job-script"
# What allocators and runtimes print when an allocation is refused (RLIMIT_AS).
_OUT_OF_MEMORY = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")


class BatchJob(batch.BatchJob):
    """The properties of a batch-job node the local site uses; others (partition...) are ignored."""

    def check(self, node: PlannedNode) -> None:
        """The local site runs a script itself: it must say which interpreter runs it."""
        if self.script is not None and not self.script.startswith("#!"):
            raise ProvisioningError(
                f"node {node.name}: the script must start with an interpreter line "
                "such as #!/bin/sh",
                code="invalid_job",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobInstance:
    """Instance ``index`` of node ``node``, living in ``directory``."""

    node: str
    index: int
    count: int
    directory: Path

    @property
    def label(self) -> str:
        """How messages name the instance: ``node``, or ``node[index]`` when there are several."""
        return self.node if self.count == 1 else f"{self.node}[{self.index}]"

    def spec(self) -> JobSpec | None:
        """The spec written before the job was started, if any."""
        return JobSpec.load(self.directory / SPEC)

    def run_record(self) -> RunRecord | None:
        """The runner's record, once the runner has claimed the directory."""
        return RunRecord.load(self.directory / RUN)

    def exit_record(self) -> ExitRecord | None:
        """How the job ended, once it has."""
        return ExitRecord.load(self.directory / EXIT)

    def stdout_tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` lines the job printed on stdout."""
        return _tail(self.directory / STDOUT, lines)

    def stderr_tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` lines the job printed on stderr."""
        return _tail(self.directory / STDERR, lines)

    def runner_log_tail(self, lines: int = 5) -> str:
        """The last lines the runner itself printed (its own errors)."""
        return _tail(self.directory / RUNNER_LOG, lines)

    def prepare(self, spec: JobSpec, script: str | None) -> None:
        """Create the directories and files the runner needs (before it starts)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cwd = Path(spec.cwd)
        if cwd.is_relative_to(self.directory):
            cwd.mkdir(parents=True, exist_ok=True)
        if script is not None:
            path = self.directory / _SCRIPT
            path.write_text(script, encoding="utf-8")
            path.chmod(0o700)
        spec.save(self.directory / SPEC)


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as stream:
            size = stream.seek(0, 2)
            stream.seek(max(0, size - _TAIL_BYTES))
            data = stream.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def build_spec(
    node: PlannedNode,
    job: BatchJob,
    instance: JobInstance,
    *,
    settings: LocalConfig,
    environment: dict[str, str],
) -> JobSpec:
    """What the runner of ``instance`` runs, with which environment and limits."""
    wall_time = job.wall_time_seconds or settings.default_wall_time_seconds
    cpu_time = math.ceil(wall_time * max(node.resources.cpus, 1.0))
    if settings.cpu_time_cap_seconds is not None:
        cpu_time = min(cpu_time, settings.cpu_time_cap_seconds)
    memory = node.resources.memory_mb
    address_space = int(memory * MIB * settings.memory_headroom) if memory > 0 else None
    if job.script is not None:
        argv = [str(instance.directory / _SCRIPT), *job.arguments]
    else:
        argv = [*job.command, *job.arguments]
    workdir = job.working_directory or job.directory
    return JobSpec(
        node=instance.node,
        index=instance.index,
        count=instance.count,
        argv=argv,
        environment=environment | job.environment,
        cwd=str(instance.directory / workdir if workdir else instance.directory),
        cpus=node.resources.cpus,
        memory_mb=memory,
        cpu_time_seconds=cpu_time,
        address_space_bytes=address_space,
        wall_time_seconds=wall_time,
        kill_grace_seconds=settings.kill_grace_seconds,
    )


def failure_of(instance: JobInstance, spec: JobSpec, end: ExitRecord) -> ProvisioningError | None:
    """Why an ended job failed, as a provisioning error; None when it succeeded."""
    name = f"node {instance.label}"
    if end.reason == SPAWN_FAILED:
        return ProvisioningError(f"{name}: cannot start the job: {end.error}", code="job_failed")
    if end.reason == WALL_TIME:
        return ProvisioningError(
            f"{name}: killed after its wall time of {spec.wall_time_seconds:g} s",
            code="wall_time_exceeded",
        )
    if end.reason == TERMINATED:
        return ProvisioningError(f"{name}: stopped before it finished", code="killed")
    if end.exit_code == 0:
        return None
    stderr = instance.stderr_tail(10)
    said = f"; stderr:\n{stderr}" if stderr else ""
    if _out_of_cpu(spec, end):
        return ProvisioningError(
            f"{name}: used up its CPU time of {spec.cpu_time_seconds} s{said}",
            code="cpu_time_exceeded",
        )
    if _out_of_memory(spec, end, stderr):
        return ProvisioningError(
            f"{name}: ran out of memory (limit {spec.memory_mb} MB){said}",
            code="memory_exceeded",
        )
    if end.signal is not None:
        return ProvisioningError(
            f"{name}: killed by {_signal_name(end.signal)}{said}", code="killed"
        )
    return ProvisioningError(f"{name}: exited with code {end.exit_code}{said}", code="job_failed")


def _out_of_cpu(spec: JobSpec, end: ExitRecord) -> bool:
    if end.signal == signal.SIGXCPU:
        return True
    limit = spec.cpu_time_seconds
    return end.signal == signal.SIGKILL and limit is not None and end.cpu_seconds >= limit - 1


def _out_of_memory(spec: JobSpec, end: ExitRecord, stderr: str) -> bool:
    if spec.address_space_bytes is None:
        return False
    if any(marker in stderr for marker in _OUT_OF_MEMORY):
        return True
    # Killed while resident near its limit: the kernel's (or a cgroup's) OOM killer.
    near_limit = end.max_rss_kb * 1024 >= 0.9 * spec.memory_mb * MIB
    return end.signal == signal.SIGKILL and near_limit


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
