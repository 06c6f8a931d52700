"""The user's typecasters, applied to merged values as psycopg2 applies them to a server's.

A merge computes on psycopg2's own Python values (``Decimal``, ``int``,
``float``, ``bool``). So while a merged statement runs, its shard cursors
read the types a merge computes on with psycopg2's built-in typecasters,
and each merged value of such a column is then handed, as the text
PostgreSQL would have sent, to the typecaster the user put in effect (on the
cursor, its connection, or globally): once, as for a plain value.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import psycopg2._psycopg
import psycopg2.extensions

__all__ = ["ALL_BUILT_IN", "BUILT_IN", "LibraryCursor", "UserCasts", "cursor_casters", "in_effect", "pg_text"]

BOOL, INT8, INT2, INT4, FLOAT4, FLOAT8, NUMERIC = 16, 20, 21, 23, 700, 701, 1700

_p = psycopg2._psycopg
BUILT_IN: dict[int, Any] = {
    BOOL: _p.BOOLEAN, INT8: _p.LONGINTEGER, INT2: _p.INTEGER, INT4: _p.INTEGER,
    FLOAT4: _p.FLOAT, FLOAT8: _p.FLOAT, NUMERIC: _p.DECIMAL,
}  # fmt: skip
"""The types a merge computes on, and psycopg2's own typecaster for each."""

_OTHERS = ("PY", "UNICODE", "BYTES", "NUMBER", "UNKNOWN")
"""psycopg2's typecasters that are not its defaults (alternatives, or the DB-API's type objects)."""
ALL_BUILT_IN: dict[int, Any] = {
    oid: caster
    for name in dir(_p)
    if isinstance(caster := getattr(_p, name), type(_p.DECIMAL)) and not name.startswith(_OTHERS)
    for oid in caster.values
}
"""Every built-in type psycopg2 casts, and its own typecaster for it."""

_EXPONENT_FROM = {FLOAT4: 6, FLOAT8: 15}
"""PostgreSQL writes a float in exponent form from this decimal exponent on (FLT_DIG, DBL_DIG)."""


_NOTHING = psycopg2.extensions.new_type((), "PC_NOTHING", lambda value, cursor: value)
"""A typecaster for no type: registering it gives a cursor its own table of typecasters."""


def in_effect(cursor: Any, oid: int) -> Any:
    """The typecaster psycopg2 uses for ``oid`` on ``cursor``: the cursor's, its connection's, or the
    global one."""
    for table in (cursor.string_types, cursor.connection.string_types, psycopg2.extensions.string_types):
        caster = table.get(oid) if table else None
        if caster is not None:
            return caster
    return None


def cursor_casters(cursor: Any) -> dict[int, Any]:
    """``cursor``'s own typecasters (type OID -> typecaster), which psycopg2 looks at first."""
    if cursor.string_types is None:
        psycopg2.extensions.register_type(_NOTHING, cursor)
    table: dict[int, Any] = cursor.string_types
    return table


class LibraryCursor(psycopg2.extensions.cursor):
    """A cursor for the library's own queries (catalog reads, commits, coordinator steps): it reads
    every built-in type with psycopg2's own typecasters, whatever the user registered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cursor_casters(self).update(ALL_BUILT_IN)


class UserCasts:
    """For one merged statement: its shard cursors read with psycopg2's own typecasters until
    :meth:`restore`, and :meth:`apply` gives the merged values to the user's."""

    def __init__(self, cursors: Sequence[Any], targets: Sequence[int]) -> None:
        first = cursors[targets[0]]
        self.casters = {oid: c for oid, own in BUILT_IN.items() if (c := in_effect(first, oid)) is not own}
        """Type OID -> the user's typecaster in effect."""
        self._cursor = first
        self._saved: list[tuple[dict[int, Any], int, Any]] = []
        for index in targets if self.casters else ():
            table = cursor_casters(cursors[index])
            for oid in self.casters:
                self._saved.append((table, oid, table.get(oid)))
                table[oid] = BUILT_IN[oid]

    def restore(self) -> None:
        """The shard cursors' own typecasters again."""
        for table, oid, caster in reversed(self._saved):
            if caster is None:
                table.pop(oid, None)
            else:
                table[oid] = caster
        self._saved = []

    def apply(self, description: Sequence[Any], batches: Iterator[list[Any]]) -> Iterator[list[Any]]:
        """``batches`` of merged rows, each value of a column whose type has a user's typecaster cast
        by it."""
        columns = [
            (index, self.casters[column.type_code], column.type_code)
            for index, column in enumerate(description)
            if column.type_code in self.casters
        ]
        if not columns:
            return batches
        return self._cast(columns, batches)

    def _cast(self, columns: list[tuple[int, Any, int]], batches: Iterator[list[Any]]) -> Iterator[list[Any]]:
        cursor = self._cursor
        for batch in batches:
            out = []
            for row in batch:
                values = list(row)
                for index, caster, oid in columns:
                    values[index] = caster(pg_text(values[index], oid), cursor)
                out.append(tuple(values))
            yield out


def pg_text(value: Any, oid: int) -> str | None:
    """``value`` (psycopg2's Python value of type ``oid``) as PostgreSQL writes it."""
    if value is None:
        return None
    if oid == BOOL:
        return "t" if value else "f"
    if oid == NUMERIC:
        return _numeric_text(value)
    if oid in (FLOAT4, FLOAT8):
        return _float_text(float(value), oid)
    return str(int(value))


def _numeric_text(value: Decimal) -> str:
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    return format(value, "f")


def _float_text(value: float, oid: int) -> str:
    """The shortest text that reads back as ``value`` (as a ``real`` for float4), in PostgreSQL's
    layout: plain, or ``1.5e+20`` for large and small exponents."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    digits = repr(value) if oid == FLOAT8 else _shortest_real(value)
    exact = Decimal(digits)
    if exact.is_zero():
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    exponent = exact.adjusted()
    if -4 <= exponent < _EXPONENT_FROM[oid]:
        text = format(exact, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    sign, numbers, _ = exact.normalize().as_tuple()
    mantissa = "".join(map(str, numbers))
    mantissa = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def _shortest_real(value: float) -> str:
    single = struct.unpack("f", struct.pack("f", value))[0]
    for precision in range(1, 10):
        text = f"{single:.{precision}g}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == single:
            return text
    return repr(single)
