"""Merged answers on real shards, compared with one reference server holding every row."""

from __future__ import annotations

import datetime
import math
from decimal import Decimal

import psycopg2
import psycopg2.extras
import psycopg2.sql
import pytest
from mergetools import approx_rows, as_multiset, load, same_answer

from parallel_connection import NotSupportedError

ROWS = [
    (1, 1, "a", 5, Decimal("1.50"), 0.5, True),
    (2, 1, "B", None, Decimal("2.25"), -1.0, False),
    (3, 2, None, 7, None, float("nan"), None),
    (4, None, "é", 7, Decimal("-3.00"), float("inf"), True),
    (5, 2, "a", -2, Decimal("10.00"), None, False),
    (6, None, "z", 0, Decimal("0.10"), 2.5, True),
    (7, 3, "", 12, Decimal("4.40"), -float("inf"), None),
    (8, 1, "😀", 7, Decimal("1.50"), 0.0, False),
]


@pytest.fixture
def spread(conns):
    """ROWS spread over the three shards."""
    load(*conns, ROWS, [i % 3 for i in range(len(ROWS))])
    return conns


def both(pdb, ref, sql, vars=None, **cursor_kwargs):
    cur = pdb.cursor(**cursor_kwargs)
    cur.execute(sql, vars)
    got = cur.fetchall()
    with ref.cursor(**cursor_kwargs) as rcur:
        rcur.execute(sql, vars)
        want = rcur.fetchall()
        want_description = [(c.name, c.type_code) for c in rcur.description]
    assert [(c.name, c.type_code) for c in cur.description] == want_description
    return got, want, cur


# -- ORDER BY, LIMIT, OFFSET ---------------------------------------------------------


@pytest.mark.parametrize(
    "order",
    [
        "x, id",
        "x DESC, id",
        "x NULLS FIRST, id DESC",
        "x DESC NULLS LAST, id",
        "s, id",
        "s DESC, id",
        "f, id",
        "f DESC NULLS LAST, id",
        "y DESC, id",
        "b, id",
        "g DESC, x, id",
    ],
)
def test_order_by_matches_one_database_including_nulls_nan_and_text(pdb, spread, order):
    got, want, _ = both(pdb, spread[1], f"SELECT id, s, x FROM mt ORDER BY {order}")
    assert got == want


def test_order_by_key_not_selected_is_hidden_from_the_result(pdb, spread):
    got, want, cur = both(pdb, spread[1], "SELECT id FROM mt ORDER BY y DESC NULLS LAST, id")
    assert got == want
    assert len(cur.description) == 1 and all(len(row) == 1 for row in got)


def test_order_by_expression_and_star(pdb, spread):
    got, want, _ = both(pdb, spread[1], "SELECT * FROM mt ORDER BY x * -1 NULLS FIRST, id")
    assert approx_rows(got) == approx_rows(want)


@pytest.mark.parametrize(
    ("limit", "offset"), [(3, None), (0, None), (3, 2), (None, 5), (10, 100), (2, 7), (100, 0)]
)
def test_limit_and_offset(pdb, spread, limit, offset):
    sql = "SELECT id, x FROM mt ORDER BY x DESC, id LIMIT %(limit)s OFFSET %(offset)s"
    got, want, cur = both(pdb, spread[1], sql, {"limit": limit, "offset": offset})
    assert got == want
    assert cur.rowcount == len(want)


def test_limit_without_order_returns_that_many_rows(pdb, spread):
    cur = pdb.cursor()
    cur.execute("SELECT id FROM mt LIMIT 4")
    assert len(cur.fetchall()) == 4 == cur.rowcount


def test_ties_keep_the_order_of_the_sort_keys(pdb, spread):
    got, want, _ = both(pdb, spread[1], "SELECT x FROM mt ORDER BY x")
    assert got == want


def test_all_rows_on_one_shard_and_two_empty_shards(pdb, conns):
    load(*conns, ROWS, [1] * len(ROWS))
    got, want, _ = both(pdb, conns[1], "SELECT id, s FROM mt ORDER BY s NULLS FIRST, id LIMIT 5")
    assert got == want
    got, want, _ = both(pdb, conns[1], "SELECT g, count(*), sum(x) FROM mt GROUP BY g ORDER BY g")
    assert got == want


