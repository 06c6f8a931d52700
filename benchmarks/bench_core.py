"""Core fan-out: latency added by running on 3 shards, and union throughput."""

from __future__ import annotations

import psycopg2

import parallel_connection
from parallel_connection.proxy import TcpProxy

from .common import BenchEnv, best_of, median_of, report

ROWS = 1_000_000
ONE_WAY = 0.010  # the proxy's delay in each direction: a 20 ms round trip

_LOAD = """
DROP TABLE IF EXISTS bench_union;
CREATE TABLE bench_union AS
SELECT g AS id, (g * 7919) %% 5000 AS customer_id, ((g * 37) %% 100000) / 100.0 AS amount,
       'status ' || (g %% 4) AS status
FROM generate_series(1::bigint, %(rows)s) AS g
WHERE g %% %(shards)s = %(shard)s;
"""


def run(env: BenchEnv) -> None:
    fanout_latency(env)
    remote_shards(env)
    union_throughput(env)


def fanout_latency(env: BenchEnv) -> None:
    sql = "SELECT pg_sleep(0.05)"
    single = psycopg2.connect(env.shard_dsns[0])
    pdb = parallel_connection.connect(env.shard_dsns)
    try:

        def one() -> None:
            with single.cursor() as cur:
                cur.execute(sql)
                cur.fetchall()

        def fan() -> None:
            # merge="union": a statement that reads no table would otherwise run on one shard only.
            with pdb.cursor(merge="union") as cur:
                cur.execute(sql)
                cur.fetchall()

        one()  # warm up both
        fan()
        t_one = median_of(one, 21)
        t_fan = median_of(fan, 21)
    finally:
        single.close()
        pdb.close()
    report(env, "fan-out latency: pg_sleep(0.05) on 3 shards / on 1 shard", t_fan / t_one, at_most=1.10)


def remote_shards(env: BenchEnv) -> None:
    """Shards behind 10 ms each way (20 ms round trip): one fan-out vs asking them one after another."""
    proxies = [TcpProxy.for_dsn(d, delay=ONE_WAY) for d in env.shard_dsns]
    dsns = [p.dsn(d) for p, d in zip(proxies, env.shard_dsns, strict=True)]
    sql = "SELECT count(*) FROM pg_class"
    raw = [psycopg2.connect(d) for d in dsns]
    pdb = parallel_connection.connect(dsns)
    try:

        def select_1() -> None:
            with raw[0].cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchall()

        def sequential() -> None:
            for conn in raw:
                with conn.cursor() as cur:
                    cur.execute(sql)
                    cur.fetchall()

        def parallel() -> None:
            with pdb.cursor(merge="union") as cur:
                cur.execute(sql)
                cur.fetchall()

        t_rtt = median_of(select_1, 11)
        t_seq = median_of(sequential, 11)
        t_par = median_of(parallel, 11)
    finally:
        for conn in raw:
            conn.close()
        pdb.close()
        for proxy in proxies:
            proxy.close()
    ms = f"{ONE_WAY * 1e3:g} ms each way"
    report(env, f"proxy {ms}: SELECT 1 round trip ms, median", t_rtt * 1e3, unit="ms")
    report(env, f"shards {ms}: shard-after-shard time / fan-out time", t_seq / t_par)


def union_throughput(env: BenchEnv) -> None:
    for shard, dsn in enumerate(env.shard_dsns):
        conn = psycopg2.connect(dsn)
        with conn, conn.cursor() as cur:
            cur.execute(_LOAD, {"rows": ROWS, "shards": len(env.shard_dsns), "shard": shard})
        conn.close()
    sql = "SELECT id, customer_id, amount, status FROM bench_union"
    raw = [psycopg2.connect(d) for d in env.shard_dsns]
    pdb = parallel_connection.connect(env.shard_dsns)
    counts: dict[str, int] = {}
    try:

        def sequential() -> None:
            rows = []
            for conn in raw:
                with conn.cursor() as cur:
                    cur.execute(sql)
                    rows.extend(cur.fetchall())
            counts["raw"] = len(rows)

        def parallel() -> None:
            with pdb.cursor(merge="union") as cur:  # every shard's pg_class, as the loop above reads
                cur.execute(sql)
                counts["pdb"] = len(cur.fetchall())

        t_raw = best_of(sequential, 3)
        t_pdb = best_of(parallel, 3)
    finally:
        for conn in raw:
            conn.close()
        pdb.close()
    assert counts["raw"] == counts["pdb"] == ROWS, counts
    report(
        env,
        f"union fetchall of {ROWS:,} rows: throughput vs raw psycopg2 shard after shard",
        t_raw / t_pdb,
        at_least=1.0,
    )
