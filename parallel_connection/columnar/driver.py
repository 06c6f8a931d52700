"""The ADBC PostgreSQL driver's connections to the shards, and one shard's read through them.

A read runs in a READ ONLY, READ COMMITTED transaction of its own with the
caller's session settings, and is rolled back: it cannot write, and it sees
what a statement of the caller's connection would see (read.py decides when
that holds). The driver decodes binary COPY in C without the GIL.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg2.extensions
import pyarrow as pa

from .types import Column, check_representable, finish, flat, wrapped

__all__ = ["Canceled", "Driver", "DriverFailed", "available"]

_QUERY_CANCELED = "57014"


class DriverFailed(Exception):
    """The driver could not read this statement (the row path answers it, or says why not)."""


class Canceled(Exception):
    """The server canceled the driver's statement (its statement_timeout: the statement deadline)."""


def available() -> bool:
    """The ADBC PostgreSQL driver is installed."""
    try:
        import adbc_driver_postgresql.dbapi  # noqa: F401
    except ImportError:
        return False
    return True


class Driver:
    """ADBC connections to each shard, opened when first needed and reused, one read at a time each."""

    def __init__(self, dsns: list[str], connect_kwargs: Mapping[str, Any]) -> None:
        libpq = {k: v for k, v in connect_kwargs.items() if k not in ("connection_factory", "cursor_factory")}
        self._dsns = [psycopg2.extensions.make_dsn(dsn, **libpq) for dsn in dsns]
        self._idle: list[list[Any]] = [[] for _ in dsns]
        self._active: set[Any] = set()
        self._lock = threading.Lock()
        self._closed = False

    def read(
        self,
        index: int,
        query: str,
        columns: list[Column],
        settings: Mapping[str, str],
        zone: str,
        *,
        infer: bool = True,
    ) -> Iterator[pa.Table]:
        """Shard ``index``'s rows of ``query`` (values in it), batch by batch, in PostgreSQL's types."""
        conn = self._take(index)
        healthy = False
        try:
            with conn.cursor() as cur, self._running(cur):
                if settings:
                    given = _text(settings)
                    cur.execute(f"SELECT set_config(key, value, true) FROM json_each_text({given})")
                    cur.fetchall()
                cur.execute(wrapped(query, columns))
                reader = cur.fetch_record_batch()
                fixed = None
                for batch in reader:
                    read = pa.Table.from_batches([batch])
                    if not flat(read, columns):
                        raise DriverFailed("an array of several dimensions (the driver flattens it)")
                    table = finish(read, columns, zone, fixed, infer=infer)
                    check_representable(table, columns)
                    fixed = table.schema if fixed is None else fixed
                    yield table
                if fixed is None:
                    yield finish(reader.schema.empty_table(), columns, zone, infer=infer)
            conn.rollback()
            healthy = True
        except Exception as exc:
            if not _is_driver_error(exc):
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if getattr(exc, "sqlstate", None) == _QUERY_CANCELED:
                raise Canceled(message) from None
            raise DriverFailed(message) from None
        finally:
            self._give_back(index, conn, healthy)

    def cancel(self) -> None:
        """Ask the servers to cancel every statement the driver is running (from any thread)."""
        with self._lock:
            active = list(self._active)
        for cur in active:
            with contextlib.suppress(Exception):
                cur.adbc_cancel()

    @contextlib.contextmanager
    def _running(self, cur: Any) -> Iterator[None]:
        with self._lock:
            self._active.add(cur)
        try:
            yield
        finally:
            with self._lock:
                self._active.discard(cur)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, [[] for _ in self._idle]
        for conns in idle:
            for conn in conns:
                with contextlib.suppress(Exception):
                    conn.close()

    def _take(self, index: int) -> Any:
        with self._lock:
            if self._idle[index]:
                return self._idle[index].pop()
        import adbc_driver_postgresql.dbapi as adbc

        try:
            conn = adbc.connect(self._dsns[index], autocommit=False)
            with conn.cursor() as cur:  # every read's transaction: READ COMMITTED, READ ONLY
                cur.execute(_CHARACTERISTICS)
            conn.commit()
        except Exception as exc:
            raise DriverFailed(f"the driver could not connect ({type(exc).__name__})") from None
        return conn

    def _give_back(self, index: int, conn: Any, healthy: bool) -> None:
        if healthy:
            with self._lock:
                if not self._closed:
                    self._idle[index].append(conn)
                    return
        with contextlib.suppress(Exception):
            conn.close()


_CHARACTERISTICS = "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED, READ ONLY"


def _text(settings: Mapping[str, str]) -> str:
    """``settings`` as a SQL string literal of JSON, whatever standard_conforming_strings says."""
    body = json.dumps(dict(settings)).replace("\\", "\\\\").replace("'", "''")
    return f"E'{body}'"


def _is_driver_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("adbc_driver") or isinstance(exc, (pa.ArrowException, OSError))
