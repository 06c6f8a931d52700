"""Merged answers: ORDER BY merge vs union throughput, streaming memory, GROUP BY vs one server."""

from __future__ import annotations

import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2

import parallel_connection

from .common import BenchEnv, best_of, in_child, memory_mb, report

ROWS = 3_000_000
ORDERED_ROWS = 1_000_000
STREAM_ITERSIZE = 5000
REPEAT = 7

_LOAD = """
DROP TABLE IF EXISTS bench_merge;
CREATE UNLOGGED TABLE bench_merge AS
SELECT g AS id, ((g * 7919) %% 5000)::int AS customer_id, ((g * 37) %% 100000) / 100.0 AS amount,
       'status ' || (g %% 4) AS status, 'customer ' || ((g * 7919) %% 100003) AS name,
       timestamptz '2024-01-01 00:00+00' + ((g * 7919) %% 1000003) * interval '1.5 s' AS created_at,
       CASE WHEN g %% 10 <> 0 THEN ((g * 13) %% 2000) / 4.0 END AS discount
FROM generate_series(1::bigint, %(rows)s) AS g
WHERE %(shard)s < 0 OR g %% %(shards)s = %(shard)s
"""

_BASE = "id, customer_id, amount, status"
_WHERE = f"FROM bench_merge WHERE id <= {ORDERED_ROWS}"
ORDER_KEYS = {
    "numeric": ("amount", "amount"),
    "numeric, bigint": ("amount", "amount, id"),
    "int": ("customer_id", "customer_id"),
    "int, bigint": ("customer_id", "customer_id, id"),
    "text": ("name", "name"),
    "text, bigint": ("name", "name, id"),
    "timestamptz": ("created_at", "created_at"),
    "timestamptz, bigint": ("created_at", "created_at, id"),
    "numeric with NULLs": ("discount", "discount"),
    "numeric with NULLs DESC, bigint DESC": ("discount", "discount DESC, id DESC"),
}
"""Variant -> (its key column, its ORDER BY): each selects the base columns and its key column."""


def order_sql(column: str, order: str) -> str:
    columns = _BASE if column in _BASE.split(", ") else f"{_BASE}, {column}"
    return f"SELECT {columns} {_WHERE} ORDER BY {order}"


UNION_SQL = f"SELECT {_BASE} {_WHERE}"
STREAM_SQL = "SELECT id, customer_id, amount, status FROM bench_merge ORDER BY amount DESC, id"
GROUP_SQL = """
SELECT status, count(*), sum(amount), avg(amount), min(amount), max(amount), count(DISTINCT customer_id)
FROM bench_merge GROUP BY status ORDER BY status
"""


def run(env: BenchEnv) -> None:
    load(env)
    order_by_vs_union(env)
    streaming_memory(env)
    group_by_vs_reference(env)


def load(env: BenchEnv) -> None:
    targets = [(dsn, i) for i, dsn in enumerate(env.shard_dsns)] + [(env.reference_dsn, -1)]

    def one(target: tuple[str, int]) -> None:
        dsn, shard = target
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(_LOAD, {"rows": ROWS, "shards": len(env.shard_dsns), "shard": shard})
            cur.execute("VACUUM ANALYZE bench_merge")
        conn.close()

    with ThreadPoolExecutor(len(targets)) as pool:
        list(pool.map(one, targets))


