"""32 threads, backends killed at random: never a wrong answer, no leaked slot or backend, flat memory.

The short run is part of the suite; ``make soak`` runs the long one (``-m slow``; its length in
seconds from PARALLEL_CONNECTION_SOAK_SECONDS, 180 by default).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from typing import Any

import psycopg2
import pytest

import parallel_connection

STATEMENTS: list[tuple[str, tuple[Any, ...]]] = [
    ("SELECT count(*), sum(amount) FROM orders WHERE id %% 5 = %s", (k,)) for k in range(5)
] + [
    ("SELECT status, count(*) FROM orders GROUP BY status ORDER BY status", ()),
    ("SELECT id, amount FROM orders ORDER BY amount DESC NULLS LAST, id LIMIT 7", ()),
    ("SELECT customer_id, max(amount) FROM orders WHERE id = %s GROUP BY customer_id", (42,)),
    ("SELECT count(DISTINCT customer_id) FROM orders", ()),
    (
        "SELECT c.country, count(*) FROM orders o JOIN customers c ON c.id = o.customer_id "
        "GROUP BY c.country ORDER BY c.country NULLS FIRST",
        (),
    ),
]
WORKERS = 32
CONNECTIONS = 4
ALLOWED = (psycopg2.OperationalError, psycopg2.InterfaceError)
"""What a killed backend may cost a statement: an error, never a wrong answer."""


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _backends(dsn: str) -> list[int]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid() AND datname = current_database()"
            )
            return [pid for (pid,) in cur.fetchall()]
    finally:
        conn.close()


class _Connections:
    """A few shared ParallelConnections, kept for the whole soak: a shard connection whose backend
    was killed is replaced by the connection itself before its next statement."""

    def __init__(self, dsns: list[str]) -> None:
        self.live = [parallel_connection.connect(dsns, maxconn=2) for _ in range(CONNECTIONS)]
        for pdb in self.live:
            pdb.autocommit = True

    def get(self, n: int) -> parallel_connection.ParallelConnection:
        return self.live[n % CONNECTIONS]

    def close(self) -> list[Any]:
        pools = []
        for pdb in self.live:
            pools.extend(pdb.pools or [])
            pdb.close()
        return pools


def _soak(sample: Any, seconds: float) -> None:
    with psycopg2.connect(sample.reference_dsn) as ref, ref.cursor() as cur:
        expected = []
        for sql, params in STATEMENTS:
            cur.execute(sql, params)
            expected.append(cur.fetchall())
    baseline = {dsn: set(_backends(dsn)) for dsn in sample.shard_dsns}
    conns = _Connections(sample.shard_dsns)
    stop = threading.Event()
    wrong: list[Any] = []
    unexpected: list[BaseException] = []
    counts: Counter[str] = Counter()
    rss: list[float] = []

    def worker(n: int) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            k = rng.randrange(len(STATEMENTS))
            sql, params = STATEMENTS[k]
            try:
                with conns.get(n).cursor() as cur:
                    cur.execute(sql, params)
                    rows = cur.fetchall()
            except ALLOWED:
                counts["failed"] += 1
                continue
            except BaseException as exc:
                unexpected.append(exc)
                return
            counts["answered"] += 1
            if [tuple(r) for r in rows] != [tuple(r) for r in expected[k]]:
                wrong.append((sql, rows))

    def killer() -> None:
        rng = random.Random(0)
        while not stop.wait(rng.uniform(0.2, 0.6)):
            dsn = rng.choice(sample.shard_dsns)
            pids = sorted(set(_backends(dsn)) - baseline[dsn])
            if pids:
                with psycopg2.connect(dsn) as admin, admin.cursor() as cur:
                    cur.execute("SELECT pg_terminate_backend(%s)", (rng.choice(pids),))
                counts["killed"] += 1

    # Daemons: a worker that hung must fail the test below, not keep the interpreter from exiting.
    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(WORKERS)]
    threads.append(threading.Thread(target=killer, daemon=True))
    for t in threads:
        t.start()
    began = time.monotonic()
    warm = min(10.0, seconds / 3)
    while time.monotonic() - began < seconds and not unexpected:
        time.sleep(1.0)
        if time.monotonic() - began >= warm:
            rss.append(_rss_mb())
    stop.set()
    for t in threads:
        t.join(30)
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"threads still running 30 s after the stop: {hung}"
    pools = conns.close()
    growth = rss[-1] - rss[0] if len(rss) >= 2 else 0.0
    print(f"soak {seconds:g} s: {dict(counts)}, RSS growth after warm-up {growth:.1f} MB")
    assert not unexpected, unexpected[:3]
    assert not wrong, wrong[:2]
    assert counts["answered"] > 10 * WORKERS
    assert counts["killed"] >= seconds / 2
    assert all(not pool._used for pool in pools), "a pool slot leaked"
    for dsn in sample.shard_dsns:
        deadline = time.monotonic() + 5
        while set(_backends(dsn)) - baseline[dsn] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not set(_backends(dsn)) - baseline[dsn], f"backends left open on {dsn}"
    if len(rss) >= 2:
        assert rss[-1] - rss[0] < 50, f"RSS grew from {rss[0]:.0f} to {rss[-1]:.0f} MB"


def test_a_short_soak_of_32_threads_with_backends_killed(sample):
    _soak(sample, 12)


@pytest.mark.slow
def test_soak_of_32_threads_with_backends_killed(sample):
    _soak(sample, float(os.environ.get("PARALLEL_CONNECTION_SOAK_SECONDS", "180")))


def test_a_closed_connections_catalog_is_not_kept(sample):
    """Plans are remembered with the facts they were made from, not in a cache of their own that
    would keep every closed connection's catalog (about a megabyte each) alive."""
    import gc
    import weakref

    pdb = parallel_connection.connect(sample.shard_dsns)
    cur = pdb.cursor()
    cur.execute("SELECT status, count(*) FROM orders GROUP BY status")
    assert cur.fetchall()
    facts = weakref.ref(pdb.shard_set.facts())
    pdb.close()
    del pdb, cur
    gc.collect()
    assert facts() is None
