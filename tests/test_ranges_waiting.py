"""Range jobs wait for connections: scans at once on one connection, pools held by the user, timeouts."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter

import psycopg2
import psycopg2.pool
import pytest
from conftest import first_rows, run_on_all

import parallel_connection
from parallel_connection.pool import PoolTimeout, WaitingPool

IDS = 400
COUNT = (
    "SELECT count(*) AS n, sum(id) AS ids FROM ranges_wait, pg_sleep(0.002) "
    "WHERE id BETWEEN %(start)s AND %(end)s"
)


@pytest.fixture(scope="module")
def table(sample):
    """``ranges_wait``: ids 1..400 plus a shard-dependent number more on each shard."""
    for shard, dsn in enumerate(sample.shard_dsns):
        run_on_all(
            [dsn],
            "DROP TABLE IF EXISTS ranges_wait; CREATE TABLE ranges_wait (id int PRIMARY KEY);"
            "INSERT INTO ranges_wait SELECT generate_series(1, %(n)s)",
            {"n": IDS + 10 * shard},
        )
    yield sample
    run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS ranges_wait")


def direct_counts(dsns):
    """Each shard's own answer, on a plain connection."""
    return first_rows(dsns, "SELECT count(*), sum(id) FROM ranges_wait")


def per_shard(report):
    sums = Counter()
    counts = Counter()
    for r in report.results:
        counts[r.shard.index] += r.value[0]["n"]
        sums[r.shard.index] += r.value[0]["ids"] or 0
    return [(counts[i], sums[i]) for i in sorted(counts)]


def at_once(n, scan):
    """``scan()`` in ``n`` threads started together; their reports (an error fails the test)."""
    start = threading.Barrier(n)
    reports: list = [None] * n
    errors: list = []

    def run(k: int) -> None:
        try:
            start.wait()
            reports[k] = scan()
        except BaseException as exc:  # pragma: no cover - the failure is the point
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return reports


def test_four_scans_at_once_on_one_connection_all_finish_exactly(table):
    expected = direct_counts(table.shard_dsns)
    with contextlib.closing(parallel_connection.connect(table.shard_dsns, maxconn=2)) as pdb, pdb:
        reports = at_once(
            4, lambda: pdb.scan_ranges("ranges_wait", "id", COUNT, rows_per_range=20, progress=False)
        )
        for report in reports:
            assert report.ok and not report.failed and not report.pending, report.summary()
            assert per_shard(report) == expected
            assert all(r.attempts == 1 for r in report.results), "nothing failed and was retried"
        assert sum(p.stats()["waited"] for p in pdb.pools) > 0, "the scans did contend for the pools"
        assert all(len(p._used) == 1 for p in pdb.pools), "every borrowed connection went back"
        assert all(not p.waiting for p in pdb.pools)


@pytest.mark.parametrize("maxconn", [2, 3])
def test_snapshot_scans_at_once_all_finish(table, maxconn):
    expected = direct_counts(table.shard_dsns)
    with contextlib.closing(parallel_connection.connect(table.shard_dsns, maxconn=maxconn)) as pdb, pdb:
        reports = at_once(
            3,
            lambda: pdb.scan_ranges(
                "ranges_wait", "id", COUNT, rows_per_range=100, snapshot=True, progress=False
            ),
        )
        assert all(r.ok and per_shard(r) == expected for r in reports)
        assert all(len(p._used) == 1 for p in pdb.pools)


def test_the_users_statements_run_while_a_scan_runs_in_another_thread(table):
    with contextlib.closing(parallel_connection.connect(table.shard_dsns, maxconn=2)) as pdb, pdb:
        running = threading.Event()
        result = {}

        def slow(cur, r):
            running.set()
            cur.execute(
                "SELECT count(*), pg_sleep(0.05) FROM ranges_wait WHERE id BETWEEN %s AND %s",
                (r.start, r.end),
            )
            return {"n": cur.fetchone()[0]}

        thread = threading.Thread(
            target=lambda: result.setdefault(
                "report", pdb.scan_ranges("ranges_wait", "id", slow, rows_per_range=100, progress=False)
            )
        )
        thread.start()
        assert running.wait(10)
        with pdb.cursor() as cur:  # the connection's own shard connections are the user's alone
            cur.execute("SELECT count(*) FROM ranges_wait")
            assert cur.fetchone()[0] == 3 * IDS + 30
        pdb.commit()
        thread.join(30)
        assert result["report"].ok and result["report"].totals()["n"] == 3 * IDS + 30


