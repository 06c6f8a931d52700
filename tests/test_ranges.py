"""scan_ranges on real shards: answers, splits, caps, reuse, checkpoints, progress, bad input."""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from collections import defaultdict

import psycopg2
import psycopg2.sql
import pytest
from conftest import run_on_all

import parallel_connection
from parallel_connection.ranges import ScanIncomplete

COUNT_SQL = (
    "SELECT count(*) AS n, coalesce(sum(amount), 0) AS amount "
    "FROM orders WHERE id BETWEEN %(start)s AND %(end)s"
)


def reference_totals(ref):
    with ref.cursor() as cur:
        cur.execute("SELECT count(*), sum(amount) FROM orders")
        return cur.fetchone()


def test_sql_work_totals_match_one_database(pdb, ref):
    report = pdb.scan_ranges("orders", "id", COUNT_SQL, rows_per_range=400, progress=False)
    n, amount = reference_totals(ref)
    assert report.ok and not report.failed
    assert report.totals() == {"n": n, "amount": amount}
    assert len(report.results) >= 3 * 7
    first = report.results[0]
    assert first.shard == pdb.shards[0] and first.start <= first.end
    assert isinstance(first.value, list) and set(first.value[0]) == {"n", "amount"}


def test_callable_work_gets_cursor_and_range(pdb, ref):
    def work(cur, id_range):
        cur.execute("SELECT count(*) FROM orders WHERE id BETWEEN %s AND %s", (id_range.start, id_range.end))
        return {"n": cur.fetchone()[0], "ranges": 1}

    report = pdb.scan_ranges("orders", "id", work, rows_per_range=1000, progress=False)
    totals = report.totals()
    assert totals["n"] == reference_totals(ref)[0]
    assert totals["ranges"] == len(report.results)


def test_ranges_of_each_shard_tile_its_bounds(pdb):
    report = pdb.scan_ranges(
        "orders", "id", "SELECT %(start)s AS a, %(end)s AS b", rows_per_range=333, progress=False
    )
    by_shard = defaultdict(list)
    for r in report.results:
        by_shard[r.shard.index].append((r.start, r.end))
    with pdb.cursor(merge="union") as cur:
        cur.execute("SELECT min(id), max(id) FROM orders")
        bounds = sorted(cur.fetchall())
    assert sorted((spans[0][0], spans[-1][1]) for spans in by_shard.values()) == bounds
    for spans in by_shard.values():
        assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(spans))
        assert all(end - start + 1 <= 333 for start, end in spans)


def test_where_limits_the_bounds(pdb, ref):
    report = pdb.scan_ranges(
        "orders",
        "id",
        "SELECT count(*) AS n FROM orders WHERE status = %(status)s AND id BETWEEN %(start)s AND %(end)s",
        where="status = %(status)s",
        params={"status": "paid"},
        rows_per_range=500,
        progress=False,
    )
    with ref.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders WHERE status = 'paid'")
        assert report.totals()["n"] == cur.fetchone()[0]
    with pdb.cursor(merge="union") as cur:
        cur.execute("SELECT min(id) FROM orders WHERE status = 'paid'")
        firsts = sorted(row[0] for row in cur.fetchall())
    starts = sorted({r.start for r in report.results})
    assert all(f in starts for f in firsts)


def test_smoke_test_runs_one_range_per_shard(pdb):
    report = pdb.scan_ranges("orders", "id", COUNT_SQL, rows_per_range=100, smoke_test=True, progress=False)
    assert [r.shard.index for r in report.results] == [0, 1, 2]
    assert report.smoke_test and not report.ok
    with pytest.raises(ScanIncomplete):
        report.totals()
    assert report.totals(partial=True)["n"] > 0


# -- skewed ids and split="rows" ---------------------------------------------------


