"""The /v1 API: create validation, the deployment view, listing, delete, template, logs, sites."""

from __future__ import annotations

from typing import Any

import pytest

from flotilla.client import FINAL, FlotillaClient
from flotilla.scheduler.tosca import TemplateParser
from flotilla.schemas import (
    DeploymentStatus,
    Failure,
    FailureCause,
    ReleaseDeployment,
    ReleaseFailed,
)
from tests.unit.gateway.conftest import TEMPLATE, Rig, eventually, fast_settings, start_rig

pytestmark = pytest.mark.timeout(60)


async def create(rig: Rig, **fields: Any) -> dict[str, Any]:
    """POST /v1/deployments and return the 201 body."""
    response = await rig.client.post("/v1/deployments", json={"template": TEMPLATE, **fields})
    assert response.status == 201, await response.text()
    body: dict[str, Any] = await response.json()
    assert response.headers["Location"] == f"/v1/deployments/{body['id']}"
    return body


async def error_of(response: Any, status: int) -> dict[str, Any]:
    """The ``error`` object of a /v1 error response with the expected status."""
    assert response.status == status, await response.text()
    body: dict[str, Any] = await response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    return error


async def test_create_returns_the_recorded_deployment(rig: Rig) -> None:
    """A create is validated, handed to the scheduler, and answered with its recorded view."""
    view = await create(rig, inputs={"cpus": 2}, max_sites=2, callback_url="http://x.test/cb")

    assert view["status"] == "CREATE_IN_PROGRESS"
    assert view["operation"] == "create"
    assert (view["owner"], view["group"]) == ("local", "local")
    assert view["site"] == "alpha"
    [attempt] = view["attempts"]
    assert attempt["number"] == 1
    assert attempt["site"] == "alpha"
    assert attempt["outcome"] == "in_progress"
    assert set(attempt) == {
        "number",
        "site",
        "started_at",
        "finished_at",
        "outcome",
        "cause_code",
        "cause",
        "released",
        "kept",
        "placement",
    }
    record = await rig.store.get(view["id"])
    assert record is not None
    assert record.request.max_sites == 2
    assert record.request.inputs == {"cpus": 2}


async def test_unknown_field_is_refused_by_name(rig: Rig) -> None:
    """A body field the API does not know is a 400 that names it; nothing is published."""
    response = await rig.client.post(
        "/v1/deployments", json={"template": TEMPLATE, "max_site": 2, "colour": "red"}
    )

    error = await error_of(response, 400)
    assert error["code"] == "invalid_request"
    assert "unknown field 'max_site'" in error["message"]
    assert "unknown field 'colour'" in error["message"]
    assert await rig.store.list_deployments() == ([], 0)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"template": TEMPLATE, "max_sites": 0}, "max_sites"),
        ({"template": TEMPLATE, "site": "Not A Site"}, "site"),
        ({"template": TEMPLATE, "timeout_minutes": 5, "site_timeout_minutes": 10}, "timeout"),
        ({"template": TEMPLATE, "callback_url": "ftp://x"}, "callback_url"),
        ({"inputs": {}}, "template"),
    ],
)
async def test_invalid_values_name_the_field(rig: Rig, body: dict[str, Any], names: str) -> None:
    """A value out of range is a 400 whose message names the field."""
    error = await error_of(await rig.client.post("/v1/deployments", json=body), 400)

    assert names in error["message"]


async def test_body_that_is_not_a_json_object_is_refused(rig: Rig) -> None:
    """Malformed JSON and a JSON list are both 400 with a clear message, not a traceback."""
    broken = await rig.client.post("/v1/deployments", data=b"{not json")
    listed = await rig.client.post("/v1/deployments", json=["template"])

    assert "not valid JSON" in (await error_of(broken, 400))["message"]
    assert "JSON object" in (await error_of(listed, 400))["message"]


async def test_bad_template_is_422_naming_node_and_field(rig: Rig) -> None:
    """A template the parser refuses is a 422 listing each problem's node and field."""
    response = await rig.client.post("/v1/deployments", json={"template": "bad"})

    error = await error_of(response, 422)
    assert error["code"] == "invalid_template"
    assert error["problems"] == [{"node": "server", "field": "num_cpus", "message": "must be >= 1"}]
    assert "server.num_cpus" in error["message"]


async def test_real_parser_names_node_and_field() -> None:
    """With the real TOSCA parser, a negative CPU count is refused on node 'web', field 'cpus'."""
    text = (
        "tosca_definitions_version: tosca_simple_yaml_1_0\n"
        "topology_template:\n"
        "  node_templates:\n"
        "    web:\n"
        "      type: tosca.nodes.flotilla.ContainerApplication\n"
        "      properties:\n"
        "        image: nginx:1.27\n"
        "        cpus: -1\n"
    )
    rig, stop = await start_rig(None, fast_settings(auth=False))
    async with TemplateParser() as parser:
        rig.gateway.deployments._templates = parser  # the real parser in front of the gateway
        try:
            response = await rig.client.post("/v1/deployments", json={"template": text})
            error = await error_of(response, 422)
        finally:
            await stop()

    assert {(p["node"], p["field"]) for p in error["problems"]} == {("web", "cpus")}


