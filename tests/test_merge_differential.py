"""Differential test: generated SELECTs on 3 shards vs one reference server holding every row.

Every answer must equal the reference's (in order when ORDER BY is total,
as a multiset otherwise; floats and numeric averages to 10-12 digits), or
be refused with NotSupportedError.
"""

from __future__ import annotations

from decimal import Decimal

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mergetools import approx_rows, as_multiset, load

from parallel_connection import NotSupportedError

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
QUERIES_PER_EXAMPLE = 3

G = st.sampled_from([None, 1, 2, 3])
S = st.sampled_from([None, "a", "B", "é", "", "ab", "a "])
X = st.one_of(st.none(), st.integers(-5, 5))
Y = st.one_of(st.none(), st.integers(-12, 12).map(lambda n: Decimal(n) / 4))
F = st.sampled_from([None, 0.5, -1.25, 3.0, 0.1, 1e10, float("inf"), float("nan")])
B = st.sampled_from([None, True, False])

WHERE = [None, "x > 0", "s IS NOT NULL", "b", "y < 1", "g IN (1, 2)", "f > 0"]
HAVING = ["count(*) > 1", "sum(x) > 2", "min(s) < 'b'", "avg(y) >= 0 OR count(*) = 1", "max(x) IS NULL"]
AGGREGATES = [
    "count(*)", "count(x)", "sum(x)", "avg(x)", "min(s)", "max(s)", "max(y)", "sum(y)", "avg(y)",
    "stddev(x)", "var_pop(y)", "variance(y)", "stddev_pop(x)", "bool_or(b)", "bool_and(b)",
    "count(DISTINCT g)", "count(DISTINCT s)", "count(*) FILTER (WHERE b)", "sum(x) FILTER (WHERE y > 0)",
    "min(f)", "max(f)", "avg(x) FILTER (WHERE s <> 'a')", "avg(f)", "stddev(f)", "sum(f)",
]  # fmt: skip
GROUP_KEYS = ["g", "s", "b", "x % 3"]
COLUMNS = ["id", "g", "s", "x", "y", "f", "b"]
DIRECTIONS = ["", " ASC", " DESC"]
NULLS = ["", " NULLS FIRST", " NULLS LAST"]


@st.composite
def tables(draw):
    rows = draw(st.lists(st.tuples(G, S, X, Y, F, B), max_size=25))
    placement = draw(st.lists(st.integers(0, 2), min_size=len(rows), max_size=len(rows)))
    return [(i, *row) for i, row in enumerate(rows)], placement


def _order_item(draw, expr):
    return expr + draw(st.sampled_from(DIRECTIONS)) + draw(st.sampled_from(NULLS))


@st.composite
def row_queries(draw):
    """(sql, total order?) for projections with WHERE, ORDER BY, DISTINCT [ON], LIMIT / OFFSET."""
    columns = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=4, unique=True))
    where = draw(st.sampled_from(WHERE))
    distinct = draw(st.sampled_from(["", "", "DISTINCT", "ON"]))
    pool = columns if distinct == "DISTINCT" else [*COLUMNS, "x * -1", "lower(s)"]
    order = [_order_item(draw, k) for k in draw(st.lists(st.sampled_from(pool), max_size=3, unique=True))]
    total = draw(st.booleans())
    head = "SELECT "
    if distinct == "ON":
        key = draw(st.sampled_from(["g", "s", "b"]))
        head += f"DISTINCT ON ({key}) "
        order = [_order_item(draw, key), *order]
        total = True
    elif distinct == "DISTINCT":
        head += "DISTINCT "
        if total:
            order = [_order_item(draw, c) for c in columns]
    if total and distinct != "DISTINCT":
        order.append("id")
    star = distinct != "DISTINCT" and draw(st.integers(0, 4)) == 0
    sql = head + ("*" if star else ", ".join(columns)) + " FROM mt"
    if where:
        sql += f" WHERE {where}"
    if order:
        sql += " ORDER BY " + ", ".join(order)
    total = total and bool(order)
    if total and draw(st.booleans()):
        sql += f" LIMIT {draw(st.integers(0, 8))}"
        if draw(st.booleans()):
            sql += f" OFFSET {draw(st.integers(0, 30))}"
    return sql, total


