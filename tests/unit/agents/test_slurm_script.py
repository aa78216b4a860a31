"""Rendering the sbatch script of a batch-job node: directives, quoting, GPUs, INDIGO's Qcg.Job."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import JsonValue

from flotilla.agents.driver import ProvisioningError
from flotilla.agents.hpc_slurm.config import SlurmConfig
from flotilla.agents.hpc_slurm.script import (
    BatchJob,
    ScriptRequest,
    gres,
    job_name,
    jobs_directory,
    render,
    slurm_time,
)
from flotilla.scheduler.tosca import TemplateParser
from flotilla.schemas import Gpu, PlannedNode, Provision, Resources, SitePlan, WorkloadKind

DEPLOYMENT = "0b5c3f3e-9a0e-4c43-9d0c-6c1f1a2b3c4d"
CORPUS = Path("/work/shared/tosca-corpus/templates/indigo-dc-tosca-types/examples/qcg-job.yaml")
EXAMPLES = Path(__file__).parents[3] / "examples"


def _config(**extra: Any) -> SlurmConfig:
    values = {"login_host": "login", "user": "u", "key": {"env": "K"}, "known_hosts": "/k"}
    return SlurmConfig.model_validate(values | extra)


def _node(properties: dict[str, JsonValue], **fields: Any) -> PlannedNode:
    return PlannedNode(name="job", kind=WorkloadKind.BATCH_JOB, properties=properties, **fields)


def _order(*nodes: PlannedNode, group: str = "physics", account: str | None = None) -> Provision:
    return Provision(
        deployment_id=DEPLOYMENT,
        site="hpc",
        attempt=2,
        idempotency_key="k",
        plan=SitePlan(nodes=list(nodes), group=group, account=account),
        owner="o",
    )


def _request(order: Provision, config: SlurmConfig | None = None, **extra: Any) -> ScriptRequest:
    return ScriptRequest(
        order=order, config=config or _config(), jobs_directory="/home/u/flotilla-jobs", **extra
    )


def _directives(text: str) -> list[str]:
    return [
        line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH")
    ]


def test_directives_from_the_plan() -> None:
    """Partition, account, nodes, CPUs, memory, GPUs, time, name, comment and output are set."""
    node = _node(
        {"command": ["hostname"], "wall_time_seconds": 5400},
        count=2,
        shape="gpu",
        resources=Resources(
            cpus=3.5, memory_mb=2048, gpu=Gpu(count=2, model="A100"), infiniband=True
        ),
    )
    order = _order(node)
    config = _config(group_accounts={"physics": "phys-hpc"})

    script = render(node, _request(order, config, gpu_types=("a100", "v100"), after=("41", "42")))

    name = f"flotilla-{DEPLOYMENT}-2.job"
    assert script.name == name == job_name(f"flotilla-{DEPLOYMENT}-2", "job")
    assert script.directory == f"/home/u/flotilla-jobs/{name}"
    assert _directives(script.text) == [
        "--partition=gpu",
        "--account=phys-hpc",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=4",
        "--mem=2048M",
        "--gres=gpu:a100:2",
        "--constraint=infiniband",
        "--time=0-01:30:00",
        f"--job-name={name}",
        f"--comment=flotilla:{name}",
        f"--chdir=/home/u/flotilla-jobs/{name}",
        f"--output=/home/u/flotilla-jobs/{name}/slurm-%j.out",
        "--dependency=afterok:41:42",
        "--kill-on-invalid-dep=yes",
    ]
    assert script.text.startswith("#!/bin/bash\n")
    assert script.text.rstrip().endswith("exec hostname")
    assert script.output_of("77") == f"/home/u/flotilla-jobs/{name}/slurm-77.out"


def test_partition_and_account_precedence() -> None:
    """Template partition > chosen shape > site default; plan account > group map > default."""
    config = _config(
        default_partition="batch", default_account="shared", group_accounts={"g": "ga"}
    )
    cases = [
        (_node({"command": ["x"], "partition": "debug"}, shape="gpu/8c"), None, "g", "debug", "ga"),
        (_node({"command": ["x"]}, shape="gpu/8c-1000m"), None, "g", "gpu", "ga"),
        (_node({"command": ["x"]}), "plan-acct", "g", "batch", "plan-acct"),
        (_node({"command": ["x"], "account": "mine"}), None, "other", "batch", "shared"),
    ]
    for node, account, group, partition, charged in cases:
        script = render(node, _request(_order(node, group=group, account=account), config))
        assert f"--partition={partition}" in _directives(script.text)
        assert f"--account={charged}" in _directives(script.text)


def test_template_account_only_when_the_site_allows_it() -> None:
    """A template's own account is honoured only with allow_template_account."""
    node = _node({"command": ["x"], "account": "mine"})
    config = _config(default_account="shared", allow_template_account=True)
    assert "--account=mine" in _directives(render(node, _request(_order(node), config)).text)


