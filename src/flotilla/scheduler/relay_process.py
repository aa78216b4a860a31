"""The outbox relay in a process of its own, so that publishing uses the second core.

The scheduler does everything in one thread: it consumes, decides, commits and, with an
``OutboxRelay`` beside it, publishes. On a small machine shared with the broker and the
database, that thread is the limit; publishing and reading back the outbox take about a
quarter of it. ``RelayProcess`` runs the same ``OutboxRelay`` in a child process over
the same database (any ``SqlStore``: the outbox is durable, so the child reads what the
scheduler committed) and the same broker, and is used by the service exactly as an
in-process relay is: ``run``, ``shutdown``, ``wake`` and ``room``. Once its store and bus
are open, the child tunes its garbage collector as the scheduler does
(``runtime.tune_collector``).

The two talk over two pipes, one byte per signal, never blocking the scheduler:

- scheduler to child: ``w`` (a commit wrote messages: relay now), ``s`` (stop);
- child to scheduler: ``r`` (ready: its store and bus are open), ``b`` (behind: ``room()``
  makes new work wait), ``c`` (caught up).

A wake that finds the pipe full is dropped: the child already has wakes to read, and
it polls the outbox besides. The child stops when told, on SIGTERM, and when the
scheduler's end of the pipe closes, which is what a killed scheduler leaves behind; it
ignores SIGINT, which a terminal sends to the whole process group, and waits to be told.
A child that exits on its own is started again after ``restart_delay``, and after twice
as long each time it exits again, up to ``restart_limit``: a database or broker that is
down makes every child fail as it opens, and the scheduler should neither spin nor flood
its log meanwhile. A child that was ready and ran longer than the limit starts the waits
afresh. Its outbox entries are still there, so nothing is lost, and a message it
published but had not yet removed goes again with the same id (consumers are idempotent
on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from multiprocessing.connection import Connection

import structlog

from flotilla import runtime
from flotilla.backoff import Backoff
from flotilla.scheduler.relay import OutboxRelay
from flotilla.settings import EventLoop

_log = structlog.get_logger("flotilla.scheduler.relay")

WAKE, STOP, READY, BEHIND, CAUGHT_UP = b"w", b"s", b"r", b"b", b"c"

BEHIND_AFTER = 3
"""``OutboxRelay.behind_after`` for a relay in a process of its own. With the scheduler
publishing in its own thread, ``room()`` after each full batch mostly made the scheduler
wait for nothing: ``bench/scheduler.py`` placed 720-750/s with 1, 830-850/s with 3 (decision
to command p50 90 ms) and 870-890/s with no waiting at all (90-120 ms)."""

OpenRelay = Callable[[], AbstractAsyncContextManager[OutboxRelay]]
"""Opens the child's store and bus and yields its relay; must pickle (a module-level
function, or a ``functools.partial`` of one), since the child is spawned, not forked."""


class RelayProcess:
    """Runs an ``OutboxRelay`` in a child process while ``run()`` runs.

    Args:
        open_relay: Builds the child's relay (see ``OpenRelay``).
        loop: The child's event loop.
        restart_delay: Wait before starting a child again that exited on its own.
        restart_limit: The longest wait: each exit doubles the wait before the next start,
            up to here, unless the child was ready and ran longer than this, which brings
            it back to ``restart_delay``.
        stop_timeout: How long ``shutdown()`` waits for the child to finish the publishes
            under way before killing it.
    """

    def __init__(
        self,
        open_relay: OpenRelay,
        *,
        loop: EventLoop = "uvloop",
        restart_delay: timedelta = timedelta(seconds=1),
        restart_limit: timedelta = timedelta(seconds=30),
        stop_timeout: timedelta = timedelta(seconds=35),
    ) -> None:
        if restart_limit < restart_delay:
            raise ValueError(
                f"restart_limit {restart_limit} is below restart_delay {restart_delay}"
            )
        self._open_relay = open_relay
        self._loop_kind = loop
        # One child: no crowd of clients to spread out, so no jitter.
        self._backoff = Backoff(restart_delay, restart_limit, jitter=0)
        self._restart_limit = restart_limit.total_seconds()
        self._stop_timeout = stop_timeout.total_seconds()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._to_child: Connection | None = None
        self._wake_queued = False
        self._ready = False  # the running child opened its store and bus
        self._caught_up = asyncio.Event()
        self._caught_up.set()
        self._stopping = asyncio.Event()
        self._running = False
        self._finished = asyncio.Event()
        self.starts = 0
        """Children started so far."""

    @property
    def pid(self) -> int | None:
        """The running child's process id."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def wake(self) -> None:
        """Tell the child to relay now; wakes in one turn of the event loop go as one."""
        if self._to_child is None or self._wake_queued:
            return
        self._wake_queued = True
        asyncio.get_running_loop().call_soon(self._send_wake)

    async def room(self) -> None:
        """Wait while the child says it is behind (see ``OutboxRelay.room``)."""
        if self._running and not self._stopping.is_set():
            await self._caught_up.wait()

    async def run(self) -> None:
        """Keep a child relaying until ``shutdown()``; returns at once if already shut down."""
        if self._stopping.is_set() or self._running:
            return
        self._running = True
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                started = loop.time()
                exitcode = await self._run_child()
                if self._stopping.is_set():
                    break
                if self._ready and loop.time() - started >= self._restart_limit:
                    self._backoff.reset()  # it worked a good while: start afresh
                delay = self._backoff.delay()
                # A clean exit is a SIGTERM sent to the whole process group, as to this one.
                log = _log.info if exitcode == 0 else _log.error
                log("outbox_relay_process_exited", exitcode=exitcode, restart_in=round(delay, 3))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
        finally:
            self._caught_up.set()
            self._finished.set()

    async def shutdown(self) -> None:
        """Tell the child to stop after the publishes under way and wait for it."""
        self._stopping.set()
        self._caught_up.set()
        if self._to_child is not None:
            _send(self._to_child, STOP)
        if not self._running:
            return
        try:
            async with asyncio.timeout(self._stop_timeout):
                await self._finished.wait()
        except TimeoutError:
            process = self._process
            if process is not None:
                _log.error("outbox_relay_process_killed", pid=process.pid)
                process.kill()
            await self._finished.wait()

    async def _run_child(self) -> int | None:
        """Start a child, serve its signals until it exits, and return its exit code."""
        context = multiprocessing.get_context("spawn")
        from_child, child_out = context.Pipe(duplex=False)
        child_in, to_child = context.Pipe(duplex=False)
        process = context.Process(
            target=_serve,
            args=(self._open_relay, child_in, child_out, self._loop_kind),
            name="flotilla-relay",
            daemon=True,
        )
        process.start()
        self.starts += 1
        child_in.close()  # the child's ends: closed here, so only the child holds them
        child_out.close()
        os.set_blocking(to_child.fileno(), False)
        self._process, self._to_child, self._ready = process, to_child, False
        _log.info("outbox_relay_process_started", pid=process.pid)
        loop = asyncio.get_running_loop()
        exited = asyncio.Event()
        loop.add_reader(from_child.fileno(), self._on_signals, from_child)
        loop.add_reader(process.sentinel, exited.set)
        try:
            if self._stopping.is_set():  # shutdown() came while it was starting
                _send(to_child, STOP)
            await exited.wait()
        except asyncio.CancelledError:
            process.kill()
            raise
        finally:
            loop.remove_reader(process.sentinel)
            loop.remove_reader(from_child.fileno())
            self._process = self._to_child = None
            self._caught_up.set()  # nothing relays now; new work must not wait on it
            from_child.close()
            to_child.close()
            await asyncio.to_thread(process.join)
        return process.exitcode

    def _on_signals(self, pipe: Connection) -> None:
        try:
            signals = os.read(pipe.fileno(), 4096)
        except BlockingIOError:
            return
        if not signals:  # the child is gone; its sentinel says so too
            asyncio.get_running_loop().remove_reader(pipe.fileno())
            return
        if READY in signals:
            self._ready = True
            signals = signals.replace(READY, b"")
        if signals[-1:] == BEHIND:  # only the last state matters
            self._caught_up.clear()
        elif signals:
            self._caught_up.set()

    def _send_wake(self) -> None:
        self._wake_queued = False
        if self._to_child is not None:
            _send(self._to_child, WAKE)


