"""The coordinator stage: a staged plan's steps run in order, their rows handed on as typed arrays.

Each step is a statement of its own (spread, merged, perhaps staged again).
Its rows reach the statements after it as ``unnest`` of one array parameter
per column, cast to the column's type: that works in read-only
transactions and on standbys, where a temporary table cannot be made. The
final statement then runs like any other; reading no sharded table, it
runs on the first shard, whose PostgreSQL evaluates the rest exactly. A
bound on the rows moved keeps a statement from pulling a whole table
unseen.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import itertools
import math
import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

import psycopg2
import psycopg2.extensions
from pglast.stream import maybe_double_quote_name

from .casts import LibraryCursor
from .errors import NotSupportedError
from .merge.values import ARRAY_OF, CALENDAR, INTERVAL, JSON, JSONB, TIME, TIMETZ, stand_in
from .outcome import Outcome, Statement
from .plan import RELATION, Plan
from .shards import ShardSet

__all__ = ["run_staged"]


class Execute(Protocol):
    def __call__(
        self, shards: ShardSet, cursors: Sequence[Any], statement: Statement, *, merge: bool
    ) -> Outcome: ...


_MARKER = re.compile(rf"{RELATION}\((\d+)\)")
_PAYLOAD = (TIME, TIMETZ, INTERVAL, JSON, JSONB)
"""Times, intervals and JSON: psycopg2's Python values lose what PostgreSQL keeps (24:00, an
interval's months, a JSON null and its spelling), and no merge computes on them."""
_LOSSY_ARRAYS = frozenset(ARRAY_OF[t] for t in (*_PAYLOAD, *CALENDAR))
"""Arrays of those and of dates and timestamps: psycopg2 reads their elements with a loss
(they come as text when nothing is merged; a merge needs them as lists, array_agg's partials say)."""
_PAYLOAD_TEXT = psycopg2.extensions.new_type(_PAYLOAD, "PC_PAYLOAD_TEXT", lambda value, cursor: value)
"""Those as the server's text, in every step."""
_RAW_TEXT = psycopg2.extensions.new_type(
    (*_PAYLOAD, *CALENDAR, *_LOSSY_ARRAYS), "PC_RAW_TEXT", lambda value, cursor: value
)
"""Dates and timestamps (their infinities, BC years, any DateStyle) and arrays too, when nothing is
merged."""
_TYPE_NAMES: dict[int, tuple[str, str]] = {}
"""Built-in type OID -> (name for a cast, typcategory): the same on every server."""
_FIRST_USER_OID = 16384
_MAX_NESTING = 12
_labels = itertools.count(1)
_nesting = threading.local()
"""How deep this thread is in staged statements (a step may be staged again)."""


def run_staged(
    shards: ShardSet,
    cursors: Sequence[Any],
    statement: Statement,
    plan: Plan,
    shard_vars: Any,
    execute: Execute,
) -> Outcome:
    """Run ``plan``'s steps, then its final statement over their rows, with the user's cursors."""
    staged = plan.staged
    assert staged is not None
    with _one_level_deeper():
        vars: dict[str, Any] = dict(shard_vars) if isinstance(shard_vars, Mapping) else {}
        relations: dict[int, str] = {}
        limit = shards.moved_rows
        moved = 0
        for number, sql in enumerate(staged.steps, 1):
            text = _filled(sql, relations)
            if number in staged.pulls:
                text += f" LIMIT {limit - moved + 1}"
            merge = number not in staged.unions
            raw = number in staged.pulls or not merge
            description, rows = _step_rows(shards, execute, text, vars, limit - moved, merge, raw)
            moved += len(rows)
            relations[number] = _relation(shards, description, rows, vars, raw)
        final = _filled(staged.final, relations)
        try:
            return execute(shards, cursors, replace(statement, query=final, vars=vars), merge=True)
        except psycopg2.Error as exc:
            note = getattr(exc, "add_note", None)  # Python 3.11+
            if note is not None:
                note(
                    "raised by the last stage of a staged statement: where it read no sharded table, "
                    "the shard named evaluated it as the coordinator, over the rows of every shard"
                )
            raise


@contextlib.contextmanager
def _one_level_deeper() -> Iterator[None]:
    """One more level of staged statements in this thread (a step may be staged again), bounded."""
    depth = getattr(_nesting, "depth", 0)
    if depth >= _MAX_NESTING:
        raise NotSupportedError(
            f"a statement staged more than {_MAX_NESTING} deep (parts the shards cannot finish inside "
            "parts the shards cannot finish): split it into simpler statements"
        )
    _nesting.depth = depth + 1
    try:
        yield
    finally:
        _nesting.depth = depth


def _step_rows(
    shards: ShardSet, execute: Execute, text: str, vars: dict[str, Any], room: int, merge: bool, raw: bool
) -> tuple[tuple[Any, ...], list[Any]]:
    """One step's description and rows; an error past ``room`` rows.

    ``raw``: nothing is computed on the rows on the way (a table's rows, or each shard's own
    groups), so dates and timestamps come as the server's text too (see ``_RAW_TEXT``).
    """
    # The library's cursors whatever the connections' cursor_factory or the user's typecasters: the
    # rows are read by position, as psycopg2's own values.
    readers = [conn.cursor(cursor_factory=LibraryCursor) for conn in shards.connections]
    for reader in readers:
        psycopg2.extensions.register_type(_RAW_TEXT if raw else _PAYLOAD_TEXT, reader)
    outcome: Outcome | None = None
    try:
        step = Statement(text, vars, streaming=False, batch_size=0, tuples=True)
        outcome = execute(shards, readers, step, merge=merge)
        rows: list[Any] = []
        for batch in outcome.batches or iter(()):
            rows.extend(batch)
            if len(rows) > room:
                raise NotSupportedError(
                    f"the statement moves more than {shards.moved_rows} rows to the coordinator (a part "
                    "the shards cannot finish alone reads that many); narrow it, or raise the bound with "
                    "connect(..., moved_rows=N) or pdb.moved_rows = N"
                )
        assert outcome.description is not None
        return outcome.description, rows
    finally:
        for stream in outcome.streams if outcome is not None else ():
            stream.close()
        for reader in readers:
            with contextlib.suppress(psycopg2.Error):
                reader.close()


