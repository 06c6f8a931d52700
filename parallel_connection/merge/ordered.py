"""ORDER BY across shards: a streaming merge of the shards' sorted streams, a round at a time.

Each round holds at most one batch per shard. No row still to come can sort
before the earliest of the last rows held from the shards still sending, so
every held row up to that one is merged (in C, by :class:`runs.RowOrder`) and
yielded; the shard it came from is then empty and fetches its next batch.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..errors import refuse
from .runs import RowOrder

__all__ = ["ordered", "out_of_order"]

Row = Any


def ordered(
    shards: Sequence[tuple[int, Iterable[list[Row]]]],
    order: RowOrder,
    batch_size: int,
    *,
    check: RowOrder | None = None,
) -> Iterator[list[Row]]:
    """Yield the shards' rows in ``order``, ``batch_size`` at a time; each shard's batches are sorted.

    ``shards`` are (shard index, batches). A shard whose rows are not in the
    order ``check`` (when given) is an error.
    """
    feeds = [_Feed(index, batches, order, check) for index, batches in shards]
    key, reverse = order.key, order.reverse
    while True:
        for feed in feeds:
            feed.fill()
        held = [feed for feed in feeds if feed.rows]
        if not held:
            return
        sending = [key(feed.rows[-1]) for feed in held if not feed.done]
        if sending:
            bound = max(sending) if reverse else min(sending)
            parts = [feed.take(bound, reverse) for feed in held]
        else:
            parts = [feed.take_all() for feed in held]
        merged = order.merge(parts)
        for start in range(0, len(merged), batch_size):
            yield merged[start : start + batch_size]


class _Feed:
    """One shard's rows not yet merged: at most one batch."""

    def __init__(
        self, index: int, batches: Iterable[list[Row]], order: RowOrder, check: RowOrder | None
    ) -> None:
        self.index = index
        self._batches = iter(batches)
        self._order = order
        self._check = check
        self._last: Row = None
        self.rows: list[Row] = []
        self.done = False

    def fill(self) -> None:
        """Fetch the next batch when every row held has been taken."""
        while not self.rows and not self.done:
            batch = next(self._batches, None)
            if batch is None:
                self.done = True
            elif batch:
                if self._check is not None:
                    self._check_batch(self._check, batch)
                self.rows = batch

    def take(self, bound: Any, reverse: bool) -> list[Row]:
        """The rows held up to ``bound`` (a row key), in order."""
        key = self._order.key
        after = (lambda row: key(row) < bound) if reverse else (lambda row: bound < key(row))
        cut = bisect_left(self.rows, True, key=after)
        taken, self.rows = self.rows[:cut], self.rows[cut:]
        return taken

    def take_all(self) -> list[Row]:
        taken, self.rows = self.rows, []
        return taken

    def _check_batch(self, order: RowOrder, batch: list[Row]) -> None:
        if self._last is not None:
            previous, first = order.key(self._last), order.key(batch[0])
            if previous < first if order.reverse else first < previous:
                raise out_of_order(self.index)
        if not order.in_order(batch):
            raise out_of_order(self.index)
        self._last = batch[-1]


def out_of_order(shard: int) -> Exception:
    """The refusal for a shard whose rows are not in the merge's order."""
    return refuse(
        f"ORDER BY on text that shard {shard} sorts differently from code point order (a column "
        'collation other than "C"?); ORDER BY the column COLLATE "C"'
    )
