"""COPY through the shards: ``COPY ... FROM STDIN`` split by shard key into one COPY per shard
(or the same bytes to every copy of a copied table), ``COPY ... TO STDOUT`` the shards' rows one
shard after another.

COPY FROM streams in bounded memory: the calling thread reads the user's file chunk by chunk,
cuts it into records (:mod:`copy_format`), and hands each shard's records, gathered into blocks,
to that shard's COPY through a small bounded queue; every shard's ``copy_expert`` runs at once on
the fan-out's threads, reading its queue as its file. A record that can't be placed, an error
reading the file, Ctrl-C or one shard's error stops everything: every other shard's reader
raises, so psycopg2 ends its COPY with CopyFail, and the transaction can't commit anywhere.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import os
import select
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from pglast import ast
from psycopg2 import sql

from .copy_format import CopySpec, KeyField, parse_copy, python_codec, split_batches
from .errors import NotSupportedError, shown
from .fanout import Pending
from .keys import as_key
from .plan import ShardFacts, plan_statement
from .plan.copies import check_copy
from .plan.layout import INTEGER_TYPES, TableInfo
from .plan.names import bind_names
from .plan.query import layout_of
from .plan.syntax import deparse
from .shards import ShardSet
from .targets import bind_targets
from .workers import AWAKE, wait

__all__ = ["BLOCK", "DEPTH", "CopyResult", "copy_expert", "copy_from_sql", "copy_to_sql"]

BLOCK = 64 * 1024
"""Bytes of records gathered for one shard before they are queued for its COPY."""
DEPTH = 4
"""Blocks queued for one shard at most: the calling thread waits for a shard that is behind."""
GRACE = 1.0
"""Seconds to wait for stopped COPYs to end before they are cancelled."""

_TEXT_KEYS = frozenset({25, 1043, 1042})
_UUID = 2950


@dataclass(frozen=True)
class CopyResult:
    """What a COPY through the shards did: the rows it copied, as one database would count them."""

    rowcount: int
    statusmessage: str | None = None


def copy_from_sql(table: str, sep: str, null: str, columns: Iterable[str] | None) -> sql.Composed:
    """The statement psycopg2's ``copy_from`` sends (the table quoted as one identifier)."""
    return sql.SQL("COPY {}{} FROM stdin WITH DELIMITER AS {} NULL AS {}").format(
        sql.Identifier(table), _column_list(columns), sql.Literal(sep), sql.Literal(null)
    )


def copy_to_sql(table: str, sep: str, null: str, columns: Iterable[str] | None) -> sql.Composed:
    """The statement psycopg2's ``copy_to`` sends (the table quoted as one identifier)."""
    return sql.SQL("COPY {}{} TO stdout WITH DELIMITER AS {} NULL AS {}").format(
        sql.Identifier(table), _column_list(columns), sql.Literal(sep), sql.Literal(null)
    )


def _column_list(columns: Iterable[str] | None) -> sql.Composable:
    if columns is None:
        return sql.SQL("")
    return sql.SQL("({})").format(sql.SQL(",").join(sql.Identifier(c) for c in columns))


def copy_expert(
    shards: ShardSet, cursors: Sequence[Any], query: str | bytes | sql.Composable, file: Any, size: int = 8192
) -> CopyResult:
    """Run one COPY statement through the shards, as one database holding every row would."""
    text = _text(query, cursors[0])
    spec = parse_copy(text)
    if spec.source != "stdio":
        return _server_side(shards, cursors, spec, text)
    if spec.is_from and not hasattr(file, "read"):
        raise TypeError("file must be a readable file-like object for COPY FROM")
    if not spec.is_from and not hasattr(file, "write"):
        raise TypeError("file must be a writable file-like object for COPY TO")
    shards.check_transaction()
    facts = shards.check_facts(shards.facts())
    if spec.is_from:
        return _copy_in(shards, cursors, spec, text, file, size, facts)
    return _copy_out(shards, cursors, spec, text, file, size, facts)


