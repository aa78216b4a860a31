"""The local site driver, running real processes in a temporary directory."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest
from pydantic import JsonValue

from flotilla.agents.config import AgentConfig
from flotilla.agents.driver import ProvisioningError
from flotilla.agents.local import LocalDriver, create_driver, process
from flotilla.agents.local.record import RunRecord
from flotilla.errors import ConfigurationError
from flotilla.schemas import (
    AttemptRef,
    PlannedNode,
    Provision,
    Release,
    Resources,
    SitePlan,
    WorkloadKind,
    new_id,
)

SITE = "workstation"
FAST = {"poll_interval_seconds": 0.05, "kill_grace_seconds": 0.5, "default_wall_time_seconds": 60}


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test(tmp_path: Path) -> Iterator[None]:
    """Stop whatever job a failing test left running under its directory."""
    yield
    runners = process.find_runners(tmp_path)
    records = [
        RunRecord(pid=runner.pid, create_time=runner.create_time(), started_at=0)
        for runner in runners.values()
    ]
    process.stop(process.session_processes(records), grace=1)


class Progress:
    """Records every progress call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(
        self,
        phase: str,
        message: str = "",
        *,
        percent: float | None = None,
        details: Mapping[str, JsonValue] | None = None,
    ) -> None:
        self.calls.append((phase, message))

    def messages(self, phase: str) -> list[str]:
        return [message for called, message in self.calls if called == phase]

    @property
    def phases(self) -> list[str]:
        return [phase for phase, _ in self.calls]


def driver(tmp_path: Path, **settings: Any) -> LocalDriver:
    config = AgentConfig(
        site=SITE, kind="local", state_dir=tmp_path / "state", driver=FAST | settings
    )
    return create_driver(config)


def job(name: str, script: str, **properties: JsonValue) -> PlannedNode:
    """A batch-job node running ``script`` with /bin/sh -c."""
    resources = properties.pop("resources", None)
    count = properties.pop("count", 1)
    depends_on = properties.pop("depends_on", [])
    return PlannedNode(
        name=name,
        kind=WorkloadKind.BATCH_JOB,
        count=count,
        depends_on=depends_on,
        resources=Resources.model_validate(resources or {}),
        properties={"command": ["/bin/sh", "-c"], "arguments": [script]} | properties,
    )


def order(*nodes: PlannedNode, deployment_id: str | None = None, **outputs: JsonValue) -> Provision:
    deployment_id = deployment_id or new_id()
    return Provision(
        deployment_id=deployment_id,
        site=SITE,
        attempt=1,
        idempotency_key=f"{deployment_id}/1",
        plan=SitePlan(nodes=list(nodes), outputs=outputs, group="physics"),
        owner="alice",
    )


def release(provision: Provision) -> Release:
    return Release(
        deployment_id=provision.deployment_id,
        site=SITE,
        attempt=provision.attempt,
        idempotency_key=f"{provision.deployment_id}/release",
        reason="test",
    )


def ref(provision: Provision) -> AttemptRef:
    return AttemptRef(deployment_id=provision.deployment_id, site=SITE, attempt=provision.attempt)


async def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_successful_job_reports_outputs_and_its_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that exits 0 returns exit code, work dir, stdout tail and the plan's outputs."""
    monkeypatch.setenv("BROKER_PASSWORD", "hunter2")
    node = job(
        "hello",
        'echo "$GREETING"; env; echo done > result.txt',
        environment={"GREETING": "hello from Flotilla"},
        wall_time_seconds=30.0,
    )
    provision = order(node, greeting="hello from Flotilla")
    progress = Progress()
    async with driver(tmp_path) as local:
        result = await local.provision(provision, progress)
        state = await local.status(ref(provision))

    work_dir = Path(str(result.outputs["hello_work_dir"]))
    tail = str(result.outputs["hello_stdout_tail"])
    assert result.outputs["hello_exit_code"] == 0
    assert result.outputs["greeting"] == "hello from Flotilla"
    assert tail.startswith("hello from Flotilla")
    assert f"FLOTILLA_DEPLOYMENT_ID={provision.deployment_id}" in tail
    assert "hunter2" not in tail
    assert (work_dir / "result.txt").read_text() == "done\n"
    assert work_dir == tmp_path / "state" / "work" / provision.deployment_id / "1" / "hello-0"
    [resource] = result.resources
    assert (resource.kind, resource.node) == ("process", "hello")
    assert resource.name == f"flotilla-{provision.deployment_id}-1"
    assert progress.phases[-1] == "COMPLETED"
    assert state is not None
    assert (state.phase, state.finished) == ("COMPLETED", True)


