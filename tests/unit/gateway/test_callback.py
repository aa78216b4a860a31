"""Callbacks: signed POSTs of the deployment on final statuses, retried, resumed after restart."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from flotilla.gateway import CallbackSender
from flotilla.gateway.metrics import GatewayMetrics
from flotilla.scheduler.model import Change, DeploymentRecord
from flotilla.scheduler.store import MemoryStore
from flotilla.schemas import (
    DeploymentRequest,
    DeploymentStatus,
    DeploymentStatusChanged,
    StatusChange,
    new_id,
)
from tests.unit.gateway.conftest import TEMPLATE, WAIT, Rig, eventually, fast_settings

pytestmark = pytest.mark.timeout(60)
SECRET = b"callback-secret"


@dataclass
class Receiver:
    """A callback receiver that answers 500 to the first ``failures`` POSTs, then 200."""

    url: str
    failures: int
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    accepted: asyncio.Queue[tuple[dict[str, str], bytes]] = field(default_factory=asyncio.Queue)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A receiver on loopback that fails the first POST."""
    app = web.Application()
    server = TestServer(app)
    box: list[Receiver] = []

    async def callback(request: web.Request) -> web.Response:
        got = (dict(request.headers), await request.read())
        box[0].calls.append(got)
        if len(box[0].calls) <= box[0].failures:
            return web.Response(status=500, text="not yet")
        box[0].accepted.put_nowait(got)
        return web.Response(status=204)

    app.router.add_post("/hook", callback)
    await server.start_server()
    box.append(Receiver(url=str(server.make_url("/hook")), failures=1))
    try:
        yield box[0]
    finally:
        await server.close()


async def accepted(receiver: Receiver) -> tuple[dict[str, str], bytes]:
    async with asyncio.timeout(WAIT):
        return await receiver.accepted.get()


async def test_final_status_is_posted_signed_after_a_retry(rig: Rig, receiver: Receiver) -> None:
    """CREATE_COMPLETE is POSTed to the callback URL, signed, again after the first 500."""
    response = await rig.client.post(
        "/v1/deployments", json={"template": TEMPLATE, "callback_url": receiver.url}
    )
    deployment_id = (await response.json())["id"]
    await rig.succeed(await rig.provision("alpha"), ip="10.3.3.3")

    headers, body = await accepted(receiver)

    assert len(receiver.calls) == 2
    assert receiver.calls[0][1] == body  # the retry sends the same bytes
    expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert headers["X-Flotilla-Signature"] == f"sha256={expected}"
    assert headers["Content-Type"] == "application/json"
    assert int(headers["X-Flotilla-Event-Id"]) > 0
    view = json.loads(body)
    assert view["id"] == deployment_id
    assert view["status"] == "CREATE_COMPLETE"
    assert view["outputs"] == {"ip": "10.3.3.3"}
    assert view["attempts"][0]["outcome"] == "succeeded"
    metrics = ""
    async with asyncio.timeout(WAIT):
        while True:
            metrics = await (await rig.client.get("/metrics")).text()
            if 'flotilla_gateway_callbacks_total{outcome="delivered"} 1.0' in metrics:
                break
            await asyncio.sleep(0.01)
    assert 'flotilla_gateway_callbacks_total{outcome="retried"} 1.0' in metrics


async def test_no_callback_without_url_nor_for_progress(rig: Rig, receiver: Receiver) -> None:
    """Only deployments with a callback URL are called back, and only on final statuses."""
    silent = await rig.client.post("/v1/deployments", json={"template": TEMPLATE})
    assert silent.status == 201
    await rig.succeed(await rig.provision("alpha"))
    loud = await rig.client.post(
        "/v1/deployments", json={"template": TEMPLATE, "callback_url": receiver.url}
    )
    loud_id = (await loud.json())["id"]
    command = await rig.provision("alpha")
    await rig.progress(command, "RUNNING", "booting")
    await rig.fail(command, "boom", "it broke")
    await rig.release("alpha")
    await rig.fail(await rig.provision("beta"), "boom", "it broke too")

    _, body = await accepted(receiver)

    view = json.loads(body)
    assert (view["id"], view["status"]) == (loud_id, "CREATE_FAILED")
    assert "Retries on sites exhausted" in view["status_reason"]
    assert receiver.accepted.empty()


def record_with_callback(url: str) -> DeploymentRecord:
    """A deployment whose request names a callback URL."""
    request = DeploymentRequest(
        deployment_id=new_id(), template=TEMPLATE, owner="ann", group="physics", callback_url=url
    )
    now = datetime.now(UTC)
    return DeploymentRecord(
        id=request.deployment_id,
        request=request,
        status=DeploymentStatus.CREATE_COMPLETE,
        operation=None,
        created_at=now,
        updated_at=now,
    )


def completed(record: DeploymentRecord) -> DeploymentStatusChanged:
    data = StatusChange(
        deployment_id=record.id,
        status=DeploymentStatus.CREATE_COMPLETE,
        previous=DeploymentStatus.CREATE_IN_PROGRESS,
        owner=record.owner,
        group=record.group,
    )
    return DeploymentStatusChanged.create(data, source="/test")


async def test_a_restarted_sender_sends_what_it_missed(receiver: Receiver) -> None:
    """Events journaled while no sender ran are called back by the next one, from the cursor."""
    receiver.failures = 0
    store = MemoryStore()
    settings = fast_settings()
    first = CallbackSender(store=store, settings=settings, metrics=GatewayMetrics())
    await first.prepare()  # saves the cursor at the (empty) journal's end, then "crashes"
    missed = record_with_callback(receiver.url)
    await store.commit(Change(deployment=missed, journal=(completed(missed),)))

    second = CallbackSender(store=store, settings=settings, metrics=GatewayMetrics())
    task = asyncio.create_task(second.run())
    try:
        _, body = await accepted(receiver)
        await eventually(lambda: store._cursors["gateway.callbacks"] >= 1)
    finally:
        await second.shutdown()
        await task

    assert json.loads(body)["id"] == missed.id
    assert json.loads(body)["status"] == "CREATE_COMPLETE"


async def test_callbacks_to_internal_addresses_are_refused_by_default(receiver: Receiver) -> None:
    """Without private networks allowed, a loopback callback URL is never called."""
    receiver.failures = 0
    store = MemoryStore()
    metrics = GatewayMetrics()
    sender = CallbackSender(
        store=store, settings=fast_settings(callback_private_networks=False), metrics=metrics
    )
    await sender.prepare()
    refused = record_with_callback(receiver.url)
    await store.commit(Change(deployment=refused, journal=(completed(refused),)))
    task = asyncio.create_task(sender.run())
    try:
        await eventually(lambda: store._cursors["gateway.callbacks"] >= 1)
    finally:
        await sender.shutdown()
        await task

    assert receiver.calls == []
    assert metrics.callbacks.labels("refused")._value.get() == 1
