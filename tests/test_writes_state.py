"""Random write transactions, run through the connection and on the reference database alike.

A hypothesis state machine mixes inserts (one row, many-row VALUES, executemany, execute_values,
execute_batch), updates and deletes (pinned, unpinned, co-located with the other sharded table,
reading the copied one), upserts, writes to the copied table, savepoints, commits, rollbacks,
errors (a duplicate or NULL key aborts the transaction) and refusals (nothing written, the
transaction goes on). Each statement's rowcount, status and RETURNING rows must be the reference's;
after each commit and rollback the committed rows must be the reference's, each on its key's shard.
The library bugs it found are kept as cases of their own after it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg2
import psycopg2.errorcodes
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import pytest
from conftest import Servers, run_on_all
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

import parallel_connection
from parallel_connection import NotSupportedError, ParallelConnection
from parallel_connection.placement import Modulo, Placement

PLACEMENT = Placement(sharded={"sm_a": ("k", Modulo()), "sm_b": ("k", Modulo())}, copied=["sm_c"])
TABLES = ("sm_a", "sm_b", "sm_c")
SHARDED = ("sm_a", "sm_b")
SCHEMA = """
DROP TABLE IF EXISTS sm_a, sm_b, sm_c CASCADE;
CREATE TABLE sm_a (k int PRIMARY KEY, v int, t text);
CREATE TABLE sm_b (k int NOT NULL, w int);
CREATE TABLE sm_c (id int PRIMARY KEY, name text);
"""
# WRITES_STATE_EXAMPLES=500 for a longer hunt.
SETTINGS = settings(
    max_examples=int(os.environ.get("WRITES_STATE_EXAMPLES", "25")), stateful_step_count=20, deadline=None
)

Row = tuple[Any, ...]
Rows = list[Row]

# Small domains, so that keys collide, updates find rows and negative keys (Modulo: the last
# shard for -1, where SQL's % would say -1) are common.
keys = st.integers(-8, 24)
values = st.none() | st.integers(-3, 9)
texts = st.none() | st.sampled_from(["", "a", "b", "it's", "Zürich", "z z"])
a_row = st.tuples(keys, values, texts)
b_row = st.tuples(keys, st.none() | st.integers(-2, 9))
params = st.fixed_dictionaries(
    {
        "k": keys,
        "k2": keys,
        "d": st.integers(-3, 3),
        "lo": st.integers(-2, 8),
        "w": st.integers(-2, 9),
        "t": texts,
        "name": st.sampled_from(["a", "c", "e", "n"]),
        "id": st.integers(1, 6),
    }
)

UPDATES = [
    "UPDATE sm_a SET v = v + %(d)s WHERE k = %(k)s RETURNING k, v",
    "UPDATE sm_a SET t = %(t)s WHERE k IN (%(k)s, %(k2)s) RETURNING *",
    "UPDATE sm_a SET v = v + %(d)s WHERE v > %(lo)s RETURNING k, v",
    "UPDATE sm_a SET v = coalesce(v, 0) - 1, t = %(t)s",
    "UPDATE sm_a SET v = (SELECT max(w) FROM sm_b WHERE sm_b.k = sm_a.k) WHERE v < %(lo)s RETURNING k, v",
    "UPDATE sm_a SET v = sm_a.v + %(d)s FROM sm_b WHERE sm_b.k = sm_a.k AND sm_b.w > %(lo)s "
    "RETURNING sm_a.k, sm_a.v",
    "UPDATE sm_a a SET v = a.v + b.s FROM (SELECT k, sum(w) AS s FROM sm_b GROUP BY k) b "
    "WHERE b.k = a.k AND a.v < %(lo)s RETURNING a.k, a.v",
    "UPDATE sm_a SET t = 'b' || %(name)s WHERE k IN (SELECT k FROM sm_b WHERE w = %(w)s) RETURNING k, t",
    "UPDATE sm_a SET v = v + 1 WHERE k = %(k)s AND EXISTS (SELECT 1 FROM sm_b WHERE sm_b.k = sm_a.k)",
    "UPDATE sm_a SET t = (SELECT name FROM sm_c WHERE sm_c.id = sm_a.v) WHERE k > %(k)s RETURNING k, t",
    "UPDATE sm_a SET v = v * 2 WHERE v IN (SELECT id FROM sm_c WHERE name < %(name)s) RETURNING *",
    "UPDATE sm_b SET w = w + %(d)s WHERE k = %(k)s RETURNING k, w",
    "UPDATE sm_b SET w = sm_a.v FROM sm_a WHERE sm_a.k = sm_b.k AND sm_a.v IS NOT NULL "
    "AND sm_b.w < %(lo)s RETURNING sm_b.k, sm_b.w",
]
DELETES = [
    "DELETE FROM sm_a WHERE k = %(k)s RETURNING *",
    "DELETE FROM sm_a WHERE v < %(lo)s RETURNING k",
    "DELETE FROM sm_a WHERE k IN (%(k)s, %(k2)s) OR t = %(t)s RETURNING k",
    "DELETE FROM sm_a USING sm_b WHERE sm_b.k = sm_a.k AND sm_b.w = %(w)s RETURNING sm_a.*",
    "DELETE FROM sm_a WHERE NOT EXISTS (SELECT 1 FROM sm_b WHERE sm_b.k = sm_a.k) AND v > %(lo)s RETURNING k",
    "DELETE FROM sm_b WHERE k = %(k)s AND w > %(lo)s RETURNING *",
    "DELETE FROM sm_b WHERE w = %(w)s",
    "DELETE FROM sm_b USING sm_c WHERE sm_c.id = sm_b.w AND sm_c.name > %(name)s RETURNING sm_b.*",
]
COPIED_WRITES = [
    "INSERT INTO sm_c VALUES (%(id)s, %(name)s) ON CONFLICT (id) DO UPDATE SET name = excluded.name "
    "RETURNING *",
    "INSERT INTO sm_c VALUES (%(id)s, %(t)s) ON CONFLICT DO NOTHING RETURNING id",
    "UPDATE sm_c SET name = name || %(name)s WHERE id <= %(id)s RETURNING *",
    "DELETE FROM sm_c WHERE id = %(id)s RETURNING id",
]
UPSERTS = [
    "ON CONFLICT (k) DO NOTHING RETURNING k, v, t",
    "ON CONFLICT (k) DO UPDATE SET v = excluded.v + sm_a.v RETURNING k, v",
    "ON CONFLICT (k) DO UPDATE SET t = excluded.t WHERE sm_a.v > 2 RETURNING k, t",
    "ON CONFLICT (k, v) DO NOTHING",  # a conflict target that holds the key (no such index: both fail)
]
INSERT_SELECTS = [  # the rows pass through the client when they change shard: allowed, or refused
    "INSERT INTO sm_a SELECT k, max(w), 'b' FROM sm_b WHERE w > %(lo)s GROUP BY k ON CONFLICT (k) DO NOTHING "
    "RETURNING k, v",
    # (ON CONFLICT DO NOTHING here: test_rerouted_insert_select_counts_only_the_rows_it_inserted)
    "INSERT INTO sm_a SELECT k + 40, max(w), 'moved' FROM sm_b GROUP BY k "
    "ON CONFLICT (k) DO UPDATE SET v = excluded.v",
    "INSERT INTO sm_a SELECT id + 60, id, name FROM sm_c WHERE id > %(id)s "
    "ON CONFLICT (k) DO UPDATE SET t = excluded.t || sm_a.t",
    "INSERT INTO sm_b SELECT k, v FROM sm_a WHERE v > %(lo)s RETURNING *",
    "INSERT INTO sm_b SELECT v, k FROM sm_a WHERE v IS NOT NULL",
    "INSERT INTO sm_c SELECT k + 100, min(w)::text FROM sm_b GROUP BY k "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name",
]
REFUSED = [
    "UPDATE sm_a SET k = k + 1",
    "UPDATE sm_a SET k = %(k)s WHERE k = %(k2)s",
    "UPDATE sm_a SET v = (SELECT max(w) FROM sm_b)",
    "UPDATE sm_a SET v = sm_b.w FROM sm_b WHERE sm_b.w = sm_a.v",
    "DELETE FROM sm_a WHERE v > (SELECT avg(w) FROM sm_b)",
    "INSERT INTO sm_a (v, t) VALUES (%(d)s, %(t)s)",
    "INSERT INTO sm_a VALUES (%(k)s, 1, 'x') ON CONFLICT (v) DO NOTHING",
    "INSERT INTO sm_a VALUES (%(k)s, 1, 'x') ON CONFLICT DO NOTHING",
    "INSERT INTO sm_a VALUES (%(k)s, 1, 'x') ON CONFLICT (k) DO UPDATE SET k = excluded.k + 1",
    "UPDATE sm_c SET name = random()::text",
]


def by_repr(rows: Sequence[Row]) -> Rows:
    """``rows`` in one fixed order (equal multisets, equal lists), NULLs and all."""
    return sorted((tuple(row) for row in rows), key=repr)


@dataclass
class Outcome:
    """What one statement gave on one side: its counts and rows, or its error."""

    rowcount: int | None = None
    status: str | None = None
    rows: Rows | None = None
    error: psycopg2.Error | None = None


Action = Callable[[Any], Any]
"""Runs a statement on a cursor; returns the rows it fetched itself (execute_values), else None."""


def outcome(conn: Any, action: Action) -> Outcome:
    cur = conn.cursor()
    try:
        fetched = action(cur)
        rows = fetched if fetched is not None else (cur.fetchall() if cur.description else None)
        return Outcome(cur.rowcount, cur.statusmessage, None if rows is None else by_repr(rows))
    except psycopg2.Error as exc:
        return Outcome(error=exc)
    finally:
        cur.close()


def execute(sql: str, vars: Any = None) -> Action:
    return lambda cur: cur.execute(sql, vars)


def executemany(sql: str, seq: Sequence[Any]) -> Action:
    return lambda cur: cur.executemany(sql, seq)


def execute_values(sql: str, rows: Sequence[Any], page_size: int, fetch: bool) -> Action:
    return lambda cur: psycopg2.extras.execute_values(cur, sql, rows, page_size=page_size, fetch=fetch)


def execute_batch(sql: str, rows: Sequence[Any], page_size: int) -> Action:
    return lambda cur: psycopg2.extras.execute_batch(cur, sql, rows, page_size=page_size)


def values_sql(width: int, count: int) -> str:
    one = "(" + ", ".join(["%s"] * width) + ")"
    return ", ".join([one] * count)


def dbapi_class(exc: BaseException) -> type:
    """The DB-API class of ``exc`` (IntegrityError, DataError...): what a caller catches."""
    for cls in type(exc).__mro__:
        if cls.__module__ == "psycopg2" and issubclass(cls, psycopg2.Error):
            return cls
    return type(exc)


def read(conn: Any, table: str) -> Rows:
    with conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {table}")
        return by_repr(cur.fetchall())


def autocommit(dsn: str) -> Any:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET lock_timeout = '10s'")
    return conn


@pytest.fixture(scope="module")
def sm_servers(servers: Servers) -> Iterator[Servers]:
    every = [*servers.shard_dsns, servers.reference_dsn]
    run_on_all(every, SCHEMA)
    yield servers
    run_on_all(every, "DROP TABLE IF EXISTS sm_a, sm_b, sm_c CASCADE")


class WriteTransactions(RuleBasedStateMachine):
    """The library and the reference database, driven through the same statements."""

    servers: ClassVar[Servers]

    def __init__(self) -> None:
        super().__init__()
        self.admins = [autocommit(dsn) for dsn in self.servers.shard_dsns]
        self.ref_admin = autocommit(self.servers.reference_dsn)
        self.pdb: ParallelConnection = parallel_connection.connect(
            self.servers.shard_dsns, placement=PLACEMENT
        )
        self.ref = psycopg2.connect(self.servers.reference_dsn)
        self.aborted = False
        self.savepoints: list[str] = []
        self.made = 0

    # -- set-up and teardown -------------------------------------------------------

    @initialize(
        a=st.lists(a_row, max_size=12, unique_by=lambda r: r[0]),
        b=st.lists(b_row, max_size=12),
        c=st.lists(st.tuples(st.integers(1, 6), texts), max_size=5, unique_by=lambda r: r[0]),
    )
    def start(self, a: Rows, b: Rows, c: Rows) -> None:
        """Empty tables, then rows placed by the test itself (each on its key's shard)."""
        for conn in [*self.admins, self.ref_admin]:
            with conn.cursor() as cur:
                cur.execute("TRUNCATE sm_a, sm_b, sm_c")
        n = len(self.admins)
        for index, conn in enumerate(self.admins):
            with conn.cursor() as cur:
                mine_a = [r for r in a if Modulo().shard_of(r[0], n) == index]
                mine_b = [r for r in b if Modulo().shard_of(r[0], n) == index]
                psycopg2.extras.execute_values(cur, "INSERT INTO sm_a VALUES %s", mine_a)
                psycopg2.extras.execute_values(cur, "INSERT INTO sm_b VALUES %s", mine_b)
                psycopg2.extras.execute_values(cur, "INSERT INTO sm_c VALUES %s", c)
        with self.ref_admin.cursor() as cur:
            psycopg2.extras.execute_values(cur, "INSERT INTO sm_a VALUES %s", a)
            psycopg2.extras.execute_values(cur, "INSERT INTO sm_b VALUES %s", b)
            psycopg2.extras.execute_values(cur, "INSERT INTO sm_c VALUES %s", c)
        self.check_committed()

    def teardown(self) -> None:
        try:
            if not self.aborted:
                self.check_open_transaction()
            self.pdb.rollback()
            self.ref.rollback()
            self.check_committed()
        finally:
            self.pdb.close()
            self.ref.close()
            for conn in [*self.admins, self.ref_admin]:
                conn.close()

    # -- the checks ----------------------------------------------------------------------

    def both(
        self,
        action: Action,
        what: str,
        *,
        status: bool = True,
        rowcount: bool = True,
        may_refuse: bool = False,
    ) -> tuple[Outcome, Outcome]:
        """Run on the shards, then on the reference database; their outcomes must agree.

        A server error on both sides aborts the transaction. (``status``, ``rowcount``:
        compare them too; see the tests after the state machine for the cases that don't.
        ``may_refuse``: a refusal is fine, if it wrote nothing and the transaction goes on.)
        """
        got = outcome(self.pdb, action)
        if isinstance(got.error, NotSupportedError):
            assert may_refuse, f"refused: {what}: {got.error}"
            self.check_open_transaction()
            return got, Outcome()
        want = outcome(self.ref, action)
        if got.error is not None or want.error is not None:
            assert got.error is not None, f"{what}: the reference raised {want.error!r}, the library did not"
            assert want.error is not None, f"{what}: the library raised {got.error!r}, the reference did not"
            assert dbapi_class(got.error) is dbapi_class(want.error), (what, got.error, want.error)
            assert got.error.pgcode == want.error.pgcode, (what, got.error, want.error)
            self.aborted = True
            return got, want
        if rowcount:
            assert got.rowcount == want.rowcount, (what, got, want)
        assert got.rows == want.rows, what
        if status:
            assert got.status == want.status, (what, got, want)
        return got, want

    def check_open_transaction(self) -> None:
        """What the transaction sees so far, through the library, is what the reference sees."""
        for table in TABLES:
            assert read(self.pdb, table) == read(self.ref, table), table

    def check_committed(self) -> None:
        """Committed rows: the reference's, through the library and on the shards, each where its key
        maps; every shard holding the whole copied table."""
        want = {table: read(self.ref_admin, table) for table in TABLES}
        held = [{table: read(conn, table) for table in TABLES} for conn in self.admins]
        for table in SHARDED:
            assert by_repr([row for shard in held for row in shard[table]]) == want[table], table
            for index, shard in enumerate(held):
                wrong = [row for row in shard[table] if Modulo().shard_of(row[0], len(held)) != index]
                assert not wrong, f"{table} rows {wrong} on shard {index}"
        for index, shard in enumerate(held):
            assert shard["sm_c"] == want["sm_c"], f"copy of sm_c on shard {index}"
        for table in TABLES:
            assert read(self.pdb, table) == want[table], table
        self.pdb.rollback()  # end the reading transaction: the next rule starts afresh

    def ended(self, as_sql: bool = False) -> None:
        if as_sql:
            # psycopg2 does not see a COMMIT or ROLLBACK sent as SQL: its next statement would
            # run without BEGIN (autocommit). rollback() (nothing to roll back) puts it right.
            self.pdb.rollback()
            self.ref.rollback()
        self.aborted = False
        self.savepoints = []
        self.check_committed()

    # -- inserts -----------------------------------------------------------------------------

    @precondition(lambda self: not self.aborted)
    @rule(
        how=st.sampled_from(["one", "values", "executemany", "execute_values", "execute_batch"]),
        rows=st.lists(a_row, min_size=1, max_size=6, unique_by=lambda r: r[0]),
        returning=st.booleans(),
        page_size=st.integers(1, 4),
    )
    def insert_a(self, how: str, rows: Rows, returning: bool, page_size: int) -> None:
        tail = " RETURNING k, v, t" if returning else ""
        if how == "one":
            sql = "INSERT INTO sm_a (k, v, t) VALUES (%s, %s, %s)" + tail
            self.both(execute(sql, rows[0]), sql)
        elif how == "values":
            sql = f"INSERT INTO sm_a VALUES {values_sql(3, len(rows))}" + tail
            self.both(execute(sql, [x for row in rows for x in row]), sql)
        elif how == "executemany":
            sql = "INSERT INTO sm_a VALUES (%s, %s, %s)"
            self.both(executemany(sql, rows), sql, status=False)  # test_executemany_reports_the_last_status
        elif how == "execute_values":
            sql = "INSERT INTO sm_a (k, v, t) VALUES %s" + tail
            self.both(execute_values(sql, rows, page_size, fetch=returning), sql)
        else:
            sql = "INSERT INTO sm_a VALUES (%s, %s, %s)"
            # several statements in one execute(): test_several_statements_report_the_last_ones_counts
            self.both(execute_batch(sql, rows, page_size), sql, status=False, rowcount=False)

    @precondition(lambda self: not self.aborted)
    @rule(
        how=st.sampled_from(["values", "executemany", "execute_values"]),
        rows=st.lists(b_row, min_size=1, max_size=6),
        page_size=st.integers(1, 4),
    )
    def insert_b(self, how: str, rows: Rows, page_size: int) -> None:
        if how == "values":
            sql = f"INSERT INTO sm_b (k, w) VALUES {values_sql(2, len(rows))} RETURNING *"
            self.both(execute(sql, [x for row in rows for x in row]), sql)
        elif how == "executemany":
            sql = "INSERT INTO sm_b VALUES (%s, %s)"
            self.both(executemany(sql, rows), sql, status=False)
        else:
            sql = "INSERT INTO sm_b VALUES %s RETURNING k, w"
            self.both(execute_values(sql, rows, page_size, fetch=True), sql)

    @precondition(lambda self: not self.aborted)
    @rule(
        conflict=st.sampled_from(UPSERTS),
        how=st.sampled_from(["values", "execute_values", "executemany"]),
        rows=st.lists(a_row, min_size=1, max_size=5),  # a key twice in one statement is allowed
        page_size=st.integers(1, 3),
    )
    def upsert(self, conflict: str, how: str, rows: Rows, page_size: int) -> None:
        if how == "values":
            sql = f"INSERT INTO sm_a (k, v, t) VALUES {values_sql(3, len(rows))} {conflict}"
            self.both(execute(sql, [x for row in rows for x in row]), sql)
        elif how == "execute_values":
            sql = f"INSERT INTO sm_a (k, v, t) VALUES %s {conflict}"
            self.both(execute_values(sql, rows, page_size, fetch="RETURNING" in conflict), sql)
        else:
            sql = f"INSERT INTO sm_a (k, v, t) VALUES (%s, %s, %s) {conflict.split(' RETURNING')[0]}"
            self.both(executemany(sql, rows), sql, status=False)

    # -- updates, deletes, the copied table ---------------------------------------------------

    @precondition(lambda self: not self.aborted)
    @rule(sql=st.sampled_from(UPDATES), vars=params)
    def update(self, sql: str, vars: dict[str, Any]) -> None:
        self.both(execute(sql, vars), sql)

    @precondition(lambda self: not self.aborted)
    @rule(sql=st.sampled_from(DELETES), vars=params)
    def delete(self, sql: str, vars: dict[str, Any]) -> None:
        self.both(execute(sql, vars), sql)

    @precondition(lambda self: not self.aborted)
    @rule(sql=st.sampled_from(COPIED_WRITES), vars=params)
    def write_copied(self, sql: str, vars: dict[str, Any]) -> None:
        self.both(execute(sql, vars), sql)

    @precondition(lambda self: not self.aborted)
    @rule(sql=st.sampled_from(INSERT_SELECTS), vars=params)
    def insert_select(self, sql: str, vars: dict[str, Any]) -> None:
        self.both(execute(sql, vars), sql, may_refuse=True)

    @precondition(lambda self: not self.aborted)
    @rule(keys_=st.lists(st.tuples(keys, st.integers(-3, 3)), min_size=1, max_size=4))
    def update_many(self, keys_: Rows) -> None:
        sql = "UPDATE sm_a SET v = v + %s WHERE k = %s OR v = %s"
        self.both(executemany(sql, [(d, k, k) for k, d in keys_]), sql, status=False)

    # -- errors and refusals ------------------------------------------------------------------

    @precondition(lambda self: not self.aborted)
    @rule(
        data=st.data(),
        table=st.sampled_from(["sm_a", "sm_c", "null key"]),
        how=st.sampled_from(["one", "values", "executemany", "execute_values"]),
    )
    def failing_insert(self, data: st.DataObject, table: str, how: str) -> None:
        """A duplicate (or NULL) key: an IntegrityError on both, and the transaction is aborted."""
        fresh = data.draw(
            st.lists(st.tuples(st.integers(100, 130), values, texts), max_size=3, unique_by=lambda r: r[0])
        )
        if table == "null key":
            table, bad, twice = "sm_a", (None, 1, "null"), False
        else:
            with self.ref.cursor() as cur:
                cur.execute(f"SELECT * FROM {table}")
                existing = cur.fetchall()
            twice = not existing  # an empty table: the key twice in one statement
            bad = data.draw(st.sampled_from(existing)) if existing else (131, 1, "twice")
        if table == "sm_c":
            fresh, bad = [(k, t) for k, _, t in fresh], bad[:2]
        rows = data.draw(st.permutations([*fresh, bad, bad] if twice else [*fresh, bad]))
        width = len(bad)
        cols = "k, v, t" if table == "sm_a" else "id, name"
        one = f"INSERT INTO {table} ({cols}) VALUES ({', '.join(['%s'] * width)})"
        if how == "one":
            if twice:
                self.both(execute(one, bad), one)
            sql, action = one, execute(one, bad)
        elif how == "values":
            sql = f"INSERT INTO {table} ({cols}) VALUES {values_sql(width, len(rows))}"
            action = execute(sql, [x for row in rows for x in row])
        elif how == "executemany":
            sql, action = one, executemany(one, rows)
        else:
            sql = f"INSERT INTO {table} ({cols}) VALUES %s"
            action = execute_values(sql, rows, 2, fetch=False)
        got, _ = self.both(action, f"{sql} {rows}", status=how != "executemany")
        assert isinstance(got.error, psycopg2.IntegrityError), (sql, rows, got)

    @precondition(lambda self: self.aborted)
    @rule(data=st.data(), end=st.sampled_from(["rollback()", "commit()", "ROLLBACK", "COMMIT", "savepoint"]))
    def recover(self, data: st.DataObject, end: str) -> None:
        """An aborted transaction refuses every statement, as one database's does, until it ends."""
        for action in (
            execute("SELECT count(*) FROM sm_a"),
            execute("INSERT INTO sm_a VALUES (%s, 1, 'x')", (200,)),
            execute("UPDATE sm_c SET name = 'x'"),
        ):
            got, want = outcome(self.pdb, action), outcome(self.ref, action)
            assert isinstance(want.error, psycopg2.errors.InFailedSqlTransaction)
            assert isinstance(got.error, psycopg2.errors.InFailedSqlTransaction), got
        if end == "savepoint" and self.savepoints:
            name = data.draw(st.sampled_from(self.savepoints))
            self.aborted = False
            got, _ = self.both(execute(f"ROLLBACK TO SAVEPOINT {name}"), "ROLLBACK TO SAVEPOINT")
            assert not self.aborted, got
            del self.savepoints[self.savepoints.index(name) + 1 :]
            self.check_open_transaction()
            return
        if end in ("ROLLBACK", "COMMIT"):
            got, want = self.both(execute(end), end)
            assert got.status == want.status == "ROLLBACK"
        elif end == "commit()":
            self.pdb.commit()  # rolls back, as psycopg2's commit() of an aborted transaction does
            self.ref.commit()
        else:
            self.pdb.rollback()
            self.ref.rollback()
        self.ended(end in ("ROLLBACK", "COMMIT"))

    @precondition(lambda self: not self.aborted)
    @rule(sql=st.sampled_from(REFUSED), vars=params, many=st.booleans())
    def refused(self, sql: str, vars: dict[str, Any], many: bool) -> None:
        """Refused before anything is written; the transaction goes on as if it had not been sent."""
        cur = self.pdb.cursor()
        with pytest.raises(NotSupportedError):
            if many:
                cur.executemany(sql, [vars, {**vars, "k": vars["k2"]}])
            else:
                cur.execute(sql, vars)
        cur.close()
        self.check_open_transaction()

    # -- savepoints and the end of transactions -------------------------------------------------

    @precondition(lambda self: not self.aborted)
    @rule()
    def savepoint(self) -> None:
        self.made += 1
        name = f"sp{self.made}"
        self.both(execute(f"SAVEPOINT {name}"), "SAVEPOINT")
        self.savepoints.append(name)

    @precondition(lambda self: not self.aborted and self.savepoints)
    @rule(data=st.data(), release=st.booleans())
    def end_savepoint(self, data: st.DataObject, release: bool) -> None:
        name = data.draw(st.sampled_from(self.savepoints))
        index = self.savepoints.index(name)
        if release:
            self.both(execute(f"RELEASE SAVEPOINT {name}"), "RELEASE")
            del self.savepoints[index:]
        else:
            self.both(execute(f"ROLLBACK TO SAVEPOINT {name}"), "ROLLBACK TO SAVEPOINT")
            del self.savepoints[index + 1 :]
        self.check_open_transaction()

    @precondition(lambda self: not self.aborted)
    @rule()
    def compare_now(self) -> None:
        self.check_open_transaction()

    @precondition(lambda self: not self.aborted)
    @rule(as_sql=st.booleans())
    def commit(self, as_sql: bool) -> None:
        if as_sql:
            self.both(execute("COMMIT"), "COMMIT")
        else:
            self.pdb.commit()
            self.ref.commit()
        self.ended(as_sql)

    @precondition(lambda self: not self.aborted)
    @rule(as_sql=st.booleans())
    def rollback(self, as_sql: bool) -> None:
        if as_sql:
            self.both(execute("ROLLBACK"), "ROLLBACK")
        else:
            self.pdb.rollback()
            self.ref.rollback()
        self.ended(as_sql)


def test_random_write_transactions_match_one_database(sm_servers: Servers) -> None:
    WriteTransactions.servers = sm_servers
    run_state_machine_as_test(WriteTransactions, settings=SETTINGS)


# -- what the state machine leaves out: library bugs, each its own case ------------------------------


@pytest.fixture
def fresh(sm_servers: Servers) -> Iterator[tuple[ParallelConnection, Any, list[Any]]]:
    """Empty tables: the connection, the reference database, one autocommit connection per shard."""
    run_on_all([*sm_servers.shard_dsns, sm_servers.reference_dsn], "TRUNCATE sm_a, sm_b, sm_c")
    pdb = parallel_connection.connect(sm_servers.shard_dsns, placement=PLACEMENT)
    ref = psycopg2.connect(sm_servers.reference_dsn)
    shards = [autocommit(dsn) for dsn in sm_servers.shard_dsns]
    try:
        yield pdb, ref, shards
    finally:
        pdb.close()
        ref.close()
        for conn in shards:
            conn.close()


def load_each(pdb: ParallelConnection, ref: Any) -> None:
    """A row on each shard in sm_a and sm_b, one in sm_c; committed."""
    for conn in (pdb, ref):
        with conn.cursor() as cur:
            cur.execute("INSERT INTO sm_a VALUES (0, 1, 'a'), (1, 2, 'b'), (2, 0, 'c')")
            cur.execute("INSERT INTO sm_b VALUES (0, 1), (1, 2), (2, 0)")
            cur.execute("INSERT INTO sm_c VALUES (1, 'x')")
        conn.commit()


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO sm_b SELECT v, k FROM sm_a",
        "INSERT INTO sm_a SELECT id + 60, id, name FROM sm_c",
        "INSERT INTO sm_c SELECT k + 10, 'x' FROM sm_b",
    ],
)
def test_executemany_of_an_insert_select_writes_what_one_database_would(fresh, sql: str) -> None:
    pdb, ref, shards = fresh
    load_each(pdb, ref)
    try:
        pdb.cursor().executemany(sql, [()])
    except NotSupportedError:
        pdb.rollback()  # refusing is fine too
    else:
        ref.cursor().executemany(sql, [()])
        pdb.commit()
        ref.commit()
    want = {table: read(ref, table) for table in TABLES}
    held = [{table: read(conn, table) for table in TABLES} for conn in shards]
    for table in SHARDED:
        assert by_repr([row for shard in held for row in shard[table]]) == want[table]
        for index, shard in enumerate(held):
            assert all(Modulo().shard_of(row[0], 3) == index for row in shard[table]), (table, index)
    assert all(shard["sm_c"] == want["sm_c"] for shard in held)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO sm_a SELECT k + 40, max(w), 'm' FROM sm_b GROUP BY k ON CONFLICT (k) DO NOTHING",
        "INSERT INTO sm_a SELECT id + 60, id, name FROM sm_c ON CONFLICT (k) DO NOTHING",
    ],
)
def test_rerouted_insert_select_counts_only_the_rows_it_inserted(fresh, sql: str) -> None:
    pdb, ref, _ = fresh
    load_each(pdb, ref)
    for _ in range(2):  # the second time every row is there already: INSERT 0 0
        cur, rcur = pdb.cursor(), ref.cursor()
        cur.execute(sql)
        rcur.execute(sql)
        assert (cur.rowcount, cur.statusmessage) == (rcur.rowcount, rcur.statusmessage)


