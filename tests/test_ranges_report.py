"""ScanReport.totals: field-by-field sums of dict-shaped range values, refusing what it cannot sum."""

from __future__ import annotations

from decimal import Decimal

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
