"""What a completed attempt reports: each job's outputs, and the template's outputs filled in.

Keys follow the local site's (``<node>_exit_code``, ``<node>_work_dir``,
``<node>_stdout_tail``), so a client reads the same names wherever a job ran; a Slurm job
adds ``<node>_job_id``, ``<node>_state`` and ``<node>_output_path``.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import JsonValue

from flotilla.agents.hpc_slurm.job import JobInfo

ATTRIBUTES = ("job_id", "state", "exit_code", "output_path", "work_dir", "stdout_tail")


def job_attributes(info: JobInfo, *, output_path: str, tail: str) -> dict[str, JsonValue]:
    """The attributes of one finished job (what ``get_attribute`` can ask for)."""
    return {
        "job_id": info.job_id,
        "state": info.state,
        "exit_code": info.exit_code or 0,
        "output_path": output_path,
        "work_dir": output_path.rsplit("/", 1)[0],
        "stdout_tail": tail,
    }


def attempt_outputs(
    template: Mapping[str, JsonValue], jobs: Mapping[str, Mapping[str, JsonValue]]
) -> dict[str, JsonValue]:
    """``<node>_<attribute>`` for every job, then the template's outputs, functions resolved."""
    outputs: dict[str, JsonValue] = {
        f"{node}_{name}": value
        for node, attributes in jobs.items()
        for name, value in attributes.items()
    }
    outputs |= {key: _resolve(value, jobs) for key, value in template.items()}
    return outputs


def _resolve(value: JsonValue, jobs: Mapping[str, Mapping[str, JsonValue]]) -> JsonValue:
    """A template output with ``get_attribute: [node, attribute]`` of a job filled in."""
    if isinstance(value, dict):
        function = value.get("get_attribute")
        if len(value) == 1 and isinstance(function, list) and len(function) == 2:
            node, attribute = (str(part) for part in function)
            job = jobs.get(node)
            if job is not None and attribute in job:
                return job[attribute]
        return {key: _resolve(item, jobs) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, jobs) for item in value]
    return value
