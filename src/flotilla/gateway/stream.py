"""A deployment's events as Server-Sent Events, read from the store's journal.

Each event's ``id`` is its journal sequence, its ``event`` the message type and its
``data`` the JSON envelope, so a client that lost the connection resumes exactly where it
was with ``Last-Event-ID`` (or ``?after=``). The stream polls the journal for new entries
and stays open; with ``until_final`` it ends right after the next final status event
(``CREATE_COMPLETE``, ``DELETE_FAILED``, ...) following the resume point, so a client that
resumes after a create's final status follows the delete that comes later.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import structlog
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from flotilla.gateway.auth import Identity
from flotilla.gateway.deployment import Deployments
from flotilla.gateway.error import InvalidRequestError
from flotilla.scheduler.model import JournalEntry
from flotilla.scheduler.store import FINAL_STATUSES
from flotilla.schemas import DeploymentStatusChanged, encode

_log = structlog.get_logger("flotilla.gateway")
_PAGE = 500


def resume_point(request: web.Request) -> int:
    """The sequence to resume after: ``Last-Event-ID``, else ``?after=``, else 0.

    Raises:
        InvalidRequestError: the value is not a non-negative integer.
    """
    raw = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    try:
        after = int(raw)
    except ValueError:
        raise InvalidRequestError(f"event id {raw!r} is not an integer") from None
    if after < 0:
        raise InvalidRequestError(f"event id {after} is negative")
    return after


class EventStream:
    """Streams one deployment's journal to one client.

    Args:
        deployments: Checks the caller may see the deployment and reads its journal.
        poll: Time between two looks for new entries.
        stop: Set when the gateway shuts down; open streams end.
    """

    def __init__(self, deployments: Deployments, *, poll: timedelta, stop: asyncio.Event) -> None:
        self._deployments = deployments
        self._poll = poll.total_seconds()
        self._stop = stop

    async def serve(
        self, request: web.Request, who: Identity, deployment_id: str, *, until_final: bool
    ) -> web.StreamResponse:
        """Answer with the event stream (errors before the first byte are normal responses)."""
        after = resume_point(request)
        await self._deployments.get(who, deployment_id)  # 404 before the stream starts
        async with sse_response(request) as response:
            try:
                await self._pump(response, deployment_id, after, until_final=until_final)
            except (ConnectionResetError, asyncio.CancelledError):
                raise
            except Exception:
                # The stream has started: no error body can follow, so end it and log here.
                _log.exception("event_stream_failed", deployment_id=deployment_id)
        return response

    async def _pump(
        self, response: EventSourceResponse, deployment_id: str, after: int, *, until_final: bool
    ) -> None:
        store = self._deployments.store
        while not self._stop.is_set():
            entries = await store.journal(deployment_id, after=after, limit=_PAGE)
            for entry in entries:
                data = encode(entry.message).decode()
                kind = getattr(entry.message, "type", "message")
                await response.send(data, id=str(entry.sequence), event=kind)
                after = entry.sequence
                if until_final and _is_final(entry):
                    return
            if not entries:
                await self._pause()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll):
                await self._stop.wait()


def _is_final(entry: JournalEntry) -> bool:
    message = entry.message
    return isinstance(message, DeploymentStatusChanged) and message.data.status in FINAL_STATUSES
