"""checkpoint=InShard(): a write job killed at any moment and run again applies every range exactly once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import psycopg2.sql
import pytest
from conftest import run_on_all

import parallel_connection
from parallel_connection import InShard
from parallel_connection.ranges.ledger import ledger_of

ROWS = 2000
BUMP = (
    "WITH pause AS (SELECT pg_sleep(0.005)) "
    "UPDATE ranges_once SET n = n + 1 FROM pause WHERE id BETWEEN %(start)s AND %(end)s"
)
"""Not idempotent on purpose: a range applied twice shows as n one too high."""


@pytest.fixture
def counters(sample):
    """``ranges_once``: ROWS rows per shard, each with a counter n = 0; the checkpoint tables dropped."""
    for shard, dsn in enumerate(sample.shard_dsns):
        run_on_all(
            [dsn],
            "DROP TABLE IF EXISTS ranges_once, parallel_connection_ranges, parallel_connection_ranges_plans;"
            "CREATE TABLE ranges_once (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);"
            "INSERT INTO ranges_once (id) SELECT g * 3 + %(shard)s FROM generate_series(1, %(rows)s) AS g",
            {"shard": shard, "rows": ROWS},
        )
    yield sample
    run_on_all(
        sample.shard_dsns,
        "DROP TABLE IF EXISTS ranges_once, parallel_connection_ranges, parallel_connection_ranges_plans",
    )


def counts(dsns):
    """Every row's counter, shard by shard: {(shard, id): n}."""
    seen = {}
    for shard, dsn in enumerate(dsns):
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT id, n FROM ranges_once")
                seen.update({(shard, i): n for i, n in cur.fetchall()})
        finally:
            conn.close()
    return seen


def assert_every_row_is(dsns, n):
    seen = counts(dsns)
    assert len(seen) == len(dsns) * ROWS
    wrong = {k: v for k, v in seen.items() if v != n}
    assert not wrong, f"{len(wrong)} rows are not {n}, e.g. {sorted(wrong.items())[:5]}"


SCRIPT = textwrap.dedent(
    """
    import contextlib, json, sys
    import parallel_connection
    dsns, job, work = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    with contextlib.closing(parallel_connection.connect(dsns)) as pdb, pdb:
        print("ready", flush=True)
        report = pdb.scan_ranges(
            "ranges_once", "id", work, rows_per_range=100, max_parallelism=3, progress=False,
            checkpoint=parallel_connection.InShard(job=job),
        )
    print("done" if report.ok else report.summary(), flush=True)
    """
)


def start_job(script, dsns, job):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(dsns), job, BUMP],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_a_write_job_killed_at_any_moment_and_rerun_applies_every_range_once(counters, tmp_path, pdb):
    dsns = counters.shard_dsns
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    # How long the job takes, start to end, uninterrupted (then every row is 1).
    job = start_job(script, dsns, "calibrate")
    assert job.stdout.readline().strip() == "ready"
    began = time.monotonic()
    assert job.stdout.readline().strip() == "done"
    took = time.monotonic() - began
    assert job.wait(30) == 0
    assert_every_row_is(dsns, 1)
    rng = random.Random(12)
    cut = 0
    for run in range(1, 21):
        job = start_job(script, dsns, f"run {run}")
        assert job.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, took))
        job.send_signal(signal.SIGKILL)
        job.wait(30)
        job.stdout.close()
        rerun = pdb.scan_ranges(
            "ranges_once",
            "id",
            BUMP,
            rows_per_range=100,
            progress=False,
            checkpoint=InShard(job=f"run {run}"),
        )
        assert rerun.ok and not rerun.failed, rerun.summary()
        resumed = sum(r.resumed for r in rerun.results)
        cut += 0 < resumed < len(rerun.results)
        assert_every_row_is(dsns, run + 1)
        assert sum(r.value for r in rerun.results) == 3 * ROWS, "every range's rowcount, resumed or not"
    assert cut >= 5, f"only {cut} of 20 kills landed mid-job: the test did not test much"


