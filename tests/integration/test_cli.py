"""The ``flotilla`` command as a user runs it: a real process against a running gateway."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from flotilla.agents.config import AgentConfig
from flotilla.settings import SchedulerSettings, Settings
from flotilla.stack import Stack, embedded_slas, memory_buses

pytestmark = pytest.mark.timeout(180)

EXAMPLES = Path(__file__).parents[2] / "examples"
SITES = ("local-1", "local-2")


@dataclass
class Run:
    code: int
    out: str
    err: str


async def flotilla(*args: str, cwd: Path | None = None) -> Run:
    """Run the CLI in its own process, as a user would."""
    env = {**os.environ, "FLOTILLA_LOG__LEVEL": "warning", "COLUMNS": "200"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flotilla",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[str]:
    """Flotilla in this process on the memory bus and SQLite; yields the gateway URL."""
    store = f"sqlite+aiosqlite:///{tmp_path / 'flotilla.db'}"
    settings = Settings(scheduler=SchedulerSettings(store_url=store))  # type: ignore[arg-type]
    sites = [
        AgentConfig.model_validate(
            {"site": s, "kind": "local", "state_dir": str(tmp_path / s), "lease_interval": 1}
        )
        for s in SITES
    ]
    async with Stack(
        settings, buses=memory_buses(), sites=sites, slas=embedded_slas(SITES), port=0
    ) as stack:
        await stack.wait_for_sites(SITES)
        yield stack.url


async def test_deploy_wait_status_list_events_delete(gateway: str) -> None:
    url = ("--url", gateway)
    deployed = await flotilla(
        "deploy",
        str(EXAMPLES / "hello-batch.yaml"),
        "--input",
        "greeting=from the cli",
        "--wait",
        *url,
    )
    assert deployed.code == 0, deployed.err
    assert "CREATE_COMPLETE" in deployed.out
    assert 'output greeting = "from the cli"' in deployed.out
    deployment_id = deployed.out.split()[1]

    status = await flotilla("status", deployment_id, "--json", *url)
    view = json.loads(status.out)
    assert view["status"] == "CREATE_COMPLETE"
    assert view["outputs"]["hello_exit_code"] == 0
    why = await flotilla("status", deployment_id, "--why", *url)
    chosen = view["attempts"][0]["site"]
    assert f"attempt 1 at {chosen}: succeeded" in why.out
    assert f"    {chosen}: " in why.out
    assert "SLA preference" in why.out

    listed = await flotilla("list", *url)
    assert deployment_id in listed.out
    assert "1 of 1" in listed.out

    events = await flotilla("events", deployment_id, "--json", *url)
    types = [json.loads(line)["type"] for line in events.out.splitlines()]
    assert types[0] == "flotilla.deployment.status_changed"
    assert "flotilla.deployment.provisioned" in types

    sites = await flotilla("sites", "--json", *url)
    assert sorted(item["site"] for item in json.loads(sites.out)["items"]) == list(SITES)

    deleted = await flotilla("delete", deployment_id, "--wait", *url)
    assert deleted.code == 0, deleted.err
    assert "DELETE_COMPLETE" in deleted.out


async def test_a_failed_deployment_exits_non_zero_with_its_causes(gateway: str) -> None:
    run = await flotilla("deploy", str(EXAMPLES / "failing-batch.yaml"), "--wait", "--url", gateway)
    assert run.code == 1
    assert "CREATE_FAILED" in run.out
    assert run.out.count("job_failed") >= 2


async def test_errors_are_one_line(gateway: str, tmp_path: Path) -> None:
    missing = await flotilla("status", "no-such-deployment", "--url", gateway)
    assert missing.code == 1
    assert missing.err.strip().startswith("error: 404")
    assert len(missing.err.strip().splitlines()) == 1

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "tosca_definitions_version: tosca_simple_yaml_1_3\n"
        "topology_template:\n  node_templates:\n    x:\n      type: tosca.nodes.Nope\n"
    )
    refused = await flotilla("deploy", str(bad), "--url", gateway)
    assert refused.code == 1
    assert "x" in refused.err
    assert "Traceback" not in refused.err

    away = await flotilla("list", "--url", "http://127.0.0.1:9")
    assert away.code == 2
    assert away.err.strip().startswith("error: cannot reach the gateway")
    assert len(away.err.strip().splitlines()) == 1


async def test_site_file_errors_name_the_field(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"site": "Bad Name", "kind": "local", "local": {"max_jobz": 1}}))
    run = await flotilla("agent", "--config", str(site), "--check")
    assert run.code == 1
    assert "site" in run.err
    assert len(run.err.strip().splitlines()) == 1

    site.write_text(yaml.safe_dump({"site": "ws-1", "kind": "local", "local": {"max_jobz": 1}}))
    run = await flotilla("agent", "--config", str(site), "--check")
    assert run.code == 1
    assert "max_jobz" in run.err

    site.write_text(yaml.safe_dump({"site": "ws-1", "kind": "local", "local": {"max_jobs": 2}}))
    run = await flotilla("agent", "--config", str(site), "--check")
    assert run.code == 0, run.err
    assert "valid" in run.out


async def test_up_runs_the_example_to_completion(tmp_path: Path) -> None:
    """The README's first command, minus the virtualenv: the example reaches CREATE_COMPLETE."""
    run = await flotilla(
        "up",
        "--exit",
        "--port",
        "0",
        "--state-dir",
        str(tmp_path / "state"),
        "--deploy",
        str(EXAMPLES / "hello-batch.yaml"),
        cwd=tmp_path,
    )
    assert run.code == 0, run.err
    assert "Flotilla is up at http://127.0.0.1:" in run.out
    assert "CREATE_COMPLETE" in run.out
    assert "hello_exit_code = 0" in run.out


@pytest.mark.parametrize("site_file", sorted(EXAMPLES.glob("*-site.yaml")), ids=lambda p: p.name)
async def test_example_site_files_are_valid(site_file: Path) -> None:
    """The site files the README points operators at pass ``flotilla agent --check``."""
    run = await flotilla("agent", "--config", str(site_file), "--check")
    assert run.code == 0, run.err
    assert "is valid" in run.out
