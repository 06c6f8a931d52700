"""Run one range on one connection, and retry it when the failure is transient."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool

from ..cancel import broken
from ..pool import PoolTimeout
from .spec import IdRange, Work

if TYPE_CHECKING:
    from .ledger import Ledger

__all__ = ["Outcome", "Ran", "is_transient", "run_range", "run_with_retries"]

TRANSIENT_CODES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "53300",  # too_many_connections
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
    }
)
MAX_BACKOFF = 10.0


@dataclass
class Outcome:
    """What became of one range: its value, or the error that ended it."""

    value: Any = None
    rows: int = 0
    error: BaseException | None = None
    attempts: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    resumed: bool = False
    """Another run of the job had finished the range (its record was found in the shard)."""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled


def is_transient(exc: BaseException, conn: Any = None) -> bool:
    """True for failures worth retrying on a fresh connection (lost connection, 40001, 40P01, 57P0x...)."""
    if isinstance(exc, PoolTimeout):
        return False  # it waited its whole timeout already
    if isinstance(exc, psycopg2.pool.PoolError):
        return "exhausted" in str(exc)
    if not isinstance(exc, psycopg2.Error):
        return False
    code = exc.pgcode
    if code:
        return code in TRANSIENT_CODES or code.startswith("08")
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return conn is None or broken(conn)
    return False


class Ran(NamedTuple):
    """A range that finished: its value and rows, and whether another run had done it (``resumed``)."""

    value: Any
    rows: int
    resumed: bool = False


def run_range(
    conn: Any,
    work: Work,
    id_range: IdRange,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    snapshot: str | None = None,
    ledger: Ledger | None = None,
) -> Ran:
    """Run ``work`` on ``id_range`` in one transaction on ``conn``, committed.

    With a ``ledger`` (``checkpoint=InShard()``), the range's record is inserted
    in that same transaction, just before the COMMIT. If the range fails and
    the shard holds a record of it (another run of the job finished it), it
    is reported as done by that run, its work here rolled back.
    """
    if conn.autocommit:
        conn.autocommit = False
    if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        conn.rollback()
    try:
        factory = psycopg2.extras.RealDictCursor if work.sql is not None else None
        with conn.cursor(cursor_factory=factory) as cur:
            if snapshot is not None:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
            if work.sql is not None:
                args = dict(params) if isinstance(params, Mapping) else {}
                args.update(start=id_range.start, end=id_range.end)
                cur.execute(work.sql, args)
                value: Any = [dict(r) for r in cur.fetchall()] if cur.description else cur.rowcount
                rows = max(cur.rowcount, 0)
            else:
                assert work.fn is not None
                value = work.fn(cur, id_range)
                rows = max(cur.rowcount, 0)
            if ledger is not None:
                ledger.record(cur, id_range, value, rows)
        conn.commit()
    except BaseException as exc:
        if not conn.closed:
            with contextlib.suppress(Exception):
                conn.rollback()
        if ledger is not None and isinstance(exc, Exception) and not conn.closed:
            done = None
            with contextlib.suppress(Exception):
                done = ledger.lookup(conn, id_range)
            if done is not None:
                return Ran(done[0], done[1], resumed=True)
        raise
    return Ran(value, rows)


def run_with_retries(
    acquire: Callable[[], Any],
    release: Callable[[Any, bool], None],
    run: Callable[[Any], Ran],
    *,
    retries: int,
    backoff: float,
    stop: threading.Event | None = None,
) -> Outcome:
    """``run`` on a connection from ``acquire``; transient failures retried on a fresh one.

    ``release(conn, discard)`` gives a connection back (``discard``: close it).
    Waits ``backoff * 2**n`` seconds (with jitter) between attempts. Never
    raises an ``Exception``: the error is in the outcome.
    """
    began = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        conn = None
        try:
            conn = acquire()
            value, rows, resumed = run(conn)
        except Exception as exc:
            transient = is_transient(exc, conn)
            if conn is not None:
                release(conn, transient or broken(conn))
            stopped = stop is not None and stop.is_set()
            if transient and attempts <= retries and not stopped:
                delay = min(MAX_BACKOFF, backoff * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
                if stop is None:
                    time.sleep(delay)
                elif stop.wait(delay):
                    return Outcome(
                        error=exc, attempts=attempts, seconds=time.monotonic() - began, cancelled=True
                    )
                continue
            return Outcome(error=exc, attempts=attempts, seconds=time.monotonic() - began, cancelled=stopped)
        release(conn, False)
        return Outcome(
            value=value, rows=rows, attempts=attempts, seconds=time.monotonic() - began, resumed=resumed
        )
