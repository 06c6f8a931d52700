"""A statement's answer as Arrow: the plan the row path would run, the shards read by the driver.

statement -> plan (executor.shard_queries) -> can the driver see what the
caller's connection sees? -> each target read at once, in its own thread ->
PostgreSQL's types -> merged in Arrow. Whenever a step cannot give exactly the
row path's answer (a write, an aggregate, a transaction that wrote, temporary
tables, REPEATABLE READ, a type Arrow cannot order...), the row path runs the
statement and its rows become the table.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pyarrow as pa

from .. import deadline
from ..casts import LibraryCursor
from ..errors import refuse
from ..executor import ShardQueries, shard_queries
from ..outcome import Statement, check_query, python_encoding, text_of
from ..shards import ShardSet
from ..workers import Workers, wait
from .driver import Canceled, Driver, DriverFailed, available
from .merge import mergeable, merged, runs_sorted
from .session import Session, driver_readable, may_return_rows, read_session
from .types import Column, arrow_zone, describe_query, plan_columns, rows_table, settle, unify

__all__ = [
    "ROWS_PER_BATCH",
    "Reader",
    "pandas_frame",
    "polars_frame",
    "read_batches",
    "read_table",
    "rows_table",
    "session_zone",
]

_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE

ROWS_PER_BATCH = 65_536
"""The rows of each batch :func:`read_batches` yields when the answer comes from the row path."""
_QUEUED = 2
"""Batches each shard's reader may hold before the caller takes them (bounded memory)."""


class Reader:
    """What a connection reads Arrow with: its driver (None: not installed, or no DSNs)."""

    def __init__(self, dsns: list[str] | None, connect_kwargs: dict[str, Any]) -> None:
        self.driver = Driver(dsns, connect_kwargs) if dsns is not None and available() else None
        self.workers = Workers(2 * len(dsns or ()), "parallel_connection-arrow")
        """The threads the shards are read on (kept between reads)."""

    def close(self) -> None:
        self.workers.shutdown(wait=False)
        if self.driver is not None:
            self.driver.close()


@dataclass(frozen=True)
class _Shard:
    index: int
    query: str
    columns: list[Column]
    settings: dict[str, str]
    zone: str


def read_table(pdb: Any, reader: Reader, query: Any, vars: Any) -> pa.Table:
    """The whole answer of ``query`` as one table."""
    batches = read_batches(pdb, reader, query, vars, whole=True)
    schema = next(batches)
    return pa.Table.from_batches(list(batches), schema=schema)


def read_batches(pdb: Any, reader: Reader, query: Any, vars: Any, *, whole: bool = False) -> Iterator[Any]:
    """The schema, then the answer of ``query`` batch by batch (``whole``: the caller keeps them all)."""
    cur = pdb.cursor(cursor_factory=psycopg2.extensions.cursor)
    as_written(cur)
    idle = [c.get_transaction_status() == _IDLE for c in pdb.shard_set.connections]
    try:
        with deadline.scope(pdb.statement_deadline):
            shards = _driver_shards(pdb, reader, cur, query, vars, idle)
        if shards is None:
            yield from _row_path(cur, query, vars)
            return
        planned, reads = shards
        yield from _from_driver(pdb, reader, cur, planned, reads, query, vars, whole, idle)
    finally:
        cur.close()


_AS_WRITTEN = psycopg2.extensions.new_type(
    (114, 3802, 1083, 1266), "PARALLEL_CONNECTION_TEXT", lambda v, c: v
)


def as_written(cur: Any) -> None:
    """The row path's cursor reads json, jsonb, time and timetz as PostgreSQL writes them (psycopg2
    would re-serialize json, turn 24:00 into 00:00 and ``+05`` into ``+05:00``)."""
    for shard_cursor in cur.shard_cursors:
        psycopg2.extensions.register_type(_AS_WRITTEN, shard_cursor)


DTYPE_BACKENDS = ("numpy_nullable", "pyarrow")
"""What ``dtype_backend`` may be, as in ``pandas.read_sql``."""