def _server_side(shards: ShardSet, cursors: Sequence[Any], spec: CopySpec, text: str) -> CopyResult:
    """COPY from or to a server file or program: only with a copied table. Every copy reads its
    server's file (and must take as many rows); one copy writes one."""
    shards.check_transaction()
    check_copy(spec.stmt, shards.check_facts(shards.facts()))
    targets = list(range(len(cursors))) if spec.is_from else [0]
    write = shards.write_scope(targets) if spec.is_from else contextlib.nullcontext()
    with write:
        shards.run_statement(lambda i: cursors[i].execute(text), targets)
        counts = [cursors[i].rowcount for i in targets]
        _check_copies(shards, counts)
    return CopyResult(counts[0], f"COPY {counts[0]}")


# -- COPY FROM ---------------------------------------------------------------------------------------


def _table(facts: ShardFacts, spec: CopySpec) -> tuple[TableInfo, ast.RangeVar]:
    """Where the COPY's table lives; UndefinedTable as the shards would say, for a name none has."""
    assert spec.relation is not None
    bound = bind_names(spec.relation, facts.catalog)
    if not isinstance(bound, ast.RangeVar):
        raise NotSupportedError(
            f"COPY with the view {spec.shown} across shards; COPY its tables, or run it on the shard's own "
            "connection (pdb.connections[i])"
        )
    if facts.catalog is not None and facts.catalog.resolve(bound.schemaname, bound.relname) is None:
        raise psycopg2.errors.UndefinedTable(f'relation "{spec.shown}" does not exist')
    info = layout_of(facts).table(bound)
    assert info is not None  # a COPY names no CTE
    return info, bound


def _copy_in(
    shards: ShardSet,
    cursors: Sequence[Any],
    spec: CopySpec,
    text: str,
    file: Any,
    size: int,
    facts: ShardFacts,
) -> CopyResult:
    """COPY FROM STDIN: a copied table's data to every copy, a sharded table's rows split by key."""
    info, bound = _table(facts, spec)
    name = info.name
    if facts.placement is None:
        raise NotSupportedError(
            f"COPY {name} FROM STDIN without a placement: no table has a shard key, so the rows can't be "
            f"split and would be loaded on every shard; declare the table in a Placement "
            f"(sharded={{{name!r}: key}} or copied=[{name!r}])"
        )
    if info.system:
        raise NotSupportedError(f"COPY into the system catalog table {name} across shards")
    targets = list(range(len(cursors)))
    client = cursors[0].connection.encoding
    chunks = _chunks(file, size, psycopg2.extensions.encodings.get(client, "utf_8"))
    if info.kind == "whole":
        with shards.write_scope(targets):
            counts = _pump(shards, cursors, text, size, targets, lambda pump: _broadcast(pump, chunks))
            _check_copies(shards, counts)  # in the scope: copies that diverged are not committed
        return CopyResult(counts[0], f"COPY {counts[0]}")
    route = _router(shards, cursors, spec, info, bound, chunks)
    with shards.write_scope(targets):
        total = sum(_pump(shards, cursors, text, size, targets, route))
    return CopyResult(total, f"COPY {total}")


