"""A change log of site names, read by placement to catch up with what changed since it looked.

The registry and the claim book each append the name of a site whenever something placement
depends on changes there. A reader keeps the position it has read up to and asks for the
names since then. Only the most recent names are kept; a reader that fell further behind is
told so and starts afresh.
"""

from __future__ import annotations

from typing import Final

KEEP: Final = 65_536
"""Names kept at least; past twice that, the oldest half is dropped."""


class ChangeLog:
    """Names of sites that changed, in order, each at an absolute position."""

    def __init__(self, *, keep: int = KEEP) -> None:
        self._names: list[str] = []
        self._base = 0  # the position of self._names[0]
        self._keep = keep

    @property
    def end(self) -> int:
        """The position the next change will take: a reader that read everything is here."""
        return self._base + len(self._names)

    def add(self, name: str) -> None:
        """Record that ``name`` changed."""
        self._names.append(name)
        if len(self._names) > 2 * self._keep:
            del self._names[: self._keep]
            self._base += self._keep

    def since(self, position: int) -> list[str] | None:
        """The names changed from ``position`` on, or None when they are no longer kept."""
        if position < self._base:
            return None
        return self._names[position - self._base :]
