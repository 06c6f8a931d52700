"""Merged rows in the user's row type: tuples, RealDictRow, DictRow or named tuples.

Shard cursors of a merging cursor return plain tuples; the merged tuples are
turned into the type the user's ``cursor_factory`` would have returned.
Factories whose rows are tuples (psycopg2's cursor, LoggingCursor) are kept
on the shards as they are.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import psycopg2.extensions
import psycopg2.extras

__all__ = ["RowMaker", "rebuildable", "row_maker", "tuple_rows"]

RowMaker = Callable[[tuple[Any, ...]], Any]


def tuple_rows(factory: Any) -> bool:
    """``factory``'s rows are psycopg2's plain tuples (its own cursor, or a LoggingCursor, which
    only logs), so its shard cursors can feed a merge as they are."""
    if factory is None or factory is psycopg2.extensions.cursor:
        return True
    return isinstance(factory, type) and issubclass(factory, psycopg2.extras.LoggingCursor)


def rebuildable(factory: Any) -> bool:
    """True when merged rows can be rebuilt in the rows ``factory`` makes."""
    if tuple_rows(factory):
        return True
    return isinstance(factory, type) and issubclass(
        factory,
        (psycopg2.extras.RealDictCursor, psycopg2.extras.DictCursor, psycopg2.extras.NamedTupleCursor),
    )


def row_maker(factory: Any, description: Sequence[Any]) -> RowMaker | None:
    """A function from a merged tuple to the user's row (None: tuples already are)."""
    if tuple_rows(factory):
        return None
    names = [column.name for column in description]
    if issubclass(factory, psycopg2.extras.RealDictCursor):
        real_dict = psycopg2.extras.RealDictRow
        return lambda values: real_dict(zip(names, values, strict=True))
    if issubclass(factory, psycopg2.extras.DictCursor):
        index: OrderedDict[str, int] = OrderedDict()
        for i, name in enumerate(names):
            index[name] = i
        return lambda values: _dict_row(values, index)
    if issubclass(factory, psycopg2.extras.NamedTupleCursor):
        # psycopg2's own (cached) namedtuple class for these names; its _make builds a row.
        make: RowMaker = factory._cached_make_nt(tuple(names))._make
        return make
    raise psycopg2.NotSupportedError(f"cannot rebuild rows of {factory.__name__}")


def _dict_row(values: tuple[Any, ...], index: OrderedDict[str, int]) -> psycopg2.extras.DictRow:
    row = psycopg2.extras.DictRow.__new__(psycopg2.extras.DictRow)
    list.__init__(row, values)
    # DictRow has no constructor from values; its only state is the _index slot, which
    # the psycopg2 stubs leave undeclared.
    row._index = index  # type: ignore[attr-defined]
    return row
