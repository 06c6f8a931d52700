"""The shards as one object: connections in shard order, the fan-out, secrets, catalog and placement.

The connection and the cursor are thin DB-API faces over this object; the
executor runs plans on it; range jobs borrow its fan-out. The catalog facts
are read from every shard on first use, checked with a cheap stamp before
each statement that fans out, and read again after DDL or SET through the
connection, so they are never stale. It also knows which shards the current
transaction wrote (the executor says so with :meth:`ShardSet.write_scope`),
so that :meth:`ShardSet.commit` commits a transaction that wrote on several
shards with two-phase commit (:mod:`parallel_connection.commit`).
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import psycopg2
import psycopg2.errorcodes
import psycopg2.errors
import psycopg2.extensions

from . import commit as atomic
from . import deadline
from .cancel import Watch, lost
from .catalog import Catalog, StampReader, combine, read_catalog, settings_differences
from .errors import NotSupportedError, ShardInfo, dsn_secrets
from .fanout import FanOut, Pending
from .healing import read_settings, replacement
from .placement import Placement
from .plan import ShardFacts
from .turns import holder

DEFAULT_MOVED_ROWS = 1_000_000
"""The default bound on the rows one statement's steps may move to the coordinator."""

__all__ = ["DEFAULT_MOVED_ROWS", "Connected", "ShardSet"]

T = TypeVar("T")


class Connected(Protocol):
    """What the library's machinery (cursors, range jobs) needs of the connection face above it."""

    @property
    def shard_set(self) -> ShardSet: ...
    @property
    def connections(self) -> list[Any]: ...
    @property
    def shards(self) -> list[Any]: ...
    @property
    def pools(self) -> list[Any] | None: ...
    @property
    def dsns(self) -> list[str] | None: ...
    @property
    def connect_kwargs(self) -> dict[str, Any]: ...
    @property
    def closed(self) -> int: ...