def _router(
    shards: ShardSet,
    cursors: Sequence[Any],
    spec: CopySpec,
    info: TableInfo,
    bound: ast.RangeVar,
    chunks: Iterator[bytes],
) -> Callable[[_Pump], None]:
    """What feeds each shard its rows of a sharded table (refused here if the rows can't be placed)."""
    name, key = info.name, info.key
    if key is None:
        raise NotSupportedError(
            f"COPY {name} FROM STDIN: the table is read as sharded but its shard key is not declared, so "
            f"its rows can't be split; declare it: Placement(sharded={{{name!r}: key}})"
        )
    if spec.options.format == "binary":
        raise NotSupportedError(
            f"COPY {name} FROM STDIN (FORMAT binary) into a sharded table: binary rows are not split by "
            "key here; send the data as text or CSV"
        )
    columns = spec.columns if spec.columns is not None else _default_columns(shards, cursors, bound)
    if key not in columns:
        raise NotSupportedError(
            f"COPY {name} FROM STDIN with a column list that leaves out the shard key {key}: the rows' "
            f"shards can't be known; include {key} in the column list"
        )
    read_key = _key_reader(info)
    shard_of, n = info.function.shard_of, len(cursors)
    conn = cursors[0].connection
    codec = python_codec(spec.options.encoding or conn.encoding)
    server = python_codec(conn.info.parameter_status("server_encoding") or "UTF8")
    field = KeyField(columns.index(key), key)
    batches = split_batches(chunks, spec.options, field, table=name, encoding=codec, server_encoding=server)

    def place(line: int, text_key: str | None) -> int:
        if text_key is None:
            return 0  # as an INSERT's: on the first shard, where NOT NULL refuses it as one database would
        value = read_key(text_key)
        if value is None:
            raise psycopg2.DataError(
                f"line {line} of the COPY into {name}: its shard key {key} = {shown(text_key)} "
                "can't be read as the key column's type (nothing was copied)"
            )
        try:
            index: int = shard_of(value, n)
        except psycopg2.DataError as exc:
            raise psycopg2.DataError(
                f"line {line} of the COPY into {name}: {exc} (nothing was copied)"
            ) from None
        return index

    def route(pump: _Pump) -> None:
        blocks = [bytearray() for _ in range(n)]
        for batch in batches:
            for data, text_key, line, header in batch:
                if header:
                    for block in blocks:
                        block += data
                    continue
                value = read_key(text_key) if text_key is not None else None
                if value is None:
                    index = place(line, text_key)  # the first shard, or the error naming the line
                else:
                    try:
                        index = shard_of(value, n)
                    except psycopg2.DataError:
                        index = place(line, text_key)
                block = blocks[index]
                block += data
                if len(block) >= BLOCK:
                    pump.put(index, bytes(block))
                    block.clear()
        for index, block in enumerate(blocks):
            if block:
                pump.put(index, bytes(block))

    return route


def _chunks(file: Any, size: int, codec: str) -> Iterator[bytes]:
    """The user's file, read ``size`` at a time, as bytes (text encoded as psycopg2 would)."""
    while True:
        data = file.read(size)
        if not data:
            return
        yield data.encode(codec) if isinstance(data, str) else bytes(data)


def _broadcast(pump: _Pump, chunks: Iterator[bytes]) -> None:
    """The same bytes to every copy of a copied table."""
    for chunk in chunks:
        for i in pump.queues:
            pump.put(i, chunk)


_COLUMNS = """
SELECT a.attname
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
 ORDER BY a.attnum
"""


def _default_columns(shards: ShardSet, cursors: Sequence[Any], bound: ast.RangeVar) -> tuple[str, ...]:
    """The columns COPY reads without a column list: every column but dropped and generated ones."""

    def read(i: int) -> tuple[str, ...]:
        with cursors[i].connection.cursor() as cur:
            cur.execute(_COLUMNS, (bound.schemaname, bound.relname))
            return tuple(row[0] for row in cur.fetchall())

    return shards.run(read, [0])[0]


def _key_reader(info: TableInfo) -> Callable[[str], Any]:
    """Key text (as the column's input function gets it) -> the value the shard function takes."""
    key_type = info.key_type
    if key_type in INTEGER_TYPES:
        return _read_int
    if key_type in _TEXT_KEYS:
        return lambda text: as_key(text, key_type)
    if key_type == _UUID:

        def read_uuid(text: str) -> Any:
            try:
                return uuid.UUID(text.strip())
            except ValueError:
                return None

        return read_uuid
    raise NotSupportedError(
        f"COPY into {info.name} FROM STDIN: its shard key {info.key} is of a type whose text the rows "
        "can't be placed by here (integer, text, varchar, char and uuid keys can); insert its rows with "
        "execute() instead"
    )