@pytest.fixture(scope="module")
def skewed(sample):
    """Dense ids at the start, then sparse ones spread far (very uneven id density)."""
    for shard, dsn in enumerate(sample.shard_dsns):
        run_on_all(
            [dsn],
            "DROP TABLE IF EXISTS ranges_skew;"
            "CREATE TABLE ranges_skew (id bigint PRIMARY KEY, v int NOT NULL);"
            "INSERT INTO ranges_skew SELECT g + %(off)s, 1 FROM generate_series(1, 6000) AS g;"
            "INSERT INTO ranges_skew SELECT g * 100003 + %(off)s, 1 FROM generate_series(100, 1100) AS g;"
            "INSERT INTO ranges_skew SELECT g * 7 + 500000000 + %(off)s, 1 "
            "FROM generate_series(1, 3000) AS g;"
            "ANALYZE ranges_skew;",
            {"off": shard},
        )
    yield sample
    run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS ranges_skew")


def _sizes(report):
    return [r.value[0]["n"] for r in report.results]


def test_rows_split_balances_skewed_ids(skewed, pdb):
    sql = "SELECT count(*) AS n FROM ranges_skew WHERE id BETWEEN %(start)s AND %(end)s"
    by_rows = pdb.scan_ranges("ranges_skew", "id", sql, rows_per_range=1000, split="rows", progress=False)
    sizes = _sizes(by_rows)
    assert sum(sizes) == 3 * 10001
    assert max(sizes) <= 1.5 * (sum(sizes) / len(sizes))
    assert 3 * 9 <= len(sizes) <= 3 * 11
    by_width = pdb.scan_ranges(
        "ranges_skew", "id", sql, rows_per_range=(500000000 + 21000) // 10, split="width", progress=False
    )
    width_sizes = _sizes(by_width)
    assert sum(width_sizes) == 3 * 10001
    assert max(width_sizes) > 3 * (sum(width_sizes) / len(width_sizes)), "the fixture must be skewed"


def test_rows_split_honours_where(skewed, pdb):
    sql = "SELECT count(*) AS n FROM ranges_skew WHERE id > 1000000 AND id BETWEEN %(start)s AND %(end)s"
    report = pdb.scan_ranges(
        "ranges_skew",
        "id",
        sql,
        rows_per_range=500,
        split="rows",
        where="id > %s",
        params=(1000000,),
        progress=False,
    )
    sizes = _sizes(report)
    assert sum(sizes) == 3 * 4001
    assert max(sizes) <= 1.5 * (sum(sizes) / len(sizes))


def test_null_ids_are_counted_and_reported(sample, pdb):
    run_on_all(
        sample.shard_dsns,
        "DROP TABLE IF EXISTS ranges_nulls; CREATE TABLE ranges_nulls (id int);"
        "CREATE INDEX ON ranges_nulls (id);"
        "INSERT INTO ranges_nulls "
        "SELECT CASE WHEN g % 10 = 0 THEN NULL ELSE g END FROM generate_series(1, 100) g",
    )
    try:
        with pytest.warns(UserWarning, match="30 rows of ranges_nulls have a NULL id"):
            report = pdb.scan_ranges(
                "ranges_nulls",
                "id",
                "SELECT count(*) AS n FROM ranges_nulls WHERE id BETWEEN %(start)s AND %(end)s",
                rows_per_range=25,
                progress=False,
            )
        assert report.null_id_rows == 30
        assert report.totals()["n"] == 270
        assert "30 rows with a NULL id" in report.summary()
    finally:
        run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS ranges_nulls")


# -- scheduling: caps, reuse ------------------------------------------------------------


class Tracker:
    """Counts ranges running at once (overall and per shard) and the backends used."""

    def __init__(self, sleep: float = 0.02) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.per_shard = defaultdict(int)
        self.peak_shard = defaultdict(int)
        self.pids = defaultdict(set)
        self.calls = 0
        self.sleep = sleep

    def __call__(self, cur, id_range):
        s = id_range.shard.index
        with self.lock:
            self.calls += 1
            self.running += 1
            self.per_shard[s] += 1
            self.peak = max(self.peak, self.running)
            self.peak_shard[s] = max(self.peak_shard[s], self.per_shard[s])
        try:
            cur.execute("SELECT pg_backend_pid(), pg_sleep(%s)", (self.sleep,))
            self.pids[s].add(cur.fetchone()[0])
            return {"ranges": 1}
        finally:
            with self.lock:
                self.running -= 1
                self.per_shard[s] -= 1


