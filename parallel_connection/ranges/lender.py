"""Connections for range jobs on this machine: borrowed from the shards' pools, waited for, reused, capped.

With pools (from :func:`parallel_connection.connect`), a scan plans, holds its
snapshot and runs its ranges on connections borrowed from the shards' pools,
never on the connection's own shard connections: scans running at once on one
``ParallelConnection``, and the user's own statements, never share one. A shard
lends at most ``caps[shard]`` connections to a scan, and at most ``limit`` are
held across all shards. A pool with no connection free is waited for, first
come first served (and a scan gives connections back between ranges while
someone waits), up to ``timeout`` seconds: past it the borrow fails with
:class:`~parallel_connection.pool.PoolTimeout`.

Without pools (or with no pool slot besides the own connection), a shard lends
the connection's own shard connection, to one borrower at a time across every
scan (the others wait their turn); it cannot be replaced if it breaks.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.pool

from ..cancel import broken, cancel_all, sever
from ..fanout import FanOut
from ..pool import PoolTimeout, WaitingPool

__all__ = ["Lender", "in_use_by_a_scan", "pool_slots"]

POLL = 0.05
"""Seconds between tries of a pool that cannot wait (a plain ThreadedConnectionPool)."""


def pool_slots(pool: psycopg2.pool.AbstractConnectionPool, own: Any) -> int:
    """How many connections ``pool`` can lend besides ``own`` (when ``own`` is one of its own)."""
    holds = pool.holds(own) if isinstance(pool, WaitingPool) else id(own) in getattr(pool, "_rused", {})
    return max(0, int(pool.maxconn) - int(holds))


_registry_lock = threading.Lock()
_scanning: weakref.WeakKeyDictionary[Any, object] = weakref.WeakKeyDictionary()
"""Own shard connections lent to a scan now, with the token their gate is held under."""
_pair_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()


def _pair_lock(pool: Any) -> threading.Lock:
    with _registry_lock:
        lock = _pair_locks.get(pool)
        if lock is None:
            lock = _pair_locks[pool] = threading.Lock()
        return lock


def in_use_by_a_scan(conn: Any) -> bool:
    """Whether a scan is using this own shard connection right now (its open transaction is the scan's)."""
    with _registry_lock:
        return conn in _scanning


class Lender:
    """Hands out one connection per running range (or planning step), reusing idle ones.

    ``slots[shard]`` is how many connections the shard's pool can lend at all
    (0: lend the own connection); ``caps[shard]`` how many this scan may hold
    there for its ranges. ``stop`` ends every wait early.
    """

    def __init__(
        self,
        own: Sequence[Any],
        pools: Sequence[psycopg2.pool.AbstractConnectionPool] | None,
        slots: Sequence[int],
        caps: Sequence[int],
        limit: int,
        *,
        timeout: float,
        stop: threading.Event,
        turns: FanOut,
    ) -> None:
        self._own = list(own)
        self._turns = turns
        self._pools = list(pools) if pools is not None else None
        self._slots = list(slots)
        self._caps = list(caps)
        self._limit = limit
        self._timeout = timeout
        self._stop = stop
        self._lock = threading.Lock()
        self._idle: list[list[Any]] = [[] for _ in own]
        self._held: list[int] = [0] * len(own)
        self._pending: list[int] = [0] * len(own)
        self._floor: list[int] = [0] * len(own)
        self._busy: set[Any] = set()
        self._saved: dict[int, bool] = {}
        self._exporters: dict[int, Any] = {}

    # -- range connections ----------------------------------------------------------

    def pooled(self, shard: int) -> bool:
        """Whether ``shard`` lends pooled connections (else its own connection)."""
        return self._pools is not None and self._slots[shard] > 0

    def borrow(self, shard: int) -> Any:
        """An idle connection of ``shard``, or one from its pool (waited for), or its own connection."""
        with self._lock:
            if self._idle[shard]:
                conn = self._idle[shard].pop()
                self._busy.add(conn)
                return conn
            pooled = self.pooled(shard)
            if pooled:
                if self._held[shard] >= self._caps[shard]:
                    raise psycopg2.pool.PoolError(f"shard {shard}: no free connection (scheduler bug)")
                out = self._trim(shard)
                self._held[shard] += 1
                self._pending[shard] += 1
        if not pooled:
            return self._lend_own(shard)
        self._put(out)
        try:
            conn = self._take(shard, counted=True)
        except BaseException:
            with self._lock:
                self._held[shard] -= 1
                self._pending[shard] -= 1
            raise
        with self._lock:
            self._pending[shard] -= 1
            self._busy.add(conn)
        return conn

    def give_back(self, shard: int, conn: Any, discard: bool) -> None:
        """Make ``conn`` idle again, or hand it to whoever waits for the pool, or (``discard``, or
        broken) close it and free its slot."""
        if conn is self._own[shard] and not self.pooled(shard):
            with self._lock:
                self._busy.discard(conn)
            self._return_own(shard, conn)
            return
        out = []
        with self._lock:
            self._busy.discard(conn)
            if discard or broken(conn):
                out.append(self._release(shard, conn, close=True))
            elif self._held[shard] > self._floor[shard] and self._wanted(shard):
                out.append(self._release(shard, conn, close=False))
            else:
                self._idle[shard].append(conn)
        self._put(out)

    def retire(self, shard: int) -> None:
        """``shard`` has no more work: give back its idle connections and its snapshot's connection."""
        with self._lock:
            self._floor[shard] = 0
            out = [self._release(shard, conn, close=False) for conn in self._idle[shard]]
            self._idle[shard].clear()
            exporter = self._exporters.pop(shard, None)
        self._put(out)
        if exporter is not None:
            self._drop_exporter(shard, exporter)

    def release_idle(self) -> None:
        """Give back every idle connection (reserved ones too)."""
        with self._lock:
            out = []
            for shard, idle in enumerate(self._idle):
                self._floor[shard] = 0
                out += [self._release(shard, conn, close=False) for conn in idle]
                idle.clear()
        self._put(out)

    # -- snapshot holders -------------------------------------------------------------

    def exporter(self, shard: int, *, local: bool) -> Any:
        """A connection of ``shard`` kept out of the ranges, to hold the scan's snapshot.

        Borrowed from the pool, unless the pool can lend only one connection
        and ranges run here (``local``): then the own connection holds the
        snapshot, while the pool's one runs the ranges. With ``local``, one
        range connection is also taken now and kept until :meth:`retire`, so
        that a scan holding a snapshot always has a connection to use it on.
        Call in shard order (scans at once then never wait for each other in a circle).
        """
        if not self.pooled(shard) or (local and self._slots[shard] < 2):
            conn = self._lend_own(shard)
            with self._lock:
                self._busy.discard(conn)
            if local and self.pooled(shard):
                self._reserve(shard)
        elif local:
            # Both of a pair at once per pool: two scans each holding one would wait forever.
            with self._pair_held(shard):
                conn = self._take(shard, counted=False)
                try:
                    self._reserve(shard)
                except BaseException:
                    self._put([(shard, conn, False)])
                    raise
        else:
            conn = self._take(shard, counted=False)
        with self._lock:
            self._exporters[shard] = conn
        return conn

    def _reserve(self, shard: int) -> None:
        with self._lock:
            self._floor[shard] = 1
        self.give_back(shard, self.borrow(shard), False)

    def _drop_exporter(self, shard: int, conn: Any) -> None:
        if conn is self._own[shard]:
            self._return_own(shard, conn)
            return
        with contextlib.suppress(Exception):
            if not conn.closed:
                conn.rollback()
        self._put([(shard, conn, False)])

    @contextlib.contextmanager
    def _pair_held(self, shard: int) -> Any:
        assert self._pools is not None
        lock = _pair_lock(self._pools[shard])
        deadline = time.monotonic() + self._timeout
        while not lock.acquire(timeout=min(0.1, max(0.0, deadline - time.monotonic()))):
            if self._stop.is_set() or time.monotonic() >= deadline:
                raise PoolTimeout(self._timeout_message(shard))
        try:
            yield
        finally:
            lock.release()

    # -- cancel, close ----------------------------------------------------------------

    def cancel_running(self, timeout: float = 1.0) -> None:
        """Cancel the statement of every connection lent out now."""
        with self._lock:
            busy = list(self._busy | set(self._exporters.values()))
        cancel_all(busy, timeout)

    def sever_running(self) -> None:
        """Cut the connections of ranges that ignored their cancel, so their threads return."""
        with self._lock:
            busy = list(self._busy)
        for conn in busy:
            sever(conn)

    def close(self) -> None:
        """Give every borrowed connection back to its pool, the own connections back to the user."""
        for shard in range(len(self._own)):
            self.retire(shard)

    # -- helpers ----------------------------------------------------------------------

    def _lend_own(self, shard: int) -> Any:
        conn = self._own[shard]
        with self._lock:
            if conn in self._busy:
                raise psycopg2.pool.PoolError(f"shard {shard}: its only connection is busy (scheduler bug)")
        if conn.closed:
            raise psycopg2.OperationalError(
                "the shard connection is closed and, without pools, cannot be replaced"
            )
        # The connection's own turn on the shard (as its statements take it), so a cancel of the
        # range reaches only the range, and the user's statements wait for it.
        token = object()
        if not self._turns.take(
            shard, owner=token, until=time.monotonic() + self._timeout, give_up=self._stop.is_set
        ):
            raise PoolTimeout(
                f"couldn't get the connection's own shard connection after {self._timeout:g} s "
                f"(pool_timeout={self._timeout:g}): another scan or statement on this connection kept it busy"
            )
        with _registry_lock:
            _scanning[conn] = token
        with self._lock:
            self._saved[shard] = conn.autocommit
            self._busy.add(conn)
        return conn

    def _return_own(self, shard: int, conn: Any) -> None:
        with contextlib.suppress(Exception):
            if not conn.closed:
                if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                    conn.rollback()
                autocommit = self._saved.get(shard)
                if autocommit is not None and conn.autocommit != autocommit:
                    conn.autocommit = autocommit
        with _registry_lock:
            token = _scanning.pop(conn, None)
        if token is not None:
            self._turns.give_back(shard, token)

    def _take(self, shard: int, *, counted: bool) -> Any:
        """A connection from the shard's pool, waiting for one; past the timeout, PoolTimeout.

        A counted borrow (a range's) whose scan still holds other connections
        on this shard is not starved: its siblings will come back, so it waits on.
        """
        assert self._pools is not None
        pool = self._pools[shard]
        if isinstance(pool, WaitingPool) and pool.would_wait:
            self._put(self._drop_idle(shard))
        while True:
            try:
                if isinstance(pool, WaitingPool):
                    return pool.getconn(timeout=self._timeout, stop=self._stop)
                return self._poll(pool, shard)
            except PoolTimeout:
                if self._stop.is_set():
                    raise
                with self._lock:
                    working = self._held[shard] - self._pending[shard]
                if not (counted and working > 0):
                    raise PoolTimeout(self._timeout_message(shard)) from None

    def _poll(self, pool: psycopg2.pool.AbstractConnectionPool, shard: int) -> Any:
        deadline = time.monotonic() + self._timeout
        dropped = False
        while True:
            try:
                return pool.getconn()
            except psycopg2.pool.PoolError as exc:
                if "exhausted" not in str(exc):
                    raise
            if not dropped:
                dropped = True
                self._put(self._drop_idle(shard))
            if time.monotonic() >= deadline or self._stop.wait(POLL):
                raise PoolTimeout(self._timeout_message(shard))

    def _timeout_message(self, shard: int) -> str:
        assert self._pools is not None
        maxconn = self._pools[shard].maxconn
        return (
            f"couldn't get a connection after {self._timeout:g} s (pool_timeout={self._timeout:g}): "
            f"all {maxconn} connections of its pool (maxconn={maxconn}) stayed in use; give pooled "
            "connections back sooner, or raise maxconn or pool_timeout"
        )

    def _wanted(self, shard: int) -> bool:
        """Whether someone waits for the shard's pool (this scan or another)."""
        assert self._pools is not None
        pool = self._pools[shard]
        return isinstance(pool, WaitingPool) and pool.waiting > 0

    def _trim(self, shard: int) -> list[tuple[int, Any, bool]]:
        """Idle connections of other shards to give back, so this scan holds fewer than ``limit``."""
        out = []
        for other, idle in enumerate(self._idle):
            while other != shard and idle and sum(self._held) >= self._limit:
                if self._held[other] <= self._floor[other]:
                    break
                out.append(self._release(other, idle.pop(), close=False))
        return out

    def _drop_idle(self, shard: int) -> list[tuple[int, Any, bool]]:
        """Every idle connection of other shards (bar reserved ones), before waiting for a pool."""
        out = []
        with self._lock:
            for other, idle in enumerate(self._idle):
                while other != shard and idle and self._held[other] > self._floor[other]:
                    out.append(self._release(other, idle.pop(), close=False))
        return out

    def _release(self, shard: int, conn: Any, close: bool) -> tuple[int, Any, bool]:
        """Count ``conn`` as given back (under the lock); :meth:`_put` then hands it to the pool."""
        self._held[shard] -= 1
        return (shard, conn, close)

    def _put(self, out: Sequence[tuple[int, Any, bool]]) -> None:
        """Hand connections back to their pools (outside the lock: a waiter may connect meanwhile)."""
        assert self._pools is not None or not out
        for shard, conn, close in out:
            assert self._pools is not None
            with contextlib.suppress(Exception):
                self._pools[shard].putconn(conn, close=close or broken(conn))
