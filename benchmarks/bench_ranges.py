"""Range jobs: pooled late-binding scan_ranges vs a connect-per-range loop, vs a static
one-worker-per-shard assignment with one slow shard, and split="rows" vs "width" on skewed ids."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg2

import parallel_connection
from parallel_connection.ranges import IdRange

from .common import BenchEnv, best_of, report

ROWS = 3_000_000
ROWS_PER_RANGE = 25_000
SLOW_SHARD = 2
SLOW_SECONDS = 0.03

_LOAD = """
DROP TABLE IF EXISTS bench_ranges;
CREATE TABLE bench_ranges AS
SELECT g AS id, ((g * 37) %% 100000) / 100.0 AS amount,
       (ARRAY['new', 'paid', 'shipped', 'cancelled'])[g %% 4 + 1] AS status
FROM generate_series(1::bigint, %(rows)s) AS g
WHERE g %% %(shards)s = %(shard)s;
ALTER TABLE bench_ranges ADD PRIMARY KEY (id);
"""

_SKEW = """
DROP TABLE IF EXISTS bench_ranges_skew;
CREATE TABLE bench_ranges_skew AS
SELECT g AS id FROM generate_series(1::bigint, 200000) AS g
UNION ALL SELECT 1000000 + g * 997 FROM generate_series(1::bigint, 50000) AS g
UNION ALL SELECT 900000000 + g FROM generate_series(1::bigint, 50000) AS g;
ALTER TABLE bench_ranges_skew ADD PRIMARY KEY (id);
"""

REPORT_SQL = (
    "SELECT count(*) AS orders, count(*) FILTER (WHERE status = 'paid') AS paid, "
    "coalesce(sum(amount) FILTER (WHERE status = 'paid'), 0) AS paid_amount "
    "FROM bench_ranges WHERE id BETWEEN %(start)s AND %(end)s"
)


def run(env: BenchEnv) -> None:
    load(env)
    pooled_vs_connect_per_range(env)
    late_binding_vs_static(env)
    rows_vs_width(env)


def load(env: BenchEnv) -> None:
    def one(i: int) -> None:
        conn = psycopg2.connect(env.shard_dsns[i])
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(_LOAD, {"rows": ROWS, "shards": len(env.shard_dsns), "shard": i})
            cur.execute(_SKEW)
            cur.execute("VACUUM ANALYZE bench_ranges")
            cur.execute("VACUUM ANALYZE bench_ranges_skew")
        conn.close()

    with ThreadPoolExecutor(len(env.shard_dsns)) as pool:
        list(pool.map(one, range(len(env.shard_dsns))))


def _plan(pdb: parallel_connection.ParallelConnection, rows_per_range: int) -> list[IdRange]:
    plan = pdb.scan_ranges(
        "bench_ranges", "id", "SELECT %(start)s AS s, %(end)s AS e", rows_per_range=rows_per_range
    )
    return [r.id_range for r in plan.results]


def _sum(values: list[dict[str, Any]]) -> int:
    return sum(v["orders"] for v in values)


def pooled_vs_connect_per_range(env: BenchEnv) -> None:
    dsns = env.shard_dsns
    with parallel_connection.connect(dsns, maxconn=4) as pdb:
        ranges = _plan(pdb, ROWS_PER_RANGE * len(dsns))
        counts: dict[str, int] = {}

        def pooled() -> None:
            rep = pdb.scan_ranges(
                "bench_ranges", "id", REPORT_SQL, rows_per_range=ROWS_PER_RANGE * len(dsns), progress=False
            )
            counts["pooled"] = rep.totals()["orders"]

        def one_range(r: IdRange) -> dict[str, Any]:
            conn = psycopg2.connect(dsns[r.shard.index])
            try:
                with conn.cursor() as cur:
                    cur.execute(REPORT_SQL, {"start": r.start, "end": r.end})
                    orders, paid, amount = cur.fetchone()
                return {"orders": orders, "paid": paid, "paid_amount": amount}
            finally:
                conn.close()

        def loop() -> None:
            counts["loop"] = _sum([one_range(r) for r in ranges])

        def parallel_connects() -> None:
            with ThreadPoolExecutor(9) as pool:
                counts["threads"] = _sum(list(pool.map(one_range, ranges)))

        pooled()
        t_pooled = best_of(pooled, 3)
        t_loop = best_of(loop, 3)
        t_threads = best_of(parallel_connects, 3)
    assert counts["pooled"] == counts["loop"] == counts["threads"] == ROWS, counts
    n = len(ranges)
    report(
        env,
        f"{n} ranges of ~{ROWS_PER_RANGE:,} rows: connect-per-range loop / scan_ranges",
        t_loop / t_pooled,
        at_least=3,
    )
    report(env, "same ranges: 9 threads connecting per range / scan_ranges (9 pooled)", t_threads / t_pooled)


def _slow_work(cur: Any, r: IdRange) -> dict[str, Any]:
    if r.shard.index == SLOW_SHARD:
        cur.execute("SELECT pg_sleep(%s)", (SLOW_SECONDS,))
    cur.execute(REPORT_SQL, {"start": r.start, "end": r.end})
    orders, paid, amount = cur.fetchone()
    return {"orders": orders, "paid": paid, "paid_amount": amount}


def _static(dsns: list[str], ranges: list[IdRange], per_shard: int) -> int:
    """Ranges dealt out up front: ``per_shard`` workers per shard, each with its own connection."""
    lists: list[list[IdRange]] = [[] for _ in range(per_shard * len(dsns))]
    counters = [0] * len(dsns)
    for r in ranges:
        s = r.shard.index
        lists[s * per_shard + counters[s] % per_shard].append(r)
        counters[s] += 1

    def worker(k: int) -> int:
        conn = psycopg2.connect(dsns[k // per_shard])
        try:
            with conn.cursor() as cur:
                return _sum([_slow_work(cur, r) for r in lists[k]])
        finally:
            conn.close()

    with ThreadPoolExecutor(len(lists)) as pool:
        return sum(pool.map(worker, range(len(lists))))


def late_binding_vs_static(env: BenchEnv) -> None:
    dsns = env.shard_dsns
    with parallel_connection.connect(dsns, maxconn=5) as pdb:
        ranges = _plan(pdb, ROWS_PER_RANGE * len(dsns))
        counts: dict[str, int] = {}

        def late(parallelism: int) -> Callable[[], None]:
            def go() -> None:
                rep = pdb.scan_ranges(
                    "bench_ranges",
                    "id",
                    _slow_work,
                    rows_per_range=ROWS_PER_RANGE * len(dsns),
                    max_parallelism=parallelism,
                    progress=False,
                )
                counts[f"late{parallelism}"] = rep.totals()["orders"]

            return go

        t_late3 = best_of(late(3), 3)
        t_late6 = best_of(late(6), 3)
        t_static1 = best_of(lambda: counts.__setitem__("static1", _static(dsns, ranges, 1)), 3)
        t_static2 = best_of(lambda: counts.__setitem__("static2", _static(dsns, ranges, 2)), 3)
    assert set(counts.values()) == {ROWS}, counts
    slow = f"shard {SLOW_SHARD} +{SLOW_SECONDS * 1000:.0f} ms/range"
    report(
        env, f"{slow}: static 1 worker/shard / late-binding, 3 connections", t_static1 / t_late3, at_least=1.2
    )
    report(
        env,
        f"{slow}: static 2 workers/shard / late-binding, 6 connections",
        t_static2 / t_late6,
        at_least=1.2,
    )


def rows_vs_width(env: BenchEnv) -> None:
    sql = "SELECT count(*) AS n FROM bench_ranges_skew WHERE id BETWEEN %(start)s AND %(end)s"
    spread = 900_050_000 // 12  # as many ranges as split="rows" makes
    with parallel_connection.connect(env.shard_dsns) as pdb:
        imbalance = {}
        for split, size in (("rows", 25_000), ("width", spread)):
            rep = pdb.scan_ranges(
                "bench_ranges_skew", "id", sql, rows_per_range=size, split=split, progress=False
            )
            sizes = [r.value[0]["n"] for r in rep.results]
            assert sum(sizes) == 300_000 * len(env.shard_dsns)
            imbalance[split] = max(sizes) / statistics.mean(sizes)

        def plan(split: str, size: int) -> Callable[[], object]:
            return lambda: pdb.scan_ranges(
                "bench_ranges_skew",
                "id",
                "SELECT %(start)s AS s WHERE %(end)s > 0",
                rows_per_range=size,
                split=split,
            )

        t_rows = best_of(plan("rows", 25_000), 3)
        t_width = best_of(plan("width", spread), 3)
    report(
        env, "skewed ids, split='rows' (25k rows/range): largest range / mean", imbalance["rows"], at_most=1.5
    )
    report(env, "skewed ids, split='width' (same range count): largest range / mean", imbalance["width"])
    report(env, "split='rows' planning pass, 300k ids/shard (trivial work)", t_rows - t_width, unit="s")
