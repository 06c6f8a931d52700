"""scan_ranges on other executors: workers get DSNs, connect themselves, and reuse their connections."""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest

import parallel_connection

COUNT = "SELECT count(*) AS n, sum(amount) AS amount FROM orders WHERE id BETWEEN %(start)s AND %(end)s"


def backend_of(cur, id_range):
    """A picklable work callable: which backend ran the range, and its row count."""
    cur.execute(
        "SELECT pg_backend_pid(), count(*) FROM orders WHERE id BETWEEN %s AND %s",
        (id_range.start, id_range.end),
    )
    pid, n = cur.fetchone()
    return {"pid": pid, "n": n}


@pytest.fixture(scope="module")
def dask_executor():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client.get_executor(pure=False)


def test_dask_cluster_runs_the_ranges(pdb, ref, dask_executor):
    report = pdb.scan_ranges(
        "orders", "id", COUNT, rows_per_range=500, executor=dask_executor, progress=False
    )
    with ref.cursor() as cur:
        cur.execute("SELECT count(*), sum(amount) FROM orders")
        n, amount = cur.fetchone()
    assert report.ok and report.totals() == {"n": n, "amount": amount}


def test_dask_workers_reuse_their_connections(pdb, dask_executor):
    report = pdb.scan_ranges(
        "orders", "id", backend_of, rows_per_range=100, executor=dask_executor, progress=False
    )
    pids = defaultdict(set)
    for r in report.results:
        pids[r.shard.index].add(r.value["pid"])
    assert sum(r.value["n"] for r in report.results) == 3000
    assert len(report.results) >= 3 * 25
    assert all(1 <= len(p) <= 2 for p in pids.values()), "one connection per worker and shard"


def test_a_thread_executor_with_snapshot_and_a_cap(pdb):
    with ThreadPoolExecutor(4) as executor:
        report = pdb.scan_ranges(
            "orders",
            "id",
            backend_of,
            rows_per_range=300,
            executor=executor,
            snapshot=True,
            max_parallelism=2,
        )
    pids = {r.value["pid"] for r in report.results}
    assert report.ok and sum(r.value["n"] for r in report.results) == 3000
    assert len(pids) <= 3 * 4


def test_an_executor_needs_dsns(sample):
    conns = [psycopg2.connect(d) for d in sample.shard_dsns]
    pdb = parallel_connection.ParallelConnection(conns)
    try:
        with ThreadPoolExecutor(1) as executor, pytest.raises(psycopg2.InterfaceError, match="DSNs"):
            pdb.scan_ranges("orders", "id", COUNT, executor=executor)
    finally:
        pdb.close()


def test_a_process_pool_runs_the_ranges(pdb):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as executor:
        report = pdb.scan_ranges("orders", "id", COUNT, rows_per_range=300, executor=executor, progress=False)
    assert report.ok and report.totals()["n"] == 3000