def test_text_is_ordered_by_code_point_like_the_c_collation(pdb, conns):
    words = ["a", "B", "", "é", "e", "Z", "😀", "ä", "a ", "ab", "\u00a0", "日本"]
    rows = [(i, None, w, None, None, None, None) for i, w in enumerate(words)]
    load(*conns, rows, [i % 3 for i in range(len(rows))])
    got, want, _ = both(pdb, conns[1], "SELECT s FROM mt ORDER BY s")
    assert got == want == [(w,) for w in sorted(words)]


# -- SELECT without FROM, escape hatch, non-SELECT ----------------------------------------


def test_select_without_from_returns_one_row_like_one_database(pdb):
    cur = pdb.cursor()
    cur.execute("SELECT 1 AS one")
    assert cur.fetchall() == [(1,)] and cur.rowcount == 1
    cur.execute("SELECT now() AS t, count(*) FROM generate_series(1, 10)")
    rows = cur.fetchall()
    assert len(rows) == 1 and rows[0][1] == 10


def test_union_escape_hatch_returns_the_per_shard_answers(pdb, spread):
    cur = pdb.cursor(merge="union")
    cur.execute("SELECT count(*) FROM mt")
    counts = [n for (n,) in cur.fetchall()]
    assert len(counts) == 3 and sum(counts) == len(ROWS)
    merged = pdb.cursor()
    merged.execute("SELECT count(*) FROM mt")
    assert merged.fetchall() == [(len(ROWS),)]


def test_statements_other_than_select_sum_their_rowcounts(pdb, spread):
    cur = pdb.cursor()
    cur.execute("UPDATE mt SET x = x WHERE x IS NOT NULL")
    assert cur.rowcount == sum(1 for r in ROWS if r[3] is not None)
    pdb.rollback()


# -- aggregates ---------------------------------------------------------------------------


def test_aggregates_over_every_shard_combine_exactly(pdb, spread):
    sql = """
        SELECT count(*), count(x), sum(x), avg(x), min(x), max(y), sum(y), avg(y),
               stddev(x), variance(y), var_pop(x), stddev_pop(y), bool_and(b), bool_or(b), every(b),
               count(DISTINCT x), min(s), max(s), sum(f) FILTER (WHERE f > -1 AND f < 3),
               avg(f) FILTER (WHERE f BETWEEN -5 AND 5), stddev_samp(f) FILTER (WHERE f BETWEEN -5 AND 5)
        FROM mt
    """
    got, want, _ = both(pdb, spread[1], sql)
    assert approx_rows(got) == approx_rows(want)
    assert got[0][:3] == want[0][:3] and got[0][3] == want[0][3]


def test_aggregate_result_types_are_postgresqls(pdb, spread):
    got, want, cur = both(
        pdb, spread[1], "SELECT count(*), sum(x), avg(x), sum(y), stddev(f), sum(f) FROM mt WHERE f < 1"
    )
    count, total, average, numeric_sum, deviation, float_sum = got[0]
    assert type(count) is int and type(total) is int
    assert isinstance(average, Decimal) and isinstance(numeric_sum, Decimal)
    assert isinstance(deviation, float) and isinstance(float_sum, float)
    assert average == want[0][2]
    assert [c.type_code for c in cur.description] == [20, 20, 1700, 1700, 701, 701]


def test_aggregates_when_every_shard_is_empty_give_one_row(pdb, conns):
    load(*conns, [], [])
    got, want, _ = both(
        pdb, conns[1], "SELECT count(*), count(x), sum(x), avg(y), min(s), stddev(x), bool_and(b) FROM mt"
    )
    assert got == want == [(0, 0, None, None, None, None, None)]
    got, want, _ = both(pdb, conns[1], "SELECT g, count(*) FROM mt GROUP BY g")
    assert got == want == []


def test_group_by_merges_groups_split_over_shards_null_key_included(pdb, spread):
    got, want, _ = both(
        pdb, spread[1], "SELECT g, count(*), sum(x), avg(y), max(s) FROM mt GROUP BY g ORDER BY g NULLS FIRST"
    )
    assert got == want
    assert got[0][0] is None and got[0][1] == 2


