"""What every benchmark shares: the servers, a timer and one way to report a ratio."""

from __future__ import annotations

import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from parallel_connection.local import LocalCluster


@dataclass
class BenchEnv:
    """The throwaway servers a benchmark run uses: 3 shards and a reference server."""

    cluster: LocalCluster
    results: list[Result] = field(default_factory=list)

    @property
    def shard_dsns(self) -> list[str]:
        return self.cluster.shard_dsns

    @property
    def reference_dsn(self) -> str:
        assert self.cluster.reference_dsn is not None
        return self.cluster.reference_dsn


@dataclass
class Result:
    name: str
    value: float
    unit: str
    target: str
    met: bool | None

    def line(self) -> str:
        verdict = {True: "MET", False: "MISSED", None: "info"}[self.met]
        return f"{self.name:<62} {self.value:>9.3f}{self.unit:<3} target {self.target:<10} {verdict}"


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    """The fastest of ``repeat`` runs of ``fn``, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def median_of(fn: Callable[[], object], repeat: int = 5) -> float:
    """The median of ``repeat`` runs of ``fn``, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(
    env: BenchEnv,
    name: str,
    value: float,
    *,
    unit: str = "x",
    at_most: float | None = None,
    at_least: float | None = None,
) -> Result:
    """Print one figure and whether it meets its target."""
    if at_most is not None:
        target, met = f"<= {at_most:g}{unit}", value <= at_most
    elif at_least is not None:
        target, met = f">= {at_least:g}{unit}", value >= at_least
    else:
        target, met = "-", None
    result = Result(name, value, unit, target, met)
    env.results.append(result)
    print(result.line(), flush=True)
    return result


def run_on_each(dsns: Sequence[str], sql: str) -> None:
    """Run ``sql`` on each server in autocommit (set-up and clean-up of a benchmark's tables)."""
    for dsn in dsns:
        conn = psycopg2.connect(dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()


def in_child(module: str, dsns: Sequence[str]) -> dict[str, Any]:
    """Run ``python -m benchmarks.<module> stream <dsns>`` in a fresh process (its memory its own);
    the figures it prints last, as json."""
    child = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "stream", *dsns],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    figures: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return figures


def memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since exec: ru_maxrss would include the parent's) in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def duckdb_attached(dsns: Sequence[str]) -> tuple[Any, str]:
    """A DuckDB connection with each shard attached as ``shard<i>``, or None and why not.

    The postgres extension is loaded from the file the pip package ``duckdb-ext-postgres``
    ships (nothing is downloaded); its settings are left at their defaults (binary COPY,
    parallel ctid scans, filter pushdown); DuckDB uses both cores.
    """
    try:
        import duckdb
    except ImportError:
        return None, "duckdb is not installed (pip install -e '.[bench]')"
    try:
        files = importlib.metadata.files("duckdb-ext-postgres") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    extension = next((f for f in files if f.name == "postgres_scanner.duckdb_extension"), None)
    if extension is None:
        return None, "duckdb-ext-postgres is not installed (pip install -e '.[bench]')"
    con = duckdb.connect(
        config={
            "allow_unsigned_extensions": "true",
            "autoinstall_known_extensions": "false",
            "autoload_known_extensions": "false",
        }
    )
    con.execute(f"LOAD '{extension.locate()}'")
    for i, dsn in enumerate(dsns):
        con.execute(f"ATTACH '{dsn}' AS shard{i} (TYPE postgres, READ_ONLY)")
    return con, f"DuckDB {duckdb.__version__}"
