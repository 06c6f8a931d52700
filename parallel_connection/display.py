"""Short reprs and small HTML tables for the reports a notebook shows: bounded in size, values escaped."""

from __future__ import annotations

import html
import reprlib
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg2

__all__ = ["WIDTH", "error_line", "html_table", "short", "short_repr"]

WIDTH = 160
"""Characters a value or an error gets in a repr line."""

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxdict = 4
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = 4
_REPR.maxstring = 60
_REPR.maxother = 60


def short(text: str, width: int = WIDTH) -> str:
    """``text`` on one line, cut to ``width`` characters (ending in ``…`` when cut)."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def short_repr(value: Any, width: int = WIDTH) -> str:
    """A repr of ``value`` that shows a few items of each container, cut to ``width``."""
    return short(_REPR.repr(value), width)  # reprlib shows a value whose repr raises as <Class instance>


def error_line(error: BaseException) -> str:
    """The first line of an error's message (a server error's primary message, without ``ERROR:``)."""
    text = error.pgerror if isinstance(error, psycopg2.Error) and error.pgerror else str(error)
    line = text.strip().split("\n", 1)[0].strip()
    for prefix in ("ERROR:", "FATAL:", "PANIC:"):
        if line.startswith(prefix):
            line = line[len(prefix) :].strip()
    return line


def html_table(
    title: str,
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    more: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """A small HTML table: a bold title, notes, the rows, and a last line saying what was left out.

    Every piece of text is escaped.
    """

    def cell(tag: str, value: Any) -> str:
        return f"<{tag}>{html.escape(str(value))}</{tag}>"

    parts = [f"<div><p><b>{html.escape(title)}</b></p>"]
    parts += [f"<p>{html.escape(note)}</p>" for note in notes]
    parts.append("<table><thead><tr>" + "".join(cell("th", h) for h in header) + "</tr></thead><tbody>")
    parts += ["<tr>" + "".join(cell("td", v) for v in row) + "</tr>" for row in rows]
    parts.append("</tbody></table>")
    if more:
        parts.append(f"<p>{html.escape(more)}</p>")
    parts.append("</div>")
    return "".join(parts)
