"""The event loop of the long-running processes: uvloop unless asked otherwise."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from flotilla import runtime
from flotilla.settings import Settings


async def _loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_processes_run_on_uvloop_by_default() -> None:
    """The default setting is uvloop, and run() gives the coroutine a uvloop loop."""
    assert Settings().event_loop == "uvloop"
    assert issubclass(runtime.run(_loop_type()), uvloop.Loop)


def test_the_standard_loop_can_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLOTILLA_EVENT_LOOP=asyncio selects asyncio's own loop."""
    monkeypatch.setenv("FLOTILLA_EVENT_LOOP", "asyncio")
    loop = Settings().event_loop
    assert loop == "asyncio"
    kind = runtime.run(_loop_type(), loop=loop)
    assert not issubclass(kind, uvloop.Loop)
    assert issubclass(kind, asyncio.BaseEventLoop)
