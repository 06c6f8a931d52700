"""The plain union: every shard's rows, batch by batch, in the order they arrive."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any

from ..streams import ShardStream

__all__ = ["union"]


def union(streams: Sequence[ShardStream]) -> Iterator[list[Any]]:
    """Yield batches from all shards, taking whichever shard is ready first."""
    live = list(streams)
    while live:
        ready = [s for s in live if s.ready()]
        if not ready:
            in_flight = [f for s in live if (f := s.future()) is not None]
            wait(in_flight, return_when=FIRST_COMPLETED)
            continue
        for stream in ready:
            batch = stream.next_batch()
            if batch:
                yield batch
            else:
                live.remove(stream)