async def test_failed_job_names_node_exit_code_and_stderr(tmp_path: Path) -> None:
    """A non-zero exit fails the attempt with job_failed, the exit code and stderr's last lines."""
    provision = order(job("crunch", "echo starting; echo 'input.dat: no such file' >&2; exit 3"))
    async with driver(tmp_path) as local:
        with pytest.raises(ProvisioningError) as raised:
            await local.provision(provision, Progress())
        state = await local.status(ref(provision))

    assert raised.value.code == "job_failed"
    assert "crunch" in raised.value.message
    assert "code 3" in raised.value.message
    assert "input.dat: no such file" in raised.value.message
    assert state is not None
    assert (state.phase, state.finished) == ("FAILED", True)


async def test_command_that_cannot_start_fails_the_job(tmp_path: Path) -> None:
    """A command that does not exist fails with job_failed naming the node and the reason."""
    node = PlannedNode(
        name="ghost",
        kind=WorkloadKind.BATCH_JOB,
        properties={"command": ["/nonexistent/flotilla-tool"]},
    )
    async with driver(tmp_path) as local:
        with pytest.raises(ProvisioningError) as raised:
            await local.provision(order(node), Progress())

    assert raised.value.code == "job_failed"
    assert "ghost" in raised.value.message
    assert "No such file or directory" in raised.value.message


async def test_wall_time_kills_the_job(tmp_path: Path) -> None:
    """A job running past its wall time is killed and fails with wall_time_exceeded."""
    node = job("slow", "echo $$ > pid; exec sleep 60", wall_time_seconds=0.5)
    async with driver(tmp_path) as local:
        with pytest.raises(ProvisioningError) as raised:
            await local.provision(order(node), Progress())

    assert raised.value.code == "wall_time_exceeded"
    assert "slow" in raised.value.message
    [pid_file] = (tmp_path / "state" / "work").glob("*/1/slow-0/pid")
    assert not psutil.pid_exists(int(pid_file.read_text()))


async def test_memory_limit_stops_a_greedy_job(tmp_path: Path) -> None:
    """A job allocating far beyond memory_mb fails with memory_exceeded."""
    node = PlannedNode(
        name="greedy",
        kind=WorkloadKind.BATCH_JOB,
        resources=Resources(memory_mb=64),
        properties={"command": [sys.executable, "-c", "x = bytearray(2 * 1024**3)"]},
    )
    async with driver(tmp_path) as local:
        with pytest.raises(ProvisioningError) as raised:
            await local.provision(order(node), Progress())

    assert raised.value.code == "memory_exceeded"
    assert "greedy" in raised.value.message
    assert "MemoryError" in raised.value.message


async def test_cpu_time_limit_stops_a_spinning_job(tmp_path: Path) -> None:
    """A job spinning past its CPU time fails with cpu_time_exceeded."""
    node = PlannedNode(
        name="spin",
        kind=WorkloadKind.BATCH_JOB,
        properties={"command": [sys.executable, "-c", "while True: pass"]},
    )
    async with driver(tmp_path, cpu_time_cap_seconds=1) as local:
        with pytest.raises(ProvisioningError) as raised:
            await local.provision(order(node), Progress())

    assert raised.value.code == "cpu_time_exceeded"
    assert "spin" in raised.value.message


async def test_release_kills_a_running_job(tmp_path: Path) -> None:
    """Releasing an attempt kills its running process; releasing again or unknown succeeds."""
    provision = order(job("server", "echo $$ > pid; exec sleep 60"))
    async with driver(tmp_path) as local:
        task = asyncio.create_task(local.provision(provision, Progress()))
        pid_files = lambda: list((tmp_path / "state" / "work").glob("*/1/server-0/pid"))  # noqa: E731
        await wait_until(lambda: bool(pid_files()) and bool(pid_files()[0].read_text()))
        pid = int(pid_files()[0].read_text())
        running = await local.status(ref(provision))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await local.release(release(provision))
        await local.release(release(provision))
        await local.release(release(order(job("never", "true"))))
        released = await local.status(ref(provision))

    assert running is not None
    assert running.phase == "RUNNING"
    assert [r.kind for r in running.resources] == ["process"]
    assert not psutil.pid_exists(pid)
    assert released is not None
    assert (released.phase, released.finished) == ("RELEASED", True)


