"""Row-at-a-time steps after merging: HAVING, DISTINCT, DISTINCT ON, OFFSET / LIMIT."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import psycopg2

from ..plan.model import Const, Expr, Value
from ..plan.refusals import refuse
from . import numeric
from .values import equality_key

__all__ = ["bind", "distinct", "distinct_on", "having", "offset_limit"]

Row = Any

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "<>": operator.ne, "!=": operator.ne,
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip


def bind(value: Value | None, params: Any, names: tuple[str, ...]) -> Any:
    """The value of a constant or parameter at execution."""
    if value is None:
        return None
    if isinstance(value, Const):
        return value.value
    return params[names[value.number - 1]]


def _row_key(columns: Sequence[int], types: Sequence[int]) -> Callable[[Row], Any]:
    normalizers = [(c, equality_key(types[c])) for c in columns]
    return lambda row: tuple(row[c] if f is None else f(row[c]) for c, f in normalizers)


def distinct(
    rows: Iterable[Row], width: int, types: Sequence[int], sorted_on: Sequence[int]
) -> Iterator[Row]:
    """Each visible row once.

    When the rows come sorted on ``sorted_on`` columns, equal rows are
    neighbours within a run of equal sort keys: only that run is remembered.
    """
    key = _row_key(range(width), types)
    run_key = _row_key(sorted_on, types) if sorted_on else None
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
    key = _row_key(columns, types)
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


def having(
    rows: Iterable[Row], predicate: Expr, params: Any, names: tuple[str, ...], text_order_c: bool
) -> Iterator[Row]:
    """The rows for which ``predicate`` is true (not false, not NULL)."""
    for row in rows:
        if _evaluate(predicate, row, params, names, text_order_c) is True:
            yield row


def _evaluate(expr: Expr, row: Row, params: Any, names: tuple[str, ...], text_c: bool) -> Any:
    op = expr[0]
    if op == "column":
        return row[expr[1]]
    if op == "value":
        return bind(expr[1], params, names)
    if op in ("and", "or"):
        values = [_evaluate(e, row, params, names, text_c) for e in expr[1:]]
        decisive = op == "or"
        if decisive in values:
            return decisive
        return None if None in values else not decisive
    if op == "not":
        value = _evaluate(expr[1], row, params, names, text_c)
        return None if value is None else not value
    if op == "isnull":
        return _evaluate(expr[1], row, params, names, text_c) is None
    left = _evaluate(expr[2], row, params, names, text_c)
    right = _evaluate(expr[3], row, params, names, text_c)
    if left is None or right is None:
        return None
    left, right = _coerce(left, right)
    try:
        if op == "cmp":
            if (
                isinstance(left, str)
                and isinstance(right, str)
                and not text_c
                and expr[1] not in ("=", "<>", "!=")
            ):
                raise refuse('HAVING comparing text under a collation other than "C"')
            return _COMPARE[expr[1]](_nan_last(left), _nan_last(right))
        if isinstance(left, bool) or isinstance(right, bool):
            raise TypeError
        with_decimal = isinstance(left, Decimal) or isinstance(right, Decimal)
        if op == "arith" and with_decimal:
            method = {"+": numeric.EXACT.add, "-": numeric.EXACT.subtract, "*": numeric.EXACT.multiply}[
                expr[1]
            ]
            return method(Decimal(left), Decimal(right))
        return {"+": operator.add, "-": operator.sub, "*": operator.mul}[expr[1]](left, right)
    except TypeError:
        raise refuse(f"HAVING with {type(left).__name__} {expr[1]} {type(right).__name__}") from None


def _coerce(left: Any, right: Any) -> tuple[Any, Any]:
    """Mixed float and numeric compare as float, as PostgreSQL casts numeric to double precision."""
    if isinstance(left, float) and isinstance(right, Decimal):
        return left, float(right)
    if isinstance(right, float) and isinstance(left, Decimal):
        return float(left), right
    return left, right


def _nan_last(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return _Greatest()
    if isinstance(value, Decimal) and value.is_nan():
        return _Greatest()
    return value


class _Greatest:
    """NaN in a comparison: equal to NaN, greater than any number."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Greatest)

    def __ne__(self, other: object) -> bool:
        return not isinstance(other, _Greatest)

    def __lt__(self, other: object) -> bool:
        return False

    def __le__(self, other: object) -> bool:
        return isinstance(other, _Greatest)

    def __gt__(self, other: object) -> bool:
        return not isinstance(other, _Greatest)

    def __ge__(self, other: object) -> bool:
        return True

    __hash__ = None  # type: ignore[assignment]
