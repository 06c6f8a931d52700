"""Differential test of the coordinator stage (issue 10): statements the shards cannot finish alone.

Rows are placed on 3 shards by the placement's own shard function (a sharded table, a second one
co-located on the same key, a copied table) and every row is loaded on a reference server. A
generated statement must come back as the reference gives it: the same column names and type codes,
the same values of the same Python types (a Decimal with the same digits and scale, a float within a
tight relative tolerance), in the same order when the ORDER BY decides it (as a multiset otherwise),
the same rowcount; or, when the reference raises an error, an error too. A NotSupportedError is
accepted (counted per family, shown with ``--hypothesis-show-statistics``); any other difference is
a failure.

The fixed tests at the end name, per construct family, statements that must be answered exactly:
a refusal of them fails too.
``COORDINATOR_DIFFERENTIAL_EXAMPLES=200`` runs more generated examples;
``COORDINATOR_DIFFERENTIAL_SHRINK=1`` shrinks a failing example (slow: minutes).
"""

from __future__ import annotations

import datetime
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.extras
import pytest
from conftest import run_on_all
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st

import parallel_connection
from parallel_connection import NotSupportedError
from parallel_connection.placement import Hash, Modulo, Placement, Ranges, ShardFunction

SHARDS = 3
EXAMPLES = int(os.environ.get("COORDINATOR_DIFFERENTIAL_EXAMPLES", "30"))
# Each example loads 4 servers: shrinking a failure takes minutes, so it is off unless asked for.
PHASES = tuple(Phase) if os.environ.get("COORDINATOR_DIFFERENTIAL_SHRINK") else (Phase.generate,)
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    phases=PHASES,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FLOAT_TOLERANCE = 1e-12


class Refused(AssertionError):
    """A statement that must be answered was refused (NotSupportedError)."""


# Until the coordinator stage lands, a refusal is expected; a wrong answer or any other error still fails.

# The first of these collations that every server has collates column u (else u is plain text).
COLLATIONS = ("en_US", "en_US.utf8", "en-US-x-icu", "en-x-icu", "und-x-icu")
CREATE = """
DROP TABLE IF EXISTS cd_a, cd_b, cd_c;
CREATE TABLE cd_a (
    id int NOT NULL, k int NOT NULL, i int, n numeric(8, 2), f double precision,
    t text, u text {collate}, d date, ts timestamptz, b boolean
);
CREATE TABLE cd_b (id int NOT NULL, k int NOT NULL, j int, m numeric(6, 1), t text);
CREATE TABLE cd_c (id int, name text, w numeric(5, 2));
"""
DROP = "DROP TABLE IF EXISTS cd_a, cd_b, cd_c"
TABLES = ("cd_a", "cd_b", "cd_c")

# A few shard functions: one connection each, kept for the whole module. Ranges((4,), (1, 1)) puts
# every row on shard 1, leaving shard 0 (the coordinator's) and shard 2 empty.
FUNCTIONS: tuple[ShardFunction, ...] = (
    Modulo(),
    Hash(),
    Ranges(splits=(0, 6), shards=(2, 0, 1)),
    Ranges(splits=(4,), shards=(1, 1)),
)

# -- data ---------------------------------------------------------------------------------------------

UTC = datetime.timezone.utc
KEY = st.integers(-3, 11)
INT = st.one_of(st.none(), st.integers(-2, 4))
NUM = st.one_of(st.none(), st.integers(-12, 12).map(lambda v: Decimal(v) / 4))
NUM1 = st.one_of(st.none(), st.integers(-8, 8).map(lambda v: Decimal(v) / 2))
# Dyadic floats add up exactly in any order; infinities and NaN now and then.
FLOAT = st.sampled_from(
    [None, None, 0.5, -1.25, 3.0, 0.75, 2.5, -0.125, 0.0, 0.5, 3.0, float("inf"), float("nan")]
)
# Texts that order differently under C and under a linguistic collation, and some that an array or
# a literal could get wrong.
TEXT = st.sampled_from([None, "a", "B", "b", "é", "", "ab", "A b", "Z", "a", "NULL", "a,b", "it's", '{"x"}'])
DATE = st.one_of(
    st.none(), st.integers(0, 5).map(lambda n: datetime.date(2024, 2, 27) + datetime.timedelta(n))
)
TIMESTAMP = st.one_of(
    st.none(),
    st.integers(0, 40).map(lambda h: datetime.datetime(2024, 1, 1, tzinfo=UTC) + datetime.timedelta(hours=h)),
)
BOOL = st.sampled_from([None, True, False])

Data = dict[str, list[tuple[Any, ...]]]


@st.composite
def datasets(draw: Any) -> Data:
    a = draw(st.lists(st.tuples(KEY, INT, NUM, FLOAT, TEXT, TEXT, DATE, TIMESTAMP, BOOL), max_size=24))
    b = draw(st.lists(st.tuples(KEY, INT, NUM1, TEXT), max_size=14))
    c = draw(st.lists(st.tuples(st.integers(-1, 5), TEXT, NUM), max_size=6, unique_by=lambda row: row[0]))
    return {
        "cd_a": [(n, *row) for n, row in enumerate(a)],
        "cd_b": [(n, *row) for n, row in enumerate(b)],
        "cd_c": c,
    }


def fixed_data() -> Data:
    """A deterministic data set for the fixed tests: every column has NULLs, repeats and ties."""
    a = []
    for n in range(40):
        a.append(
            (
                n,
                (n * 7) % 13 - 2,
                None if n % 9 == 4 else n % 5 - 1,
                None if n % 11 == 3 else Decimal((n * 37) % 41 - 20) / 4,
                None if n % 7 == 2 else [0.5, -1.25, 3.0, 0.75, 2.5][n % 5],
                None if n % 6 == 5 else ["a", "B", "b", "é", "", "ab"][n % 6],
                None if n % 8 == 1 else ["a", "B", "b", "é", "Z", "ab"][(n * 5) % 6],
                None if n % 10 == 0 else datetime.date(2024, 2, 27) + datetime.timedelta(n % 4),
                None
                if n % 12 == 6
                else datetime.datetime(2024, 1, 1, tzinfo=UTC) + datetime.timedelta(hours=n),
                None if n % 4 == 3 else n % 3 == 0,
            )
        )
    b = [
        (
            n,
            (n * 5) % 11 - 1,
            None if n % 7 == 6 else n % 4,
            None if n % 5 == 2 else Decimal(n % 9 - 4) / 2,
            None if n % 6 == 1 else ["a", "b", "ab", "Z"][n % 4],
        )
        for n in range(20)
    ]
    c = [
        (0, "zero", Decimal("1.50")),
        (1, "one", None),
        (2, None, Decimal("-0.25")),
        (3, "one", Decimal("2")),
        (5, "five", Decimal("0.00")),
    ]
    return {"cd_a": a, "cd_b": b, "cd_c": c}


FIXED = fixed_data()


def placement_for(function: ShardFunction) -> Placement:
    return Placement(sharded={"cd_a": ("k", function), "cd_b": ("k", function)}, copied=["cd_c"])


