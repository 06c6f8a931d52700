"""Writes: rows split by key over 3 shards vs the same rows into one database, side by side.

execute_values of 100k rows (same page_size, commit included); COPY of 1M rows through
``copy_expert`` (commit included); and the commit of a transaction that wrote on every shard,
with two-phase commit and without.
"""

from __future__ import annotations

import inspect
import io
import statistics
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.extras

import parallel_connection
from parallel_connection.placement import Placement

from .common import BenchEnv, Result, report, run_on_each

VALUES_ROWS = 100_000
PAGE_SIZE = 100
VALUES_ROUNDS = 3
COPY_ROWS = 1_000_000
COPY_ROUNDS = 3
COMMITS = 200
COMMIT_WARMUP = 20

TABLES = ("bench_wvalues", "bench_wcopy", "bench_wcommit")
PLACEMENT = Placement(sharded={table: ("id", "modulo") for table in TABLES})
_SCHEMA = """
DROP TABLE IF EXISTS bench_wvalues, bench_wcopy, bench_wcommit;
CREATE TABLE bench_wvalues (id bigint PRIMARY KEY, customer int, amount numeric, note text);
CREATE TABLE bench_wcopy (id bigint PRIMARY KEY, customer int, amount numeric, note text);
CREATE TABLE bench_wcommit (id int PRIMARY KEY, n int NOT NULL);
"""


def run(env: BenchEnv) -> None:
    every = [*env.shard_dsns, env.reference_dsn]
    run_on_each(every, _SCHEMA)
    try:
        execute_values_throughput(env)
        copy_throughput(env)
        commit_latency(env)
    finally:
        run_on_each(every, f"DROP TABLE IF EXISTS {', '.join(TABLES)}")


def _library(env: BenchEnv, **kwargs: Any) -> Any:
    return parallel_connection.connect(env.shard_dsns, placement=PLACEMENT, **kwargs)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _check_split(env: BenchEnv, table: str, rows: int) -> None:
    """Every row arrived, each on the shard its key maps to (modulo; the keys are positive)."""
    total = 0
    for index, dsn in enumerate(env.shard_dsns):
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"SELECT count(*), count(*) FILTER (WHERE id %% %s <> %s) FROM {table}",
                    (len(env.shard_dsns), index),
                )
                held, misplaced = cur.fetchall()[0]
        finally:
            conn.close()
        assert held and not misplaced, f"{table}: shard {index} holds {held} rows, {misplaced} misplaced"
        total += held
    assert total == rows, f"{table}: {total} rows on the shards, not {rows}"


def _alternate(
    env: BenchEnv, table: str, library: Callable[[], object], reference: Callable[[], object], rounds: int
) -> tuple[float, float]:
    """The best time of each over ``rounds``, taking turns on an emptied table each time."""
    every = [*env.shard_dsns, env.reference_dsn]
    times: dict[str, list[float]] = {"library": [], "reference": []}
    for _ in range(rounds):
        for name, fn in (("library", library), ("reference", reference)):
            run_on_each(every, f"TRUNCATE {table}")
            times[name].append(_timed(fn))
    return min(times["library"]), min(times["reference"])


def execute_values_throughput(env: BenchEnv) -> None:
    rows = [(i, i * 7919 % 5000, Decimal(i % 100_000) / 100, f"note {i}") for i in range(1, VALUES_ROWS + 1)]
    sql = "INSERT INTO bench_wvalues VALUES %s"
    pdb = _library(env)
    ref = psycopg2.connect(env.reference_dsn)
    try:

        def library() -> None:
            with pdb.cursor() as cur:
                psycopg2.extras.execute_values(cur, sql, rows, page_size=PAGE_SIZE)
            pdb.commit()

        def reference() -> None:
            with ref.cursor() as cur:
                psycopg2.extras.execute_values(cur, sql, rows, page_size=PAGE_SIZE)
            ref.commit()

        library()  # warm up (plans, catalog facts), and check where the rows went
        _check_split(env, "bench_wvalues", VALUES_ROWS)
        t_lib, t_ref = _alternate(env, "bench_wvalues", library, reference, VALUES_ROUNDS)
    finally:
        pdb.close()
        ref.close()
    tag = f"execute_values {VALUES_ROWS // 1000}k rows, page {PAGE_SIZE}"
    report(env, f"{tag}: library / psycopg2, rows/s", t_ref / t_lib, at_least=1.0)
    report(env, f"{tag}: library, 3 shards, rows/s", VALUES_ROWS / t_lib, unit="/s")
    report(env, f"{tag}: psycopg2, 1 db, rows/s", VALUES_ROWS / t_ref, unit="/s")


