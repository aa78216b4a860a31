"""The benchmarks still run and print their figures (how fast is for the benches to say).

Each runs small against the real broker, as a newcomer would run it, and must exit 0 with
every figure line the README describes and the counts adding up. Timings are never
asserted here: the benches compare against a baseline measured in the same run instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(180)]

BENCH = Path(__file__).parents[2] / "bench"


def run_bench(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def figure(output: str, label: str) -> str:
    """The rest of the line that starts with ``label``."""
    match = re.search(rf"^\s*{re.escape(label)}\s+(.*)$", output, re.MULTILINE)
    assert match is not None, f"no line {label!r} in:\n{output}"
    return match.group(1)


def number(text: str) -> float:
    match = re.search(r"[\d,]+(?:\.\d+)?", text)
    assert match is not None, text
    return float(match.group(0).replace(",", ""))


@pytest.mark.parametrize("store", ["memory", "sqlite", "postgresql"])
def test_the_scheduler_bench_places_every_request(amqp_url: str, store: str) -> None:
    """Every request ends as a command or a failure, and each figure is printed."""
    output = run_bench(
        "scheduler.py",
        *("--url", amqp_url, "--sites", "20", "--requests", "100", "--raw-count", "100"),
        *("--store", store),
    )
    placed = figure(output, "placements/s (first request published -> last command received)")
    assert number(placed) > 0
    counts = figure(output, "provision commands / deployments failed (no site fits)")
    commands, failed = counts.split("/")
    assert number(commands) + number(failed) == 100
    assert "ms" in figure(output, "decision latency p50 / p99 / max (Lifecycle.requested)")
    assert "ms" in figure(output, "decision to command received p50 / p99 (outbox, relay, broker)")
    if store != "memory":  # how many commits shared a transaction
        assert number(figure(output, "SQL store: commits per transaction (group commit)")) >= 1
    if store == "postgresql":  # the relay publishes from a process of its own
        label = "its relay process CPU per placement (read outbox, publish, remove)"
        assert number(figure(output, label)) > 0
    three = number(figure(output, "the processes above, CPU per placement"))
    assert three > 0
    if store == "postgresql":  # the server's CPU is counted in the ceiling
        # A small run may use less than one clock tick of the server's CPU: 0.00 ms.
        database = number(figure(output, "database (postgres) CPU per placement"))
        four = number(figure(output, "with the database, CPU per placement"))
        assert four == pytest.approx(three + database, abs=0.011)
    assert number(figure(output, "broker round trip, raw aio-pika, 64 confirms in flight")) > 0


def test_the_bus_bench_compares_with_bare_aio_pika(amqp_url: str) -> None:
    """Both sides move every message and the ratio line is printed."""
    output = run_bench("bus.py", "--url", amqp_url, "--count", "300", "--rounds", "1")
    assert number(figure(output, "bare      publish")) > 0
    assert number(figure(output, "flotilla  publish")) > 0
    assert "end-to-end" in figure(output, "ratio flotilla/bare:")
