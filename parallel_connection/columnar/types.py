"""PostgreSQL's types as Arrow's: what the driver reads as is, what it reads as text, and the casts after.

The ADBC driver decodes most types exactly. Numeric it gives as its text
(PostgreSQL's digits), which Arrow casts to ``decimal128(p, s)`` (the
column's own precision and scale; for an unconstrained numeric, the smallest
scale holding every value; text when NaN or infinities leave no decimal). Types Arrow
has no equivalent of (inet, ranges, geometric types, timetz, money, xml,
composites...) come as their text, as psycopg2 gives them. json and jsonb come
as text, oid as uint32, timestamptz in the session's time zone.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import json
import re
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import refuse

__all__ = [
    "Column",
    "arrow_zone",
    "check_representable",
    "describe_query",
    "finish",
    "flat",
    "plan_columns",
    "rows_table",
    "settle",
    "unify",
    "wrapped",
]

_AS_IS: dict[int, str] = {
    16: "bool", 17: "bytea", 18: "char", 19: "name", 20: "int8", 21: "int2", 23: "int4", 25: "text",
    700: "float4", 701: "float8", 1042: "bpchar", 1043: "varchar", 1082: "date", 1083: "time",
    1114: "timestamp", 1184: "timestamptz", 1186: "interval", 114: "json", 3802: "jsonb", 26: "oid",
}  # fmt: skip
"""Types the driver decodes as PostgreSQL has them (oid as a signed int, cast after)."""
_ARRAYS: dict[int, str] = {
    1000: "bool", 1001: "bytea", 1005: "int2", 1007: "int4", 1016: "int8", 1009: "text", 1015: "varchar",
    1021: "float4", 1022: "float8", 1182: "date", 1115: "timestamp", 1185: "timestamptz", 1187: "interval",
}  # fmt: skip
_NUMERIC = 1700
_NUMERIC_ARRAY = 1231
MAX_DECIMAL128 = 38
MAX_DECIMAL256 = 76


@dataclass(frozen=True)
class Column:
    """How one result column is read and finished."""

    name: str
    pg_type: str
    as_text: bool = False
    """The server sends ``column::text`` (types Arrow has no equivalent of)."""
    numeric: tuple[int, int] | None = None
    """(precision, scale) of a numeric(p, s) column (the driver gives its text); (0, 0): unconstrained."""
    elements_numeric: bool = False
    """A numeric[] column: its elements come as text, cast to a decimal after."""
    array: bool = False
    """An array column: the read also says whether a value has several dimensions (the driver
    would flatten it)."""


def plan_columns(description: Sequence[Any]) -> list[Column]:
    """How each column of a psycopg2 ``description`` (OIDs, numeric precision and scale) is read."""
    columns = []
    for column in description:
        oid, name = column.type_code, column.name
        if oid == _NUMERIC:
            columns.append(Column(name, "numeric", numeric=_typmod(column)))
        elif oid == _NUMERIC_ARRAY:
            columns.append(Column(name, "numeric[]", elements_numeric=True, array=True))
        elif oid in _AS_IS:
            columns.append(Column(name, _AS_IS[oid]))
        elif oid in _ARRAYS:
            columns.append(Column(name, _ARRAYS[oid] + "[]", array=True))
        else:
            columns.append(Column(name, f"oid {oid}", as_text=True))
    return columns


def _typmod(column: Any) -> tuple[int, int]:
    """numeric(p, s)'s (p, s); (0, 0) without one (psycopg2 reads typmod -1 as 65535), above
    decimal256's 76 digits, or with a negative scale (PostgreSQL 15's numeric(5, -2)): then the
    scale is inferred from the values."""
    precision, scale = column.precision or 0, column.scale or 0
    if 0 < precision <= MAX_DECIMAL256 and 0 <= scale <= precision:
        return (precision, scale)
    return (0, 0)


def wrapped(query: str, columns: Sequence[Column]) -> str:
    """``query`` with the columns read as text cast on the server, and a flag per array column for a
    value of several dimensions (the rows' order kept)."""
    if not any(c.as_text or c.array for c in columns):
        return query
    names = [f"c{i}" for i in range(len(columns))]
    picks = [f"{n}::text" if c.as_text else n for n, c in zip(names, columns, strict=True)]
    picks += [f"pg_catalog.array_ndims({n}) > 1" for n, c in zip(names, columns, strict=True) if c.array]
    return f"SELECT {', '.join(picks)} FROM ({query}\n) AS parallel_connection_q({', '.join(names)})"


def flat(table: pa.Table, columns: Sequence[Column]) -> bool:
    """No array value of ``table`` (read through :func:`wrapped`) has several dimensions."""
    flags = table.num_columns - len(columns)
    return all(not pc.any(table.column(len(columns) + i)).as_py() for i in range(flags))


_INFINITE_TIMESTAMPS = (-9222425352054775809, -9222425352054775808)
"""PostgreSQL's infinity and -infinity as the driver shifts them to the Unix epoch (they overflow)."""
_INFINITE_DATES = (-2147472692, -2147472691)
_DAY_US = 86_400_000_000


def check_representable(table: pa.Table, columns: Sequence[Column]) -> None:
    """Refuse values Arrow has no exact form of: infinite timestamps and dates, time 24:00."""
    for i, column in enumerate(columns):
        array = table.column(i)
        kind = array.type
        if column.pg_type in ("timestamp", "timestamptz") and pa.types.is_timestamp(kind):
            raw = array.cast(pa.int64())
            bad = pc.any(pc.is_in(raw, pa.array(_INFINITE_TIMESTAMPS, pa.int64()))).as_py()
        elif column.pg_type == "date" and pa.types.is_date32(kind):
            bad = pc.any(pc.is_in(array.cast(pa.int32()), pa.array(_INFINITE_DATES, pa.int32()))).as_py()
        elif column.pg_type == "time" and pa.types.is_time64(kind):
            bad = pc.any(pc.greater_equal(array.cast(pa.int64()), _DAY_US)).as_py()
        else:
            continue
        if bad:
            raise refuse(
                f"column {column.name!r} holds {'24:00' if column.pg_type == 'time' else 'infinity'}, "
                f"which Arrow's {kind} cannot hold; filter it out (isfinite()) or cast the column to text"
            )


def describe_query(query: str) -> str:
    """A statement giving ``query``'s columns and no rows."""
    return f"SELECT * FROM ({query}\n) AS parallel_connection_q LIMIT 0"


def finish(
    table: pa.Table,
    columns: Sequence[Column],
    zone: str,
    fixed: pa.Schema | None = None,
    *,
    infer: bool = True,
) -> pa.Table:
    """The driver's ``table`` in PostgreSQL's types (``fixed``: the types earlier batches were given;
    without ``infer``, unconstrained numerics stay text for :func:`settle`)."""
    arrays = []
    for i, column in enumerate(columns):
        if not infer and _unconstrained(column):
            arrays.append(_storage(table.column(i)))
            continue
        want = fixed.field(i).type if fixed is not None else None
        arrays.append(_finish(table.column(i), column, zone, want))
    return pa.table(arrays, names=[c.name for c in columns])


def settle(tables: Sequence[pa.Table], columns: Sequence[Column]) -> list[pa.Table]:
    """Unconstrained numerics, still text, as the one decimal holding every table's values."""
    out = list(tables)
    for i, column in enumerate(columns):
        if not _unconstrained(column):
            continue
        parts = [t.column(i) for t in out]
        if column.elements_numeric:
            texts = [pc.list_flatten(c) for p in parts for c in p.chunks]
            element = _inferred(pa.chunked_array(texts, pa.string()), column.name)
            target = pa.list_(element)
        else:
            target = _inferred(
                pa.chunked_array([c for p in parts for c in p.chunks], pa.string()), column.name
            )
        if target == pa.string():
            out = [t.set_column(i, t.field(i).name, _written(p)) for t, p in zip(out, parts, strict=True)]
        elif target != pa.list_(pa.string()):
            out = [t.set_column(i, t.field(i).name, p.cast(target)) for t, p in zip(out, parts, strict=True)]
    return out


def unify(tables: Sequence[pa.Table]) -> list[pa.Table]:
    """The shards' tables with one type per column (decimals widened to hold every shard's values)."""
    if len(tables) < 2 or all(t.schema.equals(tables[0].schema) for t in tables):
        return list(tables)
    types = []
    for i in range(tables[0].num_columns):
        kinds = [t.schema.field(i).type for t in tables]
        types.append(_common(kinds))
    out = []
    for table in tables:
        arrays = [
            table.column(i) if table.schema.field(i).type == ty else _cast(table.column(i), ty)
            for i, ty in enumerate(types)
        ]
        out.append(pa.table(arrays, names=table.column_names))
    return out


def arrow_zone(pg_zone: str) -> str:
    """The Arrow time zone for a session's ``TimeZone``: its name, the offset of a POSIX zone with no
    daylight saving rule (``UTC+3``, ``<+03>-03``, what ``SET TIME ZONE -3`` sets), else UTC."""
    try:
        zoneinfo.ZoneInfo(pg_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    else:
        return pg_zone
    fixed = _POSIX_FIXED.fullmatch(pg_zone.strip())
    if fixed is None:
        return "UTC"
    hours, minutes, seconds = (int(part or 0) for part in fixed.group("h", "m", "s"))
    if seconds or hours > 15 or minutes > 59:
        return "UTC"  # Arrow's fixed offsets are whole minutes
    east = "-" if fixed.group("sign") == "+" else "+"  # POSIX counts hours west of Greenwich
    return f"{east}{hours:02d}:{minutes:02d}"


_POSIX_FIXED = re.compile(
    r"(?:[A-Za-z]{3,}|<[^<>]+>)(?P<sign>[+-]?)(?P<h>\d{1,2})(?::(?P<m>\d{2}))?(?::(?P<s>\d{2}))?"
)
"""A POSIX time zone of a name and an offset, with no daylight saving part."""


def _unconstrained(column: Column) -> bool:
    return column.numeric == (0, 0) or column.elements_numeric


def _storage(array: pa.ChunkedArray) -> pa.ChunkedArray:
    """Extension values (the driver's json, numeric elements) as their storage type."""
    kind = array.type
    if isinstance(kind, pa.BaseExtensionType):
        return pa.chunked_array([c.storage for c in array.chunks], type=kind.storage_type)
    if pa.types.is_list(kind) and isinstance(kind.value_type, pa.BaseExtensionType):
        return _cast(array, pa.list_(kind.value_type.storage_type))
    return array


def _finish(array: pa.ChunkedArray, column: Column, zone: str, want: pa.DataType | None) -> pa.ChunkedArray:
    array = _storage(array)
    kind = array.type
    if column.numeric is not None:
        return _decimal(array, column.numeric, column.name, want)
    if column.elements_numeric:
        values = pa.chunked_array([pc.list_flatten(c) for c in array.chunks], pa.string())
        element = want.value_type if want is not None else _inferred(values, column.name)
        return array if element == pa.string() else array.cast(pa.list_(element))
    if column.pg_type == "oid":
        return array.cast(pa.uint32(), safe=False)
    if pa.types.is_timestamp(kind) and kind.tz is not None:
        return array.cast(pa.timestamp(kind.unit, tz=zone))
    if pa.types.is_list(kind) and pa.types.is_timestamp(kind.value_type) and kind.value_type.tz is not None:
        return array.cast(pa.list_(pa.timestamp(kind.value_type.unit, tz=zone)))
    return array


def _decimal(
    text: pa.ChunkedArray, precision: tuple[int, int], name: str, want: pa.DataType | None
) -> pa.ChunkedArray:
    p, s = precision
    if want is not None:
        target = want
    elif p == 0:
        target = _inferred(text, name)
    elif p <= MAX_DECIMAL128 and s >= 0:
        target = pa.decimal128(p, s)
    elif p <= MAX_DECIMAL256 and s >= 0:
        target = pa.decimal256(p, s)
    else:
        target = pa.string()
    if target == pa.string():
        return _written(text)
    try:
        return text.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if want is not None:
            raise refuse(
                f"column {name!r}: a numeric value the type of the first batches ({want}) cannot hold; "
                f"cast the column in SQL (e.g. ::numeric(30, 6)) or use fetch_arrow()"
            ) from None
        return _written(text)  # NaN or infinities: no Arrow decimal holds them


_SPECIAL = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _written(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """The driver's numeric text as PostgreSQL writes it (the same digits; NaN and infinities named)."""
    for driver, postgres in _SPECIAL.items():
        text = pc.if_else(pc.equal(text, driver), postgres, text)
    return text


def _inferred(text: pa.ChunkedArray, name: str) -> pa.DataType:
    """The smallest-scale decimal holding every value of an unconstrained numeric (text if none does)."""
    if text.null_count == len(text):
        return pa.decimal128(MAX_DECIMAL128, 0)
    digits = pc.utf8_length(text)
    dot = pc.find_substring(text, ".")
    has_dot = pc.greater_equal(dot, 0)
    scale = pc.max(pc.if_else(has_dot, pc.subtract(pc.subtract(digits, dot), 1), 0)).as_py() or 0
    whole = pc.if_else(has_dot, dot, digits)
    sign = pc.cast(pc.starts_with(text, "-"), pa.int32())
    integer = pc.max(pc.subtract(whole, sign)).as_py() or 0
    special = pc.any(pc.match_substring_regex(text, "[a-zA-Z]")).as_py()
    if special:
        return pa.string()
    if integer + scale <= MAX_DECIMAL128:
        return pa.decimal128(MAX_DECIMAL128, scale)
    if integer + scale <= MAX_DECIMAL256:
        return pa.decimal256(MAX_DECIMAL256, scale)
    return pa.string()


def _common(kinds: Sequence[pa.DataType]) -> pa.DataType:
    first = kinds[0]
    if all(k == first for k in kinds):
        return first
    if any(k == pa.string() for k in kinds) and all(
        pa.types.is_decimal(k) or k == pa.string() for k in kinds
    ):
        return pa.string()
    if all(pa.types.is_decimal(k) for k in kinds):
        scale = max(k.scale for k in kinds)
        integer = max(k.precision - k.scale for k in kinds)
        if integer + scale <= MAX_DECIMAL128:
            return pa.decimal128(MAX_DECIMAL128, scale)
        if integer + scale <= MAX_DECIMAL256:
            return pa.decimal256(MAX_DECIMAL256, scale)
        return pa.string()
    if all(pa.types.is_list(k) for k in kinds):
        return pa.list_(_common([k.value_type for k in kinds]))
    if all(pa.types.is_null(k) or k == first for k in kinds):
        return first
    non_null = [k for k in kinds if not pa.types.is_null(k)]
    return non_null[0] if non_null and all(k == non_null[0] for k in non_null) else first


def _cast(array: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    if pa.types.is_decimal(array.type) and target == pa.string():
        return pa.chunked_array([_decimal_text(c) for c in array.chunks], type=pa.string())
    return array.cast(target)


def _decimal_text(chunk: pa.Array) -> pa.Array:
    return pa.array([None if v is None else format(v, "f") for v in chunk.to_pylist()], pa.string())


# -- rows the row path answered, as Arrow ---------------------------------------------------------

_ARROW_OF_OID: dict[int, pa.DataType] = {
    16: pa.bool_(), 20: pa.int64(), 21: pa.int16(), 23: pa.int32(), 26: pa.uint32(), 700: pa.float32(),
    701: pa.float64(), 25: pa.string(), 1043: pa.string(), 1042: pa.string(), 19: pa.string(),
    18: pa.string(), 1082: pa.date32(), 1114: pa.timestamp("us"), 17: pa.binary(), 1083: pa.time64("us"),
    114: pa.string(), 3802: pa.string(), 2950: pa.string(),
}  # fmt: skip
_TIMESTAMPTZ = 1184
_TIMESTAMPTZ_ARRAY = 1185
_INTERVAL = 1186
_NUMERIC_OID = 1700
_JSON_OIDS = frozenset({114, 3802})


_ELEMENTS = {
    1000: 16, 1001: 17, 1005: 21, 1007: 23, 1016: 20, 1009: 25, 1015: 1043, 1021: 700, 1022: 701,
    1182: 1082, 1115: 1114,
}  # fmt: skip
_TIME = 1083


def rows_table(description: Sequence[Any], rows: Sequence[Sequence[Any]], zone: str) -> pa.Table:
    """psycopg2 rows of ``description`` as an Arrow table with the columns' PostgreSQL types."""
    if not description:  # rows of no columns: a table of that many rows and no columns
        return pa.Table.from_batches(
            [pa.RecordBatch.from_struct_array(pa.array([{}] * len(rows), pa.struct([])))]
        )
    arrays = []
    for i, column in enumerate(description):
        values = [row[i] for row in rows]
        arrays.append(_from_python(values, column, zone))
    return pa.table(arrays, names=[c.name for c in description])


def _from_python(values: list[Any], column: Any, zone: str) -> pa.Array:
    oid = column.type_code
    if oid in _JSON_OIDS:
        values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
    if oid == 17:
        values = [None if v is None else bytes(v) for v in values]
    if oid == _TIMESTAMPTZ:
        return pa.array(values, pa.timestamp("us", tz=zone))
    if oid == _TIMESTAMPTZ_ARRAY:
        with contextlib.suppress(pa.ArrowInvalid, pa.ArrowTypeError):  # not flat: as text, below
            return pa.array(values, pa.list_(pa.timestamp("us", tz=zone)))
    if oid == _INTERVAL:
        return pa.array([_interval(v) for v in values], pa.month_day_nano_interval())
    if oid == _NUMERIC_OID:
        return _numeric_array(values, column)
    if oid == _TIME and any(isinstance(v, str) for v in values):
        return pa.array([_time(v, column.name) for v in values], pa.time64("us"))
    if oid in _ELEMENTS:
        with contextlib.suppress(pa.ArrowInvalid, pa.ArrowTypeError):
            return pa.array(values, pa.list_(_ARROW_OF_OID[_ELEMENTS[oid]]))
    if oid in _ARROW_OF_OID:
        return pa.array(values, _ARROW_OF_OID[oid])
    if all(v is None or isinstance(v, (str, bool, int, float, decimal.Decimal, list)) for v in values):
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def _numeric_array(values: list[Any], column: Any) -> pa.Array:
    if any(v is not None and not v.is_finite() for v in values):
        return pa.array([None if v is None else str(v) for v in values], pa.string())
    precision, scale = _typmod(column)
    if precision and precision <= MAX_DECIMAL256:
        kind = (
            pa.decimal128(precision, scale)
            if precision <= MAX_DECIMAL128
            else pa.decimal256(precision, scale)
        )
        return pa.array(values, kind)
    text = pa.chunked_array([pa.array([None if v is None else format(v, "f") for v in values], pa.string())])
    target = _inferred(text, column.name)
    return text.cast(target).combine_chunks() if target != pa.string() else text.combine_chunks()


def _interval(value: datetime.timedelta | None) -> pa.MonthDayNano | None:
    if value is None:
        return None
    return pa.MonthDayNano([0, value.days, (value.seconds * 1_000_000 + value.microseconds) * 1000])


def _time(value: str | None, name: str) -> int | None:
    """``time`` as PostgreSQL writes it, in microseconds (24:00 has no Arrow time)."""
    if value is None:
        return None
    hours, minutes, seconds = value.split(":")
    micros = (int(hours) * 3600 + int(minutes) * 60) * 1_000_000 + round(float(seconds) * 1_000_000)
    if micros >= _DAY_US:
        raise refuse(
            f"column {name!r} holds 24:00, which Arrow's time64 cannot hold; cast the column to text"
        )
    return micros
