"""Threads sharing one connection: a statement's failure stops only that statement, on real servers."""

from __future__ import annotations

import collections
import threading
import time

import psycopg2
import psycopg2.errors
import pytest
from conftest import port_of, run_on_all

import parallel_connection

COUNT = "SELECT count(*), sum(id) FROM orders WHERE id %% 7 = %s AND pg_sleep(0) IS NOT NULL"


def _expected(ref_dsn: str) -> dict[int, tuple[int, int]]:
    with psycopg2.connect(ref_dsn) as ref, ref.cursor() as cur:
        out = {}
        for k in range(7):
            cur.execute(COUNT, (k,))
            out[k] = tuple(cur.fetchone())
        return out


def _sleepy_failure(port: int) -> str:
    # Fails on one shard only, after the others have started sleeping.
    return (
        "SELECT pg_sleep(CASE WHEN inet_server_port() = %(port)s THEN 0.01 ELSE 0.3 END), "
        "1 / (inet_server_port() - %(port)s)"
    ).replace("%(port)s", str(port))


@pytest.mark.parametrize("threads", [32])
def test_one_threads_failures_never_reach_the_other_threads(sample, threads):
    expected = _expected(sample.reference_dsn)
    pdb = parallel_connection.connect(sample.shard_dsns, maxconn=2)
    pdb.autocommit = True
    failing = _sleepy_failure(port_of(sample.shard_dsns[1]))
    stop = threading.Event()
    wrong: list[object] = []
    errors: list[BaseException] = []
    injected = collections.Counter()
    done = collections.Counter()

    def worker(n: int) -> None:
        cur = pdb.cursor()
        k = n % 7
        while not stop.is_set():
            try:
                cur.execute(COUNT, (k,))
                row = cur.fetchone()
            except BaseException as exc:
                errors.append(exc)
                return
            if row != expected[k]:
                wrong.append((k, row))
            done[n] += 1

    def injector() -> None:
        cur = pdb.cursor(merge="union")
        while not stop.is_set():
            try:
                cur.execute(failing)
            except psycopg2.errors.DivisionByZero as exc:
                assert str(exc).startswith("shard 1 ")
                injected["division"] += 1
            except BaseException as exc:
                errors.append(exc)
                return

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads - 1)]
    pool.append(threading.Thread(target=injector))
    for t in pool:
        t.start()
    time.sleep(6)
    stop.set()
    for t in pool:
        t.join(30)
    try:
        assert not errors, errors[:3]
        assert not wrong, wrong[:3]
        assert injected["division"] >= 5
        assert sum(done.values()) >= threads
        assert pdb.closed == 0
        with pdb.cursor() as cur:
            cur.execute(COUNT, (3,))
            assert cur.fetchone() == expected[3]
    finally:
        pools = pdb.pools
        pdb.close()
    assert all(not p._used for p in pools)


def test_a_failure_does_not_cancel_another_threads_statement_on_the_same_shard(sample):
    """The failing statement's cancels for shards 0 and 2 must not land on the other thread's sleep
    there."""
    pdb = parallel_connection.connect(sample.shard_dsns)
    pdb.autocommit = True
    outcome: dict[str, object] = {}

    def sleeper() -> None:
        try:
            outcome["rows"] = pdb.shard_set.run(lambda i: _sleep(pdb.connections[i], 1.5), [0, 2])
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=sleeper)
    thread.start()
    time.sleep(0.3)
    with pytest.raises(psycopg2.errors.DivisionByZero), pdb.cursor(merge="union") as cur:
        cur.execute(_sleepy_failure(port_of(sample.shard_dsns[1])))
    thread.join(10)
    try:
        assert "error" not in outcome, outcome.get("error")
        assert outcome["rows"] == ["slept", "slept"]
        assert pdb.closed == 0
        with pdb.cursor() as cur:
            cur.execute("SELECT count(*) FROM orders")
            assert cur.fetchone()[0] > 0
    finally:
        pdb.close()


def test_statements_of_two_threads_on_other_shards_run_at_once(sample):
    """Turns are per shard: a long statement on shard 0 does not hold up a statement on shard 1."""
    pdb = parallel_connection.connect(sample.shard_dsns)
    pdb.autocommit = True
    slow_on_0 = threading.Thread(
        target=lambda: pdb.shard_set.run(lambda i: _sleep(pdb.connections[i], 1.0), [0])
    )
    slow_on_0.start()
    time.sleep(0.2)
    start = time.monotonic()
    pdb.shard_set.run(lambda i: _sleep(pdb.connections[i], 0.0), [1])
    quick = time.monotonic() - start
    start = time.monotonic()
    pdb.shard_set.run(lambda i: _sleep(pdb.connections[i], 0.0), [0])
    waited = time.monotonic() - start
    slow_on_0.join()
    pdb.close()
    assert quick < 0.5
    assert waited > 0.4  # shard 0's turn came after the long statement


def _sleep(conn: psycopg2.extensions.connection, seconds: float) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_sleep(%s), 'slept'", (seconds,))
        return cur.fetchone()[1]


