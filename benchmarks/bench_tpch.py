"""TPC-H's 22 queries over 3 shards: the library vs one database holding every row vs DuckDB.

The data is ``tests/tpch.py``'s (``orders`` and ``lineitem`` split on the order key, the
other tables copied), at a larger scale than the tests use. Each query runs side by side
on the library, on the reference server and on DuckDB's postgres scanner reading the same
3 shards; the best of a few runs counts. Queries the library refuses are listed and left
out of the totals. Then the coordinator stage's added latency on a one-row report.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg2

import parallel_connection
from parallel_connection.placement import Placement

from .common import BenchEnv, Result, duckdb_attached, report, run_on_each

SCALE = 0.3
"""TPC-H scale factor: 450k orders, about 1.8M line items (loads in about 25 s here)."""
REPEAT = 3
"""Timed runs per query and system, after one warm-up run that also gives the answers checked."""
LATENCY_RUNS = 100
LATENCY_WARMUP = 10
COORDINATOR_SQL = "SELECT round(avg(o_totalprice), 2) FROM orders"
"""A one-row report that needs the coordinator stage (an expression over a merged aggregate)."""
MERGED_SQL = "SELECT avg(o_totalprice) FROM orders"
"""The same report merged on the client, without a coordinator stage."""

Rows = list[tuple[Any, ...]]


def _import_tests_tpch() -> ModuleType:
    """``tests/tpch.py``: schema, data generator and queries, shared with ``tests/test_tpch.py``."""
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("tpch")


tpch = _import_tests_tpch()


@dataclass
class QueryTimes:
    number: int
    library: float | None = None  # None: refused
    reference: float = math.nan
    duckdb: float | None = None  # None: DuckDB missing or failed
    notes: list[str] = field(default_factory=list)


def run(env: BenchEnv) -> None:
    print(f"loading TPC-H at scale factor {SCALE:g} ...", flush=True)
    start = time.perf_counter()
    tpch.load_tpch(env.shard_dsns, env.reference_dsn, scale=SCALE)
    print(f"loaded in {time.perf_counter() - start:.1f} s", flush=True)
    try:
        tpch_queries(env)
        coordinator_latency(env)
    finally:
        for dsn in [*env.shard_dsns, env.reference_dsn]:
            run_on_each([dsn], "DROP SCHEMA IF EXISTS tpch CASCADE")


def _library(env: BenchEnv) -> Any:
    return parallel_connection.connect(
        env.shard_dsns, placement=Placement(**tpch.PLACEMENT_ARGS), options=tpch.SEARCH_PATH
    )


def _duckdb_over_shards(env: BenchEnv) -> tuple[Any, str]:
    """A DuckDB connection seeing the shards as one database, or None and why not.

    Each shard is attached (:func:`duckdb_attached`); ``orders`` and ``lineitem`` are
    views that UNION ALL the shards, the copied tables are read from shard 0.
    """
    con, name = duckdb_attached(env.shard_dsns)
    if con is None:
        return None, name
    for table in tpch.PLACEMENT_ARGS["sharded"]:
        union = " UNION ALL ".join(f"SELECT * FROM shard{i}.tpch.{table}" for i in range(len(env.shard_dsns)))
        con.execute(f"CREATE VIEW {table} AS {union}")
    for table in tpch.PLACEMENT_ARGS["copied"]:
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM shard0.tpch.{table}")
    return con, name


def _duckdb_sql(sql: str) -> str:
    """The query in DuckDB's dialect.

    None of the 22 needs a change with DuckDB 1.4.4: it reads ``date - interval``,
    ``extract(year FROM ...)``, ``substring(... FROM 1 FOR 2)`` and the column list of
    Q13's derived table as PostgreSQL does, and the scanner trims ``char(n)`` padding, so
    comparisons with literals match. Adapt here if a query ever needs it.
    """
    return sql


def _normal(value: Any) -> Any:
    """A value as compared across systems: numbers as floats, text without char(n) padding.

    DuckDB answers float for avg() and numeric division where PostgreSQL answers numeric,
    integer for extract(), and trims char(n) values.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        return float(value)
    if isinstance(value, str):
        return value.rstrip()
    return value


def _sort_key(row: tuple[Any, ...]) -> str:
    return repr(tuple(f"{v:.6g}" if isinstance(v, float) else v for v in row))


