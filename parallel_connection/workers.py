"""A thread pool of daemon threads, so a call stuck on a dead socket never holds up the interpreter's exit.

``concurrent.futures.ThreadPoolExecutor`` joins its threads at exit: a
script that stops (Ctrl-C, the end of the program) while a shard is
black-holed would wait for that shard for ever. These threads are daemons;
their futures are ``concurrent.futures.Future`` objects, so ``wait`` and
``as_completed`` work on them as usual.

A call never waits for a thread: past ``max_workers`` busy threads, a new one
starts and ends once it is idle. A call waiting for its turn on a shard
connection therefore never holds up the call that would end the wait.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, Executor, Future
from concurrent.futures import wait as _wait
from typing import Any, TypeVar

__all__ = ["AWAKE", "Workers", "wait"]

T = TypeVar("T")

AWAKE = 0.1
"""The longest a caller sleeps in :func:`wait` before it looks at its signals again."""


def wait(
    futures: Iterable[Future[T]], timeout: float | None = None, return_when: str = ALL_COMPLETED
) -> tuple[set[Future[T]], set[Future[T]]]:
    """``concurrent.futures.wait``, woken every :data:`AWAKE` seconds.

    Python runs a signal's handler in the main thread, but the kernel may
    deliver the signal to any thread: to one of a native library's (polars',
    a BLAS), the main thread's wait is not interrupted and Ctrl-C would be
    seen only when the wait ends. Waking up in slices bounds that delay.
    """
    every = set(futures)
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        left = AWAKE if end is None else min(AWAKE, max(0.0, end - time.monotonic()))
        done, not_done = _wait(every, timeout=left, return_when=return_when)
        if _reached(done, not_done, return_when) or (end is not None and time.monotonic() >= end):
            return done, not_done


def _reached(done: set[Future[T]], not_done: set[Future[T]], return_when: str) -> bool:
    if not not_done:
        return True
    if return_when == FIRST_COMPLETED:
        return bool(done)
    if return_when == FIRST_EXCEPTION:
        return any(not f.cancelled() and f.exception() is not None for f in done)
    return False


_Item = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class Workers(Executor):
    """Daemon threads started as work arrives; up to ``max_workers`` of them are kept while idle."""

    def __init__(self, max_workers: int, name: str = "parallel_connection") -> None:
        self._max = max(1, max_workers)
        self._name = name
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._shut = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._queue.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False):
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            threads = list(self._threads)
            for _ in threads:
                self._queue.put(None)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del item, future, fn, args, kwargs
            with self._lock:
                if len(self._threads) > self._max and not self._shut:
                    self._threads.remove(threading.current_thread())
                    return
            self._idle.release()
