"""PostgreSQL's order and equality for the Python values psycopg2 returns, by type OID.

Only types whose Python comparison matches the server's are ordered or
grouped on the client; any other type is refused rather than guessed at.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Sequence
from typing import Any

import psycopg2.extensions

from ..errors import refuse
from ..plan.model import SortKey

__all__ = [
    "ARRAY_ELEMENT",
    "ARRAY_OF",
    "NAN",
    "check_equality",
    "check_order",
    "equality_key",
    "row_key",
    "stand_in",
    "type_name",
    "unrepresentable",
]

BOOL, INT8, INT2, INT4, TEXT, OID, NAME, CHAR = 16, 20, 21, 23, 25, 26, 19, 18
FLOAT4, FLOAT8, NUMERIC, VARCHAR, BPCHAR = 700, 701, 1700, 1043, 1042
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, UUID = 1082, 1083, 1114, 1184, 1186, 2950
TIMETZ, JSON, JSONB = 1266, 114, 3802

COLLATED = frozenset({TEXT, VARCHAR, BPCHAR, NAME})
"""Text types ordered by a collation (``"char"`` always orders bytes; ``name`` is C unless an
expression gives it another, ``s::name`` takes the collation of ``s``)."""
ORDERED = frozenset({BOOL, INT8, INT2, INT4, OID, NAME, CHAR, FLOAT4, FLOAT8, NUMERIC, DATE})
ORDERED |= frozenset({TIMESTAMP, TIMESTAMPTZ, UUID}) | COLLATED
"""Types whose Python order, with NaN, NULL and infinities handled here, is PostgreSQL's.

Not interval (psycopg2 makes a year 365 days, PostgreSQL compares it as 360),
nor time (psycopg2 returns 24:00 as 00:00).
"""
CALENDAR = frozenset({DATE, TIMESTAMP, TIMESTAMPTZ})
PADDED = frozenset({BPCHAR})
"""character(n): PostgreSQL compares it without its trailing spaces; psycopg2 returns them."""
"""Types whose infinities psycopg2 returns as the calendar's last or first value: see ``unrepresentable``."""
EQUAL = ORDERED
"""Types whose Python equality (NaN aside) is PostgreSQL's."""
WITH_NAN = frozenset({FLOAT4, FLOAT8, NUMERIC})

ARRAY_ELEMENT = {
    1000: BOOL, 1005: INT2, 1007: INT4, 1016: INT8, 1028: OID, 1003: NAME, 1002: CHAR, 1009: TEXT,
    1015: VARCHAR, 1021: FLOAT4, 1022: FLOAT8, 1231: NUMERIC, 1182: DATE, 1183: TIME,
    1115: TIMESTAMP, 1185: TIMESTAMPTZ, 1187: INTERVAL, 2951: UUID,
}  # fmt: skip
ARRAY_OF = {element: array for array, element in ARRAY_ELEMENT.items()} | {
    TIMETZ: 1270,
    JSON: 199,
    JSONB: 3807,
}
"""Element type OID -> its array type's OID."""


class _NaN:
    """NaN as PostgreSQL sees it: equal to itself, greater than every number."""

    def __repr__(self) -> str:
        return "NaN"


NAN = _NaN()


_SQL_NAMES = {
    BOOL: "boolean", 17: "bytea", INT8: "bigint", INT2: "smallint", INT4: "integer", TEXT: "text",
    114: "json", 3802: "jsonb", FLOAT4: "real", FLOAT8: "double precision", 790: "money",
    BPCHAR: "character(n)", VARCHAR: "character varying", NUMERIC: "numeric", INTERVAL: "interval",
    1266: "time with time zone", 2249: "record", 2287: "record[]", DATE: "date", TIME: "time",
    TIMESTAMP: "timestamp", TIMESTAMPTZ: "timestamp with time zone", UUID: "uuid",
}  # fmt: skip


def type_name(type_code: int) -> str:
    """The SQL name of a type OID, for messages."""
    if type_code in _SQL_NAMES:
        return _SQL_NAMES[type_code]
    if type_code in ARRAY_ELEMENT:
        return type_name(ARRAY_ELEMENT[type_code]) + "[]"
    typ = psycopg2.extensions.string_types.get(type_code)
    return typ.name.lower() if typ else f"type oid {type_code}"


