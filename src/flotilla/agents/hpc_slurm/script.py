"""The sbatch script of one batch-job node, rendered from the site-specific plan.

Everything a template controls reaches the shell quoted (``shlex.quote``): the command and
its arguments, environment values and the working directory. A job script given by the
template travels base64-encoded and is written to the job's directory before it runs.
``#SBATCH`` lines carry only values Flotilla checked (names, numbers, paths without spaces).
The script is sent on sbatch's stdin, so nothing of it appears on a command line.
"""

from __future__ import annotations

import base64
import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field

from flotilla.agents import batch
from flotilla.agents.driver import ProvisioningError, attempt_tag
from flotilla.agents.hpc_slurm.capacity import gpu_model
from flotilla.agents.hpc_slurm.config import SLURM_NAME, SlurmConfig
from flotilla.schemas import Gpu, PlannedNode, Provision

SCRIPT_FILE = "job-script"
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./+-]*$")
_HOME = re.compile(r"^(?:~|\$HOME|\$\{HOME\})(?=/|$)/?")
_END = "FLOTILLA_SCRIPT_END"  # '_' is not in the base64 alphabet: the body cannot end early


class BatchJob(batch.BatchJob):
    """The properties of a batch-job node a Slurm site uses; unknown ones are ignored."""

    container_image: str | None = Field(
        default=None, min_length=1, description="Image the job runs in (Apptainer)."
    )
    partition: str | None = Field(default=None, pattern=SLURM_NAME)
    account: str | None = Field(default=None, pattern=SLURM_NAME)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobScript:
    """What is submitted for one node: the job's name, directory, output file and script."""

    node: str
    name: str
    directory: str
    output: str
    text: str

    def output_of(self, job_id: str) -> str:
        """The output file of the submitted job."""
        return self.output.replace("%j", job_id)


def job_name(tag: str, node: str) -> str:
    """The Slurm job name of one node of an attempt (``<attempt tag>.<node>``)."""
    return f"{tag}.{batch.safe_name(node)}"


def jobs_directory(config: SlurmConfig, home: str) -> str:
    """The absolute directory under which each job gets its own directory.

    Raises:
        ProvisioningError: the directory has characters sbatch options cannot carry.
    """
    base = config.jobs_directory
    path = base if base.startswith("/") else f"{home.rstrip('/')}/{base}"
    if not _SAFE_PATH.match(path):
        raise ProvisioningError(
            f"the jobs directory {path!r} has spaces or special characters; set "
            "slurm.jobs_directory to an absolute path without them",
            code="invalid_site_config",
        )
    return path


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptRequest:
    """Everything one node's script depends on besides the node itself."""

    order: Provision
    config: SlurmConfig
    jobs_directory: str
    gpu_types: Sequence[str] = ()
    after: Sequence[str] = ()


def render(node: PlannedNode, request: ScriptRequest) -> JobScript:
    """The sbatch script of one batch-job node.

    Raises:
        ProvisioningError: the node's properties are invalid, or it asks for GPUs the site
            does not have (``invalid_job``, ``no_valid_host``).
    """
    job = BatchJob.of(node)
    order = request.order
    name = job_name(attempt_tag(order.deployment_id, order.attempt), node.name)
    directory = f"{request.jobs_directory}/{name}"
    output = f"{directory}/slurm-%j.out"
    options = [
        *_options(node, job, request),
        f"--job-name={name}",
        f"--comment=flotilla:{name}",
        f"--chdir={directory}",
        f"--output={output}",
    ]
    if request.after:
        options += [f"--dependency=afterok:{':'.join(request.after)}", "--kill-on-invalid-dep=yes"]
    lines = ["#!/bin/bash", *(f"#SBATCH {option}" for option in options), ""]
    lines.append(
        f"# Submitted by Flotilla: deployment {order.deployment_id}, attempt {order.attempt}."
    )
    variables = {
        "FLOTILLA_SITE": order.site,
        "FLOTILLA_DEPLOYMENT_ID": order.deployment_id,
        "FLOTILLA_ATTEMPT": str(order.attempt),
        "FLOTILLA_NODE": node.name,
        **job.environment,
    }
    lines += [f"export {key}={shlex.quote(value)}" for key, value in variables.items()]
    workdir = job.working_directory or job.directory
    if workdir:
        lines.append(_change_directory(workdir))
    lines += _run(job, directory, request.config)
    return JobScript(
        node=node.name, name=name, directory=directory, output=output, text="\n".join(lines) + "\n"
    )


