"""Helpers shared by the integration tests: testbeds, scheduler settings, agent processes."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from pydantic import SecretStr

from flotilla.settings import SchedulerSettings, Settings

TESTBEDS = Path(__file__).parents[2] / "testbeds"


def testbed_env(name: str) -> dict[str, str]:
    """Start a testbed (idempotent) and return the exports its ``env`` verb prints."""
    script = str(TESTBEDS / f"{name}.sh")
    subprocess.run([script, "up"], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([script, "env"], check=True, capture_output=True, text=True).stdout
    return dict(shlex.split(line)[1].split("=", 1) for line in out.splitlines() if line.strip())


def settings_for(database: str) -> Settings:
    """Settings of a scheduler on the test's database; sites get 5 s to report at start."""
    scheduler = SchedulerSettings(store_url=SecretStr(database), grace=timedelta(seconds=5))
    return Settings(scheduler=scheduler)


def start_agent(site_file: Path, amqp_url: str) -> subprocess.Popen[bytes]:
    """``flotilla agent --config site_file`` in its own process, as a site operator runs it."""
    env = {**os.environ, "FLOTILLA_BUS__URL": amqp_url, "FLOTILLA_LOG__FORMAT": "json"}
    return subprocess.Popen(
        [sys.executable, "-m", "flotilla", "agent", "--config", str(site_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def broker(*args: str, env: dict[str, str]) -> str:
    """``flotilla broker ...`` as the broker's administrator runs it; its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "flotilla", "broker", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout
