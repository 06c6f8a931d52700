"""Helpers for the merge tests: load rows onto chosen shards and the reference, compare answers."""

from __future__ import annotations

import math
from collections.abc import Sequence
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