def _filled(sql: str, relations: Mapping[int, str]) -> str:
    return _MARKER.sub(lambda m: relations[int(m.group(1))], sql)


def _relation(
    shards: ShardSet, description: Sequence[Any], rows: list[Any], vars: dict[str, Any], raw: bool
) -> str:
    """``unnest(...) AS _pc_rN(columns)`` reading ``rows``; their arrays are put in ``vars``.

    An array column travels as text (unnest would flatten an array of arrays) and is cast back.
    """
    label = next(_labels)  # unique: a step's statement may be staged again, with steps of its own
    types = _type_names(shards, [column.type_code for column in description])
    arrays: list[str] = []
    casts: list[str] = []
    for index, column in enumerate(description):
        name, category = types[column.type_code]
        values = [row[index] for row in rows]
        parsed = column.type_code in _LOSSY_ARRAYS and any(isinstance(v, list) for v in values)
        if category in ("C", "P") or parsed:
            what = {"C": "composite", "P": "pseudo-type"}.get(category, "merged array")
            raise NotSupportedError(
                f"moving {what} values ({column.name} {name}) to the coordinator; take them apart "
                "(unnest, .field, ::text) where the shards can finish"
            )
        if not raw:
            _check_merged(column, name, values)
        key = f"_pc_r{label}_{index}"
        vars[key] = _array_text(values)
        quoted = maybe_double_quote_name(column.name)
        if category == "A":
            arrays.append(f"%({key})s::pg_catalog.text[]")
            casts.append(f"_pc_u.c{index}::{name} AS {quoted}")
        else:
            arrays.append(f"%({key})s::{name}[]")
            casts.append(f"_pc_u.c{index} AS {quoted}")
    if any("::" in cast for cast in casts):
        inner = ", ".join(f"c{i}" for i in range(len(description)))
        return (
            f"(SELECT {', '.join(casts)} FROM unnest({', '.join(arrays)}) AS _pc_u({inner})) AS _pc_r{label}"
        )
    names = ", ".join(maybe_double_quote_name(column.name) for column in description)
    return f"unnest({', '.join(arrays)}) AS _pc_r{label}({names})"


def _check_merged(column: Any, name: str, values: list[Any]) -> None:
    """Refuse merged dates psycopg2 has read with a loss PostgreSQL would see at the coordinator."""
    if column.type_code in CALENDAR and any(stand_in(v) is not None for v in values):
        raise NotSupportedError(
            f"moving {name} infinities ({column.name}) to the coordinator after a merge: psycopg2 "
            "reads them as the calendar's first and last days; cast the column to text where the "
            "shards compute it, or leave the infinities out"
        )


def _array_text(values: list[Any]) -> str:
    """The values as one array literal (``{"1","2",NULL}``): PostgreSQL reads each element with its
    type's own input function, much faster than an ARRAY[...] expression of as many parameters."""
    kinds = {type(v) for v in values} - {type(None)}
    if kinds <= _BARE:
        # Numbers need no quotes: their text holds no comma, brace, quote or space.
        return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"
    parts = []
    for value in values:
        if value is None:
            parts.append("NULL")
            continue
        text = _element(value)
        parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"


_BARE = frozenset({int, decimal.Decimal})


def _element(value: Any) -> str:
    """A value as its type's input function reads it (what psycopg2 parsed it from, or the same)."""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return f"{value.days} days {value.seconds} seconds {value.microseconds} microseconds"
    if isinstance(value, list):
        return _array_text(value)  # an array's own literal: the coordinator casts it back
    if isinstance(value, (bytes, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (str, int, decimal.Decimal, uuid.UUID)):
        return str(value)
    raise NotSupportedError(
        f"moving a {type(value).__name__} value to the coordinator (its text is not known here): "
        "cast the column to text in the statement"
    )


def _type_names(shards: ShardSet, oids: list[int]) -> dict[int, tuple[str, str]]:
    """Each type's name as a cast spells it, and its category, as the first shard knows them."""
    found = {oid: _TYPE_NAMES[oid] for oid in oids if oid in _TYPE_NAMES}
    missing = sorted(set(oids) - set(found))
    if missing:
        for oid, name, category in shards.run(lambda i: _read_types(shards.connections[i], missing), [0])[0]:
            found[oid] = (name, category)
            if oid < _FIRST_USER_OID:
                _TYPE_NAMES[oid] = (name, category)
    return found


def _read_types(conn: Any, oids: list[int]) -> list[tuple[int, str, str]]:
    with conn.cursor(cursor_factory=LibraryCursor) as cur:
        cur.execute(
            # The quoted internal name: "bpchar" and "bit" take any length, character and bit one.
            # bpchar unqualified: pglast prints pg_catalog.bpchar as char, which is char(1).
            "SELECT t.oid::int8, CASE WHEN t.oid = 1042 THEN 'bpchar' "
            "ELSE quote_ident(n.nspname) || '.' || quote_ident(t.typname) END, t.typcategory "
            "FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace "
            "WHERE t.oid = ANY(%s::oid[])",
            (oids,),
        )
        return list(cur.fetchall())
