"""ORDER BY across shards: a streaming k-way merge of the shards' sorted streams."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..streams import ShardStream

__all__ = ["ordered"]


def ordered(
    streams: Sequence[ShardStream], key: Callable[[Any], Any], reverse: bool, batch_size: int
) -> Iterator[list[Any]]:
    """Yield the shards' rows in order, ``batch_size`` at a time; each shard's stream is sorted."""
    merged = heapq.merge(*(s.rows() for s in streams), key=key, reverse=reverse)
    batch: list[Any] = []
    for row in merged:
        batch.append(row)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
