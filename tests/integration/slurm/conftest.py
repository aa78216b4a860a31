"""Fixtures of the Slurm tests: the real Slurm testbed (``testbeds/slurm.sh``), up once per run.

The testbed stays up after the tests (``testbeds/slurm.sh down`` ends it). Checks of what
happened on the cluster go through OpenSSH with the testbed's own ssh_config, not through
the driver under test.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import JsonValue

from flotilla.agents.driver import attempt_tag
from flotilla.agents.hpc_slurm import SlurmConfig, SlurmDriver
from flotilla.schemas import (
    Gpu,
    PlannedNode,
    Provision,
    Release,
    Resources,
    SitePlan,
    WorkloadKind,
)
from tests.integration.support import testbed_env

# The testbed's Slurm configuration, for administrative commands run here as root.
SLURM_CONF = (
    Path(os.environ.get("FLOTILLA_TESTBEDS", "/var/tmp/flotilla-testbeds"))
    / "slurm/state/etc/slurm.conf"
)
ACCOUNT = "flotilla"  # the testbed's Slurm account
GROUP = "physics"


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, str]:
    """The Slurm testbed's SSH endpoints, key and known_hosts file."""
    return testbed_env("slurm")


def site_section(env: Mapping[str, str], **overrides: Any) -> dict[str, Any]:
    """A ``slurm:`` site-file section for the testbed's login node."""
    section: dict[str, Any] = {
        "login_host": env["SLURM_SSH_HOST"],
        "port": int(env["SLURM_SSH_PORT"]),
        "user": env["SLURM_SSH_USER"],
        "key": {"file": env["SLURM_SSH_KEY"]},
        "known_hosts": env["SLURM_SSH_KNOWN_HOSTS"],
        "default_account": ACCOUNT,
        "group_accounts": {GROUP: ACCOUNT},
        "poll_interval": 1,
        "connect_timeout": 5,
        "command_timeout": 30,
    }
    return section | overrides


def jump_section(env: Mapping[str, str]) -> dict[str, Any]:
    """The testbed's bastion as a ``jump:`` entry."""
    return {
        "host": env["SLURM_JUMP_HOST"],
        "port": int(env["SLURM_JUMP_PORT"]),
        "user": env["SLURM_JUMP_USER"],
    }


@pytest.fixture
def slurm_config(slurm_env: dict[str, str]) -> SlurmConfig:
    """Driver settings for the testbed, polling every second."""
    return SlurmConfig.model_validate(site_section(slurm_env))


@pytest.fixture
async def driver(slurm_config: SlurmConfig) -> AsyncIterator[SlurmDriver]:
    """An open Slurm driver on the testbed."""
    async with SlurmDriver(slurm_config, site="hpc-testbed") as opened:
        yield opened


class LoginShell:
    """Commands on the login node through OpenSSH, as the test user (independent checks)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._config = env["SLURM_SSH_CONFIG"]

    async def run(self, command: str, *, check: bool = True) -> str:
        """Run a shell command on the login node; its stdout."""
        process = await asyncio.create_subprocess_exec(
            "ssh",
            "-F",
            self._config,
            "-o",
            "BatchMode=yes",
            "login",
            command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, err = await process.communicate()
        if check and process.returncode != 0:
            raise AssertionError(f"{command!r} failed ({process.returncode}): {err.decode()}")
        return out.decode()

    async def wait_gone(self, job_name: str, timeout: float = 30) -> None:
        """Wait until squeue no longer lists any job of that name."""
        async with asyncio.timeout(timeout):
            while True:
                if not await self.queued(job_name):
                    return
                await asyncio.sleep(0.5)

    async def queued(self, job_name: str) -> list[str]:
        """``id state`` of each job of that name squeue still lists (pending, running...)."""
        out = await self.run(f"squeue -h -n {shlex.quote(job_name)} -o '%i %T'")
        return [line for line in out.splitlines() if line.strip()]

    async def accounted(self, job_name: str) -> list[str]:
        """``id|state|exit|AllocTRES|partition`` of each job of that name in accounting."""
        out = await self.run(
            f"sacct -n -P -X -S now-1hours --name={shlex.quote(job_name)} "
            "-o JobID,State,ExitCode,AllocTRES,Partition"
        )
        return [line for line in out.splitlines() if line.strip()]

    async def settled(self, job_name: str, timeout: float = 30) -> list[str]:
        """``accounted``, once accounting lists the jobs in a final state (it lags a little)."""
        async with asyncio.timeout(timeout):
            while True:
                lines = await self.accounted(job_name)
                states = [line.split("|")[1] for line in lines]
                if lines and not any(s in ("PENDING", "RUNNING", "REQUEUED") for s in states):
                    return lines
                await asyncio.sleep(0.5)


@pytest.fixture(scope="session")
def login(slurm_env: dict[str, str]) -> LoginShell:
    """A shell on the testbed's login node."""
    return LoginShell(slurm_env)