def _options(node: PlannedNode, job: BatchJob, request: ScriptRequest) -> list[str]:
    config = request.config
    resources = node.resources
    options = []
    partition = job.partition or (node.shape.split("/")[0] if node.shape else None)
    partition = partition or config.default_partition
    if partition:
        options.append(f"--partition={partition}")
    plan = request.order.plan
    account = job.account if config.allow_template_account and job.account else None
    account = account or config.account_for(plan.group, plan.account)
    if account:
        options.append(f"--account={account}")
    options += [
        f"--nodes={max(node.count, 1)}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={max(math.ceil(resources.cpus), 1)}",
    ]
    if resources.memory_mb > 0:
        options.append(f"--mem={resources.memory_mb}M")
    if resources.gpu is not None:
        options.append(f"--gres={gres(resources.gpu, request.gpu_types, config, node.name)}")
    if resources.infiniband and config.infiniband_constraint:
        options.append(f"--constraint={config.infiniband_constraint}")
    seconds = job.wall_time_seconds
    if seconds is None and config.default_wall_time is not None:
        seconds = config.default_wall_time.total_seconds()
    if seconds is not None:
        options.append(f"--time={slurm_time(seconds)}")
    return options


def gres(gpu: Gpu, types: Sequence[str], config: SlurmConfig, node: str) -> str:
    """The ``--gres`` value for ``gpu`` per node: ``gpu:<type>:<count>`` or ``gpu:<count>``.

    Raises:
        ProvisioningError: the site has no GPU type of the wanted model or vendor.
    """
    if gpu.model is None and gpu.vendor is None:
        return f"gpu:{gpu.count}"
    matching = [kind for kind in types if _gpu_matches(gpu, kind, config)]
    if not types:
        return f"gpu:{gpu.count}"  # untyped GRES: Slurm cannot tell models apart
    if not matching:
        wanted = " ".join(part for part in (gpu.vendor, gpu.model) if part)
        raise ProvisioningError(
            f"node {node}: this site has no {wanted} GPUs (GRES types: {', '.join(types)})",
            code="no_valid_host",
        )
    if len(matching) == len(types) and gpu.model is None:
        return f"gpu:{gpu.count}"
    return f"gpu:{matching[0]}:{gpu.count}"


def _gpu_matches(gpu: Gpu, kind: str, config: SlurmConfig) -> bool:
    vendor, model = gpu_model(kind, config)
    if gpu.vendor and (vendor or "").casefold() != gpu.vendor.casefold():
        return False
    names = {kind.casefold(), (model or "").casefold()}
    return gpu.model is None or gpu.model.casefold() in names


def slurm_time(seconds: float) -> str:
    """A time limit as Slurm reads it: ``days-hours:minutes:seconds``."""
    days, rest = divmod(max(math.ceil(seconds), 1), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"


def _change_directory(workdir: str) -> str:
    home = _HOME.match(workdir)
    if home is not None:
        rest = workdir[home.end() :]
        target = f'"$HOME"/{shlex.quote(rest)}' if rest else '"$HOME"'
    elif workdir.startswith("/"):
        target = shlex.quote(workdir)
    else:
        target = f'"$HOME"/{shlex.quote(workdir)}'
    failed = shlex.quote(f"flotilla: cannot enter the working directory {workdir}")
    return f"cd -- {target} || {{ echo {failed} >&2; exit 1; }}"


def _run(job: BatchJob, directory: str, config: SlurmConfig) -> list[str]:
    container = _container(job.container_image, config)
    if job.script is None:
        return [f"exec {shlex.join([*container, *job.command, *job.arguments])}"]
    path = f"{directory}/{SCRIPT_FILE}"
    encoded = base64.encodebytes(job.script.encode("utf-8")).decode("ascii").rstrip("\n")
    interpreter = [] if job.script.startswith("#!") else ["/bin/bash"]
    return [
        f"base64 -d > {shlex.quote(path)} <<'{_END}'",
        encoded,
        _END,
        f"chmod 700 {shlex.quote(path)}",
        f"exec {shlex.join([*container, *interpreter, path, *job.arguments])}",
    ]


def _container(image: str | None, config: SlurmConfig) -> list[str]:
    """The words that run a command in the job's image; none without an image."""
    if image is None:
        return []
    # A registry reference (ubuntu:22.04) is pulled from Docker Hub; paths and URIs stay.
    reference = image if image.startswith("/") or "://" in image else f"docker://{image}"
    return [*config.container_command, reference]