def test_group_by_position_expression_and_hidden_key(pdb, spread):
    for sql in (
        "SELECT x % 2 AS parity, count(*) FROM mt GROUP BY 1 ORDER BY 1",
        "SELECT count(*) FROM mt GROUP BY x % 2 ORDER BY count(*)",
        "SELECT b, sum(x) FROM mt GROUP BY b ORDER BY sum(y) DESC NULLS LAST",
        "SELECT upper(s), count(*) FROM mt GROUP BY s ORDER BY s",
    ):
        got, want, _ = both(pdb, spread[1], sql)
        assert got == want, sql


def test_having_filters_merged_groups_not_shard_groups(pdb, spread):
    for sql, vars in (
        ("SELECT g FROM mt GROUP BY g HAVING count(*) >= 3 ORDER BY g", None),
        ("SELECT g, sum(x) FROM mt GROUP BY g HAVING sum(x) > %s AND count(*) > 1 ORDER BY g", (6,)),
        ("SELECT g FROM mt GROUP BY g HAVING NOT bool_or(b) OR max(y) IS NULL ORDER BY g", None),
        ("SELECT g FROM mt GROUP BY g HAVING sum(x) - 2 * min(x) > 3 ORDER BY g", None),
        ("SELECT g FROM mt GROUP BY g HAVING avg(y) > 1.5 ORDER BY g", None),
    ):
        got, want, _ = both(pdb, spread[1], sql, vars)
        assert got == want, sql


def test_having_uses_the_merged_count_not_a_shard_count(pdb, conns):
    rows = [(i, 1, None, 1, None, None, None) for i in range(6)]
    load(*conns, rows, [i % 3 for i in range(6)])
    got, _, _ = both(pdb, conns[1], "SELECT g, count(*) FROM mt GROUP BY g HAVING count(*) > 2")
    assert got == [(1, 6)]


def test_count_distinct_counts_values_seen_on_several_shards_once(pdb, spread):
    got, want, _ = both(
        pdb, spread[1], "SELECT count(DISTINCT x), count(DISTINCT s), count(DISTINCT g) FROM mt"
    )
    assert got == want


def test_array_agg_and_string_agg_hold_every_value(pdb, spread):
    got, want, _ = both(
        pdb, spread[1], "SELECT g, array_agg(x), string_agg(s, '|') FROM mt GROUP BY g ORDER BY g"
    )
    assert [(g, sorted(map(repr, a)), sorted((s or "").split("|"))) for g, a, s in got] == [
        (g, sorted(map(repr, a)), sorted((s or "").split("|"))) for g, a, s in want
    ]


def test_group_by_with_limit_and_distinct(pdb, spread):
    for sql in (
        "SELECT g, count(*) FROM mt GROUP BY g ORDER BY count(*) DESC, g LIMIT 2 OFFSET 1",
        "SELECT DISTINCT count(*) FROM mt GROUP BY g ORDER BY 1",
    ):
        got, want, _ = both(pdb, spread[1], sql)
        assert got == want, sql


# -- DISTINCT -------------------------------------------------------------------------------


def test_distinct_and_distinct_on(pdb, spread):
    for sql in (
        "SELECT DISTINCT x FROM mt ORDER BY x",
        "SELECT DISTINCT g, b FROM mt ORDER BY g, b",
        "SELECT DISTINCT ON (g) g, id, x FROM mt ORDER BY g, x DESC NULLS LAST, id",
        "SELECT DISTINCT ON (x) id FROM mt ORDER BY x, id DESC LIMIT 3",
        "SELECT DISTINCT f FROM mt ORDER BY f",
    ):
        got, want, _ = both(pdb, spread[1], sql)
        assert approx_rows(got) == approx_rows(want), sql


def test_distinct_without_order_is_the_same_set(pdb, spread):
    got, want, _ = both(pdb, spread[1], "SELECT DISTINCT g, b FROM mt")
    assert as_multiset(got) == as_multiset(want)


# -- row types, parameters, streaming ------------------------------------------------------------