def check_order(type_code: int, text_order_c: bool, what: str, collate_c: bool = False) -> None:
    """Refuse to order ``what`` when Python can't order its type as the server does."""
    if type_code not in ORDERED:
        raise refuse(f"{what} on a column of type {type_name(type_code)}")
    if type_code in COLLATED and not (text_order_c or collate_c):
        raise refuse(
            f'{what} on text under a collation other than "C" (order by the column '
            'COLLATE "C", or create the shard databases with --locale=C)'
        )


def check_equality(type_code: int, what: str) -> None:
    """Refuse to compare ``what`` for equality when Python can't do it as the server does."""
    if type_code not in EQUAL:
        raise refuse(f"{what} on a column of type {type_name(type_code)}")


def equality_key(type_code: int, what: str = "GROUP BY or DISTINCT") -> Callable[[Any], Any] | None:
    """A function making values of this type hash and compare as PostgreSQL's equal (None: as is)."""
    if type_code in CALENDAR:
        return lambda v: _calendar(v, what)
    if type_code in (FLOAT4, FLOAT8):
        return lambda v: v if v == v else NAN
    if type_code in PADDED:
        return _unpadded
    if type_code == NUMERIC:
        return lambda v: NAN if v is not None and v.is_nan() else v
    return None


_STAND_INS = {
    datetime.datetime.max: "infinity", datetime.datetime.min: "-infinity",
    datetime.date.max: "infinity", datetime.date.min: "-infinity",
}  # fmt: skip


def stand_in(value: Any) -> str | None:
    """``infinity`` or ``-infinity`` when psycopg2 returns ``value`` for one too (the calendar's ends)."""
    if isinstance(value, datetime.date):
        plain = value.replace(tzinfo=None) if isinstance(value, datetime.datetime) else value
        return _STAND_INS.get(plain)
    return None


def unrepresentable(value: Any, what: str) -> None:
    """Refuse a value psycopg2 returns for more than one PostgreSQL value (infinities)."""
    infinity = stand_in(value)
    if infinity is not None:
        raise refuse(
            f"{what} on a date or timestamp {infinity}, or at that end of the calendar "
            "(psycopg2 returns both as the same Python value)"
        )


def _calendar(value: Any, what: str) -> Any:
    unrepresentable(value, what)
    return value


def _unpadded(value: Any) -> Any:
    return value.rstrip(" ") if isinstance(value, str) else value


def _number_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, float):
        return (1, 0.0) if math.isnan(value) else (0, value)
    return (1, 0) if value.is_nan() else (0, value)


class _Reversed:
    """Wraps a sort component to order it the other way round."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        less: bool = other.value < self.value
        return less

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.value == other.value


def row_key(
    keys: Sequence[SortKey], types: Sequence[int], *, check: bool = True
) -> tuple[Callable[[Any], Any], bool]:
    """(key function, reverse) sorting rows as ORDER BY ``keys`` does, NULLs and NaN included.

    With ``check``, an infinity among the keys is refused (see ``unrepresentable``).
    """
    reverse = keys[0].descending
    parts = []
    for key in keys:
        nulls_high = key.descending == key.nulls_first
        number = types[key.column] in WITH_NAN
        calendar = check and types[key.column] in CALENDAR
        padded = types[key.column] in PADDED
        parts.append((key.column, nulls_high, number, calendar, padded, key.descending != reverse))

    def component(
        value: Any, nulls_high: bool, number: bool, calendar: bool, padded: bool, flip: bool
    ) -> Any:
        if value is None:
            part: Any = (2,) if nulls_high else (0,)
        else:
            if calendar:
                unrepresentable(value, "ORDER BY")
            part = (1, _number_key(value) if number else value.rstrip(" ") if padded else value)
        return _Reversed(part) if flip else part

    if len(parts) == 1:
        column, nulls_high, number, calendar, padded, flip = parts[0]
        return (lambda row: component(row[column], nulls_high, number, calendar, padded, flip)), reverse
    return (lambda row: tuple(component(row[c], h, n, d, p, f) for c, h, n, d, p, f in parts)), reverse
