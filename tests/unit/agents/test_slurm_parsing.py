"""Parsing what Slurm prints: samples captured from the Slurm 22.05 testbed (fields trimmed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flotilla.agents.hpc_slurm.capacity import (
    AssociationLimit,
    NodeInfo,
    PartitionInfo,
    capabilities,
    parse_assoc_usage,
    parse_gres,
    parse_partitions,
    parse_sacctmgr_limits,
    parse_scontrol_nodes,
    parse_sinfo_json,
    parse_tres,
    quotas,
)
from flotilla.agents.hpc_slurm.config import SlurmConfig
from flotilla.agents.hpc_slurm.job import (
    JobInfo,
    failure_of,
    latest_by_name,
    parse_sacct_exits,
    parse_sacct_json,
    parse_scontrol_jobs,
    parse_squeue_json,
)
from flotilla.schemas import Gpu, QuotaUsage, WorkloadKind

META = {
    "plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"},
    "Slurm": {"version": {"major": 22, "micro": 8, "minor": 5}, "release": "22.05.8"},
}
HOME = "/var/tmp/flotilla-testbeds/slurm/state/home/hpcuser"
FAILED_NAME = "flotilla-531fbcde-6a62-45f5-9d2f-8678e417f864-1.job"


def _squeue_job(
    job_id: int, name: str, state: str, reason: str, exit_code: int, **extra: str
) -> dict[str, Any]:
    directory = f"{HOME}/flotilla-jobs/{name}"
    job = {
        "job_id": job_id,
        "name": name,
        "user_name": "hpcuser",
        "account": "flotilla",
        "partition": "cpu",
        "nodes": "vm",
        "job_state": state,
        "state_reason": reason,
        "exit_code": exit_code,
        "derived_exit_code": 0,
        "standard_output": f"{directory}/slurm-%j.out",
        "tres_alloc_str": "cpu=1,mem=128M,node=1,billing=1",
        "comment": f"flotilla:{name}",
    }
    return job | extra


SQUEUE = json.dumps(
    {
        "meta": META,
        "errors": [],
        "jobs": [
            _squeue_job(7, FAILED_NAME, "FAILED", "NonZeroExitCode", 768),
            _squeue_job(
                10, "flotilla-8b21c31f-d8da-4b79-bd9e-f1d08f18b71b-1.job", "CANCELLED", "None", 15
            ),
            _squeue_job(
                18,
                "flotilla-ab778048-fc62-458f-8a96-df4ec059b853-1.job",
                "COMPLETED",
                "None",
                0,
                partition="gpu",
                tres_alloc_str="cpu=1,mem=128M,node=1,billing=1,gres/gpu=1,gres/gpu:a100=1",
            ),
            _squeue_job(
                27,
                "flotilla-sample-1.job",
                "RUNNING",
                "None",
                0,
                account="fqsample",
                standard_output="",
                tres_alloc_str="cpu=2,mem=1G,node=1,billing=2",
                comment="",
            ),
            _squeue_job(
                28,
                "flotilla-sample-2.job",
                "PENDING",
                "BeginTime",
                0,
                nodes="",
                standard_output="",
                tres_alloc_str="",
                comment="",
            ),
        ],
    }
)

_SUCCESS = {"status": "SUCCESS", "return_code": 0}
SACCT = json.dumps(
    {
        "meta": {
            **META,
            "plugin": {"type": "openapi/dbv0.0.38", "name": "Slurm OpenAPI DB v0.0.38"},
        },
        "errors": [],
        "jobs": [
            {
                "job_id": 7,
                "name": FAILED_NAME,
                "user": "hpcuser",
                "account": "flotilla",
                "partition": "cpu",
                "nodes": "vm",
                # Slurm 22.05 really reports a failed job's exit code as SUCCESS/0 in JSON.
                "state": {"current": "FAILED", "reason": "None"},
                "exit_code": _SUCCESS,
                "derived_exit_code": _SUCCESS,
                "tres": {
                    "allocated": [
                        {"type": "cpu", "name": None, "id": 1, "count": 1},
                        {"type": "mem", "name": None, "id": 2, "count": 128},
                        {"type": "energy", "name": None, "id": 3, "count": None},
                        {"type": "node", "name": None, "id": 4, "count": 1},
                        {"type": "billing", "name": None, "id": 5, "count": 1},
                    ]
                },
            },
            {
                "job_id": 18,
                "name": "flotilla-ab778048-fc62-458f-8a96-df4ec059b853-1.job",
                "user": "hpcuser",
                "account": "flotilla",
                "partition": "gpu",
                "nodes": "vm",
                "state": {"current": "COMPLETED", "reason": "None"},
                "exit_code": _SUCCESS,
                "derived_exit_code": _SUCCESS,
                "tres": {
                    "allocated": [
                        {"type": "cpu", "name": None, "id": 1, "count": 1},
                        {"type": "mem", "name": None, "id": 2, "count": 128},
                        {"type": "node", "name": None, "id": 4, "count": 1},
                        {"type": "gres", "name": "gpu", "id": 1001, "count": 1},
                        {"type": "gres", "name": "gpu:a100", "id": 1002, "count": 1},
                    ]
                },
            },
        ],
    }
)
SCONTROL_JOB_FAILED = (
    f"JobId=7 JobName={FAILED_NAME} UserId=hpcuser(1001) GroupId=hpcuser(1001) "
    "MCS_label=N/A Priority=4294901753 Nice=0 Account=flotilla QOS=normal JobState=FAILED "
    "Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 "
    "ExitCode=3:0 RunTime=00:00:00 TimeLimit=00:05:00 TimeMin=N/A "
    "SubmitTime=2026-11-25T13:25:53 Partition=cpu AllocNode:Sid=localhost:26966 "
    "ReqNodeList=(null) ExcNodeList=(null) NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 "
    "NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=128M,node=1,billing=1 "
    "Socks/Node=* NtasksPerN:B:S:C=1:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=128M "
    f"Command=(null) WorkDir={HOME}/flotilla-jobs/{FAILED_NAME} "
    f"Comment=flotilla:{FAILED_NAME}  StdErr={HOME}/flotilla-jobs/{FAILED_NAME}/slurm-7.out "
    f"StdIn=/dev/null StdOut={HOME}/flotilla-jobs/{FAILED_NAME}/slurm-7.out Power= "
)
SCONTROL_JOB_CANCELLED = (
    "JobId=10 JobName=flotilla-8b21c31f-d8da-4b79-bd9e-f1d08f18b71b-1.job "
    "UserId=hpcuser(1001) GroupId=hpcuser(1001) Account=flotilla QOS=normal JobState=CANCELLED "
    "Reason=None Dependency=(null) ExitCode=0:15 Partition=cpu NodeList=vm "
    "TRES=cpu=1,mem=128M,node=1,billing=1 StdOut=/tmp/slurm-10.out Power= "
)
SINFO_NODE = {
    "architecture": "x86_64",
    "cores": 8,
    "cpus": 8,
    "features": "infiniband",
    "active_features": "infiniband",
    "gres": "gpu:a100:2",
    "gres_drained": "N/A",
    "gres_used": "gpu:a100:0(IDX:N/A)",
    "name": "vm",
    "address": "127.0.0.1",
    "hostname": "vm",
    "state": "mixed",
    "state_flags": [],
    "partitions": ["cpu", "gpu"],
    "real_memory": 16000,
    "reason": "",
    "tres": "cpu=8,mem=16000M,billing=8,gres/gpu=2,gres/gpu:a100=2",
    "slurmd_version": "22.05.8",
    "alloc_memory": 1024,
    "alloc_cpus": 2,
    "idle_cpus": 6,
}
SCONTROL_NODE = (
    "NodeName=vm Arch=x86_64 CoresPerSocket=8  CPUAlloc=0 CPUEfctv=8 CPUTot=8 CPULoad=0.35 "
    "AvailableFeatures=infiniband ActiveFeatures=infiniband Gres=gpu:a100:2 NodeAddr=127.0.0.1 "
    "NodeHostName=vm Version=22.05.8 OS=Linux 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0  "
    "RealMemory=16000 AllocMem=0 FreeMem=21121 Sockets=1 Boards=1 State=IDLE ThreadsPerCore=1 "
    "TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=cpu,gpu  "
    "BootTime=2026-11-25T12:59:42 CfgTRES=cpu=8,mem=16000M,billing=8,gres/gpu=2,gres/gpu:a100=2 "
    "AllocTRES= CapWatts=n/a"
)
SCONTROL_PARTITIONS = "\n".join(
    f"PartitionName={name} AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL "
    f"Default={default} QoS=N/A DefaultTime=NONE MaxNodes=UNLIMITED MaxTime={limit} MinNodes=0 "
    f"Nodes=vm State=UP TotalCPUs=8 TotalNodes=1 JobDefaults=(null) "
    "TRES=cpu=8,mem=16000M,node=1,billing=8,gres/gpu=2,gres/gpu:a100=2"
    for name, default, limit in (("cpu", "YES", "1-00:00:00"), ("gpu", "NO", "12:00:00"))
)
SACCTMGR = "flotilla|||\nflotilla|hpcuser||\nfqsample|||cpu=4,gres/gpu=1,mem=8G,node=2\n"
SACCTMGR += "fqsample|hpcuser||\n"
# scontrol show assoc_mgr flags=assoc accounts=fqsample (one job of 2 CPUs and 1 GiB running;
# the testbed does not enforce limits, so its own output says 0: the figures were set here).
ASSOC_MGR = """Current Association Manager state

