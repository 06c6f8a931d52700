"""Differential test under a placement: rows placed on 3 shards by the placement's own shard function,
generated statements compared with a reference server holding every row.

Every answer must equal the reference's (in order when the ORDER BY is total, as a multiset
otherwise; numerics to the digit, floats approximately), or be refused with NotSupportedError.
Statements the placement makes shard-local (routed point lookups, co-located joins, GROUP BY the
key, subqueries correlated on the key) must never be refused, and a lookup of one key must run on
the one shard that holds it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import pytest
from conftest import run_on_all
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mergetools import approx_rows, as_multiset

import parallel_connection
from parallel_connection import NotSupportedError
from parallel_connection.placement import Hash, Modulo, Placement, Ranges, ShardFunction

SHARDS = 3
IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
STATEMENTS_PER_EXAMPLE = 10

CREATE = """
DROP TABLE IF EXISTS pd_a, pd_b, pd_c;
CREATE TABLE pd_a (k int NOT NULL, v int, s text, x numeric);
CREATE TABLE pd_b (k int NOT NULL, w int);
CREATE TABLE pd_c (id int, name text);
"""
DROP = "DROP TABLE IF EXISTS pd_a, pd_b, pd_c"

# Categories whose every statement the placement makes answerable: a refusal fails the test.
MUST_ANSWER = ("point", "colocated_join", "group_by_key", "correlated_on_key")

KEY = st.integers(-6, 12)
V = st.one_of(st.none(), st.integers(0, 5))
S = st.sampled_from([None, "a", "b", "B", "", "ab"])
X = st.one_of(st.none(), st.integers(-12, 12).map(lambda n: Decimal(n) / 4))
W = st.one_of(st.none(), st.integers(-3, 6))
NAME = st.sampled_from([None, "n0", "n1", "n2"])


@st.composite
def shard_functions(draw: Any) -> ShardFunction:
    kind = draw(st.sampled_from(["modulo", "hash", "ranges"]))
    if kind == "modulo":
        return Modulo()
    if kind == "hash":
        return Hash()
    splits = tuple(sorted(draw(st.sets(st.integers(-7, 13), max_size=3))))
    shards = tuple(
        draw(st.lists(st.integers(0, SHARDS - 1), min_size=len(splits) + 1, max_size=len(splits) + 1))
    )
    return Ranges(splits=splits, shards=shards)


@st.composite
def datasets(draw: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "pd_a": draw(st.lists(st.tuples(KEY, V, S, X), max_size=30)),
        "pd_b": draw(st.lists(st.tuples(KEY, W), max_size=30)),
        "pd_c": draw(st.lists(st.tuples(st.integers(0, 6), NAME), max_size=8)),
    }


# A statement: (category, sql, params, total order?)
Statement = tuple[str, str, Any, bool]


def _keys(draw: Any, n: int) -> list[int]:
    return draw(st.lists(KEY, min_size=n, max_size=n))


def point(draw: Any) -> Statement:
    k1, k2, k3 = _keys(draw, 3)
    shapes = ["=", "literal", "in", "any", "and", "agg", "window", "ordered", "null", "both", "either"]
    shapes.append("join")
    shape = draw(st.sampled_from(shapes))
    if shape == "=":
        return "point", "SELECT k, v, s, x FROM pd_a WHERE k = %s", (k1,), False
    if shape == "literal":
        return "point", f"SELECT * FROM pd_a WHERE k = {k1}", None, False
    if shape == "in":
        return "point", "SELECT k, v, x FROM pd_a WHERE k IN (%s, %s)", (k1, k2), False
    if shape == "any":
        return "point", "SELECT k, s FROM pd_a WHERE k = ANY(%s)", ([k1, k2, k3],), False
    if shape == "and":
        return "point", "SELECT k, v FROM pd_a WHERE k = %s AND v > %s", (k1, draw(st.integers(0, 4))), False
    if shape == "agg":
        return "point", "SELECT count(*), sum(x), min(s), avg(v) FROM pd_a WHERE k = %s", (k1,), True
    if shape == "null":
        return "point", "SELECT k, v FROM pd_a WHERE k = ANY(%s) OR k = %s", ([k1, None], None), False
    if shape == "both":
        return "point", "SELECT k, v, s FROM pd_a WHERE k = %s AND k = %s", (k1, k2), False
    if shape == "either":
        return "point", "SELECT k, x FROM pd_a WHERE k = %s OR k = %s", (k1, k2), False
    if shape == "join":
        sql = "SELECT k, v, w FROM pd_a JOIN pd_b USING (k) WHERE k = %s"
        return "point", sql, (k1,), False
    if shape == "window":
        sql = "SELECT k, v, rank() OVER (ORDER BY v), sum(x) OVER () FROM pd_a WHERE k IN (%s, %s)"
        return "point", sql, (k1, k1), False
    sql = "SELECT k, v, s, x FROM pd_a WHERE k = ANY(%s) ORDER BY k DESC, v NULLS FIRST, s, x LIMIT 4"
    return "point", sql, ([k1, k2],), True


def colocated_join(draw: Any) -> Statement:
    shape = draw(st.sampled_from(["using", "on", "left", "right_left", "full", "where", "agg"]))
    if shape == "using":
        return "colocated_join", "SELECT k, v, w FROM pd_a JOIN pd_b USING (k)", None, False
    if shape == "on":
        return "colocated_join", "SELECT pd_a.k, s, w FROM pd_a JOIN pd_b ON pd_a.k = pd_b.k", None, False
    if shape == "left":
        sql = "SELECT pd_a.k, pd_a.v, pd_b.w FROM pd_a LEFT JOIN pd_b ON pd_a.k = pd_b.k"
        return "colocated_join", sql, None, False
    if shape == "right_left":
        sql = "SELECT b.k, b.w, a.x FROM pd_b b LEFT JOIN pd_a a ON a.k = b.k AND a.v > %s"
        return "colocated_join", sql, (draw(st.integers(0, 4)),), False
    if shape == "full":
        sql = "SELECT k, a.v, b.w FROM pd_a a FULL JOIN pd_b b USING (k)"
        return "colocated_join", sql, None, False
    if shape == "where":
        sql = "SELECT k, v, w FROM pd_a JOIN pd_b USING (k) WHERE w > %s ORDER BY k, v, w LIMIT %s"
        # v and w are not unique per k: the order is total only over whole rows, and it is.
        return "colocated_join", sql, (draw(st.integers(-3, 5)), draw(st.integers(0, 6))), True
    sql = "SELECT pd_a.k, count(*), sum(w), max(x) FROM pd_a JOIN pd_b ON pd_a.k = pd_b.k GROUP BY pd_a.k"
    return "colocated_join", sql, None, False


def copy_join(draw: Any) -> Statement:
    shape = draw(st.sampled_from(["inner", "left", "agg"]))
    if shape == "inner":
        sql = "SELECT pd_a.k, pd_a.v, pd_c.name FROM pd_a JOIN pd_c ON pd_c.id = pd_a.v"
    elif shape == "left":
        sql = "SELECT a.k, c.name FROM pd_a a LEFT JOIN pd_c c ON c.id = a.v WHERE a.s IS NOT NULL"
    else:
        sql = "SELECT c.name, count(*), sum(a.x) FROM pd_a a JOIN pd_c c ON c.id = a.v GROUP BY c.name"
    return "copy_join", sql, None, False


HAVING_K = ["count(*) > 1", "sum(v) > 3 OR max(s) IS NULL", "min(x) < 0", "avg(v) >= 1"]


def group_by_key(draw: Any) -> Statement:
    having = draw(st.sampled_from([None, *HAVING_K]))
    select = draw(
        st.sampled_from(
            [
                "k, count(*), sum(x), max(s)",
                "k, sum(v) * 2 + count(*), max(v) - min(v)",
                "k, avg(x), count(DISTINCT s), string_agg(s, ',' ORDER BY s)",
                "k, sum(x) / NULLIF(count(v), 0), bool_or(v > 2)",
            ]
        )
    )
    sql = f"SELECT {select} FROM pd_a GROUP BY k"
    if having:
        sql += f" HAVING {having}"
    total = draw(st.booleans())
    if total:
        sql += " ORDER BY k" + draw(st.sampled_from(["", " DESC"]))
        if draw(st.booleans()):
            sql += f" LIMIT {draw(st.integers(0, 5))} OFFSET {draw(st.integers(0, 3))}"
    return "group_by_key", sql, None, total


def group_by_other(draw: Any) -> Statement:
    key = draw(st.sampled_from(["v", "s", "v % 2"]))
    aggs = draw(
        st.lists(
            st.sampled_from(
                ["count(*)", "count(x)", "sum(x)", "min(x)", "max(s)", "avg(x)", "avg(v)", "sum(k)"]
            ),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    sql = f"SELECT {key}, {', '.join(aggs)} FROM pd_a GROUP BY {key}"
    if draw(st.booleans()):
        sql += " HAVING " + draw(st.sampled_from(["count(*) > 1", "sum(k) > 2", "max(x) IS NOT NULL"]))
    total = draw(st.booleans())
    if total:
        sql += f" ORDER BY {key} NULLS FIRST"
        if draw(st.booleans()):
            sql += f" LIMIT {draw(st.integers(0, 4))}"
    return "group_by_other", sql, None, total


def ordered(draw: Any) -> Statement:
    columns = draw(st.permutations(["k", "v", "s", "x"]))
    order = ", ".join(
        c + draw(st.sampled_from(["", " DESC"])) + draw(st.sampled_from(["", " NULLS FIRST", " NULLS LAST"]))
        for c in columns
    )
    sql = f"SELECT k, v, s, x FROM pd_a ORDER BY {order} LIMIT {draw(st.integers(0, 10))}"
    if draw(st.booleans()):
        sql += f" OFFSET {draw(st.integers(0, 20))}"
    return "order_limit", sql, None, True


def distinct(draw: Any) -> Statement:
    shape = draw(st.sampled_from(["cols", "key", "count", "on_key", "ordered"]))
    if shape == "cols":
        return "distinct", "SELECT DISTINCT v, s FROM pd_a", None, False
    if shape == "key":
        return "distinct", "SELECT DISTINCT k FROM pd_a WHERE x IS NOT NULL", None, False
    if shape == "count":
        return "distinct", "SELECT count(DISTINCT v), count(DISTINCT k) FROM pd_a", None, True
    if shape == "on_key":
        sql = "SELECT DISTINCT ON (k) k, v, s FROM pd_a ORDER BY k, v NULLS FIRST, s, x"
        return "distinct", sql, None, True
    return "distinct", "SELECT DISTINCT s FROM pd_a ORDER BY s NULLS FIRST LIMIT 3", None, True


def correlated_on_key(draw: Any) -> Statement:
    w = draw(st.integers(-3, 6))
    shape = draw(st.sampled_from(["exists", "not_exists", "in", "scalar", "scalar_limit", "in_agg"]))
    if shape == "exists":
        sql = "SELECT k, v FROM pd_a WHERE EXISTS (SELECT 1 FROM pd_b WHERE pd_b.k = pd_a.k AND w > %s)"
    elif shape == "not_exists":
        sql = "SELECT k, s FROM pd_a WHERE NOT EXISTS (SELECT 1 FROM pd_b WHERE pd_b.k = pd_a.k AND w > %s)"
    elif shape == "in":
        sql = "SELECT k, x FROM pd_a WHERE k IN (SELECT k FROM pd_b WHERE w < %s)"
    elif shape == "scalar":
        sql = "SELECT k, v, (SELECT sum(w) FROM pd_b WHERE pd_b.k = pd_a.k AND w <> %s) FROM pd_a"
    elif shape == "scalar_limit":
        sql = (
            "SELECT k, (SELECT w FROM pd_b WHERE pd_b.k = pd_a.k AND w > %s "
            "ORDER BY w DESC NULLS LAST LIMIT 1) FROM pd_a"
        )
    else:
        sql = (
            "SELECT k, count(*) FROM pd_a WHERE k IN (SELECT k FROM pd_b GROUP BY k HAVING max(w) > %s) "
            "GROUP BY k"
        )
    return "correlated_on_key", sql, (w,), False


def not_in_key(draw: Any) -> Statement:
    sql = "SELECT k, v FROM pd_a WHERE k NOT IN (SELECT k FROM pd_b WHERE w > %s)"
    return "not_in_key", sql, (draw(st.integers(-3, 6)),), False


def window(draw: Any) -> Statement:
    select = draw(
        st.sampled_from(
            [
                "k, v, count(*) OVER (PARTITION BY k)",
                "k, v, sum(x) OVER (PARTITION BY k), rank() OVER (PARTITION BY k ORDER BY v)",
                "k, s, max(v) OVER (PARTITION BY k, s), dense_rank() OVER (PARTITION BY k ORDER BY s DESC)",
            ]
        )
    )
    return "window", f"SELECT {select} FROM pd_a", None, False


def refusable(draw: Any) -> Statement:
    sql = draw(
        st.sampled_from(
            [
                "SELECT pd_a.k, pd_b.k FROM pd_a JOIN pd_b ON pd_a.v = pd_b.w",
                "SELECT pd_a.k, w FROM pd_a JOIN pd_b ON pd_a.k = pd_b.w",
                "SELECT a.k, b.k FROM pd_a a JOIN pd_b b ON a.k = b.k + 1",
                "SELECT k, v FROM pd_a WHERE v > (SELECT avg(w) FROM pd_b)",
                "SELECT k FROM pd_a WHERE v IN (SELECT w FROM pd_b)",
                "SELECT k, (SELECT count(*) FROM pd_b) FROM pd_a",
                "SELECT k, v FROM pd_a WHERE EXISTS (SELECT 1 FROM pd_b WHERE pd_b.w = pd_a.v)",
                "SELECT v, row_number() OVER (ORDER BY v, k, s, x) FROM pd_a",
            ]
        )
    )
    return "refusable", sql, None, False


TEMPLATES = [
    point, colocated_join, copy_join, group_by_key, group_by_other, ordered, distinct,
    correlated_on_key, not_in_key, window, refusable,
]  # fmt: skip


@st.composite
def statements(draw: Any) -> Statement:
    return draw(st.sampled_from(TEMPLATES))(draw)


def _exact(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Numerics compared digit for digit (as PostgreSQL prints them); floats left to approx_rows."""
    return [tuple(("numeric", str(v)) if isinstance(v, Decimal) else v for v in row) for row in rows]


