"""The shards' tables merged in Arrow as one database would answer: order, DISTINCT, OFFSET / LIMIT.

Each shard sorted its own rows; the merge sorts their concatenation with
PostgreSQL's rules (NULLS FIRST / LAST per key, NaN above every number, text
in code point order). :func:`mergeable` says beforehand whether Arrow can do
it exactly for these columns; when it cannot, the row path answers instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..merge.rowops import bind, row_count
from ..plan.model import ClientPlan, SortKey

__all__ = ["mergeable", "merged", "runs_sorted"]

_TEXT = frozenset({"text", "varchar", "name", "char"})
"""Text whose PostgreSQL order under collation C and equality are its bytes'."""
_NOT_ORDERED_AS_TEXT = frozenset({"bpchar"})


def mergeable(client: ClientPlan, schema: pa.Schema, pg_types: Sequence[str], text_order_c: bool) -> bool:
    """Arrow orders and compares these columns as PostgreSQL does, for what ``client`` asks."""
    for key in client.order:
        if not _orderable(schema.field(key.column).type, pg_types[key.column], text_order_c, key):
            return False
    if client.distinct:
        width = len(pg_types) - client.hidden
        if client.hidden:
            return False
        return all(_comparable(schema.field(i).type, pg_types[i]) for i in range(width))
    return True


def runs_sorted(table: pa.Table, order: Sequence[SortKey]) -> bool:
    """Each adjacent pair of ``table``'s rows is in ``order`` (a shard's rows as the merge orders them)."""
    if table.num_rows < 2:
        return True
    before = table.slice(0, table.num_rows - 1)
    after = table.slice(1)
    settled = pa.nulls(table.num_rows - 1, pa.bool_()).fill_null(False)
    wrong = settled
    for key in order:
        for a, b, descending in _parts(before.column(key.column), after.column(key.column), key):
            lt = pc.fill_null(pc.greater(a, b) if descending else pc.less(a, b), False)
            gt = pc.fill_null(pc.less(a, b) if descending else pc.greater(a, b), False)
            wrong = pc.or_(wrong, pc.and_(pc.invert(settled), gt))
            settled = pc.or_(settled, lt)
    return not pc.any(wrong).as_py()


def merged(
    tables: Sequence[pa.Table], client: ClientPlan | None, params: Any, names: tuple[str, ...]
) -> pa.Table:
    """The shards' ``tables`` (one schema) as the merged answer ``client`` describes (None: the union)."""
    table = pa.concat_tables(tables) if len(tables) != 1 else tables[0]
    if client is None:
        return table
    width = table.num_columns - client.hidden
    if client.distinct:
        visible = table.select(range(width))
        table = visible.group_by(visible.column_names, use_threads=False).aggregate([]) if width else visible
        table = table.select(visible.column_names) if width else table
    if client.order:
        table = table.take(_order(table, client.order))
    offset = row_count(bind(client.offset, params, names), "OFFSET") or 0
    limit = row_count(bind(client.limit, params, names), "LIMIT")
    if offset or limit is not None:
        start = min(offset, table.num_rows)
        table = table.slice(start, None if limit is None else limit)
    return table.select(range(width)) if client.hidden and not client.distinct else table


def _order(table: pa.Table, order: Sequence[SortKey]) -> pa.Array:
    columns: list[pa.Array | pa.ChunkedArray] = []
    sort_keys: list[tuple[str, str]] = []
    for key in order:
        column = table.column(key.column)
        for part, _, descending in _parts(column, column, key):
            sort_keys.append((str(len(columns)), "descending" if descending else "ascending"))
            columns.append(part)
    keys = pa.table(columns, names=[str(i) for i in range(len(columns))])
    return pc.sort_indices(keys, sort_keys=sort_keys)


def _parts(
    a: pa.ChunkedArray, b: pa.ChunkedArray, key: SortKey
) -> list[tuple[pa.ChunkedArray, pa.ChunkedArray, bool]]:
    """The sort parts of one key: NULL flags, NaN flags (floats), the values; each with its direction."""
    parts = []
    if a.null_count or b.null_count:
        # NULLS FIRST: the NULL flag sorts descending, whatever the key's direction.
        parts.append((pc.is_null(a), pc.is_null(b), key.nulls_first))
    if pa.types.is_floating(a.type):
        nan_a, nan_b = pc.fill_null(pc.is_nan(a), False), pc.fill_null(pc.is_nan(b), False)
        if pc.any(nan_a).as_py() or pc.any(nan_b).as_py():
            parts.append((nan_a, nan_b, key.descending))  # NaN is above every number
    parts.append((a, b, key.descending))
    return parts


def _orderable(kind: pa.DataType, pg_type: str, text_order_c: bool, key: SortKey) -> bool:
    if pg_type in _TEXT:
        return key.collate_c or text_order_c
    if pg_type in _NOT_ORDERED_AS_TEXT or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return False
    return _plain(kind)


def _comparable(kind: pa.DataType, pg_type: str) -> bool:
    if pa.types.is_floating(kind):
        return False  # -0 and 0, NaN and NaN: equal in PostgreSQL, not in Arrow's hashing
    if pg_type in _TEXT:
        return True
    if pg_type in _NOT_ORDERED_AS_TEXT or pa.types.is_string(kind):
        return False
    return _plain(kind)


def _plain(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_date(kind)
        or pa.types.is_timestamp(kind)
        or pa.types.is_time(kind)
        or pa.types.is_binary(kind)
    )