def _disagreement(got: Rows, expected: Rows) -> str | None:
    """How two answers differ (as multisets of normalised rows, floats to 1e-9), or None."""
    if len(got) != len(expected):
        return f"{len(got)} rows, the reference {len(expected)}"
    a = sorted((tuple(map(_normal, r)) for r in got), key=_sort_key)
    b = sorted((tuple(map(_normal, r)) for r in expected), key=_sort_key)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        same = len(x) == len(y) and all(
            math.isclose(p, q, rel_tol=1e-9, abs_tol=1e-12)
            if isinstance(p, float) and isinstance(q, float)
            else p == q
            for p, q in zip(x, y, strict=True)
        )
        if not same:
            return f"row {i} (sorted) is {x!r}, the reference's {y!r}"
    return None


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def tpch_queries(env: BenchEnv) -> None:
    pdb = _library(env)
    ref = psycopg2.connect(env.reference_dsn, options=tpch.SEARCH_PATH)
    duck, duck_name = _duckdb_over_shards(env)
    if duck is None:
        print(f"DuckDB comparison skipped: {duck_name}", flush=True)
    results: list[QueryTimes] = []
    try:
        for number, sql in sorted(tpch.QUERIES.items()):
            results.append(_one_query(pdb, ref, duck, number, sql))
    finally:
        pdb.close()
        ref.close()
        if duck is not None:
            duck.close()
    _print_table(results, duck_name if duck is not None else None)
    _report_totals(env, results, duck_name if duck is not None else None)