def pandas_frame(table: pa.Table, dtype_backend: str | None, options: dict[str, Any]) -> Any:
    """``table`` as a pandas DataFrame: ``Table.to_pandas(**options)``; ``dtype_backend`` as pandas
    takes it: ``"pyarrow"`` keeps every column Arrow's (no copy, numeric stays decimal128),
    ``"numpy_nullable"`` makes integers, booleans, floats and text pandas' nullable dtypes."""
    if dtype_backend is not None:
        if dtype_backend not in DTYPE_BACKENDS:
            raise ValueError(
                f"dtype_backend is {dtype_backend!r}: it may be {' or '.join(map(repr, DTYPE_BACKENDS))}"
            )
        if "types_mapper" in options:
            raise ValueError("give dtype_backend or types_mapper, not both")
        import pandas

        if dtype_backend == "pyarrow":
            options = {**options, "types_mapper": pandas.ArrowDtype}
        else:
            options = {**options, "types_mapper": _nullable(pandas).get}
    return table.to_pandas(**options)


def _nullable(pandas: Any) -> dict[pa.DataType, Any]:
    """Arrow types -> pandas' nullable dtypes (what ``dtype_backend="numpy_nullable"`` reads)."""
    return {
        pa.int8(): pandas.Int8Dtype(), pa.int16(): pandas.Int16Dtype(), pa.int32(): pandas.Int32Dtype(),
        pa.int64(): pandas.Int64Dtype(), pa.uint8(): pandas.UInt8Dtype(), pa.uint16(): pandas.UInt16Dtype(),
        pa.uint32(): pandas.UInt32Dtype(), pa.uint64(): pandas.UInt64Dtype(),
        pa.bool_(): pandas.BooleanDtype(), pa.float32(): pandas.Float32Dtype(),
        pa.float64(): pandas.Float64Dtype(), pa.string(): pandas.StringDtype(),
        pa.large_string(): pandas.StringDtype(),
    }  # fmt: skip


def polars_frame(table: pa.Table) -> Any:
    """``table`` as a polars DataFrame (whose columns need distinct names)."""
    import polars

    names = table.column_names
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise psycopg2.ProgrammingError(
            f"polars needs distinct column names; {', '.join(map(repr, repeated))} repeat: name them with AS"
        )
    return polars.from_arrow(table)


def session_zone(shard_set: ShardSet) -> str:
    """The first shard session's time zone, as Arrow names it."""
    conn = shard_set.connections[0]
    with conn.cursor(cursor_factory=LibraryCursor) as cur:
        cur.execute("SELECT current_setting('TimeZone')")
        row = cur.fetchone()
    return arrow_zone(row[0] if row else "UTC")


def _driver_shards(
    pdb: Any, reader: Reader, cur: Any, query: Any, vars: Any, idle: list[bool]
) -> tuple[ShardQueries, list[_Shard]] | None:
    """The reads the driver makes for ``query`` (None: the row path answers it)."""
    if reader.driver is None:
        return None
    check_query(query, cur.shard_cursors[0])
    shard_set: ShardSet = pdb.shard_set
    shard_cursors = cur.shard_cursors
    statement = Statement(query, vars, streaming=False, batch_size=0, tuples=True)
    planned = shard_queries(shard_set, shard_cursors, statement)
    if planned is None:
        return None
    rendered = []
    for index, text in zip(planned.targets, planned.queries, strict=True):
        shard_cursor = shard_cursors[index]
        sql_text = shard_cursor.mogrify(text, planned.vars).decode(python_encoding(shard_cursor))
        rendered.append(sql_text.rstrip().rstrip(";"))
    connections = shard_set.connections
    first = planned.targets[0]
    under_way = [not idle[i] and not connections[i].autocommit for i in planned.targets]
    # The shards' statements are mostly one text: each distinct one is parsed once.
    if not all(driver_readable(text, busy) for text, busy in set(zip(rendered, under_way, strict=True))):
        return None

    def session(i: int) -> tuple[Session, Any] | None:
        found = read_session(connections[i])
        if found is None:
            return None
        return found, (_describe(connections[i], rendered[0]) if i == first else None)

    sessions = shard_set.run_statement(session, planned.targets)
    if not all(s is not None for s in sessions):
        return None
    description = sessions[0][1] if sessions[0] is not None else None
    if not description:
        return None  # no columns: Arrow needs one to carry the rows
    columns = plan_columns(description)
    limit = deadline.current()
    reads = []
    for index, text, found in zip(planned.targets, rendered, sessions, strict=True):
        assert found is not None
        settings = dict(found[0].settings)
        if limit is not None:
            settings["statement_timeout"] = str(max(1, round((limit.at - time.monotonic()) * 1000)))
        reads.append(_Shard(index, text, columns, settings, found[0].zone))
    return planned, reads


