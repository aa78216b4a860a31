"""The async TOSCA parser: tosca-parser in one worker process, results cached by content.

What is cached, and how inputs are applied: tosca-parser evaluates ``get_input`` while it
parses, but we never give it inputs. The worker parses the template text alone (inputs at
their declared defaults, which only affects its validation of functions) and returns a
``Topology``: node types and ancestry, raw property values with type defaults, requirements,
policies and input declarations. That ``Topology`` is cached by the SHA-256 of the text.
Each request then checks its inputs against the declarations and evaluates ``get_input``,
``get_property``, ``concat`` and ``token`` itself (``function.py``), in the event loop: no
process round trip and no re-parse when only the inputs change. Parse failures are cached
too, since the same text fails the same way.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any

from flotilla.errors import FlotillaError, RetryableError
from flotilla.scheduler.tosca import worker
from flotilla.scheduler.tosca.error import TemplateError, TemplateProblem
from flotilla.scheduler.tosca.extraction import derive
from flotilla.scheduler.tosca.requirement import TemplateRequirements
from flotilla.scheduler.tosca.topology import Topology


class ParserClosedError(FlotillaError):
    """The template parser was used after it was closed."""


class ParserUnavailableError(RetryableError):
    """The parser's worker process died; a new one is started for the next request."""


class ParserState(StrEnum):
    """Lifecycle of a ``TemplateParser``."""

    IDLE = "idle"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(slots=True)
class ParserStats:
    """Counters to observe the cache: ``parses`` counts texts actually parsed."""

    parses: int = 0
    cache_hits: int = 0
    worker_restarts: int = 0


class TemplateParser:
    """Parses TOSCA templates off the event loop and derives their requirements.

    The worker process starts on first use and is reused; ``aclose()`` stops it. Usable as an
    async context manager. One instance may serve any number of concurrent requests: they
    queue for the single worker (tosca-parser is not thread-safe), and concurrent requests
    for the same text share one parse.
    """

    def __init__(
        self,
        *,
        cache_size: int = 256,
        timeout: timedelta = timedelta(seconds=60),
        max_tasks_per_worker: int = 1000,
    ) -> None:
        self._cache: OrderedDict[str, Topology | TemplateError] = OrderedDict()
        self._cache_size = cache_size
        self._timeout = timeout
        self._max_tasks = max_tasks_per_worker
        self._pending: dict[str, asyncio.Future[Topology]] = {}
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False
        self.stats = ParserStats()

    @property
    def state(self) -> ParserState:
        """Whether the worker runs, has not started yet, or the parser is closed."""
        if self._closed:
            return ParserState.CLOSED
        return ParserState.RUNNING if self._executor else ParserState.IDLE

    async def requirements(
        self, text: str, inputs: Mapping[str, Any] | None = None
    ) -> TemplateRequirements:
        """Parse ``text`` (or reuse its cached parse) and derive requirements for ``inputs``.

        Raises:
            TemplateError: The template or the inputs are invalid; problems name node and field.
            ParserUnavailableError: The worker died; retrying may work.
        """
        return derive(await self.parse(text), inputs or {})

    async def parse(self, text: str) -> Topology:
        """The validated topology of ``text``, from the cache when it was parsed before."""
        if self._closed:
            raise ParserClosedError("the template parser is closed")
        key = worker.digest(text)
        if key in self._cache:
            self.stats.cache_hits += 1
            return self._cached(key)
        if key in self._pending:
            self.stats.cache_hits += 1
            return await asyncio.shield(self._pending[key])
        future: asyncio.Future[Topology] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            topology = await self._parse_in_worker(key, text)
        except BaseException as exc:
            _settle(future, exc)
            raise
        finally:
            del self._pending[key]
        future.set_result(topology)
        return topology

    def _cached(self, key: str) -> Topology:
        self._cache.move_to_end(key)
        found = self._cache[key]
        if isinstance(found, TemplateError):
            raise TemplateError(found.problems)
        return found

    def _remember(self, key: str, result: Topology | TemplateError) -> None:
        self._cache[key] = result
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _parse_in_worker(self, key: str, text: str) -> Topology:
        loop = asyncio.get_running_loop()
        self.stats.parses += 1
        try:
            async with asyncio.timeout(self._timeout.total_seconds()):
                topology = await loop.run_in_executor(self._worker(), worker.parse_text, text)
        except TemplateError as exc:
            self._remember(key, exc)
            raise
        except TimeoutError:
            self._restart()  # the worker is stuck in this template; nothing else can use it
            seconds = self._timeout.total_seconds()
            problem = TemplateProblem(
                node=None, field="template", message=f"parsing took longer than {seconds:g}s"
            )
            raise TemplateError([problem]) from None
        except BrokenProcessPool as exc:
            self._restart()
            raise ParserUnavailableError("the TOSCA parser process died") from exc
        self._remember(key, topology)
        return topology

    def _worker(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn, not fork: forking a process that runs an event loop and threads is unsafe.
            self._executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=worker.initialize,
                max_tasks_per_child=self._max_tasks,
            )
        return self._executor

    def _restart(self) -> None:
        self.stats.worker_restarts += 1
        self._stop(kill=True)

    def _stop(self, *, kill: bool) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if kill:
            # The pool cannot cancel a running call; terminate its process directly.
            for process in list(getattr(executor, "_processes", {}).values()):
                process.terminate()
        executor.shutdown(wait=not kill, cancel_futures=True)

    async def aclose(self) -> None:
        """Stop the worker process; idempotent, and safe before first use."""
        self.close()

    def close(self) -> None:
        """Synchronous ``aclose()``, for fixtures and ``atexit``."""
        self._closed = True
        self._stop(kill=False)

    async def __aenter__(self) -> TemplateParser:
        if self._closed:
            raise ParserClosedError("the template parser is closed")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def _settle(future: asyncio.Future[Topology], exc: BaseException) -> None:
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
        return
    future.set_exception(exc)
    # Mark it retrieved: often nobody else waits, and asyncio would log it as never retrieved.
    future.exception()
