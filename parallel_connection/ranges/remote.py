"""Range jobs for any ``concurrent.futures.Executor`` (process pools, Dask): DSNs in, small outcomes out.

A job carries its shard's DSN, never a live connection. The worker opens the
connection itself and keeps it for the next jobs it runs (one per DSN per
worker thread), so a worker connects once per shard, not once per range.
"""

from __future__ import annotations

import atexit
import contextlib
import pickle
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from ..cancel import broken
from .attempt import Outcome, run_range, run_with_retries
from .ledger import Ledger
from .spec import IdRange, Work

__all__ = ["RemoteJob", "close_worker_connections", "run_remote"]

_local = threading.local()
_all_lock = threading.Lock()
_all: weakref.WeakSet[Any] = weakref.WeakSet()
_registered = False


@dataclass(frozen=True)
class RemoteJob:
    """Everything a worker needs to run one range (picklable)."""

    dsn: str = field(repr=False)
    connect_kwargs: Mapping[str, Any] = field(repr=False)
    work: Work
    id_range: IdRange
    params: Sequence[Any] | Mapping[str, Any] | None = None
    snapshot: str | None = None
    retries: int = 3
    backoff: float = 0.1
    ledger: Ledger | None = None
    """The job's in-shard checkpoint (``checkpoint=InShard()``): the range's record commits with its work."""


def _key(job: RemoteJob) -> str:
    return job.dsn + "\x00" + repr(sorted(job.connect_kwargs.items()))


def _acquire(job: RemoteJob) -> Any:
    cache: dict[str, Any] = _local.__dict__.setdefault("connections", {})
    conn = cache.get(_key(job))
    if conn is not None and not broken(conn):
        return conn
    conn = psycopg2.connect(job.dsn, **job.connect_kwargs)
    cache[_key(job)] = conn
    global _registered
    with _all_lock:
        if not _registered:
            _registered = True
            atexit.register(close_worker_connections)
        _all.add(conn)
    return conn


def _release(job: RemoteJob, conn: Any, discard: bool) -> None:
    if discard:
        _local.__dict__.setdefault("connections", {}).pop(_key(job), None)
        with contextlib.suppress(Exception):
            conn.close()


def run_remote(job: RemoteJob) -> Outcome:
    """Run one range in this worker, on this worker thread's connection to the shard."""
    outcome = run_with_retries(
        lambda: _acquire(job),
        lambda conn, discard: _release(job, conn, discard),
        lambda conn: run_range(conn, job.work, job.id_range, job.params, job.snapshot, job.ledger),
        retries=job.retries,
        backoff=job.backoff,
    )
    if outcome.error is not None:
        try:
            pickle.dumps(outcome.error)
        except Exception:
            outcome.error = _picklable(outcome.error)
        outcome.error.__traceback__ = None
    return outcome


def _picklable(error: BaseException) -> BaseException:
    """``error`` as something that can travel back from a worker, keeping its DB-API class."""
    if isinstance(error, psycopg2.Error):
        copy = type(error)(str(error))
        # pgcode and pgerror are read-only; __setstate__ is how psycopg2 itself restores them
        # (the stubs leave it unannotated).
        copy.__setstate__({"pgcode": error.pgcode, "pgerror": error.pgerror})  # type: ignore[no-untyped-call]
        return copy
    return RuntimeError(f"{type(error).__name__}: {error}")


def close_worker_connections() -> None:
    """Close every connection this process's workers opened."""
    with _all_lock:
        conns = list(_all)
        _all.clear()
    for conn in conns:
        with contextlib.suppress(Exception):
            conn.close()
