"""The Slurm driver against the real Slurm testbed over SSH (``testbeds/slurm.sh``)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
from pathlib import Path

import pytest

from flotilla.agents.driver import ProvisioningError, SiteUnavailableError
from flotilla.agents.hpc_slurm import SlurmConfig, SlurmDriver
from flotilla.scheduler.tosca import TemplateParser
from flotilla.schemas import Gpu, PlannedNode
from tests.integration.slurm.conftest import (
    Attempts,
    LoginShell,
    ProgressLog,
    batch_node,
    job_name_of,
    jump_section,
    release_of,
    site_section,
)

pytestmark = pytest.mark.slurm

QCG_TEMPLATE = Path(
    "/work/shared/tosca-corpus/templates/indigo-dc-tosca-types/examples/qcg-job.yaml"
)


async def test_job_completes_with_exit_code_and_output(
    driver: SlurmDriver, attempts: Attempts, login: LoginShell
) -> None:
    """A job that exits 0 completes; outputs name the job, its exit code and its output file."""
    node = batch_node(
        command=["/bin/sh", "-c"],
        arguments=['echo "$GREETING from $FLOTILLA_SITE"; echo done > result.txt'],
        environment={"GREETING": "hello"},
    )
    order = attempts.order(node, outputs={"id": {"get_attribute": ["work", "job_id"]}})
    progress = ProgressLog()

    result = await driver.provision(order, progress)

    outputs = result.outputs
    assert outputs["work_state"] == "COMPLETED"
    assert outputs["work_exit_code"] == 0
    assert outputs["id"] == outputs["work_job_id"]
    assert outputs["work_stdout_tail"] == "hello from hpc-testbed"
    assert [ref.id for ref in result.resources] == [outputs["work_job_id"]]
    assert progress.phases[0] == "SUBMITTED"
    assert progress.phases[-1] == "COMPLETED"
    printed = await login.run(f"cat {shlex.quote(str(outputs['work_output_path']))}")
    assert printed.strip() == "hello from hpc-testbed"
    directory = str(outputs["work_output_path"]).rsplit("/", 1)[0]
    assert (await login.run(f"cat {shlex.quote(directory)}/result.txt")).strip() == "done"
    [line] = await login.settled(job_name_of(order))
    assert line.split("|")[:3] == [outputs["work_job_id"], "COMPLETED", "0:0"]


async def test_nonzero_exit_fails_with_the_cause(driver: SlurmDriver, attempts: Attempts) -> None:
    """A job exiting 3 fails the attempt with job_failed, its exit code and its last output."""
    node = batch_node(command=["/bin/sh", "-c", "echo 'input file not found' >&2; exit 3"])
    order = attempts.order(node)

    with pytest.raises(ProvisioningError) as caught:
        await driver.provision(order, ProgressLog())

    error = caught.value
    assert error.code == "job_failed"
    assert error.retryable is False
    assert "exit code 3" in error.message
    assert "input file not found" in error.message
    assert [ref.kind for ref in error.resources] == ["slurm_job"]


async def test_gpu_job_gets_its_gres(
    driver: SlurmDriver, attempts: Attempts, login: LoginShell
) -> None:
    """A job asking for one NVIDIA A100 is allocated gres/gpu:a100=1 and sees one device."""
    node = batch_node(
        command=["/bin/sh", "-c", 'echo "gpus=$CUDA_VISIBLE_DEVICES"'],
        gpu=Gpu(count=1, vendor="NVIDIA", model="A100"),
    )
    node = node.model_copy(update={"shape": "gpu"})
    order = attempts.order(node)

    result = await driver.provision(order, ProgressLog())

    assert result.outputs["work_stdout_tail"] == "gpus=0"
    [line] = await login.settled(job_name_of(order))
    assert "gres/gpu:a100=1" in line.split("|")[3]
    assert line.split("|")[4] == "gpu"
    printed = await login.run(f"cat {shlex.quote(str(result.outputs['work_output_path']))}")
    assert printed.strip() == "gpus=0"


async def test_more_gpus_than_a_node_has_are_refused(
    driver: SlurmDriver, attempts: Attempts
) -> None:
    """Asking for 4 GPUs on nodes with 2 fails at submission with no_valid_host."""
    node = batch_node(command=["true"], gpu=Gpu(count=4))
    with pytest.raises(ProvisioningError) as caught:
        await driver.provision(attempts.order(node), ProgressLog())
    assert caught.value.code == "no_valid_host"


async def test_release_cancels_a_running_job(
    driver: SlurmDriver, attempts: Attempts, login: LoginShell
) -> None:
    """Releasing an attempt whose job runs cancels the job: squeue no longer lists it."""
    await _release_running_job(driver, attempts, login)


async def test_release_through_the_jump_host(
    slurm_env: dict[str, str], attempts: Attempts, login: LoginShell
) -> None:
    """Through the bastion, a job completes, and a running job is released."""
    config = SlurmConfig.model_validate(site_section(slurm_env, jump=jump_section(slurm_env)))
    async with SlurmDriver(config) as driver:
        order = attempts.order(batch_node(command=["echo", "via bastion"]))
        result = await driver.provision(order, ProgressLog())
        assert result.outputs["work_exit_code"] == 0
        printed = await login.run(f"cat {shlex.quote(str(result.outputs['work_output_path']))}")
        assert printed.strip() == "via bastion"
        await _release_running_job(driver, attempts, login)


async def _release_running_job(driver: SlurmDriver, attempts: Attempts, login: LoginShell) -> None:
    order = attempts.order(batch_node(command=["sleep", "300"]))
    progress = ProgressLog()
    task = asyncio.create_task(driver.provision(order, progress))
    try:
        await progress.wait_phase("RUNNING")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(await login.queued(job_name_of(order))) == 1

    await driver.release(release_of(order))
    await driver.release(release_of(order))  # idempotent

    await login.wait_gone(job_name_of(order))
    [line] = await login.settled(job_name_of(order))
    assert line.split("|")[1].startswith("CANCELLED")


async def test_provision_resumes_the_same_job_after_a_restart(
    slurm_config: SlurmConfig, attempts: Attempts, login: LoginShell
) -> None:
    """A provision interrupted while its job runs, run again by a new driver, follows that job."""
    order = attempts.order(batch_node(command=["/bin/sh", "-c", "sleep 4; echo finished"]))
    first = ProgressLog()
    async with SlurmDriver(slurm_config) as driver:
        task = asyncio.create_task(driver.provision(order, first))
        try:
            await first.wait_phase("RUNNING")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    [job_id] = first.job_ids()

    second = ProgressLog()
    async with SlurmDriver(slurm_config) as driver:
        result = await driver.provision(order, second)

    assert result.outputs["work_job_id"] == job_id
    assert "SUBMITTED" not in second.phases
    assert second.job_ids() == {job_id}
    accounted = await login.settled(job_name_of(order))
    assert [line.split("|")[0] for line in accounted] == [job_id]


async def test_template_values_do_not_reach_the_shell(
    driver: SlurmDriver, attempts: Attempts, login: LoginShell, token: str
) -> None:
    """Command substitutions in arguments and environment stay text: nothing is executed."""
    marker = f"/tmp/flotilla-pwned-{token}"
    hostile = [f"$(touch {marker})", f"`touch {marker}`", f"; touch {marker}", "'\"\\\n"]
    node = batch_node(
        command=["printf", "%s|"],
        arguments=hostile,
        environment={"HOSTILE": f"$(touch {marker})"},
        working_directory="flotilla-test-$(id)",
    )
    order = attempts.order(node)

    with pytest.raises(ProvisioningError) as caught:
        await driver.provision(order, ProgressLog())

    # The working directory is taken literally, so the job cannot enter it and fails.
    assert "cannot enter the working directory flotilla-test-$(id)" in caught.value.message
    assert (await login.run(f"test -e {marker} && echo yes || echo no")).strip() == "no"

    order = attempts.order(
        batch_node(command=["printf", "%s|"], arguments=hostile, environment={"H": hostile[0]})
    )
    result = await driver.provision(order, ProgressLog())
    printed = await login.run(f"cat {shlex.quote(str(result.outputs['work_output_path']))}")
    assert printed == "|".join(hostile) + "|"
    assert (await login.run(f"test -e {marker} && echo yes || echo no")).strip() == "no"


async def test_unknown_partition_is_refused(driver: SlurmDriver, attempts: Attempts) -> None:
    """A partition the cluster does not have fails the attempt with invalid_partition."""
    node = batch_node(command=["true"], partition="nosuchpartition")
    with pytest.raises(ProvisioningError) as caught:
        await driver.provision(attempts.order(node), ProgressLog())
    assert caught.value.code == "invalid_partition"


async def test_unknown_host_key_is_refused(
    slurm_env: dict[str, str], attempts: Attempts, login: LoginShell, tmp_path: Path
) -> None:
    """With the login node's key missing from known_hosts, nothing is run and the host is named."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    config = SlurmConfig.model_validate(site_section(slurm_env, known_hosts=str(known_hosts)))
    order = attempts.order(batch_node(command=["true"]))
    async with SlurmDriver(config) as driver:
        with pytest.raises(SiteUnavailableError, match=re.escape("127.0.0.1:2022 is not in")):
            await driver.snapshot()
        with pytest.raises(ProvisioningError) as caught:
            await driver.provision(order, ProgressLog())
    assert caught.value.code == "host_key_rejected"
    assert await login.accounted(job_name_of(order)) == []


