"""Capped exponential backoff, for loops that reconnect or restart until something is back.

A leaf module: it imports nothing of Flotilla, so every layer may use it.
"""

from __future__ import annotations

import random
from datetime import timedelta


class Backoff:
    """Waits that double from ``initial`` up to ``cap``, until ``reset()``.

    Args:
        initial: The first wait.
        cap: The longest wait.
        jitter: The share by which each wait is shortened at random (0.1: by up to 10%),
            so that many clients failing together do not retry in step; 0 for none.
    """

    def __init__(self, initial: timedelta, cap: timedelta, *, jitter: float = 0.1) -> None:
        self._initial = initial.total_seconds()
        self._cap = cap.total_seconds()
        self._jitter = jitter
        self._next = self._initial

    def reset(self) -> None:
        """Start again from the initial wait."""
        self._next = self._initial

    def delay(self) -> float:
        """The next wait in seconds, with its jitter; doubles the following one."""
        current = self._next
        self._next = min(self._next * 2, self._cap)
        return current * random.uniform(1 - self._jitter, 1.0)
