"""Operations endpoints: health, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.gateway.conftest import TEMPLATE, Issuer, Rig

pytestmark = pytest.mark.timeout(60)


async def test_health_and_readiness(rig: Rig) -> None:
    """/healthz answers while the process lives; /readyz reports store and bus, 503 when down."""
    health = await rig.client.get("/healthz")
    ready = await rig.client.get("/readyz")
    await rig.gateway.deployments._bus.close()  # type: ignore[attr-defined]
    not_ready = await rig.client.get("/readyz")

    assert (health.status, await health.json()) == (200, {"status": "ok"})
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"store": "ok", "bus": "ok"}
    assert not_ready.status == 503
    assert (await not_ready.json())["checks"]["bus"] == "failing: the bus is closed"


async def test_operations_endpoints_need_no_token(secured: Rig) -> None:
    """Health, readiness, metrics and the OpenAPI document are open; the API is not."""
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert (await secured.client.get(path)).status == 200, path
    assert (await secured.client.get("/v1/sites")).status == 401


async def test_metrics_count_requests_by_route_and_deployments(rig: Rig) -> None:
    """/metrics counts requests by route template and status, and deployments created."""
    await rig.client.post("/v1/deployments", json={"template": TEMPLATE})
    await rig.client.post("/deployments", json={"template": TEMPLATE})
    await rig.client.get("/v1/deployments/00000000-0000-4000-8000-000000000000")

    response = await rig.client.get("/metrics")

    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
    }
    requests = "flotilla_gateway_requests_total"
    assert (
        samples[(requests, (("method", "POST"), ("route", "/v1/deployments"), ("status", "201")))]
        == 1
    )
    missing = (("method", "GET"), ("route", "/v1/deployments/{id}"), ("status", "404"))
    assert samples[(requests, missing)] == 1
    created = "flotilla_gateway_deployments_created_total"
    assert samples[(created, (("api", "v1"),))] == 1
    assert samples[(created, (("api", "indigo"),))] == 1
    latency = "flotilla_gateway_request_seconds_count"
    assert samples[(latency, (("method", "POST"), ("route", "/v1/deployments")))] == 1


async def test_openapi_document_lists_the_routes_and_bodies(rig: Rig) -> None:
    """/openapi.json is OpenAPI 3.1 with every route and the request and response schemas."""
    response = await rig.client.get("/openapi.json")

    document = await response.json()
    assert document["openapi"].startswith("3.1")
    assert {
        "/v1/deployments",
        "/v1/deployments/{id}",
        "/v1/deployments/{id}/template",
        "/v1/deployments/{id}/attempts/{number}/log",
        "/v1/deployments/{id}/events",
        "/v1/sites",
        "/deployments",
        "/deployments/{id}",
        "/deployments/{id}/template",
        "/deployments/{id}/log",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    } <= set(document["paths"])
    schemas = document["components"]["schemas"]
    create = schemas["CreateDeployment"]
    assert create["additionalProperties"] is False
    assert create["required"] == ["template"]
    assert {"inputs", "group", "site", "callback_url", "max_sites"} <= set(create["properties"])
    assert {"uuid", "creationTime", "createdBy", "links"} <= set(
        schemas["DeploymentResource"]["properties"]
    )
    assert {"timeoutMins", "providerTimeoutMins", "userGroup"} <= set(
        schemas["IndigoDeploymentRequest"]["properties"]
    )
    post = document["paths"]["/v1/deployments"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateDeployment"
    }
    assert post["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeploymentView"
    }
    refs = _refs(document)
    assert refs <= {f"#/components/schemas/{name}" for name in schemas}


def _refs(node: object) -> set[str]:
    """Every $ref in a JSON document."""
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


async def test_sites_need_a_token_and_show_only_own_group_quotas(
    secured: Rig, issuer: Issuer
) -> None:
    """With tokens on, /v1/sites answers authenticated callers."""
    response = await secured.client.get("/v1/sites", headers=issuer.header("ann", ["physics"]))

    assert response.status == 200
    assert {item["site"] for item in (await response.json())["items"]} == {"alpha", "beta"}
