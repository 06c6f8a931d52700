"""The late-binding queue: whichever slot frees up takes the next range, within per-shard caps.

Every shard's first range starts before any shard's second, so the first
ranges of a scan sample every shard (see :mod:`.early`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from .spec import IdRange

__all__ = ["RangeQueue"]


class RangeQueue:
    """Ranges waiting to run, handed out one at a time to the shard with the most left to do."""

    def __init__(self, ranges: Iterable[IdRange], caps: Sequence[int]) -> None:
        self._caps = list(caps)
        self._todo: list[deque[IdRange]] = [deque() for _ in caps]
        self._active = [0] * len(caps)
        self._started = [0] * len(caps)
        for r in ranges:
            self._todo[r.shard.index].append(r)

    def take(self) -> IdRange | None:
        """The next range to start, or None if every shard with work is at its cap."""
        ready = [s for s, todo in enumerate(self._todo) if todo and self._active[s] < self._caps[s]]
        if not ready:
            return None
        shard = max(
            ready, key=lambda s: (not self._started[s], len(self._todo[s]) / (self._active[s] + 1), -s)
        )
        self._active[shard] += 1
        self._started[shard] += 1
        return self._todo[shard].popleft()

    def finish(self, id_range: IdRange) -> None:
        """A range of this shard stopped running: its slot is free."""
        self._active[id_range.shard.index] -= 1

    def shards_with_work(self) -> int:
        """How many shards have ranges waiting."""
        return sum(1 for todo in self._todo if todo)

    def done_with(self, shard: int) -> bool:
        """Whether ``shard`` has no range left to start and none running."""
        return not self._todo[shard] and self._active[shard] == 0

    def drain(self) -> list[IdRange]:
        """Every range not yet started (the queue is left empty)."""
        left = [r for todo in self._todo for r in todo]
        for todo in self._todo:
            todo.clear()
        return left

    def __len__(self) -> int:
        return sum(len(todo) for todo in self._todo)
