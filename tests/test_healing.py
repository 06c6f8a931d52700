"""A shard connection that broke is replaced from its pool on the next statement outside a transaction.

Each behaviour is set beside one plain psycopg2 connection's where they can
be compared: in a transaction the error stays, as there; between
transactions the ParallelConnection goes on, as a pooled application would.
"""

from __future__ import annotations

import contextlib
import threading
import time

import psycopg2
import psycopg2.extensions
import pytest
from conftest import port_of, wait_until

import parallel_connection
from parallel_connection.local import LocalCluster
from parallel_connection.pool import WaitingPool


@pytest.fixture(scope="module")
def pair():
    """Two servers of our own, so tests may stop and kill them."""
    with LocalCluster(2) as cluster:
        for dsn in cluster.shard_dsns:
            with contextlib.closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
                cur.execute("DROP TABLE IF EXISTS heal_t")
                cur.execute("CREATE TABLE heal_t (id int PRIMARY KEY, v text)")
                cur.execute("INSERT INTO heal_t SELECT g, 'v' || g FROM generate_series(1, 10) g")
        yield cluster


@pytest.fixture
def pdb(pair):
    conn = parallel_connection.connect(pair.shard_dsns)
    yield conn
    if not conn._closed:
        conn.close()


def _terminate(dsn: str, pid: int) -> None:
    with contextlib.closing(psycopg2.connect(dsn)) as killer, killer.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    gone = f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
    assert wait_until(lambda: _one(dsn, gone) == 0)


def _one(dsn: str, query: str) -> object:
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchone()[0]


def _restart(pair: LocalCluster, index: int) -> None:
    pair.stop_server(index, "fast")  # the throwaway servers do not sync: "immediate" may lose the rows
    pair.start_server(index)


def _count(cur) -> int:
    cur.execute("SELECT count(*) FROM heal_t")
    return cur.fetchone()[0]


def test_a_restarted_shard_needs_no_new_connection(pair, pdb):
    cur = pdb.cursor()
    assert _count(cur) == 20
    pdb.rollback()
    before = pdb.connections[1].info.backend_pid
    _restart(pair, 1)
    assert _count(cur) == 20  # the cursor made before the restart, too
    assert pdb.closed == 0
    assert pdb.connections[1].info.backend_pid != before
    with pdb.cursor() as other:
        assert _count(other) == 20
    pdb.rollback()


def test_a_restart_of_every_shard_in_autocommit(pair, pdb):
    pdb.autocommit = True
    with pdb.cursor() as cur:
        assert _count(cur) == 20
        for i in range(2):
            _restart(pair, i)
        assert _count(cur) == 20
        assert pdb.autocommit is True
        assert all(c.autocommit for c in pdb.connections)


def test_a_terminated_backend_is_replaced_between_transactions(pair, pdb):
    with pdb.cursor() as cur:
        _count(cur)
        pdb.commit()
        _terminate(pair.shard_dsns[0], pdb.connections[0].info.backend_pid)
        assert _count(cur) == 20
    pdb.rollback()


def test_in_a_transaction_the_error_stays_as_on_one_connection(pair, pdb):
    plain = psycopg2.connect(pair.shard_dsns[1])
    with plain.cursor() as cur:
        cur.execute("SELECT 1")
    _terminate(pair.shard_dsns[1], plain.info.backend_pid)
    with pytest.raises(psycopg2.OperationalError), plain.cursor() as cur:
        cur.execute("SELECT 1")  # plain psycopg2: the transaction's connection is gone
    with pytest.raises(psycopg2.InterfaceError):
        plain.cursor()  # and stays gone

    cur = pdb.cursor()
    _count(cur)  # a transaction is open on both shards
    _terminate(pair.shard_dsns[1], pdb.connections[1].info.backend_pid)
    with pytest.raises(psycopg2.OperationalError) as info:
        _count(cur)
    assert str(info.value).startswith(f"shard 1 (127.0.0.1:{port_of(pair.shard_dsns[1])}/")
    with pytest.raises(psycopg2.InterfaceError):
        _count(cur)  # still in the failed transaction: nothing was replaced under it
    with pytest.raises(psycopg2.InterfaceError):
        pdb.commit()  # the others roll back; the broken one is gone, as plain psycopg2's commit says
    with pytest.raises(psycopg2.InterfaceError):
        plain.commit()
    assert all(c.closed or c.get_transaction_status() == 0 for c in pdb.connections)
    pdb.rollback()
    assert _count(cur) == 20  # the transaction ended: the shard was replaced
    pdb.rollback()


def test_a_write_in_a_transaction_is_never_lost_silently(pair):
    placement = parallel_connection.Placement(sharded={"heal_t": ("id", "modulo")})
    with contextlib.closing(parallel_connection.connect(pair.shard_dsns, placement=placement)) as pdb:
        cur = pdb.cursor()
        cur.execute("INSERT INTO heal_t VALUES (101, 'lost')")  # 101 % 2: shard 1 only
        _terminate(pair.shard_dsns[1], pdb.connections[1].info.backend_pid)
        cur.execute("SELECT count(*) FROM heal_t WHERE id = 100")  # shard 0 only: it runs
        with pytest.raises(psycopg2.Error):
            pdb.commit()  # the shard that holds the write is gone: the commit says so
        pdb.rollback()
        cur.execute("SELECT count(*) FROM heal_t WHERE id = 101")
        assert cur.fetchone()[0] == 0


