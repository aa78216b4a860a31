"""Batch-job properties and node names, as the local and Slurm sites share them."""

from __future__ import annotations

import subprocess
import time

import psutil
import pytest

from flotilla.agents.batch import BatchJob, in_dependency_order, safe_name
from flotilla.agents.driver import ProvisioningError
from flotilla.agents.local import process
from flotilla.agents.local.record import RunRecord
from flotilla.schemas import PlannedNode, WorkloadKind


def node(name: str, *depends_on: str, **properties: object) -> PlannedNode:
    return PlannedNode(
        name=name,
        kind=WorkloadKind.BATCH_JOB,
        depends_on=list(depends_on),
        properties={"command": ["true"], **properties},
    )


def test_distinct_node_names_stay_distinct_once_made_safe() -> None:
    assert safe_name("prepare_data") == "prepare_data"
    assert safe_name("a b") != safe_name("a_b")
    assert safe_name("a b").startswith("a_b-")
    assert safe_name("../etc") != safe_name("___etc")
    assert "/" not in safe_name("../etc")


def test_dependencies_come_first_whatever_the_template_order() -> None:
    ordered = in_dependency_order([node("post", "pre"), node("pre")])
    assert [n.name for n in ordered] == ["pre", "post"]
    with pytest.raises(ProvisioningError, match="cycle"):
        in_dependency_order([node("a", "b"), node("b", "a")])


def test_a_nul_byte_is_refused_naming_the_node() -> None:
    with pytest.raises(ProvisioningError, match=r"node bad: .*NUL") as raised:
        BatchJob.of(node("bad", environment={"X": "a\x00b"}))
    assert raised.value.code == "invalid_job"


def test_a_reused_session_id_is_not_taken_for_a_finished_job() -> None:
    """A runner's id now leading an unrelated session: release must not touch that session."""
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        time.sleep(0.2)
        stale = RunRecord(pid=stranger.pid, create_time=time.time() - 86400, started_at=0)
        assert process.session_processes([stale]) == []
        alive = RunRecord(
            pid=stranger.pid,
            create_time=psutil.Process(stranger.pid).create_time(),
            started_at=0,
        )
        assert [p.pid for p in process.session_processes([alive])] == [stranger.pid]
    finally:
        stranger.kill()
        stranger.wait()
