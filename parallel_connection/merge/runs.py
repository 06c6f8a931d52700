"""ORDER BY over rows in memory, compared in C wherever Python's order is PostgreSQL's.

The shards' rows come as runs, each already sorted by the statement's ORDER BY:
concatenated, ``list.sort`` with an ``operator.itemgetter`` key merges them in
few comparisons. NULLs, which Python cannot compare, lie at one end of every
run and are split off first (a binary search, no per-row work). A per-row
Python key (:func:`values.row_key`) is the last resort: NaN among floats,
character(n), values C cannot compare.
"""

from __future__ import annotations

import datetime
import decimal
import gc
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from itertools import chain, compress, count, islice, pairwise, repeat
from operator import add, eq, is_, itemgetter, lt, ne, not_, sub
from typing import Any, NamedTuple

from ..plan.model import SortKey
from .values import CALENDAR, FLOAT4, FLOAT8, NUMERIC, PADDED, row_key, unrepresentable

__all__ = ["RowOrder", "fast_sort"]

Row = Any
Keys = tuple[SortKey, ...]


class _Misplaced(Exception):
    """A run's NULLs are not at the end its order puts them: no shortcut for it."""


class RowOrder:
    """One ORDER BY over rows whose columns have the given type OIDs."""

    def __init__(self, keys: Sequence[SortKey], types: Sequence[int]) -> None:
        self.keys: Keys = tuple(keys)
        self.types = tuple(types)
        columns = [k.column for k in self.keys]
        self._floats = [c for c in dict.fromkeys(columns) if types[c] in (FLOAT4, FLOAT8)]
        self._slow_only = any(types[c] in PADDED for c in columns)
        self._numeric = any(types[c] == NUMERIC for c in columns)
        self._calendar = [(i, c) for i, c in enumerate(columns) if types[c] in CALENDAR]
        self.key, self.reverse = row_key(self.keys, types, check=False)
        """A Python key for single rows (and ``reverse``), as ``sorted`` takes them."""
        self._shapes: dict[int, _Shape] = {}
        """Per number of keys left, how their first key repeats (sampled once)."""

    def merge(self, runs: Sequence[list[Row]]) -> list[Row]:
        """The rows of ``runs``, each already in this order, in this order (may be a run itself)."""
        runs = [run for run in runs if run]
        if len(runs) == 1:
            return self._check_calendar(runs[0], sorted_here=False)
        merge = partial(_merge, shapes=self._shapes)
        return self._check_calendar(self._sorted(runs, merge), sorted_here=True)

    def sort(self, rows: list[Row]) -> list[Row]:
        """``rows``, in any order, in this order (sorted in place or a new list)."""
        return self._check_calendar(self._sorted([rows], _order_one), sorted_here=True)

    def in_order(self, run: list[Row]) -> bool:
        """Whether ``run`` is in this order already (its equal rows in any order)."""
        if len(run) < 2:
            return True
        if len(self.keys) == 1 and not (self._slow_only or self._floats):
            with _nan_raises() if self._numeric else nullcontext():
                try:
                    return _in_order_on(run, self.keys[0])
                except ArithmeticError:
                    pass  # a numeric NaN: see below
        # Every step of the sort is stable: a run in order comes back with each row in its place.
        return all(map(is_, self._sorted([list(run)], _order_one), run))

    def _sorted(self, runs: list[list[Row]], how: Callable[[list[list[Row]], Keys], list[Row]]) -> list[Row]:
        # The cyclic collector would rescan every row many times while the sort makes its keys.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            if self._slow_only or self._has_nan(runs):
                return self._slow(runs)
            with _nan_raises() if self._numeric else nullcontext():
                try:
                    return how(runs, self.keys)
                except (TypeError, ArithmeticError, _Misplaced):
                    pass  # values C cannot compare (a naive infinity among aware timestamps, say)
            return self._slow(runs)
        finally:
            if was_enabled:
                gc.enable()

    def _has_nan(self, runs: list[list[Row]]) -> bool:
        for column in self._floats:
            for run in runs:
                values = list(map(itemgetter(column), run))
                if any(map(ne, values, values)):
                    return True
        return False

    def _slow(self, runs: list[list[Row]]) -> list[Row]:
        rows = list(chain.from_iterable(runs))
        key, reverse = row_key(self.keys, self.types)  # refuses an infinity among the keys
        rows.sort(key=key, reverse=reverse)
        return rows

    def _check_calendar(self, rows: list[Row], *, sorted_here: bool) -> list[Row]:
        """Refuse an infinity among date and timestamp keys (see ``values.unrepresentable``)."""
        for position, column in self._calendar:
            get = itemgetter(column)
            if position == 0 and sorted_here:
                # Sorted on this column: its least and greatest values are the ends of its non-NULLs.
                lo, hi = _non_nulls(rows, column, self.keys[0].nulls_first)
                ends = [rows[lo][column], rows[hi - 1][column]] if lo < hi else []
            else:
                values = list(filter(None, map(get, rows)))  # dates are never false, None is
                try:
                    ends = [min(values), max(values)] if values else []
                except TypeError:
                    ends = [datetime.datetime.max]  # naive and aware mixed: look at every value
            if any(map(_near_an_end, ends)):
                for value in map(get, rows):
                    unrepresentable(value, "ORDER BY")
        return rows