class Servers:
    """The loading connections (one per server), and one ParallelConnection per shard function."""

    def __init__(self, shard_dsns: list[str], reference_dsn: str, collation: str | None) -> None:
        self.shard_dsns = shard_dsns
        self.collation = collation
        self.shards = [psycopg2.connect(d) for d in shard_dsns]
        self.reference = psycopg2.connect(reference_dsn)
        for conn in [*self.shards, self.reference]:
            with conn.cursor() as cur:
                cur.execute("SET lock_timeout = '10s'")  # a leaked transaction fails the load, not hangs it
            conn.commit()
        self.pdbs: dict[ShardFunction, parallel_connection.ParallelConnection] = {}
        self.loaded: tuple[Data, ShardFunction] | None = None

    def pdb(self, function: ShardFunction) -> parallel_connection.ParallelConnection:
        if function not in self.pdbs:
            self.pdbs[function] = parallel_connection.connect(
                self.shard_dsns, placement=placement_for(function), statement_timeout=60
            )
        return self.pdbs[function]

    def load(self, data: Data, function: ShardFunction) -> None:
        if self.loaded is not None and self.loaded[0] is data and self.loaded[1] == function:
            return
        for pdb in self.pdbs.values():
            pdb.rollback()  # an open transaction would block TRUNCATE
        per_shard: list[Data] = [{"cd_a": [], "cd_b": [], "cd_c": list(data["cd_c"])} for _ in self.shards]
        for table in ("cd_a", "cd_b"):
            for row in data[table]:
                per_shard[function.shard_of(row[1], SHARDS)][table].append(row)
        for conn, rows in [*zip(self.shards, per_shard, strict=True), (self.reference, data)]:
            with conn.cursor() as cur:
                cur.execute("TRUNCATE " + ", ".join(TABLES))
                for table in TABLES:
                    if rows[table]:
                        psycopg2.extras.execute_values(cur, f"INSERT INTO {table} VALUES %s", rows[table])
            conn.commit()
        self.loaded = (data, function)

    def close(self) -> None:
        for pdb in self.pdbs.values():
            pdb.close()
        for conn in [*self.shards, self.reference]:
            conn.close()


def _collation(dsns: Sequence[str]) -> str | None:
    found = set(COLLATIONS)
    for dsn in dsns:
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT collname FROM pg_collation WHERE collname = ANY(%s) "
                    "AND collencoding IN (-1, (SELECT encoding FROM pg_database "
                    "WHERE datname = current_database()))",
                    (list(COLLATIONS),),
                )
                found &= {name for (name,) in cur.fetchall()}
        finally:
            conn.close()
    return next((name for name in COLLATIONS if name in found), None)


@pytest.fixture(scope="module")
def env(servers: Any) -> Iterator[Servers]:
    everywhere = [*servers.shard_dsns, servers.reference_dsn]
    collation = _collation(everywhere)
    run_on_all(everywhere, CREATE.format(collate=f'COLLATE "{collation}"' if collation else ""))
    env = Servers(servers.shard_dsns, servers.reference_dsn, collation)
    yield env
    env.close()
    run_on_all(everywhere, DROP)


# -- statements ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stmt:
    """A generated statement: its family, SQL, parameters, how many columns it returns, whether
    its order is total (compare as lists) and whether ORDER BY / LIMIT may be added at the end."""

    family: str
    sql: str
    params: tuple[Any, ...] | dict[str, Any] = ()
    width: int = 1
    total: bool = False
    open_end: bool = True


Draw = Callable[..., Any]

WHERE_A = [
    ("i > %s", INT.filter(lambda v: v is not None)),
    ("b", None),
    ("t IS NOT NULL", None),
    ("n < %s", NUM.filter(lambda v: v is not None)),
    ("d >= %s", DATE.filter(lambda v: v is not None)),
    ("ts < %s", TIMESTAMP.filter(lambda v: v is not None)),
    ("t = ANY(%s)", st.lists(TEXT.filter(lambda v: v is not None), min_size=1, max_size=3)),
    ("k IN (%s, %s)", st.tuples(KEY, KEY)),
    ("u > 'a'", None),
]


def where_a(draw: Draw) -> tuple[str, tuple[Any, ...]]:
    """An optional WHERE over cd_a, and its parameters."""
    if draw(st.integers(0, 2)) == 0:
        return "", ()
    condition, values = draw(st.sampled_from(WHERE_A))
    if values is None:
        return " WHERE " + condition, ()
    value = draw(values)
    return " WHERE " + condition, value if isinstance(value, tuple) else (value,)


GROUP_KEYS = ["i", "b", "t", "d", "mod(i, 2)", "k", "u"]
# Aggregates the shards and the client merge today.
AGGREGATES = [
    "count(*)",
    "count(n)",
    "sum(i)",
    "sum(n)",
    "avg(i)",
    "avg(n)",
    "min(t)",
    "max(t)",
    "min(d)",
    "max(ts)",
    "sum(f)",
    "avg(f)",
    "max(f)",
    "bool_and(b)",
    "bool_or(b)",
    "count(DISTINCT t)",
    "count(DISTINCT i)",
    "stddev(n)",
    "var_pop(i)",
    "sum(n) FILTER (WHERE b)",
    "max(n)",
    "min(u)",
    "every(b)",
    "variance(f)",
]
HAVING_TODAY = [
    "count(*) > 1",
    "sum(i) > 1",
    "max(t) < 'b'",
    "min(n) IS NOT NULL",
    "avg(n) >= 0 OR count(*) = 1",
]
# Expressions over aggregates: finished by the coordinator. (sql, parameter strategy or None)
AGGREGATE_EXPRESSIONS: list[tuple[str, Any]] = [
    ("round(avg(n), 2)", None),
    ("round(avg(i), 1)", None),
    ("coalesce(sum(i), 0)", None),
    ("coalesce(sum(n), 0)", None),
    ("sum(i) / count(*)", None),
    ("sum(n) / count(*)", None),
    ("count(*)::float", None),
    ("count(*)::float8 / 3", None),
    ("100.0 * sum(CASE WHEN b THEN 1 ELSE 0 END) / count(*)", None),
    ("max(d) - min(d)", None),
    ("max(ts) - min(ts)", None),
    ("avg(f) * 2", None),
    ("sum(n) * 2 - max(n)", None),
    ("count(DISTINCT t) + count(*)", None),
    ("greatest(max(i), 0)", None),
    ("max(t) || '!'", None),
    ("upper(min(t))", None),
    ("bool_or(b) AND count(*) > 1", None),
    ("sum(n)::int", None),
    ("avg(n)::numeric(10, 3)", None),
    ("sum(i)::float / nullif(count(i), 0)", None),
    ("sum(n) / nullif(sum(i), 0)", None),
    ("stddev(f) + 1", None),
    ("%s + count(*)", st.integers(-3, 3)),
    ("count(*) * %s", st.sampled_from([Decimal("0.5"), Decimal("2.25")])),
    ("max(u) || ''", None),
    ("sum(n) / sum(i)", None),  # may divide by zero: then both must fail
]
HAVING_EXPRESSIONS: list[tuple[str, Any]] = [
    ("avg(n) > %s", NUM.filter(lambda v: v is not None)),
    ("sum(i) / count(*) >= 1", None),
    ("max(t) LIKE 'a_'", None),
    ("count(DISTINCT t) > 1 AND min(d) < %s", DATE.filter(lambda v: v is not None)),
    ("bool_or(b)", None),
    ("coalesce(sum(n), 0) <> 0", None),
    ("count(*) FILTER (WHERE b) > 0", None),
    ("abs(sum(i)) > 2", None),
    ("max(ts) - min(ts) > interval '3 hours'", None),
    ("sum(n) BETWEEN -1 AND %s", st.sampled_from([Decimal("0.5"), Decimal("3")])),
    ("count(*) IN (1, 3)", None),
    ("min(u) < 'b'", None),
    ("sum(f) > 1 OR max(t) IS NULL", None),
]


