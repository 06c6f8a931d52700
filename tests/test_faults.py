"""Failures look like one connection's failures, only clearer: the shard named, the rest cancelled."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import traceback

import psycopg2
import psycopg2.pool
import pytest
from conftest import active, port_of, run_on_all, wait_until

import parallel_connection
from parallel_connection import ParallelConnection
from parallel_connection.fanout import CANCEL_GRACE
from parallel_connection.local import PASSWORD_GROUP, LocalCluster
from parallel_connection.proxy import TcpProxy

SECRET = "s3cr3t-Pa55"


def test_first_failure_cancels_the_other_shards(pdb, sample):
    port0 = port_of(sample.shard_dsns[0])
    sql = (
        "SELECT pg_sleep(CASE WHEN current_setting('port')::int = %s THEN 0 ELSE 20 END), "
        "1 / (current_setting('port')::int - %s)"
    )
    start = time.monotonic()
    with pytest.raises(psycopg2.errors.DivisionByZero) as info, pdb.cursor() as cur:
        cur.execute(sql, (port0, port0))
    assert time.monotonic() - start < 3
    message = str(info.value)
    assert message.startswith(f"shard 0 (127.0.0.1:{port0}/")
    assert "division by zero" in message
    assert info.value.pgcode == "22012"
    assert info.value.shard.index == 0
    for dsn in sample.shard_dsns[1:]:
        assert wait_until(lambda d=dsn: active(d, "SELECT pg_sleep(CASE%") == 0, 2)
    pdb.rollback()
    with pdb.cursor(merge="union") as cur:
        cur.execute("SELECT 1")
        assert cur.fetchall() == [(1,)] * 3


def test_terminated_backend_names_its_shard_and_is_not_reused(sample):
    pdb = parallel_connection.connect(sample.shard_dsns, maxconn=2)
    pools = pdb.pools
    victim = pdb.connections[1].info.backend_pid

    def kill() -> None:
        time.sleep(0.5)
        conn = psycopg2.connect(sample.shard_dsns[1])
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (victim,))
        conn.close()

    killer = threading.Thread(target=kill)
    killer.start()
    start = time.monotonic()
    with pytest.raises(psycopg2.OperationalError) as info, pdb.cursor(merge="union") as cur:
        cur.execute("SELECT pg_sleep(20)")
    killer.join()
    assert time.monotonic() - start < 4
    assert str(info.value).startswith("shard 1 (")
    assert pdb.closed == 2
    broken = pdb.connections[1]
    pdb.close()
    assert broken.closed
    assert all(not p._used for p in pools), "a pool slot leaked"
    for dsn in sample.shard_dsns:
        assert wait_until(lambda d=dsn: active(d, "SELECT pg_sleep(20)%") == 0, 2)


def test_broken_connection_goes_back_to_its_pool_closed(sample):
    pools = [psycopg2.pool.ThreadedConnectionPool(1, 2, dsn=d) for d in sample.shard_dsns]
    try:
        pdb = ParallelConnection([p.getconn() for p in pools])
        victim = pdb.connections[2]
        killer = psycopg2.connect(sample.shard_dsns[2])
        killer.autocommit = True
        with killer.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
        killer.close()
        with pytest.raises(psycopg2.OperationalError, match=r"^shard 2"), pdb.cursor(merge="union") as cur:
            cur.execute("SELECT 1")
        pdb.putconn(pools)
        assert victim.closed
        assert victim not in pools[2]._pool
        assert all(not p._used for p in pools)
    finally:
        for pool in pools:
            pool.closeall()


def test_ctrl_c_cancels_every_shard_and_rollback_recovers(pdb, sample):
    def interrupt() -> None:
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt).start()
    cur = pdb.cursor(merge="union")
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        cur.execute("SELECT pg_sleep(30)")
    assert time.monotonic() - start < 1.5
    for dsn in sample.shard_dsns:
        assert wait_until(lambda d=dsn: active(d, "SELECT pg_sleep(30)%") == 0, 1)
    pdb.rollback()
    cur.execute("SELECT 2")
    assert cur.fetchall() == [(2,)] * 3


def test_shards_with_different_columns_are_refused(pdb, sample):
    with pdb.cursor() as cur:
        cur.execute("CREATE TEMP TABLE drift (a int, b text)")
        pdb.connections[2].cursor().execute("DROP TABLE drift; CREATE TEMP TABLE drift (a int, b int)")
        with pytest.raises(psycopg2.ProgrammingError) as info:
            cur.execute("SELECT * FROM drift")
    message = str(info.value)
    assert "different columns" in message
    assert "shard 0" in message and "shard 2" in message
    assert "b text" in message and "b integer" in message
    pdb.rollback()


def test_bad_sql_keeps_its_class_and_code(pdb):
    with pytest.raises(psycopg2.errors.UndefinedTable) as info, pdb.cursor() as cur:
        cur.execute("SELECT * FROM no_such_table")
    assert info.value.pgcode == "42P01"
    assert str(info.value).split(" (")[0] in {"shard 0", "shard 1", "shard 2"}
    assert info.value.pgerror.startswith("ERROR:  relation")
    pdb.rollback()


@pytest.fixture(scope="module")
def spare():
    """Two servers of our own, so tests may stop one."""
    with LocalCluster(2) as cluster:
        yield cluster


def test_stopped_server_is_named_and_nothing_leaks(spare):
    pdb = parallel_connection.connect(spare.shard_dsns)
    pools = pdb.pools
    spare.stop_server(1)
    try:
        with pytest.raises(psycopg2.OperationalError) as info, pdb.cursor(merge="union") as cur:
            cur.execute("SELECT 1")
        assert str(info.value).startswith(f"shard 1 (127.0.0.1:{port_of(spare.shard_dsns[1])}/")
        pdb.close()
        assert all(not p._used for p in pools)
        with pytest.raises(psycopg2.OperationalError) as info:
            parallel_connection.connect(spare.shard_dsns)
        assert str(info.value).startswith("shard 1 (")
    finally:
        spare.start_server(1)


def test_unreachable_shard_error_never_shows_the_password(spare):
    dsns = [spare.shard_dsns[0], f"host=127.0.0.1 port=1 dbname=x user=u password={SECRET}"]
    with pytest.raises(psycopg2.OperationalError) as info:
        parallel_connection.connect(dsns, connect_timeout=2)
    assert str(info.value).startswith("shard 1 (127.0.0.1:1/x)")
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    uri = f"postgresql://u:{SECRET}@127.0.0.1:1/x"
    with pytest.raises(psycopg2.OperationalError) as info:
        parallel_connection.connect([uri])
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=127.0.0.1 password={SECRET} oops",
        f"host=127.0.0.1 password='{SECRET}",
        f"host=127.0.0.1 {SECRET}=1",
        f"postgresql://u:{SECRET}@127.0.0.1:5432/db?bogus%zz=1",
    ],
)
def test_dsn_parse_errors_never_show_the_password(dsn):
    with pytest.raises(psycopg2.ProgrammingError) as info:
        parallel_connection.connect(["host=127.0.0.1", dsn])
    assert str(info.value).startswith("shard 1: ")
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_password_login_never_leaks(spare):
    conn = psycopg2.connect(spare.shard_dsns[0])
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS pc_pw_user")
        cur.execute(f"CREATE ROLE pc_pw_user LOGIN PASSWORD %s IN ROLE {PASSWORD_GROUP}", (SECRET,))
    conn.close()
    good = spare.shard_dsns[0].replace("user=postgres", f"user=pc_pw_user password={SECRET}")
    wrong = good.replace(SECRET, SECRET + "x")
    with pytest.raises(psycopg2.OperationalError) as info:
        parallel_connection.connect([wrong])
    assert "password authentication failed" in str(info.value)
    assert SECRET not in str(info.value)
    with contextlib.closing(parallel_connection.connect([good])) as pdb, pdb:
        assert SECRET not in repr(pdb)
        with pytest.raises(psycopg2.Error) as info, pdb.cursor() as cur:
            cur.execute("SELECT %s::int", (SECRET,))
        assert SECRET not in str(info.value), "a password echoed in data is redacted too"
        assert SECRET not in "".join(traceback.format_exception(info.value))
        assert SECRET not in (info.value.pgerror or "")
        assert SECRET not in repr(pdb.shards)
        pdb.rollback()


def test_ctrl_c_does_not_wait_for_a_black_holed_shard(sample):
    with TcpProxy.for_dsn(sample.shard_dsns[1]) as proxy:
        dsns = [sample.shard_dsns[0], proxy.dsn(sample.shard_dsns[1]), sample.shard_dsns[2]]
        pdb = parallel_connection.connect(dsns)
        proxy.black_hole = True

        def interrupt() -> None:
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt).start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt), pdb.cursor() as cur:
            cur.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - start < 0.5 + CANCEL_GRACE + 0.5
        for dsn in (sample.shard_dsns[0], sample.shard_dsns[2]):
            assert wait_until(lambda d=dsn: active(d, "SELECT pg_sleep(30)%") == 0, 1)
        pools = pdb.pools
        start = time.monotonic()
        pdb.close()  # the black-holed shard's connection is cut, not waited for
        assert time.monotonic() - start < CANCEL_GRACE + 1
        assert all(not p._used for p in pools)


def test_connection_reset_mid_statement_names_the_shard(sample):
    with TcpProxy.for_dsn(sample.shard_dsns[2]) as proxy:
        dsns = [sample.shard_dsns[0], sample.shard_dsns[1], proxy.dsn(sample.shard_dsns[2])]
        pdb = parallel_connection.connect(dsns)
        pools = pdb.pools
        threading.Timer(0.5, proxy.reset).start()
        start = time.monotonic()
        cur = pdb.cursor(merge="union")
        with pytest.raises(psycopg2.OperationalError, match=r"^shard 2 \(127\.0\.0\.1:"), cur:
            cur.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - start < 3
        pdb.close()
        assert all(not p._used for p in pools)
    # The server notices the lost client only after the sleep: end it, so no later test counts it.
    run_on_all(
        [sample.shard_dsns[2]],
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE query = 'SELECT pg_sleep(30)' AND pid <> pg_backend_pid()",
    )


def test_rollback_after_a_black_holed_shard_names_it_instead_of_hanging(sample):
    with TcpProxy.for_dsn(sample.shard_dsns[0]) as proxy:
        pdb = parallel_connection.connect([proxy.dsn(sample.shard_dsns[0]), sample.shard_dsns[1]])
        proxy.black_hole = True
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt), pdb.cursor(merge="union") as cur:
            cur.execute("SELECT pg_sleep(30)")
        start = time.monotonic()
        # The stuck connection was cut: psycopg2 reports it closed, as for any lost connection.
        with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError), match=r"^shard 0 "):
            pdb.rollback()
        assert time.monotonic() - start < CANCEL_GRACE + 1
        pdb.close()


def test_cancel_stops_statements_of_other_threads_at_once(pdb, sample):
    outcome: dict[str, object] = {}

    def sleeper() -> None:
        start = time.monotonic()
        try:
            with pdb.cursor(merge="union") as cur:
                cur.execute("SELECT pg_sleep(10)")
            outcome["result"] = "finished"
        except psycopg2.errors.QueryCanceled:
            outcome["result"] = "cancelled"
        outcome["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=sleeper)
    thread.start()
    assert wait_until(lambda: active(sample.shard_dsns[2], "SELECT pg_sleep(10)%") == 1, 3)
    start = time.monotonic()
    pdb.cancel()
    assert time.monotonic() - start < 1
    thread.join(5)
    assert outcome["result"] == "cancelled"
    assert outcome["seconds"] < 5
    pdb.rollback()


def test_close_frees_every_pool_even_when_a_shard_died(spare):
    pdb = parallel_connection.connect(spare.shard_dsns)
    pools = pdb.pools
    with pdb.cursor(merge="union") as cur:
        cur.execute("SELECT 1")  # a transaction is open on both shards
    spare.stop_server(0)
    try:
        pdb.close()
        assert all(p.closed for p in pools)
        assert all(c.closed for c in pdb.connections)
    finally:
        spare.start_server(0)


def test_statement_timeout_reaches_connections_opened_later(sample):
    with (
        contextlib.closing(
            parallel_connection.connect(sample.shard_dsns, statement_timeout=0.3, maxconn=3)
        ) as pdb,
        pdb,
    ):
        extra = pdb.pools[1].getconn()
        try:
            with extra.cursor() as cur:
                cur.execute("SHOW statement_timeout")
                assert cur.fetchone() == ("300ms",)
        finally:
            pdb.pools[1].putconn(extra)
        assert pdb.statement_timeout == 0.3
        with pytest.raises(AttributeError):
            pdb.statement_timeout = 5