def _read_int(text: str) -> int | None:
    """An integer key as ``int4in`` reads it (blanks around it allowed); None if it is none."""
    try:
        return int(text)  # what int() reads beyond int4in's syntax, the shard refuses
    except ValueError:
        return None


def _check_copies(shards: ShardSet, counts: list[int]) -> None:
    """Every copy of a copied table took as many rows; else the copies diverged."""
    for index in range(1, len(counts)):
        if counts[index] != counts[0]:
            shards.fail(f"the copies diverged ({shards.infos[0]} and {shards.infos[index]})")
            raise psycopg2.IntegrityError(
                f"the copies of a table copied to every shard differ: {shards.infos[0]} copied "
                f"{counts[0]} rows, {shards.infos[index]} copied {counts[index]}; run placement check, "
                "and repair the copies"
            )


class _Stopped(Exception):
    """A shard's COPY failed: the calling thread stops feeding."""


class _Aborted(Exception):
    """Raised in a shard's reader so psycopg2 ends that shard's COPY with CopyFail."""


class _Pump:
    """The shards' inputs: one bounded queue per shard, read by that shard's COPY."""

    def __init__(self, targets: Sequence[int]) -> None:
        self.cond = threading.Condition()
        self.queues: dict[int, collections.deque[bytes | None]] = {i: collections.deque() for i in targets}
        self.ended: set[int] = set()
        self.reading: set[int] = set()
        self.aborted = False
        self.failure: tuple[int, BaseException] | None = None

    def put(self, index: int, block: bytes | None) -> None:
        """Queue a block (None: the end of the data) for shard ``index``; wait while it is behind."""
        with self.cond:
            queue = self.queues[index]
            while len(queue) >= DEPTH and block is not None and self.failure is None and not self.aborted:
                self.cond.wait(AWAKE)  # awake: Ctrl-C is seen while it waits
            if self.failure is not None:
                raise _Stopped()
            queue.append(block)
            self.cond.notify_all()

    def get(self, index: int) -> bytes:
        """The next block for shard ``index`` (b"" at the end); raises once the COPY is stopped."""
        with self.cond:
            if index not in self.reading:
                self.reading.add(index)
                self.cond.notify_all()
            queue = self.queues[index]
            while not queue and not self.aborted:
                self.cond.wait(AWAKE)  # awake: Ctrl-C is seen while it waits
            if self.aborted:
                raise _Aborted("the COPY through the connection was stopped")
            block = queue.popleft()
            self.cond.notify_all()
        return b"" if block is None else block

    def end(self, index: int, exc: BaseException | None) -> None:
        """Shard ``index``'s COPY ended (with ``exc``): the first failure stops the others."""
        with self.cond:
            self.ended.add(index)
            if exc is not None and self.failure is None and not self.aborted:
                self.failure = (index, exc)
            self.cond.notify_all()

    def abort(self) -> None:
        """Stop every shard's COPY: each reader raises at its next read."""
        with self.cond:
            self.aborted = True
            self.cond.notify_all()

    def wait_reading(self, targets: Sequence[int]) -> None:
        """Wait until every shard's COPY has started reading (the servers accepted the statement; a
        shard's COPY may first wait for its turn behind another thread's statement)."""
        with self.cond:
            while not self.reading.issuperset(targets):
                if self.failure is not None:
                    raise _Stopped()
                if self.ended.issuperset(targets):
                    return
                self.cond.wait(1.0)


class _Feed:
    """One shard's COPY input as the file-like object psycopg2 reads."""

    def __init__(self, pump: _Pump, index: int, conn: Any) -> None:
        self.pump = pump
        self.index = index
        self.watch = _ErrorWatch(conn)

    def read(self, size: int = -1) -> bytes:
        if self.watch.failed():
            raise _Aborted("the shard reported an error during the COPY")
        return self.pump.get(self.index)

    def close(self) -> None:
        self.watch.close()