def _pick(draw: Draw, choices: list[tuple[str, Any]]) -> tuple[str, tuple[Any, ...]]:
    sql, values = draw(st.sampled_from(choices))
    return sql, (() if values is None else (draw(values),))


def merge_group(draw: Draw) -> Stmt:
    """GROUP BY with aggregates the client merges today, WHERE and HAVING."""
    keys = draw(st.lists(st.sampled_from(GROUP_KEYS), max_size=2, unique=True))
    aggregates = draw(st.lists(st.sampled_from(AGGREGATES), min_size=1, max_size=3, unique=True))
    where, params = where_a(draw)
    sql = "SELECT " + ", ".join([*keys, *aggregates]) + " FROM cd_a" + where
    if keys:
        sql += " GROUP BY " + ", ".join(keys)
    if draw(st.booleans()):
        sql += " HAVING " + draw(st.sampled_from(HAVING_TODAY))
    return Stmt("merge_group", sql, params, len(keys) + len(aggregates), total=not keys)


ROW_COLUMNS = ["id", "k", "i", "n", "f", "t", "d", "ts", "b", "u"]


HIDDEN_ORDER = ["n * -1", "lower(t)", "coalesce(i, 0) DESC", "ts NULLS FIRST", "d DESC", "b", 't COLLATE "C"']


def merge_rows(draw: Draw) -> Stmt:
    """Projections with WHERE and DISTINCT, ordered by their columns at the end; or ordered by
    expressions that are not in the select list (then by id), or DISTINCT ON, with LIMIT / OFFSET."""
    columns = draw(st.lists(st.sampled_from(ROW_COLUMNS), min_size=1, max_size=4, unique=True))
    where, params = where_a(draw)
    shape = draw(st.integers(0, 5))
    if shape == 0:
        sql = f"SELECT DISTINCT {', '.join(columns)} FROM cd_a{where}"
        return Stmt("merge_rows", sql, params, len(columns))
    if shape == 1:
        order = draw(st.lists(st.sampled_from(HIDDEN_ORDER), min_size=1, max_size=2, unique=True))
        sql = f"SELECT {', '.join(columns)} FROM cd_a{where} ORDER BY {', '.join(order)}, id"
    elif shape == 2:
        key = draw(st.sampled_from(["i", "b", "d", "t"]))
        sql = (
            f"SELECT DISTINCT ON ({key}) {key}, {', '.join(columns)} FROM cd_a{where} ORDER BY {key}, id DESC"
        )
    else:
        return Stmt("merge_rows", f"SELECT {', '.join(columns)} FROM cd_a{where}", params, len(columns))
    limit = draw(
        st.sampled_from(
            ["", " LIMIT 3", " LIMIT %s", " OFFSET 2", " LIMIT 2 OFFSET %s", " FETCH FIRST 4 ROWS ONLY"]
        )
    )
    if "%s" in limit:
        params = (*params, draw(st.one_of(st.none(), st.integers(0, 5))) if "LIMIT %s" in limit else 1)
    return Stmt("merge_rows", sql + limit, params, len(columns), total=True, open_end=False)


def merge_join(draw: Draw) -> Stmt:
    """Co-located joins (on the shard key) and joins with the copied table, as merged today."""
    shape = draw(st.integers(0, 4))
    if shape == 0:
        return Stmt("merge_join", "SELECT a.id, b.id, a.i, b.j FROM cd_a a JOIN cd_b b USING (k)", (), 4)
    if shape == 1:
        sql = "SELECT a.k, count(*), sum(b.m), max(a.n) FROM cd_a a JOIN cd_b b ON a.k = b.k GROUP BY a.k"
        return Stmt("merge_join", sql, (), 4)
    if shape == 2:
        sql = "SELECT c.name, count(*), sum(a.n), avg(a.i) FROM cd_a a JOIN cd_c c ON c.id = a.i GROUP BY 1"
        return Stmt("merge_join", sql, (), 4)
    if shape == 3:
        sql = "SELECT a.id, c.name FROM cd_a a LEFT JOIN cd_c c ON c.id = a.i WHERE a.n > %s"
        return Stmt("merge_join", sql, (draw(NUM.filter(lambda v: v is not None)),), 2)
    sql = "SELECT a.id, a.k FROM cd_a a WHERE EXISTS (SELECT 1 FROM cd_b b WHERE b.k = a.k AND b.j > %s)"
    return Stmt("merge_join", sql, (draw(st.integers(-2, 4)),), 2)


def aggregate_expression(draw: Draw) -> Stmt:
    keys = draw(st.lists(st.sampled_from(GROUP_KEYS[:5]), max_size=2, unique=True))
    picked = draw(st.lists(st.sampled_from(AGGREGATE_EXPRESSIONS), min_size=1, max_size=3, unique=True))
    exprs: list[str] = []
    params: list[Any] = []
    for sql, values in picked:
        exprs.append(sql)
        if values is not None:
            params.append(draw(values))
    if "i" in keys and draw(st.booleans()):
        exprs.append("i * count(*) + coalesce(max(i), 0)")
    where, where_params = where_a(draw)
    sql = "SELECT " + ", ".join([*keys, *exprs]) + " FROM cd_a" + where
    if keys:
        sql += " GROUP BY " + ", ".join(keys)
    return Stmt("aggregate_expression", sql, (*params, *where_params), len(keys) + len(exprs), total=not keys)


def having_expression(draw: Draw) -> Stmt:
    keys = draw(st.lists(st.sampled_from(GROUP_KEYS), min_size=1, max_size=2, unique=True))
    aggregates = draw(st.lists(st.sampled_from(AGGREGATES[:12]), min_size=1, max_size=2, unique=True))
    where, params = where_a(draw)
    having, having_params = _pick(draw, HAVING_EXPRESSIONS)
    sql = (
        "SELECT " + ", ".join([*keys, *aggregates]) + f" FROM cd_a{where} GROUP BY {', '.join(keys)}"
        f" HAVING {having}"
    )
    return Stmt("having_expression", sql, (*params, *having_params), len(keys) + len(aggregates))


