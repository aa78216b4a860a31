"""Group commit: calls made while the database is busy go out together in the next batch.

Each batch costs one transaction, and each kind of row in it one statement, whether it
carries one call or a hundred. A lone call goes out at once, so nothing waits for a batch
to fill; under load, the calls that queue while one batch is written make the next.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeAlias, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Outcome: TypeAlias = R | BaseException
"""What a batch gives back for one of its calls: the result, or the error to raise there."""


class Batcher(Generic[T, R]):
    """Runs ``write`` over the calls that queued while the previous batch ran.

    Args:
        write: Writes a batch of items and returns one outcome per item, in order. An
            exception it raises is raised by every call of the batch.
        limit: The most items in one batch.
        key: Items with the same key never share a batch (a later one waits for the next),
            so ``write`` may assume that each key appears once.
    """

    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[list[Outcome[R]]]],
        *,
        limit: int = 128,
        key: Callable[[T], Hashable] | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"a batch holds at least one item, not {limit}")
        self._write = write
        self._limit = limit
        self._key = key
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.calls = 0
        """Items written so far (or failed), over ``batches`` batches."""
        self.batches = 0

    async def __call__(self, item: T) -> R:
        """Queue ``item`` for the next batch and return its outcome once written.

        A caller cancelled before its batch starts writes nothing; one cancelled later
        cannot take back what its batch writes.
        """
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def wait_idle(self) -> None:
        """Return once every queued call has been written (or failed)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                if batch:
                    await self._run(batch)
        except asyncio.CancelledError:
            while self._queue:  # nothing will write them now
                self._queue.popleft()[1].cancel()
            raise
        finally:
            self._task = None

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        while self._queue and len(batch) < self._limit:
            item, future = self._queue[0]
            if self._key is not None:
                key = self._key(item)
                if key in keys:
                    break
                keys.add(key)
            self._queue.popleft()
            if not future.cancelled():
                batch.append((item, future))
        return batch

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.batches += 1
        self.calls += len(batch)
        try:
            outcomes = await self._write([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            outcomes = [exc] * len(batch)
        if len(outcomes) != len(batch):
            error = RuntimeError(f"a batch of {len(batch)} gave {len(outcomes)} outcomes")
            outcomes = [error] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller was cancelled while the batch ran
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
