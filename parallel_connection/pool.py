"""A psycopg2 connection pool that waits for a free connection, as psycopg_pool's does, instead of failing.

:class:`WaitingPool` is psycopg2's ``ThreadedConnectionPool`` whose
``getconn()`` queues when every connection is in use: the first caller in
line gets the next connection given back (no reconnect), and a caller still
waiting after ``timeout`` seconds gets :class:`PoolTimeout`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import psycopg2.extensions
import psycopg2.pool

from .cancel import lost

__all__ = ["DEFAULT_TIMEOUT", "PoolTimeout", "WaitingPool"]

DEFAULT_TIMEOUT = 30.0
"""Seconds ``getconn()`` waits for a connection by default (psycopg_pool's default)."""
_SLICE = 0.1
"""Seconds between looks at a ``stop`` event (and at Ctrl-C) while waiting."""


class PoolTimeout(psycopg2.pool.PoolError):
    """No connection of the pool came free within the timeout."""


class _Waiter:
    """One caller in line for a connection."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self.event = threading.Event()
        self.conn: Any = None
        self.error: BaseException | None = None


class WaitingPool(psycopg2.pool.ThreadedConnectionPool):
    """A ThreadedConnectionPool whose ``getconn()`` waits (in line, up to a timeout) for a free connection.

    ``name`` appears in its errors; ``timeout`` is the default wait of
    ``getconn()``, in seconds. Other arguments are ThreadedConnectionPool's.
    """

    # psycopg2's own pool state and helpers (the type stubs leave them out).
    _lock: threading.Lock
    _pool: list[Any]
    _used: dict[Any, Any]
    _rused: dict[int, Any]
    _closeall: Callable[[], None]

    def __init__(
        self,
        minconn: int,
        maxconn: int,
        *args: Any,
        name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(minconn, maxconn, *args, **kwargs)
        self.name = name
        self.timeout = timeout
        self._waiters: deque[_Waiter] = deque()
        self._counts = {"requests": 0, "waited": 0, "timeouts": 0}
        self._wait_seconds = 0.0

    @property
    def waiting(self) -> int:
        """Callers waiting for a connection right now."""
        with self._lock:
            return len(self._waiters)

    @property
    def would_wait(self) -> bool:
        """Whether a ``getconn()`` now would have to wait (callers in line, or every connection in use)."""
        with self._lock:
            return bool(self._waiters) or not (self._pool or len(self._used) < self.maxconn)

    def holds(self, conn: Any) -> bool:
        """Whether ``conn`` is one of this pool's connections given out now."""
        with self._lock:
            return id(conn) in self._rused

    def stats(self) -> dict[str, float]:
        """Counters since the pool was made: requests, those that waited, the seconds waited, timeouts."""
        with self._lock:
            return {**self._counts, "wait_seconds": self._wait_seconds, "waiting": len(self._waiters)}

    def getconn(
        self, key: Any = None, timeout: float | None = None, *, stop: threading.Event | None = None
    ) -> Any:
        """A free connection (assigned to ``key`` if given), waiting up to ``timeout`` seconds for one.

        ``timeout`` defaults to the pool's; past it, :class:`PoolTimeout`.
        Setting ``stop`` ends the wait early, with :class:`PoolTimeout` too.
        """
        wait = self.timeout if timeout is None else timeout
        with self._lock:
            self._counts["requests"] += 1
            if self.closed:
                raise psycopg2.pool.PoolError("connection pool is closed")
            if key is not None and key in self._used:
                return self._used[key]
            if not self._waiters and (self._pool or len(self._used) < self.maxconn):
                return self._getconn(key)
            waiter = _Waiter(key)
            self._waiters.append(waiter)
            self._counts["waited"] += 1
        began = time.monotonic()
        deadline = began + max(0.0, wait)
        try:
            while True:
                left = deadline - time.monotonic()
                if waiter.event.wait(max(0.0, min(left, _SLICE))):  # awake, so Ctrl-C is seen at once
                    break
                if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                    break
        except BaseException:  # Ctrl-C: leave the line, and give back what came meanwhile
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if waiter.conn is not None:
                self.putconn(waiter.conn)
            raise
        with self._lock:
            self._wait_seconds += time.monotonic() - began
            if waiter.conn is not None:
                return waiter.conn
            if waiter.error is not None:
                raise waiter.error
            self._waiters.remove(waiter)
            if stop is not None and stop.is_set():
                raise PoolTimeout("stopped waiting for a connection")
            self._counts["timeouts"] += 1
        where = f" of {self.name}" if self.name else ""
        raise PoolTimeout(
            f"couldn't get a connection after {wait:g} s: all {self.maxconn} connections of the pool{where} "
            "stayed in use"
        )

    def _getconn(self, key: Any = None) -> Any:
        """psycopg2's, after closing the idle connections whose server hung up (a check on borrow,
        as psycopg_pool makes): a server that restarted leaves none of them usable."""
        for i in reversed(lost(self._pool)):
            self._pool.pop(i).close()
        return cast(Any, super())._getconn(key)  # the type stubs leave it out

    def putconn(self, conn: Any = None, key: Any = None, close: bool = False) -> None:
        """Give ``conn`` back; the first caller waiting gets it (or its free slot)."""
        with self._lock:
            try:
                self._put_away(conn, key, close)
            finally:
                self._serve()

    def closeall(self) -> None:
        """Close every connection (even those in use); callers still waiting get PoolError."""
        with self._lock:
            try:
                self._closeall()
            finally:
                while self._waiters:
                    waiter = self._waiters.popleft()
                    waiter.error = psycopg2.pool.PoolError("connection pool is closed")
                    waiter.event.set()

    def _put_away(self, conn: Any, key: Any, close: bool) -> None:
        """psycopg2's ``_putconn``, but keeping the connection open for a caller in line."""
        if self.closed:
            raise psycopg2.pool.PoolError("connection pool is closed")
        if key is None:
            key = self._rused.get(id(conn))
            if key is None:
                raise psycopg2.pool.PoolError("trying to put unkeyed connection")
        keep = not close and not conn.closed and (len(self._pool) < self.minconn or bool(self._waiters))
        if keep:
            status = conn.info.transaction_status
            if status == psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN:
                keep = False
            elif status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                try:
                    conn.rollback()
                except psycopg2.Error:
                    keep = False
        if keep:
            self._pool.append(conn)
        else:
            conn.close()
        del self._used[key]
        del self._rused[id(conn)]

    def _serve(self) -> None:
        """Hand free connections (or slots) to the callers in line, first come first served."""
        while self._waiters and (self._pool or len(self._used) < self.maxconn):
            waiter = self._waiters.popleft()
            try:
                waiter.conn = self._getconn(waiter.key)
            except Exception as exc:
                waiter.error = exc
            finally:
                waiter.event.set()
