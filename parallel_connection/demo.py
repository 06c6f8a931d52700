"""The demo behind ``make demo``: throwaway shards, a sample of a million orders, and the three jobs.

``python -m parallel_connection.demo [--orders N]`` explores, reports (checked
against one database holding every row) and runs a range job, then stops every
server it started, also when it fails or is interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import psycopg2
import psycopg2.extensions

from .connection import ParallelConnection, connect
from .formats import write_rows
from .local import LocalCluster
from .sample import CUSTOMERS, load_sample

__all__ = ["main"]

T = TypeVar("T")

STATUSES = ("cancelled", "new", "paid", "shipped", None)
"""The sample's order statuses, in ``ORDER BY status`` order (NULL last)."""

EXPLORE = """
SELECT o.id, c.name AS customer, c.country, o.status, o.amount
FROM orders o JOIN customers c ON c.id = o.customer_id
WHERE o.id <= 6 ORDER BY o.id
"""

REPORT = """
SELECT status, count(*) AS orders, sum(amount) AS amount, avg(amount) AS avg_amount
FROM orders GROUP BY status ORDER BY status
"""


def _pair(status: str | None) -> str:
    """The two columns counting and summing one status's orders in a range."""
    key, cond = (status, f"status = '{status}'") if status else ("no_status", "status IS NULL")
    count = f"count(*) FILTER (WHERE {cond}) AS {key}_orders"
    return f"{count},\n       sum(amount) FILTER (WHERE {cond}) AS {key}_amount"


RANGE_FROM = "FROM orders WHERE id BETWEEN %(start)s AND %(end)s"
RANGE_WORK = "SELECT " + ",\n       ".join(_pair(s) for s in STATUSES) + "\n" + RANGE_FROM
RANGE_SHOWN = (
    f"SELECT {_pair(STATUSES[0])},\n       ... (the same two columns for each other status)\n{RANGE_FROM}"
)

BY_STATUS = (
    "SELECT status, count(*) AS orders, sum(amount) AS amount FROM orders GROUP BY status ORDER BY status"
)

