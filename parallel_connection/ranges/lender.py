"""Connections for range jobs on this machine: borrowed from the shards' pools, reused, capped.

With pools (from :func:`parallel_connection.connect`), a shard lends at most
its pool's free slots, and at most ``limit`` connections are held across all
shards. Without pools, each shard lends the connection's own shard connection
(one per shard), which cannot be replaced if it breaks.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import psycopg2
import psycopg2.pool

from ..cancel import broken, cancel_all, sever

__all__ = ["Lender", "pool_capacity"]


def pool_capacity(pool: psycopg2.pool.AbstractConnectionPool) -> int:
    """How many more connections ``pool`` can give out right now."""
    return max(0, int(pool.maxconn) - len(getattr(pool, "_used", {})))


class Lender:
    """Hands out one connection per running range, reusing idle ones."""

    def __init__(
        self,
        own: Sequence[Any],
        pools: Sequence[psycopg2.pool.AbstractConnectionPool] | None,
        caps: Sequence[int],
        limit: int,
    ) -> None:
        self._own = list(own)
        self._pools = list(pools) if pools is not None else None
        self._caps = list(caps)
        self._limit = limit
        self._lock = threading.Lock()
        self._idle: list[list[Any]] = [[] for _ in own]
        self._held: list[int] = [0] * len(own)
        self._busy: set[Any] = set()
        self._saved: dict[int, bool] = {}
        self.opened = 0

    def borrow(self, shard: int) -> Any:
        """An idle connection of ``shard``, or a new one from its pool."""
        with self._lock:
            if self._idle[shard]:
                conn = self._idle[shard].pop()
                self._busy.add(conn)
                return conn
            if self._pools is None or self._caps[shard] == 0:
                conn = self._lend_own(shard)
                self._busy.add(conn)
                return conn
            if self._held[shard] >= self._caps[shard]:
                raise psycopg2.pool.PoolError(f"shard {shard}: no free connection (scheduler bug)")
            if sum(self._held) >= self._limit:
                self._drop_idle_elsewhere(shard)
            self._held[shard] += 1
        # Connecting happens outside the lock: a shard slow to answer holds up no other shard.
        try:
            conn = self._pools[shard].getconn()
        except BaseException:
            with self._lock:
                self._held[shard] -= 1
            raise
        with self._lock:
            self.opened += 1
            self._busy.add(conn)
        return conn

    def give_back(self, shard: int, conn: Any, discard: bool) -> None:
        """Make ``conn`` idle again, or (``discard``, or broken) close it and free its slot."""
        with self._lock:
            self._busy.discard(conn)
            if conn is self._own[shard]:
                self._idle[shard].append(conn)
                return
            if discard or broken(conn):
                self._release(shard, conn, close=True)
            else:
                self._idle[shard].append(conn)

    def cancel_running(self, timeout: float = 1.0) -> None:
        """Cancel the statement of every connection lent out now."""
        with self._lock:
            busy = list(self._busy)
        cancel_all(busy, timeout)

    def sever_running(self) -> None:
        """Cut the connections of ranges that ignored their cancel, so their threads return."""
        with self._lock:
            busy = list(self._busy)
        for conn in busy:
            sever(conn)

    def close(self) -> None:
        """Give every borrowed connection back to its pool; restore the own connections' settings."""
        with self._lock:
            for shard, idle in enumerate(self._idle):
                for conn in idle:
                    if conn is not self._own[shard]:
                        self._release(shard, conn, close=False)
                idle.clear()
            for shard, autocommit in self._saved.items():
                conn = self._own[shard]
                with contextlib.suppress(Exception):
                    if not conn.closed and conn.autocommit != autocommit:
                        conn.autocommit = autocommit

    def _lend_own(self, shard: int) -> Any:
        conn = self._own[shard]
        if conn in self._busy:
            raise psycopg2.pool.PoolError(f"shard {shard}: its only connection is busy (scheduler bug)")
        if conn.closed:
            raise psycopg2.OperationalError(
                "the shard connection is closed and, without pools, cannot be replaced"
            )
        self._saved.setdefault(shard, conn.autocommit)
        return conn

    def _drop_idle_elsewhere(self, shard: int) -> None:
        for other, idle in enumerate(self._idle):
            if other != shard and idle:
                self._release(other, idle.pop(), close=False)
                return

    def _release(self, shard: int, conn: Any, close: bool) -> None:
        assert self._pools is not None
        self._held[shard] -= 1
        with contextlib.suppress(Exception):
            self._pools[shard].putconn(conn, close=close or broken(conn))
