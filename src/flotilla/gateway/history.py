"""A deployment's journal as text: one line per event, for people and ``/log`` endpoints."""

from __future__ import annotations

from collections.abc import Iterable

from flotilla.gateway.snapshot import Snapshot
from flotilla.scheduler.model import AttemptRecord, JournalEntry
from flotilla.schemas import (
    DeploymentProvisioned,
    DeploymentReleased,
    DeploymentStatusChanged,
    Envelope,
    ProgressReported,
    ProvisioningFailed,
    ReleaseFailed,
)


def describe(message: Envelope) -> str:
    """One event in words: what happened, where, and why."""
    if isinstance(message, DeploymentStatusChanged):
        data = message.data
        where = _where(data.site, data.attempt)
        reason = f": {data.reason}" if data.reason else ""
        return f"{data.status.value}{where}{reason}"
    if isinstance(message, ProgressReported):
        progress = message.data
        percent = f" {progress.percent:g}%" if progress.percent is not None else ""
        text = f": {progress.message}" if progress.message else ""
        return f"progress{_where(progress.site, progress.attempt)} {progress.phase}{percent}{text}"
    if isinstance(message, DeploymentProvisioned):
        done = message.data
        outputs = f"; outputs: {', '.join(sorted(done.outputs))}" if done.outputs else ""
        return f"provisioned{_where(done.site, done.attempt)}{outputs}"
    if isinstance(message, ProvisioningFailed | ReleaseFailed):
        failure = message.data
        verb = (
            "provisioning failed" if isinstance(message, ProvisioningFailed) else "release failed"
        )
        cause = failure.cause
        return f"{verb}{_where(failure.site, failure.attempt)}: {cause.code}: {cause.message}"
    if isinstance(message, DeploymentReleased):
        return f"released{_where(message.data.site, message.data.attempt)}"
    return getattr(message, "type", type(message).__name__)


def line(entry: JournalEntry) -> str:
    """A journal entry as a log line: time, then what happened."""
    return f"{entry.time.isoformat(timespec='seconds')} {describe(entry.message)}"


def attempt_entries(number: int, entries: Iterable[JournalEntry]) -> list[JournalEntry]:
    """The entries about one attempt: its reports, and the status changes they caused."""
    chosen: list[JournalEntry] = []
    ids: set[str] = set()
    for entry in entries:
        message = entry.message
        attempt = getattr(getattr(message, "data", None), "attempt", None)
        # A status change caused by this attempt's report, unless it is about another
        # attempt (the failover that places the next one).
        caused = attempt is None and message.causationid in ids
        if attempt == number or caused:
            chosen.append(entry)
            ids.add(message.id)
    return chosen


def attempt_summary(attempt: AttemptRecord) -> list[str]:
    """What the scheduler recorded of one attempt."""
    lines = [
        f"attempt {attempt.number} at {attempt.site}"
        + (f" (SLA {attempt.sla_id})" if attempt.sla_id else ""),
        f"  started {attempt.started_at.isoformat(timespec='seconds')}"
        + (
            f", deadline {attempt.deadline.isoformat(timespec='seconds')}"
            if attempt.deadline
            else ""
        )
        + (
            f", finished {attempt.finished_at.isoformat(timespec='seconds')}"
            if attempt.finished_at
            else ""
        ),
        f"  outcome {attempt.outcome.value}"
        + (f": {attempt.cause_code}: {attempt.cause}" if attempt.cause else ""),
    ]
    flags = [name for name, on in (("released", attempt.released), ("kept", attempt.kept)) if on]
    if flags:
        lines.append(f"  {', '.join(flags)}")
    return lines


def attempt_log(attempt: AttemptRecord, entries: Iterable[JournalEntry]) -> str:
    """One attempt's log: its summary, then its events in order."""
    events = [line(entry) for entry in attempt_entries(attempt.number, entries)]
    return "\n".join([*attempt_summary(attempt), "", *events]) + "\n"


def deployment_log(snapshot: Snapshot, entries: Iterable[JournalEntry]) -> str:
    """A deployment's log: every event in order, then every attempt's summary."""
    record = snapshot.record
    head = [f"deployment {record.id} {record.status.value}"]
    if record.status_reason:
        head.append(f"  {record.status_reason}")
    events = [line(entry) for entry in entries]
    summaries = [text for attempt in snapshot.attempts for text in attempt_summary(attempt)]
    return "\n".join([*head, "", *events, "", *summaries]) + "\n"


def _where(site: str | None, attempt: int | None) -> str:
    if site is None:
        return ""
    return f" at {site}" + (f" (attempt {attempt})" if attempt is not None else "")
