"""The process that runs one local job, applies its limits and outlives the agent.

Usage: ``python -m flotilla.agents.local.runner <instance-directory>``

The driver starts one runner per job instance in a new session, so the runner survives the
agent's death and a terminal's Ctrl-C. The runner:

1. claims ``run.json`` (its pid and start time) exclusively: a directory whose ``run.json``
   exists has started its job once, and no second runner goes on;
2. starts the job in its own process group, with ``RLIMIT_CPU`` and ``RLIMIT_AS`` applied
   and core dumps off, output going to ``stdout.txt`` and ``stderr.txt``;
3. kills the job's process group (SIGTERM, then SIGKILL after the grace) when the wall time
   is exceeded or when the runner itself receives SIGTERM, SIGINT or SIGHUP;
4. writes ``exit.json`` atomically: exit code or signal, why it ended, times and usage.

It imports the standard library, psutil and ``record`` only, so that a runner is cheap to
start and small while its job runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import psutil

from flotilla.agents.local.record import (
    EXIT,
    EXITED,
    RUN,
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

_POLL_SECONDS = 0.1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _clamped(value: int, hard: int) -> int:
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def _set_limit(which: int, soft: int, hard: int) -> None:
    _, current_hard = resource.getrlimit(which)
    resource.setrlimit(which, (_clamped(soft, current_hard), _clamped(hard, current_hard)))


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class _Runner:
    """Runs one job from its spec and records how it ended."""

    def __init__(self, directory: Path, spec: JobSpec) -> None:
        self._directory = directory
        self._spec = spec
        self._stop_requested = False

    def run(self) -> int:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self._on_stop)
        started = time.time()
        me = psutil.Process()
        record = RunRecord(pid=me.pid, create_time=me.create_time(), started_at=started)
        try:
            record.claim(self._directory / RUN)
        except FileExistsError:
            print(f"{self._directory}: started before; not starting again", file=sys.stderr)
            return 3
        try:
            child = self._spawn()
        except (OSError, subprocess.SubprocessError) as exc:
            self._save(
                ExitRecord(
                    reason=SPAWN_FAILED,
                    error=_describe(exc),
                    started_at=started,
                    ended_at=time.time(),
                )
            )
            return 0
        status, usage, reason = self._wait(child)
        code = os.waitstatus_to_exitcode(status)
        child.returncode = code
        self._save(
            ExitRecord(
                reason=reason,
                exit_code=code if code >= 0 else None,
                signal=-code if code < 0 else None,
                started_at=started,
                ended_at=time.time(),
                cpu_seconds=usage.ru_utime + usage.ru_stime,
                max_rss_kb=usage.ru_maxrss,
            )
        )
        return 0

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop_requested = True

    def _spawn(self) -> subprocess.Popen[bytes]:
        spec = self._spec
        with (
            (self._directory / STDOUT).open("ab") as out,
            (self._directory / STDERR).open("ab") as err,
        ):
            return subprocess.Popen(  # the job's own argv, never a shell
                spec.argv,
                cwd=spec.cwd,
                env=spec.environment,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                close_fds=True,
                process_group=0,
                preexec_fn=self._apply_limits,
            )

    def _apply_limits(self) -> None:
        # Runs in the child between fork and exec; the runner has a single thread.
        spec = self._spec
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if spec.cpu_time_seconds is not None:
            grace = spec.cpu_time_seconds + math.ceil(spec.kill_grace_seconds) + 1
            _set_limit(resource.RLIMIT_CPU, spec.cpu_time_seconds, grace)
        if spec.address_space_bytes is not None:
            size = spec.address_space_bytes
            _set_limit(resource.RLIMIT_AS, size, size)

    def _wait(self, child: subprocess.Popen[bytes]) -> tuple[int, resource.struct_rusage, str]:
        deadline = time.monotonic() + self._spec.wall_time_seconds
        reason = EXITED
        kill_at: float | None = None
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            now = time.monotonic()
            if reason == EXITED and (self._stop_requested or now >= deadline):
                reason = TERMINATED if self._stop_requested else WALL_TIME
                _signal_group(child.pid, signal.SIGTERM)
                kill_at = now + self._spec.kill_grace_seconds
            elif kill_at is not None and now >= kill_at:
                _signal_group(child.pid, signal.SIGKILL)
                kill_at = None
            time.sleep(_POLL_SECONDS)
        # Whatever the job left running in its process group ends with it.
        _signal_group(child.pid, signal.SIGKILL)
        return status, usage, reason

    def _save(self, record: ExitRecord) -> None:
        record.save(self._directory / EXIT)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the job described in the directory given as the only argument."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m flotilla.agents.local.runner <instance-directory>", file=sys.stderr)
        return 2
    directory = Path(args[0])
    spec = JobSpec.load(directory / SPEC)
    if spec is None:
        print(f"{directory}: no {SPEC}", file=sys.stderr)
        return 2
    return _Runner(directory, spec).run()


if __name__ == "__main__":
    sys.exit(main())
