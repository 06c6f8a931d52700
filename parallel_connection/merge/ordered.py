"""ORDER BY across shards: a streaming k-way merge of the shards' sorted streams."""

from __future__ import annotations

import heapq
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ..errors import refuse

__all__ = ["check_sorted", "ordered"]

Key = Callable[[Any], Any]


def ordered(
    shards: Sequence[tuple[int, Iterable[list[Any]]]],
    key: Key,
    reverse: bool,
    batch_size: int,
    *,
    check: bool = False,
) -> Iterator[list[Any]]:
    """Yield the shards' rows in order, ``batch_size`` at a time; each shard's batches are sorted.

    ``shards`` are (shard index, batches). With ``check``, a shard whose rows
    are not in the merge's order is an error.
    """
    rows = [(index, itertools.chain.from_iterable(batches)) for index, batches in shards]
    sources = [_checked(r, key, reverse, index) if check else r for index, r in rows]
    merged = heapq.merge(*sources, key=key, reverse=reverse)
    batch: list[Any] = []
    for row in merged:
        batch.append(row)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def check_sorted(rows: Sequence[Any], key: Key, reverse: bool, shard: int) -> None:
    """Refuse when one shard's rows are not in the order the merge would give them."""
    keys = list(map(key, rows))
    first, second = (keys, keys[1:]) if reverse else (keys[1:], keys)
    if any(map(operator.lt, first, second)):
        raise _out_of_order(shard)


def _checked(rows: Iterable[Any], key: Key, reverse: bool, shard: int) -> Iterator[Any]:
    previous = None
    for row in rows:
        current = key(row)
        if previous is not None and (previous < current if reverse else current < previous):
            raise _out_of_order(shard)
        previous = current
        yield row


def _out_of_order(shard: int) -> Exception:
    return refuse(
        f"ORDER BY on text that shard {shard} sorts differently from code point order (a column "
        'collation other than "C"?); ORDER BY the column COLLATE "C"'
    )
