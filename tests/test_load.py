"""Load: many threads share one ParallelConnection; no error, no leaked connection."""

from __future__ import annotations

import threading
import time

import psycopg2

import parallel_connection

THREADS = 32
SECONDS = 3.0


def _backends(dsn: str) -> int:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid()"
            )
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_32_threads_share_one_connection(sample, ref):
    with ref.cursor() as rcur:
        rcur.execute("SELECT count(*) FROM orders WHERE status = 'paid'")
        expected = rcur.fetchone()[0]
    before = [_backends(d) for d in sample.shard_dsns]
    pdb = parallel_connection.connect(sample.shard_dsns, maxconn=2)
    pools = pdb.pools
    errors: list[BaseException] = []
    done = [0] * THREADS
    stop = time.monotonic() + SECONDS

    def work(n: int) -> None:
        try:
            while time.monotonic() < stop:
                with pdb.cursor(name=f"load{n}" if n % 4 == 0 else None) as cur:
                    cur.execute("SELECT id FROM orders WHERE status = %s", ("paid",))
                    rows = cur.fetchall()
                if len(rows) != expected:
                    raise AssertionError(f"thread {n}: {len(rows)} rows, expected {expected}")
                done[n] += 1
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pdb.rollback()
    pdb.close()
    assert errors == []
    assert all(n > 0 for n in done), "every thread got its statements through"
    assert all(not p._used for p in pools)
    deadline = time.monotonic() + 5
    while [_backends(d) for d in sample.shard_dsns] != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [_backends(d) for d in sample.shard_dsns] == before