Association Records

ClusterName=testbed Account=fqsample UserName= Partition= Priority=0 ID=5
    SharesRaw/Norm/Level/Factor=1/18446744073709551616.00/1/0.00
    ParentAccount=root(1) Lft=2 DefAssoc=No
    GrpJobs=N(1) GrpJobsAccrue=N(0)
    GrpTRES=cpu=4(2),mem=8192(1024),energy=N(0),node=2(1),billing=N(2),gres/gpu=1(0)
    GrpTRESMins=cpu=N(0),mem=N(0),energy=N(0),node=N(0),billing=N(0),gres/gpu=N(0)
ClusterName=testbed Account=fqsample UserName=hpcuser(1001) Partition= Priority=0 ID=6
    ParentAccount= Lft=3 DefAssoc=No
    GrpTRES=cpu=N(2),mem=N(1024),energy=N(0),node=N(1),billing=N(2),gres/gpu=N(0)
"""


def test_squeue_json_states_exit_codes_and_output_paths() -> None:
    """squeue's raw wait status becomes exit code and signal; %j in the output path is filled."""
    jobs = {job.job_id: job for job in parse_squeue_json(SQUEUE)}

    failed = jobs["7"]
    assert (failed.state, failed.exit_code, failed.signal) == ("FAILED", 3, None)
    assert failed.output == f"{HOME}/flotilla-jobs/{FAILED_NAME}/slurm-7.out"
    assert (jobs["10"].state, jobs["10"].exit_code, jobs["10"].signal) == ("CANCELLED", 0, 15)
    assert jobs["18"].succeeded
    assert "gres/gpu:a100=1" in (jobs["18"].tres or "")
    assert jobs["27"].is_active
    assert not jobs["27"].is_finished
    assert jobs["27"].output is None
    assert (jobs["28"].state, jobs["28"].reason) == ("PENDING", "BeginTime")