WINDOWS = [
    ("id, n, rank() OVER (ORDER BY n)", 3),
    ("id, i, dense_rank() OVER (ORDER BY i DESC NULLS LAST)", 3),
    ("id, i, count(*) OVER (PARTITION BY i)", 3),
    ("id, sum(n) OVER (PARTITION BY b ORDER BY i)", 2),
    ("id, row_number() OVER (ORDER BY t, id)", 2),
    ("id, lag(n) OVER (ORDER BY id), lead(t, 2, 'none') OVER (ORDER BY id)", 3),
    ("id, sum(f) OVER (), count(*) OVER ()", 3),
    ("id, avg(n) OVER (PARTITION BY t)", 2),
    ("id, n, percent_rank() OVER (ORDER BY n), cume_dist() OVER (ORDER BY n)", 4),
    ("id, ntile(3) OVER (ORDER BY id)", 2),
    ("id, first_value(t) OVER (PARTITION BY i ORDER BY id)", 2),
    ("id, rank() OVER (ORDER BY u)", 2),
    ("id, sum(i) OVER (ORDER BY d, id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW), d", 3),
    ("id, k, count(*) OVER (PARTITION BY k), sum(n) OVER (PARTITION BY k ORDER BY id)", 4),
]


def window(draw: Draw) -> Stmt:
    shape = draw(st.integers(0, len(WINDOWS) + 1))
    if shape == len(WINDOWS):
        sql = "SELECT i, sum(n), rank() OVER (ORDER BY sum(n) DESC NULLS LAST) FROM cd_a GROUP BY i"
        return Stmt("window", sql, (), 3)
    if shape == len(WINDOWS) + 1:
        sql = "SELECT * FROM (SELECT id, n, rank() OVER (ORDER BY n DESC) AS r FROM cd_a) s WHERE r <= %s"
        return Stmt("window", sql, (draw(st.integers(0, 5)),), 3)
    select, width = WINDOWS[shape]
    where, params = where_a(draw)
    return Stmt("window", f"SELECT {select} FROM cd_a{where}", params, width)


def ordered_over(draw: Draw) -> Stmt:
    """ORDER BY / DISTINCT / LIMIT over coordinator results (always totally ordered)."""
    inner = draw(st.sampled_from([aggregate_expression, window, having_expression]))(draw)
    sql = inner.sql
    if draw(st.booleans()) and sql.startswith("SELECT "):
        sql = "SELECT DISTINCT " + sql[len("SELECT ") :]
    return _finish(draw, Stmt("ordered_over", sql, inner.params, inner.width), force=True)


INT_PARTS = [
    ("SELECT i FROM cd_a", ()),
    ("SELECT j FROM cd_b", ()),
    ("SELECT id FROM cd_c", ()),
    ("SELECT i FROM cd_a WHERE n > %s", (Decimal("0"),)),
    ("SELECT DISTINCT j FROM cd_b WHERE t IS NOT NULL", ()),
    ("(SELECT i FROM cd_a ORDER BY i NULLS LAST, id LIMIT 4)", ()),
    ("SELECT count(*)::int FROM cd_a GROUP BY t", ()),
]
TEXT_PARTS = [
    ("SELECT t FROM cd_a", ()),
    ("SELECT t FROM cd_b", ()),
    ("SELECT name FROM cd_c", ()),
    ("SELECT t FROM cd_a WHERE b", ()),
    ("SELECT max(t) FROM cd_b GROUP BY j", ()),
]
NUMERIC_PARTS = [("SELECT n FROM cd_a", ()), ("SELECT m FROM cd_b", ()), ("SELECT w FROM cd_c", ())]
PAIR_PARTS = [
    ("SELECT i, t FROM cd_a", ()),
    ("SELECT j, t FROM cd_b", ()),
    ("SELECT id, name FROM cd_c", ()),
    ("SELECT i, max(t) FROM cd_a GROUP BY i", ()),
    ("SELECT j, t FROM cd_b WHERE j < %s", (2,)),
]
SET_OPERATORS = ["UNION", "UNION ALL", "INTERSECT", "INTERSECT ALL", "EXCEPT", "EXCEPT ALL"]


def set_operation(draw: Draw) -> Stmt:
    parts, width = draw(
        st.sampled_from([(INT_PARTS, 1), (TEXT_PARTS, 1), (NUMERIC_PARTS, 1), (PAIR_PARTS, 2)])
    )
    chosen = draw(st.lists(st.sampled_from(parts), min_size=2, max_size=3))
    sql, params = chosen[0]
    for part, part_params in chosen[1:]:
        sql = f"{sql} {draw(st.sampled_from(SET_OPERATORS))} {part}"
        params = (*params, *part_params)
    if draw(st.integers(0, 3)) == 0:
        sql = f"SELECT count(*) FROM ({sql}) s"
        width = 1
    return Stmt("set_operation", sql, params, width)


def grouping_sets(draw: Draw) -> Stmt:
    first, second = draw(st.lists(st.sampled_from(["i", "b", "t", "d"]), min_size=2, max_size=2, unique=True))
    kind = draw(st.sampled_from(["ROLLUP ({0}, {1})", "CUBE ({0}, {1})", "GROUPING SETS (({0}), ({1}), ())"]))
    aggregates = draw(st.lists(st.sampled_from(AGGREGATES[:14]), min_size=1, max_size=2, unique=True))
    select = [first, second, *aggregates]
    if draw(st.booleans()):
        select.append(f"grouping({first}, {second})")
    where, params = where_a(draw)
    sql = f"SELECT {', '.join(select)} FROM cd_a{where} GROUP BY {kind.format(first, second)}"
    if draw(st.booleans()):
        sql += " HAVING count(*) > %s"
        params = (*params, draw(st.integers(0, 2)))
    return Stmt("grouping_sets", sql, params, len(select))


