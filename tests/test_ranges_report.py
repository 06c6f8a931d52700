"""ScanReport.totals: field-by-field sums of dict-shaped range values, refusing what it cannot sum."""

from __future__ import annotations

from decimal import Decimal

import psycopg2.errors
import pytest

from parallel_connection import ShardInfo
from parallel_connection.ranges import IdRange, RangeFailure, RangeResult, ScanIncomplete, ScanReport

S0, S1 = ShardInfo(0), ShardInfo(1)


def result(shard, start, value):
    return RangeResult(shard, start, start + 9, value)


def test_totals_sum_dicts_and_lists_of_dicts_like_sql_sum():
    report = ScanReport(
        [
            result(S0, 0, {"n": 2, "amount": Decimal("1.50"), "max": None}),
            result(S1, 0, [{"n": 3, "amount": None, "max": None}]),
            result(S1, 10, [{"n": 1, "amount": Decimal("2.25"), "max": None}]),
        ]
    )
    assert report.totals() == {"n": 6, "amount": Decimal("3.75"), "max": None}


def test_totals_refuse_incomplete_reports_unless_partial():
    failure = RangeFailure(S1, 10, 19, ValueError("boom"))
    report = ScanReport([result(S0, 0, {"n": 2})], failed=[failure])
    with pytest.raises(ScanIncomplete, match="1 failed"):
        report.totals()
    assert report.totals(partial=True) == {"n": 2}
    pending = ScanReport([result(S0, 0, {"n": 2})], pending=[IdRange(S1, 10, 19)])
    with pytest.raises(ScanIncomplete, match="1 not run"):
        pending.totals()


def test_totals_refuse_values_that_are_not_dicts():
    with pytest.raises(TypeError, match="returned int"):
        ScanReport([result(S0, 0, 7)]).totals()
    with pytest.raises(TypeError, match="field 'name' cannot be summed"):
        ScanReport([result(S0, 0, {"name": "a"}), result(S0, 10, {"name": "b"})]).totals()


# -- reprs for notebooks --------------------------------------------------------------------


def big_report(ranges=600, failed=10):
    """A report of ``ranges`` ranges, each with a list of 50 row dicts as its value."""
    rows = [{"id": i, "note": "x" * 40} for i in range(50)]
    results = [
        RangeResult(ShardInfo(i % 3, "db.example", "5432", "shop"), i * 10, i * 10 + 9, rows, 50)
        for i in range(ranges - failed)
    ]
    failures = [
        RangeFailure(S1, 100_000 + i * 10, 100_000 + i * 10 + 9, psycopg2.errors.UndefinedColumn("no"))
        for i in range(failed)
    ]
    return ScanReport(results, failed=failures)


def test_a_big_reports_repr_is_short_and_lists_failures_first():
    report = big_report()
    assert len(repr(report.results)) > 100_000, "the values alone are big"
    text = repr(report)
    assert len(text) < 2_000
    lines = text.splitlines()
    assert lines[0].startswith("ScanReport(590 ranges finished, 10 failed")
    assert "failed after 1 attempt: UndefinedColumn" in lines[1]
    assert lines[-1] == "  ... and 595 more ranges)"
    assert len(report._repr_html_()) < 6_000
    for one in (report.results[0], report.failed[0]):
        assert len(repr(one)) < 400 and len(one._repr_html_()) < 1_500
    assert repr(report.results[0]).startswith("RangeResult(shard 0 (db.example:5432/shop): ids 0..9, rows=50")


def test_a_small_reports_repr_shows_every_range():
    report = ScanReport([result(S0, 0, {"n": 2}), result(S1, 0, {"n": 3})], pending=[IdRange(S1, 10, 19)])
    lines = repr(report).splitlines()
    assert len(lines) == 4 and "more" not in repr(report)
    assert lines[1] == "  shard 1 (local:5432/?): ids 10..19: not run"
    assert lines[2] == "  shard 0 (local:5432/?): ids 0..9: finished, 0 rows, value {'n': 2}"


def test_html_reprs_escape_values_and_errors():
    evil = "<script>alert(1)</script>"
    report = ScanReport(
        [result(S0, 0, {"note": evil})], failed=[RangeFailure(S1, 10, 19, ValueError(f"bad {evil} & co"))]
    )
    for shown in (report._repr_html_(), report.results[0]._repr_html_(), report.failed[0]._repr_html_()):
        assert "<script>" not in shown and "&lt;script&gt;" in shown
    assert "&amp; co" in report.failed[0]._repr_html_()
    assert report._repr_html_().startswith("<div><p><b>ScanReport: not ok</b></p>")


def test_a_report_that_stopped_early_says_so_and_is_not_ok():
    report = ScanReport(
        failed=[RangeFailure(S0, 0, 9, ValueError("boom"))],
        pending=[IdRange(S1, 0, 9)],
        stopped_early="the first 3 ranges failed with the same error",
        not_run=1,
    )
    assert not report.ok
    assert report.summary().endswith("stopped early: the first 3 ranges failed with the same error")
    assert "stopped early" in repr(report) and "stopped early" in report._repr_html_()
    assert not ScanReport(stopped_early="x").ok
