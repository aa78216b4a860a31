"""Group commit: which calls share a batch, and what each caller gets back."""

from __future__ import annotations

import asyncio

import pytest

from flotilla.scheduler.sql.batch import Batcher, Outcome

pytestmark = pytest.mark.timeout(10)


class Writer:
    """Records each batch it is given; holds each until released when ``gated``."""

    def __init__(self, *, gated: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.started = asyncio.Event()

    async def write(self, items: list[str]) -> list[Outcome[str]]:
        self.batches.append(items)
        self.started.set()
        await self.gate.wait()
        return [ValueError(item) if item.startswith("bad") else item.upper() for item in items]


async def test_calls_made_while_a_batch_is_written_share_the_next() -> None:
    """The first call goes out alone; those queued while it is written go out together."""
    writer = Writer(gated=True)
    batcher = Batcher(writer.write)
    first = asyncio.create_task(batcher("a"))
    await writer.started.wait()
    rest = [asyncio.create_task(batcher(item)) for item in "bcd"]
    await asyncio.sleep(0)

    writer.gate.set()

    assert [await first, *await asyncio.gather(*rest)] == ["A", "B", "C", "D"]
    assert writer.batches == [["a"], ["b", "c", "d"]]
    assert (batcher.calls, batcher.batches) == (4, 2)  # what the bench reports


async def test_a_batch_holds_at_most_the_limit_and_keeps_the_order() -> None:
    """Calls beyond the limit wait for the next batch, in the order they were made."""
    writer = Writer()
    batcher = Batcher(writer.write, limit=2)

    results = await asyncio.gather(*(batcher(item) for item in "abcde"))

    assert results == ["A", "B", "C", "D", "E"]
    assert writer.batches == [["a", "b"], ["c", "d"], ["e"]]


async def test_items_with_the_same_key_never_share_a_batch() -> None:
    """A second item of a key starts the next batch, and nothing overtakes it."""
    writer = Writer()
    batcher = Batcher(writer.write, key=lambda item: item[0])

    await asyncio.gather(*(batcher(item) for item in ["a1", "b1", "a2", "c1", "a3"]))

    assert writer.batches == [["a1", "b1"], ["a2", "c1"], ["a3"]]


async def test_each_caller_gets_its_own_outcome() -> None:
    """An error outcome is raised only by its own caller."""
    writer = Writer()
    batcher = Batcher(writer.write)

    results = await asyncio.gather(
        batcher("a"), batcher("bad-b"), batcher("c"), return_exceptions=True
    )

    assert results[0] == "A"
    assert isinstance(results[1], ValueError)
    assert results[2] == "C"
    assert writer.batches == [["a", "bad-b", "c"]]


async def test_a_write_that_raises_fails_its_batch_only() -> None:
    """Every call of a batch whose write raised gets the error; the next batch goes on."""
    calls = 0

    async def write(items: list[str]) -> list[Outcome[str]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database gone")
        return list(items)

    batcher = Batcher(write)
    failed = await asyncio.gather(batcher("a"), batcher("b"), return_exceptions=True)
    later = await batcher("c")

    assert [type(error) for error in failed] == [ConnectionError, ConnectionError]
    assert later == "c"


async def test_a_call_cancelled_before_its_batch_writes_nothing() -> None:
    """A caller that gives up while its item still waits takes the item out."""
    writer = Writer(gated=True)
    batcher = Batcher(writer.write)
    first = asyncio.create_task(batcher("a"))
    await writer.started.wait()
    dropped = asyncio.create_task(batcher("b"))
    kept = asyncio.create_task(batcher("c"))
    await asyncio.sleep(0)

    dropped.cancel()
    writer.gate.set()

    assert (await first, await kept) == ("A", "C")
    assert dropped.cancelled()
    assert writer.batches == [["a"], ["c"]]


async def test_wait_idle_returns_once_every_queued_call_is_written() -> None:
    """``wait_idle`` waits out the batch being written and those queued behind it."""
    writer = Writer(gated=True)
    batcher = Batcher(writer.write, limit=1)
    calls = [asyncio.create_task(batcher(item)) for item in "ab"]
    await writer.started.wait()

    idle = asyncio.create_task(batcher.wait_idle())
    await asyncio.sleep(0)
    assert not idle.done()
    writer.gate.set()
    await idle

    assert all(call.done() for call in calls)
    assert writer.batches == [["a"], ["b"]]
