"""What an attempt holds on disk and in the process table, and how to report it."""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import JsonValue

from flotilla.agents.driver import ProgressSink, ProvisioningError
from flotilla.agents.local import process
from flotilla.agents.local.job import JobInstance, failure_of
from flotilla.agents.local.record import (
    ATTEMPT,
    EXIT,
    RUN,
    SPEC,
    ExitRecord,
    JobSpec,
    RunRecord,
    write_json_atomic,
)
from flotilla.schemas import ResourceRef


@dataclass(frozen=True, slots=True, kw_only=True)
class Look:
    """One look at an instance: its records and whether its runner is alive."""

    instance: JobInstance
    spec: JobSpec | None
    run: RunRecord | None
    end: ExitRecord | None
    running: bool

    @property
    def failure(self) -> ProvisioningError | None:
        """Why the instance failed, or None while it runs or when it succeeded."""
        if self.running or self.spec is None or self.run is None:
            return None
        if self.end is None:
            log = self.instance.runner_log_tail()
            said = f"; runner log:\n{log}" if log else ""
            return ProvisioningError(
                f"node {self.instance.label}: the job's runner ended without recording how "
                f"the job ended{said}",
                code="killed",
            )
        return failure_of(self.instance, self.spec, self.end)


def is_started(instance: JobInstance) -> bool:
    """Whether the instance's runner claimed its directory once (its job must not start again)."""
    return (instance.directory / RUN).exists() or (instance.directory / EXIT).exists()


def look_at(instance: JobInstance) -> Look:
    """Read the instance's records and check its runner (blocking; cheap)."""
    spec, end, run = instance.spec(), instance.exit_record(), instance.run_record()
    running = end is None and run is not None and process.is_running(run)
    if end is None and not running:
        end = instance.exit_record()  # it may have ended between the two reads
    return Look(instance=instance, spec=spec, run=run, end=end, running=running)


def phase_of(seen: list[Look], expected: int | None, *, released: bool) -> str:
    """The attempt's phase from its instances; ``expected`` is how many the plan has."""
    if any(s.running for s in seen):
        return "RUNNING"
    if released:
        return "RELEASED"
    if any(s.failure is not None for s in seen):
        return "FAILED"
    succeeded = sum(1 for s in seen if s.end is not None and s.failure is None)
    return "COMPLETED" if succeeded == expected else "PENDING"


def resource_of(look: Look, tag: str) -> ResourceRef:
    """The process reference of a started instance."""
    assert look.run is not None
    return ResourceRef(kind="process", id=str(look.run.pid), name=tag, node=look.instance.node)


def outputs_of(name: str, seen: list[Look]) -> dict[str, JsonValue]:
    """Outputs of one node: values for a single instance, lists by index for several."""
    codes: list[JsonValue] = [s.end.exit_code if s.end else None for s in seen]
    dirs: list[JsonValue] = [str(s.instance.directory) for s in seen]
    tails: list[JsonValue] = [s.instance.stdout_tail() for s in seen]
    single = len(seen) == 1
    return {
        f"{name}_exit_code": codes[0] if single else codes,
        f"{name}_work_dir": dirs[0] if single else dirs,
        f"{name}_stdout_tail": tails[0] if single else tails,
    }


def report_progress(
    name: str,
    seen: list[Look],
    running: list[Look],
    progress: ProgressSink,
    *,
    done: int,
    total: int,
) -> None:
    """Report how the node's instances run: count, elapsed time, last line of output."""
    first = running[0]
    assert first.run is not None
    elapsed = time.time() - first.run.started_at
    last = first.instance.stdout_tail(1)[:200]
    message = f"{name}: {len(running)} of {len(seen)} running for {elapsed:.0f} s"
    ended = len(seen) - len(running)
    progress(
        "RUNNING",
        f"{message}; last output: {last}" if last else message,
        percent=100 * (done + ended) / total if total else None,
        details={
            "node": name,
            "running": len(running),
            "ended": ended,
            "elapsed_seconds": round(elapsed, 1),
        },
    )


def describe(look: Look) -> dict[str, JsonValue]:
    """One instance in an attempt's status details."""
    state = (
        "running" if look.running else "ended" if look.end else "lost" if look.run else "pending"
    )
    return {
        "state": state,
        "exit_code": look.end.exit_code if look.end else None,
        "signal": look.end.signal if look.end else None,
        "work_dir": str(look.instance.directory),
    }


def record_attempt(attempt_dir: Path, counts: dict[str, int]) -> None:
    """Note how many instances of each node the attempt has (once, at its first provision)."""
    attempt_dir.mkdir(parents=True, exist_ok=True)
    if not (attempt_dir / ATTEMPT).exists():
        write_json_atomic(attempt_dir / ATTEMPT, {"nodes": dict(counts)})


def instances_on_disk(attempt_dir: Path) -> list[JobInstance]:
    """The instances of an attempt that have a spec on disk."""
    if not attempt_dir.is_dir():
        return []
    found = []
    for directory in sorted(attempt_dir.iterdir()):
        spec = load_spec(directory) if directory.is_dir() else None
        if spec is not None:
            found.append(
                JobInstance(node=spec.node, index=spec.index, count=spec.count, directory=directory)
            )
    return found


def load_spec(directory: Path) -> JobSpec | None:
    """The spec in an instance directory; None when missing or unreadable."""
    try:
        return JobSpec.load(directory / SPEC)
    except (OSError, ValueError, TypeError):
        return None


def delete_attempt(attempt_dir: Path) -> None:
    """Delete an attempt's directory, and its deployment's directory once empty."""
    shutil.rmtree(attempt_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        attempt_dir.parent.rmdir()  # the deployment's directory, once its last attempt is gone
