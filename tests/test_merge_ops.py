"""Merge operators alone, on hand-made rows (no servers): order keys, refusals by type, numeric scales."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from psycopg2.extensions import Column

from parallel_connection import NotSupportedError
from parallel_connection.merge import numeric
from parallel_connection.merge.pipeline import build_merge
from parallel_connection.merge.runs import RowOrder, fast_sort
from parallel_connection.merge.values import row_key
from parallel_connection.plan import ClientPlan, SortKey

TEXT, INT4, FLOAT8, NUMERIC, JSONB, DATE = 25, 23, 701, 1700, 3802, 1082


def merge_for(order, types, text_order_c=True):
    description = [Column(name=f"c{i}", type_code=t) for i, t in enumerate(types)]
    return build_merge(
        ClientPlan(order=tuple(order)),
        description,
        params=None,
        names=(),
        text_order_c=text_order_c,
        streaming=False,
        batch_size=100,
    )


def test_text_order_is_refused_unless_the_collation_is_c():
    with pytest.raises(NotSupportedError, match='COLLATE "C"'):
        merge_for([SortKey(0)], [TEXT], text_order_c=False)
    merge_for([SortKey(0, collate_c=True)], [TEXT], text_order_c=False)
    merge_for([SortKey(0)], [INT4], text_order_c=False)


def test_order_on_a_type_without_a_python_order_is_refused():
    with pytest.raises(NotSupportedError, match="jsonb"):
        merge_for([SortKey(0)], [JSONB])


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (SortKey(0), [-1.0, 2.0, "nan", None]),
        (SortKey(0, descending=True, nulls_first=True), [None, "nan", 2.0, -1.0]),
        (SortKey(0, nulls_first=True), [None, -1.0, 2.0, "nan"]),
        (SortKey(0, descending=True, nulls_first=False), ["nan", 2.0, -1.0, None]),
    ],
)
def test_nulls_and_nan_take_postgresqls_places(key, expected):
    rows = [(2.0,), (None,), (float("nan"),), (-1.0,)]
    fast_sort(rows, [key], [FLOAT8])
    assert [("nan" if v != v else v) if v is not None else None for (v,) in rows] == expected


def test_mixed_directions_sort_each_key_its_own_way():
    rows = [(1, "b"), (2, "a"), (1, "a"), (2, "b"), (None, "c")]
    key, reverse = row_key([SortKey(0, descending=True, nulls_first=True), SortKey(1)], [INT4, TEXT])
    assert sorted(rows, key=key, reverse=reverse) == [(None, "c"), (2, "a"), (2, "b"), (1, "a"), (1, "b")]


def test_numeric_nan_sorts_after_infinity():
    rows = [(Decimal("NaN"),), (Decimal("Infinity"),), (Decimal("1.5"),)]
    fast_sort(rows, [SortKey(0)], [NUMERIC])
    assert [str(v) for (v,) in rows] == ["1.5", "Infinity", "NaN"]


RUNS_KEYS = [
    [SortKey(0), SortKey(1)],
    [SortKey(0, nulls_first=True), SortKey(1, descending=True)],
    [SortKey(0, descending=True, nulls_first=True), SortKey(1, descending=True, nulls_first=False)],
    [SortKey(1, descending=True), SortKey(0)],
    [SortKey(0, descending=True), SortKey(1, nulls_first=True), SortKey(2)],
]


def runs_of(rows, keys, types, shards=3):
    key, reverse = row_key(keys, types)
    return [sorted(rows[i::shards], key=key, reverse=reverse) for i in range(shards)]


@pytest.mark.parametrize("keys", RUNS_KEYS)
def test_sorted_runs_with_nulls_in_any_key_merge_in_c_like_postgresql(keys, monkeypatch):
    def slow(*args):
        raise AssertionError("the per-row Python key")

    monkeypatch.setattr(RowOrder, "_slow", slow)
    types = [TEXT, NUMERIC, INT4]
    words, numbers = [None, "a", "b", "B"], [None, Decimal("1.5"), Decimal("-2"), Decimal("1.50")]
    rows = [(words[i % 4], numbers[(i // 4) % 4], i) for i in range(96)]
    key, reverse = row_key(keys, types)
    got = RowOrder(keys, types).merge(runs_of(rows, keys, types))
    assert sorted(got, key=lambda r: r[2]) == rows
    assert [key(r) for r in got] == [key(r) for r in sorted(rows, key=key, reverse=reverse)]


def test_a_null_out_of_its_place_in_a_run_is_still_ordered():
    keys, types = [SortKey(0), SortKey(1)], [INT4, INT4]
    runs = [[(1, 1), (None, 2), (2, 3)], [(None, 4), (1, 5)], [(0, None), (0, 6)]]
    got = RowOrder(keys, types).merge(runs)
    assert got == [(0, 6), (0, None), (1, 1), (1, 5), (2, 3), (None, 2), (None, 4)]
    first = RowOrder([SortKey(0, nulls_first=True), SortKey(1)], types)
    runs = [[(None, 1), (3, 2), (None, 3), (4, 4)], [(None, 0), (2, 5)]]
    assert first.merge(runs) == [(None, 0), (None, 1), (None, 3), (2, 5), (3, 2), (4, 4)]


def test_in_order_tells_a_run_out_of_the_merges_order():
    order = RowOrder([SortKey(0, descending=True, nulls_first=True), SortKey(1)], [TEXT, INT4])
    assert order.in_order([(None, 2), ("b", 1), ("a", 0), ("a", 3), ("B", 1)])
    assert not order.in_order([("b", 1), ("a", 0), ("a", 3), (None, 2)])
    assert not order.in_order([(None, 2), ("a", 1), ("b", 0)])
    assert not order.in_order([(None, 2), ("b", 1), ("b", 0)])
    one = RowOrder([SortKey(0)], [TEXT])
    assert one.in_order([("B",), ("a",), ("a",), (None,)]) and not one.in_order([("a",), ("B",)])
    assert not one.in_order([("a",), (None,), ("b",)])


def test_a_later_key_nan_and_a_calendar_end_take_postgresqls_rules():
    rows = [(1, float("nan")), (1, 2.0), (0, None), (1, None), (0, float("nan")), (1, -1.0)]
    got = RowOrder([SortKey(0), SortKey(1)], [INT4, FLOAT8]).merge([rows[:3], rows[3:]])
    assert [(a, "nan" if b != b else b) for a, b in got] == [
        (0, "nan"), (0, None), (1, -1.0), (1, 2.0), (1, "nan"), (1, None)
    ]  # fmt: skip
    dates = [[(1, datetime.date(2024, 1, 1))], [(1, datetime.date.max)]]
    with pytest.raises(NotSupportedError, match="infinity"):
        RowOrder([SortKey(0), SortKey(1)], [INT4, DATE]).merge(dates)


@pytest.mark.parametrize(
    ("count", "total", "expected"),
    [
        (2, 3, "1.5000000000000000"),
        (3, 1, "0.33333333333333333333"),
        (3, Decimal("10.00"), "3.3333333333333333"),
        (7, Decimal("-1"), "-0.14285714285714285714"),
        (4, 123456789012, "30864197253.00000000"),
        (0, None, None),
    ],
)
def test_avg_has_postgresqls_digits(count, total, expected):
    """Expected strings are PostgreSQL 15's own output for the same division."""
    result = numeric.avg(count, total)
    assert (None if result is None else str(result)) == expected


def test_variance_of_one_value_and_of_equal_values():
    assert numeric.variance(1, 5, Decimal(25), "var_samp") is None
    assert numeric.variance(1, 5, Decimal(25), "var_pop") == 0
    assert str(numeric.variance(3, 6, Decimal(12), "stddev_samp")) == "0"