class Loader:
    """One psycopg2 connection per server; replaces the pd_ tables' rows, each on its shard."""

    def __init__(self, shard_dsns: list[str], reference_dsn: str) -> None:
        self.shards = [psycopg2.connect(d) for d in shard_dsns]
        self.reference = psycopg2.connect(reference_dsn)

    def load(self, data: dict[str, list[tuple[Any, ...]]], function: ShardFunction) -> None:
        per_shard: list[dict[str, list[tuple[Any, ...]]]] = [
            {"pd_a": [], "pd_b": [], "pd_c": list(data["pd_c"])} for _ in self.shards
        ]
        for table in ("pd_a", "pd_b"):
            for row in data[table]:
                per_shard[function.shard_of(row[0], SHARDS)][table].append(row)
        for conn, rows in [*zip(self.shards, per_shard, strict=True), (self.reference, data)]:
            with conn.cursor() as cur:
                cur.execute("TRUNCATE pd_a, pd_b, pd_c")
                for table in ("pd_a", "pd_b", "pd_c"):
                    if rows[table]:
                        psycopg2.extras.execute_values(cur, f"INSERT INTO {table} VALUES %s", rows[table])
            conn.commit()

    def close(self) -> None:
        for conn in [*self.shards, self.reference]:
            conn.close()


