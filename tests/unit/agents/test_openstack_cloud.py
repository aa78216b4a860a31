"""``Cloud.read`` sends a read again after a dropped connection; nothing else is repeated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests
from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk

from flotilla.agents.driver import SiteUnavailableError
from flotilla.agents.openstack import cloud as cloud_module
from flotilla.agents.openstack.cloud import Cloud, Connection
from flotilla.agents.openstack.config import OpenStackSettings

# What keystoneauth raised when Neutron reset a pooled connection under a listing.
RESET = ksa.ConnectFailure(
    "Unable to establish connection to http://127.0.0.1:19696/v2.0/security-groups: "
    "('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))"
)


@pytest.fixture
async def cloud(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cloud]:
    """A cloud whose connection is never used: each test's work stands in for the SDK."""
    monkeypatch.setattr(cloud_module, "_READ_PAUSES", (0.0, 0.0))
    region = SimpleNamespace(get_region_name=lambda: "r")
    unused = SimpleNamespace(config=region, close=lambda: None)
    monkeypatch.setattr(Cloud, "_connect", lambda self: unused)
    settings = OpenStackSettings(cloud="c", network="n", call_timeout=timedelta(seconds=5))
    opened = Cloud(settings)
    await opened.open()
    yield opened
    await opened.close()


def failing(*errors: BaseException) -> tuple[Callable[[Connection], str], list[int]]:
    """Work that raises ``errors`` one per call, then answers; and its call count."""
    calls: list[int] = []

    def work(_: Connection) -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "answer"

    return work, calls


async def test_a_read_is_sent_again_after_a_reset(cloud: Cloud) -> None:
    work, calls = failing(RESET, requests.ConnectionError("Connection aborted."))
    assert await cloud.read("list security groups", work) == "answer"
    assert len(calls) == 3


async def test_a_read_gives_up_after_three_resets(cloud: Cloud) -> None:
    work, calls = failing(RESET, RESET, RESET)
    with pytest.raises(SiteUnavailableError, match="cannot reach the cloud"):
        await cloud.read("list servers", work)
    assert len(calls) == 3


@pytest.mark.parametrize(
    "error",
    [
        ksa.ConnectTimeout("timed out"),
        requests.ReadTimeout("read timed out"),
        TimeoutError(),
        sdk.HttpException(message="Service Unavailable", http_status=503),
    ],
)
async def test_a_slow_or_failing_cloud_is_not_asked_again(cloud: Cloud, error: Exception) -> None:
    """A timeout would only wait as long again, and an error answer is the cloud's word."""
    work, calls = failing(error)
    with pytest.raises(SiteUnavailableError):
        await cloud.read("list flavors", work)
    assert len(calls) == 1


async def test_a_write_is_never_sent_twice(cloud: Cloud) -> None:
    """A write that met a reset may have been carried out: it goes back to the agent."""
    work, calls = failing(RESET)
    with pytest.raises(SiteUnavailableError):
        await cloud.call("create server web-0", work)
    assert len(calls) == 1
