"""What a local job leaves on disk: its spec, its run record and its exit record.

Each instance of a batch-job node has a working directory
``<work_dir>/<deployment_id>/<attempt>/<node>-<index>/`` holding:

- ``spec.json``: what to run and under which limits (written by the driver, before spawning);
- ``run.json``: the runner's pid and start time (written by the runner, before the job starts);
- ``exit.json``: how the job ended (written by the runner when the job is over);
- ``stdout.txt`` and ``stderr.txt``: the job's output; ``runner.log``: the runner's own errors.

Next to the instance directories, ``attempt.json`` lists the plan's nodes and counts, and
``released.json`` marks an attempt that was released (no instance of it starts again).

These files are how a restarted agent finds a job again: a directory with a ``run.json`` has
started a job once and is never started again. Every file is written atomically (a temporary
file renamed over the target), so a reader never sees half a record.

This module uses the standard library only: the runner imports it and stays small.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self, cast

SPEC = "spec.json"
RUN = "run.json"
EXIT = "exit.json"
STDOUT = "stdout.txt"
STDERR = "stderr.txt"
RUNNER_LOG = "runner.log"
ATTEMPT = "attempt.json"
RELEASED = "released.json"

# Why a job ended, as the runner saw it.
EXITED = "exited"
WALL_TIME = "wall_time"
TERMINATED = "terminated"
SPAWN_FAILED = "spawn_failed"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` so that readers see the old file or the new one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_exclusive(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` complete and at once, unless ``path`` already exists.

    Raises:
        FileExistsError: ``path`` exists; it is left as it was.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())
        # A hard link never replaces its target: of two writers, exactly one wins.
        os.link(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when the file does not exist."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise TypeError(f"{path}: expected a JSON object")
    return data


class _Record:
    """Load and save a dataclass record as one JSON file."""

    __slots__ = ()

    @classmethod
    def load(cls, path: Path) -> Self | None:
        """The record in ``path``, or None when it was not written yet."""
        data = read_json(path)
        return None if data is None else cls(**data)

    def save(self, path: Path) -> None:
        """Write the record atomically."""
        write_json_atomic(path, asdict(cast(Any, self)))

    def claim(self, path: Path) -> None:
        """Write the record atomically, unless one is there already.

        Raises:
            FileExistsError: a record was written before; it is left as it was.
        """
        write_json_exclusive(path, asdict(cast(Any, self)))


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec(_Record):
    """One process to run: command, environment and limits."""

    node: str
    index: int
    count: int
    argv: list[str]
    environment: dict[str, str]
    cwd: str
    cpus: float
    memory_mb: int
    cpu_time_seconds: int | None
    address_space_bytes: int | None
    wall_time_seconds: float
    kill_grace_seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord(_Record):
    """A runner that was started: enough to recognise it later, even after a pid is reused."""

    pid: int
    create_time: float
    started_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitRecord(_Record):
    """How a job ended.

    ``exit_code`` is set when the process exited, ``signal`` when a signal killed it;
    ``reason`` says who ended it (``exited``, ``wall_time``, ``terminated``, ``spawn_failed``).
    """

    reason: str
    exit_code: int | None = None
    signal: int | None = None
    started_at: float
    ended_at: float
    cpu_seconds: float = 0.0
    max_rss_kb: int = 0
    error: str | None = None
