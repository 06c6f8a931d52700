"""Result rows as text for the command line: an aligned table, CSV or JSON.

Values keep their meaning: numerics are written exactly (never through a
float), NULL stays distinguishable in JSON, and nothing depends on locale.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

__all__ = ["FORMATS", "json_text", "text", "write_rows"]

FORMATS = ("table", "csv", "json")


def text(value: Any, null: str = "") -> str:
    """One value as a table or CSV cell."""
    if value is None:
        return null
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (list, tuple, dict)):
        return json_text(value)
    return _scalar(value)


def json_text(value: Any) -> str:
    """One value as JSON text (numerics exact; dates ISO 8601; bytea as ``\\x`` hex)."""
    if value is None or isinstance(value, (bool, int, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (float, decimal.Decimal)):
        return _scalar(value) if _finite(value) else json.dumps(_scalar(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(json_text(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k), ensure_ascii=False)}: {json_text(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (datetime.date, datetime.time)):
        return json.dumps(value.isoformat())
    return json.dumps(_scalar(value), ensure_ascii=False)


def write_rows(
    fmt: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    out: TextIO,
    *,
    null: str = "",
    header: bool = True,
) -> int:
    """Write ``rows`` to ``out`` in format ``fmt``; return how many rows were written."""
    if fmt == "table":
        return _table(columns, rows, out, null=null, header=header)
    if fmt == "csv":
        return _csv(columns, rows, out, null=null, header=header)
    if fmt == "json":
        return _json(columns, rows, out)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, decimal.Decimal):
        if value.is_nan():
            return "NaN"
        if value.is_infinite():
            return "Infinity" if value > 0 else "-Infinity"
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


def _finite(value: float | decimal.Decimal) -> bool:
    return value.is_finite() if isinstance(value, decimal.Decimal) else math.isfinite(value)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool)


def _table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO, *, null: str, header: bool
) -> int:
    values = list(rows)
    cells = [[text(v, null).replace("\r", "\\r").replace("\n", "\\n") for v in row] for row in values]
    right = [False] * len(columns)
    for row in values:
        right = [r or _numeric(v) for r, v in zip(right, row, strict=False)]
    widths = [len(c) for c in columns] if header else [0] * len(columns)
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=False)]
    if header:
        out.write(_line([c.center(w) for c, w in zip(columns, widths, strict=False)]))
        out.write("-+-".join("-" * w for w in widths).join(("-", "-")).rstrip() + "\n")
    for row in cells:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=False)]
        out.write(_line(padded))
    out.write(f"({len(cells)} {'row' if len(cells) == 1 else 'rows'})\n")
    return len(cells)


def _line(cells: Sequence[str]) -> str:
    return (" " + " | ".join(cells)).rstrip() + "\n"


def _csv(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO, *, null: str, header: bool
) -> int:
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([text(v, null) for v in row])
        count += 1
    return count


def _json(columns: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO) -> int:
    keys = [json.dumps(c, ensure_ascii=False) for c in columns]
    count = 0
    for row in rows:
        out.write("[\n" if count == 0 else ",\n")
        out.write("{" + ", ".join(f"{k}: {json_text(v)}" for k, v in zip(keys, row, strict=False)) + "}")
        count += 1
    out.write("\n]\n" if count else "[]\n")
    return count
