"""Server-Sent Events: every journaled event in order, live, and resumable by event id."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import ClientResponse

from flotilla.schemas import decode
from tests.unit.gateway.conftest import TEMPLATE, WAIT, Rig, eventually

pytestmark = pytest.mark.timeout(60)
STATUS = "flotilla.deployment.status_changed"


async def read_events(response: ClientResponse, count: int | None = None) -> list[dict[str, str]]:
    """Parse SSE frames until ``count`` events were read, or the stream ends."""
    events: list[dict[str, str]] = []
    frame: dict[str, str] = {}
    async with asyncio.timeout(WAIT):
        while count is None or len(events) < count:
            raw = await response.content.readline()
            if not raw:
                break
            line = raw.decode().rstrip("\r\n")
            if not line:
                if "data" in frame:
                    events.append(frame)
                frame = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                frame[name] = frame.get(name, "") + value.removeprefix(" ")
    return events


async def create(rig: Rig) -> str:
    response = await rig.client.post("/v1/deployments", json={"template": TEMPLATE})
    assert response.status == 201
    deployment_id: str = (await response.json())["id"]
    return deployment_id


def kinds(events: list[dict[str, str]]) -> list[str]:
    """Each event's type, with the status for status changes."""
    result = []
    for event in events:
        data: dict[str, Any] = json.loads(event["data"])["data"]
        result.append(
            f"{event['event']}:{data['status']}" if event["event"] == STATUS else event["event"]
        )
    return result


async def fail_over_and_complete(rig: Rig, deployment_id: str) -> None:
    """alpha reports progress then fails; beta succeeds."""
    first = await rig.provision("alpha")
    await rig.progress(first, "BUILD", "creating server")
    await rig.fail(first, "quota_exceeded", "no cores")
    await rig.release("alpha")
    await eventually(lambda: rig.store._attempts[deployment_id][1].released)
    await rig.succeed(await rig.provision("beta"), ip="10.9.9.9")


async def test_stream_has_every_event_in_order_and_ends_when_final(rig: Rig) -> None:
    """The stream carries status changes, progress and reports in order, then ends."""
    deployment_id = await create(rig)
    await fail_over_and_complete(rig, deployment_id)

    response = await rig.client.get(f"/v1/deployments/{deployment_id}/events?until_final=true")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = await read_events(response)

    assert kinds(events) == [
        f"{STATUS}:CREATE_IN_PROGRESS",  # requested, and attempt 1 placed, in one event
        "flotilla.deployment.progress_reported",
        "flotilla.deployment.provisioning_failed",
        f"{STATUS}:CREATE_IN_PROGRESS",
        "flotilla.deployment.released",
        "flotilla.deployment.provisioned",
        f"{STATUS}:CREATE_COMPLETE",
    ]
    ids = [int(event["id"]) for event in events]
    assert ids == sorted(set(ids))
    for event in events:
        message = decode(event["data"].encode())
        assert message.type == event["event"]
        assert message.correlationid == deployment_id
    assert "plan" not in "".join(event["data"] for event in events)  # no commands journaled


async def test_resume_after_last_event_id(rig: Rig) -> None:
    """A client that reconnects with Last-Event-ID (or ?after=) gets only what followed."""
    deployment_id = await create(rig)
    await fail_over_and_complete(rig, deployment_id)
    path = f"/v1/deployments/{deployment_id}/events"
    everything = await read_events(await rig.client.get(f"{path}?until_final=true"))

    first = await rig.client.get(path)
    seen = await read_events(first, count=3)
    first.close()
    resumed = await rig.client.get(
        f"{path}?until_final=true", headers={"Last-Event-ID": seen[-1]["id"]}
    )
    rest = await read_events(resumed)
    by_query = await read_events(
        await rig.client.get(f"{path}?until_final=true&after={everything[5]['id']}")
    )

    assert seen + rest == everything
    assert by_query == everything[6:]


async def test_resuming_after_a_final_status_follows_to_the_next(rig: Rig) -> None:
    """Resumed after CREATE_COMPLETE with until_final, the stream follows the delete to its end."""
    deployment_id = await create(rig)
    await rig.succeed(await rig.provision("alpha"))
    path = f"/v1/deployments/{deployment_id}/events?until_final=true"
    created = await read_events(await rig.client.get(path))
    follow = await rig.client.get(path, headers={"Last-Event-ID": created[-1]["id"]})

    assert (await rig.client.delete(f"/v1/deployments/{deployment_id}")).status == 202
    await rig.release("alpha")
    deleted = await read_events(follow)

    assert kinds(created)[-1] == f"{STATUS}:CREATE_COMPLETE"
    assert kinds(deleted) == [
        f"{STATUS}:DELETE_IN_PROGRESS",
        "flotilla.deployment.released",
        f"{STATUS}:DELETE_COMPLETE",
    ]


async def test_stream_delivers_events_as_they_happen(rig: Rig) -> None:
    """An open stream receives progress reported after it was opened."""
    deployment_id = await create(rig)
    command = await rig.provision("alpha")
    response = await rig.client.get(f"/v1/deployments/{deployment_id}/events")
    before = await read_events(response, count=1)

    await rig.progress(command, "RUNNING", "half way")
    [live] = await read_events(response, count=1)
    response.close()

    assert kinds(before) == [f"{STATUS}:CREATE_IN_PROGRESS"]
    opening = json.loads(before[0]["data"])["data"]
    assert (opening["previous"], opening["site"], opening["attempt"]) == (None, "alpha", 1)
    assert live["event"] == "flotilla.deployment.progress_reported"
    assert json.loads(live["data"])["data"]["message"] == "half way"
    assert int(live["id"]) > int(before[-1]["id"])


async def test_stream_refusals_are_plain_errors(rig: Rig) -> None:
    """An unknown deployment is 404 and a bad Last-Event-ID 400, before any stream starts."""
    deployment_id = await create(rig)

    missing = await rig.client.get("/v1/deployments/00000000-0000-4000-8000-000000000000/events")
    bad = await rig.client.get(
        f"/v1/deployments/{deployment_id}/events", headers={"Last-Event-ID": "yesterday"}
    )

    assert missing.status == 404
    assert bad.status == 400
    assert "integer" in (await bad.json())["error"]["message"]