def test_the_session_is_carried_over(pair, pdb):
    pdb.set_session(isolation_level="REPEATABLE READ", readonly=True)
    with pdb.cursor() as cur:
        cur.execute("SET TimeZone = 'Pacific/Chatham'")
        cur.execute("SET search_path = pg_catalog, public")
        pdb.commit()
        cur.execute("SET extra_float_digits = 3")
        _count(cur)
        pdb.rollback()  # undoes that SET: it must not come back on the new connection
        _terminate(pair.shard_dsns[1], pdb.connections[1].info.backend_pid)
    with pdb.cursor(merge="union") as cur:  # each shard's own answer: both must be alike
        cur.execute(
            "SELECT current_setting('TimeZone'), current_setting('search_path'), "
            "current_setting('transaction_isolation'), current_setting('transaction_read_only'), "
            "current_setting('extra_float_digits') FROM heal_t WHERE id = 1"
        )
        assert cur.fetchall() == [("Pacific/Chatham", "pg_catalog, public", "repeatable read", "on", "1")] * 2
        pdb.rollback()
        fresh = pdb.connections[1]
        assert (fresh.isolation_level, fresh.readonly) == (
            psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ,
            True,
        )


def test_a_shard_still_down_is_named_and_heals_when_back(pair, pdb):
    with pdb.cursor() as cur:
        _count(cur)
        pdb.rollback()
        pair.stop_server(0, "fast")
        try:
            with pytest.raises(psycopg2.OperationalError) as info:
                _count(cur)
            message = str(info.value)
            assert message.startswith(f"shard 0 (127.0.0.1:{port_of(pair.shard_dsns[0])}/")
            assert "could not be made" in message
        finally:
            pair.start_server(0)
        assert _count(cur) == 20
        pdb.rollback()
    pools = pdb.pools
    pdb.close()
    assert all(not p._used for p in pools)  # no slot leaked by the failed attempt


def test_the_pool_checks_what_it_lends(pair):
    pool = WaitingPool(2, 2, dsn=pair.shard_dsns[0])
    try:
        held = [pool.getconn(), pool.getconn()]
        for conn in held:
            pool.putconn(conn)
        _restart(pair, 0)
        time.sleep(0.1)
        for _ in range(2):
            conn = pool.getconn()
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchone() == (1,)
            pool.putconn(conn)
    finally:
        pool.closeall()


def test_connections_made_without_pools_stay_broken(pair):
    conns = [psycopg2.connect(dsn) for dsn in pair.shard_dsns]
    pdb = parallel_connection.ParallelConnection(conns)
    try:
        _terminate(pair.shard_dsns[1], conns[1].info.backend_pid)
        with pytest.raises(psycopg2.Error), pdb.cursor() as cur:
            _count(cur)
    finally:
        for conn in conns:
            conn.close()


def test_what_was_registered_on_the_connection_reaches_the_new_one(pair, pdb):
    as_text = psycopg2.extensions.new_type((23,), "INT4_AS_TEXT", lambda value, cur: f"<{value}>")
    psycopg2.extensions.register_type(as_text, pdb)
    with pdb.cursor(merge="union") as cur:
        cur.execute("SELECT id FROM heal_t WHERE id = 3")
        assert cur.fetchall() == [("<3>",), ("<3>",)]
        pdb.rollback()
        _terminate(pair.shard_dsns[1], pdb.connections[1].info.backend_pid)
        cur.execute("SELECT id FROM heal_t WHERE id = 3")
        assert cur.fetchall() == [("<3>",), ("<3>",)]  # shard 1's rows come from the new connection
    pdb.rollback()


def test_a_new_cursor_after_the_break_heals_too(pair, pdb):
    pdb.autocommit = True
    with pdb.cursor() as cur:
        _count(cur)
    pdb.connections[0].close()  # as psycopg2 leaves a connection it found broken
    with pdb.cursor() as cur:
        assert _count(cur) == 20
    assert pdb.closed == 0


def test_threads_hammering_a_broken_shard_let_it_heal(pair, pdb):
    pdb.autocommit = True
    stop = threading.Event()
    answered = []

    def worker() -> None:
        while not stop.is_set():
            try:
                with pdb.cursor(merge="union") as cur:
                    cur.execute("SELECT 1 FROM pg_sleep(0.005)")
                    answered.append(len(cur.fetchall()))
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                pass

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        _terminate(pair.shard_dsns[0], pdb.connections[0].info.backend_pid)
        time.sleep(0.5)
        before = len(answered)
        assert wait_until(lambda: len(answered) > before + 20, 5)  # the statements answer again
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    assert pdb.closed == 0