def _one_query(pdb: Any, ref: Any, duck: Any, number: int, sql: str) -> QueryTimes:
    """Warm up and check the answers, then time each system in turn, ``REPEAT`` times."""
    times = QueryTimes(number)
    answers: dict[str, Rows] = {}

    def library() -> None:
        try:
            with pdb.cursor() as cur:
                cur.execute(sql)
                answers["library"] = cur.fetchall()
        finally:
            pdb.rollback()

    def reference() -> None:
        try:
            with ref.cursor() as cur:
                cur.execute(sql)
                answers["reference"] = cur.fetchall()
        finally:
            ref.rollback()

    duck_sql = _duckdb_sql(sql)

    def duckdb() -> None:
        answers["duckdb"] = duck.execute(duck_sql).fetchall()

    runners: dict[str, Callable[[], None]] = {"reference": reference, "library": library}
    reference()
    try:
        library()
    except parallel_connection.NotSupportedError as exc:
        runners.pop("library")
        times.notes.append(f"library refused: {str(exc).splitlines()[0][:90]}")
    else:
        if wrong := _disagreement(answers["library"], answers["reference"]):
            times.notes.append(f"LIBRARY ANSWER DIFFERS: {wrong}")
    if duck is not None:
        try:
            duckdb()
        except Exception as exc:  # a DuckDB error of any class: leave DuckDB out of this query
            times.notes.append(f"DuckDB failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
        else:
            runners["duckdb"] = duckdb
            if wrong := _disagreement(answers["duckdb"], answers["reference"]):
                times.notes.append(f"DuckDB answer differs: {wrong}")
    # Interleaved, so that load from other processes hits every system alike.
    measured: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(REPEAT):
        for name, fn in runners.items():
            measured[name].append(_timed(fn))
    times.reference = min(measured["reference"])
    if "library" in measured:
        times.library = min(measured["library"])
    if "duckdb" in measured:
        times.duckdb = min(measured["duckdb"])
    return times


def _total(values: Sequence[float | None]) -> float | None:
    """The sum, or None when a value is missing."""
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _ms(seconds: float | None, missing: str = "-") -> str:
    return f"{seconds * 1e3:>9.1f}" if seconds is not None else f"{missing:>9}"


def _ratio(a: float | None, b: float | None, width: int) -> str:
    return f"{a / b:>{width}.2f}" if a is not None and b is not None else f"{'-':>{width}}"


def _print_table(results: Sequence[QueryTimes], duck_name: str | None) -> None:
    answered = [r for r in results if r.library is not None]
    refused = ", ".join(f"Q{r.number}" for r in results if r.library is None) or "none"
    print(f"TPC-H SF {SCALE:g} over {len(results)} queries; 3 shards; {duck_name or 'no DuckDB'}", flush=True)
    print(f"library answered {len(answered)} of {len(results)}; refused: {refused}")
    print(f"best of {REPEAT} runs, ms")
    print(f"{'query':<8} {'library':>9} {'one db':>9} {'duckdb':>9} {'lib/db':>7} {'duck/lib':>8}  notes")
    for r in results:
        duck_ms = _ms(r.duckdb, "-" if duck_name is None else "failed")
        print(
            f"{'Q' + str(r.number):<8} {_ms(r.library, 'refused')} {_ms(r.reference)} {duck_ms}"
            f" {_ratio(r.library, r.reference, 7)} {_ratio(r.duckdb, r.library, 8)}  " + "; ".join(r.notes)
        )
    lib, ref = _total([r.library for r in answered]), _total([r.reference for r in answered])
    duck = _total([r.duckdb for r in answered])
    print(
        f"{'answered':<8} {_ms(lib)} {_ms(ref)} {_ms(duck)} {_ratio(lib, ref, 7)} {_ratio(duck, lib, 8)}"
        f"  total of the {len(answered)} the library answered"
    )
    every_ref, every_duck = _total([r.reference for r in results]), _total([r.duckdb for r in results])
    print(
        f"{'all':<8} {_ms(None)} {_ms(every_ref)} {_ms(every_duck)}  total of all {len(results)}", flush=True
    )


def _report_totals(env: BenchEnv, results: Sequence[QueryTimes], duck_name: str | None) -> None:
    """The two ratios, over the queries the library answered."""
    answered = [r for r in results if r.library is not None]
    tag = f"TPC-H SF {SCALE:g}, {len(answered)}/{len(results)} answered"
    lib, ref = _total([r.library for r in answered]), _total([r.reference for r in answered])
    if not lib or not ref:
        _skipped(env, f"{tag}: SKIPPED, the library answered no query")
        return
    report(env, f"{tag}: library time / one database's", lib / ref, at_most=1.2)
    duck = _total([r.duckdb for r in answered])
    if duck is None:
        why = "DuckDB is not installed" if duck_name is None else "DuckDB failed on some of them"
        _skipped(env, f"{tag}: DuckDB comparison SKIPPED, {why}")
        return
    report(env, f"{tag}: DuckDB over the shards time / library's", duck / lib, at_least=1.6)


def _skipped(env: BenchEnv, name: str) -> None:
    result = Result(name, 0.0, "x", "-", None)
    env.results.append(result)
    print(result.line(), flush=True)


def coordinator_latency(env: BenchEnv) -> None:
    """Median time of a one-row report that needs the coordinator stage vs one merged on the client."""
    pdb = _library(env)
    ref = psycopg2.connect(env.reference_dsn, options=tpch.SEARCH_PATH)
    tag = "one-row report over orders"
    try:

        def on(conn: Any, sql: str) -> Callable[[], object]:
            def fn() -> object:
                try:
                    with conn.cursor() as cur:
                        cur.execute(sql)
                        return cur.fetchall()
                finally:
                    conn.rollback()

            return fn

        runners = {
            "coordinator": on(pdb, COORDINATOR_SQL),
            "merged": on(pdb, MERGED_SQL),
            "reference": on(ref, COORDINATOR_SQL),
        }
        try:
            answer = runners["coordinator"]()
        except parallel_connection.NotSupportedError as exc:
            print(f"{COORDINATOR_SQL!r} refused: {str(exc).splitlines()[0][:120]}", flush=True)
            runners.pop("coordinator")
        else:
            expected = runners["reference"]()
            assert answer == expected, (answer, expected)
        measured: dict[str, list[float]] = {name: [] for name in runners}
        for n in range(LATENCY_WARMUP + LATENCY_RUNS):
            for name, fn in runners.items():
                elapsed = _timed(fn)
                if n >= LATENCY_WARMUP:
                    measured[name].append(elapsed)
    finally:
        pdb.close()
        ref.close()
    median = {name: statistics.median(values) * 1e3 for name, values in measured.items()}
    report(env, f"{tag}: avg() merged on the client, ms, median", median["merged"], unit="ms")
    report(env, f"{tag}: round(avg()) on one database, ms, median", median["reference"], unit="ms")
    if "coordinator" not in median:
        _skipped(env, f"{tag}: coordinator stage latency SKIPPED, round(avg()) is refused")
        return
    report(env, f"{tag}: round(avg()) through the coordinator, ms, median", median["coordinator"], unit="ms")
    report(
        env,
        f"{tag}: coordinator stage added latency, ms (median difference)",
        median["coordinator"] - median["merged"],
        unit="ms",
    )