def order_by_vs_union(env: BenchEnv) -> None:
    """ORDER BY on a client-side cursor: the merge against the same statement with merge="union".

    One figure per key type (union time / merge time, 1 when the merge costs
    nothing), the variants interleaved, the best of ``REPEAT`` runs each.
    """
    pdb = parallel_connection.connect(env.shard_dsns)
    counts: dict[tuple[str, str], int] = {}
    times: dict[tuple[str, str], list[float]] = {}
    statements = {name: order_sql(*spec) for name, spec in ORDER_KEYS.items()}
    try:

        def fetch(name: str, sql: str, merge: str) -> None:
            start = time.perf_counter()
            with pdb.cursor(merge=merge) as cur:
                cur.execute(sql)
                counts[name, merge] = len(cur.fetchall())
            pdb.rollback()
            times.setdefault((name, merge), []).append(time.perf_counter() - start)

        # Interleaved, so that load from other processes hits every variant alike.
        for repeat in range(REPEAT):
            for name, sql in statements.items():
                for merge in ("union", "auto") if repeat % 2 else ("auto", "union"):
                    fetch(name, sql, merge)
            fetch("plain", UNION_SQL, "auto")
    finally:
        pdb.close()
    assert set(counts.values()) == {ORDERED_ROWS}, counts
    best = {key: min(values) for key, values in times.items()}
    for name in statements:
        # Each round runs the two back to back: their ratio is free of what load the round met.
        paired = sorted(u / m for u, m in zip(times[name, "union"], times[name, "auto"], strict=True))
        report(
            env,
            f"ORDER BY {name} merge of {ORDERED_ROWS:,} rows vs union (median of rounds)",
            statistics.median(paired),
            at_least=0.91,
        )
        report(env, f"ORDER BY {name}: best union / best merge", best[name, "union"] / best[name, "auto"])
    report(
        env,
        "ORDER BY numeric merge: throughput vs unordered union (server sort included)",
        best["plain", "auto"] / best["numeric, bigint", "auto"],
    )


def streaming_memory(env: BenchEnv) -> None:
    """Stream every row in ORDER BY through a named cursor in a fresh process; report its peak RSS growth."""
    figures = in_child("bench_merge", env.shard_dsns)
    assert figures["rows"] == ROWS, figures
    report(
        env,
        f"streaming ORDER BY of {ROWS:,} rows (named cursor): peak RSS growth",
        figures["peak_growth_mb"],
        unit="MB",
        at_most=200,
    )
    report(
        env, "streaming ORDER BY: merged rows per second (thousands)", figures["rows_per_s"] / 1000, unit="k"
    )


def _stream_child(dsns: list[str]) -> None:
    pdb = parallel_connection.connect(dsns)
    with pdb.cursor() as cur:
        cur.execute("SELECT 1")  # warm up: imports, pools, plan cache, shard facts
    baseline = memory_mb("VmRSS")
    start = time.perf_counter()
    rows = 0
    previous = None
    with pdb.cursor(name="bench_stream") as cur:
        cur.itersize = STREAM_ITERSIZE
        cur.execute(STREAM_SQL)
        for row in cur:
            rows += 1
            key = (-row[2], row[0])
            assert previous is None or previous <= key
            previous = key
    elapsed = time.perf_counter() - start
    peak = memory_mb("VmHWM")
    pdb.close()
    print(json.dumps({"rows": rows, "peak_growth_mb": peak - baseline, "rows_per_s": rows / elapsed}))


def group_by_vs_reference(env: BenchEnv) -> None:
    pdb = parallel_connection.connect(env.shard_dsns)
    ref = psycopg2.connect(env.reference_dsn)
    answers: dict[str, list[tuple[object, ...]]] = {}
    try:

        def merged() -> None:
            with pdb.cursor() as cur:
                cur.execute(GROUP_SQL)
                answers["merged"] = cur.fetchall()
            pdb.rollback()

        def reference() -> None:
            with ref.cursor() as cur:
                cur.execute(GROUP_SQL)
                answers["reference"] = cur.fetchall()
            ref.rollback()

        t_merged = best_of(merged, 3)
        t_ref = best_of(reference, 3)
    finally:
        pdb.close()
        ref.close()
    assert answers["merged"] == answers["reference"], answers
    report(
        env, f"GROUP BY report over {ROWS:,} rows: speed vs the same query on one server", t_ref / t_merged
    )


if __name__ == "__main__" and sys.argv[1:2] == ["stream"]:
    _stream_child(sys.argv[2:])
