"""The connection and cursor behave like one psycopg2 connection over all shards."""

from __future__ import annotations

import contextlib
import threading

import psycopg2
import psycopg2.extras
import psycopg2.pool
import pytest

import parallel_connection
from parallel_connection import ParallelConnection


def _ref_rows(ref, sql, params=None):
    with ref.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def test_usage_with_own_pools_returns_every_connection(sample):
    pools = [psycopg2.pool.ThreadedConnectionPool(1, 3, dsn=d) for d in sample.shard_dsns]
    try:
        connections = [p.getconn() for p in pools]
        pdb = ParallelConnection(connections)
        c = pdb.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        c.execute("SELECT * FROM orders WHERE customer_id = %s", (1543,))
        rows = c.fetchall()
        c.close()
        pdb.putconn(pools)
        assert rows and {r["customer_id"] for r in rows} == {1543}
        assert isinstance(rows[0], psycopg2.extras.RealDictRow)
        for pool, conn in zip(pools, connections, strict=True):
            assert not pool._used, "a connection was not handed back"
            assert conn in pool._pool
        with pytest.raises(psycopg2.InterfaceError):
            pdb.cursor()
    finally:
        for pool in pools:
            pool.closeall()


def test_union_equals_reference_rows(pdb, ref):
    sql = "SELECT id, customer_id, status, amount, note FROM orders WHERE amount > %s"
    with pdb.cursor() as cur:
        cur.execute(sql, (500,))
        rows = cur.fetchall()
        assert cur.rowcount == len(rows)
    assert sorted(rows, key=lambda r: r[0]) == sorted(_ref_rows(ref, sql, (500,)), key=lambda r: r[0])


def test_fetchone_fetchmany_iteration_see_every_row_once(pdb, ref):
    sql = "SELECT id FROM orders WHERE id % 10 = 3"
    expected = sorted(r[0] for r in _ref_rows(ref, sql))
    cur = pdb.cursor()
    cur.execute(sql)
    got = [cur.fetchone()[0], cur.fetchone()[0]]
    got += [r[0] for r in cur.fetchmany(7)]
    cur.arraysize = 5
    got += [r[0] for r in cur.fetchmany()]
    got += [r[0] for r in cur]
    assert cur.fetchone() is None
    assert cur.fetchall() == []
    assert sorted(got) == expected
    assert cur.rownumber == len(expected)


def test_a_row_of_nulls_is_a_row(pdb):
    with pdb.cursor(merge="union") as cur:
        cur.execute("SELECT NULL::int, NULL::text")
        assert cur.fetchall() == [(None, None)] * 3
        cur.execute("SELECT NULL::int")
        assert cur.fetchone() == (None,)
        assert cur.fetchone() == (None,)


def test_cursors_are_independent(pdb):
    a, b = pdb.cursor(merge="union"), pdb.cursor(merge="union")
    assert a is not b
    a.execute("SELECT 1")
    b.execute("SELECT 2, 3")
    assert a.fetchall() == [(1,)] * 3
    assert b.fetchall() == [(2, 3)] * 3
    assert len(a.shard_cursors) == 3
    assert {id(x) for x in a.shard_cursors}.isdisjoint({id(x) for x in b.shard_cursors})


def test_description_matches_psycopg2(pdb, ref):
    sql = "SELECT id, status, amount FROM orders LIMIT 1"
    with pdb.cursor() as cur, ref.cursor() as rcur:
        cur.execute(sql)
        rcur.execute(sql)
        assert [(c.name, c.type_code) for c in cur.description] == [
            (c.name, c.type_code) for c in rcur.description
        ]


def test_dml_fans_out_and_rowcount_is_summed_on_a_union_cursor(pdb, sample):
    with pdb.cursor(merge="union") as cur:
        cur.execute("CREATE TEMP TABLE t (x int)")
        assert cur.description is None
        cur.execute("INSERT INTO t SELECT generate_series(1, 4)")
        assert cur.rowcount == 12
        assert cur.statusmessage == "INSERT 0 12"
        cur.executemany("INSERT INTO t VALUES (%s)", [(10,), (11,)])
        assert cur.rowcount == 6
        cur.execute("UPDATE t SET x = x + 1 WHERE x <= 2")
        assert cur.rowcount == 6
        assert cur.statusmessage == "UPDATE 6"
        with pytest.raises(psycopg2.ProgrammingError, match="no results to fetch"):
            cur.fetchall()
    pdb.rollback()


def test_commit_and_rollback_reach_every_shard(pdb, sample):
    with pdb.cursor(merge="union") as cur:
        cur.execute("DROP TABLE IF EXISTS tx_probe")
        cur.execute("CREATE TABLE tx_probe (x int)")
        pdb.commit()
        cur.execute("INSERT INTO tx_probe VALUES (1)")
        pdb.rollback()
        cur.execute("SELECT count(*) FROM tx_probe")
        assert cur.fetchall() == [(0,)] * 3
        cur.execute("INSERT INTO tx_probe VALUES (1)")
        pdb.commit()
    for dsn in sample.shard_dsns:
        conn = psycopg2.connect(dsn)
        with conn.cursor() as c:
            c.execute("SELECT count(*) FROM tx_probe")
            assert c.fetchone() == (1,)
            c.execute("DROP TABLE tx_probe")
        conn.commit()
        conn.close()