def copy_throughput(env: BenchEnv) -> None:
    tag = f"COPY {COPY_ROWS // 1_000_000}M rows"
    pdb = _library(env)
    ref = psycopg2.connect(env.reference_dsn)
    try:
        if not hasattr(pdb.cursor(), "copy_expert"):
            result = Result(f"{tag}: SKIPPED, the library's cursor has no copy_expert", 0.0, "x", "-", None)
            env.results.append(result)
            print(result.line(), flush=True)
            return
        data = "".join(
            f"{i}\t{(i * 7919) % 5000}\t{i % 100_000 / 100:.2f}\tnote {i}\n" for i in range(1, COPY_ROWS + 1)
        ).encode()
        sql = "COPY bench_wcopy FROM STDIN"

        def library() -> None:
            with pdb.cursor() as cur:
                cur.copy_expert(sql, io.BytesIO(data))
                assert cur.rowcount == COPY_ROWS, cur.rowcount
            pdb.commit()

        def reference() -> None:
            with ref.cursor() as cur:
                cur.copy_expert(sql, io.BytesIO(data))
            ref.commit()

        library()
        _check_split(env, "bench_wcopy", COPY_ROWS)
        t_lib, t_ref = _alternate(env, "bench_wcopy", library, reference, COPY_ROUNDS)
    finally:
        pdb.close()
        ref.close()
    report(env, f"{tag}: library copy_expert / psycopg2, rows/s", t_ref / t_lib, at_least=0.8)
    report(env, f"{tag}: library, 3 shards, rows/s", COPY_ROWS / t_lib, unit="/s")
    report(env, f"{tag}: psycopg2, 1 db, rows/s", COPY_ROWS / t_ref, unit="/s")


def _decision_table_on(env: BenchEnv) -> bool:
    """A shard holds the two-phase commit decision table (a two-phase commit ran)."""
    for dsn in env.shard_dsns:
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass('public.parallel_connection_commits')")
                if cur.fetchall()[0][0] is not None:
                    return True
        finally:
            conn.close()
    return False


def commit_latency(env: BenchEnv) -> None:
    shards = len(env.shard_dsns)
    if "two_phase" in inspect.signature(parallel_connection.connect).parameters:
        modes: dict[str, dict[str, Any]] = {
            "two_phase=True": {"two_phase": True},
            "two_phase=False": {"two_phase": False},
        }
    else:
        print("connect() takes no two_phase yet: only the default commit is measured", flush=True)
        modes = {"default commit": {}}
    conns = {name: _library(env, **kwargs) for name, kwargs in modes.items()}
    try:
        first = next(iter(conns.values()))
        with first.cursor() as cur:
            cur.execute(
                f"INSERT INTO bench_wcommit VALUES {', '.join(['(%s, 0)'] * shards)}", list(range(shards))
            )
        first.commit()
        commit: dict[str, list[float]] = {name: [] for name in conns}
        whole: dict[str, list[float]] = {name: [] for name in conns}
        for n in range(COMMIT_WARMUP + COMMITS):
            for name, pdb in conns.items():
                began = time.perf_counter()
                with pdb.cursor() as cur:
                    for key in range(shards):  # one routed UPDATE on each shard
                        cur.execute("UPDATE bench_wcommit SET n = n + 1 WHERE id = %s", (key,))
                        assert cur.rowcount == 1
                committing = time.perf_counter()
                pdb.commit()
                done = time.perf_counter()
                if n >= COMMIT_WARMUP:
                    commit[name].append(done - committing)
                    whole[name].append(done - began)
        with first.cursor() as cur:
            cur.execute("SELECT sum(n) FROM bench_wcommit")
            assert cur.fetchall()[0][0] == shards * len(conns) * (COMMIT_WARMUP + COMMITS)
        first.rollback()
    finally:
        for pdb in conns.values():
            pdb.close()
    if "two_phase=True" in conns and not _decision_table_on(env):
        print("two_phase=True: no decision table on any shard; two-phase commit did not run?", flush=True)
    tag = f"{shards}-shard write"
    for name in conns:
        report(env, f"{tag}, {name}: commit() ms, median", statistics.median(commit[name]) * 1e3, unit="ms")
        transaction = statistics.median(whole[name]) * 1e3
        report(env, f"{tag}, {name}: {shards} UPDATEs + commit() ms, median", transaction, unit="ms")
    if len(conns) == 2:
        ratio = statistics.median(commit["two_phase=True"]) / statistics.median(commit["two_phase=False"])
        report(env, f"{tag}: commit() time, two_phase=True / False", ratio)