def test_another_threads_write_never_joins_an_autocommit_writes_transaction(sample):
    """A write on several shards in autocommit is one transaction until it commits; a write of
    another thread waits for it, and is not rolled back with it."""
    run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS iso_items")
    run_on_all(sample.shard_dsns, "CREATE TABLE iso_items (id int PRIMARY KEY)")
    pdb = parallel_connection.connect(sample.shard_dsns)
    pdb.autocommit = True
    other: dict[str, object] = {}

    def insert(i: int, *ids: int) -> None:
        with pdb.connections[i].cursor() as cur:
            cur.execute("INSERT INTO iso_items VALUES " + ", ".join(["(%s)"] * len(ids)), ids)

    def other_thread() -> None:
        time.sleep(0.2)
        try:
            pdb.shard_set.run(lambda i: insert(i, 100), [0])
            other["done"] = time.monotonic()
        except BaseException as exc:
            other["error"] = exc

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        with pytest.raises(psycopg2.errors.UniqueViolation), pdb.shard_set.write_scope([0, 1]):
            pdb.shard_set.run(lambda i: insert(i, 1), [0])
            time.sleep(0.6)
            pdb.shard_set.run(lambda i: insert(i, 2, 2), [1])
        ended = time.monotonic()
        thread.join(10)
        assert "error" not in other, other.get("error")
        assert other["done"] >= ended - 0.05  # it waited for the write's transaction to end
        with psycopg2.connect(sample.shard_dsns[0]) as conn, conn.cursor() as cur:
            cur.execute("SELECT id FROM iso_items ORDER BY id")
            assert cur.fetchall() == [(100,)]  # the other thread's row stayed; the failed write's went
    finally:
        pdb.close()
        run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS iso_items")


def _progress_of(loops: dict[str, str], pdb, seconds: float) -> dict[str, int]:
    """Run each statement in a loop on a thread of its own for ``seconds``; how often each ran (the
    threads are daemons: a deadlock shows as a count that stops, not as a hung suite)."""
    stop = threading.Event()
    counts = dict.fromkeys(loops, 0)
    errors: list[BaseException] = []

    def loop(key: str, sql: str) -> None:
        cur = pdb.cursor()
        while not stop.is_set():
            try:
                cur.execute(sql)
            except BaseException as exc:
                errors.append(exc)
                return
            counts[key] += 1

    threads = [threading.Thread(target=loop, args=item, daemon=True) for item in loops.items()]
    for t in threads:
        t.start()
    time.sleep(seconds / 2)
    halfway = dict(counts)
    time.sleep(seconds / 2)
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors, errors[:3]
    return {key: counts[key] - halfway[key] for key in counts}


def test_writes_on_several_shards_and_reads_from_more_threads_than_workers_keep_going(sample):
    """A write's own transaction holds its shards; calls of other threads waiting for them must
    never take every worker thread from the write's own calls."""
    run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS iso_counts")
    run_on_all(sample.shard_dsns, "CREATE TABLE iso_counts (id int PRIMARY KEY, v int)")
    run_on_all(sample.shard_dsns, "INSERT INTO iso_counts SELECT g, 0 FROM generate_series(1, 30) g")
    pdb = parallel_connection.connect(sample.shard_dsns, max_workers=2)
    pdb.autocommit = True
    try:
        loops = {"write": "UPDATE iso_counts SET v = v + 1"}
        loops.update({f"read{n}": "SELECT count(*) FROM iso_counts" for n in range(5)})
        loops["set"] = "SET work_mem = '4MB'"  # the catalog facts are read again after each
        progress = _progress_of(loops, pdb, 4.0)
        assert all(n > 0 for n in progress.values()), progress
    finally:
        pdb.close()
        run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS iso_counts")


def _sleeper(pdb, seconds: float, outcome: dict[str, object]) -> threading.Thread:
    def run() -> None:
        try:
            with pdb.cursor(merge="union") as cur:
                cur.execute("SELECT 'slept' FROM pg_sleep(%s)", (seconds,))
                outcome["rows"] = cur.fetchall()
        except BaseException as exc:
            outcome["error"] = exc

    return threading.Thread(target=run)


def test_an_interrupted_copy_never_cancels_another_threads_statement(sample, monkeypatch):
    """Ctrl-C while the COPY's shard calls wait for their turn behind another thread's statement."""
    import io
    import os
    import signal

    from parallel_connection import copy_run

    run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS iso_copied")
    run_on_all(sample.shard_dsns, "CREATE TABLE iso_copied (id int, v int)")
    pdb = parallel_connection.connect(sample.shard_dsns, replicated_tables=["iso_copied"])
    outcome: dict[str, object] = {}
    other = _sleeper(pdb, 2.0, outcome)
    real = copy_run._pump

    def pump(*args, **kwargs):  # the other thread's statement takes the shards first
        other.start()
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(copy_run, "_pump", pump)
    threading.Timer(0.6, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            pdb.cursor().copy_from(io.StringIO("1\t0\n"), "iso_copied")
        other.join(10)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["rows"] == [("slept",)] * 3
        assert pdb.closed == 0
    finally:
        pdb.close()
        run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS iso_copied")


def test_an_interrupted_scan_on_the_connections_own_sessions_never_cancels_another_thread(sample):
    """Without pools a scan lends the connection's own shard connections: in their turn, so the
    scan's Ctrl-C reaches only its ranges."""
    import os
    import signal

    pdb = parallel_connection.ParallelConnection([psycopg2.connect(d) for d in sample.shard_dsns])
    pdb.autocommit = True
    outcome: dict[str, object] = {}
    other = _sleeper(pdb, 1.5, outcome)
    threading.Timer(0.3, other.start).start()
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        report = pdb.scan_ranges(
            "orders", "id", lambda cur, r: cur.execute("SELECT pg_sleep(0.2)"), rows_per_range=50
        )
        assert report.interrupted
        other.join(10)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["rows"] == [("slept",)] * 3
    finally:
        pdb.close()