async def test_changed_host_key_is_refused(
    slurm_env: dict[str, str], known_hosts_lines: list[str], tmp_path: Path
) -> None:
    """A known_hosts entry with another key for the login node refuses the connection."""
    lines = known_hosts_lines
    jump_key = next(line.split(" ", 1)[1] for line in lines if line.startswith("[127.0.0.1]:2222"))
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:2022 {jump_key}\n")
    config = SlurmConfig.model_validate(site_section(slurm_env, known_hosts=str(known_hosts)))
    async with SlurmDriver(config) as driver:
        with pytest.raises(SiteUnavailableError, match=re.escape("127.0.0.1:2022 does not match")):
            await driver.snapshot()


async def test_bastion_host_key_is_verified_too(
    slurm_env: dict[str, str], known_hosts_lines: list[str], tmp_path: Path
) -> None:
    """Without the bastion's key in known_hosts, the connection through it is refused."""
    lines = known_hosts_lines
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("\n".join(line for line in lines if ":2222 " not in line) + "\n")
    section = site_section(slurm_env, known_hosts=str(known_hosts), jump=jump_section(slurm_env))
    async with SlurmDriver(SlurmConfig.model_validate(section)) as driver:
        with pytest.raises(SiteUnavailableError, match=re.escape("127.0.0.1:2222 is not in")):
            await driver.snapshot()