async def test_release_can_delete_working_directories(tmp_path: Path) -> None:
    """With keep_work_dirs off, a release deletes the attempt's directories."""
    provision = order(job("tidy", "echo hi"))
    async with driver(tmp_path, keep_work_dirs=False) as local:
        await local.provision(provision, Progress())
        await local.release(release(provision))
        state = await local.status(ref(provision))

    assert state is None
    assert not (tmp_path / "state" / "work" / provision.deployment_id).exists()


async def test_provision_again_after_cancellation_runs_the_job_once(tmp_path: Path) -> None:
    """A provision repeated by a new driver after the first was cancelled finds the job."""
    runs, go = tmp_path / "runs.txt", tmp_path / "go"
    wait_for_go = f"while [ ! -e {go} ]; do sleep 0.05; done"
    node = job("once", f"echo run >> {runs}; echo working; {wait_for_go}; echo finished")
    provision = order(node)
    async with driver(tmp_path) as first:
        task = asyncio.create_task(first.provision(provision, Progress()))
        await wait_until(lambda: bool(lines(runs)))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    progress = Progress()
    async with driver(tmp_path) as second:
        task = asyncio.create_task(second.provision(provision, progress))
        await wait_until(lambda: any("output: working" in m for m in progress.messages("RUNNING")))
        go.touch()
        result = await task
        again = await second.provision(provision, Progress())

    assert lines(runs) == ["run"]
    assert result.outputs["once_exit_code"] == 0
    assert result.outputs["once_stdout_tail"] == "working\nfinished"
    assert again.outputs == result.outputs


_AGENT = """
import asyncio, sys
from pathlib import Path
from flotilla.agents.config import AgentConfig
from flotilla.agents.local import create_driver
from flotilla.schemas import Provision

async def main():
    provision = Provision.model_validate_json(Path(sys.argv[1]).read_text())
    config = AgentConfig.model_validate_json(Path(sys.argv[2]).read_text())
    async with create_driver(config) as local:
        await local.provision(provision, lambda *args, **kwargs: None)

asyncio.run(main())
"""


async def test_provision_after_the_agent_was_killed_runs_the_job_once(tmp_path: Path) -> None:
    """The job outlives an agent killed with SIGKILL; the next agent waits for it, not reruns it."""
    runs = tmp_path / "runs.txt"
    provision = order(job("survivor", f"echo run >> {runs}; sleep 1; echo finished"))
    config = AgentConfig(site=SITE, kind="local", state_dir=tmp_path / "state", driver=FAST)
    (tmp_path / "order.json").write_text(provision.model_dump_json())
    (tmp_path / "config.json").write_text(config.model_dump_json())
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _AGENT, tmp_path / "order.json", tmp_path / "config.json"
    )
    try:
        await wait_until(lambda: bool(lines(runs)))
    finally:
        agent.send_signal(signal.SIGKILL)
        await agent.wait()

    async with create_driver(config) as restarted:
        result = await restarted.provision(provision, Progress())

    assert lines(runs) == ["run"]
    assert result.outputs["survivor_exit_code"] == 0


async def test_nodes_run_in_dependency_order_with_their_count(tmp_path: Path) -> None:
    """Nodes run after those they depend on; count instances each get their index."""
    log = tmp_path / "log.txt"
    record = f'echo "$FLOTILLA_NODE $FLOTILLA_NODE_INDEX" >> {log}'
    report = job("report", record, depends_on=["simulate"])
    simulate = job("simulate", f"{record}; echo part $FLOTILLA_NODE_INDEX", count=2)
    async with driver(tmp_path) as local:
        result = await local.provision(order(report, simulate), Progress())

    assert sorted(lines(log)[:2]) == ["simulate 0", "simulate 1"]
    assert lines(log)[2:] == ["report 0"]
    assert result.outputs["simulate_exit_code"] == [0, 0]
    assert result.outputs["simulate_stdout_tail"] == ["part 0", "part 1"]
    assert result.outputs["report_exit_code"] == 0
    assert len(result.resources) == 3


