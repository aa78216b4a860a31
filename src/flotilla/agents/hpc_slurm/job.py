"""Slurm jobs as Flotilla sees them: parsed from squeue, sacct and scontrol, and how they end.

The parsers read Slurm 22.05's JSON (``openapi/v0.0.38``) and the shapes later releases
use where they differ (states as lists, numbers as ``{"set", "number"}`` objects), so a
site upgrade does not silently break tracking. Slurm 22.05 ignores ``--name`` and
``--jobs`` in ``squeue --json``: callers filter the parsed jobs themselves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from flotilla.agents.driver import ProvisioningError
from flotilla.schemas import ResourceRef

# States a job passes through before it ends (base states and the flags squeue shows).
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "RESV_DEL_HOLD",
        "POWER_UP_NODE",
        "UPDATE_DB",
    }
)
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "TIMEOUT",
        "CANCELLED",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)
# How a final state other than COMPLETED is reported: code, words, retryable at this site.
_FAILURES: Mapping[str, tuple[str, str, bool]] = {
    "FAILED": ("job_failed", "failed", False),
    "TIMEOUT": ("timeout", "reached its time limit and was stopped", False),
    "DEADLINE": ("timeout", "reached its deadline and was stopped", False),
    "CANCELLED": ("cancelled", "was cancelled", False),
    "OUT_OF_MEMORY": ("out_of_memory", "ran out of memory", False),
    "NODE_FAIL": ("node_fail", "was stopped because one of its nodes failed", True),
    "BOOT_FAIL": ("node_fail", "could not start because its nodes failed to boot", True),
    "PREEMPTED": ("preempted", "was preempted by another job", True),
}
_SCONTROL_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:]*)=")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobInfo:
    """One Slurm job at one moment."""

    job_id: str
    name: str
    state: str
    reason: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    user: str | None = None
    partition: str | None = None
    nodes: str | None = None
    output: str | None = None
    tres: str | None = None

    @property
    def is_finished(self) -> bool:
        """Whether the job has ended (successfully or not)."""
        return self.state in FINAL_STATES

    @property
    def is_active(self) -> bool:
        """Whether the job is still queued or running (a release must cancel it)."""
        return self.state in ACTIVE_STATES and self.state != "COMPLETING"

    @property
    def succeeded(self) -> bool:
        """Whether the job completed with exit code 0."""
        return self.state == "COMPLETED" and not self.exit_code and not self.signal

    def with_exit(self, exit_code: int | None, signal: int | None) -> JobInfo:
        """The same job with its exit code and signal corrected."""
        return replace(self, exit_code=exit_code, signal=signal)


def job_ref(job: JobInfo, node: str | None) -> ResourceRef:
    """The job as a resource of an attempt."""
    return ResourceRef(kind="slurm_job", id=job.job_id, name=job.name, node=node)


def failure_of(job: JobInfo, node: str, output_tail: str = "") -> ProvisioningError | None:
    """Why a finished job failed, as a provisioning error; None when it succeeded."""
    if job.succeeded:
        return None
    code, words, retryable = _FAILURES.get(job.state, ("job_failed", "ended", False))
    parts = [f"node {node}: Slurm job {job.job_id} {words} (state {job.state}"]
    if job.exit_code is not None:
        parts.append(f", exit code {job.exit_code}")
    if job.signal:
        parts.append(f", signal {job.signal}")
    parts.append(")")
    if job.reason and job.reason not in ("None", "NonZeroExitCode"):
        parts.append(f": {job.reason}")
    if job.output:
        parts.append(f"; output in {job.output}")
    if output_tail.strip():
        parts.append(f"; last lines:\n{output_tail.rstrip()}")
    return ProvisioningError(
        "".join(parts), code=code, retryable=retryable, resources=(job_ref(job, node),)
    )


def parse_squeue_json(text: str) -> list[JobInfo]:
    """Jobs in the output of ``squeue --json``.

    Raises:
        ValueError: the output is not squeue's JSON.
    """
    jobs = _json_list(text, "jobs", "squeue")
    found = []
    for job in jobs:
        job_id = str(_number(job.get("job_id")))
        exit_code, signal = _exit(job.get("exit_code"))
        output = _str(job.get("standard_output"))
        found.append(
            JobInfo(
                job_id=job_id,
                name=str(job.get("name") or ""),
                state=_state(job.get("job_state")),
                reason=_str(job.get("state_reason")),
                exit_code=exit_code,
                signal=signal,
                user=_str(job.get("user_name")),
                partition=_str(job.get("partition")),
                nodes=_str(job.get("nodes")),
                output=_expand_output(output, job_id, job),
                tres=_str(job.get("tres_alloc_str")),
            )
        )
    return found


def parse_sacct_json(text: str) -> list[JobInfo]:
    """Jobs (allocations, not steps) in the output of ``sacct --json``.

    Raises:
        ValueError: the output is not sacct's JSON.
    """
    found = []
    for job in _json_list(text, "jobs", "sacct"):
        state = job.get("state")
        exit_code, signal = _exit(job.get("exit_code"))
        found.append(
            JobInfo(
                job_id=str(_number(job.get("job_id"))),
                name=str(job.get("name") or ""),
                state=_state(state.get("current") if isinstance(state, dict) else state),
                reason=_str(state.get("reason")) if isinstance(state, dict) else None,
                exit_code=exit_code,
                signal=signal,
                user=_str(job.get("user")),
                partition=_str(job.get("partition")),
                nodes=_str(job.get("nodes")),
                tres=_sacct_tres(job.get("tres")),
            )
        )
    return found


def parse_scontrol_jobs(text: str) -> list[JobInfo]:
    """Jobs in the output of ``scontrol -o show job`` (one line per job)."""
    found = []
    for line in text.splitlines():
        fields = scontrol_fields(line)
        if "JobId" not in fields:
            continue
        code, _, signal = fields.get("ExitCode", "").partition(":")
        user = fields.get("UserId", "").partition("(")[0] or None
        found.append(
            JobInfo(
                job_id=fields["JobId"],
                name=fields.get("JobName", ""),
                state=_state(fields.get("JobState")),
                reason=fields.get("Reason"),
                exit_code=int(code) if code.isdigit() else None,
                signal=int(signal) or None if signal.isdigit() else None,
                user=user,
                partition=fields.get("Partition"),
                nodes=fields.get("NodeList"),
                output=fields.get("StdOut"),
                tres=fields.get("TRES") or fields.get("AllocTRES"),
            )
        )
    return found


def parse_sacct_exits(text: str) -> dict[str, tuple[int | None, int | None]]:
    """Exit code and signal per job id from ``sacct -n -P -o JobID,ExitCode``."""
    exits: dict[str, tuple[int | None, int | None]] = {}
    for line in text.splitlines():
        job_id, _, exit_text = line.strip().partition("|")
        code, _, signal = exit_text.partition(":")
        if job_id and code.isdigit():
            exits[job_id] = (int(code), int(signal) or None if signal.isdigit() else None)
    return exits


def scontrol_fields(line: str) -> dict[str, str]:
    """``Key=value`` pairs of one ``scontrol -o`` line; values may contain spaces."""
    starts = [(m.start(1), m.end(), m.group(1)) for m in _SCONTROL_FIELD.finditer(line)]
    fields: dict[str, str] = {}
    for index, (_, value_start, key) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else len(line)
        fields.setdefault(key, line[value_start:end].strip())
    return fields


def latest_by_name(jobs: Iterable[JobInfo]) -> dict[str, JobInfo]:
    """The newest job of each name (highest job id)."""
    latest: dict[str, JobInfo] = {}
    for job in jobs:
        seen = latest.get(job.name)
        if seen is None or _id_key(job.job_id) > _id_key(seen.job_id):
            latest[job.name] = job
    return latest


def _id_key(job_id: str) -> tuple[int, str]:
    head = job_id.split("_")[0].split(".")[0]
    return (int(head) if head.isdigit() else -1, job_id)


def _json_list(text: str, key: str, command: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{command} did not print JSON: {text[:200]!r}") from exc
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"{command} printed JSON without a {key!r} list")  # noqa: TRY004
    return [item for item in items if isinstance(item, dict)]


def _number(value: Any) -> int | None:
    """A number from 22.05 (plain) or later releases (``{"set": .., "number": ..}``)."""
    if isinstance(value, dict):
        return int(value["number"]) if value.get("set", True) and "number" in value else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _state(value: Any) -> str:
    if isinstance(value, list):
        names = [str(item).upper() for item in value]
        base = [name for name in names if name in FINAL_STATES or name in ACTIVE_STATES]
        return base[0] if base else (names[0] if names else "UNKNOWN")
    text = str(value or "UNKNOWN").split()[0].upper()
    return text.split("+")[0]


def _exit(value: Any) -> tuple[int | None, int | None]:
    """Exit code and signal: a raw wait status (22.05 squeue) or an exit-code object."""
    if isinstance(value, dict):
        code = _number(value.get("return_code"))
        signal = value.get("signal")
        number = None
        if isinstance(signal, dict):
            number = _number(signal.get("signal_id", signal.get("id")))
        return code, number or None
    raw = _number(value)
    if raw is None:
        return None, None
    return (raw >> 8) & 0xFF, (raw & 0x7F) or None


def _expand_output(path: str | None, job_id: str, job: Mapping[str, Any]) -> str | None:
    if path is None:
        return None
    user = _str(job.get("user_name")) or ""
    return (
        path.replace("%%", "\0")
        .replace("%j", job_id)
        .replace("%u", user)
        .replace("%x", str(job.get("name") or ""))
        .replace("\0", "%")
    )


def _sacct_tres(value: Any) -> str | None:
    allocated = value.get("allocated") if isinstance(value, dict) else None
    if not isinstance(allocated, list):
        return None
    parts = []
    for item in allocated:
        count = _number(item.get("count")) if isinstance(item, dict) else None
        if count is None:
            continue
        name = f"{item.get('type')}/{item['name']}" if item.get("name") else str(item.get("type"))
        parts.append(f"{name}={count}")
    return ",".join(parts) or None
