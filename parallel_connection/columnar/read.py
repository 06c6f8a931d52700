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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pglast
import pglast.ast
import pglast.parser
import psycopg2
import psycopg2.extensions
import pyarrow as pa

from .. import deadline
from ..casts import LibraryCursor
from ..errors import refuse
from ..executor import ShardQueries, shard_queries
from ..outcome import Statement, check_query, python_encoding
from ..shards import ShardSet
from ..workers import Workers, wait
from .driver import Driver, DriverFailed, available
from .merge import mergeable, merged, runs_sorted
from .types import Column, arrow_zone, describe_query, plan_columns, rows_table, settle, unify

__all__ = ["ROWS_PER_BATCH", "Reader", "read_batches", "read_table", "rows_as_table", "session_zone"]

ROWS_PER_BATCH = 65_536
"""The rows of each batch :func:`read_batches` yields when the answer comes from the row path."""
_QUEUED = 2
"""Batches each shard's reader may hold before the caller takes them (bounded memory)."""

_SESSION = """SELECT current_setting('transaction_isolation'),
       txid_current_if_assigned() IS NOT NULL
         OR EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()),
       current_setting('TimeZone'),
       (SELECT coalesce(json_object_agg(name, setting), '{}')::text FROM pg_catalog.pg_settings
         WHERE source = 'session' AND name NOT IN
           ('transaction_isolation', 'transaction_read_only', 'transaction_deferrable', 'client_encoding',
            'application_name', 'default_transaction_isolation', 'default_transaction_read_only',
            'default_transaction_deferrable', 'session_authorization'))"""
"""What the driver must copy of a shard session, and whether it may read for it: the isolation, a
transaction that wrote or a session with temporary tables (neither visible to another connection)."""


class Reader:
    """What a connection reads Arrow with: its driver (None: not installed, or no DSNs)."""

    def __init__(self, dsns: list[str] | None, connect_kwargs: dict[str, Any]) -> None:
        self.driver = Driver(dsns, connect_kwargs) if dsns is not None and available() else None

    def close(self) -> None:
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
    try:
        with deadline.scope(pdb.statement_deadline):
            shards = _driver_shards(pdb, reader, cur, query, vars)
        if shards is None:
            yield from _row_path(cur, query, vars)
            return
        planned, reads = shards
        yield from _from_driver(pdb, reader, cur, planned, reads, query, vars, whole)
    finally:
        cur.close()


def rows_as_table(description: Sequence[Any], rows: Sequence[Any], zone: str) -> pa.Table:
    """Rows the row path gave, as a table."""
    return rows_table(description, rows, zone)


def session_zone(shard_set: ShardSet) -> str:
    """The first shard session's time zone, as Arrow names it."""
    conn = shard_set.connections[0]
    with conn.cursor(cursor_factory=LibraryCursor) as cur:
        cur.execute("SELECT current_setting('TimeZone')")
        row = cur.fetchone()
    return arrow_zone(row[0] if row else "UTC")


