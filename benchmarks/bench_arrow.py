"""Reading 3M rows of 5 columns over 3 shards: columns (Arrow, pandas) and rows, against the floor.

The floor is the three shards streaming the same rows as binary COPY into a
null sink, all at once: what the servers and the wire cost, with no decoding.
Every variant runs once per round, rounds interleaved, so load from other
processes hits them alike; the best round counts, and the spread (slowest /
fastest round) is printed beside it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2

import parallel_connection

from .common import BenchEnv, duckdb_attached, in_child, memory_mb, report

ROWS_PER_SHARD = 1_000_000
ROUNDS = 5
COLUMNS = "id, customer, amount, note, created"
SQL = f"SELECT {COLUMNS} FROM bench_arrow"
_LOAD = """
DROP TABLE IF EXISTS bench_arrow;
CREATE UNLOGGED TABLE bench_arrow AS
SELECT g AS id, (g %% 1000)::int AS customer, ((g %% 100000) / 100.0)::numeric(12, 2) AS amount,
       'note ' || g AS note, timestamptz '2024-01-01' + g * interval '1 second' AS created
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g;
ANALYZE bench_arrow
"""


def run(env: BenchEnv) -> None:
    load(env)
    columns_and_rows(env)
    streaming_memory(env)


def load(env: BenchEnv) -> None:
    def one(shard: int) -> None:
        conn = psycopg2.connect(env.shard_dsns[shard])
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                first = shard * ROWS_PER_SHARD + 1
                cur.execute(_LOAD, {"first": first, "last": first + ROWS_PER_SHARD - 1})
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(env.shard_dsns))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _each_shard(dsns: list[str], fn: Callable[[int], Any]) -> list[Any]:
    """``fn(shard)`` for every shard at once, one thread each (how people read shards by hand)."""
    out: list[Any] = [None] * len(dsns)

    def one(i: int) -> None:
        out[i] = fn(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(dsns))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


class _Null:
    def write(self, data: bytes) -> None:
        pass


def columns_and_rows(env: BenchEnv) -> None:
    dsns = env.shard_dsns
    total = ROWS_PER_SHARD * len(dsns)
    pdb = parallel_connection.connect(dsns)
    pdb.autocommit = True
    copy_conns = [psycopg2.connect(d) for d in dsns]
    runners: dict[str, Callable[[], int]] = {}

    def floor() -> int:
        def one(i: int) -> int:
            with copy_conns[i].cursor() as cur:
                cur.copy_expert(f"COPY ({SQL}) TO STDOUT (FORMAT binary)", _Null())
            copy_conns[i].rollback()
            return ROWS_PER_SHARD

        return sum(_each_shard(dsns, one))

    runners["floor"] = floor
    runners["read_arrow"] = lambda: pdb.read_arrow(SQL).num_rows
    runners["read_pandas"] = lambda: len(pdb.read_pandas(SQL))
    runners["read_pandas(dtype_backend='pyarrow')"] = lambda: len(
        pdb.read_pandas(SQL, dtype_backend="pyarrow")
    )

    def fetchall() -> int:
        with pdb.cursor() as cur:
            cur.execute(SQL)
            return len(cur.fetchall())

    runners["fetchall"] = fetchall
    runners.update(_others(dsns))
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(ROUNDS):
        for name, fn in runners.items():
            start = time.perf_counter()
            rows = fn()
            times[name].append(time.perf_counter() - start)
            assert rows == total, (name, rows)
    pdb.close()
    for conn in copy_conns:
        conn.close()
    best = {name: min(values) for name, values in times.items()}
    spread = {name: max(values) / min(values) for name, values in times.items()}
    base = best["floor"]
    print(f"   floor: {base:.3f} s for {total:,} rows (spread {spread['floor']:.2f})", flush=True)
    targets = {"read_arrow": 1.5, "read_pandas": 2.2, "fetchall": 4.5}
    for name in times:
        if name == "floor":
            continue
        label = f"{name}: {total:,} rows over {len(dsns)} shards / floor (spread {spread[name]:.2f})"
        report(env, label, best[name] / base, at_most=targets.get(name))


def _others(dsns: list[str]) -> dict[str, Callable[[], int]]:
    """The other ways to read the shards, where installed: by hand with each driver, and DuckDB."""
    others: dict[str, Callable[[], int]] = {}
    try:
        import adbc_driver_postgresql.dbapi as adbc
        import pyarrow as pa

        conns = [adbc.connect(d) for d in dsns]

        def adbc_threads() -> int:
            def one(i: int) -> int:
                with conns[i].cursor() as cur:
                    cur.execute(SQL)
                    rows: int = cur.fetch_arrow_table().num_rows
                conns[i].rollback()
                return rows

            return sum(_each_shard(dsns, one))

        others["ADBC per shard in threads, to Arrow (numeric as opaque text)"] = adbc_threads
        assert pa is not None
    except ImportError:
        print("   (ADBC driver not installed: no ADBC figure)")
    try:
        import connectorx

        uris = [_uri(d) for d in dsns]
        others["ConnectorX per shard in threads, to Arrow"] = lambda: sum(
            _each_shard(dsns, lambda i: connectorx.read_sql(uris[i], SQL, return_type="arrow").num_rows)
        )
    except ImportError:
        print("   (connectorx not installed: no ConnectorX figure)")
    try:
        import psycopg

        p3 = [psycopg.connect(d) for d in dsns]

        def psycopg3() -> int:
            def one(i: int) -> int:
                with p3[i].cursor() as cur:
                    cur.execute(SQL)
                    rows = len(cur.fetchall())
                p3[i].rollback()
                return rows

            return sum(_each_shard(dsns, one))

        others["psycopg 3 per shard in threads, fetchall"] = psycopg3
    except ImportError:
        print("   (psycopg 3 not installed: no psycopg 3 figure)")
    duck = _duckdb(dsns)
    if duck is not None:
        parts = [f"SELECT {COLUMNS} FROM shard{i}.public.bench_arrow" for i in range(len(dsns))]
        union = " UNION ALL ".join(parts)
        others["DuckDB postgres scanner over the shards, to Arrow"] = lambda: (
            duck.execute(union).fetch_arrow_table().num_rows
        )
        others["DuckDB postgres scanner over the shards, to pandas"] = lambda: len(duck.execute(union).df())
    return others


def _uri(dsn: str) -> str:
    params = psycopg2.extensions.parse_dsn(dsn)
    user = params.get("user", "postgres")
    return f"postgresql://{user}@{params['host']}:{params['port']}/{params['dbname']}"


def _duckdb(dsns: list[str]) -> Any:
    con, why = duckdb_attached(dsns)
    if con is None:
        print(f"   ({why}: no DuckDB figure)")
    return con


def streaming_memory(env: BenchEnv) -> None:
    """Stream every row as Arrow batches in a fresh process; report its peak RSS growth."""
    figures = in_child("bench_arrow", env.shard_dsns)
    assert figures["rows"] == ROWS_PER_SHARD * len(env.shard_dsns), figures
    report(
        env,
        f"read_arrow_batches of {figures['rows']:,} rows: peak RSS growth",
        figures["peak_growth_mb"],
        unit="MB",
        at_most=200,
    )


def _stream_child(dsns: list[str]) -> None:
    pdb = parallel_connection.connect(dsns)
    pdb.read_arrow("SELECT 1 AS warm")  # imports, pools, the driver's connections
    baseline = memory_mb("VmRSS")
    rows = 0
    for batch in pdb.read_arrow_batches(SQL):
        rows += batch.num_rows
    peak = memory_mb("VmHWM")
    pdb.close()
    print(json.dumps({"rows": rows, "peak_growth_mb": peak - baseline}))


if __name__ == "__main__" and sys.argv[1:2] == ["stream"]:
    _stream_child(sys.argv[2:])