class ShardSet:
    """Every shard of one ParallelConnection, and what is known about them."""

    def __init__(
        self,
        connections: Sequence[Any],
        *,
        secrets: set[str] | None = None,
        max_workers: int | None = None,
        placement: Placement | None = None,
        two_phase: bool = True,
        decision_schema: str = "public",
    ) -> None:
        self.connections = connections if isinstance(connections, list) else list(connections)
        """The shard connections, in shard order (the caller's list when it gives one: :meth:`heal`
        replaces broken connections in it)."""
        self.pools: Sequence[Any] | None = None
        """Each shard's pool, when the connections came from pools: :meth:`heal` borrows from them."""
        self.replaced = 0
        """How many connections :meth:`heal` has replaced (a cursor made before a replacement remakes
        its shard cursors when this changes)."""
        self._watch = Watch()
        self._healing = threading.Lock()
        """Held while a connection is replaced; :meth:`close` waits for it, so the list it leaves
        holds every connection borrowed."""
        self._shut = False
        self.two_phase = two_phase
        """Commit a transaction that wrote on several shards with two-phase commit."""
        self.decisions = atomic.DecisionLog(decision_schema)
        self.infos = [ShardInfo.from_connection(i, c) for i, c in enumerate(self.connections)]
        self.secrets = set(secrets or ())
        for conn in self.connections:
            self.secrets |= dsn_secrets(None, [_password_of(conn)])
        self.fanout = FanOut(self.infos, self.connections, self.secrets, max_workers)
        self._lock = threading.Lock()
        self._facts: ShardFacts | None = None
        self._generation = 0
        """Bumped whenever the facts are replaced or forgotten (a read started before is not kept)."""
        self._moment: datetime.datetime | None = None
        self._failed: str | None = None
        self._held: tuple[ShardFacts, set[str]] | None = None
        self._stamps = [StampReader() for _ in self.connections]
        self._shard_stamps: list[tuple[int, ...]] = [() for _ in self.connections]
        self._written: set[int] = set()
        self._scope: set[int] | None = None
        self._scope_token: object | None = None
        self._extra: list[int] = []
        self._scopes = threading.Lock()
        """One autocommit write's transaction at a time (:meth:`write_scope`)."""
        self._prepared_slots: list[int | None] = [None for _ in self.connections]
        self.placement: Placement | None = None
        self.moved_rows = DEFAULT_MOVED_ROWS
        """The most rows one statement may move to the coordinator."""
        self.setups: list[Callable[[Any], None]] = []
        """What was done to every shard connection (``register_type`` and the like), in order:
        a connection that replaces a broken one gets each of them too."""
        try:
            self.set_placement(placement)
            self._start()
        except BaseException:
            self.fanout.close()
            raise

    def set_placement(self, placement: Placement | None) -> None:
        """Use ``placement`` from the next statement on."""
        if placement is not None:
            placement.check_shards(len(self.connections))
        with self._lock:
            self.placement = placement
            self._facts = None
            self._generation += 1

    def _start(self) -> None:
        """Check the shards before the first statement: distinct databases, equal settings.

        A connection that was idle is left idle (its transaction rolled back).
        """
        idle = [
            c.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE and not c.autocommit
            for c in self.connections
        ]
        try:
            self._check_distinct()
            self.facts()
        finally:
            self.run(lambda i: self.connections[i].rollback() if idle[i] else None)

    def _check_distinct(self) -> None:
        """Refuse two shards that are one database: every count would double."""
        if len(self.connections) < 2:
            return
        rows = self.run(lambda i: _identity(self.connections[i]))
        self._prepared_slots = [int(row[-1]) for row in rows]
        seen: dict[tuple[Any, ...], int] = {}
        for index, row in enumerate(rows):
            identity = row[:-1]
            if identity in seen:
                raise psycopg2.InterfaceError(
                    f"{self.infos[seen[identity]]} and {self.infos[index]} are the same database: "
                    "each shard must be a database of its own"
                )
            seen[identity] = index

    def __len__(self) -> int:
        return len(self.connections)

    # -- running ----------------------------------------------------------------

    def run(self, fn: Callable[[int], T], indexes: Sequence[int] | None = None) -> list[T]:
        """``[fn(i) for i in indexes]`` at once on the fan-out; the first failure wins."""
        return self.fanout.run(fn, indexes)

    def start(self, index: int, fn: Callable[[], T], *, watch: bool = True) -> Pending[T]:
        """``fn()`` on shard ``index``'s connection in the background, in its turn (``watch``: under
        the statement deadline)."""
        return self.fanout.start(index, fn, watch=watch)

    def error(self, exc: BaseException, index: int) -> BaseException:
        """``exc`` raised on shard ``index``, naming the shard, without secrets."""
        return self.fanout.error(exc, index)

    def cancel(self, indexes: Sequence[int]) -> None:
        self.fanout.cancel_all(indexes)

    def close(self) -> None:
        with self._healing:
            self._shut = True
        self.fanout.release_stuck()
        self.fanout.close()

    # -- catalog facts ---------------------------------------------------------------

    def facts(self) -> ShardFacts:
        """The planner's facts, read on first use (in the current transaction)."""
        with self._lock:
            if self._facts is not None:
                return self._facts
            generation = self._generation
        return self._publish(generation)

    def check_facts(self, facts: ShardFacts, indexes: Sequence[int] | None = None) -> ShardFacts:
        """The current facts: ``facts``, or fresh ones if the catalog of one of these shards (default:
        all) changed since they were read. A cheap stamp per shard tells."""
        indexes = list(range(len(self.connections))) if indexes is None else list(indexes)
        stamps = self.run(self._stamp, indexes)
        with self._lock:
            current, known, generation = self._facts, list(self._shard_stamps), self._generation
        if current is not None and all(known[i] == s for i, s in zip(indexes, stamps, strict=True)):
            return current
        return self._publish(generation)

    def forget_facts(self) -> None:
        """Read the facts again before the next statement (after DDL or SET through the connection)."""
        with self._lock:
            self._facts = None
            self._generation += 1

    def _publish(self, generation: int) -> ShardFacts:
        """Fresh facts, read without the lock (the shard calls may wait for their turn behind a
        statement that itself needs the facts), kept unless they were forgotten meanwhile."""
        catalogs: list[Catalog] = self.run(lambda i: _read(self.connections[i]))
        facts = self._facts_of(catalogs)
        with self._lock:
            for reader, catalog in zip(self._stamps, catalogs, strict=True):
                reader.prime(catalog)
            if self._generation == generation:
                self._facts = facts
                self._shard_stamps = [catalog.stamp for catalog in catalogs]
                self._generation += 1
        return facts

    def _facts_of(self, catalogs: list[Catalog]) -> ShardFacts:
        names = [str(info) for info in self.infos]
        differences = settings_differences(catalogs, names)
        if differences:
            raise psycopg2.OperationalError(
                "the shards' settings differ, so their answers would not agree: "
                + "; ".join(differences)
                + " (set them alike, e.g. with ALTER DATABASE ... SET, or options='-c name=value' "
                "in the DSNs)"
            )
        catalog = combine(catalogs, names)
        bound = None
        if self.placement is not None:
            bound = self.placement.bind(catalog.qualified)
        collated = frozenset(
            (relation.name, column.name, column.collation or "nondeterministic")
            for relation in catalog.relations.values()
            for column in relation.columns
            if column.collation is not None or not column.deterministic
        )
        declared = frozenset(
            column.name
            for relation in catalog.relations.values()
            for column in relation.columns
            if column.declared_collation is not None
        )
        own_collations = collated or any(
            t.collation is not None or not t.deterministic for t in catalog.types.values()
        )
        return ShardFacts(
            text_order_c=catalog.text_order_c,
            code_point_text=catalog.text_order_c and not own_collations,
            aggregates=frozenset(catalog.aggregates),
            collated_columns=collated,
            declared_collations=declared,
            catalog=catalog,
            placement=bound,
            shards=len(self.connections),
            volatile=frozenset(catalog.volatile),
            shadowed=_shadowed(catalog),
        )

    def _stamp(self, index: int) -> tuple[int, ...]:
        with self.connections[index].cursor() as cur:
            return self._stamps[index].read(cur)

    # -- one moment per transaction -------------------------------------------------

    def moments(self, kinds: set[str], shard: int) -> dict[str, datetime.datetime]:
        """``now()`` of the current transaction and ``statement_timestamp()`` of this statement.

        The transaction's is taken once, from the first shard a statement of it
        runs on; every shard then gets these values, so a statement sees one
        moment as one database would (where the two are equal in a
        transaction's first statement).
        """
        conn = self.connections[shard]
        query = "SELECT now(), statement_timestamp()"
        if self.autocommit and not self._scoped():
            # Each statement is a transaction of its own; other threads' moments are not ours.
            row = self.run(lambda i: _one_row(conn, query), [shard])[0]
            return {"transaction": row[0], "statement": row[1]}
        idle_status = psycopg2.extensions.TRANSACTION_STATUS_IDLE
        idle = all(c.get_transaction_status() == idle_status for c in self.connections)
        if idle:
            self._moment = None
        if self._moment is not None and kinds == {"transaction"}:
            return {"transaction": self._moment}
        row = self.run(lambda i: _one_row(conn, query), [shard])[0]
        transaction: datetime.datetime = row[0] if self._moment is None else self._moment
        if not conn.autocommit:
            self._moment = transaction
        return {"transaction": transaction, "statement": row[1]}

    def end_transaction(self) -> None:
        """The transaction ended (commit, rollback): the next statement takes a new moment."""
        self._moment = None
        self._failed = None
        self._held = None

    def clear_failure(self) -> None:
        """A ROLLBACK TO SAVEPOINT undid the error: the transaction (and its moment) goes on, and the
        locks taken since the savepoint are gone."""
        self._failed = None
        self._held = None

    # -- tables this transaction holds --------------------------------------------------

    def hold(self, facts: ShardFacts, table: str) -> None:
        """The transaction wrote ``table`` on every shard: until it ends, it holds a lock that keeps
        any other session from changing the table's definition, so ``facts`` stay true of it."""
        if self.autocommit:
            return
        if self._held is None or self._held[0] is not facts:
            self._held = (facts, set())
        self._held[1].add(table)

    def holds(self, facts: ShardFacts, table: str) -> bool:
        """``table`` is held on every shard since ``facts`` were checked (see :meth:`hold`)."""
        held = self._held
        if held is None or held[0] is not facts or table not in held[1]:
            return False
        open_ = psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        return all(c.get_transaction_status() == open_ and not c.autocommit for c in self.connections)

    # -- writes and commit -------------------------------------------------------------

    @contextlib.contextmanager
    def write_scope(self, indexes: Sequence[int]) -> Iterator[None]:
        """Wrap the running of a statement that may write on shards ``indexes``.

        In a transaction the shards are recorded as written, so that
        :meth:`commit` knows whether two-phase commit is needed; a statement
        that would make a transaction write on several shards, one of which
        cannot prepare transactions, is refused before it runs. In autocommit
        mode a statement writing on several shards runs as a transaction of its
        own on them, committed with two-phase commit when the block ends, rolled
        back if it raises.
        """
        targets = sorted(set(indexes))
        if self._scoped() or not self.autocommit:
            self._record(targets)
            yield
            return
        if len(targets) < 2 or not self.two_phase:
            yield
            return
        self._check_prepared(targets)
        # The shards stay this statement's until it committed: another thread's statement must not
        # run inside its transaction (and be rolled back with it).
        limit = deadline.current()
        wait = -1.0 if limit is None else max(0.0, limit.at - time.monotonic())
        if not self._scopes.acquire(timeout=wait):
            raise self.error(deadline.waited_error(limit), targets[0])
        try:
            with self.fanout.hold(targets) as token:
                try:
                    self._scope, self._scope_token = set(), token
                    self._written = set()
                    self._record(targets)
                    try:
                        yield
                    except BaseException:
                        with contextlib.suppress(psycopg2.Error):
                            self.rollback()  # the statement's own error is the one to see
                        raise
                    self.commit()
                finally:
                    # The connections first: until _scope is cleared, autocommit reads the user's.
                    for i in sorted(self._scope or ()):
                        conn = self.connections[i]
                        with contextlib.suppress(psycopg2.Error):
                            if not conn.closed and conn.status != psycopg2.extensions.STATUS_READY:
                                conn.rollback()
                            conn.autocommit = True
                    for i in self._extra:
                        self.fanout.give_back(i, token)
                    self._extra = []
                    self._written = set()
                    self.end_transaction()
                    self._scope, self._scope_token = None, None
        finally:
            self._scopes.release()

    def _scoped(self) -> bool:
        """The caller is in the statement an autocommit write made a transaction of (see
        :meth:`write_scope`)."""
        return self._scope is not None and holder() is self._scope_token

    @property
    def autocommit(self) -> bool:
        """The user's autocommit (a write's own transaction, :meth:`write_scope`, leaves it on)."""
        return self._scope is not None or bool(self.connections[0].autocommit)

    def _record(self, targets: Sequence[int]) -> None:
        """These shards are written in the current transaction (refused first if they can't commit it)."""
        idle_status = psycopg2.extensions.TRANSACTION_STATUS_IDLE
        scoped = self._scoped()
        limit = deadline.current()
        if not scoped and all(c.get_transaction_status() == idle_status for c in self.connections):
            self._written = set()  # a new transaction (the last one ended outside commit())
        written = self._written | set(targets)
        if self.two_phase and len(written) > 1 and written != self._written:
            self._check_prepared(sorted(written))
        if scoped and self._scope is not None:
            for i in sorted(set(targets) - self._scope):
                self._extra.append(i)  # given back with the others when the scope ends
                if not self.fanout.take(i, until=None if limit is None else limit.at):
                    raise self.error(deadline.waited_error(limit), i)
                self.connections[i].autocommit = False
                self._scope.add(i)
        self._written = written

    def _check_prepared(self, indexes: Sequence[int]) -> None:
        """Refuse a two-phase commit on a shard whose server has no slots for prepared transactions."""
        unknown = [i for i in indexes if self._prepared_slots[i] is None]
        if unknown:
            slots = self.run(lambda i: _setting(self.connections[i], "max_prepared_transactions"), unknown)
            for i, value in zip(unknown, slots, strict=True):
                self._prepared_slots[i] = int(value)
        for i in indexes:
            if self._prepared_slots[i] == 0:
                shards = ", ".join(str(k) for k in indexes)
                raise NotSupportedError(
                    f"{self.infos[i]} has max_prepared_transactions = 0, so a transaction writing on "
                    f"shards {shards} cannot commit atomically (two-phase commit prepares on each): set "
                    "max_prepared_transactions (e.g. to max_connections) in that server's postgresql.conf "
                    "and restart it, or connect(..., two_phase=False) to commit each shard on its own"
                )

    @property
    def written(self) -> frozenset[int]:
        """The shards the current transaction wrote, as far as :meth:`write_scope` was told."""
        return frozenset(self._written)

    def commit(self) -> None:
        """Commit the current transaction on every shard.

        A transaction a shard's error aborted is rolled back everywhere (as one
        database rolls back at COMMIT). One that wrote on two or more shards is
        committed with two-phase commit (unless ``two_phase`` is off); any
        other commits shard by shard, at no extra cost.
        """
        statuses = [c.get_transaction_status() for c in self.connections]
        failed = self.failed or psycopg2.extensions.TRANSACTION_STATUS_INERROR in statuses
        open_ = psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        written = [i for i in sorted(self._written) if statuses[i] == open_]
        self._written = set()
        self.end_transaction()
        if failed:
            self.run(lambda i: self.connections[i].rollback(), self._live())
            broken = [i for i, conn in enumerate(self.connections) if conn.closed]
            if broken:  # what the others rolled back, as one connection would, cannot reach it
                raise self.error(psycopg2.InterfaceError("connection already closed"), broken[0])
        elif self.two_phase and len(written) > 1:
            atomic.two_phase_commit(self, written, self.decisions)
        else:
            self.run(lambda i: self.connections[i].commit())

    def rollback(self) -> None:
        """Roll back the current transaction on every shard (a broken connection's ended with it)."""
        self._written = set()
        self.end_transaction()
        self.run(lambda i: self.connections[i].rollback(), self._live())

    def _live(self) -> list[int]:
        return [i for i, conn in enumerate(self.connections) if not conn.closed]

    # -- broken connections ------------------------------------------------------------

    def heal(self) -> list[int]:
        """Between transactions, replace the shard connections found broken (or whose server hung
        up) with fresh ones from their pools, as a pool checks a connection it lends; the shards
        replaced. In a transaction a broken shard stays broken, as one connection would, until
        ``rollback()`` or ``commit()`` ends it. A connection another statement is using is left
        for later.
        """
        pools = self.pools
        if pools is None or not self._between_transactions():
            return []
        # Others' statements may be running on them: nothing is read, only looked at.
        suspects = self._watch.suspects(self.connections)
        if not suspects:
            return []
        settings = self._peer_settings(suspects)
        healed = []
        for i in suspects:
            # A closed connection fails every call at once, so its turn comes soon: wait for it
            # (under load a free moment may never come). Another may just be answering a statement.
            closed = bool(self.connections[i].closed)
            with self.fanout.attend(i, wait=closed) as mine, self._healing:
                if self._shut:
                    break
                if mine and (self.connections[i].closed or lost([self.connections[i]])):
                    self._replace(i, pools[i], settings)
                    healed.append(i)
        return healed

    def _peer_settings(self, suspects: Sequence[int]) -> dict[str, str] | None:
        """The compared settings of the first healthy shard connection free now, read there (the
        facts may hold a SET that a rollback undid since); None when there is none."""
        for i, conn in enumerate(self.connections):
            if i in suspects:
                continue
            with self.fanout.attend(i) as mine:
                if not mine or conn.closed:
                    continue
                try:
                    return read_settings(conn)
                except psycopg2.Error:
                    continue
        return None

    def _between_transactions(self) -> bool:
        """No transaction of the user's is open (nor one an autocommit write made, :meth:`write_scope`)."""
        if self._scope is not None:
            return not self._scoped()
        if self.connections[0].autocommit:
            return True
        idle = psycopg2.extensions.TRANSACTION_STATUS_IDLE
        return self._failed is None and all(
            conn.closed or conn.get_transaction_status() == idle for conn in self.connections
        )

    def _replace(self, index: int, pool: Any, settings: dict[str, str] | None) -> None:
        limit = deadline.current()
        old = self.connections[index]
        try:
            fresh = replacement(
                pool,
                old,
                settings,
                list(self.setups),
                None if limit is None else max(0.0, limit.at - time.monotonic()),
            )
        except Exception as exc:
            reason = f"its connection broke and a new one could not be made: {exc}"
            failure = self.error(psycopg2.OperationalError(reason), index)
        else:
            self.connections[index] = fresh
            self.replaced += 1
            self.secrets |= dsn_secrets(None, [_password_of(fresh)])
            with self._lock:
                self._stamps[index] = StampReader()
            self.forget_facts()
            return
        raise failure

    def recover(self, grace: float = atomic.GRACE) -> atomic.Recovery:
        """Resolve what a crashed client or a lost shard left prepared (:func:`commit.recover`)."""
        return atomic.recover(self, grace=grace, schema=self.decisions.schema)

    # -- a transaction that failed ---------------------------------------------------

    def run_statement(self, fn: Callable[[int], T], indexes: Sequence[int]) -> list[T]:
        """Run a statement's part on these shards; a shard's error fails the whole transaction.

        One database would refuse every later statement until the transaction
        ends, and roll it back at COMMIT: so does the connection, whichever
        shards the later statements need.
        """
        try:
            return self.fanout.run(fn, indexes)
        except (psycopg2.Error, KeyboardInterrupt) as exc:
            if getattr(exc, "shard", None) is not None or isinstance(exc, KeyboardInterrupt):
                self.fail(exc)
            raise

    def fail(self, why: str | BaseException) -> None:
        """The current transaction can no longer commit (outside autocommit); ``why`` says what broke it."""
        if isinstance(why, BaseException):
            why = (str(why).splitlines() or [type(why).__name__])[0][:200]
        if not self.autocommit:
            self._failed = why

    def check_transaction(self) -> None:
        """Refuse a statement in a transaction a shard's error has aborted, as PostgreSQL does."""
        if self._failed is not None:
            raise _Aborted(
                "current transaction is aborted, commands ignored until end of transaction block "
                f"(after: {self._failed}); roll back"
            )

    @property
    def failed(self) -> bool:
        """A shard's error aborted the current transaction: commit rolls back."""
        return self._failed is not None


