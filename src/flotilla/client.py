"""A small async client of the gateway's own ``/v1`` API, used by the CLI and tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx
from httpx_sse import aconnect_sse

from flotilla.errors import FlotillaError, RetryableError

FINAL = frozenset(
    {"CREATE_COMPLETE", "CREATE_FAILED", "DELETE_COMPLETE", "DELETE_FAILED", "UPDATE_COMPLETE"}
)
DELETED = frozenset({"DELETE_COMPLETE", "DELETE_FAILED"})


class ApiError(FlotillaError):
    """The gateway answered with an error; ``status`` is the HTTP status."""

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retryable = status >= 500


class GatewayUnreachableError(RetryableError):
    """The gateway could not be reached."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a deployment's stream: its sequence, CloudEvents type and envelope."""

    id: int
    type: str
    message: dict[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        """The event's payload."""
        payload: dict[str, Any] = self.message.get("data", {})
        return payload


class FlotillaClient:
    """Talk to a Flotilla gateway.

    Args:
        url: Base URL of the gateway, e.g. ``http://127.0.0.1:8080``.
        token: OIDC bearer token, when the gateway checks them.
        timeout: Seconds per request (streams wait as long as it takes).
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self._url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    async def create(self, template: str, **fields: Any) -> dict[str, Any]:
        """Ask for a deployment; ``fields`` are the optional request fields (inputs, site...)."""
        body = {"template": template, **{k: v for k, v in fields.items() if v is not None}}
        return await self._call("POST", "/v1/deployments", json=body)

    async def get(self, deployment_id: str) -> dict[str, Any]:
        """One deployment with its attempts."""
        return await self._call("GET", f"/v1/deployments/{deployment_id}")

    async def list(self, **filters: Any) -> dict[str, Any]:
        """A page of deployments: ``group``, ``owner``, ``status``, ``offset``, ``limit``."""
        params = {k: v for k, v in filters.items() if v is not None}
        return await self._call("GET", "/v1/deployments", params=params)

    async def delete(self, deployment_id: str, *, force: bool = False) -> dict[str, Any]:
        """Delete a deployment everywhere it holds resources."""
        params = {"force": "true"} if force else {}
        return await self._call("DELETE", f"/v1/deployments/{deployment_id}", params=params)

    async def sites(self) -> dict[str, Any]:
        """The sites the federation knows, with lease age, capacity and quota use."""
        return await self._call("GET", "/v1/sites")

    async def events(
        self,
        deployment_id: str,
        *,
        after: int | None = None,
        until: Collection[str] = (),
    ) -> AsyncIterator[Event]:
        """A deployment's events in order, from after ``after``, resuming after a drop.

        The stream ends after an event whose status is in ``until`` (``FINAL`` for any
        final status); with no ``until`` it goes on until the caller stops.
        """
        last = after
        path = f"/v1/deployments/{deployment_id}/events"
        while True:
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                async with aconnect_sse(
                    self._http, "GET", path, headers=headers, timeout=None
                ) as source:
                    if source.response.status_code >= 400:
                        await source.response.aread()
                        raise _api_error(source.response)
                    async for sse in source.aiter_sse():
                        if not sse.data:
                            continue
                        event = Event(id=int(sse.id), type=sse.event, message=json.loads(sse.data))
                        last = event.id
                        yield event
                        if event.data.get("status") in until:
                            return
            except httpx.RemoteProtocolError:
                continue  # the stream broke: resume from the last event seen
            except httpx.TransportError as exc:
                raise GatewayUnreachableError(
                    f"cannot reach the gateway at {self._url}: {exc}"
                ) from exc

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            detail = str(exc) or type(exc).__name__
            raise GatewayUnreachableError(
                f"cannot reach the gateway at {self._url}: {detail}"
            ) from exc
        if response.status_code >= 400:
            raise _api_error(response)
        body: dict[str, Any] = response.json()
        return body


def _api_error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        message = str(error.get("message", response.reason_phrase))
        code = str(error.get("code")) if error.get("code") else None
    else:
        message, code = response.text[:500] or response.reason_phrase, None
    return ApiError(f"{response.status_code} {message}", status=response.status_code, code=code)


__all__ = ["ApiError", "Event", "FlotillaClient", "GatewayUnreachableError"]
