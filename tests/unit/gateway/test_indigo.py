"""The INDIGO-compatible API: field names, dates, paging, delete, errors, validation."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest

from flotilla.schemas import DeploymentStatus
from tests.unit.gateway.conftest import TEMPLATE, Rig, eventually

pytestmark = pytest.mark.timeout(60)

INDIGO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}\+0000$")
RESOURCE_FIELDS = {
    "uuid",
    "creationTime",
    "updateTime",
    "physicalId",
    "status",
    "statusReason",
    "task",
    "outputs",
    "callback",
    "userGroup",
    "cloudProviderName",
    "createdBy",
    "links",
}


async def create(rig: Rig, **fields: Any) -> dict[str, Any]:
    """POST /deployments and return the 201 body."""
    response = await rig.client.post("/deployments", json={"template": TEMPLATE, **fields})
    assert response.status == 201, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def indigo_error(response: Any, status: int) -> dict[str, Any]:
    """An INDIGO error body ``{code, title, message}`` with the expected status."""
    assert response.status == status, await response.text()
    body: dict[str, Any] = await response.json()
    assert set(body) == {"code", "title", "message"}
    assert body["code"] == status
    return body


async def test_create_answers_a_deployment_resource(rig: Rig) -> None:
    """POST /deployments answers 201 with INDIGO's field names and minute-precision UTC dates."""
    body = await create(
        rig,
        parameters={"cpus": 2},
        callback="https://dashboard.test/callback",
        timeoutMins=60,
        providerTimeoutMins=30,
        maxProvidersRetry=2,
        keepLastAttempt=True,
        userGroup="local",
    )

    assert set(body) == RESOURCE_FIELDS
    assert body["status"] == "CREATE_IN_PROGRESS"
    assert body["task"] == "DEPLOYER"
    assert INDIGO_DATE.match(body["creationTime"])
    assert INDIGO_DATE.match(body["updateTime"])
    assert body["userGroup"] == "local"
    assert body["callback"] == "https://dashboard.test/callback"
    assert body["cloudProviderName"] == "alpha"
    assert body["createdBy"] == {"subject": "local", "issuer": None}
    links = {link["rel"]: link["href"] for link in body["links"]}
    assert links["self"] == f"{rig.url}/deployments/{body['uuid']}"
    assert links["template"] == f"{rig.url}/deployments/{body['uuid']}/template"
    record = await rig.store.get(body["uuid"])
    assert record is not None
    request = record.request
    assert (request.max_sites, request.keep_last_attempt) == (2, True)
    assert request.timeout == timedelta(hours=1)
    assert request.site_timeout == timedelta(minutes=30)


async def test_unknown_fields_and_bad_timeouts_are_400(rig: Rig) -> None:
    """Unknown fields (even Flotilla's own names) and providerTimeoutMins > timeoutMins are 400."""
    unknown = await rig.client.post(
        "/deployments", json={"template": TEMPLATE, "inputs": {}, "maxSites": 1}
    )
    timeouts = await rig.client.post(
        "/deployments", json={"template": TEMPLATE, "timeoutMins": 5, "providerTimeoutMins": 6}
    )

    message = (await indigo_error(unknown, 400))["message"]
    assert "unknown field 'inputs'" in message
    assert "unknown field 'maxSites'" in message
    timeout_error = await indigo_error(timeouts, 400)
    assert (
        "providerTimeoutMins must be less than or equal to timeoutMins" in timeout_error["message"]
    )
    assert timeout_error["title"] == "Bad Request"


async def test_bad_template_is_400_naming_node_and_field(rig: Rig) -> None:
    """INDIGO clients get 400 for an invalid template; the message names node and field."""
    response = await rig.client.post("/deployments", json={"template": "bad"})

    assert "server.num_cpus: must be >= 1" in (await indigo_error(response, 400))["message"]


async def test_get_after_completion_has_outputs_and_no_task(rig: Rig) -> None:
    """A completed deployment shows CREATE_COMPLETE, its outputs, its site and task NONE."""
    body = await create(rig)
    await rig.succeed(await rig.provision("alpha"), node_ip="10.2.2.2")
    await eventually(lambda: rig.store._deployments[body["uuid"]].operation is None)

    response = await rig.client.get(f"/deployments/{body['uuid']}")

    shown = await response.json()
    assert response.status == 200
    assert shown["status"] == "CREATE_COMPLETE"
    assert shown["statusReason"] is None
    assert shown["task"] == "NONE"
    assert shown["outputs"] == {"node_ip": "10.2.2.2"}
    assert shown["cloudProviderName"] == "alpha"


async def test_listing_is_paged_like_spring(rig: Rig) -> None:
    """GET /deployments pages with {links, content, page}; size and page pick the slice."""
    ids = [(await create(rig))["uuid"] for _ in range(3)]

    first = await (await rig.client.get("/deployments?size=2")).json()
    last = await (await rig.client.get("/deployments?size=2&page=1&createdBy=me")).json()
    none = await (await rig.client.get("/deployments?createdBy=someone@https://x.test")).json()

    assert set(first) == {"links", "content", "page"}
    assert first["page"] == {"size": 2, "totalElements": 3, "totalPages": 2, "number": 0}
    assert [item["uuid"] for item in first["content"] + last["content"]] == ids[::-1]
    assert last["page"]["number"] == 1
    rels = [link["rel"] for link in first["links"]]
    assert rels == ["first", "self", "next", "last"]
    assert [link["rel"] for link in last["links"]] == ["first", "prev", "self", "last"]
    assert none["page"]["totalElements"] == 0
    assert none["content"] == []


async def test_delete_is_204_then_409(rig: Rig) -> None:
    """DELETE answers 204; deleting again while it runs, or once deleted, is 409."""
    body = await create(rig)
    await rig.succeed(await rig.provision("alpha"))
    await eventually(lambda: rig.store._deployments[body["uuid"]].operation is None)

    first = await rig.client.delete(f"/deployments/{body['uuid']}?force=false")
    second = await rig.client.delete(f"/deployments/{body['uuid']}")
    await rig.release("alpha")
    await eventually(
        lambda: rig.store._deployments[body["uuid"]].status is DeploymentStatus.DELETE_COMPLETE
    )
    third = await rig.client.delete(f"/deployments/{body['uuid']}")

    assert first.status == 204
    assert await first.read() == b""
    assert (await indigo_error(second, 409))["title"] == "Conflict"
    await indigo_error(third, 409)


async def test_unknown_deployment_is_404_in_indigo_format(rig: Rig) -> None:
    """An unknown id is 404 with INDIGO's {code, title, message}."""
    response = await rig.client.get("/deployments/00000000-0000-4000-8000-000000000000")

    assert (await indigo_error(response, 404))["title"] == "Not Found"


async def test_template_and_log(rig: Rig) -> None:
    """The template and the deployment's log come back as text."""
    body = await create(rig)
    command = await rig.provision("alpha")
    await rig.progress(command, "RUNNING", "booting")
    await rig.succeed(command)
    await eventually(lambda: rig.store._deployments[body["uuid"]].operation is None)

    template = await rig.client.get(f"/deployments/{body['uuid']}/template")
    log = await rig.client.get(f"/deployments/{body['uuid']}/log")

    assert await template.text() == TEMPLATE
    text = await log.text()
    assert text.startswith(f"deployment {body['uuid']} CREATE_COMPLETE")
    assert "progress at alpha (attempt 1) RUNNING: booting" in text
    assert "provisioned at alpha (attempt 1)" in text
    assert "attempt 1 at alpha" in text
