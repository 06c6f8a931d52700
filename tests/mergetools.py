"""Helpers for the merge tests: load rows onto chosen shards and the reference, compare answers."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.extras

TABLE = """
DROP TABLE IF EXISTS mt;
CREATE TABLE mt (
    id integer PRIMARY KEY,
    g integer,
    s text,
    x integer,
    y numeric(8, 2),
    f double precision,
    b boolean
)
"""
COLUMNS = ("id", "g", "s", "x", "y", "f", "b")


def create(dsns: Sequence[str]) -> None:
    for dsn in dsns:
        conn = psycopg2.connect(dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(TABLE)
        finally:
            conn.close()


def load(
    shard_conns: Sequence[Any], ref_conn: Any, rows: Sequence[tuple[Any, ...]], placement: Sequence[int]
) -> None:
    """Replace mt's rows: row i goes to shard ``placement[i]``, every row to the reference."""
    per_shard: list[list[tuple[Any, ...]]] = [[] for _ in shard_conns]
    for row, shard in zip(rows, placement, strict=True):
        per_shard[shard].append(row)
    for conn, shard_rows in [*zip(shard_conns, per_shard, strict=True), (ref_conn, list(rows))]:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE mt")
            if shard_rows:
                psycopg2.extras.execute_values(cur, "INSERT INTO mt VALUES %s", shard_rows)
        conn.commit()


def spread_table(
    pdb: Any, conns: tuple[Sequence[Any], Any], table: str, columns: str, parts: Sequence[Sequence[Any]]
) -> Iterator[tuple[Sequence[Any], Any]]:
    """For a fixture to ``yield from``: ``table (columns)`` made on every server, ``parts[i]`` its rows
    on shard i, all of them on the reference; dropped after the test (its transaction rolled back)."""
    shard_conns, reference = conns
    every = [row for part in parts for row in part]
    for conn, rows in [*zip(shard_conns, parts, strict=True), (reference, every)]:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} ({columns})")
            psycopg2.extras.execute_values(cur, f"INSERT INTO {table} VALUES %s", rows)
        conn.commit()
    yield conns
    pdb.rollback()  # a failed test's transaction would block DROP TABLE
    for conn in [*shard_conns, reference]:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        conn.commit()


def approx(value: Any) -> Any:
    """A value rounded so that results computed in another order still compare equal."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return value
        return float(f"{value:.10g}")
    if isinstance(value, Decimal) and value.is_finite():
        return Decimal(f"{value:.12g}")
    if isinstance(value, list):
        return sorted((approx(v) for v in value), key=repr)
    return value


def approx_rows(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    return [tuple(approx(v) for v in row) for row in rows]


def as_multiset(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    return sorted(approx_rows(rows), key=lambda row: [(v is None, repr(v)) for v in row])


def typed(rows: Sequence[Sequence[Any]], *, ordered: bool = True) -> list[tuple[Any, ...]]:
    """Rows with each value beside its Python type (``1 == 1.0 == Decimal(1)`` in Python, not in an
    answer), NaN made comparable; sorted when the statement leaves the order open."""
    out = [
        tuple((type(v).__name__, "NaN" if isinstance(v, float) and math.isnan(v) else v) for v in row)
        for row in rows
    ]
    return out if ordered else sorted(out, key=repr)


def same_answer(
    conn: Any, ref: Any, sql: str, vars: Any = None, *, ordered: bool = True, **cursor_kwargs: Any
) -> list[tuple[Any, ...]]:
    """Run ``sql`` on ``conn`` and on the reference ``ref``: the same column names and types, the same
    values of the same types (in the same order when ``ordered``). Returns ``conn``'s rows."""
    cur = conn.cursor(**cursor_kwargs)
    try:
        cur.execute(sql, vars)
        got = [tuple(row) for row in cur.fetchall()]
        got_columns = [(column.name, column.type_code) for column in cur.description]
    finally:
        cur.close()
    with ref.cursor() as rcur:
        rcur.execute(sql, vars)
        want = [tuple(row) for row in rcur.fetchall()]
        want_columns = [(column.name, column.type_code) for column in rcur.description]
    ref.rollback()
    assert got_columns == want_columns, f"{sql}\n got columns {got_columns}\nwant columns {want_columns}"
    assert typed(got, ordered=ordered) == typed(want, ordered=ordered), f"{sql}\n got {got}\nwant {want}"
    return got