SUBQUERIES: list[tuple[str, int, Any]] = [
    ("SELECT id, i FROM cd_a WHERE i > (SELECT avg(j) FROM cd_b)", 2, None),
    ("SELECT id FROM cd_a WHERE i IN (SELECT j FROM cd_b WHERE m > %s)", 1, NUM1),
    ("SELECT id FROM cd_a WHERE i NOT IN (SELECT j FROM cd_b)", 1, None),
    ("SELECT id FROM cd_a WHERE i NOT IN (SELECT j FROM cd_b WHERE j IS NOT NULL)", 1, None),
    ("SELECT id, t FROM cd_a WHERE EXISTS (SELECT 1 FROM cd_b WHERE j > %s)", 2, st.integers(-2, 5)),
    ("SELECT id FROM cd_a WHERE NOT EXISTS (SELECT 1 FROM cd_b WHERE m > %s)", 1, NUM1),
    ("SELECT id FROM cd_a WHERE i = ANY (SELECT j FROM cd_b WHERE t IS NOT NULL)", 1, None),
    ("SELECT id FROM cd_a WHERE n > ALL (SELECT m FROM cd_b)", 1, None),
    ("SELECT id, (SELECT max(m) FROM cd_b) FROM cd_a", 2, None),
    ("SELECT count(*), (SELECT count(*) FROM cd_b) FROM cd_a", 2, None),
    (
        "SELECT t, count(*) FROM cd_a WHERE i IN (SELECT j FROM cd_b GROUP BY j HAVING "
        "count(*) > 1) GROUP BY t",
        2,
        None,
    ),
    ("SELECT id FROM cd_a WHERE n = (SELECT max(n) FROM cd_a)", 1, None),
    ("SELECT id FROM cd_a WHERE i IN (SELECT id FROM cd_c)", 1, None),
    ("SELECT id FROM cd_a WHERE t IN (SELECT t FROM cd_b ORDER BY id LIMIT %s)", 1, st.integers(0, 4)),
    ("SELECT count(*), max(c) FROM (SELECT i, count(*) AS c FROM cd_a GROUP BY i) s", 2, None),
    ("SELECT s.t, s.c FROM (SELECT t, count(*) AS c FROM cd_a GROUP BY t) s WHERE s.c > 1", 2, None),
    (
        "SELECT * FROM (SELECT id, n FROM cd_a ORDER BY n DESC NULLS LAST, id LIMIT %s) s",
        2,
        st.integers(0, 6),
    ),
    ("SELECT avg(x), count(*) FROM (SELECT DISTINCT i AS x FROM cd_a) s", 2, None),
    (
        "SELECT id, i FROM cd_a WHERE i > (SELECT min(j) FROM cd_b WHERE j > (SELECT avg(i) FROM cd_a))",
        2,
        None,
    ),
]


# Named parameters, one of them used twice (the statement is left as it is: no LIMIT %s added).
NAMED: list[tuple[str, int]] = [
    ("SELECT id FROM cd_a WHERE i > %(v)s AND i IN (SELECT j FROM cd_b WHERE j <> %(v)s)", 1),
    ("SELECT sum(i) + %(v)s, count(*) FROM cd_a HAVING count(*) > %(v)s", 2),
    (
        "WITH s AS (SELECT i, count(*) AS c FROM cd_a WHERE i <> %(v)s GROUP BY i) "
        "SELECT max(c), %(v)s FROM s",
        2,
    ),
    ("SELECT id, rank() OVER (ORDER BY n) FROM cd_a WHERE i >= %(v)s OR k = %(w)s", 2),
]


def subquery(draw: Draw) -> Stmt:
    if draw(st.integers(0, 4)) == 0:
        sql, width = draw(st.sampled_from(NAMED))
        params = {"v": draw(st.integers(-1, 3)), "w": draw(KEY)}
        return Stmt("subquery", sql, params, width, open_end=False)
    sql, width, values = draw(st.sampled_from(SUBQUERIES))
    return Stmt("subquery", sql, () if values is None else (draw(values),), width)


CTES: list[tuple[str, int, Any]] = [
    (
        "WITH s AS (SELECT i, sum(n) AS total FROM cd_a GROUP BY i) SELECT max(total), "
        "min(total), count(*) FROM s",
        3,
        None,
    ),
    (
        "WITH top AS (SELECT id, n FROM cd_a ORDER BY n DESC NULLS LAST, id LIMIT %s) "
        "SELECT count(*), sum(n) FROM top",
        2,
        st.integers(0, 6),
    ),
    ("WITH d AS (SELECT DISTINCT t FROM cd_a) SELECT count(*), max(t) FROM d", 2, None),
    (
        "WITH s AS (SELECT i, count(*) AS c FROM cd_a GROUP BY i) SELECT a.i, a.c, b.c "
        "FROM s a JOIN s b ON b.i = a.i + 1",
        3,
        None,
    ),
    (
        "WITH x AS (SELECT i, max(n) AS mx FROM cd_a GROUP BY i), y AS (SELECT avg(mx) AS am FROM x) "
        "SELECT x.i, x.mx FROM x, y WHERE x.mx > y.am",
        2,
        None,
    ),
    (
        "WITH s AS (SELECT j, count(*) AS c FROM cd_b GROUP BY j) "
        "SELECT a.id, s.c FROM cd_a a JOIN s ON s.j = a.i",
        2,
        None,
    ),
    (
        "WITH s AS MATERIALIZED (SELECT DISTINCT i FROM cd_a) "
        "SELECT (SELECT count(*) FROM s), (SELECT max(i) FROM s)",
        2,
        None,
    ),
    (
        "WITH s AS (SELECT t, c FROM (SELECT t, count(*) AS c FROM cd_a GROUP BY t) q "
        "WHERE c > %s) SELECT sum(c) FROM s",
        1,
        st.integers(0, 2),
    ),
    ("WITH s AS (SELECT id, n FROM cd_a WHERE n > %s) SELECT count(*), sum(n) FROM s", 2, NUM),
    ("WITH s AS (SELECT t FROM cd_a UNION SELECT t FROM cd_b) SELECT count(*) FROM s", 1, None),
    (
        "WITH s AS (SELECT k, sum(n) AS total FROM cd_a GROUP BY k) SELECT count(*), "
        "sum(total), max(total) FROM s",
        3,
        None,
    ),
]


def cte(draw: Draw) -> Stmt:
    sql, width, values = draw(st.sampled_from(CTES))
    return Stmt("cte", sql, () if values is None else (draw(values),), width)


CORRELATED: list[tuple[str, int, Any]] = [
    ("SELECT id, n FROM cd_a a WHERE n > (SELECT avg(n) FROM cd_a a2 WHERE a2.i = a.i)", 2, None),
    ("SELECT id FROM cd_a a WHERE EXISTS (SELECT 1 FROM cd_b b WHERE b.j = a.i)", 1, None),
    ("SELECT id FROM cd_a a WHERE NOT EXISTS (SELECT 1 FROM cd_b b WHERE b.t = a.t)", 1, None),
    ("SELECT id, (SELECT count(*) FROM cd_b b WHERE b.j = a.i) FROM cd_a a", 2, None),
    ("SELECT id, (SELECT max(m) FROM cd_b b WHERE b.j = a.i) FROM cd_a a", 2, None),
    ("SELECT id FROM cd_a a WHERE i = (SELECT max(j) FROM cd_b b WHERE b.t = a.t)", 1, None),
    ("SELECT id FROM cd_a a WHERE (SELECT count(*) FROM cd_b b WHERE b.j = a.i AND b.m > %s) >= 1", 1, NUM1),
    ("SELECT id, t FROM cd_a a WHERE n < (SELECT sum(m) FROM cd_b b WHERE b.t = a.t)", 2, None),
    ("SELECT id FROM cd_a a WHERE EXISTS (SELECT 1 FROM cd_b b WHERE b.j = a.i AND b.m > %s)", 1, NUM1),
    ("SELECT id FROM cd_a a WHERE EXISTS (SELECT 1 FROM cd_b b WHERE b.k = a.k AND b.j > a.i)", 1, None),
]