def test_max_parallelism_is_never_exceeded(pdb):
    tracker = Tracker()
    held = []

    def work(cur, id_range):
        held.append(sum(len(p._used) for p in pdb.pools) - len(pdb.pools))
        return tracker(cur, id_range)

    report = pdb.scan_ranges("orders", "id", work, rows_per_range=200, max_parallelism=4, progress=False)
    assert report.totals()["ranges"] == tracker.calls >= 30
    assert tracker.peak == 4
    assert max(held) <= 4, "borrowed connections, busy or idle, never exceed max_parallelism"


def test_per_shard_cap_follows_the_pool_and_connections_are_reused(sample):
    with contextlib.closing(parallel_connection.connect(sample.shard_dsns, maxconn=3)) as pdb, pdb:
        tracker = Tracker()
        report = pdb.scan_ranges("orders", "id", tracker, rows_per_range=100, progress=False)
        assert report.ok and tracker.calls >= 3 * 25
        assert max(tracker.peak_shard.values()) == 2, "pool maxconn 3 minus the connection's own"
        own = {i: c.info.backend_pid for i, c in enumerate(pdb.connections)}
        for shard, pids in tracker.pids.items():
            assert len(pids) <= 2 and own[shard] not in pids
        assert all(len(p._used) == 1 for p in pdb.pools), "every borrowed connection went back"


def test_without_pools_the_own_connections_run_the_ranges(sample, ref):
    conns = [psycopg2.connect(d) for d in sample.shard_dsns]
    pdb = parallel_connection.ParallelConnection(conns)
    try:
        pdb.autocommit = True
        tracker = Tracker(sleep=0)
        report = pdb.scan_ranges("orders", "id", tracker, rows_per_range=300, progress=False)
        assert report.ok and tracker.peak_shard and max(tracker.peak_shard.values()) == 1
        for shard, pids in tracker.pids.items():
            assert pids == {conns[shard].info.backend_pid}
        assert pdb.autocommit is True
        with pytest.raises(parallel_connection.NotSupportedError, match="snapshot"):
            pdb.scan_ranges("orders", "id", COUNT_SQL, snapshot=True)
    finally:
        pdb.close()


def test_an_open_transaction_is_refused(pdb):
    with pdb.cursor() as cur:
        cur.execute("SELECT 1")
    with pytest.raises(psycopg2.ProgrammingError, match="transaction is open"):
        pdb.scan_ranges("orders", "id", COUNT_SQL)
    pdb.rollback()


# -- progress -------------------------------------------------------------------------


def test_progress_callback_gets_the_numbers(pdb):
    seen = []

    def work(cur, r):
        if r.shard.index == 1 and r.start <= 500:
            raise ValueError("one bad range")
        cur.execute("SELECT id FROM orders WHERE id BETWEEN %s AND %s", (r.start, r.end))
        return {"n": len(cur.fetchall())}

    report = pdb.scan_ranges("orders", "id", work, rows_per_range=500, progress=seen.append)
    total = len(report.results) + len(report.failed)
    assert len(report.failed) == 1
    assert [p.done + p.failed for p in seen] == list(range(1, total + 1))
    assert all(p.total == total for p in seen) and seen[-1].failed == 1
    assert seen[-1].done == len(report.results)
    assert seen[-1].rows == report.rows == report.totals(partial=True)["n"] > 2000
    assert seen[-1].eta == 0 and seen[-1].rate > 0


def test_progress_bar_on_request(pdb, capsys):
    pdb.scan_ranges("orders", "id", COUNT_SQL, rows_per_range=1000, progress=True)
    assert "ranges" in capsys.readouterr().err


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "column", "message"),
    [
        ("orders; DROP TABLE orders", "id", "quote or semicolon"),
        ('orders"', "id", "quote or semicolon"),
        ("orders", "id; --", "quote or semicolon"),
        ("no_such_table", "id", "does not exist"),
        ("orders", "no_such_column", "has no column"),
        ("orders", "weight", "double precision"),
        ("orders", "status", "integer column"),
        ("a.b.c", "id", "schema.name"),
    ],
)
def test_bad_names_fail_before_any_work(pdb, table, column, message):
    tracker = Tracker(sleep=0)
    with pytest.raises(psycopg2.ProgrammingError, match=message):
        pdb.scan_ranges(table, column, tracker)
    assert tracker.calls == 0


