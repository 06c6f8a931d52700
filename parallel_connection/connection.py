"""ParallelConnection and connect(): one DB-API connection over every shard."""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool
import psycopg2.sql

from . import deadline
from .cancel import broken
from .casts import LibraryCursor
from .commit import GRACE, Resolved
from .cursor import ParallelCursor
from .deadline import checked_deadline
from .errors import NotSupportedError, ShardInfo, dsn_secrets, redact, shard_error
from .placement import Placement
from .pool import WaitingPool
from .rows import rebuildable, tuple_rows
from .shards import DEFAULT_MOVED_ROWS, ShardSet
from .workers import Workers, wait

if TYPE_CHECKING:
    import pyarrow as pa

    from .placement_check import PlacementReport
    from .ranges import ScanReport

__all__ = ["ParallelConnection", "ShardConnectionInfo", "connect"]

_CLOSED = operator.attrgetter("closed")

MERGE_MODES = ("auto", "union")


class _Default:
    """The connection's own setting (for keyword arguments where None means something)."""


_DEFAULT = _Default()


class ParallelConnection:
    """One DB-API 2.0 connection over a list of shard connections.

    ``connections`` are psycopg2 connections, one per shard, in shard order.
    Statements run on all of them at once on a thread pool that lives as long
    as this object. Hand the connections back with :meth:`putconn` (when they
    came from your pools) or :meth:`close`.

    A transaction that wrote on several shards commits atomically, with
    two-phase commit (the servers need ``max_prepared_transactions > 0``);
    ``two_phase=False`` commits each shard on its own instead.
    ``decision_schema`` is where the commit decisions are kept (the table
    ``parallel_connection_commits``, created on first use). See
    :mod:`parallel_connection.commit` and :meth:`recover`.
    """

    Warning = psycopg2.Warning
    Error = psycopg2.Error
    InterfaceError = psycopg2.InterfaceError
    DatabaseError = psycopg2.DatabaseError
    DataError = psycopg2.DataError
    OperationalError = psycopg2.OperationalError
    IntegrityError = psycopg2.IntegrityError
    InternalError = psycopg2.InternalError
    ProgrammingError = psycopg2.ProgrammingError
    NotSupportedError = NotSupportedError

    def __init__(
        self,
        connections: Sequence[Any],
        *,
        statement_timeout: float | None = None,
        max_workers: int | None = None,
        pools: Sequence[psycopg2.pool.AbstractConnectionPool] | None = None,
        secrets: set[str] | None = None,
        dsns: Sequence[str] | None = None,
        connect_kwargs: dict[str, Any] | None = None,
        replicated_tables: Iterable[str] = (),
        placement: Placement | None = None,
        two_phase: bool = True,
        decision_schema: str = "public",
        moved_rows: int = DEFAULT_MOVED_ROWS,
        statement_deadline: float | None = None,
        cursor_factory: Any = None,
    ) -> None:
        if isinstance(connections, (str, bytes)) or not connections:
            raise psycopg2.InterfaceError(
                "ParallelConnection needs a list of psycopg2 connections, one per shard "
                "(to open them from DSNs, use parallel_connection.connect(dsns))"
            )
        self._connections = list(connections)
        for index, conn in enumerate(self._connections):
            if not isinstance(conn, psycopg2.extensions.connection):
                raise psycopg2.InterfaceError(
                    f"shard {index}: ParallelConnection takes psycopg2 connections, not "
                    f"{type(conn).__name__} (to open them from DSNs, use parallel_connection.connect(dsns))"
                )
        self._pools = list(pools) if pools is not None else None
        self._dsns = list(dsns) if dsns is not None else None
        self._connect_kwargs = dict(connect_kwargs or {})
        self._closed = False
        self._arrow: Any = None  # the columnar reader, made on first use (pyarrow is optional)
        self._deadline = checked_deadline(statement_deadline)
        self._own_factories = [conn.cursor_factory for conn in self._connections]
        self._logging_pending = any(_log_pending(conn) for conn in self._connections)
        defaults = [_plain_internally(conn) for conn in self._connections]
        self._cursor_factory: Any = cursor_factory or defaults[0]
        try:
            self.shard_set = ShardSet(
                self._connections,
                secrets=set(secrets or ()),
                max_workers=max_workers,
                placement=_placement(placement, replicated_tables),
                two_phase=two_phase,
                decision_schema=decision_schema,
            )
            """The shards behind this connection (for the library's own machinery)."""
        except BaseException:
            self._give_back_factories()
            raise
        self.shard_set.setups.append(_prepare)
        self.shard_set.pools = self._pools
        self.moved_rows = moved_rows
        self._shards = self.shard_set.infos
        self._statement_timeout = statement_timeout
        if statement_timeout is not None:
            self._set_statement_timeout(statement_timeout)

    # -- shards -------------------------------------------------------------

    @property
    def connections(self) -> list[Any]:
        """The shard connections, in shard order."""
        return list(self._connections)

    @property
    def shards(self) -> list[ShardInfo]:
        """Where each shard lives (index, host, port, dbname)."""
        return list(self._shards)

    @property
    def pools(self) -> list[psycopg2.pool.AbstractConnectionPool] | None:
        """The pools this connection owns (from :func:`connect`), else None."""
        return list(self._pools) if self._pools is not None else None

    @property
    def statement_timeout(self) -> float | None:
        """The statement timeout (seconds) every shard connection was given, if any."""
        return self._statement_timeout

    @property
    def statement_deadline(self) -> float | None:
        """Seconds any shard may take to answer one statement (each cursor's default), commit or rollback.

        Kept by the client: past it the statement is cancelled; a shard that
        still does not answer :data:`~parallel_connection.deadline.CUT_GRACE`
        seconds later has its connection cut, and the caller gets an
        OperationalError naming it. Unlike ``statement_timeout`` (kept by the
        server) it also bounds a stalled server or a silent network.
        """
        return self._deadline

    @statement_deadline.setter
    def statement_deadline(self, seconds: float | None) -> None:
        self._deadline = checked_deadline(seconds)

    @property
    def dsns(self) -> list[str] | None:
        """The shards' DSNs when made by :func:`connect` (for workers that connect themselves).

        They may hold passwords: pass them to workers, never print them.
        """
        return list(self._dsns) if self._dsns is not None else None

    @property
    def connect_kwargs(self) -> dict[str, Any]:
        """The keyword arguments :func:`connect` passed to every shard connection."""
        return dict(self._connect_kwargs)

    # -- cursors ------------------------------------------------------------

    def cursor(
        self,
        name: str | None = None,
        *,
        merge: str = "auto",
        statement_deadline: float | _Default | None = _DEFAULT,
        **kwargs: Any,
    ) -> ParallelCursor:
        """A new cursor: one shard cursor per shard, ``kwargs`` passed through.

        ``name`` opens server-side cursors that stream. ``merge="union"``
        returns the plain union of the shards' rows, for statements the user
        knows to be shard-local. ``statement_deadline`` (seconds, or None for
        no bound) overrides the connection's.
        """
        self._check_open()
        limit = self._deadline if isinstance(statement_deadline, _Default) else statement_deadline
        limit = checked_deadline(limit)
        if merge not in MERGE_MODES:
            raise psycopg2.ProgrammingError(f"merge must be one of {MERGE_MODES}, not {merge!r}")
        if self._logging_pending:
            raise psycopg2.ProgrammingError(
                "the shards' LoggingConnection has not been initialized: call pdb.initialize(logobj) first"
            )
        factory = kwargs.get("cursor_factory") or self._cursor_factory
        # A merging cursor's shards return tuples; merged rows are rebuilt in the user's row type.
        tuples = merge == "auto" and len(self._connections) > 1 and rebuildable(factory)
        plain = tuples and not tuple_rows(factory)
        kwargs = {**kwargs, "cursor_factory": psycopg2.extensions.cursor if plain else factory}
        if kwargs["cursor_factory"] is None:
            kwargs["cursor_factory"] = (
                psycopg2.extensions.cursor
            )  # not the library's own (see _plain_internally)
        if any(map(_CLOSED, self._connections)):
            # A closed connection makes no cursor: replace it first (execute() heals the others).
            with deadline.scope(self._deadline):
                self.shard_set.heal()
        shard_cursors = []
        try:
            for conn in self._connections:
                shard_cursors.append(conn.cursor(name, **kwargs) if name else conn.cursor(**kwargs))
        except BaseException as exc:
            for cur in shard_cursors:
                cur.close()
            raise self.shard_set.error(exc, len(shard_cursors)) from None
        return ParallelCursor(
            self,
            shard_cursors,
            name=name,
            merge=merge,
            row_factory=factory,
            tuples=tuples,
            statement_deadline=limit,
        )

    # -- columnar results -----------------------------------------------------------

    def read_arrow(self, query: str | bytes | psycopg2.sql.Composable, vars: Any = None) -> pa.Table:
        """The answer of ``query`` as one ``pyarrow.Table``, read from the shards as columns."""
        from .columnar.read import read_table

        return read_table(self, self._columnar(), query, vars)

    def read_arrow_batches(
        self, query: str | bytes | psycopg2.sql.Composable, vars: Any = None
    ) -> pa.RecordBatchReader:
        """The answer of ``query`` as a ``pyarrow.RecordBatchReader``, in bounded memory when the
        shards' rows need no ordering across shards."""
        import pyarrow

        from .columnar.read import read_batches

        batches = read_batches(self, self._columnar(), query, vars)
        return pyarrow.RecordBatchReader.from_batches(next(batches), batches)

    def read_pandas(
        self,
        query: str | bytes | psycopg2.sql.Composable,
        vars: Any = None,
        *,
        dtype_backend: str | None = None,
        **options: Any,
    ) -> Any:
        """The answer of ``query`` as a pandas DataFrame (``options`` go to ``Table.to_pandas``);
        ``dtype_backend`` as ``pandas.read_sql`` takes it (``"pyarrow"``: no copy, exact numerics)."""
        from .columnar.read import pandas_frame

        return pandas_frame(self.read_arrow(query, vars), dtype_backend, options)

    def read_polars(self, query: str | bytes | psycopg2.sql.Composable, vars: Any = None) -> Any:
        """The answer of ``query`` as a polars DataFrame."""
        from .columnar.read import polars_frame

        return polars_frame(self.read_arrow(query, vars))

    def _columnar(self) -> Any:
        self._check_open()
        if self._arrow is None:
            from .columnar.read import Reader

            self._arrow = Reader(self._dsns, self._connect_kwargs)
        return self._arrow

    @property
    def cursor_factory(self) -> Any:
        """The cursor class :meth:`cursor` makes by default (None: psycopg2's own), as
        psycopg2's ``connection.cursor_factory``; ``connect(..., cursor_factory=...)`` sets it."""
        return self._cursor_factory

    @cursor_factory.setter
    def cursor_factory(self, factory: Any) -> None:
        self._cursor_factory = factory

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        """``initialize(logobj, ...)`` on every shard's ``LoggingConnection`` (from
        ``connect(..., connection_factory=psycopg2.extras.LoggingConnection)``): each shard's
        statements are then logged as that shard runs them."""
        self._check_open()
        missing = [
            str(s)
            for s, c in zip(self._shards, self._connections, strict=True)
            if not hasattr(c, "initialize")
        ]
        if missing:
            raise AttributeError(
                f"initialize() needs LoggingConnection shards, and {', '.join(missing)} "
                "is not one (connect with connection_factory=psycopg2.extras.LoggingConnection)"
            )

        def setup(conn: Any) -> None:
            conn.initialize(*args, **kwargs)

        for conn in self._connections:
            setup(conn)
        self.shard_set.setups.append(setup)
        self._logging_pending = False

    @property
    def moved_rows(self) -> int:
        """The most rows one statement may move to the coordinator (the parts the shards cannot
        finish alone); past it the statement is refused, naming this bound."""
        return self.shard_set.moved_rows

    @moved_rows.setter
    def moved_rows(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise psycopg2.ProgrammingError(f"moved_rows must be a non-negative int, not {value!r}")
        self.shard_set.moved_rows = value

    @property
    def placement(self) -> Placement | None:
        """Where rows live (None: every table is read as sharded, joins unchecked)."""
        return self.shard_set.placement

    @property
    def replicated_tables(self) -> frozenset[str]:
        """The tables the placement copies whole to every shard (as named there)."""
        placement = self.shard_set.placement
        return frozenset(placement.copied) if placement is not None else frozenset()

    @replicated_tables.setter
    def replicated_tables(self, tables: Iterable[str]) -> None:
        self.shard_set.set_placement(_placement(None, tables))

    def check_placement(self, *, progress: Any = None) -> PlacementReport:
        """Check the data against the placement.

        Copies must be identical everywhere; sharded rows must be where their key says.

        One pass per table per shard, in parallel. See
        :class:`parallel_connection.placement_check.PlacementReport`.
        """
        from .placement_check import check_placement

        self._check_open()
        return check_placement(self.shard_set, progress=progress)

    # -- range jobs -----------------------------------------------------------

    def scan_ranges(
        self, table: str | Sequence[str], id_column: str, work: Any, **options: Any
    ) -> ScanReport:
        """Split ``table.id_column`` into ranges on every shard and run ``work`` once per range.

        ``work`` is SQL using ``%(start)s`` and ``%(end)s`` (both included; the
        value is its rows as dicts, or its rowcount if it returns none) or a
        callable ``work(cursor, id_range)``. Each range is one transaction,
        committed when it finishes. Options (all keyword): ``rows_per_range``,
        ``split`` ("width" or "rows"), ``where`` and ``params`` (trusted SQL
        filtering the bounds), ``max_parallelism``, ``retries``,
        ``retry_backoff``, ``progress``, ``checkpoint`` (a file path, or
        :class:`parallel_connection.InShard` to keep finished ranges on each
        shard, committed with each range's work: exactly once), ``snapshot``,
        ``executor``, ``smoke_test``, ``pool_timeout`` (seconds a range waits
        for a pooled connection, default 30; past it, PoolTimeout). Planning,
        snapshots and ranges use connections borrowed from the pools, so scans
        at once on one connection wait for each other rather than fail.
        Returns a :class:`parallel_connection.ranges.ScanReport`.
        """
        from .ranges import scan_ranges

        self._check_open()
        return scan_ranges(self, table, id_column, work, **options)

    # -- transactions and session -------------------------------------------

    def commit(self) -> None:
        """Commit on every shard: atomically, with two-phase commit, if the transaction wrote on several.

        A transaction a shard's error aborted is rolled back on every shard instead,
        as one database rolls back at COMMIT. With ``two_phase=False`` each shard
        commits on its own.
        """
        self._check_open()
        with deadline.scope(self._deadline):
            self.shard_set.commit()

    def rollback(self) -> None:
        """Roll back on every shard."""
        self._check_open()
        with deadline.scope(self._deadline):
            self.shard_set.rollback()

    def recover(self, grace: float = GRACE) -> list[Resolved]:
        """Commit or roll back what failed two-phase commits left prepared on the shards.

        A crashed client, or a shard lost between the decision and its own
        commit, leaves parts of a transaction prepared (holding their locks).
        Each is committed if its transaction's decision was recorded, rolled
        back otherwise, once it is older than ``grace`` seconds (younger ones
        may belong to a client still committing). Returns what was resolved,
        one :class:`parallel_connection.commit.Resolved` per shard's part. Run
        it outside a transaction, with every shard up.
        """
        self._check_open()
        with deadline.scope(self._deadline):
            return self.shard_set.recover(grace).resolved

    def cancel(self) -> None:
        """Cancel whatever statement each shard is running."""
        self._check_open()
        self.shard_set.cancel(range(len(self._connections)))

    @property
    def autocommit(self) -> bool:
        return self.shard_set.autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self._on_every_shard(lambda conn: setattr(conn, "autocommit", value))

    def set_session(self, *args: Any, **kwargs: Any) -> None:
        """``set_session`` on every shard (isolation_level, readonly, deferrable, autocommit)."""
        self._on_every_shard(lambda conn: conn.set_session(*args, **kwargs))

    @property
    def isolation_level(self) -> int | None:
        level: int | None = self._connections[0].isolation_level
        return level

    @isolation_level.setter
    def isolation_level(self, value: int | None) -> None:
        self._on_every_shard(lambda conn: setattr(conn, "isolation_level", value))

    def set_isolation_level(self, level: int) -> None:
        """psycopg2's older call: ``ISOLATION_LEVEL_AUTOCOMMIT`` (0) or a level, on every shard."""
        self._on_every_shard(lambda conn: conn.set_isolation_level(level))

    @property
    def readonly(self) -> bool | None:
        readonly: bool | None = self._connections[0].readonly
        return readonly

    @readonly.setter
    def readonly(self, value: bool | None) -> None:
        self._on_every_shard(lambda conn: setattr(conn, "readonly", value))

    @property
    def deferrable(self) -> bool | None:
        deferrable: bool | None = self._connections[0].deferrable
        return deferrable

    @deferrable.setter
    def deferrable(self, value: bool | None) -> None:
        self._on_every_shard(lambda conn: setattr(conn, "deferrable", value))

    @property
    def encoding(self) -> str:
        encoding: str = self._connections[0].encoding
        return encoding

    def set_client_encoding(self, encoding: str) -> None:
        self._on_every_shard(lambda conn: conn.set_client_encoding(encoding))

    def _on_every_shard(self, call: Callable[[Any], object]) -> None:
        """A session call on every shard connection, the broken ones replaced first (between
        transactions), under the connection's deadline."""
        self._check_open()
        with deadline.scope(self._deadline):
            self.shard_set.heal()
            self.shard_set.run(lambda i: call(self._connections[i]))

    @property
    def server_version(self) -> int:
        """The oldest server version among the shards."""
        version: int = min(c.server_version for c in self._connections)
        return version

    @property
    def notices(self) -> list[str]:
        """Every shard's notices, each prefixed with its shard."""
        return [f"{s}: {n}" for s, c in zip(self._shards, self._connections, strict=False) for n in c.notices]

    def get_transaction_status(self) -> int:
        """The least healthy transaction status among the shards."""
        status: int = max(c.get_transaction_status() for c in self._connections)
        return status

    def get_dsn_parameters(self) -> list[dict[str, str]]:
        """Each shard connection's ``get_dsn_parameters()`` (libpq's, without the password), in
        shard order."""
        self._check_open()
        secrets = self.shard_set.secrets
        return [
            {key: redact(value, secrets) for key, value in conn.get_dsn_parameters().items()}
            for conn in self._connections
        ]

    @property
    def dsn(self) -> list[str]:
        """Each shard connection's ``dsn`` (``password=xxx``, as psycopg2 shows it), in shard order."""
        return [redact(conn.dsn, self.shard_set.secrets) for conn in self._connections]

    @property
    def info(self) -> list[ShardConnectionInfo]:
        """Each shard connection's ``info`` (psycopg2's ``ConnectionInfo``, its ``password`` shown as
        ``xxx``), in shard order."""
        return [ShardConnectionInfo(conn.info, self.shard_set.secrets) for conn in self._connections]

    # -- lifetime ------------------------------------------------------------

    @property
    def closed(self) -> int:
        """0 while usable; 1 once closed or handed back; 2 if a shard is broken."""
        if self._closed:
            return 1
        return 2 if any(map(_CLOSED, self._connections)) else 0

    def putconn(self, pools: Sequence[psycopg2.pool.AbstractConnectionPool], close: bool = False) -> None:
        """Give every shard connection back to its own pool (``pools`` in shard order).

        A broken connection goes back with ``close=True``, so no pool slot leaks.
        """
        if len(pools) != len(self._connections):
            raise psycopg2.InterfaceError(
                f"putconn needs one pool per shard: got {len(pools)} pools "
                f"for {len(self._connections)} shards"
            )
        try:
            self._roll_back_open()
        finally:
            self._shutdown()
        errors = []
        self._give_back_factories()
        for shard, conn, pool in zip(self._shards, self._connections, pools, strict=True):
            try:
                pool.putconn(conn, close=close or broken(conn))
            except psycopg2.Error:
                # Its rollback failed: the connection is no good; free its slot anyway.
                with contextlib.suppress(Exception):
                    pool.putconn(conn, close=True)
            except Exception as exc:
                errors.append(shard_error(exc, shard, self.shard_set.secrets))
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Close every shard connection (or hand it back to the pools :func:`connect` made).

        As the DB-API asks, closing a closed connection raises InterfaceError.
        """
        if self._closed:
            raise psycopg2.InterfaceError("connection already closed")
        if self._arrow is not None:
            self._arrow.close()
        if self._pools is not None:
            try:
                self.putconn(self._pools)
            finally:
                for pool in self._pools:
                    pool.closeall()
            return
        self._shutdown()
        self._give_back_factories()
        for conn in self._connections:
            conn.close()

    def __enter__(self) -> ParallelConnection:
        self._check_open()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        """Commit, or roll back when the block raised; the connection stays open, as psycopg2's
        does since 2.9 (close it with :meth:`close`, or ``contextlib.closing``)."""
        if not self._closed and not self.closed:
            if exc_type is None:
                self.commit()
            else:
                self.rollback()

    def __repr__(self) -> str:
        shards = ", ".join(str(s) for s in self._shards)
        return f"<ParallelConnection closed={self.closed} [{shards}]>"

    def __del__(self) -> None:
        shard_set = getattr(self, "shard_set", None)
        if shard_set is not None:
            shard_set.fanout.close()

    # -- helpers --------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise psycopg2.InterfaceError("connection already closed")

    def _give_back_factories(self) -> None:
        """Each shard connection's own ``cursor_factory`` again (see :func:`_plain_internally`)."""
        for conn, factory in zip(self._connections, self._own_factories, strict=True):
            with contextlib.suppress(psycopg2.Error):
                conn.cursor_factory = factory

    def _shutdown(self) -> None:
        self._closed = True
        if self._arrow is not None:
            self._arrow.close()
        self.shard_set.close()

    def _roll_back_open(self) -> None:
        """Roll back what is open, through the fan-out (so Ctrl-C and the deadline bound it), before
        the connections go back: the pool's own rollback would wait on a stalled shard."""
        idle = psycopg2.extensions.TRANSACTION_STATUS_IDLE
        open_ = [
            i for i, c in enumerate(self._connections) if not c.closed and c.info.transaction_status != idle
        ]
        if open_:
            with contextlib.suppress(psycopg2.Error), deadline.scope(self._deadline):
                self.shard_set.run(lambda i: self._connections[i].rollback(), open_)

    def _set_statement_timeout(self, seconds: float) -> None:
        millis = max(1, round(seconds * 1000))

        def apply(i: int) -> None:
            conn = self._connections[i]
            was_idle = conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = %s", (millis,))
            if was_idle and not conn.autocommit:
                conn.commit()

        self.shard_set.run(apply)


class ShardConnectionInfo:
    """A shard connection's psycopg2 ``ConnectionInfo``, with its password hidden (``xxx``)."""

    def __init__(self, info: Any, secrets: set[str]) -> None:
        self._info = info
        self._secrets = secrets

    @property
    def password(self) -> str | None:
        return "xxx" if self._info.password else None

    @property
    def dsn_parameters(self) -> dict[str, str]:
        return {key: redact(value, self._secrets) for key, value in self._info.dsn_parameters.items()}

    @property
    def error_message(self) -> str | None:
        message: str | None = self._info.error_message
        return redact(message, self._secrets) if message else message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._info, name)

    def __repr__(self) -> str:
        return f"<ShardConnectionInfo {self._info.host}:{self._info.port}/{self._info.dbname}>"


