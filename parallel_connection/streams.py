"""One shard's result rows as a stream of batches.

A client-side cursor already holds every row, so its stream is one batch. A
named (server-side) cursor's stream fetches ``itersize`` rows at a time and
keeps the next batch in flight on the connection's thread pool while the
caller works on the current one: memory stays bounded by shards x itersize.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fanout import FanOut, Pending

__all__ = ["ShardStream", "cancel_streams", "interleave", "tagged_interleave"]

Row = Any


class ShardStream:
    """Batches of one shard's rows, the next one fetched in the background."""

    def __init__(
        self,
        index: int,
        cursor: Any,
        fanout: FanOut,
        *,
        batch_size: int,
        first_batch: list[Row] | None = None,
    ) -> None:
        self.index = index
        self._cursor = cursor
        self._fanout = fanout
        self._batch_size = batch_size
        self._future: Pending[list[Row]] | None = None
        self._held: list[Row] | None = first_batch
        """A batch already fetched, served before anything else."""
        self._finished = False
        self.fetched = len(first_batch) if first_batch else 0
        """Rows read from the server so far (delivered or waiting in memory)."""
        if first_batch is not None and (
            len(first_batch) < batch_size or batch_size <= 0 or not self.streaming
        ):
            self._finished = True

    @property
    def streaming(self) -> bool:
        return self._cursor.name is not None

    def ready(self) -> bool:
        """True when the next batch can be taken without waiting."""
        return self._future is None or self._future.done()

    def future(self) -> Future[list[Row]] | None:
        """The batch in flight, if any (to wait on several shards at once)."""
        return None if self._future is None else self._future.future

    def next_batch(self) -> list[Row]:
        """The next batch of rows; an empty list once the shard has no more."""
        if self._held is not None:
            batch, self._held = self._held, None
            if not self._finished:
                self._future = self._fanout.start(self.index, self._fetch)
            return batch
        if self._future is None:
            if self._finished:
                return []
            if not self.streaming:
                self._finished = True
                batch = self._call(self._cursor.fetchall)
                self.fetched += len(batch)
                return batch
            self._future = self._fanout.start(self.index, self._fetch)
        try:
            batch = self._future.result()
        except KeyboardInterrupt:
            self.cancel()
            raise
        except BaseException as exc:
            self._finished = True
            self._future = None
            raise self._fanout.error(exc, self.index) from None
        self._future = None
        if len(batch) < self._batch_size or self._batch_size <= 0:
            self._finished = True
        if not self._finished:
            self._future = self._fanout.start(self.index, self._fetch)
        return batch

    def __iter__(self) -> Iterator[list[Row]]:
        while batch := self.next_batch():
            yield batch

    def rows(self) -> Iterator[Row]:
        """Every remaining row, one at a time."""
        for batch in self:
            yield from batch

    def cancel(self) -> None:
        """Cancel the fetch under way (Ctrl-C, another shard's error); the stream ends."""
        cancel_streams([self])

    def _stop(self) -> Pending[list[Row]] | None:
        """End the stream; the fetch still under way, if any."""
        self._finished = True
        self._held = None
        pending, self._future = self._future, None
        return pending

    def close(self) -> None:
        """Stop prefetching (waiting for a fetch already under way)."""
        self._finished = True
        self._held = None
        future, self._future = self._future, None
        if future is not None:
            with contextlib.suppress(BaseException):
                future.result()

    def _fetch(self) -> list[Row]:
        # itersize 0 reads every row at once, as psycopg2 does.
        batch: list[Row] = (
            self._cursor.fetchmany(self._batch_size) if self._batch_size > 0 else self._cursor.fetchall()
        )
        self.fetched += len(batch)
        return batch

    def _call(self, fn: Any) -> list[Row]:
        try:
            rows: list[Row] = fn()
            return rows
        except BaseException as exc:
            raise self._fanout.error(exc, self.index) from None


def cancel_streams(streams: Sequence[ShardStream]) -> None:
    """End these streams, cancelling at once the fetches they have under way."""
    pending = [p for s in streams if (p := s._stop()) is not None]
    if pending:
        streams[0]._fanout.cancel_pending(pending)


def interleave(streams: Sequence[ShardStream]) -> Iterator[list[Row]]:
    """Every shard's batches, taking whichever shard is ready first."""
    for _, batch in tagged_interleave(streams):
        yield batch


def tagged_interleave(streams: Sequence[ShardStream]) -> Iterator[tuple[int, list[Row]]]:
    """Like :func:`interleave`, each batch with the index of the shard it came from."""
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