def test_schema_qualified_names_work(pdb):
    report = pdb.scan_ranges(("public", "orders"), "id", COUNT_SQL, rows_per_range=2000, progress=False)
    assert report.totals()["n"] == 3000
    assert pdb.scan_ranges("public.orders", "id", COUNT_SQL, rows_per_range=2000).totals()["n"] == 3000


def test_bad_where_and_bad_work_fail_before_any_work(pdb):
    with pytest.raises(psycopg2.errors.SyntaxError, match=r"shard \d"):
        pdb.scan_ranges("orders", "id", COUNT_SQL, where="id = = 3")
    with pytest.raises(psycopg2.ProgrammingError, match=r"%\(end\)s"):
        pdb.scan_ranges("orders", "id", "SELECT * FROM orders WHERE id >= %(start)s")
    with pytest.raises(ValueError, match="split"):
        pdb.scan_ranges("orders", "id", COUNT_SQL, split="sideways")
    with pytest.raises(TypeError, match="work"):
        pdb.scan_ranges("orders", "id", 42)


# -- checkpoints ------------------------------------------------------------------------

FLAKY = {"fail_shard": 2, "calls": 0}


def flaky_count(cur, r):
    FLAKY["calls"] += 1
    if r.shard.index == FLAKY["fail_shard"]:
        raise RuntimeError("shard 2 is not ready")
    cur.execute("SELECT count(*) FROM orders WHERE id BETWEEN %s AND %s", (r.start, r.end))
    return {"n": cur.fetchone()[0]}


def test_checkpoint_resumes_only_unfinished_ranges(pdb, tmp_path, ref):
    path = tmp_path / "scan.jsonl"
    FLAKY.update(fail_shard=2, calls=0)
    first = pdb.scan_ranges("orders", "id", flaky_count, rows_per_range=250, checkpoint=path, progress=False)
    failed = len(first.failed)
    assert failed >= 4 and all(f.shard.index == 2 for f in first.failed)
    assert isinstance(first.failed[0].error, RuntimeError)
    assert len(path.read_text().splitlines()) == len(first.results)
    with open(path, "a") as f:
        f.write('{"job": "torn')
    FLAKY.update(fail_shard=None, calls=0)
    second = pdb.scan_ranges("orders", "id", flaky_count, rows_per_range=250, checkpoint=path, progress=False)
    assert FLAKY["calls"] == failed
    assert second.ok and second.totals()["n"] == reference_totals(ref)[0]
    assert sum(r.resumed for r in second.results) == len(first.results)
    other = pdb.scan_ranges("orders", "id", COUNT_SQL, rows_per_range=250, checkpoint=path, progress=False)
    assert not any(r.resumed for r in other.results), "another job must not reuse these records"


def count_where(column, cur, r):
    cur.execute(
        psycopg2.sql.SQL("SELECT count({}) FROM orders WHERE id BETWEEN %s AND %s").format(
            psycopg2.sql.Identifier(column)
        ),
        (r.start, r.end),
    )
    return {"n": cur.fetchone()[0]}


def test_checkpoint_tells_jobs_apart_by_the_values_they_carry(pdb, tmp_path, ref):
    path = tmp_path / "scan.jsonl"
    notes = pdb.scan_ranges(
        "orders", "id", functools.partial(count_where, "note"), rows_per_range=500, checkpoint=path
    )
    ids = pdb.scan_ranges(
        "orders", "id", functools.partial(count_where, "id"), rows_per_range=500, checkpoint=path
    )
    assert not any(r.resumed for r in ids.results)
    assert ids.totals()["n"] == reference_totals(ref)[0]
    assert notes.totals()["n"] < ids.totals()["n"]

    def make(column):
        return lambda cur, r: count_where(column, cur, r)

    first = pdb.scan_ranges("orders", "id", make("note"), rows_per_range=500, checkpoint=path)
    second = pdb.scan_ranges("orders", "id", make("id"), rows_per_range=500, checkpoint=path)
    again = pdb.scan_ranges("orders", "id", make("id"), rows_per_range=500, checkpoint=path)
    assert not any(r.resumed for r in first.results + second.results)
    assert all(r.resumed for r in again.results)
    assert second.totals() == again.totals() == ids.totals()
