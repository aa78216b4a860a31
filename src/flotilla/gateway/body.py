"""Reading requests and writing responses: JSON bodies, query parameters, model responses."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from flotilla.gateway.error import InvalidRequestError

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's body as a JSON object.

    Raises:
        InvalidRequestError: the body is not JSON, or not an object.
    """
    text = await request.text()
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    return body


def query_int(
    request: web.Request, name: str, default: int, *, low: int = 0, high: int | None = None
) -> int:
    """An integer query parameter within ``[low, high]``.

    Raises:
        InvalidRequestError: the value is not an integer or out of range.
    """
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequestError(f"query parameter {name!r} must be an integer") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidRequestError(f"query parameter {name!r} must be {bound}")
    return value


def query_bool(request: web.Request, name: str) -> bool:
    """A boolean query parameter (``true``/``false``, ``1``/``0``); absent is false.

    Raises:
        InvalidRequestError: the value is not a boolean.
    """
    raw = request.query.get(name, "").lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise InvalidRequestError(f"query parameter {name!r} must be true or false")


def model_response(
    model: BaseModel,
    *,
    status: int = 200,
    by_alias: bool = False,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON response of a model (``by_alias`` for the INDIGO field names)."""
    return web.json_response(
        text=model.model_dump_json(by_alias=by_alias), status=status, headers=headers
    )
