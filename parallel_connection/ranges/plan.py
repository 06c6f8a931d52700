"""Per shard: check the table and id column, find the id bounds and NULL ids, and split.

``split="rows"`` finds exact boundaries with one pass over the id index
(``row_number() OVER (ORDER BY id)``, every n-th id kept): no ANALYZE needed,
the ``where`` filter honoured, and every range within one row of the others
whatever the skew (bar duplicate ids, which cannot be split).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.sql as sql

from .spec import ScanOptions, Target, check_where
from .split import Span, split_at, split_width

__all__ = ["ShardPlan", "plan_shard"]

INTEGER_TYPES = {20: "bigint", 21: "smallint", 23: "integer"}

_CATALOG = """
SELECT to_regclass(%(table)s) IS NOT NULL,
       a.atttypid, format_type(a.atttypid, a.atttypmod),
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indkey[0] = a.attnum)
FROM (SELECT 1) AS one
LEFT JOIN pg_attribute a
  ON a.attrelid = to_regclass(%(table)s) AND a.attname = %(column)s AND a.attnum > 0 AND NOT a.attisdropped
"""


@dataclass(frozen=True)
class ShardPlan:
    """One shard's ranges and how many of its rows have a NULL id."""

    spans: list[Span]
    null_id_rows: int
    lo: int | None = None
    hi: int | None = None


MAX_WIDTH_RANGES = 1_000_000
"""More ranges than this on one shard means sparse ids (an outlier): refuse rather than stall."""


def plan_shard(cur: Any, target: Target, options: ScanOptions, *, split: bool = True) -> ShardPlan:
    """Check ``target`` on this shard, then bound and split its ids (raises before any work).

    ``split=False`` stops at the bounds (the ranges are known already): no spans.
    """
    check_target(cur, target)
    where = _where(cur, options.where, options.params)
    t, c = target.table_sql, target.column_sql
    cur.execute(
        sql.SQL(
            "SELECT (SELECT min({c}) FROM {t} WHERE {w}), (SELECT max({c}) FROM {t} WHERE {w}), "
            "(SELECT count(*) FROM {t} WHERE {c} IS NULL AND ({w}))"
        ).format(c=c, t=t, w=where)
    )
    lo, hi, nulls = cur.fetchone()
    if lo is None:
        return ShardPlan([], nulls)
    if not split:
        return ShardPlan([], nulls, lo, hi)
    if options.split == "width":
        ranges = (hi - lo) // options.rows_per_range + 1
        if ranges > MAX_WIDTH_RANGES:
            raise psycopg2.ProgrammingError(
                f"ids run from {lo} to {hi}: split='width' with rows_per_range={options.rows_per_range} "
                f"would make {ranges:,} ranges; use split='rows' (ranges of about that many rows, "
                "whatever gaps the ids have) or a larger rows_per_range"
            )
        return ShardPlan(split_width(lo, hi, options.rows_per_range), nulls, lo, hi)
    cur.execute(sql.SQL("SELECT count({c}) FROM {t} WHERE {w}").format(c=c, t=t, w=where))
    (count,) = cur.fetchone()
    pieces = max(1, round(count / options.rows_per_range))
    step = math.ceil(count / pieces)
    cur.execute(
        sql.SQL(
            "SELECT id FROM (SELECT {c} AS id, row_number() OVER (ORDER BY {c}) AS rn "
            "FROM {t} WHERE {c} IS NOT NULL AND ({w})) AS numbered "
            "WHERE rn % {step} = 0 AND rn < {count}"
        ).format(c=c, t=t, w=where, step=sql.Literal(step), count=sql.Literal(count))
    )
    cuts = [row[0] for row in cur.fetchall()]
    return ShardPlan(split_at(lo, hi, cuts), nulls, lo, hi)


def check_target(cur: Any, target: Target) -> None:
    """Raise ProgrammingError unless the table exists and the column is an integer."""
    qualified = target.table_sql.as_string(cur)
    cur.execute(_CATALOG, {"table": qualified, "column": target.column})
    exists, type_oid, type_name, indexed = cur.fetchone()
    if not exists:
        raise psycopg2.ProgrammingError(f"table {target.name} does not exist")
    if type_oid is None:
        raise psycopg2.ProgrammingError(f"table {target.name} has no column {target.column}")
    if type_oid not in INTEGER_TYPES:
        raise psycopg2.ProgrammingError(
            f"the id column {target.name}.{target.column} is {type_name}: "
            "ranges need an integer column (smallint, integer or bigint)"
        )
    if not indexed:
        warnings.warn(
            f"{target.name}.{target.column} leads no index: every range will scan the whole table",
            stacklevel=2,
        )


def _where(cur: Any, where: str | None, params: Sequence[Any] | Mapping[str, Any] | None) -> sql.Composable:
    """The ``where`` text with ``params`` bound, checked to be one expression, as SQL to embed (or TRUE).

    The bound text is what runs, so it is what is checked (a parameter's adapter
    may render SQL of its own). A line comment at its end cannot reach the ')'.
    """
    if where is None:
        return sql.SQL("TRUE")
    text = cur.mogrify(where, params).decode()
    check_where(text, where)
    return sql.SQL("(") + sql.SQL(text) + sql.SQL("\n)")