def test_sacct_json_jobs_and_allocated_tres() -> None:
    """sacct's jobs carry state, user and the allocated TRES, GRES by type included."""
    jobs = {job.job_id: job for job in parse_sacct_json(SACCT)}

    assert jobs["7"].state == "FAILED"
    assert jobs["7"].user == "hpcuser"
    assert jobs["18"].tres == "cpu=1,mem=128,node=1,gres/gpu=1,gres/gpu:a100=1"
    assert jobs["18"].succeeded


def test_sacct_text_exit_codes_correct_the_json() -> None:
    """``sacct -P -o JobID,ExitCode`` gives the exit code 22.05's JSON loses."""
    exits = parse_sacct_exits("7|3:0\n10|0:15\n18|0:0\n")
    assert exits == {"7": (3, None), "10": (0, 15), "18": (0, None)}
    [failed] = [j for j in parse_sacct_json(SACCT) if j.job_id == "7"]
    assert failed.with_exit(*exits["7"]).exit_code == 3


def test_scontrol_job_lines() -> None:
    """``scontrol -o show job`` lines parse, values with spaces and odd keys included."""
    failed, cancelled = parse_scontrol_jobs(f"{SCONTROL_JOB_FAILED}\n{SCONTROL_JOB_CANCELLED}\n")

    assert (failed.job_id, failed.name, failed.state) == ("7", FAILED_NAME, "FAILED")
    assert (failed.exit_code, failed.signal, failed.user) == (3, None, "hpcuser")
    assert failed.output == f"{HOME}/flotilla-jobs/{FAILED_NAME}/slurm-7.out"
    assert failed.tres == "cpu=1,mem=128M,node=1,billing=1"
    assert (cancelled.state, cancelled.exit_code, cancelled.signal) == ("CANCELLED", 0, 15)