def test_a_range_waits_for_a_connection_the_user_holds_and_runs_once_given_back(table):
    with contextlib.closing(parallel_connection.connect(table.shard_dsns, maxconn=2)) as pdb, pdb:
        first = threading.Event()
        grabbed = threading.Event()
        seen: list[tuple[int, float]] = []

        def work(cur, r):
            seen.append((r.shard.index, time.monotonic()))
            cur.execute("SELECT count(*) FROM ranges_wait WHERE id BETWEEN %s AND %s", (r.start, r.end))
            if r.shard.index == 1:
                first.set()
                grabbed.wait(10)
            return {"n": cur.fetchone()[0]}

        result = {}
        thread = threading.Thread(
            target=lambda: result.setdefault(
                "report",
                pdb.scan_ranges(
                    "ranges_wait", "id", work, rows_per_range=100, pool_timeout=10, progress=False
                ),
            )
        )
        thread.start()
        assert first.wait(10)
        # The user asks shard 1's pool for a connection while the scan uses its only free one:
        # the user waits, the scan gives it over after its range, and its next range waits in turn.
        taker = {}
        t = threading.Thread(target=lambda: taker.setdefault("conn", pdb.pools[1].getconn(timeout=10)))
        t.start()
        while not pdb.pools[1].waiting:
            time.sleep(0.005)
        grabbed.set()
        t.join(10)
        held_at = time.monotonic()
        time.sleep(0.5)
        given_back = time.monotonic()
        pdb.pools[1].putconn(taker["conn"])
        thread.join(30)
        report = result["report"]
        assert report.ok and not report.failed, report.summary()
        assert report.totals()["n"] == 3 * IDS + 30
        starts = [at for shard, at in seen if shard == 1]
        assert any(at >= given_back for at in starts), "a shard-1 range ran once the connection came back"
        assert not any(held_at < at < given_back for at in starts), "no shard-1 range ran meanwhile"
        assert all(len(p._used) == 1 for p in pdb.pools)


def test_planning_waits_for_a_pool_the_user_holds(table):
    with contextlib.closing(parallel_connection.connect(table.shard_dsns, maxconn=2)) as pdb, pdb:
        held = pdb.pools[2].getconn()
        timer = threading.Timer(0.4, pdb.pools[2].putconn, (held,))
        began = time.monotonic()
        timer.start()
        report = pdb.scan_ranges("ranges_wait", "id", COUNT, rows_per_range=100, pool_timeout=10)
        assert time.monotonic() - began >= 0.4
        assert report.ok and per_shard(report) == direct_counts(table.shard_dsns)


def test_held_past_the_timeout_fails_clearly_naming_the_shard_and_the_timeout(table):
    with contextlib.closing(parallel_connection.connect(table.shard_dsns, maxconn=2)) as pdb, pdb:
        held = pdb.pools[1].getconn()
        try:
            began = time.monotonic()
            with pytest.raises(PoolTimeout) as info:
                pdb.scan_ranges("ranges_wait", "id", COUNT, rows_per_range=100, pool_timeout=0.5)
            took = time.monotonic() - began
        finally:
            pdb.pools[1].putconn(held)
        message = str(info.value)
        assert message.startswith(str(pdb.shards[1])), message
        assert "after 0.5 s" in message and "pool_timeout=0.5" in message and "maxconn=2" in message
        assert 0.5 <= took < 3, "no hang"
        assert isinstance(info.value, parallel_connection.PoolTimeout)
        assert all(len(p._used) == 1 for p in pdb.pools), "what the scan borrowed went back"


