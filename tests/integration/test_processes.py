"""Flotilla as separate processes, as in production: scheduler, gateway and an agent.

Each part is started with its own command on RabbitMQ and PostgreSQL (or SQLite),
configured only by ``FLOTILLA_*`` variables and files, and a deployment goes through all of
them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from flotilla.broker import DELIVERY_POLICY, site_topology
from flotilla.bus.rabbitmq import RabbitBus
from flotilla.client import FINAL, FlotillaClient
from tests.integration.support import broker

pytestmark = [pytest.mark.rabbitmq, pytest.mark.e2e, pytest.mark.timeout(240)]

EXAMPLES = Path(__file__).parents[2] / "examples"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def process(*args: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m flotilla ARGS`` running for the block, its output in ``log``."""
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "flotilla", *args], env=env, stdout=out, stderr=out
        )
        try:
            yield child
        finally:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


async def until_ready(url: str, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout), httpx.AsyncClient() as http:
        while True:
            try:
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)


async def test_scheduler_gateway_and_agent_as_separate_processes(
    vhost_url: str, database: str, tmp_path: Path
) -> None:
    """On PostgreSQL, a deployment goes through the three processes to CREATE_COMPLETE."""
    await deploy_through_processes(vhost_url, database, tmp_path)


async def test_the_same_on_sqlite_with_the_relay_in_its_own_process(
    vhost_url: str, tmp_path: Path
) -> None:
    """On the default SQLite file, which the scheduler's relay child and the gateway read
    beside the scheduler, the same deployment completes."""
    await deploy_through_processes(vhost_url, f"sqlite:///{tmp_path / 'flotilla.db'}", tmp_path)


async def deploy_through_processes(vhost_url: str, database: str, tmp_path: Path) -> None:
    """Start scheduler, gateway and a local agent on ``database``; deploy hello-batch."""
    site = "ws-apart"
    port = free_port()
    sla = tmp_path / "sla.yaml"
    sla.write_text(yaml.safe_dump([{"id": "sla-local", "group": "local", "site": site}]))
    site_file = tmp_path / "site.yaml"
    site_file.write_text(
        yaml.safe_dump(
            {"site": site, "kind": "local", "state_dir": str(tmp_path / "a"), "lease_interval": 1}
        )
    )
    env = {
        **os.environ,
        "FLOTILLA_BUS__URL": vhost_url,
        "FLOTILLA_SCHEDULER__STORE_URL": database,
        "FLOTILLA_SCHEDULER__SLA_FILE": str(sla),
        "FLOTILLA_SCHEDULER__GRACE": "PT5S",
        # One broker login (guest) for every part here; per-site logins are tested apart.
        "FLOTILLA_SCHEDULER__VERIFY_SENDERS": "false",
        "FLOTILLA_GATEWAY__PORT": str(port),
        "FLOTILLA_GATEWAY__HOST": "127.0.0.1",
        "FLOTILLA_GATEWAY__AUTH": "false",
        "FLOTILLA_LOG__FORMAT": "json",
    }
    broker("init", env=env)
    admin = RabbitBus(url=vhost_url, policy=DELIVERY_POLICY)
    async with admin:  # what add-site declares, without a login that would outlive the test
        await admin.declare(site_topology(site))
    url = f"http://127.0.0.1:{port}"
    with (
        process("scheduler", "run", env=env, log=tmp_path / "scheduler.log"),
        process("gateway", "run", env=env, log=tmp_path / "gateway.log"),
        process("agent", "--config", str(site_file), env=env, log=tmp_path / "agent.log"),
    ):
        await until_ready(url)
        async with FlotillaClient(url) as client, asyncio.timeout(120):
            while not (await client.sites())["items"]:  # noqa: ASYNC110 - polled over HTTP
                await asyncio.sleep(0.2)  # the gateway's own view fills from heartbeats
            created = await client.create((EXAMPLES / "hello-batch.yaml").read_text())
            statuses = [
                event.data["status"]
                async for event in client.events(created["id"], until=FINAL)
                if "status" in event.data
            ]
            view = await client.get(created["id"])
            sites = await client.sites()

    assert view["status"] == "CREATE_COMPLETE", (tmp_path / "scheduler.log").read_text()[-3000:]
    assert statuses[-1] == "CREATE_COMPLETE"
    assert view["outputs"]["hello_exit_code"] == 0
    assert [item["site"] for item in sites["items"]] == [site]