def test_executemany_reports_the_last_status(fresh) -> None:
    pdb, ref, _ = fresh
    cur, rcur = pdb.cursor(), ref.cursor()
    for c in (cur, rcur):
        c.executemany("INSERT INTO sm_a VALUES (%s, 1, 'x')", [(1,), (2,)])
    assert (cur.rowcount, cur.statusmessage) == (rcur.rowcount, rcur.statusmessage) == (2, "INSERT 0 1")


@pytest.mark.parametrize("keys_", [(1, 2), (1, 4)])  # two shards; one shard
def test_several_statements_report_the_last_ones_counts(fresh, keys_: tuple[int, int]) -> None:
    pdb, ref, _ = fresh
    sql = "INSERT INTO sm_a VALUES (%s, 1, 'x'); INSERT INTO sm_a VALUES (%s, 1, 'y')"
    cur, rcur = pdb.cursor(), ref.cursor()
    cur.execute(sql, keys_)
    rcur.execute(sql, keys_)
    assert (cur.rowcount, cur.statusmessage) == (rcur.rowcount, rcur.statusmessage) == (1, "INSERT 0 1")


def test_an_aborted_transaction_refuses_with_its_sqlstate(fresh) -> None:
    pdb, _, _ = fresh
    cur = pdb.cursor()
    cur.execute("INSERT INTO sm_a VALUES (1, 1, 'x')")
    with pytest.raises(psycopg2.IntegrityError):
        cur.execute("INSERT INTO sm_a VALUES (1, 1, 'x')")
    with pytest.raises(psycopg2.errors.InFailedSqlTransaction) as raised:
        cur.execute("SELECT 1")
    assert raised.value.pgcode == psycopg2.errorcodes.IN_FAILED_SQL_TRANSACTION
