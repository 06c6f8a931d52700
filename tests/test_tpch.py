"""TPC-H's 22 queries over three shards, answered as one database holding every row answers them.

The data lives in schema ``tpch`` (see ``tpch.py``); the reference server holds
every row. Every query must be answered, exactly: the co-located ones in one
pass, the rest through the coordinator stage.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import psycopg2
import pytest
from tpch import ORDER_BY, PLACEMENT_ARGS, QUERIES, SEARCH_PATH, TABLES, load_tpch

import parallel_connection

SHARDED = {"orders": "o_orderkey", "lineitem": "l_orderkey"}
COPIED = [t for t in TABLES if t not in SHARDED]

Rows = list[tuple[Any, ...]]


@pytest.fixture(scope="module")
def tpch_servers(servers):
    """The servers, with TPC-H loaded once for this module."""
    load_tpch(servers.shard_dsns, servers.reference_dsn)
    return servers


@pytest.fixture(scope="module")
def reference(tpch_servers) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(tpch_servers.reference_dsn, options=SEARCH_PATH)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def shards(tpch_servers) -> Iterator[list[psycopg2.extensions.connection]]:
    conns = [psycopg2.connect(dsn, options=SEARCH_PATH) for dsn in tpch_servers.shard_dsns]
    for conn in conns:
        conn.autocommit = True
    yield conns
    for conn in conns:
        conn.close()


@pytest.fixture(scope="module")
def tpch_db(tpch_servers) -> Iterator[parallel_connection.ParallelConnection]:
    """The library's connection over the shards, told where the TPC-H rows live."""
    from parallel_connection.placement import Placement

    conn = parallel_connection.connect(
        tpch_servers.shard_dsns, placement=Placement(**PLACEMENT_ARGS), options=SEARCH_PATH
    )
    yield conn
    conn.close()


def _fetch(conn: Any, sql: str) -> tuple[list[str], Rows]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return [d[0] for d in cur.description], [tuple(r) for r in cur.fetchall()]


def _one(conn: Any, sql: str) -> tuple[Any, ...]:
    return _fetch(conn, sql)[1][0]


def _same_value(a: Any, b: Any) -> bool:
    """Equal and of one type; Decimals also to the same scale; floats within rel 1e-9."""
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and math.isclose(a, b, rel_tol=1e-9)
    if type(a) is not type(b):
        return False
    if isinstance(a, Decimal):
        return a == b and a.as_tuple().exponent == b.as_tuple().exponent
    return a == b


def _same_row(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))


def assert_same_rows(got: Rows, expected: Rows, what: str) -> None:
    """The two lists hold the same rows in the same order."""
    assert len(got) == len(expected), f"{what}: {len(got)} rows, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert _same_row(g, e), f"{what}: row {i} is\n  {g!r}\nexpected\n  {e!r}"


def assert_same_answer(got: Rows, expected: Rows, order_by: tuple[int, ...]) -> None:
    """Same rows; in the same order as far as the ORDER BY columns decide it, as multisets past that."""
    assert len(got) == len(expected), f"{len(got)} rows, expected {len(expected)}"
    if not order_by:
        assert_same_rows(sorted(got, key=repr), sorted(expected, key=repr), "rows (any order)")
        return

    def keys(rows: Rows) -> Rows:
        return [tuple(r[i] for i in order_by) for r in rows]

    assert_same_rows(keys(got), keys(expected), f"ORDER BY columns {order_by}")
    start = 0
    expected_keys = keys(expected)
    for end in range(1, len(expected) + 1):
        if end == len(expected) or expected_keys[end] != expected_keys[start]:
            run = f"rows {start}..{end - 1} (tied on the ORDER BY columns)"
            assert_same_rows(sorted(got[start:end], key=repr), sorted(expected[start:end], key=repr), run)
            start = end


def test_every_query_returns_rows_on_the_reference(reference):
    for number, sql in QUERIES.items():
        _, rows = _fetch(reference, sql)
        assert rows, f"Q{number} returns no rows on the reference"
        assert any(v is not None for v in rows[0]), f"Q{number} returns only NULLs on the reference"


def test_the_shards_orders_add_up_to_the_reference(reference, shards):
    for table in SHARDED:
        counts = [_one(conn, f"SELECT count(*) FROM {table}")[0] for conn in shards]
        assert all(counts), f"{table}: a shard is empty: {counts}"
        assert sum(counts) == _one(reference, f"SELECT count(*) FROM {table}")[0], table


def _digest(conn: Any, table: str, where: str = "TRUE") -> tuple[int, str]:
    """Row count and md5 of the rows in text order."""
    sql = f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t WHERE {where}"
    count, md5 = _one(conn, sql)
    return count, md5


def test_tpch_data_is_sharded_as_declared(reference, shards):
    n = len(shards)
    for i, conn in enumerate(shards):
        for table, key in SHARDED.items():
            assert _one(conn, f"SELECT count(*) FROM {table} WHERE {key} % {n} <> {i}")[0] == 0, (table, i)
            assert _digest(conn, table) == _digest(reference, table, f"{key} % {n} = {i}"), (table, i)
        for table in COPIED:
            assert _digest(conn, table) == _digest(reference, table), (table, i)


@pytest.mark.parametrize("number", sorted(QUERIES))
def test_query_answers_as_one_database_would(number, reference, tpch_db):
    columns, expected = _fetch(reference, QUERIES[number])
    cur = tpch_db.cursor()
    try:
        cur.execute(QUERIES[number])
        got_columns = [d[0] for d in cur.description]
        got = [tuple(r) for r in cur.fetchall()]
    except parallel_connection.NotSupportedError as exc:
        pytest.fail(f"Q{number} must be answered; refused: {exc}")
    finally:
        cur.close()
        tpch_db.rollback()
    assert got_columns == columns
    assert_same_answer(got, expected, ORDER_BY[number])