def _driver_shards(
    pdb: Any, reader: Reader, cur: Any, query: Any, vars: Any
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
    if not all(_plain_select(text) for text in rendered):
        return None
    connections = shard_set.connections
    first = planned.targets[0]

    def session(i: int) -> tuple[dict[str, str], str, Any] | None:
        found = _session(connections[i])
        if found is None or i != first:
            return None if found is None else (*found, None)
        return (*found, _describe(connections[i], rendered[0]))

    sessions = shard_set.run_statement(session, planned.targets)
    if not all(s is not None for s in sessions):
        return None
    description = sessions[0][2] if sessions[0] is not None else None
    if not description:
        return None
    columns = plan_columns(description)
    limit = deadline.current()
    reads = []
    for index, text, found in zip(planned.targets, rendered, sessions, strict=True):
        assert found is not None
        settings = dict(found[0])
        if limit is not None:
            settings["statement_timeout"] = str(max(1, round((limit.at - time.monotonic()) * 1000)))
        reads.append(_Shard(index, text, columns, settings, found[1]))
    return planned, reads


def _plain_select(text: str) -> bool:
    """``text`` is one SELECT (so it can be read as a subquery)."""
    try:
        statements = pglast.parse_sql(text)
    except pglast.parser.ParseError:
        return False
    if len(statements) != 1:
        return False
    stmt = statements[0].stmt
    return isinstance(stmt, pglast.ast.SelectStmt) and stmt.intoClause is None


def _describe(conn: Any, query: str) -> Any:
    """``query``'s columns as this shard session sees them (its description, from no rows)."""
    with conn.cursor(cursor_factory=LibraryCursor) as cur:
        cur.execute(describe_query(query))
        return cur.description


def _session(conn: Any) -> tuple[dict[str, str], str] | None:
    """This shard session's settings and Arrow time zone, or None when the driver may not read for it."""
    import json

    with conn.cursor(cursor_factory=LibraryCursor) as cur:
        cur.execute(_SESSION)
        row = cur.fetchone()
    assert row is not None
    isolation, private, zone, settings = row
    if private or not (conn.autocommit or isolation in ("read committed", "read uncommitted")):
        return None
    return json.loads(settings), arrow_zone(zone)


def _row_path(cur: Any, query: Any, vars: Any) -> Iterator[Any]:
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
) -> Iterator[Any]:
    assert reader.driver is not None
    driver = reader.driver
    client = planned.client
    if client is None and not whole:
        yield from _streamed(driver, reads, cur, query, vars)
        return
    try:
        tables, columns = _read_all(driver, reads)
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
            k for k in client.order if pg_types[k.column] in ("text", "varchar", "name") and not k.collate_c
        ]
        if check and not all(runs_sorted(t, client.order) for t in tables):
            yield from _row_path(cur, query, vars)  # a column collation other than C: the row path says
            return
    table = merged(tables, client, planned.vars, planned.names)
    yield table.schema
    yield from table.to_batches()


def _read_all(driver: Driver, reads: list[_Shard]) -> tuple[list[pa.Table], list[Any]]:
    """Every target's whole table, read at once."""

    def one(shard: _Shard) -> tuple[pa.Table, list[Any]]:
        parts = list(
            driver.read(shard.index, shard.query, shard.columns, shard.settings, shard.zone, infer=False)
        )
        return pa.concat_tables(parts), shard.columns

    workers = Workers(len(reads), "parallel_connection-arrow")
    try:
        futures = [workers.submit(one, shard) for shard in reads]
        wait(futures)
        results = [f.result() for f in futures]
    finally:
        workers.shutdown(wait=False)
    return [t for t, _ in results], results[0][1]


def _streamed(driver: Driver, reads: list[_Shard], cur: Any, query: Any, vars: Any) -> Iterator[Any]:
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

    workers = Workers(len(reads), "parallel_connection-arrow")
    for shard in reads:
        workers.submit(pump, shard)
    workers.shutdown(wait=False)
    try:
        live = len(reads)
        schema = None
        while live:
            index, item = _next(out)
            if item is None:
                live -= 1
                continue
            if isinstance(item, BaseException):
                if schema is None and isinstance(item, DriverFailed):
                    stop.set()
                    yield from _row_path(cur, query, vars)
                    return
                raise _shard_failure(item, index)
            if schema is None:
                schema = item.schema
                yield schema
            yield from _conformed(item, schema, index).to_batches()
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


def _next(q: queue.Queue[tuple[int, Any]]) -> tuple[int, Any]:
    while True:
        with contextlib.suppress(queue.Empty):
            return q.get(timeout=0.1)


def _shard_failure(exc: BaseException, index: int) -> BaseException:
    if isinstance(exc, DriverFailed):
        return psycopg2.OperationalError(f"shard {index}: reading Arrow batches failed: {exc}")
    return exc