def test_later_slurm_shapes_parse_too() -> None:
    """States as lists and numbers as set/number objects (Slurm 23.02 and later) are read."""
    text = json.dumps(
        {
            "jobs": [
                {
                    "job_id": 5,
                    "name": "n",
                    "user_name": "u",
                    "job_state": ["FAILED"],
                    "exit_code": {
                        "status": ["EXITED"],
                        "return_code": {"set": True, "infinite": False, "number": 2},
                        "signal": {"id": {"set": False, "infinite": False, "number": 0}},
                    },
                }
            ]
        }
    )
    [job] = parse_squeue_json(text)
    assert (job.state, job.exit_code, job.signal) == ("FAILED", 2, None)


@pytest.mark.parametrize("text", ["not json", '{"jobs": 3}', "[]"])
def test_unexpected_output_is_a_value_error(text: str) -> None:
    """Output that is not squeue's JSON raises ValueError (the driver reports the site)."""
    with pytest.raises(ValueError, match="squeue"):
        parse_squeue_json(text)


@pytest.mark.parametrize(
    ("state", "code", "retryable"),
    [
        ("FAILED", "job_failed", False),
        ("TIMEOUT", "timeout", False),
        ("CANCELLED", "cancelled", False),
        ("OUT_OF_MEMORY", "out_of_memory", False),
        ("NODE_FAIL", "node_fail", True),
        ("PREEMPTED", "preempted", True),
        ("BOOT_FAIL", "node_fail", True),
    ],
)
def test_final_states_map_to_failure_codes(state: str, code: str, retryable: bool) -> None:
    """Every final state other than COMPLETED with 0 is a failure with its own code."""
    job = JobInfo(job_id="9", name="t.job", state=state, exit_code=1, output="/o/slurm-9.out")
    error = failure_of(job, "job", "disk full\n")
    assert error is not None
    assert (error.code, error.retryable) == (code, retryable)
    assert "Slurm job 9" in error.message
    assert "exit code 1" in error.message
    assert "disk full" in error.message
    assert [ref.id for ref in error.resources] == ["9"]


def test_completed_with_zero_is_no_failure() -> None:
    """COMPLETED with exit code 0 is success; COMPLETED with a signal is not."""
    assert failure_of(JobInfo(job_id="1", name="n", state="COMPLETED", exit_code=0), "n") is None
    signalled = JobInfo(job_id="1", name="n", state="COMPLETED", exit_code=0, signal=9)
    assert failure_of(signalled, "n") is not None


def test_latest_job_of_each_name_wins() -> None:
    """Two jobs of one name (a resubmission by hand): the newest is followed."""
    jobs = [
        JobInfo(job_id="9", name="a", state="FAILED"),
        JobInfo(job_id="10", name="a", state="RUNNING"),
        JobInfo(job_id="2", name="b", state="PENDING"),
    ]
    assert {name: job.job_id for name, job in latest_by_name(jobs).items()} == {"a": "10", "b": "2"}


def test_sinfo_json_and_scontrol_nodes_agree() -> None:
    """The node from sinfo --json and from scontrol show node has the same size and GPUs."""
    [from_sinfo] = parse_sinfo_json(json.dumps({"meta": META, "errors": [], "nodes": [SINFO_NODE]}))
    [from_scontrol] = parse_scontrol_nodes(SCONTROL_NODE)

    for node in (from_sinfo, from_scontrol):
        assert (node.name, node.cpus, node.memory_mb) == ("vm", 8, 16000)
        assert node.gpus == {"a100": 2}
        assert node.features == ("infiniband",)
        assert node.partitions == ("cpu", "gpu")
        assert node.is_usable
    assert from_sinfo.alloc_cpus == 2
    assert not from_sinfo.is_idle
    assert from_scontrol.is_idle


def test_sinfo_json_without_a_node_list_asks_for_the_fallback() -> None:
    """Later sinfo JSON (no "nodes" list) raises ValueError, so scontrol is used instead."""
    with pytest.raises(ValueError, match="node list"):
        parse_sinfo_json(json.dumps({"sinfo": []}))


def test_partitions() -> None:
    """Partitions with their default flag and state."""
    assert parse_partitions(SCONTROL_PARTITIONS) == [
        PartitionInfo(name="cpu", is_default=True, is_up=True),
        PartitionInfo(name="gpu", is_default=False, is_up=True),
    ]


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [
        ("gpu:a100:2", {"a100": 2}),
        ("gpu:2", {None: 2}),
        ("gpu:a100:2(S:0-1),gpu:v100:1(IDX:0,1)", {"a100": 2, "v100": 1}),
        ("gpu:tesla:4(S:0),mps:400", {"tesla": 4}),
        ("(null)", {}),
        ("", {}),
    ],
)
def test_gres_strings(gres: str, gpus: dict[str | None, int]) -> None:
    """GPU counts by type from GRES strings, sockets and other GRES ignored."""
    assert parse_gres(gres) == gpus