class _Discard:
    """A log that keeps nothing: what a LoggingConnection logs to until ``pdb.initialize()``."""

    def write(self, text: str) -> None:
        """Drop ``text``."""


def _log_pending(conn: Any) -> bool:
    """``conn`` is a LoggingConnection whose ``initialize()`` has not been called."""
    return isinstance(conn, psycopg2.extras.LoggingConnection) and not hasattr(conn, "_logobj")


def _plain_internally(conn: Any) -> Any:
    """Make ``conn.cursor()`` give the library's own queries (catalog reads, commits) its own cursors,
    whatever the connection's ``cursor_factory``, class or typecasters; the cursor class it gave
    before (None: psycopg2's own), which stays the user's default."""
    factory = conn.cursor_factory
    if factory is LibraryCursor:
        return None  # prepared already
    if factory is None and type(conn).cursor is not psycopg2.extensions.connection.cursor:
        if _log_pending(conn):
            conn.initialize(_Discard())  # only the user's cursors log, once pdb.initialize() says where
        probe = conn.cursor()  # what the connection's class makes by default
        factory = type(probe)
        probe.close()
    conn.cursor_factory = LibraryCursor
    return None if factory is psycopg2.extensions.cursor else factory


def _prepare(conn: Any) -> None:
    """What every shard connection gets before anything else (see :func:`_plain_internally`)."""
    _plain_internally(conn)