class _Aborted(psycopg2.errors.InFailedSqlTransaction):
    """The connection's own refusal in an aborted transaction, with PostgreSQL's SQLSTATE."""

    pgcode = psycopg2.errorcodes.IN_FAILED_SQL_TRANSACTION


_IDENTITY = (
    "SELECT pg_postmaster_start_time(), current_setting('port'), current_database(), "
    "current_setting('max_prepared_transactions')"
)


def _identity(conn: Any) -> tuple[Any, ...]:
    """What tells one database from another (its server's start time and port, and its name), and
    its server's max_prepared_transactions (read in the same round trip)."""
    with conn.cursor() as cur:
        cur.execute(_IDENTITY)
        row = cur.fetchone()
    return tuple(row or ())


def _one_row(conn: Any, query: str) -> tuple[Any, ...]:
    with conn.cursor() as cur:
        cur.execute(query)
        row = cur.fetchone()
    assert row is not None
    return tuple(row)


def _setting(conn: Any, name: str) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting(%s)", (name,))
        row = cur.fetchone()
    return str(row[0]) if row else ""


def _shadowed(catalog: Catalog) -> frozenset[str]:
    """User aggregates a bare name finds before pg_catalog's (``search_path = public, pg_catalog``)."""
    path = list(catalog.search_path)
    before = path[: path.index("pg_catalog")] if "pg_catalog" in path else []
    return frozenset(name for schema, name in catalog.user_aggregates if schema in before)


def _read(conn: Any) -> Catalog:
    with conn.cursor() as cur:
        return read_catalog(cur)


def _password_of(conn: Any) -> str | None:
    try:
        password: str | None = conn.info.password
    except Exception:
        return None
    return password