def test_no_optional_directives_without_values() -> None:
    """Without memory, GPUs, time, partition or account, Slurm's defaults apply."""
    node = _node({"command": ["x"]})
    options = _directives(render(node, _request(_order(node))).text)
    assert not [
        o for o in options if o.split("=")[0] in ("--mem", "--gres", "--time", "--partition")
    ]
    assert not [o for o in options if o.startswith("--account")]


def test_default_wall_time() -> None:
    """A job without a wall time gets the site's default."""
    node = _node({"command": ["x"]})
    config = _config(default_wall_time=3600)
    assert "--time=0-01:00:00" in _directives(render(node, _request(_order(node), config)).text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1, "0-00:00:01"), (59.2, "0-00:01:00"), (300, "0-00:05:00"), (90061, "1-01:01:01")],
)
def test_time_limits(seconds: float, text: str) -> None:
    """Wall times become days-hours:minutes:seconds, rounded up."""
    assert slurm_time(seconds) == text


@pytest.mark.parametrize(
    ("gpu", "types", "expected"),
    [
        (Gpu(count=1), ("a100",), "gpu:1"),
        (Gpu(count=2, model="a100"), ("a100", "v100"), "gpu:a100:2"),
        (Gpu(count=2, model="A100"), ("a100",), "gpu:a100:2"),
        (Gpu(count=1, vendor="NVIDIA"), ("a100", "v100"), "gpu:1"),
        (Gpu(count=1, vendor="nvidia"), ("a100", "mi250"), "gpu:a100:1"),
        (Gpu(count=1, model="V100"), (), "gpu:1"),
    ],
)
def test_gres(gpu: Gpu, types: tuple[str, ...], expected: str) -> None:
    """GPUs become GRES with the site's own type name when a model or vendor is asked for."""
    assert gres(gpu, types, _config(), "job") == expected


def test_gres_of_a_model_the_site_lacks() -> None:
    """A model no GRES type matches fails with no_valid_host, naming the types there are."""
    with pytest.raises(ProvisioningError, match="no H100 GPUs") as caught:
        gres(Gpu(count=1, model="H100"), ("a100",), _config(), "job")
    assert caught.value.code == "no_valid_host"


def test_gres_model_from_the_site_file() -> None:
    """gpu_types maps a template's model name onto the GRES type."""
    config = _config(gpu_types={"tesla": {"vendor": "nvidia", "model": "Tesla V100"}})
    assert gres(Gpu(count=1, model="tesla v100"), ("tesla",), config, "job") == "gpu:tesla:1"


@pytest.mark.parametrize(
    ("properties", "problem"),
    [
        ({}, "give a command or a script"),
        ({"command": ["x"], "environment": {"BAD-NAME": "1"}}, "not a valid environment variable"),
        ({"command": ["x"], "environment": {"A B": "1"}}, "not a valid environment variable"),
        ({"command": ["x"], "partition": "cpu\n#SBATCH --uid=0"}, "partition"),
        ({"command": ["x"], "account": "a b"}, "account"),
        ({"command": "x"}, "command"),
    ],
)
def test_invalid_properties(properties: dict[str, JsonValue], problem: str) -> None:
    """Malformed job properties fail with invalid_job, naming the property."""
    with pytest.raises(ProvisioningError, match=problem) as caught:
        BatchJob.of(_node(properties))
    assert caught.value.code == "invalid_job"


def test_jobs_directory() -> None:
    """Relative jobs directories are under the home; paths sbatch cannot carry are refused."""
    assert jobs_directory(_config(), "/home/u") == "/home/u/flotilla-jobs"
    assert jobs_directory(_config(jobs_directory="/scratch/f/"), "/home/u") == "/scratch/f"
    with pytest.raises(ProvisioningError) as caught:
        jobs_directory(_config(), "/home/my user")
    assert caught.value.code == "invalid_site_config"


HOSTILE = ["$(touch {m})", "`touch {m}`", "; touch {m}", "a'b\"c\\d", "line\nbreak", "$HOME", "*"]


