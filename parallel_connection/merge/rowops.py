"""Row-at-a-time steps after merging: DISTINCT, DISTINCT ON, OFFSET / LIMIT."""

from __future__ import annotations

import itertools
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg2
import psycopg2.errors

from ..errors import refuse
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
    skip = row_count(offset, "OFFSET") or 0
    count = row_count(limit, "LIMIT")
    # islice takes at most sys.maxsize: no result is that long, so larger bounds change nothing.
    skip = min(skip, sys.maxsize)
    stop = None if count is None else min(skip + count, sys.maxsize)
    return itertools.islice(rows, skip, stop)


_BIGINT = 2**63
_INTEGER_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*")
_NEGATIVE = {
    "LIMIT": psycopg2.errors.InvalidRowCountInLimitClause,
    "OFFSET": psycopg2.errors.InvalidRowCountInResultOffsetClause,
}


def row_count(value: Any, clause: str) -> int | None:
    """A LIMIT or OFFSET parameter as the bigint PostgreSQL makes of it, as psycopg2 sends it."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise refuse(f"{clause} with a boolean parameter")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise psycopg2.errors.NumericValueOutOfRange("bigint out of range")
        value = Decimal(repr(value))  # psycopg2 sends a finite float as a numeric literal
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise psycopg2.errors.FeatureNotSupported(f"cannot convert {value} to bigint")
        value = int(value.to_integral_value(rounding=ROUND_HALF_UP))
    elif isinstance(value, str):
        if not _INTEGER_TEXT.fullmatch(value):
            message = f'invalid input syntax for type bigint: "{value}"'
            raise psycopg2.errors.InvalidTextRepresentation(message)
        value = int(value)
    elif not isinstance(value, int):
        raise refuse(f"{clause} with a parameter of Python type {type(value).__name__}")
    if not -_BIGINT <= value < _BIGINT:
        raise psycopg2.errors.NumericValueOutOfRange("bigint out of range")
    if value < 0:
        raise _NEGATIVE[clause](f"{clause} must not be negative")
    count: int = value
    return count
