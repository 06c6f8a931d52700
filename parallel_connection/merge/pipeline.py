"""Assemble the merge a plan asks for, once the shards have described their rows.

The types come from the shards' description, so type checks (can Python
order or compare this column as PostgreSQL does?) run here, before any row is
returned. The result is the merged description and a function from the
shards' rows (:class:`MergeInputs`) to batches of merged rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..plan.model import ClientPlan
from .aggregate import Combiner
from .having import check_text_order, having
from .ordered import check_sorted, ordered
from .rowops import bind, distinct, distinct_on, offset_limit
from .values import COLLATED, check_equality, check_order, fast_sort, row_key

__all__ = ["Merge", "MergeInputs", "build_merge"]

Row = Any
Batches = Iterable[list[Row]]


@dataclass(frozen=True)
class MergeInputs:
    """The shards' rows, as the merge reads them: batches per shard, or every batch as it arrives."""

    shards: Sequence[tuple[int, Batches]]
    """Each shard's index and batches, in shard order."""
    arrival: Callable[[], Batches]
    """Every shard's batches, whichever shard is ready first (for merges where order is free)."""


Merge = Callable[[MergeInputs], Iterator[list[Row]]]


def build_merge(
    client: ClientPlan,
    description: Sequence[Any],
    *,
    params: Any,
    names: tuple[str, ...],
    text_order_c: bool,
    streaming: bool,
    batch_size: int,
) -> tuple[tuple[Any, ...], Merge]:
    """(the merged result's description, the merge) for ``client`` over shard rows of ``description``."""
    limit = bind(client.limit, params, names)
    offset = bind(client.offset, params, names)
    combiner = None
    if client.aggregate is not None:
        delimiters = [bind(p.delimiter, params, names) for p in client.aggregate.partials]
        combiner = Combiner(client.aggregate, description, text_order_c, delimiters)
        description = combiner.description
    types = [c.type_code for c in description]
    width = len(description) - client.hidden
    for key in client.order:
        check_order(types[key.column], text_order_c, "ORDER BY", key.collate_c)
    if client.distinct:
        for column in range(width):
            check_equality(types[column], "DISTINCT")
    for column in client.distinct_on:
        check_equality(types[column], "DISTINCT ON")
    if client.aggregate is not None and client.aggregate.having is not None:
        check_text_order(client.aggregate.having, types, text_order_c)
    # Text order depends on collations the database-level check may miss (a column's own
    # COLLATE): check that every shard's rows come in the order the merge reproduces.
    check_runs = any(types[k.column] in COLLATED and not k.collate_c for k in client.order)

    def merge(inputs: MergeInputs) -> Iterator[list[Row]]:
        rows: Iterable[Row]
        if combiner is not None:
            groups = combiner.combine(r for batch in inputs.arrival() for r in batch)
            if client.aggregate is not None and client.aggregate.having is not None:
                groups = list(having(groups, client.aggregate.having, params, names, text_order_c, types))
            if client.order:
                fast_sort(groups, client.order, types)
            rows = groups
        elif client.order and streaming:
            key, reverse = row_key(client.order, types)
            rows = itertools.chain.from_iterable(
                ordered(inputs.shards, key, reverse, batch_size, check=check_runs)
            )
        elif client.order:
            everything: list[Row] = []
            for index, batches in inputs.shards:
                start = len(everything)
                for batch in batches:
                    everything.extend(batch)
                if check_runs:
                    check_sorted(everything[start:], *row_key(client.order, types), index)
            fast_sort(everything, client.order, types)
            rows = everything
        else:
            rows = itertools.chain.from_iterable(inputs.arrival())
        if client.distinct:
            rows = distinct(rows, width, types, [k.column for k in client.order])
        elif client.distinct_on:
            rows = distinct_on(rows, client.distinct_on, types, adjacent=bool(client.order))
        if offset or limit is not None:
            rows = offset_limit(iter(rows), offset, limit)
        yield from _batches(rows, width if client.hidden else None, batch_size)

    return tuple(description[:width]), merge


def _batches(rows: Iterable[Row], width: int | None, size: int) -> Iterator[list[Row]]:
    if isinstance(rows, list):
        yield rows if width is None else [row[:width] for row in rows]
        return
    iterator = iter(rows)
    while True:
        batch = list(itertools.islice(iterator, size))
        if not batch:
            return
        yield batch if width is None else [row[:width] for row in batch]