def _run_locally(node: PlannedNode, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the rendered script with bash (the #SBATCH lines are comments to it)."""
    order = _order(node)
    request = ScriptRequest(order=order, config=_config(), jobs_directory=str(tmp_path / "jobs"))
    script = render(node, request)
    Path(script.directory).mkdir(parents=True)
    return subprocess.run(
        ["bash", "-s"],
        input=script.text,
        capture_output=True,
        text=True,
        check=False,
        cwd=script.directory,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=30,
    )


def test_arguments_and_environment_stay_text(tmp_path: Path) -> None:
    """Command substitutions, quotes, globs and newlines in template values are not executed."""
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    hostile = [value.format(m=marker) for value in HOSTILE]
    node = _node(
        {
            "command": ["printf", "%s|"],
            "arguments": list[JsonValue](hostile),
            "environment": {"HOSTILE": hostile[0], "NUMBER": 7, "FLAG": True},
        }
    )
    done = _run_locally(node, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "|".join(hostile) + "|"
    assert not marker.exists()

    env_node = _node(
        {
            "command": ["sh", "-c", 'printf "%s|%s|%s" "$HOSTILE" "$NUMBER" "$FLAG"'],
            "environment": {"HOSTILE": hostile[0], "NUMBER": 7, "FLAG": True},
        }
    )
    done = _run_locally(env_node, tmp_path / "env")
    assert done.stdout == f"{hostile[0]}|7|true"
    assert not marker.exists()


def test_working_directory_is_quoted_and_home_relative(tmp_path: Path) -> None:
    """${HOME} and relative working directories are under the home; $(...) stays literal."""
    (tmp_path / "data dir").mkdir()
    done = _run_locally(_node({"command": ["pwd"], "working_directory": "data dir"}), tmp_path)
    assert done.stdout.strip() == str(tmp_path / "data dir")
    done = _run_locally(_node({"command": ["pwd"], "directory": "${HOME}"}), tmp_path / "h")
    assert done.stdout.strip() == str(tmp_path / "h")
    marker = tmp_path / "pwned"
    node = _node({"command": ["pwd"], "working_directory": f"$(touch {marker})"})
    done = _run_locally(node, tmp_path / "w")
    assert done.returncode == 1
    assert "cannot enter the working directory $(touch" in done.stderr
    assert not marker.exists()


def test_a_script_body_runs_from_the_job_directory(tmp_path: Path) -> None:
    """A template's script is written to the job directory and run with its arguments."""
    body = '#!/bin/sh\nEOF\nFLOTILLA_SCRIPT_END\necho "args: $*" "$FLOTILLA_NODE"\n'
    done = _run_locally(_node({"script": body, "arguments": ["a b", "$(id)"]}), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "args: a b $(id) job"

    shell_body = 'echo "no interpreter line: $1"'
    done = _run_locally(_node({"script": shell_body, "arguments": ["x"]}), tmp_path / "b")
    assert done.stdout.strip() == "no interpreter line: x"


def test_flotilla_variables_are_set(tmp_path: Path) -> None:
    """Jobs see FLOTILLA_SITE, FLOTILLA_DEPLOYMENT_ID, FLOTILLA_ATTEMPT and FLOTILLA_NODE."""
    command = 'echo "$FLOTILLA_SITE $FLOTILLA_DEPLOYMENT_ID $FLOTILLA_ATTEMPT $FLOTILLA_NODE"'
    done = _run_locally(_node({"command": ["sh", "-c", command]}), tmp_path)
    assert done.stdout.strip() == f"hpc {DEPLOYMENT} 2 job"


async def _planned(path: Path, inputs: dict[str, str]) -> list[PlannedNode]:
    async with TemplateParser() as parser:
        requirements = await parser.requirements(await asyncio.to_thread(path.read_text), inputs)
    fields = ("name", "kind", "count", "resources", "properties")
    return [
        PlannedNode.model_validate({key: node[key] for key in fields})
        for node in requirements.as_json()["nodes"]
    ]


async def test_indigo_qcg_job_renders_a_valid_script(tmp_path: Path) -> None:
    """INDIGO's Qcg.Job example becomes a script bash accepts, with its queue, cores and time."""
    [node] = await _planned(CORPUS, {"total_cores": "4", "cores_per_node": "4", "num_gpus": "1"})
    script = render(node, _request(_order(node), gpu_types=("a100",)))
    options = _directives(script.text)
    assert "--partition=standard" in options
    assert "--cpus-per-task=4" in options
    assert "--mem=1024M" in options
    assert "--gres=gpu:1" in options
    assert "--time=0-00:02:00" in options
    assert "export NUM_GPUS=1" in script.text
    assert 'cd -- "$HOME" ||' in script.text
    assert script.text.rstrip().endswith("exec printenv")
    syntax = await asyncio.to_thread(
        subprocess.run, ["bash", "-n"], input=script.text, text=True, check=False
    )
    assert syntax.returncode == 0


async def test_hello_batch_example_renders(tmp_path: Path) -> None:
    """The Flotilla BatchJob example runs as rendered: greeting, steps and its result file."""
    [node] = await _planned(EXAMPLES / "hello-batch.yaml", {})
    done = _run_locally(node, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hello from Flotilla", "step 1", "step 2", "step 3"]


def test_a_container_image_runs_the_command_in_apptainer() -> None:
    """A job with an image runs its command through the site's container command."""
    node = _node({"command": ["python3", "-V"], "container_image": "python:3.12-slim"})
    text = render(node, _request(_order(node))).text
    assert text.rstrip().endswith("exec apptainer exec docker://python:3.12-slim python3 -V")
    config = _config(container_command=["singularity", "exec", "--nv"])
    node = _node({"command": ["nvidia-smi"], "container_image": "/images/cuda.sif"})
    text = render(node, _request(_order(node), config)).text
    assert text.rstrip().endswith("exec singularity exec --nv /images/cuda.sif nvidia-smi")