def test_a_range_waiting_past_the_timeout_fails_alone(table):
    with contextlib.closing(parallel_connection.connect(table.shard_dsns, maxconn=2)) as pdb, pdb:
        taken = {}

        def work(cur, r):
            if r.shard.index == 1 and "conn" not in taken:
                # Ask for shard 1's only free connection; it comes once this range gives it back.
                t = threading.Thread(
                    target=lambda: taken.setdefault("conn", pdb.pools[1].getconn(timeout=10))
                )
                t.start()
                while not pdb.pools[1].waiting:
                    time.sleep(0.005)
            cur.execute("SELECT count(*) FROM ranges_wait WHERE id BETWEEN %s AND %s", (r.start, r.end))
            return {"n": cur.fetchone()[0]}

        began = time.monotonic()
        report = pdb.scan_ranges(
            "ranges_wait", "id", work, rows_per_range=200, pool_timeout=0.3, progress=False
        )
        took = time.monotonic() - began
        pdb.pools[1].putconn(taken["conn"])
        assert report.failed and all(f.shard.index == 1 for f in report.failed)
        assert all(isinstance(f.error, PoolTimeout) and f.attempts == 1 for f in report.failed)
        assert "after 0.3 s (pool_timeout=0.3)" in str(report.failed[0].error)
        assert str(pdb.shards[1]) in str(report.failed[0].error)
        assert {r.shard.index for r in report.results} == {0, 1, 2}
        assert took < 5
        assert all(len(p._used) == 1 for p in pdb.pools)


def test_without_pools_scans_at_once_take_turns_on_the_own_connections(table):
    conns = [psycopg2.connect(d) for d in table.shard_dsns]
    pdb = parallel_connection.ParallelConnection(conns)
    try:
        reports = at_once(
            3, lambda: pdb.scan_ranges("ranges_wait", "id", COUNT, rows_per_range=100, progress=False)
        )
        expected = direct_counts(table.shard_dsns)
        assert all(r is not None and r.ok and per_shard(r) == expected for r in reports)
        assert all(c.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE for c in conns)
        assert pdb.autocommit is False
    finally:
        pdb.close()


def test_a_plain_pool_is_polled_rather_than_failed(table):
    pools = [psycopg2.pool.ThreadedConnectionPool(1, 2, dsn=d) for d in table.shard_dsns]
    conns = [p.getconn() for p in pools]
    pdb = parallel_connection.ParallelConnection(conns, pools=pools)
    held = pools[0].getconn()
    timer = threading.Timer(0.3, pools[0].putconn, (held,))
    try:
        timer.start()
        report = pdb.scan_ranges("ranges_wait", "id", COUNT, rows_per_range=100, progress=False)
        assert report.ok and per_shard(report) == direct_counts(table.shard_dsns)
    finally:
        timer.join()
        pdb.putconn(pools)
        for pool in pools:
            pool.closeall()


# -- the pool itself ----------------------------------------------------------------------


def test_waiting_pool_serves_callers_in_order_and_times_out(sample):
    pool = WaitingPool(1, 1, dsn=sample.shard_dsns[0], name="shard 0 (test)")
    try:
        first = pool.getconn()
        got: list[int] = []

        def take(k: int) -> None:
            conn = pool.getconn(timeout=5)
            got.append(k)
            pool.putconn(conn)

        threads = []
        for k in range(3):
            threads.append(threading.Thread(target=take, args=(k,)))
            threads[-1].start()
            while pool.waiting < k + 1:
                time.sleep(0.002)
        pid = first.info.backend_pid
        pool.putconn(first)
        for t in threads:
            t.join(5)
        assert got == [0, 1, 2], "first come, first served"
        again = pool.getconn()
        assert again.info.backend_pid == pid, "handed over, not reconnected"
        began = time.monotonic()
        with pytest.raises(
            PoolTimeout, match=r"after 0.2 s: all 1 connections of the pool of shard 0 \(test\)"
        ):
            pool.getconn(timeout=0.2)
        assert 0.2 <= time.monotonic() - began < 1
        assert pool.stats()["timeouts"] == 1 and pool.stats()["waited"] == 4
        ended: list[BaseException] = []

        def wait_for_one() -> None:
            try:
                pool.getconn(timeout=5)
            except psycopg2.pool.PoolError as exc:
                ended.append(exc)

        waiter = threading.Thread(target=wait_for_one)
        waiter.start()
        while not pool.waiting:
            time.sleep(0.002)
        pool.closeall()
        waiter.join(5)
        assert not waiter.is_alive() and "closed" in str(ended[0]), "closing the pool ends the waits"
    finally:
        if not pool.closed:
            pool.closeall()
