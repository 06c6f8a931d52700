"""ParallelCursor: one DB-API cursor over one cursor per shard.

A thin face: the executor plans and runs each statement on the shards it
needs; the cursor keeps the DB-API state (description, counts) and serves
the merged rows one, many or all at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
import psycopg2.sql

from . import copy_run, deadline
from .deadline import checked_deadline
from .errors import NotSupportedError
from .executor import execute, execute_many, run_finished
from .healing import cursor_like
from .outcome import Outcome, Statement, check_procname, check_query
from .rows import RowMaker, row_maker
from .shards import Connected
from .streams import ShardStream, cancel_streams, tagged_interleave

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["ParallelCursor"]

Row = Any


def _tuples(rows: list[Row]) -> list[Sequence[Any]]:
    """Rows of any cursor_factory as sequences in the description's order."""
    return [tuple(row.values()) if isinstance(row, Mapping) else row for row in rows]


class _Rows:
    """The merged rows, served one, many or all at a time.

    A failure while fetching is raised again by every later fetch, so a
    result that broke half-way never looks like one that ended.
    """

    def __init__(
        self,
        batches: Iterator[list[Row]],
        on_interrupt: Callable[[BaseException], None],
        maker: RowMaker | None = None,
        limit: Callable[[], float | None] = lambda: None,
        *,
        first: list[Row] | None = None,
    ) -> None:
        self._batches = batches if maker is None else ([maker(r) for r in b] for b in batches)
        self._on_interrupt = on_interrupt
        self._limit = limit
        self._batch: list[Row] = [] if first is None else first if maker is None else list(map(maker, first))
        """The batch being served (``first``: served before ``batches``)."""
        self._pos = 0
        self._error: BaseException | None = None

    def _next_batch(self) -> list[Row] | None:
        if self._error is not None:
            raise self._error
        try:
            limit = self._limit()
            if limit is None:
                return next(self._batches, None)
            with deadline.scope(limit):
                return next(self._batches, None)
        except KeyboardInterrupt as exc:
            self._error = psycopg2.OperationalError("fetching was interrupted; execute the statement again")
            self._on_interrupt(exc)
            raise exc
        except BaseException as exc:
            self._error = exc
            if getattr(exc, "shard", None) is not None:
                self._on_interrupt(exc)  # a shard's error while fetching fails the transaction too
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

    # Set by _reset() and _serve(); declared here because _serve() assigns them first in the source.
    _streams: list[ShardStream]
    _rows: _Rows | None
    _description: tuple[Any, ...] | None
    _statusmessage: str | None
    _targets: list[int]
    _cleanups: list[Callable[[], None]]

    def __init__(
        self,
        connection: Connected,
        shard_cursors: list[Any],
        *,
        name: str | None = None,
        merge: str = "auto",
        row_factory: Any = None,
        tuples: bool = True,
        statement_deadline: float | None = None,
    ) -> None:
        self._connection = connection
        self._shards = connection.shard_set
        self._cursors = shard_cursors
        self._name = name
        self._merge_mode = merge
        self._row_factory = row_factory
        self._tuples = tuples
        self.arraysize = 1
        self._itersize = 2000
        self._closed = False
        self._deadline = statement_deadline
        self._cleanups = []
        self._replaced = -1
        """The shard set's count of replaced connections when this cursor's were last matched to them."""
        self._reset()

    # -- DB-API attributes ------------------------------------------------------

    @property
    def connection(self) -> Connected:
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
        """The SQL the (first) shard the last statement ran on was sent."""
        cursor = self._cursors[self._targets[0]] if self._targets else self._cursors[0]
        query: bytes | None = cursor.query
        return query

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
    def statement_deadline(self) -> float | None:
        """Seconds any shard may take to answer this cursor's execute (or the fetch of one batch of a
        streaming cursor): past them the statement is cancelled, and its connection cut if the shard
        still does not answer. None: no bound. Defaults to the connection's."""
        return self._deadline

    @statement_deadline.setter
    def statement_deadline(self, seconds: float | None) -> None:
        self._deadline = checked_deadline(seconds)

    @property
    def shard_cursors(self) -> list[Any]:
        """The underlying psycopg2 cursors, one per shard, in shard order."""
        return list(self._cursors)

    # -- executing ----------------------------------------------------------------

    def execute(
        self, query: str | bytes | psycopg2.sql.Composable, vars: Any = None, *, parameters: Any = None
    ) -> None:
        """Run ``query`` on the shards it needs, at once; its rows are then ready to fetch.

        With ``merge="auto"`` the statement is planned first, so the merged
        rows are what one database holding every shard's rows would return.
        ``parameters`` is another name for ``vars`` (what polars' ``read_database`` passes).
        """
        if parameters is not None:
            if vars is not None:
                raise psycopg2.ProgrammingError("execute() takes vars or parameters, not both")
            vars = parameters
        self._check_ready()
        check_query(query, self._cursors[0])
        self._reset()
        statement = Statement(
            query, vars, streaming=self._name is not None, batch_size=self._itersize, tuples=self._tuples
        )
        if self._deadline is None:
            self._serve(execute(self._shards, self._cursors, statement, merge=self._merge_mode == "auto"))
            return
        with deadline.scope(self._deadline):
            outcome = execute(self._shards, self._cursors, statement, merge=self._merge_mode == "auto")
            self._serve(outcome)

    def executemany(self, query: str | bytes | psycopg2.sql.Composable, vars_list: Iterable[Any]) -> None:
        """Run ``query`` once per parameter set, on every shard."""
        self._check_ready()
        if self._name is not None:
            raise psycopg2.ProgrammingError("executemany cannot be used with a named cursor")
        vars_list = list(vars_list)
        if vars_list:  # psycopg2 checks the query only when there is something to run
            check_query(query, self._cursors[0])
        self._reset()
        with deadline.scope(self._deadline):
            outcome = execute_many(
                self._shards, self._cursors, query, list(vars_list), merge=self._merge_mode == "auto"
            )
            self._serve(outcome)

    def callproc(self, procname: str, parameters: Sequence[Any] | None = None) -> Sequence[Any] | None:
        """Call a procedure on every shard; its result rows are the union (``merge="union"`` cursors).

        What a function reads is not known here, so a merging cursor over several
        shards refuses it: ``execute("SELECT * FROM f(%s)", ...)`` is planned.
        """
        self._check_ready()
        check_procname(procname, parameters, self._cursors[0])
        if self._merge_mode == "auto" and len(self._cursors) > 1:
            raise NotSupportedError(
                f"callproc({procname!r}) on several shards (what the function reads is not known); "
                'execute "SELECT * FROM ...(...)" instead, or use cursor(merge="union") for every '
                "shard's rows"
            )
        self._reset()
        with deadline.scope(self._deadline):
            results = self._shards.run(lambda i: self._cursors[i].callproc(procname, parameters))
            statement = Statement(None, None, streaming=False, batch_size=self._itersize, tuples=self._tuples)
            self._serve(run_finished(self._shards, self._cursors, statement))
        first: Sequence[Any] | None = results[0]
        return first

    def copy_expert(self, sql: str | bytes | psycopg2.sql.Composable, file: Any, size: int = 8192) -> None:
        """Run a COPY statement through the shards, as one database holding every row would.

        ``COPY t FROM STDIN`` reads ``file`` and sends each row to the shard its key maps to (a
        copied table's rows to every copy); ``COPY t TO STDOUT`` writes each shard's rows to
        ``file``, one shard after another (a copied table's once).
        """
        self._check_ready()
        if self._name is not None:
            raise psycopg2.ProgrammingError("copy_expert cannot be used with a named cursor")
        self._reset()
        with deadline.scope(self._deadline):
            result = copy_run.copy_expert(self._shards, self._cursors, sql, file, size)
        self._serve(Outcome(rowcount=result.rowcount, statusmessage=result.statusmessage))

    def copy_from(
        self,
        file: Any,
        table: str,
        sep: str = "\t",
        null: str = "\\N",
        size: int = 8192,
        columns: Iterable[str] | None = None,
    ) -> None:
        """psycopg2's ``copy_from``: ``table`` (one identifier, quoted) read from ``file``, split by key."""
        self.copy_expert(copy_run.copy_from_sql(table, sep, null, columns), file, size)

    def copy_to(
        self,
        file: Any,
        table: str,
        sep: str = "\t",
        null: str = "\\N",
        columns: Iterable[str] | None = None,
    ) -> None:
        """psycopg2's ``copy_to``: every shard's rows of ``table`` (one identifier, quoted) to ``file``."""
        self.copy_expert(copy_run.copy_to_sql(table, sep, null, columns), file)

    def mogrify(self, query: str | bytes | psycopg2.sql.Composable, vars: Any = None) -> bytes:
        """The statement as it would be sent to each shard."""
        if self._closed:  # the shard cursor checks its connection itself (execute_values calls this per row)
            raise psycopg2.InterfaceError("cursor already closed")
        result: bytes = self._cursors[0].mogrify(query, vars)
        return result

    def _serve(self, outcome: Outcome) -> None:
        """Take the executor's outcome: counts now, rows as they are fetched."""
        self._description = outcome.description
        self._rowcount = outcome.rowcount
        self._statusmessage = outcome.statusmessage
        self._streams = outcome.streams
        self._targets = outcome.targets
        self._cleanups = outcome.cleanups
        if outcome.description is None or outcome.batches is None:
            self._clean_up()
            return
        factory = self._row_factory
        maker = row_maker(factory, outcome.description) if self._tuples and factory is not None else None
        if outcome.rows is not None and not outcome.merged:  # every row read already
            self._rows = _Rows(iter(()), self._cancel_fetches, maker, first=outcome.rows)
            return
        if not outcome.merged or self._name is not None:
            self._rows = _Rows(outcome.batches, self._cancel_fetches, maker, lambda: self._deadline)
            return
        batches = list(outcome.batches)
        self._clean_up()
        rows = batches[0] if len(batches) == 1 else [row for batch in batches for row in batch]
        self._rowcount = len(rows)
        self._statusmessage = f"SELECT {len(rows)}"
        self._rows = _Rows(iter([rows]), self._cancel_fetches, maker)

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
        rows = self._results()
        if self._rownumber:
            raise psycopg2.ProgrammingError("shard_rows() must come before any fetch")
        self._rows = _Rows(iter(()), self._cancel_fetches)
        if not self._streams:  # one shard's rows, all read already
            index = self._targets[0] if self._targets else 0
            return self._tagged_rows(iter([(index, rows.fetchall())]))
        return self._tagged_rows(tagged_interleave(self._streams))

    def _tagged_rows(self, batches: Iterator[tuple[int, list[Row]]]) -> Iterator[tuple[int, Row]]:
        while True:
            with deadline.scope(self._deadline):
                item = next(batches, None)
            if item is None:
                return
            index, batch = item
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

    # -- columnar fetches ----------------------------------------------------------

    def fetch_arrow(self) -> pa.Table:
        """The rest of the rows as a ``pyarrow.Table`` in the columns' PostgreSQL types.

        The rows came through psycopg2; ``ParallelConnection.read_arrow`` reads them as columns.
        """
        description = self._results_description()
        from .columnar.read import rows_table, session_zone

        return rows_table(description, _tuples(self.fetchall()), session_zone(self._shards))

    def fetch_arrow_batches(self, size: int = 65_536) -> pa.RecordBatchReader:
        """The rest of the rows as a ``pyarrow.RecordBatchReader`` of ``size`` rows a batch."""
        description = self._results_description()
        import pyarrow

        from .columnar.read import rows_table, session_zone

        zone = session_zone(self._shards)
        first = rows_table(description, _tuples(self.fetchmany(size)), zone)

        def rest() -> Iterator[pa.RecordBatch]:
            yield from first.to_batches()
            while rows := self.fetchmany(size):
                yield from rows_table(description, _tuples(rows), zone).cast(first.schema).to_batches()

        return pyarrow.RecordBatchReader.from_batches(first.schema, rest())

    def fetch_pandas(self, *, dtype_backend: str | None = None, **options: Any) -> Any:
        """The rest of the rows as a pandas DataFrame (``options`` go to ``Table.to_pandas``;
        ``dtype_backend`` as :meth:`ParallelConnection.read_pandas` takes it)."""
        from .columnar.read import pandas_frame

        return pandas_frame(self.fetch_arrow(), dtype_backend, options)

    def fetch_polars(self) -> Any:
        """The rest of the rows as a polars DataFrame."""
        from .columnar.read import polars_frame

        return polars_frame(self.fetch_arrow())

    def _results_description(self) -> tuple[Any, ...]:
        self._results()
        assert self._description is not None
        return self._description

    # -- lifetime -----------------------------------------------------------------

    def close(self) -> None:
        """Close every shard cursor (server-side cursors too)."""
        if self._closed:
            return
        self._closed = True
        for stream in self._streams:
            stream.close()
        self._clean_up()
        if self._connection.closed:
            return
        if self._name is None:
            for cur in self._cursors:
                cur.close()
            return
        with contextlib.suppress(psycopg2.Error), deadline.scope(self._deadline):
            self._shards.run(lambda i: self._cursors[i].close())

    def __enter__(self) -> ParallelCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<ParallelCursor {state} shards={len(self._cursors)} name={self._name!r}>"

    def _cancel_fetches(self, exc: BaseException) -> None:
        """After Ctrl-C or a shard's error while fetching: cancel the fetches still running.

        The transaction has failed on some shard, so it fails everywhere.
        """
        busy = [s for s in self._streams if not s.ready()]
        cancel_streams(busy)
        if busy or getattr(exc, "shard", None) is not None:
            self._shards.fail(exc)

    def _check_ready(self) -> None:
        """:meth:`_check_open` for a new statement, once the shard connections that broke were
        replaced between transactions (as a pool checks what it lends), this cursor's with them."""
        if self._closed:
            raise psycopg2.InterfaceError("cursor already closed")
        closed = self._connection.closed
        if closed != 1:
            self._shards.heal()
            replaced = self._shards.replaced
            if replaced != self._replaced:  # by this cursor's heal or another's
                connections = self._shards.connections
                for i, (cur, conn) in enumerate(zip(self._cursors, connections, strict=True)):
                    if cur.connection is not conn:
                        self._cursors[i] = cursor_like(cur, conn)
                self._replaced = replaced
        if closed and self._connection.closed:
            raise psycopg2.InterfaceError("connection already closed")

    def _check_open(self) -> None:
        if self._closed:
            raise psycopg2.InterfaceError("cursor already closed")
        if self._connection.closed:
            raise psycopg2.InterfaceError("connection already closed")

    def _clean_up(self) -> None:
        """Undo what the last statement changed on the shard cursors (see ``Outcome.cleanups``)."""
        cleanups, self._cleanups = self._cleanups, []
        for cleanup in reversed(cleanups):
            cleanup()

    def _reset(self) -> None:
        for stream in getattr(self, "_streams", []):
            stream.close()
        self._streams = []
        if self._cleanups:
            self._clean_up()
        self._rows = None
        self._description = None
        self._rowcount = -1
        self._rownumber = 0
        self._statusmessage = None
        self._targets = []