def correlated(draw: Draw) -> Stmt:
    sql, width, values = draw(st.sampled_from(CORRELATED))
    return Stmt("correlated", sql, () if values is None else (draw(values),), width)


COPY_LEFT: list[tuple[str, int, Any]] = [
    (
        "SELECT c.id, c.name, count(a.id), sum(a.n) FROM cd_c c LEFT JOIN cd_a a ON a.i = c.id "
        "GROUP BY c.id, c.name",
        4,
        None,
    ),
    (
        "SELECT c.name, coalesce(sum(a.i), 0), count(*) FROM cd_c c LEFT JOIN cd_a a ON a.i = c.id AND a.b "
        "GROUP BY c.name",
        3,
        None,
    ),
    ("SELECT c.id, a.id FROM cd_c c LEFT JOIN cd_a a ON a.i = c.id", 2, None),
    (
        "SELECT c.id, max(a.t), avg(a.f) FROM cd_c c LEFT JOIN cd_a a ON a.i = c.id "
        "WHERE c.w > %s GROUP BY c.id",
        3,
        NUM.filter(lambda v: v is not None),
    ),
    ("SELECT count(*) FROM cd_c c LEFT JOIN cd_a a ON a.i = c.id WHERE a.id IS NULL", 1, None),
    ("SELECT c.id, count(a.id) FROM cd_a a RIGHT JOIN cd_c c ON a.i = c.id GROUP BY c.id", 2, None),
    (
        "SELECT c.id, count(b.id), sum(b.m) FROM cd_c c LEFT JOIN cd_b b ON b.j = c.id "
        "AND b.m > %s GROUP BY c.id",
        3,
        NUM1.filter(lambda v: v is not None),
    ),
]


def copy_left_join(draw: Draw) -> Stmt:
    sql, width, values = draw(st.sampled_from(COPY_LEFT))
    return Stmt("copy_left_join", sql, () if values is None else (draw(values),), width)


TODAY = (merge_group, merge_rows, merge_join)
COORDINATED = (
    aggregate_expression,
    having_expression,
    window,
    ordered_over,
    set_operation,
    grouping_sets,
    subquery,
    cte,
    correlated,
    copy_left_join,
)


DIRECTIONS = ["", " ASC", " DESC"]
NULLS = ["", " NULLS FIRST", " NULLS LAST"]


def _finish(draw: Draw, stmt: Stmt, force: bool = False) -> Stmt:
    """Maybe (always with ``force``) ORDER BY every column, in an order that decides every row, and
    maybe LIMIT / OFFSET (a literal or a parameter)."""
    if not stmt.open_end or not (force or draw(st.booleans())):
        return stmt
    positions = draw(st.permutations(range(1, stmt.width + 1)))
    keys = [p + draw(st.sampled_from(DIRECTIONS)) + draw(st.sampled_from(NULLS)) for p in map(str, positions)]
    sql = f"{stmt.sql} ORDER BY {', '.join(keys)}"
    params = tuple(stmt.params)
    if draw(st.booleans()):
        limit = draw(st.integers(0, 6))
        if draw(st.booleans()):
            sql += " LIMIT %s"
            params = (*params, limit)
        else:
            sql += f" LIMIT {limit}"
        if draw(st.booleans()):
            sql += f" OFFSET {draw(st.integers(0, 4))}"
    return Stmt(stmt.family, sql, params, stmt.width, total=True, open_end=False)


@st.composite
def statements(draw: Any, families: Sequence[Callable[[Draw], Stmt]]) -> Stmt:
    stmt = draw(st.sampled_from(families))(draw)
    return _finish(draw, stmt)


def batches(families: Sequence[Callable[[Draw], Stmt]], extra: int) -> st.SearchStrategy[list[Stmt]]:
    """A statement of every family, in order, then up to ``extra`` more of any of them."""
    each = st.tuples(*(statements([family]) for family in families))
    return st.tuples(each, st.lists(statements(families), max_size=extra)).map(lambda t: [*t[0], *t[1]])


# -- comparing ----------------------------------------------------------------------------------------


def same(got: Any, want: Any) -> bool:
    """Equal values of the same type: Decimals to the digit and scale, floats within tolerance."""
    if type(got) is not type(want):
        return False
    if isinstance(want, float):
        if math.isnan(want) or math.isinf(want):
            return str(got) == str(want)
        return math.isclose(got, want, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)
    if isinstance(want, Decimal):
        return str(got) == str(want)
    if isinstance(want, datetime.datetime):
        return got == want and got.utcoffset() == want.utcoffset()
    if isinstance(want, (list, tuple)):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=True))
    return bool(got == want)


def _sort_key(row: Sequence[Any]) -> list[tuple[int, str, str]]:
    def one(v: Any) -> tuple[int, str, str]:
        if v is None:
            return (0, "", "")
        if isinstance(v, float) and math.isfinite(v):
            return (1, "float", f"{v:.6e}")
        return (1, type(v).__name__, repr(v))

    return [one(v) for v in row]


def same_rows(got: Sequence[Sequence[Any]], want: Sequence[Sequence[Any]], ordered: bool) -> bool:
    if len(got) != len(want):
        return False
    if ordered:
        return all(same(tuple(g), tuple(w)) for g, w in zip(got, want, strict=True))
    pairs = zip(sorted(got, key=_sort_key), sorted(want, key=_sort_key), strict=True)
    if all(same(tuple(g), tuple(w)) for g, w in pairs):
        return True
    left = [tuple(w) for w in want]  # floats sorted apart by rounding: match row by row
    for g in got:
        match = next((n for n, w in enumerate(left) if same(tuple(g), w)), None)
        if match is None:
            return False
        left.pop(match)
    return True


@dataclass
class Tally:
    answered: Counter[str] = field(default_factory=Counter)
    refused: dict[str, list[str]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, tuple[int, int, int]]:
        families = {*self.answered, *self.refused, *self.errors}
        return {f: (self.answered[f], len(self.refused.get(f, [])), self.errors[f]) for f in sorted(families)}

    def report(self) -> str:
        lines = [
            f"{family}: {a} answered, {r} refused, {e} failed on both"
            for family, (a, r, e) in self.summary().items()
        ]
        for family, refused in sorted(self.refused.items()):
            lines += [f"  refused ({family}): {sql}" for sql in sorted(set(refused), key=len)[:2]]
        return "\n".join(lines)