@pytest.fixture(scope="module")
def loader(sample: Any) -> Iterator[Loader]:
    everywhere = [*sample.shard_dsns, sample.reference_dsn]
    run_on_all(everywhere, CREATE)
    loader = Loader(sample.shard_dsns, sample.reference_dsn)
    yield loader
    loader.close()
    run_on_all(everywhere, DROP)


def placement_for(function: ShardFunction) -> Placement:
    return Placement(sharded={"pd_a": ("k", function), "pd_b": ("k", function)}, copied=["pd_c"])


def check(pdb: Any, ref: Any, statement: Statement, answered: Counter, refused: dict[str, list[str]]) -> None:
    category, sql, params, total = statement
    try:
        with ref.cursor() as rcur:
            rcur.execute(sql, params)
            want = rcur.fetchall()
    except psycopg2.Error:
        ref.rollback()
        with pytest.raises(psycopg2.Error):
            cur = pdb.cursor()
            cur.execute(sql, params)
            cur.fetchall()
        pdb.rollback()
        return
    finally:
        ref.rollback()
    try:
        cur = pdb.cursor()
        cur.execute(sql, params)
        got = cur.fetchall()
    except NotSupportedError:
        refused.setdefault(category, []).append(sql)
        pdb.rollback()
        return
    answered[category] += 1
    context = (sql, params)
    if total:
        assert approx_rows(_exact(got)) == approx_rows(_exact(want)), context
    else:
        assert as_multiset(_exact(got)) == as_multiset(_exact(want)), context
    assert cur.rowcount == len(want), context
    pdb.commit()