class _ErrorWatch:
    """Notices an error the server sent during COPY FROM, before the end of the data.

    The server answers COPY data with nothing but an error (or a notice): a readable socket
    whose next byte is an ErrorResponse ('E') means this shard's COPY has failed, so the others
    can stop now rather than after the whole file. Best effort: an SSL socket, or a message
    libpq already took, is only seen at the end.
    """

    def __init__(self, conn: Any) -> None:
        self.sock: socket.socket | None = None
        with contextlib.suppress(Exception):
            self.sock = socket.socket(fileno=os.dup(conn.fileno()))

    def failed(self) -> bool:
        sock = self.sock
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"E"
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _pump(
    shards: ShardSet,
    cursors: Sequence[Any],
    text: str,
    size: int,
    targets: Sequence[int],
    feed: Callable[[_Pump], None],
) -> list[int]:
    """Run ``text`` (a COPY FROM STDIN) on every target at once, fed by ``feed``; each one's count."""
    pump = _Pump(targets)
    feeds = {i: _Feed(pump, i, cursors[i].connection) for i in targets}

    def run(index: int) -> int:
        try:
            cursors[index].copy_expert(text, feeds[index], size)
        except BaseException as exc:
            pump.end(index, exc)
            raise
        finally:
            feeds[index].close()
        pump.end(index, None)
        count: int = cursors[index].rowcount
        return count

    # Not watched by the statement deadline: a COPY FROM STDIN lasts as long as its file does.
    calls = {i: shards.start(i, functools.partial(run, i), watch=False) for i in targets}
    for i, call in calls.items():
        # A call that fails before it starts reading (its turn never came) must stop the feed too.
        call.future.add_done_callback(functools.partial(_ended, pump, i))
    try:
        pump.wait_reading(targets)
        feed(pump)
        for i in targets:
            pump.put(i, None)
        _wait(call.future for call in calls.values())
        if pump.failure is not None:
            raise _Stopped()
    except BaseException as exc:
        pump.abort()
        _settle(shards, calls)
        if pump.failure is not None:
            index, error = pump.failure
            failure = shards.error(error, index)
            shards.fail(failure)
            raise failure from None
        shards.fail(exc)
        raise
    return [calls[i].result() for i in targets]


def _ended(pump: _Pump, index: int, future: Future[int]) -> None:
    pump.end(index, None if future.cancelled() else future.exception())


def _wait(futures: Iterable[Future[Any]]) -> None:
    """Wait until every future is done, or one has failed."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in done):
            return


def _settle(shards: ShardSet, calls: dict[int, Pending[int]]) -> None:
    """Wait for stopped COPYs to end: cancel those that don't within the grace period (their own
    statements, never another thread's), then cut those still stuck (a server that does not
    answer), so the caller never hangs."""
    _, running = wait([call.future for call in calls.values()], timeout=GRACE)
    late = [call for call in calls.values() if call.future in running]
    if late:
        shards.fanout.cancel_pending(late)
        for call in late:
            if not call.done():
                call.sever()
        wait(running, timeout=GRACE)


# -- COPY TO -----------------------------------------------------------------------------------------


def _copy_out(
    shards: ShardSet,
    cursors: Sequence[Any],
    spec: CopySpec,
    text: str,
    file: Any,
    size: int,
    facts: ShardFacts,
) -> CopyResult:
    """Each target shard's COPY output written to ``file``, one shard after another."""
    n = len(cursors)
    if spec.query is not None:
        targets = _query_targets(spec, facts, n)
    else:
        info, _ = _table(facts, spec)
        targets = [0] if info.kind == "whole" else list(range(n))
    if spec.options.format == "binary" and len(targets) > 1:
        raise NotSupportedError(
            f"COPY {spec.shown} TO STDOUT (FORMAT binary) from several shards (each shard's output has a "
            "header and trailer of its own); use text or CSV"
        )
    header = spec.options.header is not False
    total = 0
    outs = {i: _after_header(file) if header and position else file for position, i in enumerate(targets)}
    for i in targets:
        shards.run_statement(lambda j: cursors[j].copy_expert(text, outs[j], size), [i])
        total += max(cursors[i].rowcount, 0)
    return CopyResult(total, f"COPY {total}")