def check(pdb: Any, ref: Any, stmt: Stmt, tally: Tally, must_answer: bool = False) -> str:
    """Run ``stmt`` on the reference and through ``pdb``; fail on any difference. Returns
    "answered", "refused" or "error" (both failed)."""
    params = stmt.params or None
    context = f"{stmt.sql} -- params {stmt.params!r}"
    try:
        with ref.cursor() as rcur:
            rcur.execute(stmt.sql, params)
            want = rcur.fetchall()
            want_description = [(c.name, c.type_code) for c in rcur.description]
    except psycopg2.Error as exc:
        ref.rollback()
        try:
            cur = pdb.cursor()
            cur.execute(stmt.sql, params)
            got = cur.fetchall()
        except psycopg2.Error:
            tally.errors[stmt.family] += 1
            return "error"
        except Exception as lib_exc:
            raise AssertionError(
                f"the reference fails ({exc.pgcode}) and the shards fail with "
                f"{type(lib_exc).__name__}: {str(lib_exc)[:500]}: {context}"
            ) from None
        finally:
            pdb.rollback()
        raise AssertionError(
            f"the reference fails ({exc.pgcode}: {exc}) but the shards answer {got!r}: {context}"
        ) from exc
    finally:
        ref.rollback()
    try:
        cur = pdb.cursor()
        cur.execute(stmt.sql, params)
        got = cur.fetchall()
    except NotSupportedError as exc:
        pdb.rollback()
        if must_answer:
            raise Refused(f"refused: {exc}: {context}") from exc
        tally.refused.setdefault(stmt.family, []).append(stmt.sql)
        return "refused"
    except Exception as exc:  # a shard's error, or a bug of the library's own (RecursionError, ...)
        pdb.rollback()
        raise AssertionError(
            f"the reference answers but the shards fail ({type(exc).__name__}: {str(exc)[:500]}): {context}"
        ) from None
    try:
        got_description = [(c.name, c.type_code) for c in cur.description]
        rowcount = cur.rowcount
    finally:
        pdb.rollback()
    assert got_description == want_description, (
        f"description {got_description} != {want_description}: {context}"
    )
    assert same_rows(got, want, stmt.total), f"got {got!r}\nwant {want!r}\n{context}"
    assert rowcount == len(want), f"rowcount {rowcount} != {len(want)}: {context}"
    tally.answered[stmt.family] += 1
    return "answered"


def run_batch(env: Servers, function: ShardFunction, data: Data, batch: Sequence[Stmt], tally: Tally) -> int:
    env.load(data, function)
    pdb = env.pdb(function)
    answered = 0
    for stmt in batch:
        outcome = check(pdb, env.reference, stmt, tally)
        event(f"{stmt.family}: {outcome}")
        answered += outcome == "answered"
    return answered


# -- generated statements -----------------------------------------------------------------------------


def test_generated_merges_match_one_database(env: Servers) -> None:
    """Statements merged today (aggregates, GROUP BY, HAVING, DISTINCT, ORDER BY, LIMIT, joins)."""
    tally = Tally()

    @SETTINGS
    @given(
        function=st.sampled_from(FUNCTIONS),
        data=datasets(),
        batch=batches(TODAY, extra=4),
    )
    def differential(function: ShardFunction, data: Data, batch: list[Stmt]) -> None:
        assume(run_batch(env, function, data, batch, tally) > 0)

    differential()
    print(tally.report())
    assert all(tally.answered[f.__name__] > 0 for f in TODAY), tally.summary()


def test_generated_coordinator_statements_match_one_database(env: Servers) -> None:
    """Statements only a coordinator stage can finish: answered exactly, or refused."""
    tally = Tally()

    @SETTINGS
    @given(
        function=st.sampled_from(FUNCTIONS),
        data=datasets(),
        # One statement merged today in every batch: each example answers something.
        today=statements(TODAY),
        batch=batches(COORDINATED, extra=2),
    )
    def differential(function: ShardFunction, data: Data, today: Stmt, batch: list[Stmt]) -> None:
        assume(run_batch(env, function, data, [*batch, today], tally) > 0)

    differential()
    print(tally.report())


# -- fixed statements that must be answered -----------------------------------------------------------

Fixed = tuple[str, tuple[Any, ...], bool]  # sql, params, total order?


def answer_exactly(env: Servers, family: str, sql: str, params: tuple[Any, ...], total: bool) -> None:
    for function in (Modulo(), FUNCTIONS[3]):
        env.load(FIXED, function)
        stmt = Stmt(family, sql, params, total=total)
        assert check(env.pdb(function), env.reference, stmt, Tally(), must_answer=True) == "answered"


