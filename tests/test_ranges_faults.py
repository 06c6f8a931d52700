"""scan_ranges under faults: transient errors retried, permanent ones kept, reruns, Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading
import time

import psycopg2
import psycopg2.errors
import pytest
from conftest import run_on_all

from parallel_connection.ranges import ScanIncomplete, is_transient

COUNT = "SELECT count(*) AS n FROM orders WHERE id BETWEEN %(start)s AND %(end)s"


@pytest.fixture
def once(sample):
    """``ranges_once()``: true the first time it is called on each shard (a sequence survives rollbacks)."""
    run_on_all(
        sample.shard_dsns,
        "DROP SEQUENCE IF EXISTS ranges_once_seq; CREATE SEQUENCE ranges_once_seq;"
        "CREATE OR REPLACE FUNCTION ranges_once() RETURNS boolean LANGUAGE sql "
        "AS 'SELECT nextval(''ranges_once_seq'') = 1';"
        "CREATE OR REPLACE FUNCTION ranges_fail_once(code text) RETURNS int LANGUAGE plpgsql AS $$ "
        "BEGIN IF ranges_once() THEN RAISE EXCEPTION 'injected fault' USING ERRCODE = code; END IF; "
        "RETURN 0; END $$;",
    )
    yield
    run_on_all(
        sample.shard_dsns,
        "DROP FUNCTION IF EXISTS ranges_fail_once(text); DROP FUNCTION IF EXISTS ranges_once();"
        "DROP SEQUENCE IF EXISTS ranges_once_seq",
    )


@pytest.mark.parametrize("code", ["40001", "40P01", "57P03"])
def test_transient_errors_are_retried(pdb, once, code):
    sql = (
        f"SELECT ranges_fail_once('{code}') + count(*) AS n "
        "FROM orders WHERE id BETWEEN %(start)s AND %(end)s"
    )
    report = pdb.scan_ranges("orders", "id", sql, rows_per_range=500, retry_backoff=0.01, progress=False)
    assert report.ok and report.totals()["n"] == 3000
    assert sorted(r.attempts for r in report.results).count(2) == 3, "one retry per shard"


def test_transient_errors_give_up_after_the_retries(pdb, once):
    sql = (
        "SELECT ranges_fail_once('40001') + count(*) AS n FROM orders WHERE id BETWEEN %(start)s AND %(end)s"
    )
    report = pdb.scan_ranges(
        "orders", "id", sql, rows_per_range=500, retries=0, retry_backoff=0.01, progress=False
    )
    assert len(report.failed) == 3
    assert all(isinstance(f.error, psycopg2.errors.SerializationFailure) for f in report.failed)
    assert all(str(f.shard) in str(f.error) for f in report.failed)


def test_a_lost_connection_is_retried_on_a_fresh_one(pdb, once):
    sql = (
        "SELECT CASE WHEN ranges_once() THEN pg_terminate_backend(pg_backend_pid()) END AS killed, "
        "count(*) AS n FROM orders WHERE id BETWEEN %(start)s AND %(end)s"
    )
    report = pdb.scan_ranges("orders", "id", sql, rows_per_range=500, retry_backoff=0.01, progress=False)
    assert report.ok and report.totals()["n"] == 3000
    assert [r.attempts for r in report.results].count(2) == 3
    assert all(len(p._used) == 1 for p in pdb.pools), "broken connections went back closed, none leaked"


def test_permanent_errors_fail_the_range_at_once(pdb):
    report = pdb.scan_ranges(
        "orders",
        "id",
        "SELECT count(*) AS n FROM no_such_table WHERE id BETWEEN %(start)s AND %(end)s",
        rows_per_range=1000,
        progress=False,
    )
    assert not report.results and len(report.failed) >= 9
    assert all(f.attempts == 1 for f in report.failed)
    assert all(isinstance(f.error, psycopg2.errors.UndefinedTable) for f in report.failed)
    assert "shard 1" in str(next(f.error for f in report.failed if f.shard.index == 1))


def test_a_failing_range_does_not_stop_the_others_and_rerun_runs_only_it(pdb):
    broken = {"on": True}
    calls = []

    def work(cur, r):
        calls.append(r)
        if broken["on"] and r.shard.index == 1 and r.start <= 300:
            raise ValueError("bad data in this range")
        cur.execute(COUNT.replace("%(start)s", "%s").replace("%(end)s", "%s"), (r.start, r.end))
        return {"n": cur.fetchone()[0]}

    report = pdb.scan_ranges("orders", "id", work, rows_per_range=300, progress=False)
    assert len(report.failed) == 1
    failure = report.failed[0]
    assert isinstance(failure.error, ValueError) and failure.attempts == 1
    assert len(report.results) == len(calls) - 1
    broken["on"] = False
    calls.clear()
    again = report.rerun()
    assert [(r.shard, r.start, r.end) for r in calls] == [(failure.shard, failure.start, failure.end)]
    assert again.ok and again.totals()["n"] == 3000


def test_errors_are_classified():
    assert is_transient(psycopg2.errors.SerializationFailure())
    assert is_transient(psycopg2.errors.DeadlockDetected())
    assert is_transient(psycopg2.errors.AdminShutdown())
    assert not is_transient(psycopg2.errors.SyntaxError())
    assert not is_transient(psycopg2.errors.UndefinedTable())
    assert not is_transient(ValueError())


def test_ctrl_c_stops_scheduling_and_reports_what_finished(pdb):
    sql = "SELECT count(*) AS n, pg_sleep(0.1) FROM orders WHERE id BETWEEN %(start)s AND %(end)s"
    timer = threading.Timer(0.4, os.kill, (os.getpid(), signal.SIGINT))
    began = time.monotonic()
    timer.start()
    try:
        report = pdb.scan_ranges("orders", "id", sql, rows_per_range=100, max_parallelism=3, progress=False)
    finally:
        timer.cancel()
    took = time.monotonic() - began
    planned = 3 * 30
    assert report.interrupted and not report.ok
    assert 3 <= len(report.results) < planned / 2
    assert not report.failed, "cancelled ranges are pending, not failed"
    assert len(report.results) + len(report.pending) == planned
    assert took < 1.0, "running ranges were cancelled, not waited for"
    assert all(len(p._used) == 1 for p in pdb.pools)
    with pytest.raises(ScanIncomplete):
        report.totals()