@pytest.mark.parametrize(
    "factory",
    [psycopg2.extras.RealDictCursor, psycopg2.extras.DictCursor, psycopg2.extras.NamedTupleCursor],
)
def test_cursor_factories_get_merged_rows_in_their_own_type(pdb, spread, factory):
    for sql in (
        "SELECT id, s FROM mt ORDER BY s DESC, id LIMIT 4",
        "SELECT g, count(*) AS n, avg(x) FROM mt GROUP BY g ORDER BY g",
        "SELECT id FROM mt WHERE x > 0",
    ):
        cur = pdb.cursor(cursor_factory=factory)
        cur.execute(sql)
        got = cur.fetchall()
        with spread[1].cursor(cursor_factory=factory) as rcur:
            rcur.execute(sql)
            want = rcur.fetchall()
        assert type(got[0]) is type(want[0])
        if "ORDER BY" in sql:
            assert [
                dict(r) if factory is not psycopg2.extras.NamedTupleCursor else r._asdict() for r in got
            ] == [dict(r) if factory is not psycopg2.extras.NamedTupleCursor else r._asdict() for r in want]


def test_real_dict_rows_after_group_by_have_the_users_column_names(pdb, spread):
    cur = pdb.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
    cur.execute("SELECT g AS grp, count(*) AS n FROM mt GROUP BY g ORDER BY n DESC, g")
    rows = cur.fetchall()
    assert list(rows[0].keys()) == ["grp", "n"]
    assert sum(r["n"] for r in rows) == len(ROWS)


class _CustomCursor(psycopg2.extensions.cursor):
    """A cursor class the library does not know how to rebuild rows for."""


def test_a_cursor_factory_that_cannot_be_rebuilt_is_refused_for_merges(pdb, spread):
    cur = pdb.cursor(cursor_factory=_CustomCursor)
    cur.execute("SELECT id FROM mt")
    assert len(cur.fetchall()) == len(ROWS)
    with pytest.raises(NotSupportedError, match="cursor_factory"):
        cur.execute("SELECT id FROM mt ORDER BY id")


def test_parameters_percent_signs_tuples_and_composables(pdb, spread):
    ref = spread[1]
    cases = [
        ("SELECT id FROM mt WHERE s LIKE 'a%%' OR s = %s ORDER BY id", ("z",)),
        ("SELECT id FROM mt WHERE id IN %s ORDER BY id DESC", ((1, 2, 5),)),
        ("SELECT id FROM mt WHERE x > %(v)s OR y > %(v)s ORDER BY id LIMIT %(n)s", {"v": 6, "n": 3}),
        ("SELECT x % 4 AS m FROM mt WHERE x IS NOT NULL ORDER BY 1, x", None),
    ]
    for sql, vars in cases:
        got, want, _ = both(pdb, ref, sql, vars)
        assert got == want, sql
    query = psycopg2.sql.SQL("SELECT {} FROM mt ORDER BY {} DESC").format(
        psycopg2.sql.Identifier("id"), psycopg2.sql.Identifier("id")
    )
    got, want, _ = both(pdb, ref, query)
    assert got == want


def test_order_by_a_type_python_cannot_order_like_postgresql_is_ordered_by_postgresql(pdb, spread):
    # The client cannot order jsonb or arrays as the server does: the coordinator orders them.
    for sql in ("SELECT id FROM mt ORDER BY to_jsonb(s), id", "SELECT id FROM mt ORDER BY ARRAY[x], id"):
        got, want, _ = both(pdb, spread[1], sql)
        assert got == want, sql
        pdb.rollback()
    # A named cursor has run its statement by the time the types are known: refused, by name.
    cur = pdb.cursor(name="jsonb_order")
    with pytest.raises(NotSupportedError, match="jsonb"):
        cur.execute("SELECT id FROM mt ORDER BY to_jsonb(s)")
    pdb.rollback()


def test_streaming_order_by_through_a_named_cursor_keeps_few_rows_in_flight(pdb, ref):
    with ref.cursor() as rcur:
        rcur.execute("SELECT id, amount FROM orders ORDER BY amount DESC, id")
        want = rcur.fetchall()
    cur = pdb.cursor(name="ordered_stream")
    cur.itersize = 50
    cur.execute("SELECT id, amount FROM orders ORDER BY amount DESC, id")
    head = cur.fetchmany(20)
    fetched = sum(c.rownumber for c in cur.shard_cursors)
    assert head == want[:20]
    assert fetched <= 3 * 2 * 50, fetched
    rest = list(cur)
    assert head + rest == want
    assert cur.rowcount == len(want)
    cur.close()