MATCH = "matches the single-database answer"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return its exit code (0: every answer checked out)."""
    parser = argparse.ArgumentParser(prog="python -m parallel_connection.demo", description=__doc__)
    parser.add_argument(
        "--orders", type=_positive, default=1_000_000, help="sample orders (default: 1000000)"
    )
    parser.add_argument("--shards", type=_positive, default=3, help="throwaway shards (default: 3)")
    args = parser.parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    interrupted = threading.Event()

    def interrupt(signum: int, frame: object) -> NoReturn:
        interrupted.set()
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)
    # A folder of our own, named before any server starts: after a kill -9 the user can stop them.
    cluster = LocalCluster(
        args.shards, reference=True, base_dir=tempfile.mkdtemp(prefix="parallel_connection_")
    )
    ok = closed = False
    try:
        ok = _run(cluster, args.orders)
    except BrokenPipeError:  # stdout closed early (| head)
        closed = True
    except Exception as exc:
        if not interrupted.is_set():  # else an error from unwinding the interrupt (a cancelled statement)
            print(f"\ndemo FAILED: {type(exc).__name__}: {exc}", flush=True)
            return 1
    except KeyboardInterrupt:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # cleanup must finish
        try:
            _step("stopping the servers", cluster.remove)
        except OSError:  # nowhere to say it: the servers still stop
            closed = True
            cluster.remove()
        if closed:
            with contextlib.suppress(OSError, ValueError):  # no complaint from the flush at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if closed:
        return 141
    if interrupted.is_set():
        print("interrupted")
        return 130
    print("demo finished: every answer matches the single database" if ok else "demo FAILED (see above)")
    return 0 if ok else 1


def _run(cluster: LocalCluster, orders: int) -> bool:
    print(f"parallel_connection demo: {cluster.n_shards} throwaway PostgreSQL shards, plus a reference")
    print("server holding every row in one database to check the answers against.")
    print(f"servers in {cluster.base_dir} (if the demo is killed with kill -9, stop them with")
    print(f"`parallel-connection shards down --dir {shlex.quote(str(cluster.base_dir))}`)\n")
    _step(f"starting {cluster.n_shards + 1} servers", cluster.start, background=False)
    assert cluster.reference_dsn is not None
    _step(
        f"loading {orders:,} sample orders, sharded on customer_id",
        lambda: load_sample(cluster.shard_dsns, cluster.reference_dsn, orders=orders),
    )
    reference = contextlib.closing(psycopg2.connect(cluster.reference_dsn))
    with connect(cluster.shard_dsns, maxconn=3) as pdb, reference as ref:
        pdb.autocommit = ref.autocommit = True
        _counts(pdb)
        _explore(pdb)
        report_ok = _report(pdb, ref)
        ranges_ok = _ranges(pdb, ref, rows_per_range=max(500, orders // 200))
    return report_ok and ranges_ok


def _counts(pdb: ParallelConnection) -> None:
    with pdb.cursor(merge="union") as cur:
        cur.execute("SELECT count(*) FROM orders")
        counts = [f"shard {shard}: {n:,}" for shard, (n,) in cur.shard_rows()]
    print(f"  orders per shard: {', '.join(counts)}; customers ({CUSTOMERS:,}) are copied to every shard\n")


def _explore(pdb: ParallelConnection) -> None:
    print("(a) Explore: one statement runs on every shard; the rows come back as one result")
    print("    (the plain union, cursor(merge='union'); shard_rows() names each row's shard):")
    _sql(EXPLORE)
    with pdb.cursor(merge="union") as cur:
        cur.execute(EXPLORE)
        columns = ["shard", *_names(cur.description)]
        rows = [(shard, *row) for shard, row in cur.shard_rows()]
    _table(columns, rows)


def _report(pdb: ParallelConnection, ref: psycopg2.extensions.connection) -> bool:
    print("(b) Report: a GROUP BY across the shards, merged by the default cursor, and checked")
    print("    against the same report computed by the single database:")
    _sql(REPORT)
    try:
        with pdb.cursor() as cur:
            cur.execute(REPORT)
            columns = _names(cur.description)
            merged = [tuple(row) for row in cur.fetchall()]
    except psycopg2.Error as exc:
        print(f"  FAILED: the merged cursor refused the report: {exc}\n")
        return False
    _table(columns, merged)
    with ref.cursor() as cur:
        cur.execute(REPORT)
        expected = [tuple(row) for row in cur.fetchall()]
    return _check(merged, expected, columns)


def _ranges(pdb: ParallelConnection, ref: psycopg2.extensions.connection, *, rows_per_range: int) -> bool:
    print("(c) Range job: scan_ranges cuts orders.id into ranges on every shard and runs one")
    print("    small query per range; report.totals() sums the ranges' counts and amounts:")
    _sql(RANGE_SHOWN)
    began = time.monotonic()
    smoke = pdb.scan_ranges("orders", "id", RANGE_WORK, rows_per_range=rows_per_range, smoke_test=True)
    if smoke.interrupted:
        raise KeyboardInterrupt
    if smoke.failed:
        print(f"  smoke test FAILED: {smoke.failed[0].error}")
        return False
    print(f"  smoke test (first range of each shard): {len(smoke.results)} ranges ok")
    report = pdb.scan_ranges(
        "orders", "id", RANGE_WORK, rows_per_range=rows_per_range, max_parallelism=6, progress=True
    )
    if report.interrupted:
        raise KeyboardInterrupt
    done = f"{len(report.results)} ranges finished, {len(report.failed)} failed"
    print(f"  {done} ({time.monotonic() - began:.1f} s with the smoke test)")
    if not report.ok:
        for failure in report.failed:
            print(f"  FAILED: {failure.error}")
        return False
    totals = report.totals()
    keys = [s or "no_status" for s in STATUSES]
    rows = [(s, totals[f"{k}_orders"], totals[f"{k}_amount"]) for s, k in zip(STATUSES, keys, strict=True)]
    _table(["status", "orders", "amount"], rows)
    with ref.cursor() as cur:
        cur.execute(BY_STATUS)
        expected = [tuple(row) for row in cur.fetchall()]
    return _check(rows, expected, ["status", "orders", "amount"])


def _check(got: list[tuple[Any, ...]], expected: list[tuple[Any, ...]], columns: list[str]) -> bool:
    if got == expected:
        print(f"  -> {MATCH}\n")
        return True
    print("  MISMATCH: the single database answers instead:")
    _table(columns, expected)
    return False


# -- output -----------------------------------------------------------------------


def _step(what: str, action: Callable[[], T], *, background: bool = True) -> T:
    """Run one set-up step, saying how long it took (in a thread unless it cleans up after itself)."""
    print(f"{what} ...", end=" ", flush=True)
    began = time.monotonic()
    result = _interruptible(action) if background else action()
    print(f"done ({time.monotonic() - began:.1f} s)", flush=True)
    return result


def _interruptible(action: Callable[[], T]) -> T:
    """Run ``action`` in a thread, so Ctrl-C reaches the cleanup at once instead of after it."""
    values: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            values.append(action())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
    if errors:
        raise errors[0]
    return values[0]


def _names(description: Sequence[Any] | None) -> list[str]:
    """The column names of a statement that returns rows."""
    assert description is not None, "the statement returns no rows"
    return [column.name for column in description]


def _sql(text: str) -> None:
    for line in text.strip().splitlines():
        print(f"    {line}")
    print()


def _table(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    write_rows("table", columns, rows, sys.stdout, null="NULL")
    print()


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


if __name__ == "__main__":
    raise SystemExit(main())