def fast_sort(rows: list[Row], keys: Sequence[SortKey], types: Sequence[int]) -> None:
    """Sort ``rows`` in place as ORDER BY ``keys`` does."""
    rows[:] = RowOrder(keys, types).sort(rows)


@contextmanager
def _nan_raises() -> Iterator[None]:
    """Comparing a numeric NaN raises (whatever the caller's context), so C never orders one."""
    with decimal.localcontext() as context:
        context.traps[decimal.InvalidOperation] = True
        yield


_MARGIN = datetime.timedelta(days=3)
"""More than any UTC offset twice: an aware value whose clock reads an end is this near one."""


def _near_an_end(value: Any) -> bool:
    if isinstance(value, datetime.datetime):
        plain = value.replace(tzinfo=None)
        return plain >= datetime.datetime.max - _MARGIN or plain <= datetime.datetime.min + _MARGIN
    if isinstance(value, datetime.date):
        return value >= datetime.date.max - _MARGIN or value <= datetime.date.min + _MARGIN
    return False


def _non_nulls(rows: Sequence[Row], column: int, nulls_first: bool) -> tuple[int, int]:
    """[lo, hi): where the rows whose ``column`` is not NULL lie, the NULLs being at one end."""
    if nulls_first:
        return bisect_left(rows, True, key=lambda row: row[column] is not None), len(rows)
    return 0, bisect_left(rows, True, key=lambda row: row[column] is None)


def _split(run: list[Row], column: int, nulls_first: bool) -> tuple[list[Row], list[Row]]:
    """(the rows of a sorted run whose ``column`` is NULL, the others)."""
    if run[0 if nulls_first else -1][column] is not None:
        return [], run
    lo, hi = _non_nulls(run, column, nulls_first)
    nulls, values = (run[:lo], run[lo:]) if nulls_first else (run[hi:], run[:hi])
    if list(map(itemgetter(column), nulls)).count(None) != len(nulls):
        raise _Misplaced
    # A NULL left among the values meets a value in the sort: a TypeError, never a misplaced row.
    return nulls, values


def _in_order_on(run: list[Row], key: SortKey) -> bool:
    """Whether ``run`` is in the order of its one ``key``, compared in C."""
    try:
        _, values = _split(run, key.column, key.nulls_first)
    except _Misplaced:
        return False
    earlier = list(map(itemgetter(key.column), values))
    later = islice(earlier, 1, None)
    try:
        return not any(map(lt, earlier, later) if key.descending else map(lt, later, earlier))
    except TypeError:
        return False  # a NULL among the values: not where the order puts NULLs


def _merge(runs: list[list[Row]], keys: Keys, shapes: dict[int, _Shape]) -> list[Row]:
    """The rows of ``runs``, each in the order of ``keys``, in that order."""
    runs = [run for run in runs if run]
    if not runs:
        return []
    first = keys[0]
    parts = [_split(run, first.column, first.nulls_first) for run in runs]
    values = _merge_values([v for _, v in parts], keys, shapes)
    if not any(nulls for nulls, _ in parts):
        return values
    heads = [nulls for nulls, _ in parts]
    nulls = _merge(heads, keys[1:], shapes) if len(keys) > 1 else list(chain.from_iterable(heads))
    return nulls + values if first.nulls_first else values + nulls


def _merge_values(runs: list[list[Row]], keys: Keys, shapes: dict[int, _Shape]) -> list[Row]:
    """Like :func:`_merge`, no first key being NULL."""
    runs = [run for run in runs if run]
    rows = list(chain.from_iterable(runs))
    shape = shapes.get(len(keys))
    if shape is None and len(keys) > 1 and len(rows) >= 16 * _SAMPLES:  # a sample worth taking
        shape = shapes[len(keys)] = _shape(runs, keys[0])
    if len(keys) == 1 or (shape is not None and shape.groups > 1 / 8 and _same_direction(keys)):
        # Ties in many small groups: a tuple per row as the key costs less than sorting each group.
        if _tuple_sorted(rows, keys):
            return rows
        rows = list(chain.from_iterable(runs))  # the runs' order again: the next sort is stable
    return _by_first_key(rows, keys, search=shape is not None and shape.distinct < 1 / 64)


def _tuple_sorted(rows: list[Row], keys: Keys) -> bool:
    """Sort ``rows`` in place on the tuple of their keys (all in one direction); False when a NULL
    in a later key stopped it, ``rows`` then in any order."""
    try:
        rows.sort(key=itemgetter(*[k.column for k in keys]), reverse=keys[0].descending)
        return True
    except TypeError:
        if len(keys) == 1:
            raise
        return False


_SAMPLES = 64


class _Shape(NamedTuple):
    """How the first key's values repeat, per row: a sample of the runs."""

    groups: float
    """Groups of two or more equal values."""
    distinct: float
    """Distinct values."""


