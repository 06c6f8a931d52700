"""Merge operators alone, on hand-made rows (no servers): order keys, refusals by type, numeric scales."""

from __future__ import annotations

from decimal import Decimal

import pytest
from psycopg2.extensions import Column

from parallel_connection import NotSupportedError
from parallel_connection.merge import numeric
from parallel_connection.merge.pipeline import build_merge
from parallel_connection.merge.values import fast_sort, row_key
from parallel_connection.plan import ClientPlan, SortKey

TEXT, INT4, FLOAT8, NUMERIC, JSONB = 25, 23, 701, 1700, 3802


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
