"""Run one call per shard at once on the connection's thread pool.

The first failure cancels the statements still running on the other shards
and is raised as soon as they stop (or after a short grace period, so no
caller waits for a shard that is no longer needed). Ctrl-C does the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from .cancel import cancel_all, sever
from .errors import ShardInfo, shard_error

__all__ = ["FanOut"]

T = TypeVar("T")

CANCEL_GRACE = 1.0
"""Seconds to wait for cancelled shards to stop before raising anyway."""


class _Call:
    """One fan-out's state: which shards are running, and whether to give up."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[int] = set()
        self.aborted = False


class FanOut:
    """A thread pool that runs a callable once per shard, shard failures decorated."""

    def __init__(
        self,
        shards: Sequence[ShardInfo],
        connections: Sequence[Any],
        secrets: set[str],
        max_workers: int | None = None,
    ) -> None:
        self.shards = list(shards)
        self._connections = list(connections)
        self._secrets = secrets
        self._lock = threading.Lock()
        self._stuck: set[int] = set()
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
        if self.stuck() & set(indexes):
            # A statement that ignored its cancel holds the connection: nothing
            # else could run on it, so cut it and let the caller see it broken.
            self.release_stuck()
        state = _Call()
        if len(indexes) == 1:
            return [self._run_one(state, fn, indexes[0])]
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

    def _run_one(self, state: _Call, fn: Callable[[int], T], index: int) -> T:
        """One shard: wait on its future alone (no other shard to cancel on failure).

        Called from a thread other than the main one, the call runs right there:
        Ctrl-C only ever reaches the main thread, so the pool would buy nothing.
        """
        if threading.current_thread() is not threading.main_thread():
            try:
                return self._call(state, fn, index)
            except Exception as exc:
                raise self.error(exc, index) from None
        future = self._pool.submit(self._call, state, fn, index)
        try:
            return future.result()
        except KeyboardInterrupt:
            self._abort(state, {future} if not future.done() else set())
            raise
        except Exception as exc:
            raise self.error(exc, index) from None

    def cancel_all(self, indexes: Sequence[int], timeout: float = CANCEL_GRACE) -> None:
        """Ask each of these shards to cancel its running statement (see :func:`cancel.cancel_all`)."""
        cancel_all([self._connections[i] for i in indexes], timeout)

    def release_stuck(self, timeout: float = CANCEL_GRACE) -> None:
        """Cut the connections of shards still stuck in an abandoned statement, and let them end."""
        for index in self.stuck():
            sever(self._connections[index])
        self.wait_unstuck(timeout)

    def stuck(self) -> set[int]:
        """Shards whose statement was abandoned after a cancel and is still running."""
        with self._lock:
            return set(self._stuck)

    def wait_unstuck(self, timeout: float) -> set[int]:
        """Wait up to ``timeout`` for abandoned statements to end; the shards still stuck."""
        deadline = time.monotonic() + timeout
        while (stuck := self.stuck()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return stuck

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
            with self._lock:
                self._stuck.discard(index)

    def _abort(self, state: _Call, pending: set[Future[Any]]) -> None:
        start = time.monotonic()
        with state.lock:
            state.aborted = True
            running = sorted(state.running)
        self.cancel_all(running)
        if pending:
            wait(pending, timeout=max(0.0, CANCEL_GRACE - (time.monotonic() - start)))
        with state.lock, self._lock:
            self._stuck |= state.running


class _Skipped(Exception):
    """A shard's call that never started because another shard had failed."""