@dataclass
class ProgressLog:
    """A ``ProgressSink`` that keeps everything reported."""

    events: list[tuple[str, str, dict[str, JsonValue]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(
        self,
        phase: str,
        message: str = "",
        *,
        percent: float | None = None,
        details: Mapping[str, JsonValue] | None = None,
    ) -> None:
        self.events.append((phase, message, dict(details or {})))
        self.changed.set()

    @property
    def phases(self) -> list[str]:
        """The phases in the order they were reported."""
        return [phase for phase, _, _ in self.events]

    def job_ids(self) -> set[str]:
        """Every job id mentioned in the details."""
        return {str(d["job_id"]) for _, _, d in self.events if "job_id" in d}

    async def wait_phase(self, phase: str, timeout: float = 60) -> None:
        """Wait until ``phase`` has been reported."""
        async with asyncio.timeout(timeout):
            while phase not in self.phases:
                self.changed.clear()
                await self.changed.wait()


def batch_node(
    name: str = "work",
    *,
    command: list[str],
    arguments: list[str] | None = None,
    environment: dict[str, str] | None = None,
    cpus: float = 1,
    memory_mb: int = 128,
    gpu: Gpu | None = None,
    wall_time_seconds: float = 300,
    **properties: JsonValue,
) -> PlannedNode:
    """A planned batch-job node."""
    values: dict[str, JsonValue] = {
        "command": list[JsonValue](command),
        "arguments": list[JsonValue](arguments or []),
        "environment": dict[str, JsonValue](environment or {}),
        "wall_time_seconds": wall_time_seconds,
        **properties,
    }
    return PlannedNode(
        name=name,
        kind=WorkloadKind.BATCH_JOB,
        resources=Resources(cpus=cpus, memory_mb=memory_mb, gpu=gpu),
        properties=values,
    )


@dataclass
class Attempts:
    """Orders made by one test; their jobs are cancelled when the test ends."""

    made: list[Provision] = field(default_factory=list)

    def order(self, *nodes: PlannedNode, outputs: dict[str, JsonValue] | None = None) -> Provision:
        """A provision order of a fresh deployment with these nodes."""
        order = Provision(
            deployment_id=str(uuid.uuid4()),
            site="hpc-testbed",
            attempt=1,
            idempotency_key=uuid.uuid4().hex,
            plan=SitePlan(nodes=list(nodes), group=GROUP, outputs=outputs or {}),
            owner="tester",
        )
        self.made.append(order)
        return order


def release_of(order: Provision) -> Release:
    """The release order of a provision order's attempt."""
    return Release(
        deployment_id=order.deployment_id,
        site=order.site,
        attempt=order.attempt,
        idempotency_key=uuid.uuid4().hex,
        reason="test over",
    )


def job_name_of(order: Provision, node: str = "work") -> str:
    """The Slurm job name the driver gives a node of the order."""
    return f"{attempt_tag(order.deployment_id, order.attempt)}.{node}"


@pytest.fixture
async def attempts(slurm_config: SlurmConfig, login: LoginShell) -> AsyncIterator[Attempts]:
    """Orders of one test, released (jobs cancelled, directories removed) afterwards."""
    made = Attempts()
    yield made
    async with SlurmDriver(slurm_config) as cleaner:
        for order in made.made:
            await cleaner.release(release_of(order))
            tag = attempt_tag(order.deployment_id, order.attempt)
            await login.run(f'rm -rf -- "$HOME/{slurm_config.jobs_directory}/{tag}".*')


@pytest.fixture
def token() -> str:
    """A short unique token for file names on the login node."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def known_hosts_lines(slurm_env: dict[str, str]) -> list[str]:
    """The lines of the testbed's known_hosts file (login node and bastion keys)."""
    return Path(slurm_env["SLURM_SSH_KNOWN_HOSTS"]).read_text().splitlines()


def _sacctmgr(*words: str) -> None:
    subprocess.run(
        ["sacctmgr", "-i", *words],
        check=True,
        capture_output=True,
        env={**os.environ, "SLURM_CONF": str(SLURM_CONF)},
        timeout=60,
    )


@pytest.fixture
def limited_account(slurm_env: dict[str, str], token: str) -> Iterator[str]:
    """A Slurm account with group limits (GrpTRES) the test user may charge; removed after."""
    if shutil.which("sacctmgr") is None or not SLURM_CONF.exists() or os.geteuid() != 0:
        pytest.skip("needs root and the testbed's sacctmgr on this machine")
    account = f"fq{token[:8]}"
    limits = "GrpTRES=cpu=4,mem=8G,gres/gpu=1,node=2"
    _sacctmgr(
        "add", "account", account, "Description=flotilla-test", "Organization=flotilla", limits
    )
    try:
        _sacctmgr("add", "user", slurm_env["SLURM_SSH_USER"], f"account={account}")
        yield account
    finally:
        _sacctmgr("delete", "user", slurm_env["SLURM_SSH_USER"], f"account={account}")
        _sacctmgr("delete", "account", account)
