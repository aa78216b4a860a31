"""The gateway's OpenAPI 3.1 document, built from the same models that validate the bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from flotilla.gateway.indigo import (
    DeploymentResource,
    DeploymentResources,
    IndigoDeploymentRequest,
    IndigoError,
)
from flotilla.gateway.view import (
    CreateDeployment,
    DeploymentPage,
    DeploymentView,
    ErrorBody,
    SiteList,
)

_REQUESTS: tuple[type[BaseModel], ...] = (CreateDeployment, IndigoDeploymentRequest)
_RESPONSES: tuple[type[BaseModel], ...] = (
    DeploymentView,
    DeploymentPage,
    SiteList,
    ErrorBody,
    DeploymentResource,
    DeploymentResources,
    IndigoError,
)
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_FORCE = {
    "name": "force",
    "in": "query",
    "schema": {"type": "boolean", "default": False},
    "description": "Release even what cannot be cleaned up.",
}
_STATUS_TEXT = {
    400: "The request is malformed (the message names the field).",
    401: "No valid bearer token.",
    403: "Not allowed for the caller's groups.",
    404: "No such deployment visible to the caller.",
    409: "The deployment is already being deleted, or deleted.",
    422: "The template is invalid (each problem names node and field).",
    503: "The bus, the store or the token issuer is not answering.",
}


def _query(name: str, kind: str, description: str, **extra: Any) -> dict[str, Any]:
    schema = {"type": kind, **extra}
    return {"name": name, "in": "query", "schema": schema, "description": description}


def _json(model: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}


def _text(media: str) -> dict[str, Any]:
    return {media: {"schema": {"type": "string"}}}


def _operation(
    summary: str,
    *,
    tag: str,
    ok: tuple[int, dict[str, Any] | None],
    errors: tuple[int, ...] = (401, 404),
    body: str | None = None,
    parameters: tuple[dict[str, Any], ...] = (),
    error_model: str = "ErrorBody",
    secured: bool = True,
) -> dict[str, Any]:
    status, content = ok
    responses: dict[str, Any] = {str(status): {"description": "OK"}}
    if content is not None:
        responses[str(status)]["content"] = content
    for code in errors:
        responses[str(code)] = {"description": _STATUS_TEXT[code], "content": _json(error_model)}
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    if not secured:
        operation["security"] = []
    return operation


def _v1_paths() -> dict[str, Any]:
    tag = "flotilla"
    deployment = "/v1/deployments/{id}"
    listing = (
        _query("group", "string", "Only this group."),
        _query("owner", "string", "Only this owner."),
        _query("status", "string", "Only this status, e.g. CREATE_COMPLETE."),
        _query("offset", "integer", "Deployments to skip.", minimum=0, default=0),
        _query("limit", "integer", "Page size.", minimum=1, maximum=500, default=50),
    )
    events = (
        _query("after", "integer", "Resume after this event id (or Last-Event-ID).", minimum=0),
        _query("until_final", "boolean", "End once the deployment settles in a final status."),
    )
    return {
        "/v1/deployments": {
            "post": _operation(
                "Ask for a deployment",
                tag=tag,
                ok=(201, _json("DeploymentView")),
                errors=(400, 401, 403, 422, 503),
                body="CreateDeployment",
            ),
            "get": _operation(
                "List deployments, newest first",
                tag=tag,
                ok=(200, _json("DeploymentPage")),
                errors=(400, 401, 403),
                parameters=listing,
            ),
        },
        deployment: {
            "parameters": [_ID],
            "get": _operation("One deployment", tag=tag, ok=(200, _json("DeploymentView"))),
            "delete": _operation(
                "Delete a deployment",
                tag=tag,
                ok=(202, _json("DeploymentView")),
                errors=(401, 404, 409, 503),
                parameters=(_FORCE,),
            ),
        },
        f"{deployment}/template": {
            "parameters": [_ID],
            "get": _operation("The deployment's template", tag=tag, ok=(200, _text("text/yaml"))),
        },
        f"{deployment}/attempts/{{number}}/log": {
            "parameters": [
                _ID,
                {"name": "number", "in": "path", "required": True, "schema": {"type": "integer"}},
            ],
            "get": _operation("One attempt's log", tag=tag, ok=(200, _text("text/plain"))),
        },
        f"{deployment}/events": {
            "parameters": [_ID],
            "get": _operation(
                "The deployment's events (Server-Sent Events; id = journal sequence)",
                tag=tag,
                ok=(200, _text("text/event-stream")),
                errors=(400, 401, 404),
                parameters=events,
            ),
        },
        "/v1/sites": {
            "get": _operation(
                "The federation's sites", tag=tag, ok=(200, _json("SiteList")), errors=(401,)
            )
        },
    }


def _indigo_paths() -> dict[str, Any]:
    tag = "indigo"
    common: dict[str, Any] = {"tag": tag, "error_model": "IndigoError"}
    listing = (
        _query("createdBy", "string", "'me', or subject@issuer."),
        _query("userGroup", "string", "Only this group."),
        _query("page", "integer", "Page number, from 0.", minimum=0, default=0),
        _query("size", "integer", "Page size.", minimum=1, maximum=1000, default=10),
    )
    return {
        "/deployments": {
            "post": _operation(
                "Create a deployment (INDIGO DeploymentRequest)",
                ok=(201, _json("DeploymentResource")),
                errors=(400, 401, 403, 422, 503),
                body="IndigoDeploymentRequest",
                **common,
            ),
            "get": _operation(
                "List deployments (paged)",
                ok=(200, _json("DeploymentResources")),
                errors=(400, 401, 403),
                parameters=listing,
                **common,
            ),
        },
        "/deployments/{id}": {
            "parameters": [_ID],
            "get": _operation("One deployment", ok=(200, _json("DeploymentResource")), **common),
            "delete": _operation(
                "Delete a deployment",
                ok=(204, None),
                errors=(401, 404, 409, 503),
                parameters=(_FORCE,),
                **common,
            ),
        },
        "/deployments/{id}/template": {
            "parameters": [_ID],
            "get": _operation("The stored template", ok=(200, _text("text/plain")), **common),
        },
        "/deployments/{id}/log": {
            "parameters": [_ID],
            "get": _operation("The deployment's log", ok=(200, _text("text/plain")), **common),
        },
    }


def _operations_paths() -> dict[str, Any]:
    def plain(summary: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
        return _operation(summary, tag="operations", ok=(200, content), errors=(), secured=False)

    return {
        "/healthz": {"get": plain("The process is alive")},
        "/readyz": {"get": plain("The store and the bus are usable (503 when not)")},
        "/metrics": {"get": plain("Prometheus metrics", _text("text/plain"))},
        "/openapi.json": {"get": plain("This document", {"application/json": {}})},
    }


def _schemas() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((model, "validation") for model in _REQUESTS),
        *((model, "serialization") for model in _RESPONSES),
    ]
    _, definitions = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = definitions.get("$defs", {})
    return schemas


def openapi_document(version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route the gateway serves."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Flotilla gateway",
            "version": version,
            "description": (
                "Flotilla's own API under /v1, and the INDIGO PaaS Orchestrator's API under"
                " /deployments for existing INDIGO clients."
            ),
        },
        "paths": {**_v1_paths(), **_indigo_paths(), **_operations_paths()},
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": [{"bearer": []}],
    }