def _placement(placement: Placement | None, replicated_tables: Iterable[str]) -> Placement | None:
    """The placement given, or the ``replicated_tables`` shorthand (copies only, other tables sharded)."""
    if isinstance(replicated_tables, (str, bytes)):
        raise TypeError(
            f"replicated_tables takes a collection of table names, not one string: "
            f"replicated_tables=[{replicated_tables!r}]"
        )
    copies = list(replicated_tables)
    if placement is not None and copies:
        raise TypeError(
            "give either placement= or replicated_tables=, not both (name copies in the placement)"
        )
    if placement is not None and not isinstance(placement, Placement):
        raise TypeError(f"placement must be a parallel_connection.Placement, not {type(placement).__name__}")
    return Placement.copies_only(copies) if copies else placement


def _with_statement_timeout(dsns: list[str], seconds: float, connect_kwargs: dict[str, Any]) -> list[str]:
    """Add ``-c statement_timeout`` to the libpq options every new connection starts with."""
    setting = f"-c statement_timeout={max(1, round(seconds * 1000))}"
    if connect_kwargs.get("options"):
        connect_kwargs["options"] = f"{connect_kwargs['options']} {setting}"
        return dsns
    return [
        psycopg2.extensions.make_dsn(
            dsn, options=f"{psycopg2.extensions.parse_dsn(dsn).get('options', '')} {setting}".strip()
        )
        for dsn in dsns
    ]