def _send(pipe: Connection, signal_byte: bytes) -> None:
    """Write one signal; a full pipe already holds signals to read, and a closed one has
    nobody left to read it."""
    with contextlib.suppress(OSError):  # BlockingIOError, BrokenPipeError
        os.write(pipe.fileno(), signal_byte)


def _serve(open_relay: OpenRelay, inbox: Connection, outbox: Connection, loop: EventLoop) -> None:
    """The child: relay until told to stop, SIGTERM, or the scheduler's end closing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    runtime.run(_relay_until_stopped(open_relay, inbox, outbox), loop=loop)


async def _relay_until_stopped(
    open_relay: OpenRelay, inbox: Connection, outbox: Connection
) -> None:
    """Relay until told to stop, or the scheduler is gone; tell it when the relay is behind."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with open_relay() as relay:
        runtime.tune_collector()  # the store and bus now live as long as the child
        _send(outbox, READY)

        def on_signals() -> None:
            try:
                signals = os.read(inbox.fileno(), 4096)
            except BlockingIOError:
                return
            if not signals or STOP in signals:  # EOF: the scheduler is gone
                loop.remove_reader(inbox.fileno())
                stop.set()
            else:
                relay.wake()

        os.set_blocking(inbox.fileno(), False)
        loop.add_reader(inbox.fileno(), on_signals)
        relay.on_behind = lambda behind: _send(outbox, BEHIND if behind else CAUGHT_UP)
        async with asyncio.TaskGroup() as tasks:
            relaying = tasks.create_task(relay.run())
            stopping = tasks.create_task(stop.wait())
            await asyncio.wait({relaying, stopping}, return_when=asyncio.FIRST_COMPLETED)
            await relay.shutdown()
            stopping.cancel()
