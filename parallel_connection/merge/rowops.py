"""Row-at-a-time steps after merging: DISTINCT, DISTINCT ON, OFFSET / LIMIT."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg2

from ..plan.model import Const, Value
from .values import equality_key

__all__ = ["bind", "distinct", "distinct_on", "offset_limit"]

Row = Any


def bind(value: Value | None, params: Any, names: tuple[str, ...]) -> Any:
    """The value of a constant or parameter at execution."""
    if value is None:
        return None
    if isinstance(value, Const):
        return value.value
    return params[names[value.number - 1]]


def _row_key(columns: Sequence[int], types: Sequence[int], what: str) -> Callable[[Row], Any]:
    normalizers = [(c, equality_key(types[c], what)) for c in columns]
    return lambda row: tuple(row[c] if f is None else f(row[c]) for c, f in normalizers)


def distinct(
    rows: Iterable[Row], width: int, types: Sequence[int], sorted_on: Sequence[int]
) -> Iterator[Row]:
    """Each visible row once.

    When the rows come sorted on ``sorted_on`` columns, equal rows are
    neighbours within a run of equal sort keys: only that run is remembered.
    """
    key = _row_key(range(width), types, "DISTINCT")
    run_key = _row_key(sorted_on, types, "DISTINCT") if sorted_on else None
    run: Any = object()
    seen: set[Any] = set()
    for row in rows:
        if run_key is not None:
            current = run_key(row)
            if current != run:
                run, seen = current, set()
        k = key(row)
        if k not in seen:
            seen.add(k)
            yield row


def distinct_on(
    rows: Iterable[Row], columns: Sequence[int], types: Sequence[int], adjacent: bool
) -> Iterator[Row]:
    """The first row for each value of the DISTINCT ON columns."""
    key = _row_key(columns, types, "DISTINCT ON")
    if adjacent:
        previous: Any = object()
        for row in rows:
            k = key(row)
            if k != previous:
                previous = k
                yield row
        return
    seen: set[Any] = set()
    for row in rows:
        k = key(row)
        if k not in seen:
            seen.add(k)
            yield row


def offset_limit(rows: Iterator[Row], offset: Any, limit: Any) -> Iterator[Row]:
    """Skip ``offset`` rows, then stop after ``limit`` (None: no bound)."""
    for name, value in (("OFFSET", offset), ("LIMIT", limit)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise psycopg2.DataError(f"{name} must be a non-negative integer, not {value!r}")
    stop = None if limit is None else (offset or 0) + limit
    return itertools.islice(rows, offset or 0, stop)
