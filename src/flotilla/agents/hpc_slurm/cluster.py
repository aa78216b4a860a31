"""The Slurm commands a site driver needs, run on the login node and parsed.

JSON first (``squeue --json``, ``sacct --json``, ``sinfo --json``), with fallbacks that
work where JSON output or accounting is missing: ``scontrol show job`` and ``scontrol show
node``. Which of them a site supports is learnt on first use and remembered.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

import structlog

from flotilla.agents.driver import ProvisioningError, SiteUnavailableError
from flotilla.agents.hpc_slurm.capacity import (
    NodeInfo,
    PartitionInfo,
    parse_assoc_usage,
    parse_partitions,
    parse_sacctmgr_limits,
    parse_scontrol_nodes,
    parse_sinfo_json,
)
from flotilla.agents.hpc_slurm.job import (
    JobInfo,
    parse_sacct_exits,
    parse_sacct_json,
    parse_scontrol_jobs,
    parse_squeue_json,
)
from flotilla.agents.hpc_slurm.ssh import CommandResult, LoginNode

_log = structlog.get_logger("flotilla.agents.slurm")

_NO_JSON = ("unrecognized option", "invalid option", "unknown option")
_NO_ACCOUNTING = ("accounting storage is disabled",)
# sbatch errors: (words in the message, code); the controller being away is retryable.
_SUBMIT_ERRORS = (
    ("invalid partition", "invalid_partition"),
    ("invalid account", "invalid_account"),
    ("invalid qos", "invalid_account"),
    ("requested node configuration is not available", "no_valid_host"),
    ("invalid generic resource", "no_valid_host"),
    ("memory required by task is not available", "no_valid_host"),
    ("node count specification invalid", "no_valid_host"),
    ("requested time limit is invalid", "invalid_time_limit"),
    ("violates accounting/qos policy", "quota_exceeded"),
    ("job dependency problem", "invalid_job"),
)
_UNAVAILABLE = (
    "unable to contact slurm controller",
    "socket timed out",
    "temporarily unable to accept job",
    "slurm_persist_conn",
    "connection refused",
)


class SlurmCluster:
    """The Slurm cluster behind one login node."""

    def __init__(self, login: LoginNode, *, user: str, history: timedelta) -> None:
        self._login = login
        self._user = user
        self._history = history
        self._squeue_json: bool | None = None
        self._sinfo_json: bool | None = None
        self._accounting = True
        self._home: str | None = None
        self._listing: tuple[float, list[JobInfo]] = (float("-inf"), [])
        self._listing_lock = asyncio.Lock()

    # Jobs ---------------------------------------------------------------------------------

    async def live_jobs(self, *, prefix: str, max_age: float = 0.0) -> list[JobInfo]:
        """The login user's jobs the controller still holds whose name starts with ``prefix``.

        Args:
            prefix: Start of the job names wanted (an attempt's tag and a dot).
            max_age: Seconds a listing made for another caller may be reused. Attempts
                followed at once then share one squeue call per poll instead of one each.
        """
        async with self._listing_lock:
            listed, jobs = self._listing
            if max_age <= 0 or time.monotonic() - listed > max_age:
                jobs = await self._list_jobs()
                self._listing = (time.monotonic(), jobs)
        return [job for job in jobs if job.name.startswith(prefix)]

    async def _list_jobs(self) -> list[JobInfo]:
        if self._squeue_json is not False:
            result = await self._slurm(
                ["squeue", "--json", "--states=all", f"--user={self._user}"], "squeue"
            )
            if result.ok:
                self._squeue_json = True
                jobs = _parsed(parse_squeue_json, result, "squeue")
                return [job for job in jobs if job.user in (None, self._user)]
            if not _says(result, _NO_JSON):
                raise _unavailable("squeue", result)
            self._squeue_json = False
            _log.info("squeue_without_json", error=result.error_text(200))
        result = await self._slurm(["scontrol", "-o", "show", "job"], "scontrol")
        if not result.ok and "no jobs in the system" not in result.error_text().lower():
            raise _unavailable("scontrol show job", result)
        return [j for j in parse_scontrol_jobs(result.stdout) if j.user in (None, self._user)]

    async def past_jobs(
        self,
        *,
        names: Sequence[str] = (),
        job_ids: Sequence[str] = (),
        prefix: str | None = None,
    ) -> list[JobInfo]:
        """Jobs from accounting (sacct) by exact name, id or name prefix.

        Empty where accounting is off.
        """
        if not self._accounting or not (names or job_ids or prefix):
            return []
        command = ["sacct", "--json", "-X", f"--user={self._user}"]
        command.append(f"--starttime=now-{int(self._history.total_seconds())}seconds")
        command += [f"--name={','.join(names)}"] if names else []
        command += [f"--jobs={','.join(job_ids)}"] if job_ids else []
        result = await self._slurm(command, "sacct")
        if not result.ok:
            if _says(result, _NO_ACCOUNTING):
                self._accounting = False
                _log.warning("slurm_accounting_off", error=result.error_text(200))
                return []
            raise _unavailable("sacct", result)
        wanted = set(names)
        ids = set(job_ids)
        jobs = [
            j
            for j in _parsed(parse_sacct_json, result, "sacct")
            if (j.name in wanted or j.job_id in ids or (prefix and j.name.startswith(prefix)))
            and j.user in (None, self._user)
        ]
        return await self._exit_codes(jobs)

    async def _exit_codes(self, jobs: list[JobInfo]) -> list[JobInfo]:
        # Slurm 22.05's sacct JSON reports exit code 0 for failed jobs: ask the text output.
        doubtful = [j.job_id for j in jobs if j.is_finished and not j.succeeded and not j.exit_code]
        doubtful += [j.job_id for j in jobs if j.state == "COMPLETED" and j.exit_code is None]
        if not doubtful:
            return jobs
        command = [
            "sacct",
            "-n",
            "-P",
            "-X",
            "-o",
            "JobID,ExitCode",
            f"--jobs={','.join(doubtful)}",
        ]
        result = await self._slurm(command, "sacct")
        exits = parse_sacct_exits(result.stdout) if result.ok else {}
        return [j.with_exit(*exits[j.job_id]) if j.job_id in exits else j for j in jobs]

    async def job(self, job_id: str) -> JobInfo | None:
        """One job by id from ``scontrol show job``, while the controller still holds it."""
        result = await self._slurm(["scontrol", "-o", "show", "job", job_id], "scontrol")
        if not result.ok:
            if "invalid job id" in result.error_text().lower():
                return None
            raise _unavailable("scontrol show job", result)
        found = parse_scontrol_jobs(result.stdout)
        return found[0] if found else None

    async def submit(self, script: str, *, directory: str, node: str) -> str:
        """Create the job's directory and submit its script; the new job's id.

        Raises:
            ProvisioningError: sbatch refused the job (the code says why).
            SiteUnavailableError: the controller could not be reached.
        """
        result = await self._login.run(
            ["mkdir", "-p", "--", directory], ["sbatch", "--parsable"], stdin=script
        )
        job_id = result.stdout.strip().split(";")[0]
        if result.ok and job_id.isdigit():
            return job_id
        said = result.error_text()
        lowered = said.lower()
        if any(words in lowered for words in _UNAVAILABLE):
            raise SiteUnavailableError(f"sbatch could not reach the Slurm controller: {said}")
        code = next((code for words, code in _SUBMIT_ERRORS if words in lowered), None)
        raise ProvisioningError(
            f"node {node}: sbatch refused the job: {said}", code=code or "submission_failed"
        )

    async def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel jobs; jobs that already ended are fine."""
        if not job_ids:
            return
        result = await self._login.run(["scancel", "--", *job_ids])
        said = result.error_text().lower()
        done = ("already completing or completed", "invalid job id")
        if not result.ok and not any(words in said for words in done):
            raise _unavailable("scancel", result)

    async def output_tail(self, path: str, size: int = 2048) -> str:
        """The end of a job's output file, or '' when it cannot be read."""
        result = await self._login.run(["tail", "-c", str(size), "--", path])
        text = result.stdout if result.ok else ""
        return "\n".join(text.splitlines()[-15:])

    async def home(self) -> str:
        """The login user's home directory on the login node."""
        if self._home is None:
            result = await self._login.run(["printenv", "HOME"])
            home = result.stdout.strip()
            if not result.ok or not home.startswith("/"):
                raise SiteUnavailableError(f"cannot read the home directory: {result.error_text()}")
            self._home = home
        return self._home

    # Capacity -----------------------------------------------------------------------------

    async def nodes(self) -> list[NodeInfo]:
        """Every node with its size, GPUs, features, partitions and state."""
        if self._sinfo_json is not False:
            result = await self._slurm(["sinfo", "--json"], "sinfo")
            if result.ok:
                try:
                    nodes = parse_sinfo_json(result.stdout)
                except ValueError as exc:
                    _log.info("sinfo_json_unusable", error=str(exc))
                else:
                    self._sinfo_json = True
                    return nodes
            elif not _says(result, _NO_JSON):
                raise _unavailable("sinfo", result)
            self._sinfo_json = False
        result = await self._slurm(["scontrol", "-o", "show", "node"], "scontrol")
        if not result.ok:
            raise _unavailable("scontrol show node", result)
        return parse_scontrol_nodes(result.stdout)

    async def partitions(self) -> list[PartitionInfo]:
        """Every partition with its state and whether it is the default."""
        result = await self._slurm(["scontrol", "-o", "show", "partition"], "scontrol")
        if not result.ok:
            raise _unavailable("scontrol show partition", result)
        return parse_partitions(result.stdout)

    async def association_limits(self, accounts: Sequence[str]) -> dict[str, dict[str, float]]:
        """GrpTRES limits of the accounts (sacctmgr), for those that have any."""
        if not accounts:
            return {}
        where = f"accounts={','.join(accounts)}"
        command = ["sacctmgr", "-nP", "show", "assoc", "where", where]
        result = await self._slurm([*command, "format=Account,User,Partition,GrpTRES"], "sacctmgr")
        if not result.ok:
            _log.warning("association_limits_unreadable", error=result.error_text(200))
            return {}
        return parse_sacctmgr_limits(result.stdout)

    async def association_usage(self, accounts: Sequence[str]) -> dict[str, dict[str, float]]:
        """What the accounts use of their GrpTRES now, as the controller counts it."""
        command = ["scontrol", "show", "assoc_mgr", "flags=assoc", f"accounts={','.join(accounts)}"]
        result = await self._slurm(command, "scontrol")
        if not result.ok:
            _log.warning("association_usage_unreadable", error=result.error_text(200))
            return {}
        return parse_assoc_usage(result.stdout)

    async def _slurm(self, command: list[str], name: str) -> CommandResult:
        result = await self._login.run(command)
        if result.exit_status == 127:
            raise SiteUnavailableError(f"{name} is not installed on the login node")
        return result


def _says(result: CommandResult, words: Sequence[str]) -> bool:
    text = result.error_text().lower()
    return any(word in text for word in words)


def _unavailable(command: str, result: CommandResult) -> SiteUnavailableError:
    said = re.sub(r"\s+", " ", result.error_text(500))
    return SiteUnavailableError(f"{command} failed on the login node: {said}")


def _parsed(
    parse: Callable[[str], list[JobInfo]], result: CommandResult, command: str
) -> list[JobInfo]:
    try:
        jobs = parse(result.stdout)
    except ValueError as exc:
        raise SiteUnavailableError(f"unexpected output of {command}: {exc}") from exc
    return jobs