def _describe(conn: Any, query: str) -> Any:
    """``query``'s columns as this shard session sees them (its description, from no rows)."""
    with conn.cursor(cursor_factory=LibraryCursor) as cur:
        cur.execute(describe_query(query))
        return cur.description


def _end_checks(shard_set: ShardSet, idle: list[bool]) -> None:
    """End the transactions the plan's and the checks' reads began on sessions that had none."""
    connections = shard_set.connections
    began = [i for i, was in enumerate(idle) if was and connections[i].get_transaction_status() != _IDLE]
    if began:
        shard_set.run(lambda i: connections[i].rollback(), began)


def _row_path(cur: Any, query: Any, vars: Any) -> Iterator[Any]:
    if not may_return_rows(text_of(query, cur.shard_cursors[0])):
        raise psycopg2.ProgrammingError("the statement returns no rows to read as Arrow (nothing was run)")
    cur.execute(query, vars)
    if cur.description is None:
        raise psycopg2.ProgrammingError("the statement returns no rows to read as Arrow")
    zone = session_zone(cur.connection.shard_set)
    description = cur.description
    first = rows_table(description, cur.fetchmany(ROWS_PER_BATCH), zone)
    yield first.schema
    batch = first
    while True:
        yield from batch.to_batches()
        rows = cur.fetchmany(ROWS_PER_BATCH)
        if not rows:
            return
        batch = rows_table(description, rows, zone).cast(first.schema)


def _from_driver(
    pdb: Any,
    reader: Reader,
    cur: Any,
    planned: ShardQueries,
    reads: list[_Shard],
    query: Any,
    vars: Any,
    whole: bool,
    idle: list[bool],
) -> Iterator[Any]:
    assert reader.driver is not None
    driver = reader.driver
    shard_set: ShardSet = pdb.shard_set
    client = planned.client
    if client is None and not whole:
        yield from _streamed(shard_set, driver, reader.workers, reads, cur, query, vars, idle)
        return
    try:
        tables, columns = _read_all(shard_set, driver, reader.workers, reads)
    except DriverFailed:
        yield from _row_path(cur, query, vars)
        return
    tables = unify(settle(tables, columns))
    pg_types = [c.pg_type for c in columns]
    if client is not None:
        if not mergeable(client, tables[0].schema, pg_types, planned.text_order_c):
            yield from _row_path(cur, query, vars)
            return
        check = [
            k
            for k in client.order
            if pg_types[k.column] in ("text", "varchar", "name")
            and not (k.collate_c or planned.code_point_text)
        ]
        if check and not all(runs_sorted(t, client.order) for t in tables):
            yield from _row_path(cur, query, vars)  # a column collation other than C: the row path says
            return
    table = merged(tables, client, planned.vars, planned.names)
    _end_checks(shard_set, idle)
    yield table.schema
    yield from table.to_batches()