AGGREGATE_EXPRESSION_CASES: list[Fixed] = [
    ("SELECT round(avg(n), 2), coalesce(sum(i), 0), sum(i) / count(*), count(*)::float FROM cd_a", (), True),
    (
        "SELECT t, 100.0 * sum(CASE WHEN b THEN 1 ELSE 0 END) / sum(i), max(d) - min(d) FROM cd_a "
        "WHERE i <> %s GROUP BY t",
        (0,),
        False,
    ),
    (
        "SELECT i, sum(n) / count(*), avg(f) * 2, count(*) * %s FROM cd_a GROUP BY i ORDER BY 1 NULLS FIRST",
        (Decimal("0.5"),),
        True,
    ),
]
HAVING_CASES: list[Fixed] = [
    ("SELECT t, count(*) FROM cd_a GROUP BY t HAVING avg(n) > %s", (Decimal("-1"),), False),
    ("SELECT i, sum(n) FROM cd_a GROUP BY i HAVING sum(i) / count(*) >= 1 AND max(t) LIKE 'a_'", (), False),
    (
        "SELECT d, count(*) FROM cd_a GROUP BY d HAVING bool_or(b) OR coalesce(sum(n), 0) <> 0 ORDER BY d",
        (),
        True,
    ),
]
WINDOW_CASES: list[Fixed] = [
    ("SELECT id, amount, rank() OVER (ORDER BY amount) FROM (SELECT id, n AS amount FROM cd_a) s", (), False),
    (
        "SELECT id, i, dense_rank() OVER (ORDER BY i DESC NULLS LAST), count(*) OVER (PARTITION BY t) "
        "FROM cd_a",
        (),
        False,
    ),
    (
        "SELECT id, sum(n) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM cd_a "
        "WHERE i > %s ORDER BY id",
        (0,),
        True,
    ),
    # Windows over u order and compare by u's own collation, not by code point.
    ("SELECT id, rank() OVER (ORDER BY u), min(u) OVER () FROM cd_a ORDER BY id", (), True),
]
ORDERED_OVER_CASES: list[Fixed] = [
    (
        "SELECT i, sum(n) / count(*) AS r FROM cd_a GROUP BY i ORDER BY r DESC NULLS LAST, i LIMIT %s",
        (3,),
        True,
    ),
    ("SELECT DISTINCT round(avg(n), 1) FROM cd_a GROUP BY t ORDER BY 1", (), True),
    (
        "SELECT id, rank() OVER (ORDER BY n DESC NULLS LAST, id) AS r FROM cd_a ORDER BY r LIMIT 5 OFFSET 2",
        (),
        True,
    ),
    # The coordinator must order u by its own collation, not by code point.
    ("SELECT u, count(*), rank() OVER (ORDER BY u) FROM cd_a GROUP BY u ORDER BY u", (), True),
]
SET_OPERATION_CASES: list[Fixed] = [
    ("SELECT i FROM cd_a UNION SELECT j FROM cd_b", (), False),
    ("SELECT t FROM cd_a INTERSECT ALL SELECT t FROM cd_b", (), False),
    ("SELECT n FROM cd_a EXCEPT SELECT m FROM cd_b WHERE j > %s ORDER BY 1 LIMIT 5", (0,), True),
    ("SELECT i, t FROM cd_a EXCEPT ALL SELECT j, t FROM cd_b UNION ALL SELECT id, name FROM cd_c", (), False),
]
GROUPING_SETS_CASES: list[Fixed] = [
    ("SELECT i, b, count(*), sum(n) FROM cd_a GROUP BY ROLLUP (i, b)", (), False),
    ("SELECT t, d, count(*), grouping(t, d) FROM cd_a GROUP BY CUBE (t, d)", (), False),
    (
        "SELECT i, t, max(n) FROM cd_a WHERE n > %s GROUP BY GROUPING SETS ((i), (t), ()) ORDER BY 1, 2, 3",
        (Decimal("-2"),),
        True,
    ),
]
SUBQUERY_CASES: list[Fixed] = [
    ("SELECT id, i FROM cd_a WHERE i > (SELECT avg(j) FROM cd_b)", (), False),
    ("SELECT id FROM cd_a WHERE i IN (SELECT j FROM cd_b WHERE m > %s)", (Decimal("0"),), False),
    (
        "SELECT id, t FROM cd_a WHERE EXISTS (SELECT 1 FROM cd_b WHERE j > 2) "
        "AND i = ANY (SELECT j FROM cd_b)",
        (),
        False,
    ),
    ("SELECT id FROM cd_a WHERE i NOT IN (SELECT j FROM cd_b)", (), False),
    # Ordered by a scalar subquery of the select list (by position, by alias).
    ("SELECT count(*), (SELECT count(*) FROM cd_b) FROM cd_a ORDER BY 2", (), True),
    ("SELECT id, (SELECT max(j) FROM cd_b) AS x FROM cd_a ORDER BY x, id", (), True),
]
CTE_CASES: list[Fixed] = [
    (
        "WITH s AS (SELECT i, sum(n) AS total FROM cd_a GROUP BY i) SELECT max(total), "
        "min(total), count(*) FROM s",
        (),
        True,
    ),
    (
        "WITH top AS (SELECT id, n FROM cd_a ORDER BY n DESC NULLS LAST, id LIMIT %s), "
        "d AS (SELECT DISTINCT t FROM cd_b) "
        "SELECT (SELECT sum(n) FROM top), (SELECT count(*) FROM d)",
        (5,),
        True,
    ),
    (
        "WITH s AS (SELECT i, count(*) AS c FROM cd_a GROUP BY i) SELECT a.i, a.c, b.c "
        "FROM s a JOIN s b ON b.i = a.i + 1",
        (),
        False,
    ),
]
CORRELATED_CASES: list[Fixed] = [
    ("SELECT id, n FROM cd_a a WHERE n > (SELECT avg(n) FROM cd_a a2 WHERE a2.i = a.i)", (), False),
    (
        "SELECT id FROM cd_a a WHERE EXISTS (SELECT 1 FROM cd_b b WHERE b.j = a.i AND b.m > %s)",
        (Decimal("0"),),
        False,
    ),
    ("SELECT id, t FROM cd_a a WHERE NOT EXISTS (SELECT 1 FROM cd_b b WHERE b.t = a.t)", (), False),
    (
        "SELECT id, (SELECT count(*) FROM cd_b b WHERE b.j = a.i) AS c FROM cd_a a "
        "ORDER BY c DESC, id LIMIT %s",
        (5,),
        True,
    ),
]
COPY_LEFT_JOIN_CASES: list[Fixed] = [
    (
        "SELECT c.id, c.name, count(a.id), sum(a.n) FROM cd_c c LEFT JOIN cd_a a ON a.i = c.id "
        "GROUP BY c.id, c.name",
        (),
        False,
    ),
    (
        "SELECT c.name, coalesce(sum(a.i), 0), count(*) FROM cd_c c LEFT JOIN cd_a a ON a.i = c.id AND a.b "
        "GROUP BY c.name ORDER BY c.name",
        (),
        True,
    ),
    (
        "SELECT c.id, count(a.id) FROM cd_c c LEFT JOIN cd_a a ON a.i = c.id AND a.n > %s GROUP BY c.id",
        (Decimal("0"),),
        False,
    ),
]


@pytest.mark.parametrize(("sql", "params", "total"), AGGREGATE_EXPRESSION_CASES)
def test_expressions_over_aggregates_are_answered(env: Servers, sql: str, params: Any, total: bool) -> None:
    answer_exactly(env, "aggregate_expression", sql, params, total)


@pytest.mark.parametrize(("sql", "params", "total"), HAVING_CASES)
def test_having_with_any_expression_is_answered(env: Servers, sql: str, params: Any, total: bool) -> None:
    answer_exactly(env, "having_expression", sql, params, total)


@pytest.mark.parametrize(("sql", "params", "total"), WINDOW_CASES)
def test_window_functions_over_the_whole_table_are_answered(
    env: Servers, sql: str, params: Any, total: bool
) -> None:
    answer_exactly(env, "window", sql, params, total)


@pytest.mark.parametrize(("sql", "params", "total"), ORDERED_OVER_CASES)
def test_order_distinct_limit_over_coordinator_results_are_answered(
    env: Servers, sql: str, params: Any, total: bool
) -> None:
    answer_exactly(env, "ordered_over", sql, params, total)


@pytest.mark.parametrize(("sql", "params", "total"), SET_OPERATION_CASES)
def test_set_operations_are_answered(env: Servers, sql: str, params: Any, total: bool) -> None:
    answer_exactly(env, "set_operation", sql, params, total)


@pytest.mark.parametrize(("sql", "params", "total"), GROUPING_SETS_CASES)
def test_grouping_sets_rollup_cube_are_answered(env: Servers, sql: str, params: Any, total: bool) -> None:
    answer_exactly(env, "grouping_sets", sql, params, total)


@pytest.mark.parametrize(("sql", "params", "total"), SUBQUERY_CASES)
def test_uncorrelated_subqueries_are_answered(env: Servers, sql: str, params: Any, total: bool) -> None:
    answer_exactly(env, "subquery", sql, params, total)


@pytest.mark.parametrize(("sql", "params", "total"), CTE_CASES)
def test_ctes_with_aggregates_limit_distinct_are_answered(
    env: Servers, sql: str, params: Any, total: bool
) -> None:
    answer_exactly(env, "cte", sql, params, total)


@pytest.mark.parametrize(("sql", "params", "total"), CORRELATED_CASES)
def test_decorrelatable_subqueries_are_answered(env: Servers, sql: str, params: Any, total: bool) -> None:
    answer_exactly(env, "correlated", sql, params, total)


@pytest.mark.parametrize(("sql", "params", "total"), COPY_LEFT_JOIN_CASES)
def test_copied_table_left_join_sharded_with_aggregates_is_answered(
    env: Servers, sql: str, params: Any, total: bool
) -> None:
    answer_exactly(env, "copy_left_join", sql, params, total)
