"""ParallelCursor: one DB-API cursor over one cursor per shard.

The cursor only wires things together: it runs the statement on every shard
through the connection's fan-out, turns each shard's result into a stream of
batches and hands the streams to a merge operator whose rows it serves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
import psycopg2.sql

from .merge.pipeline import build_merge
from .merge.union import tagged_union, union
from .plan import Plan, check_shard_types, plan_statement, refuse
from .rows import RowMaker, row_maker
from .streams import ShardStream

if TYPE_CHECKING:
    from .connection import ParallelConnection

__all__ = ["ParallelCursor"]

Row = Any
Merge = Callable[[Sequence[ShardStream]], Iterator[list[Row]]]


class _Rows:
    """The merged rows, served one, many or all at a time.

    A failure while fetching is raised again by every later fetch, so a
    result that broke half-way never looks like one that ended.
    """

    def __init__(
        self, batches: Iterator[list[Row]], on_interrupt: Callable[[], None], maker: RowMaker | None = None
    ) -> None:
        self._batches = batches if maker is None else ([maker(r) for r in b] for b in batches)
        self._on_interrupt = on_interrupt
        self._batch: list[Row] = []
        self._pos = 0
        self._error: BaseException | None = None

    def _next_batch(self) -> list[Row] | None:
        if self._error is not None:
            raise self._error
        try:
            return next(self._batches, None)
        except KeyboardInterrupt as exc:
            self._error = psycopg2.OperationalError("fetching was interrupted; execute the statement again")
            self._on_interrupt()
            raise exc
        except BaseException as exc:
            self._error = exc
            raise

    def _refill(self) -> bool:
        while (batch := self._next_batch()) is not None:
            if batch:
                self._batch, self._pos = batch, 0
                return True
        return False

    def fetchone(self) -> Row | None:
        if self._pos >= len(self._batch) and not self._refill():
            return None
        row = self._batch[self._pos]
        self._pos += 1
        return row

    def fetchmany(self, size: int) -> list[Row]:
        out: list[Row] = []
        while len(out) < size:
            if self._pos >= len(self._batch) and not self._refill():
                break
            take = self._batch[self._pos : self._pos + size - len(out)]
            self._pos += len(take)
            out.extend(take)
        return out

    def fetchall(self) -> list[Row]:
        out = self._batch[self._pos :] if self._pos else self._batch
        self._batch, self._pos = [], 0
        while (batch := self._next_batch()) is not None:
            if out:
                out.extend(batch)
            else:
                out = batch
        return out

    def __iter__(self) -> Iterator[Row]:
        while self._pos < len(self._batch) or self._refill():
            row = self._batch[self._pos]
            self._pos += 1
            yield row


class ParallelCursor:
    """A DB-API 2.0 cursor whose statements run on every shard at once."""

    def __init__(
        self,
        connection: ParallelConnection,
        shard_cursors: list[Any],
        *,
        name: str | None = None,
        merge: str = "auto",
        row_factory: Any = None,
        tuples: bool = True,
    ) -> None:
        self._connection = connection
        self._cursors = shard_cursors
        self._name = name
        self._merge_mode = merge
        self._row_factory = row_factory
        self._tuples = tuples
        self.arraysize = 1
        self._itersize = 2000
        self._closed = False
        self._reset()

    # -- DB-API attributes ------------------------------------------------------

    @property
    def connection(self) -> ParallelConnection:
        return self._connection

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def closed(self) -> bool:
        return self._closed or self._connection.closed != 0

    @property
    def description(self) -> tuple[Any, ...] | None:
        return self._description

    @property
    def rowcount(self) -> int:
        """Rows the statement produced (summed); for a named cursor, rows fetched so far."""
        if self._name is not None and self._rows is not None:
            return self._rownumber
        return self._rowcount

    @property
    def rownumber(self) -> int:
        return self._rownumber

    @property
    def lastrowid(self) -> None:
        return None

    @property
    def query(self) -> bytes | None:
        return self._cursors[0].query

    @property
    def statusmessage(self) -> str | None:
        return self._statusmessage

    @property
    def itersize(self) -> int:
        return self._itersize

    @itersize.setter
    def itersize(self, value: int) -> None:
        self._itersize = int(value)
        for cur in self._cursors:
            cur.itersize = self._itersize

    @property
    def shard_cursors(self) -> list[Any]:
        """The underlying psycopg2 cursors, one per shard, in shard order."""
        return list(self._cursors)

    # -- executing ----------------------------------------------------------------

    def execute(self, query: str | bytes | psycopg2.sql.Composable, vars: Any = None) -> None:
        """Run ``query`` on every shard at once; its rows are then ready to fetch.

        With ``merge="auto"`` the statement is planned first, so the merged
        rows are what one database holding every shard's rows would return.
        """
        self._check_open()
        self._reset()
        if self._merge_mode == "union" or len(self._cursors) == 1:
            self._run(query, vars, union)
            return
        plan, shard_vars = self._plan(query, vars)
        if plan.mode == "union":
            self._run(query, vars, union)
        elif plan.mode == "first":
            self._run(query, vars, lambda streams: union(streams[:1]), first_only=True)
        else:
            if not self._tuples:
                raise refuse(f"merging rows of cursor_factory={self._row_factory!r}")
            self._run(plan.sql, shard_vars, plan=plan)

    def _plan(self, query: str | bytes | psycopg2.sql.Composable, vars: Any) -> tuple[Plan, Any]:
        text = self._text(query)
        facts = self._connection._shard_facts()
        planned = plan_statement(text, vars, facts)
        if planned is None:
            # Values psycopg2 renders as SQL (tuples, custom adapters): plan the rendered statement.
            text = self._cursors[0].mogrify(text, vars).decode(self._python_encoding())
            planned = plan_statement(text, None, facts)
            assert planned is not None
        return planned

    def _text(self, query: str | bytes | psycopg2.sql.Composable) -> str:
        if isinstance(query, psycopg2.sql.Composable):
            return query.as_string(self._cursors[0])
        if isinstance(query, bytes):
            return query.decode(self._python_encoding())
        return query

    def _python_encoding(self) -> str:
        return psycopg2.extensions.encodings.get(self._connection.encoding, "utf-8")

    def _run(
        self,
        query: Any,
        vars: Any,
        merge: Merge | None = None,
        *,
        plan: Plan | None = None,
        first_only: bool = False,
    ) -> None:
        streaming = self._name is not None
        batch_size = self._itersize

        def run(i: int) -> list[Row] | None:
            cur = self._cursors[i]
            cur.execute(query, vars)
            if streaming:
                return cur.fetchmany(batch_size)
            # Converting this shard's rows here overlaps with the shards still running.
            return cur.fetchall() if cur.description is not None else None

        firsts = self._connection._fanout.run(run)
        if plan is None:
            assert merge is not None
            self._after_execute(merge, firsts, batch_size, first_only=first_only)
            return
        shard_description = self._agreed_description()
        assert shard_description is not None
        check_shard_types(plan.client, [column.type_code for column in shard_description])
        description, merged = build_merge(
            plan.client,
            shard_description,
            params=vars,
            names=plan.names,
            text_order_c=self._connection._shard_facts().text_order_c,
            streaming=streaming,
            batch_size=batch_size,
        )
        self._after_execute(merged, firsts, batch_size, description=description)

    def executemany(self, query: str | bytes | psycopg2.sql.Composable, vars_list: Iterable[Any]) -> None:
        """Run ``query`` once per parameter set, on every shard."""
        self._check_open()
        if self._name is not None:
            raise psycopg2.ProgrammingError("executemany cannot be used with a named cursor")
        self._reset()
        params = list(vars_list)
        self._connection._fanout.run(lambda i: self._cursors[i].executemany(query, params))
        self._after_execute(union, [None] * len(self._cursors), self._itersize)

    def callproc(self, procname: str, parameters: Sequence[Any] | None = None) -> Sequence[Any] | None:
        """Call a procedure on every shard; its result rows are the union."""
        self._check_open()
        self._reset()
        results = self._connection._fanout.run(lambda i: self._cursors[i].callproc(procname, parameters))
        self._after_execute(union, [None] * len(self._cursors), self._itersize)
        return results[0]

    def mogrify(self, query: str | bytes | psycopg2.sql.Composable, vars: Any = None) -> bytes:
        """The statement as it would be sent to each shard."""
        self._check_open()
        return self._cursors[0].mogrify(query, vars)

    def _after_execute(
        self,
        merge: Merge,
        firsts: list[list[Row] | None],
        batch_size: int,
        *,
        description: tuple[Any, ...] | None = None,
        first_only: bool = False,
    ) -> None:
        self._description = description or self._agreed_description()
        cursors = self._cursors[:1] if first_only else self._cursors
        counts = [c.rowcount for c in cursors]
        self._rowcount = -1 if -1 in counts else sum(counts)
        self._statusmessage = _combined_status([c.statusmessage for c in cursors], self._rowcount)
        if self._description is None:
            return
        fanout = self._connection._fanout
        self._streams = [
            ShardStream(i, cur, fanout, batch_size=batch_size, first_batch=firsts[i])
            for i, cur in enumerate(self._cursors)
        ]
        maker = row_maker(self._row_factory, self._description) if self._tuples else None
        self._first_only = first_only
        if description is None:
            self._rows = _Rows(merge(self._streams), self._cancel_fetches, maker)
            return
        if self._name is not None:
            self._rows = _Rows(merge(self._streams), self._cancel_fetches, maker)
            return
        batches = list(merge(self._streams))
        rows = batches[0] if len(batches) == 1 else [row for batch in batches for row in batch]
        self._rowcount = len(rows)
        self._statusmessage = f"SELECT {len(rows)}"
        self._rows = _Rows(iter([rows]), self._cancel_fetches, maker)

    def _agreed_description(self) -> tuple[Any, ...] | None:
        descriptions = [c.description for c in self._cursors]
        first = descriptions[0]
        shape = _shape(first)
        for index, other in enumerate(descriptions[1:], start=1):
            if _shape(other) != shape:
                shards = self._connection._shards
                raise psycopg2.ProgrammingError(
                    "the shards return different columns for this statement: "
                    f"{shards[0]} gives {_show(first)} but {shards[index]} gives {_show(other)}; "
                    "make the schemas agree, or select the columns explicitly"
                )
        return first

    # -- fetching -----------------------------------------------------------------

    def fetchone(self) -> Row | None:
        row = self._results().fetchone()
        if row is not None:
            self._rownumber += 1
        return row

    def fetchmany(self, size: int | None = None) -> list[Row]:
        rows = self._results().fetchmany(self.arraysize if size is None else size)
        self._rownumber += len(rows)
        return rows

    def fetchall(self) -> list[Row]:
        rows = self._results().fetchall()
        self._rownumber += len(rows)
        return rows

    def __iter__(self) -> Iterator[Row]:
        for row in self._results():
            self._rownumber += 1
            yield row

    def shard_rows(self) -> Iterator[tuple[int, Row]]:
        """Every row with the index of the shard it came from.

        Only for a ``cursor(merge="union")`` (merged rows have no single
        shard), and only before the first fetch.
        """
        if self._merge_mode != "union":
            raise psycopg2.ProgrammingError(
                'shard_rows() needs a cursor(merge="union"): merged rows come from no single shard'
            )
        self._results()
        if self._rownumber:
            raise psycopg2.ProgrammingError("shard_rows() must come before any fetch")
        self._rows = _Rows(iter(()), self._cancel_fetches)
        return self._tagged_rows()

    def _tagged_rows(self) -> Iterator[tuple[int, Row]]:
        for index, batch in tagged_union(self._streams):
            self._rownumber += len(batch)
            for row in batch:
                yield index, row

    def scroll(self, value: int, mode: str = "relative") -> None:
        raise psycopg2.NotSupportedError("scroll is not supported across shards; fetch the rows instead")

    def nextset(self) -> None:
        raise psycopg2.NotSupportedError("nextset is not supported by PostgreSQL")

    def setinputsizes(self, sizes: Any) -> None:
        """Does nothing, as the DB-API allows."""

    def setoutputsize(self, size: int, column: int | None = None) -> None:
        """Does nothing, as the DB-API allows."""

    def _results(self) -> _Rows:
        self._check_open()
        if self._rows is None:
            raise psycopg2.ProgrammingError("no results to fetch")
        return self._rows

    # -- lifetime -----------------------------------------------------------------

    def close(self) -> None:
        """Close every shard cursor (server-side cursors too)."""
        if self._closed:
            return
        self._closed = True
        for stream in self._streams:
            stream.close()
        if self._connection.closed:
            return
        if self._name is None:
            for cur in self._cursors:
                cur.close()
            return
        with contextlib.suppress(psycopg2.Error):
            self._connection._fanout.run(lambda i: self._cursors[i].close())

    def __enter__(self) -> ParallelCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<ParallelCursor {state} shards={len(self._cursors)} name={self._name!r}>"

    def _cancel_fetches(self) -> None:
        """Cancel the background fetches still running (after Ctrl-C)."""
        busy = [s.index for s in self._streams if not s.ready()]
        if busy:
            self._connection._fanout.cancel_all(busy)

    def _check_open(self) -> None:
        if self._closed:
            raise psycopg2.InterfaceError("cursor already closed")
        if self._connection.closed:
            raise psycopg2.InterfaceError("connection already closed")

    def _reset(self) -> None:
        for stream in getattr(self, "_streams", []):
            stream.close()
        self._streams: list[ShardStream] = []
        self._rows: _Rows | None = None
        self._description: tuple[Any, ...] | None = None
        self._rowcount = -1
        self._rownumber = 0
        self._statusmessage: str | None = None
        self._first_only = False


FIRST_USER_OID = 16384
"""Types made in a database (enums, domains, composites) get their own OIDs on each shard."""


def _shape(description: Sequence[Any] | None) -> list[tuple[str, int | None]] | None:
    if description is None:
        return None
    return [(col.name, col.type_code if col.type_code < FIRST_USER_OID else None) for col in description]


def _show(description: Sequence[Any] | None) -> str:
    if description is None:
        return "no result set"
    names = [f"{c.name} {_TYPE_NAMES.get(c.type_code, f'(type oid {c.type_code})')}" for c in description]
    return "(" + ", ".join(names) + ")"


_TYPE_NAMES = {
    16: "boolean", 17: "bytea", 20: "bigint", 21: "smallint", 23: "integer", 25: "text",
    114: "json", 700: "real", 701: "double precision", 1007: "integer[]", 1009: "text[]",
    1016: "bigint[]", 1042: "character", 1043: "character varying", 1082: "date",
    1083: "time", 1114: "timestamp", 1184: "timestamptz", 1186: "interval", 1700: "numeric",
    2950: "uuid", 3802: "jsonb",
}  # fmt: skip


def _combined_status(messages: list[str | None], rowcount: int) -> str | None:
    """One status like a single server's: ``UPDATE 12`` for shards that updated 12 rows."""
    present = [m for m in messages if m]
    if not present:
        return None
    verbs = {m.rsplit(" ", 1)[0] if m.rsplit(" ", 1)[-1].isdigit() else m for m in present}
    if len(verbs) == 1 and rowcount >= 0 and present[0].rsplit(" ", 1)[-1].isdigit():
        return f"{verbs.pop()} {rowcount}"
    return present[0]