async def test_get_shows_outputs_and_every_attempt_with_its_cause(rig: Rig) -> None:
    """After a failover, the view lists both attempts, the first with its cause, and outputs."""
    view = await create(rig)
    first = await rig.provision("alpha")
    await rig.fail(first, "quota_exceeded", "no cores left")
    await rig.release("alpha")
    second = await rig.provision("beta")
    await rig.succeed(second, ip="10.0.0.7")

    async def current() -> dict[str, Any]:
        response = await rig.client.get(f"/v1/deployments/{view['id']}")
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body

    await eventually(lambda: rig.store._deployments[view["id"]].operation is None)
    shown = await current()
    assert shown["status"] == "CREATE_COMPLETE"
    assert shown["operation"] is None
    assert shown["outputs"] == {"ip": "10.0.0.7"}
    assert shown["site"] == "beta"
    failed, succeeded = shown["attempts"]
    assert (failed["site"], failed["outcome"], failed["cause_code"]) == (
        "alpha",
        "failed",
        "quota_exceeded",
    )
    assert failed["cause"] == "no cores left"
    assert failed["released"] is True
    assert (succeeded["site"], succeeded["outcome"]) == ("beta", "succeeded")
    # Why each site: the first attempt ranked alpha first; the second excluded it.
    assert failed["placement"]["candidates"][0]["site"] == "alpha"
    assert failed["placement"]["candidates"][0]["explanation"]
    assert succeeded["placement"]["candidates"][0]["site"] == "beta"
    rejected = {r["site"]: r["reasons"] for r in succeeded["placement"]["rejected"]}
    assert "already tried for this deployment" in rejected["alpha"]


async def test_unknown_deployment_is_404(rig: Rig) -> None:
    """Reading or deleting an unknown deployment is a 404 with a /v1 error body."""
    missing = "00000000-0000-4000-8000-000000000000"
    for method in ("GET", "DELETE"):
        response = await rig.client.request(method, f"/v1/deployments/{missing}")
        error = await error_of(response, 404)
        assert error["code"] == "not_found"
    unmatched = await rig.client.get("/v1/nothing-here")
    assert (await error_of(unmatched, 404))["code"] == "not_found"


async def test_listing_pages_newest_first_and_filters(rig: Rig) -> None:
    """Listing pages newest first with a total, and filters by status and group."""
    ids = [(await create(rig))["id"] for _ in range(3)]

    first = await (await rig.client.get("/v1/deployments?limit=2")).json()
    second = await (await rig.client.get("/v1/deployments?limit=2&offset=2")).json()
    failed = await (await rig.client.get("/v1/deployments?status=create_failed")).json()
    other = await (await rig.client.get("/v1/deployments?group=local&owner=nobody")).json()
    bad = await rig.client.get("/v1/deployments?status=SLEEPING")
    too_big = await rig.client.get("/v1/deployments?limit=100000")

    assert [item["id"] for item in first["items"] + second["items"]] == ids[::-1]
    assert (first["total"], first["offset"], first["limit"]) == (3, 0, 2)
    assert (second["total"], second["offset"]) == (3, 2)
    assert failed == {"items": [], "total": 0, "offset": 0, "limit": 50}
    assert other["total"] == 0
    assert "unknown status 'SLEEPING'" in (await error_of(bad, 400))["message"]
    assert "limit" in (await error_of(too_big, 400))["message"]


async def test_second_delete_is_409(rig: Rig) -> None:
    """A delete is accepted with 202; a second one while it runs is a 409."""
    view = await create(rig)
    await rig.provision("alpha")

    first = await rig.client.delete(f"/v1/deployments/{view['id']}?force=true")
    second = await rig.client.delete(f"/v1/deployments/{view['id']}")

    assert first.status == 202, await first.text()
    deleting = await first.json()
    assert deleting["status"] == "DELETE_IN_PROGRESS"
    assert deleting["operation"] == "delete"
    assert (await error_of(second, 409))["code"] == "conflict"
    release = await rig.command("alpha")
    assert isinstance(release, ReleaseDeployment)
    assert release.data.force is True