def _after_header(file: Any) -> Any:
    """``file`` without the header line a shard after the first writes.

    The server sends each line of COPY TO output, the header's too, as a CopyData message of its
    own, and psycopg2 writes each message with one ``write()``: so the header is the first write.
    A text file stays a text file (psycopg2 writes str to an ``io.TextIOBase``).
    """
    return _SkipFirstText(file) if isinstance(file, io.TextIOBase) else _SkipFirst(file)


class _SkipFirst:
    def __init__(self, file: Any) -> None:
        self.file = file
        self.skipped = False

    def write(self, data: Any) -> Any:
        if not self.skipped:
            self.skipped = True
            return len(data)
        return self.file.write(data)


class _SkipFirstText(io.TextIOBase):
    def __init__(self, file: Any) -> None:
        self.file = file
        self.skipped = False

    def write(self, data: str) -> int:
        if not self.skipped:
            self.skipped = True
            return len(data)
        written: int = self.file.write(data)
        return written


def _query_targets(spec: CopySpec, facts: ShardFacts, n: int) -> list[int]:
    """The shards whose rows, one shard after another, are the query's: or a refusal naming a cursor."""
    query = spec.query
    if not isinstance(query, ast.SelectStmt):
        raise NotSupportedError(
            "COPY (INSERT / UPDATE / DELETE ... RETURNING) TO STDOUT across shards; run the statement "
            "with execute() and fetch its RETURNING rows"
        )
    way_out = (
        "; read it with a cursor instead: cur.execute(select) and write the rows yourself "
        "(e.g. with the csv module)"
    )
    try:
        planned = plan_statement(deparse(query), None, facts)
    except NotSupportedError as exc:
        raise NotSupportedError(f"COPY (SELECT ...) TO STDOUT: {exc}") from None
    assert planned is not None  # no parameters: nothing to render
    plan, vars = planned
    targets = bind_targets(plan, vars, n)
    if plan.pins and len(targets) <= 1:
        return targets or [0]  # one shard holds every row the query reads: it answers as written
    task = plan.tasks[0] if plan.tasks else None
    if plan.first or (task is not None and task.targets.kind == "one"):
        return [task.targets.shard if task is not None and task.targets.kind == "one" else 0]
    if plan.refusal is not None:
        raise NotSupportedError(f"COPY (SELECT ...) TO STDOUT: {plan.refusal}")
    if plan.merge:
        raise NotSupportedError(
            "COPY (SELECT ...) TO STDOUT of a query whose rows must be merged across shards (ORDER BY, "
            "aggregates, DISTINCT, LIMIT, ...): the shards can't write its rows themselves" + way_out
        )
    if plan.moments or (task is not None and task.sql is not None):
        raise NotSupportedError(
            "COPY (SELECT ...) TO STDOUT of a query the shards must run rewritten (now(), CURRENT_DATE, "
            "...)" + way_out
        )
    return targets


def _text(query: Any, cursor: Any) -> str:
    if isinstance(query, sql.Composable):
        return query.as_string(cursor)
    if isinstance(query, bytes):
        codec: str = psycopg2.extensions.encodings.get(cursor.connection.encoding, "utf_8")
        return query.decode(codec)
    if not isinstance(query, str):
        raise TypeError(
            f"the COPY statement must be a str, bytes or psycopg2.sql.Composable, not {type(query)}"
        )
    return query
