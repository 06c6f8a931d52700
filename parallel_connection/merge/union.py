"""The plain union: every shard's rows, batch by batch, in the order they arrive."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any

from ..streams import ShardStream

__all__ = ["tagged_union", "union"]


def union(streams: Sequence[ShardStream]) -> Iterator[list[Any]]:
    """Yield batches from all shards, taking whichever shard is ready first."""
    for _, batch in tagged_union(streams):
        yield batch


def tagged_union(streams: Sequence[ShardStream]) -> Iterator[tuple[int, list[Any]]]:
    """Like :func:`union`, each batch with the index of the shard it came from."""
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
                yield stream.index, batch
            else:
                live.remove(stream)
