"""Idempotency: a redelivered message whose effect is already done is acknowledged, not redone."""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol


class IdempotencyStore(Protocol):
    """Remembers which idempotency keys were handled to completion."""

    async def is_done(self, key: str) -> bool:
        """Whether ``key`` was handled before."""
        ...

    async def mark_done(self, key: str) -> None:
        """Remember that ``key`` was handled."""
        ...


class MemoryIdempotencyStore:
    """An in-process store remembering the most recent ``capacity`` keys."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    async def is_done(self, key: str) -> bool:
        """Whether ``key`` was handled before (and still remembered)."""
        return key in self._keys

    async def mark_done(self, key: str) -> None:
        """Remember ``key``, forgetting the oldest beyond capacity."""
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
