"""HAVING on merged groups, with PostgreSQL's types: each operand is a (value, SQL type) pair.

Only what Python computes exactly as PostgreSQL would is answered: comparisons
within one family of types (numbers, text, boolean, date, timestamp), integer
arithmetic within its type's range, exact numeric and double precision
arithmetic. A string literal compared with anything but text, a condition
that is not boolean, an overflow: refused, never guessed at.
"""

from __future__ import annotations

import datetime
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

from ..errors import refuse
from ..plan.model import Expr
from . import numeric
from .rowops import bind
from .values import (
    BOOL,
    COLLATED,
    DATE,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    NUMERIC,
    TEXT,
    TIMESTAMP,
    TIMESTAMPTZ,
    VARCHAR,
    type_name,
    unrepresentable,
)

__all__ = ["check_text_order", "having"]

Row = Any
Typed = tuple[Any, str]
"""A value and the name of its SQL type."""

BOOLEAN, NULL, LITERAL = "boolean", "NULL", "a string literal"
DOUBLE, NUMERIC_TYPE, TEXT_TYPE = "double precision", "numeric", "text"
INTEGERS = {"smallint": 2**15, "integer": 2**31, "bigint": 2**63}
"""Integer types, widest last, and the bound of their range."""
NUMBERS = {*INTEGERS, NUMERIC_TYPE, DOUBLE}
_KINDS = {
    BOOL: BOOLEAN, INT2: "smallint", INT4: "integer", INT8: "bigint", NUMERIC: NUMERIC_TYPE,
    FLOAT8: DOUBLE, TEXT: TEXT_TYPE, VARCHAR: TEXT_TYPE, DATE: "date", TIMESTAMP: "timestamp",
    TIMESTAMPTZ: "timestamp with time zone",
}  # fmt: skip
COMPARABLE = {*_KINDS.values()}
_INTEGRAL = re.compile(r"-?[0-9]+")

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "<>": operator.ne, "!=": operator.ne,
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip
_ARITH: dict[str, Callable[[Any, Any], Any]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_EXACT = {"+": numeric.EXACT.add, "-": numeric.EXACT.subtract, "*": numeric.EXACT.multiply}


def check_text_order(predicate: Expr, types: Sequence[int], text_order_c: bool) -> None:
    """Refuse, before any row, a HAVING that orders text columns when text is not ordered by code point
    (what a row would find out later, when the answer is half served)."""
    if text_order_c:
        return
    stack = [predicate]
    while stack:
        expr = stack.pop()
        ordering = expr[0] == "cmp" and expr[1] not in ("=", "<>", "!=")
        if ordering and any(side[0] == "column" and types[side[1]] in COLLATED for side in expr[2:4]):
            raise refuse('HAVING comparing text under a collation other than "C"')
        stack.extend(
            part for part in expr[1:] if isinstance(part, tuple) and part and isinstance(part[0], str)
        )


def having(
    rows: Iterable[Row],
    predicate: Expr,
    params: Any,
    names: tuple[str, ...],
    text_order_c: bool,
    types: list[int],
) -> Iterator[Row]:
    """The rows for which ``predicate`` is true (not false, not NULL)."""
    evaluate = _Evaluator(params, names, text_order_c, types)
    for row in rows:
        if evaluate.condition(predicate, row) is True:
            yield row


class _Evaluator:
    def __init__(self, params: Any, names: tuple[str, ...], text_c: bool, types: list[int]) -> None:
        self.params, self.names, self.text_c = params, names, text_c
        self.kinds = [_KINDS.get(t) or type_name(t) for t in types]

    def condition(self, expr: Expr, row: Row) -> bool | None:
        """A boolean operand (of HAVING, AND, OR, NOT); refused when it is not boolean."""
        value, kind = self.typed(expr, row)
        if kind not in (BOOLEAN, NULL):
            raise refuse(f"HAVING with a condition of type {kind}, not boolean")
        return value  # type: ignore[no-any-return]

    def typed(self, expr: Expr, row: Row) -> Typed:
        op = expr[0]
        if op == "column":
            return row[expr[1]], self.kinds[expr[1]]
        if op == "value":
            return python_typed(bind(expr[1], self.params, self.names))
        if op in ("and", "or"):
            values = [self.condition(e, row) for e in expr[1:]]
            decisive = op == "or"
            if decisive in values:
                return decisive, BOOLEAN
            return (None if None in values else not decisive), BOOLEAN
        if op == "not":
            value = self.condition(expr[1], row)
            return (None if value is None else not value), BOOLEAN
        if op == "isnull":
            return self.typed(expr[1], row)[0] is None, BOOLEAN
        left, right = self.typed(expr[2], row), self.typed(expr[3], row)
        if op == "cmp":
            return self.compare(expr[1], left, right), BOOLEAN
        return arithmetic(expr[1], left, right)

    def compare(self, op: str, left: Typed, right: Typed) -> bool | None:
        kind = _common(left[1], op, right[1])
        if kind not in COMPARABLE and kind != NULL:
            raise _mismatch(left[1], op, right[1])
        if left[0] is None or right[0] is None:
            return None
        if kind == TEXT_TYPE and not self.text_c and op not in ("=", "<>", "!="):
            raise refuse('HAVING comparing text under a collation other than "C"')
        a, b = left[0], right[0]
        unrepresentable(a, "HAVING")
        unrepresentable(b, "HAVING")
        if kind == DOUBLE:
            a, b = float(a), float(b)
        return _COMPARE[op](_nan_last(a), _nan_last(b))


def python_typed(value: Any) -> Typed:
    """A parameter or literal with the SQL type PostgreSQL gives it as psycopg2 sends it."""
    if value is None:
        return None, NULL
    if isinstance(value, bool):
        return value, BOOLEAN
    if isinstance(value, Decimal) and _INTEGRAL.fullmatch(str(value)):
        value = int(value)
    if isinstance(value, int):
        return _integer(value)
    if isinstance(value, Decimal):
        return value, NUMERIC_TYPE
    if isinstance(value, float):
        # psycopg2 sends a finite float as a numeric literal, infinities and NaN as float8
        return (Decimal(repr(value)), NUMERIC_TYPE) if math.isfinite(value) else (value, DOUBLE)
    if isinstance(value, str):
        return value, LITERAL
    if isinstance(value, datetime.datetime):
        return value, "timestamp" if value.tzinfo is None else "timestamp with time zone"
    if isinstance(value, datetime.date):
        return value, "date"
    return value, f"a Python {type(value).__name__}"


def _integer(value: int) -> Typed:
    for kind in ("integer", "bigint"):
        if -INTEGERS[kind] <= value < INTEGERS[kind]:
            return value, kind
    return Decimal(value), NUMERIC_TYPE


def _common(left: str, op: str, right: str) -> str:
    """The type both operands are compared or computed in, as PostgreSQL resolves it."""
    if left == NULL:
        return right if right != LITERAL else TEXT_TYPE
    if right == NULL:
        return left if left != LITERAL else TEXT_TYPE
    if LITERAL in (left, right):
        if {left, right} <= {LITERAL, TEXT_TYPE}:
            return TEXT_TYPE
        raise refuse(f"HAVING with {left} {op} {right} (cast the string to the other side's type)")
    if left in NUMBERS and right in NUMBERS:
        for kind in (DOUBLE, NUMERIC_TYPE, *reversed(INTEGERS)):
            if kind in (left, right):
                return kind
    if left == right:
        return left
    raise _mismatch(left, op, right)


def _mismatch(left: str, op: str, right: str) -> Exception:
    return refuse(f"HAVING with {left} {op} {right}")


def arithmetic(op: str, left: Typed, right: Typed) -> Typed:
    """``left op right`` in PostgreSQL's result type; refused on overflow."""
    kind = _common(left[1], op, right[1])
    if kind not in NUMBERS and kind != NULL:
        raise _mismatch(left[1], op, right[1])
    a, b = left[0], right[0]
    if a is None or b is None:
        return None, kind
    if kind == NUMERIC_TYPE:
        return _EXACT[op](Decimal(a), Decimal(b)), kind
    if kind == DOUBLE:
        a, b = float(a), float(b)
        result = _ARITH[op](a, b)
        if math.isinf(result) and math.isfinite(a) and math.isfinite(b):
            raise refuse("HAVING arithmetic overflowing double precision")
        return result, kind
    result = _ARITH[op](a, b)
    if not -INTEGERS[kind] <= result < INTEGERS[kind]:
        raise refuse(f"HAVING arithmetic overflowing {kind}")
    return result, kind


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