def test_two_runs_at_once_apply_each_range_once(counters):
    dsns = counters.shard_dsns
    for snapshot in (False, True):
        job = InShard(job=f"twice, snapshot={snapshot}")
        conns = [parallel_connection.connect(dsns) for _ in range(2)]
        try:
            reports: list = [None, None]
            start = threading.Barrier(2)

            def scan(k, job=job, snapshot=snapshot, conns=conns, reports=reports, start=start):
                start.wait()
                reports[k] = conns[k].scan_ranges(
                    "ranges_once",
                    "id",
                    BUMP,
                    rows_per_range=100,
                    checkpoint=job,
                    snapshot=snapshot,
                    retries=0,
                )

            threads = [threading.Thread(target=scan, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        finally:
            for conn in conns:
                conn.close()
        assert all(r.ok for r in reports), [r.summary() for r in reports]
        assert_every_row_is(dsns, 2 if snapshot else 1)
        ranges = {(r.shard.index, r.start, r.end) for r in reports[0].results}
        assert ranges == {(r.shard.index, r.start, r.end) for r in reports[1].results}
        fresh = [(r.shard.index, r.start, r.end) for rep in reports for r in rep.results if not r.resumed]
        assert sorted(fresh) == sorted(ranges), "each range applied by exactly one of the runs"
        assert all(sum(r.value for r in rep.results) == 3 * ROWS for rep in reports)


COUNT = "SELECT count(*) AS n, sum(n) AS total FROM ranges_once WHERE id BETWEEN %(start)s AND %(end)s"


def test_a_rerun_reports_the_stored_values_and_another_job_starts_afresh(counters, pdb):
    first = pdb.scan_ranges("ranges_once", "id", COUNT, rows_per_range=250, checkpoint=InShard())
    assert first.ok and not any(r.resumed for r in first.results)
    again = pdb.scan_ranges("ranges_once", "id", COUNT, rows_per_range=250, checkpoint=InShard())
    assert all(r.resumed for r in again.results)
    assert again.totals() == first.totals() == {"n": 3 * ROWS, "total": 0}
    assert [r.value for r in again.results] == [r.value for r in first.results]
    other = pdb.scan_ranges("ranges_once", "id", COUNT.replace("sum(n)", "max(n)"), checkpoint=InShard())
    assert not any(r.resumed for r in other.results), "another job must not reuse these records"
    with pdb.cursor(merge="union") as cur:
        cur.execute("SELECT count(*), count(DISTINCT job) FROM parallel_connection_ranges")
        rows = cur.fetchall()
    assert sum(n for n, _ in rows) == len(first.results) + len(other.results)
    assert all(jobs == 2 for _, jobs in rows)


def test_a_job_keeps_the_ranges_of_its_first_run(counters, pdb):
    job = InShard(job="pinned")
    smoke = pdb.scan_ranges("ranges_once", "id", BUMP, rows_per_range=100, checkpoint=job, smoke_test=True)
    assert len(smoke.results) == 3
    # The rest, asked with other ranges: the job's ranges stay those of its first run.
    report = pdb.scan_ranges("ranges_once", "id", BUMP, rows_per_range=700, split="rows", checkpoint=job)
    assert report.ok and sum(r.resumed for r in report.results) == 3
    assert all(r.end - r.start < 100 for r in report.results)
    assert_every_row_is(counters.shard_dsns, 1)


def test_rerun_runs_only_the_ranges_that_failed(counters, pdb):
    broken = {"on": True}

    def work(cur, r):
        if broken["on"] and r.shard.index == 1 and r.start < 1000:
            raise ValueError("not yet")
        cur.execute(BUMP, {"start": r.start, "end": r.end})
        return cur.rowcount

    job = InShard(job="flaky")
    report = pdb.scan_ranges("ranges_once", "id", work, rows_per_range=100, checkpoint=job)
    assert report.failed and all(f.shard.index == 1 for f in report.failed)
    broken["on"] = False
    again = report.rerun()
    assert again.ok and len(again.results) == len(report.results) + len(report.failed)
    assert_every_row_is(counters.shard_dsns, 1)
    # A fresh run of the job finds every range done.
    last = pdb.scan_ranges("ranges_once", "id", work, rows_per_range=100, checkpoint=job)
    assert all(r.resumed for r in last.results) and len(last.results) == len(again.results)
    assert_every_row_is(counters.shard_dsns, 1)


def test_with_an_executor_the_workers_write_the_records(counters, pdb):
    job = InShard(job="executor")
    with ThreadPoolExecutor(4) as executor:
        first = pdb.scan_ranges(
            "ranges_once", "id", BUMP, rows_per_range=200, checkpoint=job, executor=executor
        )
        again = pdb.scan_ranges(
            "ranges_once", "id", BUMP, rows_per_range=200, checkpoint=job, executor=executor
        )
    assert first.ok and again.ok and all(r.resumed for r in again.results)
    assert_every_row_is(counters.shard_dsns, 1)


def test_table_and_schema_names_are_quoted(counters, pdb):
    with pdb.cursor() as cur:
        cur.execute('CREATE SCHEMA IF NOT EXISTS "Range Logs"')
    pdb.commit()
    try:
        job = InShard(table="Finished; ranges", schema="Range Logs")
        report = pdb.scan_ranges("ranges_once", "id", BUMP, rows_per_range=500, checkpoint=job)
        assert report.ok
        with pdb.cursor(merge="union") as cur:
            cur.execute('SELECT count(*) FROM "Range Logs"."Finished; ranges"')
            assert sum(n for (n,) in cur.fetchall()) == len(report.results)
        pdb.commit()
    finally:
        with pdb.cursor() as cur:
            cur.execute('DROP SCHEMA "Range Logs" CASCADE')
        pdb.commit()


def test_a_value_that_cannot_be_stored_fails_the_range_and_rolls_its_work_back(counters, pdb):
    def work(cur, r):
        cur.execute(BUMP, {"start": r.start, "end": r.end})
        return lambda: None  # cannot be pickled

    report = pdb.scan_ranges("ranges_once", "id", work, rows_per_range=1000, checkpoint=InShard())
    assert report.failed and not report.results
    assert all(isinstance(f.error, TypeError) and "pickled" in str(f.error) for f in report.failed)
    assert_every_row_is(counters.shard_dsns, 0)


def test_bad_checkpoints_are_refused(pdb):
    with pytest.raises(TypeError, match="InShard"):
        pdb.scan_ranges("orders", "id", COUNT, checkpoint=42)
    with pytest.raises(ValueError, match="too long"):
        InShard(table="t" * 60)
    with pytest.raises(ValueError, match="pool_timeout"):
        pdb.scan_ranges("orders", "id", COUNT, pool_timeout=0)


def test_the_ledger_sql_is_composed_with_identifiers():
    ledger = ledger_of(InShard(table='a"b', schema="s"), "fingerprint")
    assert isinstance(ledger.ranges_sql, psycopg2.sql.Identifier)
    assert ledger.job == "fingerprint" and ledger_of(InShard(job="named"), "fingerprint").job == "named"
