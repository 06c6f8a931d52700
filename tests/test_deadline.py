"""statement_deadline: a client-side bound that holds when the server or the network stalls."""

from __future__ import annotations

import os
import signal
import time

import psycopg2
import psycopg2.errors
import pytest
from conftest import port_of

import parallel_connection
from parallel_connection.deadline import CUT_GRACE
from parallel_connection.proxy import TcpProxy


def _prefix(dsn: str) -> str:
    return f"shard 1 (127.0.0.1:{port_of(dsn)}/"


def test_a_slow_statement_is_cancelled_at_its_deadline_and_the_connection_stays_usable(sample):
    pdb = parallel_connection.connect(sample.shard_dsns, statement_deadline=0.5)
    try:
        cur = pdb.cursor(merge="union")
        start = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled, match=r"statement deadline of 0\.5 s") as info:
            cur.execute(
                "SELECT pg_sleep(CASE WHEN inet_server_port() = %s THEN 5 ELSE 0 END)",
                (port_of(sample.shard_dsns[1]),),
            )
        assert time.monotonic() - start < 0.5 + 0.8
        assert str(info.value).startswith(_prefix(sample.shard_dsns[1]))
        assert info.value.pgcode == "57014"
        pdb.rollback()
        cur.execute("SELECT count(*) FROM orders")
        assert cur.fetchone()[0] > 0
        assert pdb.closed == 0
    finally:
        pdb.close()


def test_the_cursor_overrides_the_connections_deadline(sample):
    pdb = parallel_connection.connect(sample.shard_dsns, statement_deadline=0.3)
    try:
        free = pdb.cursor(merge="union", statement_deadline=None)
        free.execute("SELECT pg_sleep(0.6), 1")
        assert [r[1] for r in free.fetchall()] == [1, 1, 1]
        bounded = pdb.cursor(merge="union")
        assert bounded.statement_deadline == 0.3
        with pytest.raises(psycopg2.errors.QueryCanceled):
            bounded.execute("SELECT pg_sleep(0.6)")
        pdb.rollback()
        bounded.statement_deadline = 2
        bounded.execute("SELECT pg_sleep(0.6), 2")
        assert [r[1] for r in bounded.fetchall()] == [2, 2, 2]
    finally:
        pdb.close()


@pytest.mark.parametrize("bad", [0, -1, "5", True, float("nan"), float("inf")])
def test_a_deadline_must_be_a_positive_number(sample, bad):
    with pytest.raises(psycopg2.ProgrammingError, match="statement_deadline must be a positive number"):
        parallel_connection.connect(sample.shard_dsns, statement_deadline=bad)


def test_a_black_holed_shard_that_still_acknowledges_tcp_is_cut_at_the_deadline(sample):
    with TcpProxy.for_dsn(sample.shard_dsns[1]) as proxy:
        dsns = [sample.shard_dsns[0], proxy.dsn(sample.shard_dsns[1]), sample.shard_dsns[2]]
        pdb = parallel_connection.connect(dsns, statement_deadline=1.0)
        pools = pdb.pools
        proxy.black_hole = True
        start = time.monotonic()
        with pytest.raises(psycopg2.OperationalError) as info, pdb.cursor() as cur:
            cur.execute("SELECT count(*) FROM orders")
        took = time.monotonic() - start
        assert str(info.value).startswith(_prefix(dsns[1]))
        assert "the connection was cut" in str(info.value)
        assert 1.0 <= took < 1.0 + CUT_GRACE + 1.0
        pdb.close()
        assert all(not p._used for p in pools)


def test_a_frozen_backend_is_cut_at_the_deadline(sample):
    """SIGSTOP on the shard's backend: the server's kernel acknowledges everything, nobody answers."""
    pdb = parallel_connection.connect(sample.shard_dsns, statement_deadline=0.8)
    pid = pdb.connections[1].info.backend_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with (
            pytest.raises(psycopg2.OperationalError, match="the connection was cut") as info,
            pdb.cursor() as cur,
        ):
            cur.execute("SELECT count(*) FROM orders")
        assert str(info.value).startswith(_prefix(sample.shard_dsns[1]))
        assert time.monotonic() - start < 0.8 + CUT_GRACE + 1.0
    finally:
        os.kill(pid, signal.SIGCONT)
        pdb.close()


def test_a_streaming_fetch_has_the_deadline_per_batch(sample):
    pdb = parallel_connection.connect(sample.shard_dsns, statement_deadline=0.6)
    try:
        cur = pdb.cursor("slow_stream", merge="union")
        cur.itersize = 2
        # Every shard: the first batch is quick, the next ones take 0.4 s a row (0.8 s a batch).
        cur.execute("SELECT g, CASE WHEN g > 2 THEN pg_sleep(0.4) END FROM generate_series(1, 8) g")
        assert sorted(r[0] for r in cur.fetchmany(6)) == [1, 1, 1, 2, 2, 2]
        start = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled, match="statement deadline"):
            cur.fetchall()
        assert time.monotonic() - start < 0.6 + 1.0
    finally:
        pdb.close()