def _config(**extra: object) -> SlurmConfig:
    return SlurmConfig.model_validate(
        {
            "login_host": "login",
            "user": "u",
            "key": {"env": "KEY"},
            "known_hosts": "/k",
            **extra,
        }
    )


def test_capabilities_of_the_testbed() -> None:
    """Two partitions on one node: two shapes with its size, GPUs and InfiniBand."""
    [node] = parse_scontrol_nodes(SCONTROL_NODE)
    found = capabilities([node], parse_partitions(SCONTROL_PARTITIONS), _config())

    assert found.workload_kinds == [WorkloadKind.BATCH_JOB]
    assert [shape.name for shape in found.shapes] == ["cpu", "gpu"]
    shape = found.shapes[0]
    assert (shape.cpus, shape.memory_mb, shape.available) == (8, 16000, 1)
    assert shape.gpu == Gpu(count=2, vendor="nvidia", model="a100")
    assert shape.infiniband
    assert shape.features == ["infiniband"]
    assert found.gpus == [Gpu(count=2, vendor="nvidia", model="a100")]
    assert found.infiniband


def test_capabilities_skip_broken_nodes_and_split_mixed_partitions() -> None:
    """Drained nodes and DOWN partitions are not offered; differing nodes give named shapes."""
    nodes = [
        NodeInfo(name="a", cpus=64, memory_mb=256000, partitions=("batch",)),
        NodeInfo(name="b", cpus=32, memory_mb=128000, gpus={"h100": 4}, partitions=("batch",)),
        NodeInfo(name="c", cpus=32, memory_mb=128000, partitions=("batch",), state="IDLE+DRAIN"),
        NodeInfo(name="d", cpus=8, memory_mb=8000, partitions=("maint",)),
        NodeInfo(name="e", cpus=8, memory_mb=8000, partitions=("dead",), state="DOWN*"),
    ]
    partitions = [
        PartitionInfo(name="batch"),
        PartitionInfo(name="maint", is_up=False),
        PartitionInfo(name="dead"),
    ]
    config = _config(gpu_types={"h100": {"vendor": "nvidia", "model": "H100"}})
    found = capabilities(nodes, partitions, config)

    assert [shape.name for shape in found.shapes] == [
        "batch/32c-128000m-4xh100",
        "batch/64c-256000m",
    ]
    assert found.shapes[0].gpu == Gpu(count=4, vendor="nvidia", model="H100")
    assert found.gpus == [Gpu(count=4, vendor="nvidia", model="H100")]
    assert not found.infiniband


def test_tres_lists() -> None:
    """TRES lists with memory units become numbers, memory in MB."""
    assert parse_tres("cpu=4,mem=8G,gres/gpu=1,node=2,billing=4") == {
        "cpu": 4,
        "mem": 8192,
        "gres/gpu": 1,
        "node": 2,
        "billing": 4,
    }


def test_quotas_from_association_limits() -> None:
    """An account's GrpTRES become its groups' quotas, with what the controller counts used."""
    limits = parse_sacctmgr_limits(SACCTMGR)
    used = parse_assoc_usage(ASSOC_MGR)
    assert limits == {"fqsample": {"cpu": 4, "mem": 8192, "gres/gpu": 1, "node": 2}}
    assert used["fqsample"]["cpu"] == 2

    config = _config(group_accounts={"physics": "fqsample", "biology": "flotilla"})
    found = quotas(
        config,
        [AssociationLimit(account="fqsample", limits=limits["fqsample"], used=used["fqsample"])],
    )

    assert set(found) == {
        QuotaUsage(resource="cores", limit=4, used=2, group="physics"),
        QuotaUsage(resource="ram_mb", limit=8192, used=1024, group="physics"),
        QuotaUsage(resource="gpus", limit=1, used=0, group="physics"),
        QuotaUsage(resource="instances", limit=2, used=1, group="physics"),
    }


def test_default_account_limits_do_not_bind_groups_with_their_own_account() -> None:
    """The default account's limit is site-wide; a group with its own account is unlimited."""
    config = _config(default_account="shared", group_accounts={"physics": "phys"})
    found = quotas(config, [AssociationLimit(account="shared", limits={"cpu": 16})])
    assert set(found) == {
        QuotaUsage(resource="cores", limit=None, used=0, group="physics"),
        QuotaUsage(resource="cores", limit=16, used=0, group=None),
    }
