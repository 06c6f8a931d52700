"""scan_ranges stops early when its first ranges all fail the same way, and check_first gates the rest."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg2
import psycopg2.errors
import pytest
from conftest import first_rows, run_on_all

import parallel_connection
from parallel_connection import InShard, ShardInfo
from parallel_connection.ranges import IdRange, RangeFailure, RangeResult
from parallel_connection.ranges.early import EarlyStop, signature
from parallel_connection.ranges.schedule import RangeQueue

COUNT = "SELECT count(*) AS n FROM orders WHERE id BETWEEN %(start)s AND %(end)s"
BROKEN = "SELECT count(no_such_column) AS n FROM orders WHERE id BETWEEN %(start)s AND %(end)s"
GATED = "SELECT count(*) AS n FROM orders, early_gate WHERE id BETWEEN %(start)s AND %(end)s"
"""Fails (undefined table) while early_gate is missing: the same job, broken, then fixed."""
LOGGED = "INSERT INTO early_log SELECT %(start)s, %(end)s"
"""Writes a row per range run: counts executions."""


def planned(pdb, rows_per_range):
    return len(
        pdb.scan_ranges("orders", "id", "SELECT %(start)s, %(end)s", rows_per_range=rows_per_range).results
    )


def pools_idle(pdb):
    return all(len(p._used) == 1 for p in pdb.pools)


@pytest.fixture
def tables(sample):
    """``early_log`` (empty) and ``early_gate`` (one row) on every shard; the checkpoint tables dropped."""
    drop = (
        "DROP TABLE IF EXISTS early_log, early_gate, early_done, early_done_plans;"
        "DROP FUNCTION IF EXISTS early_serialization_failure()"
    )
    run_on_all(sample.shard_dsns, drop)
    run_on_all(
        sample.shard_dsns,
        "CREATE TABLE early_log (range_start bigint, range_end bigint);"
        "CREATE TABLE early_gate AS SELECT 1 AS one;"
        "CREATE FUNCTION early_serialization_failure() RETURNS int LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$",
    )
    yield sample
    run_on_all(sample.shard_dsns, drop)


def logged(dsns):
    """How many ranges the work ran, over every shard, and how many of them ran more than once."""
    rows = first_rows(
        dsns,
        "SELECT count(*), count(*) - count(DISTINCT (range_start, range_end)) FROM early_log",
    )
    return sum(r[0] for r in rows), sum(r[1] for r in rows)


# -- early stop -------------------------------------------------------------------------------


@pytest.mark.parametrize("executor", [False, True], ids=["threads", "executor"])
def test_a_broken_work_sql_stops_after_the_first_ranges(pdb, executor):
    total = planned(pdb, 20)
    assert total > 400
    with ThreadPoolExecutor(4) as pool:
        report = pdb.scan_ranges(
            "orders", "id", BROKEN, rows_per_range=20, progress=False, executor=pool if executor else None
        )
    assert not report.results and not report.ok
    assert 3 <= len(report.failed) <= 20, "only the first ranges (and those already running) ran"
    assert report.not_run == len(report.pending) == total - len(report.failed)
    assert {type(f.error) for f in report.failed} == {psycopg2.errors.UndefinedColumn}
    reason = report.stopped_early
    assert reason is not None and reason.startswith("the first 3 ranges failed with the same error")
    assert 'UndefinedColumn (SQLSTATE 42703): column "no_such_column" does not exist' in reason
    assert "; first on shard " in reason and ": ids " in reason
    assert f"{len(report.failed)} ranges failed this way, {report.not_run} not started" in reason
    assert "stopped early: the first 3 ranges" in report.summary()
    assert pools_idle(pdb), "every borrowed connection went back"


def test_without_stop_early_every_range_runs(pdb):
    total = planned(pdb, 100)
    report = pdb.scan_ranges("orders", "id", BROKEN, rows_per_range=100, progress=False, stop_early=False)
    assert len(report.failed) == total and report.stopped_early is None and report.not_run == 0


def test_a_checkpoint_after_an_early_stop_reruns_exactly_the_unfinished_ranges(tables, pdb, tmp_path):
    path = tmp_path / "scan.jsonl"
    smoke = pdb.scan_ranges("orders", "id", GATED, rows_per_range=100, checkpoint=path, smoke_test=True)
    assert len(smoke.results) == 3
    run_on_all(tables.shard_dsns, "DROP TABLE early_gate")
    stopped = pdb.scan_ranges("orders", "id", GATED, rows_per_range=100, checkpoint=path, progress=False)
    assert stopped.stopped_early and "early_gate" in stopped.stopped_early
    assert [r.resumed for r in stopped.results] == [True] * 3
    assert stopped.not_run > 60 and len(path.read_text().splitlines()) == 3
    run_on_all(tables.shard_dsns, "CREATE TABLE early_gate AS SELECT 1 AS one")
    fixed = pdb.scan_ranges("orders", "id", GATED, rows_per_range=100, checkpoint=path, progress=False)
    assert fixed.ok and fixed.totals()["n"] == 3000
    fresh = [r for r in fixed.results if not r.resumed]
    assert len(fresh) == len(fixed.results) - 3 == len(stopped.failed) + stopped.not_run


def test_rerun_after_an_early_stop_runs_the_rest_once(tables, pdb):
    job = InShard(table="early_done")
    run_on_all(tables.shard_dsns, "DROP TABLE early_gate")
    work = LOGGED + " FROM early_gate"
    stopped = pdb.scan_ranges("orders", "id", work, rows_per_range=100, checkpoint=job, progress=False)
    assert stopped.stopped_early and logged(tables.shard_dsns) == (0, 0)
    run_on_all(tables.shard_dsns, "CREATE TABLE early_gate AS SELECT 1 AS one")
    again = stopped.rerun()
    assert again.ok and len(again.results) == len(stopped.failed) + stopped.not_run
    assert logged(tables.shard_dsns) == (len(again.results), 0)


@pytest.mark.parametrize("max_parallelism", [None, 1])
def test_no_early_stop_when_only_the_first_range_of_each_shard_fails(pdb, max_parallelism):
    # Data that breaks the first range of every shard alike: the ranges after it succeed.
    work = "SELECT count(*) / (CASE WHEN %(start)s <= 100 THEN 0 ELSE 1 END) AS n FROM orders " + (
        "WHERE id BETWEEN %(start)s AND %(end)s"
    )
    report = pdb.scan_ranges(
        "orders", "id", work, rows_per_range=500, max_parallelism=max_parallelism, progress=False
    )
    assert report.stopped_early is None and report.not_run == 0
    assert [f.shard.index for f in report.failed] == [0, 1, 2]
    assert {type(f.error) for f in report.failed} == {psycopg2.errors.DivisionByZero}
    assert len(report.results) == planned(pdb, 500) - 3


def test_one_failing_range_among_successes_never_stops(pdb):
    def work(cur, r):
        if r.shard.index == 1 and r.start <= 100:
            raise ValueError("bad data in this range")
        cur.execute("SELECT count(*) FROM orders WHERE id BETWEEN %s AND %s", (r.start, r.end))
        return {"n": cur.fetchone()[0]}

    report = pdb.scan_ranges("orders", "id", work, rows_per_range=100, max_parallelism=1, progress=False)
    assert len(report.failed) == 1 and report.stopped_early is None and report.not_run == 0


def test_transient_errors_never_stop_early(tables, pdb):
    work = "SELECT early_serialization_failure() AS n, %(start)s, %(end)s"
    total = planned(pdb, 200)
    report = pdb.scan_ranges(
        "orders", "id", work, rows_per_range=200, retries=0, retry_backoff=0.01, progress=False
    )
    assert report.stopped_early is None and report.not_run == 0
    assert len(report.failed) == total
    assert {type(f.error) for f in report.failed} == {psycopg2.errors.SerializationFailure}


def test_a_callables_exception_stops_after_three_times_as_many_ranges(pdb):
    calls = []

    def work(cur, r):
        calls.append(r)
        raise KeyError(f"range {r.start}")  # the numbers differ: still the same error

    report = pdb.scan_ranges("orders", "id", work, rows_per_range=50, max_parallelism=1, progress=False)
    assert len(calls) == len(report.failed) == 9, "one at a time: exactly the first 9 ran"
    assert report.stopped_early.startswith("the first 9 ranges failed with the same error")
    assert "KeyError: 'range " in report.stopped_early


# -- check_first ------------------------------------------------------------------------------


class Refused(Exception):
    pass


@pytest.mark.parametrize("raised", [Refused, KeyboardInterrupt])
def test_what_check_first_raises_ends_the_scan_with_only_the_first_range_run(tables, pdb, raised):
    seen = []

    def check(result):
        seen.append((result, logged(tables.shard_dsns)))
        raise raised("not what I expected")

    job = InShard(table="early_done")
    with pytest.raises(raised, match="not what I expected"):
        pdb.scan_ranges("orders", "id", LOGGED, rows_per_range=100, checkpoint=job, check_first=check)
    [(result, at_check)] = seen
    assert isinstance(result, RangeResult) and result.value == 1
    assert at_check == (1, 0) and logged(tables.shard_dsns) == (1, 0), "the first range ran alone"
    assert pools_idle(pdb)
    records = first_rows(tables.shard_dsns, "SELECT count(*) FROM early_done")
    assert sum(r[0] for r in records) == 1, "the checkpoint kept the first range"
    rest = pdb.scan_ranges("orders", "id", LOGGED, rows_per_range=100, checkpoint=job, progress=False)
    assert rest.ok and sum(r.resumed for r in rest.results) == 1
    assert logged(tables.shard_dsns) == (len(rest.results), 0)


def test_check_first_sees_the_first_success_before_anything_else_runs(tables, pdb):
    seen = []

    def check(result):
        seen.append((result, logged(tables.shard_dsns)))

    report = pdb.scan_ranges("orders", "id", LOGGED, rows_per_range=100, check_first=check, progress=False)
    assert report.ok and len(seen) == 1
    assert seen[0][1] == (1, 0) and logged(tables.shard_dsns) == (len(report.results), 0)


def test_check_first_gets_the_first_range_that_succeeded(pdb):
    calls, seen = [], []

    def work(cur, r):
        calls.append(r)
        if len(calls) == 1:
            raise ValueError("the very first range is bad")
        return {"n": 1}

    report = pdb.scan_ranges(
        "orders", "id", work, rows_per_range=500, check_first=lambda r: seen.append((r, len(calls)))
    )
    assert [(r.id_range, n) for r, n in seen] == [(calls[1], 2)]
    assert len(report.failed) == 1 and len(report.results) == len(calls) - 1 and not report.not_run


def test_check_first_with_a_broken_work_runs_three_ranges_one_at_a_time(pdb):
    seen = []
    report = pdb.scan_ranges("orders", "id", BROKEN, rows_per_range=100, check_first=seen.append)
    assert not seen and len(report.failed) == 3 and report.not_run == planned(pdb, 100) - 3
    assert [f.shard.index for f in report.failed] == [0, 1, 2], "every shard's first range first"
    assert report.stopped_early.startswith("the first 3 ranges failed with the same error")


def test_check_first_must_be_callable(pdb):
    with pytest.raises(TypeError, match="check_first"):
        pdb.scan_ranges("orders", "id", COUNT, check_first="yes")
    with pytest.raises(ValueError, match="stop_early"):
        pdb.scan_ranges("orders", "id", COUNT, stop_early="no")


# -- the rule, without servers ------------------------------------------------------------------

S = [ShardInfo(i) for i in range(3)]


def server_error(cls, code, message):
    """An error as the server sends it: with its SQLSTATE and its ``ERROR:`` text."""
    error = cls(message)
    error.__setstate__({"pgcode": code, "pgerror": f"ERROR:  {message}\nLINE 1: SELECT ..."})
    return error


UNDEFINED = server_error(psycopg2.errors.UndefinedTable, "42P01", 'relation "t" does not exist')


def run_rule(errors, *, gate=False):
    """Settle one range per error, in order (None: a success); the step at which the rule holds, or None."""
    rule = EarlyStop(3, rule=True, gate=gate)
    for step, error in enumerate(errors, 1):
        rule.settled(None if error is None else RangeFailure(S[step % 3], step, step, error), error)
        if rule.holding:
            return step
    return None


def test_the_rule_holds_after_three_statement_errors_or_nine_data_errors():
    assert run_rule([UNDEFINED] * 5) == 3
    assert run_rule([ValueError("bad row 17")] * 20) == 9
    assert run_rule([server_error(psycopg2.errors.DivisionByZero, "22012", "division by zero")] * 20) == 9
    assert run_rule([psycopg2.ProgrammingError("argument formats can't be mixed")] * 5) == 3


def test_the_rule_never_holds_after_a_success_or_on_mixed_or_transient_errors():
    denied = server_error(psycopg2.errors.InsufficientPrivilege, "42501", "permission denied for table t")
    assert run_rule([UNDEFINED, UNDEFINED, None, UNDEFINED, UNDEFINED, UNDEFINED]) is None
    assert run_rule([UNDEFINED, denied] + [UNDEFINED] * 9) is None
    assert (
        run_rule([server_error(psycopg2.errors.SerializationFailure, "40001", "could not serialize")] * 9)
        is None
    )
    assert run_rule([psycopg2.OperationalError("server closed the connection unexpectedly")] * 10) is None
    assert run_rule([parallel_connection.PoolTimeout("waited")] * 10) is None
    assert run_rule([ValueError('bad "a"'), ValueError('bad "b"')] * 10) is None


def test_the_gate_holds_after_nine_failures_of_any_kind_or_when_the_rule_holds():
    assert run_rule([ValueError("a"), KeyError("b"), TypeError("c")] * 4, gate=True) == 9
    assert run_rule([ValueError("a"), None] + [TypeError("c")] * 10, gate=True) is None
    assert run_rule([UNDEFINED] * 5, gate=True) == 3
    assert run_rule([ValueError("a"), KeyError("b")] * 5, gate=False) is None
    gate = EarlyStop(3, rule=True, gate=True)
    for i in range(9):
        error = KeyError(i) if i else ValueError("first")
        gate.settled(RangeFailure(S[i % 3], i, i, error), error)
    assert gate.reason(7) == (
        "check_first: the first 9 ranges failed and none succeeded, so none was checked: "
        "ValueError: first; first on shard 0 (local:5432/?): ids 0..0; 9 ranges failed, 7 not started"
    )


def test_signatures_blank_numbers_and_keep_the_sqlstate():
    a = server_error(psycopg2.errors.UndefinedColumn, "42703", 'column "x1" does not exist')
    assert signature(a) == ("42703", 'column "x#" does not exist')
    assert signature(ValueError("range 10..19")) == signature(ValueError("range 20..29"))
    assert signature(psycopg2.errors.DeadlockDetected()) is None


def test_every_shards_first_range_starts_before_any_shards_second():
    ranges = [IdRange(S[0], i, i) for i in range(6)] + [IdRange(S[1], 0, 0), IdRange(S[2], 0, 0)]
    queue = RangeQueue(ranges, [3, 3, 3])
    assert [queue.take().shard.index for _ in range(5)] == [0, 1, 2, 0, 0]