def _read_all(
    shard_set: ShardSet, driver: Driver, workers: Workers, reads: list[_Shard]
) -> tuple[list[pa.Table], list[Any]]:
    """Every target's whole table, read at once, within the statement deadline."""

    def one(shard: _Shard) -> pa.Table:
        parts = driver.read(shard.index, shard.query, shard.columns, shard.settings, shard.zone, infer=False)
        return pa.concat_tables(list(parts))

    limit = deadline.current()
    futures = [workers.submit(one, shard) for shard in reads]
    try:
        timeout = None if limit is None else max(0.0, limit.at - time.monotonic()) + deadline.CUT_GRACE
        _, late = wait(futures, timeout=timeout)
    except BaseException:
        driver.cancel()
        raise
    if late:
        driver.cancel()
        index = reads[futures.index(next(iter(late)))].index
        raise shard_set.error(deadline.canceled_error(limit), index)
    tables = []
    for shard, future in zip(reads, futures, strict=True):
        exc = future.exception()
        if isinstance(exc, Canceled):
            raise shard_set.error(deadline.canceled_error(limit), shard.index)
        tables.append(future.result())
    return tables, reads[0].columns


def _streamed(
    shard_set: ShardSet,
    driver: Driver,
    workers: Workers,
    reads: list[_Shard],
    cur: Any,
    query: Any,
    vars: Any,
    idle: list[bool],
) -> Iterator[Any]:
    """The union, batch by batch as the shards give them; at most ``_QUEUED`` batches a shard wait."""
    out: queue.Queue[tuple[int, Any]] = queue.Queue(_QUEUED * len(reads))
    stop = threading.Event()

    def pump(shard: _Shard) -> None:
        try:
            for table in driver.read(shard.index, shard.query, shard.columns, shard.settings, shard.zone):
                if not _put(out, (shard.index, table), stop):
                    return
            _put(out, (shard.index, None), stop)
        except BaseException as exc:  # handed to the caller's thread
            _put(out, (shard.index, exc), stop)

    for shard in reads:
        workers.submit(pump, shard)
    limit = deadline.current()
    try:
        live = len(reads)
        schema = None
        while live:
            index, item = _next(out, limit)
            if item is None:
                live -= 1
                continue
            if isinstance(item, BaseException):
                if schema is None and isinstance(item, DriverFailed):
                    stop.set()
                    yield from _row_path(cur, query, vars)
                    return
                raise _shard_failure(shard_set, item, index, limit)
            if schema is None:
                schema = item.schema
                yield schema
            yield from _conformed(item, schema, index).to_batches()
        _end_checks(shard_set, idle)
    except _Late:
        driver.cancel()
        raise shard_set.error(deadline.canceled_error(limit), reads[0].index) from None
    except BaseException:
        driver.cancel()
        raise
    finally:
        stop.set()


def _put(out: queue.Queue[tuple[int, Any]], item: tuple[int, Any], stop: threading.Event) -> bool:
    while not stop.is_set():
        with contextlib.suppress(queue.Full):
            out.put(item, timeout=0.1)
            return True
    return False


def _conformed(table: pa.Table, schema: pa.Schema, index: int) -> pa.Table:
    if table.schema.equals(schema):
        return table
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise refuse(
            f"shard {index}'s batch has types {table.schema.types} where the first batch had "
            f"{schema.types} (an unconstrained numeric?); cast the column in SQL, or use fetch_arrow()"
        ) from None


class _Late(Exception):
    """No batch came within the statement deadline."""


def _next(q: queue.Queue[tuple[int, Any]], limit: deadline.Deadline | None) -> tuple[int, Any]:
    while True:
        with contextlib.suppress(queue.Empty):
            return q.get(timeout=0.1)
        if limit is not None and time.monotonic() > limit.at + deadline.CUT_GRACE:
            raise _Late


def _shard_failure(
    shard_set: ShardSet, exc: BaseException, index: int, limit: deadline.Deadline | None
) -> BaseException:
    if isinstance(exc, Canceled):
        return shard_set.error(deadline.canceled_error(limit), index)
    if isinstance(exc, DriverFailed):
        return shard_set.error(psycopg2.OperationalError(f"reading Arrow batches failed: {exc}"), index)
    return exc