async def test_delete_after_deletion_is_409(rig: Rig) -> None:
    """Once a deployment is DELETE_COMPLETE, deleting it again is a 409."""
    view = await create(rig)
    await rig.succeed(await rig.provision("alpha"))
    await eventually(lambda: rig.store._deployments[view["id"]].operation is None)
    accepted = await rig.client.delete(f"/v1/deployments/{view['id']}")
    assert accepted.status == 202
    await rig.release("alpha")
    await eventually(
        lambda: rig.store._deployments[view["id"]].status is DeploymentStatus.DELETE_COMPLETE
    )

    again = await rig.client.delete(f"/v1/deployments/{view['id']}")

    assert "DELETE_COMPLETE" in (await error_of(again, 409))["message"]


async def test_template_and_attempt_log(rig: Rig) -> None:
    """The template comes back as YAML; an attempt's log has its progress, cause and times."""
    view = await create(rig)
    command = await rig.provision("alpha")
    await rig.progress(command, "BUILD", "creating server")
    await rig.fail(command, "image_missing", "no image ubuntu-22.04")
    await rig.release("alpha")
    await rig.provision("beta")
    await eventually(lambda: len(rig.store._attempts.get(view["id"], {})) == 2)

    template = await rig.client.get(f"/v1/deployments/{view['id']}/template")
    log = await rig.client.get(f"/v1/deployments/{view['id']}/attempts/1/log")
    missing = await rig.client.get(f"/v1/deployments/{view['id']}/attempts/9/log")

    assert template.status == 200
    assert template.content_type == "text/yaml"
    assert await template.text() == TEMPLATE
    assert log.status == 200
    text = await log.text()
    assert "attempt 1 at alpha" in text
    assert "progress at alpha (attempt 1) BUILD: creating server" in text
    assert "provisioning failed at alpha (attempt 1): image_missing: no image ubuntu-22.04" in text
    assert "outcome failed: image_missing" in text
    assert "started 20" in text
    assert "attempt 2" not in text
    assert (await error_of(missing, 404))["code"] == "not_found"


async def test_sites_lists_state_capacity_and_quotas(rig: Rig) -> None:
    """/v1/sites shows each site's state, freshness, shapes and quotas."""
    response = await rig.client.get("/v1/sites")

    assert response.status == 200
    items = {item["site"]: item for item in (await response.json())["items"]}
    assert set(items) == {"alpha", "beta"}
    alpha = items["alpha"]
    assert (alpha["kind"], alpha["state"], alpha["fresh"]) == ("openstack", "ready", True)
    assert alpha["lease_expires_in_seconds"] > 0
    assert {shape["name"] for shape in alpha["capabilities"]["shapes"]} >= {"m1.large"}
    assert alpha["quotas"] == [{"resource": "cores", "limit": 100.0, "used": 0.0, "group": None}]


async def test_the_flotilla_client_drives_the_api(rig: Rig) -> None:
    """The CLI's client creates, follows to CREATE_COMPLETE, lists and deletes over /v1."""
    async with FlotillaClient(rig.url) as client:
        created = await client.create(TEMPLATE, inputs={"cpus": 1}, max_sites=1)
        await rig.succeed(await rig.provision("alpha"), ip="10.1.1.1")
        types = [event.type async for event in client.events(created["id"], until=FINAL)]
        shown = await client.get(created["id"])
        page = await client.list(limit=5)
        deleting = await client.delete(created["id"])

    assert types[-1] == "flotilla.deployment.status_changed"
    assert "flotilla.deployment.provisioned" in types
    assert shown["status"] == "CREATE_COMPLETE"
    assert shown["outputs"] == {"ip": "10.1.1.1"}
    assert [item["id"] for item in page["items"]] == [created["id"]]
    assert deleting["status"] == "DELETE_IN_PROGRESS"


async def test_a_failed_delete_can_be_retried(rig: Rig) -> None:
    """After DELETE_FAILED (the site could not release), deleting again is accepted."""
    view = await create(rig)
    await rig.succeed(await rig.provision("alpha"))
    await eventually(lambda: rig.store._deployments[view["id"]].operation is None)
    assert (await rig.client.delete(f"/v1/deployments/{view['id']}")).status == 202
    release = await rig.command("alpha")
    assert isinstance(release, ReleaseDeployment)
    cause = FailureCause(code="api_error", message="volume busy", retryable=True)
    data = Failure(deployment_id=view["id"], site="alpha", attempt=1, cause=cause)
    await rig.report("alpha", ReleaseFailed.create(data, source="/sites/alpha"))
    await eventually(
        lambda: rig.store._deployments[view["id"]].status is DeploymentStatus.DELETE_FAILED
    )

    again = await rig.client.delete(f"/v1/deployments/{view['id']}?force=true")

    assert again.status == 202, await again.text()
    assert (await again.json())["status"] == "DELETE_IN_PROGRESS"
    forced = await rig.command("alpha")
    assert isinstance(forced, ReleaseDeployment)
    assert forced.data.force is True