def test_streaming_group_by_and_limit_through_a_named_cursor(pdb, ref):
    for sql in (
        "SELECT status, count(*), avg(amount) FROM orders GROUP BY status ORDER BY status",
        "SELECT id FROM orders ORDER BY ordered_at DESC, id LIMIT 7 OFFSET 3",
    ):
        cur = pdb.cursor(name="stream_" + str(abs(hash(sql))))
        cur.execute(sql)
        got = cur.fetchall()
        cur.close()
        with ref.cursor() as rcur:
            rcur.execute(sql)
            assert got == rcur.fetchall(), sql


def test_joins_with_a_table_copied_to_every_shard(pdb, ref):
    sql = (
        "SELECT c.country, count(*), sum(o.amount) FROM orders o JOIN customers c ON c.id = o.customer_id "
        "GROUP BY c.country ORDER BY c.country NULLS FIRST"
    )
    got, want, _ = both(pdb, ref, sql)
    assert got == want


def test_timestamps_and_dates_order_and_aggregate_like_postgresql(pdb, ref):
    for sql in (
        "SELECT ship_date, min(ordered_at), max(ordered_at), count(*) FROM orders "
        "GROUP BY 1 ORDER BY 1 DESC LIMIT 5",
        "SELECT id, ordered_at FROM orders ORDER BY ordered_at, id LIMIT 10",
    ):
        got, want, _ = both(pdb, ref, sql)
        assert got == want
        assert isinstance(got[0][1], datetime.datetime)


def test_float_nan_and_infinity_sort_like_postgresql(pdb, spread):
    got, want, _ = both(pdb, spread[1], "SELECT f FROM mt ORDER BY f DESC")
    assert [repr(v) for (v,) in got] == [repr(v) for (v,) in want]
    assert math.isnan(got[1][0])


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT s FROM ci ORDER BY s",
        "SELECT s FROM ci ORDER BY s DESC LIMIT 3",
        "SELECT min(s), max(s), count(DISTINCT s) FROM ci",
        "SELECT s, count(*) FROM ci GROUP BY s ORDER BY s",
        "SELECT DISTINCT s FROM ci ORDER BY 1",
        'SELECT s FROM ci ORDER BY s COLLATE "C"',
    ],
)
def test_a_column_collation_orders_and_compares_as_one_database_does(pdb, conns, sql):
    words = [["a", "B"], ["b", "é"], ["A", "e"]]
    every = ["a", "B", "b", "é", "A", "e"]
    for conn, rows in [*zip(conns[0], words, strict=True), (conns[1], every)]:
        with conn.cursor() as cur:
            cur.execute('DROP TABLE IF EXISTS ci; CREATE TABLE ci (s text COLLATE "und-x-icu")')
            psycopg2.extras.execute_values(cur, "INSERT INTO ci VALUES %s", [(w,) for w in rows])
        conn.commit()
    # ICU's order is not code point order: a merge comparing code points would be wrong.
    with conns[1].cursor() as cur:
        cur.execute("SELECT s FROM ci ORDER BY s")
        assert [w for (w,) in cur.fetchall()] != sorted(every)
    conns[1].rollback()
    for name in (None, "ci_stream"):
        same_answer(pdb, conns[1], sql, ordered="ORDER BY" in sql, name=name)
        pdb.rollback()


def test_merged_aggregates_are_described_as_one_database_describes_them(pdb, ref):
    sql = (
        "SELECT avg(amount) AS a, stddev(weight) AS s, var_pop(quantity) AS v, "
        "count(DISTINCT status) AS d, avg(weight) AS f FROM orders"
    )
    with pdb.cursor() as cur, ref.cursor() as rcur:
        cur.execute(sql)
        rcur.execute(sql)
        got = [tuple(column) for column in cur.description]
        want = [tuple(column) for column in rcur.description]
    assert got == want
