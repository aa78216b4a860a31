"""Callbacks: POST a deployment to its ``callback_url`` when it reaches a final status.

``CallbackSender`` tails the store's journal. For every final status change (create or
delete, complete or failed) of a deployment whose request has a callback URL, it POSTs the
``/v1`` view of the deployment, signed with ``X-Flotilla-Signature: sha256=<hex HMAC of
the body>`` when a secret is configured, and retries with exponential backoff up to the
configured number of retries. ``X-Flotilla-Event-Id`` carries the journal sequence, so a
receiver can drop duplicates.

Delivery is at least once. The position in the journal is saved in the store (a cursor)
only past entries whose callback has finished (delivered or given up on), so a gateway
restart resends what was in flight rather than losing it; on its very first start the
sender begins at the end of the journal, not with the whole history. On PostgreSQL a
journal sequence can become visible after a higher one (concurrent transactions), so a
missing sequence holds the cursor back for ``gap_grace`` before it is taken as a rollback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import time
from collections.abc import Iterable
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
import structlog

from flotilla.gateway.metrics import GatewayMetrics
from flotilla.gateway.snapshot import Snapshot
from flotilla.gateway.view import deployment_view
from flotilla.scheduler.model import DeploymentRecord, JournalEntry
from flotilla.scheduler.store import Store
from flotilla.schemas import DeploymentStatus, DeploymentStatusChanged
from flotilla.settings import GatewaySettings

_log = structlog.get_logger("flotilla.gateway")

FINAL = frozenset(
    {
        DeploymentStatus.CREATE_COMPLETE,
        DeploymentStatus.CREATE_FAILED,
        DeploymentStatus.DELETE_COMPLETE,
        DeploymentStatus.DELETE_FAILED,
    }
)
CURSOR = "gateway.callbacks"
SIGNATURE_HEADER = "X-Flotilla-Signature"
EVENT_HEADER = "X-Flotilla-Event-Id"
_MAX_BACKOFF = 300.0


def signature(secret: bytes, body: bytes) -> str:
    """The signature header value of a body: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class CallbackSender:
    """Sends callbacks for final statuses, from the journal, until ``shutdown()``.

    Args:
        store: The store whose journal is followed.
        settings: Secret, retries, backoff, timeout and poll interval.
        metrics: Counts deliveries by outcome.
        http: An httpx client to use (closed by its owner); one is made otherwise.
        max_in_flight: Callbacks being delivered at once.
        gap_grace: How long a missing journal sequence holds the cursor back.
    """

    def __init__(
        self,
        *,
        store: Store,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        http: httpx.AsyncClient | None = None,
        max_in_flight: int = 32,
        gap_grace: timedelta = timedelta(seconds=5),
    ) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._http = http
        self._slots = asyncio.Semaphore(max_in_flight)
        self._grace = gap_grace.total_seconds()
        self._stop = asyncio.Event()
        self._low = 0  # every sequence up to here is settled
        self._seen: set[int] = set()  # sequences above ``_low`` already taken
        self._pending: set[int] = set()  # sequences whose callback is under way
        self._gaps: dict[int, float] = {}  # a missing sequence -> when it was first missed
        self._saved = 0
        self._prepared = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Follow the journal and send callbacks until ``shutdown()``."""
        async with contextlib.AsyncExitStack() as stack:
            if self._http is None:
                timeout = self._settings.callback_timeout.total_seconds()
                self._http = await stack.enter_async_context(httpx.AsyncClient(timeout=timeout))
            async with asyncio.TaskGroup() as tasks:
                if not self._prepared:
                    await self.prepare()
                while not self._stop.is_set():
                    await self._poll_safely(tasks)
                    await self._pause()
                for task in self._tasks:
                    task.cancel()  # unfinished callbacks are resent after a restart

    async def shutdown(self) -> None:
        """Ask ``run()`` to stop; safe before start and twice."""
        self._stop.set()

    async def prepare(self) -> None:
        """Read where to start: the saved cursor, else (first start ever) the journal's end.

        ``run()`` prepares itself; calling this first makes the starting point certain
        before the gateway serves its first request.
        """
        saved = await self._store.cursor(CURSOR)
        if saved is None:
            saved = await self._store.journal_head()
            await self._store.save_cursor(CURSOR, saved)
        self._low = self._saved = saved
        self._prepared = True
        _log.info("callbacks_prepared", position=saved)

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.poll_interval.total_seconds()):
                await self._stop.wait()

    async def _poll_safely(self, tasks: asyncio.TaskGroup) -> None:
        try:
            await self._poll(tasks)
        except Exception:
            # The task's boundary: a store hiccup must not end callbacks for good.
            _log.exception("callbacks_poll_failed")

    async def _poll(self, tasks: asyncio.TaskGroup) -> None:
        head = max(self._seen, default=self._low)
        entries = await self._store.journal_since(head, limit=500)
        if head - self._low > len(self._seen):
            # Some sequence below ``head`` was missing: look again, it may be visible now.
            entries += await self._store.journal_since(self._low, limit=head - self._low)
        for entry in entries:
            self._take(entry, tasks)
        await self._advance()

    def _take(self, entry: JournalEntry, tasks: asyncio.TaskGroup) -> None:
        if entry.sequence <= self._low or entry.sequence in self._seen:
            return
        self._seen.add(entry.sequence)
        message = entry.message
        if isinstance(message, DeploymentStatusChanged) and message.data.status in FINAL:
            self._pending.add(entry.sequence)
            task = tasks.create_task(self._send(entry, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _advance(self) -> None:
        now = time.monotonic()
        low = self._low
        for sequence in sorted(self._seen):
            if sequence > low + 1 and now - self._gaps.setdefault(low + 1, now) < self._grace:
                break
            if sequence in self._pending:
                break
            low = sequence
        self._low = low
        self._seen = {s for s in self._seen if s > low}
        self._gaps = {s: t for s, t in self._gaps.items() if s > low}
        if low > self._saved:
            await self._store.save_cursor(CURSOR, low)
            self._saved = low

    async def _send(self, entry: JournalEntry, event: DeploymentStatusChanged) -> None:
        try:
            async with self._slots:
                record = await self._store.get(entry.deployment_id)
                url = record.request.callback_url if record is not None else None
                body = await self._body(record, event) if record is not None else None
            if url is not None and body is not None:
                await self._deliver(url, body, entry)
        except Exception:
            _log.exception("callback_failed", deployment_id=entry.deployment_id)
        finally:
            self._pending.discard(entry.sequence)

    async def _body(self, record: DeploymentRecord, event: DeploymentStatusChanged) -> bytes:
        attempts = tuple(await self._store.attempts(record.id))
        view = deployment_view(Snapshot(record=record, attempts=attempts))
        # The status that triggered the callback, even if the deployment moved on since.
        view = view.model_copy(
            update={"status": event.data.status, "status_reason": event.data.reason}
        )
        return view.model_dump_json().encode()

    async def _deliver(self, url: str, body: bytes, entry: JournalEntry) -> None:
        headers = {"Content-Type": "application/json", EVENT_HEADER: str(entry.sequence)}
        secret = self._settings.callback_secret
        if secret is not None:
            headers[SIGNATURE_HEADER] = signature(secret.get_secret_value().encode(), body)
        where = _origin(url)
        refusal = await self._refusal(url)
        if refusal is not None:
            self._metrics.callbacks.labels("refused").inc()
            _log.warning("callback_refused", deployment_id=entry.deployment_id, reason=refusal)
            return
        for attempt, delay in enumerate(self._delays()):
            if delay:
                await asyncio.sleep(delay)
            # A slot is held per POST, not through the back-off: a receiver that never
            # answers cannot hold up everyone else's callbacks.
            async with self._slots:
                problem = await self._post(url, body, headers)
            if problem is None:
                self._metrics.callbacks.labels("delivered").inc()
                _log.info("callback_delivered", deployment_id=entry.deployment_id, to=where)
                return
            self._metrics.callbacks.labels("retried").inc()
            _log.info(
                "callback_attempt_failed",
                deployment_id=entry.deployment_id,
                to=where,
                attempt=attempt + 1,
                problem=problem,
            )
        self._metrics.callbacks.labels("failed").inc()
        _log.warning("callback_abandoned", deployment_id=entry.deployment_id, to=where)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str | None:
        """POST once; None when the receiver took it, else what went wrong."""
        assert self._http is not None
        try:
            async with asyncio.timeout(self._settings.callback_timeout.total_seconds()):
                response = await self._http.post(url, content=body, headers=headers)
        except (httpx.HTTPError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if response.is_success:
            return None
        return f"HTTP {response.status_code}"

    async def _refusal(self, url: str) -> str | None:
        """Why a callback URL may not be called, or None.

        Unless private networks are allowed, every address the host resolves to must be a
        public one, so a callback cannot be aimed at the broker, the database or a cloud's
        metadata service. (The check is made when sending; a name that resolves elsewhere
        a moment later is not caught.)
        """
        if self._settings.callback_private_networks:
            return None
        host = urlsplit(url).hostname
        if host is None:
            return "the callback URL has no host"
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, None)
        except OSError:
            return None  # the POST reports the name that does not resolve, and is retried
        for *_, address in found:
            ip = ipaddress.ip_address(address[0])
            if not ip.is_global:
                return f"{host} is {ip}, not a public address"
        return None

    def _delays(self) -> Iterable[float]:
        """No wait before the first try, then the backoff, doubling each retry (capped)."""
        backoff = self._settings.callback_backoff.total_seconds()
        yield 0.0
        for retry in range(self._settings.callback_retries):
            yield min(backoff * 2**retry, _MAX_BACKOFF)


def _origin(url: str) -> str:
    """Scheme and host of a URL: its path or query may carry a receiver's token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
