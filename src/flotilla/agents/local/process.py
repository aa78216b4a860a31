"""Finding and stopping the processes of local jobs on the host (blocking; run off the loop).

A runner is recognised by its pid *and* its start time, so that a pid the kernel gave to
another process after the runner ended is never taken for the runner. The processes of one
job are the members of the runner's session: the runner starts in a new session and the job
and its children stay in it (unless they start sessions of their own).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from pathlib import Path

import psutil

from flotilla.agents.local.record import RunRecord

RUNNER_MODULE = "flotilla.agents.local.runner"

# psutil derives start times from the boot time, which the kernel may report a second apart.
_START_TIME_TOLERANCE = 1.0


def runner_process(record: RunRecord) -> psutil.Process | None:
    """The runner that ``record`` describes, if it is still running (zombies count as ended)."""
    try:
        process = psutil.Process(record.pid)
        if abs(process.create_time() - record.create_time) > _START_TIME_TOLERANCE:
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return process


def is_running(record: RunRecord) -> bool:
    """Whether the runner that ``record`` describes is still running."""
    return runner_process(record) is not None


def session_processes(records: Iterable[RunRecord]) -> list[psutil.Process]:
    """Live processes of the runners' sessions: runners, jobs and the jobs' children.

    Only processes started after their runner count, and a session whose id now belongs to
    another live leader is skipped, so that a session id the kernel reused after every
    process of a job ended is never taken for the job's.
    """
    started: dict[int, float] = {}
    for record in records:
        try:
            leader = psutil.Process(record.pid)
            if abs(leader.create_time() - record.create_time) > _START_TIME_TOLERANCE:
                continue  # the id leads another process's session now: not the job's
        except psutil.NoSuchProcess:
            pass  # the runner is gone; the kernel keeps its id while its session lives
        except psutil.Error:
            continue
        started[record.pid] = record.create_time
    found = []
    for member in psutil.process_iter(["create_time", "status"]):
        try:
            runner_started = started.get(os.getsid(member.pid))
        except OSError:
            continue
        if runner_started is None or member.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if member.info["create_time"] + _START_TIME_TOLERANCE >= runner_started:
            found.append(member)
    return found


def find_runners(under: Path) -> dict[Path, psutil.Process]:
    """Live runners whose instance directory is inside ``under``, by directory.

    This finds a runner that was started but has not written its ``run.json`` yet (the agent
    died right after starting it), and counts the jobs running on the host.
    """
    root = under.resolve()
    found: dict[Path, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] == psutil.STATUS_ZOMBIE or RUNNER_MODULE not in cmdline:
            continue
        directory = Path(cmdline[-1])
        if directory.is_absolute() and directory.is_relative_to(root):
            found[directory] = process
    return found


def stop(processes: Iterable[psutil.Process], *, grace: float) -> list[psutil.Process]:
    """SIGTERM ``processes``, SIGKILL those left after ``grace``; return those still alive."""
    alive = _signal(list(processes), signal.SIGTERM)
    _, alive = psutil.wait_procs(alive, timeout=grace)
    alive = _signal(alive, signal.SIGKILL)
    _, alive = psutil.wait_procs(alive, timeout=5)
    return alive


def _signal(processes: list[psutil.Process], signum: int) -> list[psutil.Process]:
    signalled = []
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            pass
        signalled.append(process)
    return signalled