def check_routing(pdb: Any, ref: Any, function: ShardFunction, key: int) -> None:
    """A lookup of one key opens a transaction on the shard holding it, and on no other."""
    sql = "SELECT k, v, s, x FROM pd_a WHERE k = %s"
    pdb.commit()
    cur = pdb.cursor()
    cur.execute(sql, (key,))
    got = cur.fetchall()
    statuses = [c.get_transaction_status() for c in pdb.connections]
    home = function.shard_of(key, SHARDS)
    assert [i for i, status in enumerate(statuses) if status != IDLE] == [home], (function, key, statuses)
    with ref.cursor() as rcur:
        rcur.execute(sql, (key,))
        want = rcur.fetchall()
    ref.rollback()
    assert as_multiset(_exact(got)) == as_multiset(_exact(want)), (sql, key)
    pdb.commit()


def test_placed_statements_match_one_database_and_shard_local_ones_are_answered(sample, loader):
    answered: Counter = Counter()
    refused: dict[str, list[str]] = {}

    @SETTINGS
    @given(
        function=shard_functions(),
        data=datasets(),
        batch=st.lists(statements(), min_size=4, max_size=STATEMENTS_PER_EXAMPLE),
        key=KEY,
    )
    def differential(function, data, batch, key):
        loader.load(data, function)
        pdb = parallel_connection.connect(sample.shard_dsns, placement=placement_for(function))
        try:
            # The first statement of a connection reads the catalog on every shard.
            cur = pdb.cursor()
            cur.execute("SELECT count(*) FROM pd_c")
            assert cur.fetchall() == [(len(data["pd_c"]),)]
            check_routing(pdb, loader.reference, function, key)
            for statement in batch:
                check(pdb, loader.reference, statement, answered, refused)
        finally:
            pdb.close()

    differential()
    summary = {c: (answered[c], len(refused.get(c, []))) for c in {*answered, *refused}}
    print("answered, refused per category:", dict(sorted(summary.items())))
    wrongly_refused = {c: sorted(set(refused[c]), key=len)[:3] for c in MUST_ANSWER if c in refused}
    assert not wrongly_refused, wrongly_refused
    assert all(answered[c] > 0 for c in MUST_ANSWER), summary
