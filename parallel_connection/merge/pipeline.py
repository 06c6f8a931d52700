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
from operator import itemgetter
from typing import Any

from ..plan.model import ClientPlan
from .aggregate import Combiner
from .having import check_text_order, having
from .ordered import ordered, out_of_order
from .rowops import bind, distinct, distinct_on, offset_limit
from .runs import RowOrder
from .values import COLLATED, check_equality, check_order

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
    code_point_text: bool = False,
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
    order = RowOrder(client.order, types) if client.order else None
    # The database's collation being C (text_order_c) leaves a column's own, which can reach a key
    # where the planner does not see it (unnest(ARRAY[column]) AS u(w), say). Unless each text key
    # says COLLATE "C", or the catalog holds no collation but C (code_point_text), every shard's rows
    # are checked (in C) to come in code point order, up to the last such key: the keys after it
    # compare alike in Python and in PostgreSQL.
    text = [
        i
        for i, k in enumerate(client.order)
        if types[k.column] in COLLATED and not k.collate_c and not code_point_text
    ]
    check = RowOrder(client.order[: text[-1] + 1], types) if text else None

    def merge(inputs: MergeInputs) -> Iterator[list[Row]]:
        rows: Iterable[Row]
        if combiner is not None:
            groups = combiner.combine(r for batch in inputs.arrival() for r in batch)
            if client.aggregate is not None and client.aggregate.having is not None:
                groups = list(having(groups, client.aggregate.having, params, names, text_order_c, types))
            rows = groups if order is None else order.sort(groups)
        elif order is not None and streaming:
            rows = itertools.chain.from_iterable(ordered(inputs.shards, order, batch_size, check=check))
        elif order is not None:
            runs = [(index, _joined(batches)) for index, batches in inputs.shards]
            if check is not None and sum(1 for _, run in runs if run) > 1:
                for index, run in runs:
                    if not check.in_order(run):
                        raise out_of_order(index)
            rows = order.merge([run for _, run in runs])
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


def _joined(batches: Batches) -> list[Row]:
    """One shard's batches as one list (a client-side cursor's only batch as it is)."""
    every = [batch for batch in batches if batch]
    return every[0] if len(every) == 1 else list(itertools.chain.from_iterable(every))


def _batches(rows: Iterable[Row], width: int | None, size: int) -> Iterator[list[Row]]:
    visible = None if width is None else itemgetter(slice(width))
    if isinstance(rows, list):
        yield rows if visible is None else list(map(visible, rows))
        return
    iterator = iter(rows)
    while True:
        batch = list(itertools.islice(iterator, size))
        if not batch:
            return
        yield batch if visible is None else list(map(visible, batch))
