"""Cut an INSERT ... VALUES of literal rows (as ``execute_values`` renders them) without parsing every row.

The statement becomes a skeleton, the same INSERT with one row of NULLs, which
the planner parses once and caches; the rows are cut by a strict scanner that
knows only constants, parameters and casts. Anything else (a function call, a
comment, ``E''`` strings) is not cut here: the full parse takes it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import cast

from .model import Const, Param, Value
from .writes import KEEPING_CASTS

__all__ = ["LiteralRows", "cut_literal_rows", "split_rows"]

_IDENT = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
_HEAD = re.compile(
    rf"\s*INSERT\s+INTO\s+{_IDENT}(?:\s*\.\s*{_IDENT})?(?:\s+AS\s+{_IDENT})?"
    rf"\s*(?:\(\s*{_IDENT}(?:\s*,\s*{_IDENT})*\s*\))?\s*VALUES\s*",
    re.IGNORECASE,
)
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_STRING = r"'(?:[^']|'')*'"
_TYPE = r"[A-Za-z_][A-Za-z0-9_]*(?:\s+(?:with|without|time|zone|precision|varying))*(?:\[\])*"
_LITERAL = rf"(?:-\s*)?(?:{_NUMBER}|{_STRING}|\$\d+|NULL|TRUE|FALSE)(?:\s*::\s*{_TYPE})*"
_BARE = re.compile(rf"(-\s*)?({_NUMBER}|{_STRING}|\$\d+|NULL|TRUE|FALSE)", re.IGNORECASE)
_VALUE = re.compile(rf"\s*({_LITERAL})\s*(,|\))", re.IGNORECASE)


@functools.lru_cache(maxsize=64)
def _row_patterns(width: int, position: int) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """One row of ``width`` literals, capturing the one at ``position``; and a run of such rows."""
    before = rf"{_LITERAL}\s*,\s*" * position
    after = rf"\s*,\s*{_LITERAL}" * (width - position - 1)
    row = rf"\(\s*{before}({_LITERAL}){after}\s*\)"
    bare = rf"\(\s*{before}{_LITERAL}{after}\s*\)"
    run = rf"\s*{bare}(?:\s*,\s*{bare})*"
    return re.compile(row, re.IGNORECASE), re.compile(run, re.IGNORECASE)


@dataclass(frozen=True)
class LiteralRows:
    """An INSERT ... VALUES of literal rows: ``head`` is the text before the rows, which hold ``width``
    values each; ``head + nulls`` is the same INSERT of one row of NULLs."""

    text: str
    head: str
    nulls: str
    width: int


def cut_literal_rows(text: str) -> LiteralRows | None:
    """``text`` read as an INSERT ... VALUES of literal rows, or None when it is not one."""
    head = _HEAD.match(text)
    if head is None or not text.startswith("(", head.end()):
        return None
    pos, width = head.end() + 1, 0
    while True:
        value = _VALUE.match(text, pos)
        if value is None:
            return None
        width, pos = width + 1, value.end()
        if value.group(2) == ")":
            break
    start = head.end()
    nulls = "(" + ", ".join(["NULL"] * width) + ")"
    return LiteralRows(text, text[:start], nulls, width)


def split_rows(rows: LiteralRows, position: int) -> tuple[list[str], tuple[Value, ...], str] | None:
    """Each row's text and key (its value at ``position``), and the text after the rows; None when a
    row is not literals alone or a key is unclear."""
    row, run = _row_patterns(rows.width, position)
    text, start = rows.text, len(rows.head)
    span = run.match(text, start)
    if span is None:
        return None
    found = list(row.finditer(text, start, span.end()))
    keys = [_value(match.group(1)) for match in found]
    if None in keys:
        return None
    return [match.group(0) for match in found], cast("tuple[Value, ...]", tuple(keys)), text[span.end() :]


def _value(written: str) -> Value | None:
    if written.isdigit():
        return Const(int(written))
    match = _BARE.match(written)
    if match is None:
        return None
    casts = written[match.end() :].split("::")[1:]
    if any(c.strip().lower() not in KEEPING_CASTS for c in casts):
        return None  # the full parse names the cast
    negative, body = match.group(1) is not None, match.group(2)
    upper = body.upper()
    if upper == "NULL":
        return Const(None)
    if upper in ("TRUE", "FALSE"):
        return Const(upper == "TRUE")
    if body.startswith("$"):
        return None if negative else Param(int(body[1:]))
    if body.startswith("'"):
        return None if negative else Const(body[1:-1].replace("''", "'"))
    sign = "-" if negative else ""
    return Const(int(sign + body) if body.isdigit() else Decimal(sign + body))