async def test_unreachable_login_node_reports_the_site_down(slurm_env: dict[str, str]) -> None:
    """A login node nobody answers on makes snapshot raise SiteUnavailableError, not hang."""
    for host, port in (("127.0.0.1", 1), ("10.255.255.1", 22)):
        section = site_section(slurm_env, login_host=host, port=port, connect_timeout=2)
        async with SlurmDriver(SlurmConfig.model_validate(section)) as driver:
            with pytest.raises(SiteUnavailableError, match=f"cannot reach {re.escape(host)}"):
                await driver.snapshot()


async def test_capacity_matches_sinfo(driver: SlurmDriver, login: LoginShell) -> None:
    """Each partition is a shape with the CPUs, memory, GPUs and features sinfo reports."""
    snapshot = await driver.snapshot()

    rows = await login.run("sinfo -h -N -o '%N|%R|%c|%m|%G|%f'")
    expected = {}
    gpus_per_node = {}
    for row in rows.split():
        node, partition, cpus, memory, gres, features = row.split("|")
        _, kind, count = gres.split("(")[0].split(":")
        expected[partition] = (float(cpus), int(memory), int(count), kind, features.split(","))
        gpus_per_node[node] = int(count)
    shapes = {
        shape.name: (
            shape.cpus,
            shape.memory_mb,
            shape.gpu.count if shape.gpu else 0,
            shape.gpu.model if shape.gpu else None,
            shape.features,
        )
        for shape in snapshot.capabilities.shapes
    }
    assert shapes == expected
    assert snapshot.capabilities.infiniband is True
    assert [(gpu.vendor, gpu.model, gpu.count) for gpu in snapshot.capabilities.gpus] == [
        ("nvidia", "a100", sum(gpus_per_node.values()))
    ]


async def test_qcg_job_template_runs(
    driver: SlurmDriver, attempts: Attempts, login: LoginShell
) -> None:
    """INDIGO's Qcg.Job example, planned by the scheduler's TOSCA reader, runs as a Slurm job."""
    async with TemplateParser() as parser:
        text = await asyncio.to_thread(QCG_TEMPLATE.read_text)
        requirements = await parser.requirements(text, {"queue": "cpu"})
    [planned] = requirements.as_json()["nodes"]
    node = PlannedNode.model_validate(
        {k: planned[k] for k in ("name", "kind", "count", "resources", "properties")}
    )
    order = attempts.order(node)

    result = await driver.provision(order, ProgressLog())

    printed = await login.run(f"cat {shlex.quote(str(result.outputs['qcg_job_output_path']))}")
    assert "NUM_GPUS=0" in printed.splitlines()
    home = (await login.run("echo $HOME")).strip()
    assert f"PWD={home}" in printed.splitlines()
    [line] = await login.settled(job_name_of(order, "qcg_job"))
    assert "cpu=2" in line
    assert "mem=1G" in line


async def test_account_limits_become_group_quotas(
    slurm_env: dict[str, str], limited_account: str
) -> None:
    """GrpTRES of the account a group is charged to are reported as that group's quotas."""
    section = site_section(slurm_env, group_accounts={"quota-group": limited_account})
    async with SlurmDriver(SlurmConfig.model_validate(section)) as driver:
        snapshot = await driver.snapshot()

    limits = {(q.group, q.resource): q.limit for q in snapshot.quotas}
    assert limits == {
        ("quota-group", "cores"): 4,
        ("quota-group", "ram_mb"): 8192,
        ("quota-group", "gpus"): 1,
        ("quota-group", "instances"): 2,
    }
