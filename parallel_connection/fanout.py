"""Run one call per shard at once on the connection's thread pool.

The first failure cancels the statements still running on the other shards
and is raised as soon as they stop (or after a short grace period, so no
caller waits for a shard that is no longer needed). Ctrl-C does the same.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from .errors import ShardInfo, shard_error

__all__ = ["FanOut"]

T = TypeVar("T")

CANCEL_GRACE = 1.0
"""Seconds to wait for cancelled shards to stop before raising anyway."""


class _Call:
    """One fan-out's state: which shards are running, and whether to give up."""

    def __init__(self, n: int) -> None:
        self.lock = threading.Lock()
        self.running: set[int] = set()
        self.aborted = False


class FanOut:
    """A thread pool that runs a callable once per shard, shard failures decorated."""

    def __init__(
        self,
        shards: Sequence[ShardInfo],
        cancel: Callable[[int], None],
        secrets: set[str],
        max_workers: int | None = None,
    ) -> None:
        self.shards = list(shards)
        self._cancel = cancel
        self._secrets = secrets
        self._pool = ThreadPoolExecutor(
            max_workers or max(4, 2 * len(shards)), thread_name_prefix="parallel_connection"
        )

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn`` on the pool (for background work such as prefetching)."""
        return self._pool.submit(fn, *args)

    def error(self, exc: BaseException, index: int) -> BaseException:
        """``exc`` raised on shard ``index``, as the caller should see it."""
        return shard_error(exc, self.shards[index], self._secrets)

    def run(self, fn: Callable[[int], T], indexes: Sequence[int] | None = None) -> list[T]:
        """``[fn(i) for i in indexes]``, run at once; the first failure wins."""
        indexes = list(range(len(self.shards))) if indexes is None else list(indexes)
        state = _Call(len(indexes))
        futures = {self._pool.submit(self._call, state, fn, i): i for i in indexes}
        pending: set[Future[T]] = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                failed = sorted((futures[f], f) for f in done if f.exception() is not None)
                if failed:
                    index, future = failed[0]
                    self._abort(state, pending)
                    raise self.error(future.exception(), index)  # type: ignore[arg-type]
        except KeyboardInterrupt:
            self._abort(state, pending)
            raise
        return [f.result() for f in futures]

    def cancel_all(self, indexes: Sequence[int]) -> None:
        """Ask each shard to cancel its running statement, without waiting on any."""
        for index in indexes:
            threading.Thread(target=self._quiet_cancel, args=(index,), daemon=True).start()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _call(self, state: _Call, fn: Callable[[int], T], index: int) -> T:
        with state.lock:
            if state.aborted:
                raise _Skipped()
            state.running.add(index)
        try:
            return fn(index)
        finally:
            with state.lock:
                state.running.discard(index)

    def _abort(self, state: _Call, pending: set[Future[Any]]) -> None:
        with state.lock:
            state.aborted = True
            running = sorted(state.running)
        self.cancel_all(running)
        if pending:
            wait(pending, timeout=CANCEL_GRACE)

    def _quiet_cancel(self, index: int) -> None:
        with contextlib.suppress(Exception):
            self._cancel(index)


class _Skipped(Exception):
    """A shard's call that never started because another shard had failed."""