@st.composite
def aggregate_queries(draw):
    """(sql, total order?) for aggregates with GROUP BY, FILTER, HAVING, ORDER BY, LIMIT."""
    keys = draw(st.lists(st.sampled_from(GROUP_KEYS), max_size=2, unique=True))
    aggregates = draw(st.lists(st.sampled_from(AGGREGATES), min_size=1, max_size=4, unique=True))
    where = draw(st.sampled_from(WHERE))
    sql = "SELECT " + ", ".join([*keys, *aggregates]) + " FROM mt"
    if where:
        sql += f" WHERE {where}"
    if keys:
        sql += " GROUP BY " + ", ".join(keys)
    if draw(st.booleans()):
        sql += " HAVING " + draw(st.sampled_from(HAVING))
    total = not keys or draw(st.booleans())
    if keys and total:
        first = [_order_item(draw, draw(st.sampled_from(aggregates)))] if draw(st.booleans()) else []
        sql += " ORDER BY " + ", ".join(first + [_order_item(draw, k) for k in keys])
    if total and draw(st.booleans()):
        sql += f" LIMIT {draw(st.integers(0, 4))} OFFSET {draw(st.integers(0, 3))}"
    return sql, total


def check(pdb, ref, sql: str, total: bool, refused: list[str]) -> None:
    try:
        with ref.cursor() as rcur:
            rcur.execute(sql)
            want = rcur.fetchall()
    except psycopg2.Error:
        ref.rollback()
        with pytest.raises(psycopg2.Error):
            cur = pdb.cursor()
            cur.execute(sql)
            cur.fetchall()
        pdb.rollback()
        return
    try:
        cur = pdb.cursor()
        cur.execute(sql)
        got = cur.fetchall()
    except NotSupportedError:
        refused.append(sql)
        pdb.rollback()
        return
    if total:
        assert approx_rows(got) == approx_rows(want), sql
    else:
        assert as_multiset(got) == as_multiset(want), sql
    assert cur.rowcount == len(want), sql


def run(pdb, conns, table, queries, refused):
    rows, placement = table
    pdb.rollback()  # end the last example's transaction: it would block TRUNCATE
    load(*conns, rows, placement)
    for sql, total in queries:
        check(pdb, conns[1], sql, total, refused)


@SETTINGS
@given(table=tables(), queries=st.lists(row_queries(), min_size=1, max_size=QUERIES_PER_EXAMPLE))
def test_generated_row_queries_match_one_database(pdb, conns, table, queries):
    refused: list[str] = []
    run(pdb, conns, table, queries, refused)
    assert not refused, refused


@SETTINGS
@given(table=tables(), queries=st.lists(aggregate_queries(), min_size=1, max_size=QUERIES_PER_EXAMPLE))
def test_generated_aggregate_queries_match_one_database(pdb, conns, table, queries):
    refused: list[str] = []
    run(pdb, conns, table, queries, refused)
    assert not refused, refused


NUMERIC_SQL = (
    "SELECT g, avg(x), avg(y), sum(y), var_samp(y), stddev(x), var_pop(x), stddev_pop(y), variance(x) "
    "FROM mt GROUP BY g ORDER BY g"
)


@settings(SETTINGS, max_examples=30)
@given(table=tables())
def test_integer_and_numeric_aggregates_have_exactly_postgresqls_digits(pdb, conns, table):
    pdb.rollback()
    load(*conns, *table)
    cur = pdb.cursor()
    cur.execute(NUMERIC_SQL)
    got = [tuple(map(str, row)) for row in cur.fetchall()]
    with conns[1].cursor() as rcur:
        rcur.execute(NUMERIC_SQL)
        want = [tuple(map(str, row)) for row in rcur.fetchall()]
    assert got == want