def _close_opened(future: Future[Any]) -> None:
    """Close a pool that opened after its connect() was given up."""
    if not future.cancelled() and future.exception() is None:
        future.result().closeall()


def connect(
    dsns: Sequence[str] | str,
    *,
    minconn: int = 1,
    maxconn: int = 4,
    statement_timeout: float | None = None,
    connect_timeout: float | None = None,
    max_workers: int | None = None,
    replicated_tables: Iterable[str] = (),
    placement: Placement | None = None,
    two_phase: bool = True,
    decision_schema: str = "public",
    moved_rows: int = DEFAULT_MOVED_ROWS,
    statement_deadline: float | None = None,
    **connect_kwargs: Any,
) -> ParallelConnection:
    """Open one pool per DSN (a ThreadedConnectionPool that waits for a free slot) and a
    ParallelConnection over them.

    ``maxconn`` caps each shard's pool (range jobs borrow from it).
    ``close()`` hands everything back and closes the pools; leaving ``with``
    commits (or rolls back) and keeps the connection open, as psycopg2 does.
    ``cursor_factory`` is the connection's default for :meth:`ParallelConnection.cursor`;
    the other ``connect_kwargs`` (``connection_factory`` too) go to every
    ``psycopg2.connect``. ``statement_timeout`` and ``connect_timeout`` are in seconds.
    ``placement`` says where rows live (a :class:`Placement`);
    ``replicated_tables`` is a shorthand naming only the tables copied whole
    to every shard. A transaction that wrote on several shards commits with
    two-phase commit (``two_phase=False``: each shard on its own), its
    decision kept in ``decision_schema``.parallel_connection_commits.
    ``moved_rows`` bounds the rows one statement may move to the coordinator.
    ``statement_deadline`` (seconds) bounds how long any shard may take to
    answer a statement, on the client's side (see
    :attr:`ParallelConnection.statement_deadline`).
    """
    if isinstance(dsns, (str, bytes)):
        lines = [line for line in str(dsns).splitlines() if line.strip()]
        hint = "dsns.splitlines()" if len(lines) > 1 else "[dsn]"
        raise psycopg2.InterfaceError(
            f"connect takes a list of DSNs, one per shard, not one string (pass {hint}; "
            "a string is never split silently)"
        )
    dsns = list(dsns)
    for index, dsn in enumerate(dsns):
        if not isinstance(dsn, str) or "\n" in dsn:
            raise psycopg2.InterfaceError(
                f"DSN {index}: one DSN per list entry, as a string (this one holds "
                f"{'several lines' if isinstance(dsn, str) else type(dsn).__name__}: split them)"
            )
    if not dsns:
        raise psycopg2.InterfaceError("connect needs at least one DSN")
    # The connection's default, not the shard connections': the library's own queries read tuples.
    cursor_factory = connect_kwargs.pop("cursor_factory", None)
    if connect_timeout is not None:
        connect_kwargs["connect_timeout"] = max(1, round(connect_timeout))
    secrets = set()
    for dsn in dsns:
        secrets |= dsn_secrets(dsn, [connect_kwargs.get("password")])
    where = {k: v for k, v in connect_kwargs.items() if k in ("host", "port", "dbname")}
    shards = [ShardInfo.from_dsn(i, dsn, **where) for i, dsn in enumerate(dsns)]
    if statement_timeout is not None:
        # In the DSNs, so every connection the pools (or range workers) open gets it.
        dsns = _with_statement_timeout(dsns, statement_timeout, connect_kwargs)

    def open_pool(i: int) -> psycopg2.pool.ThreadedConnectionPool:
        try:
            return WaitingPool(minconn, maxconn, dsn=dsns[i], name=str(shards[i]), **connect_kwargs)
        except Exception as exc:
            failure = shard_error(exc, shards[i], secrets)
        # Raised outside the except block: libpq's own message may hold pieces of the password,
        # so the original must not stay reachable as __context__.
        raise failure

    # Daemon threads: Ctrl-C while a shard does not answer ends the wait, and the script can exit.
    opener = Workers(len(dsns), "parallel_connection-connect")
    futures = [opener.submit(open_pool, i) for i in range(len(dsns))]
    opener.shutdown(wait=False)
    try:
        wait(futures)
    except BaseException:
        for future in futures:
            future.add_done_callback(_close_opened)
        raise
    pools = [f.result() for f in futures if f.exception() is None]
    failed = [f.exception() for f in futures if f.exception() is not None]
    if failed:
        for pool in pools:
            pool.closeall()
        raise failed[0]  # type: ignore[misc]
    connections = []
    try:
        for shard, pool in zip(shards, pools, strict=False):
            try:
                connections.append(pool.getconn())
                continue
            except Exception as exc:
                failure = shard_error(exc, shard, secrets)
            raise failure
        return ParallelConnection(
            connections,
            statement_timeout=statement_timeout,
            max_workers=max_workers,
            pools=pools,
            secrets=secrets,
            dsns=dsns,
            connect_kwargs=connect_kwargs,
            replicated_tables=replicated_tables,
            placement=placement,
            two_phase=two_phase,
            decision_schema=decision_schema,
            moved_rows=moved_rows,
            statement_deadline=statement_deadline,
            cursor_factory=cursor_factory,
        )
    except BaseException:
        for pool in pools:
            pool.closeall()
        raise