def _shape(runs: list[list[Row]], key: SortKey) -> _Shape:
    column = key.column
    groups = distinct = 0.0
    samples = 0
    for run in runs:
        for value in map(itemgetter(column), run[:: max(1, len(run) * len(runs) // _SAMPLES)]):
            size = sum(_equal_rows(r, column, value, key.descending) for r in runs)
            samples += 1
            distinct += 1 / size
            groups += 1 / size if size > 1 else 0
    return _Shape(groups / samples, distinct / samples)


def _equal_rows(run: list[Row], column: int, value: Any, descending: bool) -> int:
    """How many rows of ``run``, sorted on ``column``, hold ``value`` there."""
    start = _first_not_before(run, 0, column, value, descending)
    return _first_after(run, start, column, value, descending) - start


def _first_not_before(run: list[Row], lo: int, column: int, value: Any, descending: bool) -> int:
    if descending:
        return bisect_left(run, True, lo=lo, key=lambda row: row[column] <= value)
    return bisect_left(run, value, lo=lo, key=itemgetter(column))


def _first_after(run: list[Row], lo: int, column: int, value: Any, descending: bool) -> int:
    if descending:
        return bisect_left(run, True, lo=lo, key=lambda row: row[column] < value)
    return bisect_right(run, value, lo=lo, key=itemgetter(column))


def _order_one(runs: list[list[Row]], keys: Keys) -> list[Row]:
    return _order(runs[0], keys)


def _order(rows: list[Row], keys: Keys) -> list[Row]:
    """``rows`` in any order (NULLs anywhere) in the order of ``keys``."""
    if len(rows) < 2:
        return rows
    first = keys[0]
    null = list(map(is_, map(itemgetter(first.column), rows), repeat(None)))
    if not any(null):
        return _order_values(rows, keys)
    nulls = list(compress(rows, null))
    values = _order_values(list(compress(rows, map(not_, null))), keys)
    if len(keys) > 1:
        nulls = _order(nulls, keys[1:])
    return nulls + values if first.nulls_first else values + nulls


def _order_values(rows: list[Row], keys: Keys) -> list[Row]:
    """Like :func:`_order`, no first key being NULL."""
    if _same_direction(keys) and _tuple_sorted(rows, keys):
        return rows
    return _by_first_key(rows, keys)


def _by_first_key(rows: list[Row], keys: Keys, *, search: bool = False) -> list[Row]:
    """Sort ``rows`` (no first key NULL) by the first key, then each group of ties by the others.

    With ``search``, the groups are found by binary search (for few distinct first keys).
    """
    first, rest = keys[0], keys[1:]
    get = itemgetter(first.column)
    rows.sort(key=get, reverse=first.descending)  # stable: each shard's ties stay in their order
    if not rest or len(rows) < 2:
        return rows
    quick = itemgetter(*[k.column for k in rest]) if _same_direction(rest) else None
    reverse = rest[0].descending
    groups = _searched_groups(rows, first) if search else _tie_groups(list(map(get, rows)))
    for start, end in groups:
        if quick is not None:
            try:
                if end - start == 2:  # the commonest group, quicker compared than sorted
                    one, two = rows[start], rows[start + 1]
                    if quick(one) < quick(two) if reverse else quick(two) < quick(one):
                        rows[start], rows[start + 1] = two, one
                else:
                    rows[start:end] = sorted(rows[start:end], key=quick, reverse=reverse)
                continue
            except TypeError:
                pass  # a NULL among the later keys
        rows[start:end] = _order(rows[start:end], rest)
    return rows


def _searched_groups(rows: list[Row], key: SortKey) -> Iterator[tuple[int, int]]:
    """[start, end) of each group of two or more rows equal on ``key``, ``rows`` sorted on it."""
    start = 0
    while start < len(rows):
        end = _first_after(rows, start, key.column, rows[start][key.column], key.descending)
        if end - start > 1:
            yield start, end
        start = end


def _tie_groups(values: list[Any]) -> Iterable[tuple[int, int]]:
    """[start, end) of each run of two or more equal neighbours in ``values``."""
    tied = list(map(eq, values, islice(values, 1, None)))  # tied[i]: values i and i + 1 are equal
    ties = tied.count(True)
    if not ties:
        return ()
    if ties * 2 < len(tied):  # few ties: from where they are, a gap between two starting a new group
        at = list(compress(count(), tied))
        new = list(map(ne, map(sub, islice(at, 1, None), at), repeat(1)))
        firsts = [at[0], *compress(islice(at, 1, None), new)]
        lasts = [*compress(at, new), at[-1]]
        return zip(firsts, map(add, lasts, repeat(2)), strict=True)
    # few distinct values: from where each starts
    starts = [0, *compress(count(1), map(not_, tied)), len(values)]
    return ((s, e) for s, e in pairwise(starts) if e - s > 1)


def _same_direction(keys: Keys) -> bool:
    return all(k.descending == keys[0].descending for k in keys)
