"""The scanner that cuts an INSERT of literal rows agrees with PostgreSQL's own grammar (pglast), and
rows cut by it land where one database would keep them."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from typing import Any

import pglast
import psycopg2
import psycopg2.extras
import pytest
from conftest import run_on_all
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import ast

import parallel_connection
from parallel_connection.placement import Hash, Modulo, Placement
from parallel_connection.plan.literal_rows import cut_literal_rows, split_rows
from parallel_connection.plan.model import Const, Param

TEXT = st.text(alphabet=st.sampled_from(list("ab'\",()$:;-\\ \t\né€0")), max_size=8)
LITERAL = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    TEXT.map(lambda t: "'" + t.replace("'", "''") + "'"),
    TEXT.map(lambda t: "'" + t.replace("'", "''") + "'::text"),
    st.just("NULL"),
    st.integers(1, 9).map(lambda n: f"${n}"),
    st.integers(0, 99).map(lambda n: f"'{n}'::int"),
)


def _constant(node: Any) -> Any:
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.ParamRef):
        return Param(node.number)
    if node.isnull:
        return Const(None)
    value = node.val
    if isinstance(value, ast.Integer):
        return Const(value.ival)
    if isinstance(value, ast.Float):
        return Const(Decimal(value.fval))
    return Const(value.sval)


@given(
    st.lists(st.lists(LITERAL, min_size=3, max_size=3), min_size=1, max_size=6),
    st.integers(0, 2),
    st.sampled_from(["", " ON CONFLICT (k) DO NOTHING", " RETURNING k, 'x, (y)'"]),
)
def test_each_rows_key_is_what_postgresql_reads(rows: list[list[str]], position: int, tail: str) -> None:
    sql = "INSERT INTO t (a, b, c) VALUES " + ", ".join("(" + ", ".join(r) + ")" for r in rows) + tail
    cut = cut_literal_rows(sql)
    assert cut is not None
    split = split_rows(cut, position)
    assert split is not None
    texts, keys, rest = split
    stmt = pglast.parse_sql(sql)[0].stmt
    parsed = stmt.selectStmt.valuesLists
    assert len(texts) == len(parsed)
    numeric = [k.value if isinstance(k, Const) and isinstance(k.value, int) else k for k in keys]
    expected = [_constant(row[position]) for row in parsed]
    for got, want in zip(numeric, expected, strict=True):
        if isinstance(want, Const) and isinstance(want.value, Decimal) and isinstance(got, int):
            assert want.value == got
        elif isinstance(got, int):
            assert want == Const(got)
        else:
            assert got == want
    assert rest == tail
    rebuilt = cut.head + ", ".join(texts) + rest
    assert pglast.parse_sql(rebuilt)[0].stmt == stmt


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1, now())",
        "INSERT INTO t VALUES (1 /* c */, 2), (3, 4)",
        "INSERT INTO t VALUES (E'a\\'b', 1), (2, 3)",
        "INSERT INTO t VALUES (DEFAULT, 1), (2, 3)",
        "INSERT INTO t VALUES (1, ARRAY[1]), (2, ARRAY[2])",
        "INSERT INTO t VALUES ($$x$$, 1), (2, 3)",
        "WITH x AS (SELECT 1) INSERT INTO t VALUES (1, 2), (3, 4)",
        "INSERT INTO t VALUES (1 + 1, 2), (3, 4)",
    ],
)
def test_anything_but_literals_is_left_to_the_full_parse(sql: str) -> None:
    cut = cut_literal_rows(sql)
    assert cut is None or split_rows(cut, 0) is None


PLACEMENT = Placement(sharded={"lr_t": ("k", Modulo()), "lr_h": ("k", Hash())})


@pytest.fixture(scope="module")
def tables(sample: Any) -> Any:
    every = [*sample.shard_dsns, sample.reference_dsn]
    run_on_all(
        every,
        "DROP TABLE IF EXISTS lr_t, lr_h; CREATE TABLE lr_t (n int, k bigint, s text);"
        "CREATE TABLE lr_h (k text, n int)",
    )
    yield sample
    run_on_all(every, "DROP TABLE IF EXISTS lr_t, lr_h")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.integers(-(2**40), 2**40), st.one_of(st.none(), TEXT)), min_size=1, max_size=40),
    st.integers(1, 7),
)
def test_execute_values_puts_every_row_where_one_database_has_it(tables: Any, rows: Any, page: int) -> None:
    every = [*tables.shard_dsns, tables.reference_dsn]
    run_on_all(every, "TRUNCATE lr_t, lr_h")
    with contextlib.closing(parallel_connection.connect(tables.shard_dsns, placement=PLACEMENT)) as pdb, pdb:
        with pdb.cursor() as cur:
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO lr_t (n, k, s) VALUES %s",
                [(i, k, s) for i, (k, s) in enumerate(rows)],
                page_size=page,
            )
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO lr_h VALUES %s",
                [(s, i) for i, (_, s) in enumerate(rows) if s is not None],
                page_size=page,
            )
        pdb.commit()
    for index, dsn in enumerate(tables.shard_dsns):
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT n, k, s FROM lr_t ORDER BY n")
            held = cur.fetchall()
            assert held == [(i, k, s) for i, (k, s) in enumerate(rows) if k % 3 == index]
            cur.execute("SELECT k FROM lr_h")
            assert all(Hash().shard_of(k, 3) == index for (k,) in cur.fetchall())
        conn.close()
