"""The async parser runs tosca-parser in a worker process and caches by template text."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from flotilla.cli.template import app
from flotilla.scheduler.tosca import (
    ParserClosedError,
    ParserState,
    TemplateError,
    TemplateParser,
)

CASES = Path(__file__).parent / "tosca_cases"
REQUIRED = (CASES / "required_input.yaml").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def parser() -> Iterator[TemplateParser]:
    """One worker process for the whole module."""
    instance = TemplateParser()
    yield instance
    instance.close()


async def test_other_inputs_reuse_the_cached_parse(parser: TemplateParser) -> None:
    """A second request with different inputs derives again but does not parse again."""
    parses = parser.stats.parses

    small = await parser.requirements(REQUIRED, {"admin_token": "a", "num_cpus": "2"})
    large = await parser.requirements(REQUIRED, {"admin_token": "b", "num_cpus": 16})

    assert parser.stats.parses == parses + 1
    assert parser.stats.cache_hits >= 1
    assert parser.state is ParserState.RUNNING
    assert [n.resources.cpus for n in (*small.nodes, *large.nodes)] == [2, 16]


async def test_concurrent_requests_share_one_parse(parser: TemplateParser) -> None:
    """Concurrent requests for a new text wait for the same parse."""
    text = REQUIRED + "\n# a variant nobody parsed yet\n"
    parses = parser.stats.parses

    results = await asyncio.gather(
        *(parser.requirements(text, {"admin_token": str(i)}) for i in range(5))
    )

    assert parser.stats.parses == parses + 1
    assert len({r.digest for r in results}) == 1


async def test_failures_are_cached_too(parser: TemplateParser) -> None:
    """A bad template fails the same way from the cache, without another parse."""
    text = (CASES / "unknown_type.yaml").read_text(encoding="utf-8")
    parses = parser.stats.parses

    for _ in range(2):
        with pytest.raises(TemplateError) as caught:
            await parser.requirements(text)
        assert [(p.node, p.field) for p in caught.value.problems] == [("mystery", "type")]

    assert parser.stats.parses == parses + 1


async def test_closed_parser_refuses_work() -> None:
    """Close is idempotent and safe before first use; a closed parser raises a clear error."""
    parser = TemplateParser()
    await parser.aclose()
    await parser.aclose()

    assert parser.state is ParserState.CLOSED
    with pytest.raises(ParserClosedError):
        await parser.parse(REQUIRED)


# Parses the template on stdin, says so, and waits to be killed.
OWNER = """
import asyncio, sys
from flotilla.scheduler.tosca import TemplateParser

async def main():
    parser = TemplateParser()
    await parser.parse(sys.stdin.read())
    print("parsed", flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""


def _gone(process: psutil.Process, timeout: float) -> bool:
    """Whether ``process`` exits (or is only left to be reaped) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_worker_exits_when_its_owner_is_killed() -> None:
    """A SIGKILLed scheduler leaves no parser worker behind, idling under init."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert owner.stdin is not None
        assert owner.stdout is not None
        owner.stdin.write(REQUIRED.encode())
        owner.stdin.close()
        assert owner.stdout.readline() == b"parsed\n"
        workers = [
            child
            for child in psutil.Process(owner.pid).children()
            if "spawn_main" in " ".join(child.cmdline())
        ]
        assert len(workers) == 1
    finally:
        owner.kill()
        owner.wait()

    assert _gone(workers[0], timeout=10), "the parser worker outlived its owner"


def test_cli_check_prints_requirements_json() -> None:
    """``template check`` prints the requirements as JSON and exits 0."""
    result = CliRunner().invoke(
        app,
        ["check", str(CASES / "required_input.yaml"), "-i", "admin_token=x", "-i", "num_cpus=4"],
    )

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [(n["name"], n["kind"], n["resources"]["cpus"]) for n in document["nodes"]] == [
        ("vm", "virtual_machine", 4.0)
    ]


def test_cli_check_prints_one_problem_per_line() -> None:
    """A bad template prints node.field: message lines and exits non-zero."""
    result = CliRunner().invoke(app, ["check", str(CASES / "negative_cpus.yaml"), "-i", "cpus=-3"])

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == ["web.cpus: must be at least 0, got -3"]


def test_cli_rejects_malformed_input_option() -> None:
    """An --input without '=' is a usage error."""
    result = CliRunner().invoke(app, ["check", str(CASES / "negative_cpus.yaml"), "-i", "cpus"])

    assert result.exit_code == 2