async def test_script_runs_in_its_working_directory(tmp_path: Path) -> None:
    """A node's script runs instead of a command, in its working_directory."""
    node = PlannedNode(
        name="scripted",
        kind=WorkloadKind.BATCH_JOB,
        properties={
            "script": '#!/bin/sh\necho "$1 from $(basename $(pwd))"\n',
            "arguments": ["hello"],
            "working_directory": "output",
        },
    )
    async with driver(tmp_path) as local:
        result = await local.provision(order(node), Progress())

    assert result.outputs["scripted_stdout_tail"] == "hello from output"


async def test_only_batch_jobs_are_accepted(tmp_path: Path) -> None:
    """A plan with a virtual machine fails with unsupported_workload before anything runs."""
    runs = tmp_path / "runs.txt"
    vm = PlannedNode(name="head", kind=WorkloadKind.VIRTUAL_MACHINE)
    provision = order(job("batch", f"echo run >> {runs}"), vm)
    async with driver(tmp_path) as local:
        with pytest.raises(ProvisioningError) as raised:
            await local.provision(provision, Progress())

    assert raised.value.code == "unsupported_workload"
    assert "head" in raised.value.message
    assert lines(runs) == []


async def test_status_of_an_unknown_attempt_is_none(tmp_path: Path) -> None:
    """An attempt the site never saw has no state."""
    async with driver(tmp_path) as local:
        assert await local.status(ref(order(job("x", "true")))) is None


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"max_jobz": 2}, "max_jobz"),
        ({"memory_headroom": 0.5}, "memory_headroom"),
        ({"kill_grace_seconds": "soon"}, "kill_grace_seconds"),
    ],
)
def test_configuration_errors_name_the_field(
    tmp_path: Path, section: dict[str, Any], field: str
) -> None:
    """A wrong or unknown field of the local section is named in the error."""
    config = AgentConfig(site=SITE, kind="local", state_dir=tmp_path, driver=section)
    with pytest.raises(ConfigurationError, match=f"local: {field}"):
        create_driver(config)


def test_empty_section_puts_work_under_the_state_dir(tmp_path: Path) -> None:
    """``local: {}`` is a valid section; jobs go to <state_dir>/work."""
    config = AgentConfig.model_validate(
        {"site": SITE, "kind": "local", "state_dir": str(tmp_path), "local": {}}
    )
    assert create_driver(config).work_dir == (tmp_path / "work").resolve()


async def test_snapshot_offers_the_host(tmp_path: Path) -> None:
    """The snapshot offers batch jobs on one shape with the host's CPUs and a jobs quota."""
    async with driver(tmp_path) as local:
        host = await local.snapshot()
    async with driver(tmp_path, cpus=1, max_jobs=3) as capped:
        limited = await capped.snapshot()

    [shape] = host.capabilities.shapes
    assert host.capabilities.workload_kinds == [WorkloadKind.BATCH_JOB]
    assert shape.name == "local"
    assert shape.cpus == psutil.cpu_count()
    assert shape.memory_mb == psutil.virtual_memory().total // 2**20
    quotas = {quota.resource: quota for quota in limited.quotas}
    assert limited.capabilities.shapes[0].cpus == 1
    assert (quotas["jobs"].limit, quotas["jobs"].used) == (3, 0)
    assert quotas["cpus"].limit == 1


async def test_snapshot_counts_running_jobs(tmp_path: Path) -> None:
    """A running job is counted in the jobs, cpus and memory_mb quotas."""
    provision = order(
        job("busy", "echo started; exec sleep 60", resources={"cpus": 1, "memory_mb": 128})
    )
    async with driver(tmp_path) as local:
        task = asyncio.create_task(local.provision(provision, Progress()))
        stdout = lambda: lines(  # noqa: E731
            tmp_path / "state" / "work" / provision.deployment_id / "1" / "busy-0" / "stdout.txt"
        )
        await wait_until(lambda: stdout() == ["started"])
        snapshot = await local.snapshot()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await local.release(release(provision))

    quotas = {quota.resource: quota.used for quota in snapshot.quotas}
    assert quotas == {"jobs": 1, "cpus": 1, "memory_mb": 128}


def test_job_records_are_json(tmp_path: Path) -> None:
    """Records written by the driver and runner are plain JSON a user can read."""
    RunRecord(pid=1, create_time=2.0, started_at=3.0).save(tmp_path / "run.json")
    assert json.loads((tmp_path / "run.json").read_text()) == {
        "pid": 1,
        "create_time": 2.0,
        "started_at": 3.0,
    }
    with pytest.raises(FileExistsError):
        RunRecord(pid=4, create_time=5.0, started_at=6.0).claim(tmp_path / "run.json")