def test_autocommit_and_set_session_fan_out(pdb):
    pdb.autocommit = True
    assert all(c.autocommit for c in pdb.connections)
    assert pdb.autocommit is True
    pdb.autocommit = False
    pdb.set_session(readonly=True)
    with pdb.cursor(merge="union") as cur:  # every shard's setting, not one database's answer
        cur.execute("SHOW transaction_read_only")
        assert cur.fetchall() == [("on",)] * 3
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            cur.execute("CREATE TABLE never_made (x int)")
    pdb.rollback()
    pdb.set_session(readonly=False)
    assert [c.readonly for c in pdb.connections] == [False] * 3


def test_connections_are_listed_in_shard_order(pdb, sample):
    ports = [c.get_dsn_parameters()["port"] for c in pdb.connections]
    assert ports == [psycopg2.extensions.parse_dsn(d)["port"] for d in sample.shard_dsns]
    assert [s.index for s in pdb.shards] == [0, 1, 2]


def test_module_and_connection_expose_dbapi_globals(pdb):
    assert parallel_connection.apilevel == "2.0"
    assert parallel_connection.paramstyle == "pyformat"
    assert parallel_connection.threadsafety == 2
    assert pdb.ProgrammingError is psycopg2.ProgrammingError
    assert issubclass(parallel_connection.NotSupportedError, psycopg2.NotSupportedError)
    assert parallel_connection.Binary(b"x") is not None


def test_connect_owns_its_pools_and_close_hands_them_back(sample):
    pdb = parallel_connection.connect(sample.shard_dsns, maxconn=2)
    pools = pdb.pools
    with pdb, pdb.cursor() as cur:  # commits, and keeps the connection open (psycopg2 >= 2.9)
        cur.execute("SELECT 1")
    assert not pdb.closed and not any(p.closed for p in pools)
    pdb.close()
    assert pdb.closed
    assert all(p.closed for p in pools)
    with pytest.raises(psycopg2.InterfaceError, match="closed"):
        pdb.cursor()


def test_leaving_with_on_error_rolls_back(sample):
    with (
        pytest.raises(ZeroDivisionError),
        contextlib.closing(parallel_connection.connect(sample.shard_dsns)) as pdb,
        pdb,
    ):
        with pdb.cursor() as cur:
            cur.execute("CREATE TABLE rolled_back (x int)")
        raise ZeroDivisionError
    with (
        contextlib.closing(parallel_connection.connect(sample.shard_dsns)) as pdb,
        pdb,
        pdb.cursor(merge="union") as cur,
    ):
        cur.execute("SELECT to_regclass('rolled_back') IS NULL")
        assert cur.fetchall() == [(True,)] * 3


def test_mogrify_and_query_show_the_statement(pdb):
    with pdb.cursor() as cur:
        assert cur.mogrify("SELECT %s", ("it's",)) == b"SELECT 'it''s'"
        cur.execute("SELECT %s", (7,))
        assert cur.query == b"SELECT 7"


def test_callproc_runs_on_every_shard_of_a_union_cursor_and_is_refused_when_merging(pdb):
    with pdb.cursor(merge="union") as cur:
        assert cur.callproc("lower", ("ABC",)) == ("ABC",)
        assert cur.fetchall() == [("abc",)] * 3
    with pdb.cursor() as cur, pytest.raises(parallel_connection.NotSupportedError, match="callproc"):
        cur.callproc("now")


def test_statement_timeout_applies_to_every_shard(sample):
    with (
        contextlib.closing(parallel_connection.connect(sample.shard_dsns, statement_timeout=0.25)) as pdb,
        pdb,
    ):
        with pdb.cursor(merge="union") as cur:  # every shard's setting
            cur.execute("SHOW statement_timeout")
            assert cur.fetchall() == [("250ms",)] * 3
            with pytest.raises(psycopg2.errors.QueryCanceled) as info:
                cur.execute("SELECT pg_sleep(5)")
        assert "statement timeout" in str(info.value)
        assert "shard " in str(info.value)
        pdb.rollback()


def test_one_connection_is_shared_by_threads(pdb, ref):
    expected = _ref_rows(ref, "SELECT count(*) FROM orders")[0][0]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                with pdb.cursor() as cur:
                    cur.execute("SELECT id FROM orders")
                    assert len(cur.fetchall()) == expected
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_user_defined_type_is_the_same_column_on_every_shard(pdb, sample):
    from conftest import run_on_all

    run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS moods; DROP TYPE IF EXISTS mood")
    # Types made in another order on each shard: the enum gets a different OID on each.
    for i, dsn in enumerate(sample.shard_dsns):
        spacers = "".join(f"CREATE TYPE x{i}_{j} AS ENUM (); " for j in range(i + 1))
        run_on_all([dsn], spacers + "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        run_on_all([dsn], "CREATE TABLE moods (id int, m mood); INSERT INTO moods VALUES (%s, 'ok')", (i,))
    try:
        with pdb.cursor(merge="union") as cur:
            cur.execute("SELECT id, m FROM moods")
            assert sorted(cur.fetchall()) == [(0, "ok"), (1, "ok"), (2, "ok")]
    finally:
        pdb.rollback()
        for i, dsn in enumerate(sample.shard_dsns):
            spacers = "".join(f"DROP TYPE x{i}_{j}; " for j in range(i + 1))
            run_on_all([dsn], "DROP TABLE moods; DROP TYPE mood; " + spacers)
