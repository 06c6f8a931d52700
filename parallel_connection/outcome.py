"""What a statement gave, and the steps every way of running one shares.

The Statement asked for, the Outcome (description, counts, rows to serve),
one shard cursor's run, the shards' agreed description, a status like one
server's, the moments a statement sees, and the write scope a write runs in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.sql

from .errors import server_error
from .merge.values import type_name
from .plan import Plan
from .shards import ShardSet
from .streams import ShardStream, interleave

__all__ = [
    "Outcome",
    "Row",
    "Statement",
    "agreed_description",
    "answered",
    "check_copies",
    "check_procname",
    "check_query",
    "combined_status",
    "counted",
    "python_encoding",
    "runner",
    "served",
    "shard_streams",
    "text_of",
    "with_moments",
    "write_scope",
]

Row = Any
FIRST_USER_OID = 16384
"""Types made in a database (enums, domains, composites) get their own OIDs on each shard."""


@dataclass
class Outcome:
    """What one statement gave: its description, counts, and the rows to serve."""

    description: tuple[Any, ...] | None = None
    rowcount: int = -1
    statusmessage: str | None = None
    batches: Iterator[list[Row]] | None = None
    streams: list[ShardStream] = field(default_factory=list)
    merged: bool = False
    """The rows come from a merge (a plain union otherwise)."""
    targets: list[int] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    """What to undo on the shard cursors once the rows are served (or given up)."""
    rows: list[Row] | None = None
    """Every row, already read (``batches`` then gives just these), when that is so."""


@dataclass(slots=True)
class Statement:
    """One execute(): the statement, its parameters and how its rows are wanted."""

    query: Any
    vars: Any
    streaming: bool
    batch_size: int
    tuples: bool
    """Shard cursors return tuples, so rows can be merged."""


def runner(cursors: Sequence[Any], query: Any, vars: Any, statement: Statement) -> Any:
    streaming, batch_size = statement.streaming, statement.batch_size

    def run(i: int) -> list[Row] | None:
        cur = cursors[i]
        cur.execute(query, vars)
        if streaming:
            batch: list[Row] = cur.fetchmany(batch_size) if batch_size > 0 else cur.fetchall()
            return batch
        # Converting this shard's rows here overlaps with the shards still running.
        return cur.fetchall() if cur.description is not None else None

    return run


def served(
    outcome: Outcome,
    shards: ShardSet,
    cursors: Sequence[Any],
    targets: Sequence[int],
    firsts: Sequence[list[Row] | None],
    statement: Statement,
    *,
    serve: Sequence[int] | None = None,
) -> Outcome:
    """``outcome`` with the targets' rows as streams; their union is served (of ``serve``'s only)."""
    if outcome.description is None:
        return outcome
    outcome.streams = shard_streams(shards, cursors, targets, firsts, statement)
    shown = outcome.streams if serve is None else [s for s in outcome.streams if s.index in serve]
    outcome.batches = interleave(shown)
    return outcome


def shard_streams(
    shards: ShardSet,
    cursors: Sequence[Any],
    targets: Sequence[int],
    firsts: Sequence[list[Row] | None],
    statement: Statement,
) -> list[ShardStream]:
    return [
        ShardStream(i, cursors[i], shards.fanout, batch_size=statement.batch_size, first_batch=first)
        for i, first in zip(targets, firsts, strict=True)
    ]


def counted(shards: ShardSet, cursors: Sequence[Any], targets: Sequence[int]) -> Outcome:
    used = [cursors[i] for i in targets]
    counts = [c.rowcount for c in used]
    rowcount = -1 if -1 in counts else sum(counts)
    return Outcome(
        description=agreed_description(shards, cursors, targets),
        rowcount=rowcount,
        statusmessage=combined_status([c.statusmessage for c in used], rowcount),
        targets=list(targets),
    )


def answered(cursor: Any, index: int, rows: list[Row] | None) -> Outcome:
    """What one shard's cursor gave, its ``rows`` all read: its own counts, status and rows (one
    database's, so there is nothing to combine and no stream to wait on)."""
    description = cursor.description
    if description is None:
        return Outcome(rowcount=cursor.rowcount, statusmessage=cursor.statusmessage, targets=[index])
    rows = rows or []
    return Outcome(
        description=tuple(description),
        rowcount=cursor.rowcount,
        statusmessage=cursor.statusmessage,
        batches=iter((rows,)),
        targets=[index],
        rows=rows,
    )


def agreed_description(
    shards: ShardSet, cursors: Sequence[Any], targets: Sequence[int]
) -> tuple[Any, ...] | None:
    """The shards' common description of their result; an error naming two shards that disagree."""
    descriptions = [(i, cursors[i].description) for i in targets]
    first_index, first = descriptions[0]
    shape = _shape(first)
    for index, other in descriptions[1:]:
        if _shape(other) != shape:
            infos = shards.infos
            raise psycopg2.ProgrammingError(
                "the shards return different columns for this statement: "
                f"{infos[first_index]} gives {_show(first)} but {infos[index]} gives {_show(other)}; "
                "make the schemas agree, or select the columns explicitly"
            )
    return tuple(first) if first is not None else None


NUL_IN_TEXT = "A string literal cannot contain NUL (0x00) characters."
"""psycopg2's words for a NUL it is asked to send (libpq would cut the text short there)."""


def check_query(query: Any, cursor: Any) -> None:
    """Refuse, with psycopg2's class and message, a query that cannot be sent as written.

    Runs before anything is sent: a NUL would make libpq send (and run) only
    the text before it, so it is refused; bytes that are not text in the
    client encoding get the server's own error.
    """
    if query is None:
        raise psycopg2.ProgrammingError("can't execute an empty query")
    if not isinstance(query, (str, bytes, psycopg2.sql.Composable)):
        raise TypeError(f"argument 1 must be a string or unicode object: got {type(query).__name__} instead")
    if "\x00" in text_of(query, cursor):
        raise ValueError(NUL_IN_TEXT)


def check_procname(procname: Any, parameters: Any, cursor: Any) -> None:
    """``callproc``'s arguments checked as psycopg2 checks them, before anything is sent."""
    if isinstance(procname, bytearray):
        raise TypeError("argument 1 must be read-only bytes-like object, not bytearray")
    if not isinstance(procname, (str, bytes)):
        raise TypeError(f"a bytes-like object is required, not '{type(procname).__name__}'")
    if parameters is not None:
        len(parameters)  # psycopg2's own TypeError for parameters that have no length
    if "\x00" in text_of(procname, cursor):
        raise ValueError(NUL_IN_TEXT)


def text_of(query: Any, cursor: Any) -> str:
    """The statement's text: a Composable rendered, bytes decoded from the client encoding."""
    if type(query) is str:
        return query
    if isinstance(query, psycopg2.sql.Composable):
        query = query.as_string(cursor)
    if isinstance(query, bytes):
        return _decoded(query, cursor)
    return str(query)


def _decoded(data: bytes, cursor: Any) -> str:
    try:
        return data.decode(python_encoding(cursor))
    except UnicodeDecodeError as exc:
        encoding = cursor.connection.encoding
        length = _utf8_length(data[exc.start]) if encoding == "UTF8" else exc.end - exc.start
        found = " ".join(f"0x{byte:02x}" for byte in data[exc.start : exc.start + length])
        message = f'invalid byte sequence for encoding "{encoding}": {found}'
        raise server_error(psycopg2.errors.CharacterNotInRepertoire, "22021", message) from None


def _utf8_length(first: int) -> int:
    """The length PostgreSQL gives a UTF-8 sequence from its first byte (how many bytes it names)."""
    if first < 0x80:
        return 1
    if first & 0xE0 == 0xC0:
        return 2
    if first & 0xF0 == 0xE0:
        return 3
    if first & 0xF8 == 0xF0:
        return 4
    return 1


def python_encoding(cursor: Any) -> str:
    encoding: str = psycopg2.extensions.encodings.get(cursor.connection.encoding, "utf-8")
    return encoding


def _shape(description: Sequence[Any] | None) -> list[tuple[str, int | None]] | None:
    if description is None:
        return None
    return [(col.name, col.type_code if col.type_code < FIRST_USER_OID else None) for col in description]


def _show(description: Sequence[Any] | None) -> str:
    if description is None:
        return "no result set"
    names = [f"{c.name} {type_name(c.type_code)}" for c in description]
    return "(" + ", ".join(names) + ")"


def combined_status(messages: list[str | None], rowcount: int) -> str | None:
    """One status like a single server's: ``UPDATE 12`` for shards that updated 12 rows."""
    present = [m for m in messages if m]
    if not present:
        return None
    verbs = {m.rsplit(" ", 1)[0] if m.rsplit(" ", 1)[-1].isdigit() else m for m in present}
    if len(verbs) == 1 and rowcount >= 0 and present[0].rsplit(" ", 1)[-1].isdigit():
        return f"{verbs.pop()} {rowcount}"
    return present[0]


def check_copies(shards: ShardSet, counts: list[int], rows: Sequence[list[Row] | None]) -> None:
    """Every copy wrote as many rows (and returned the same ones); else the copies diverged."""
    returned = [sorted(map(repr, batch)) if batch is not None else None for batch in rows]
    for index in range(1, len(counts)):
        if counts[index] != counts[0] or returned[index] != returned[0]:
            shards.fail(f"the copies diverged ({shards.infos[0]} and {shards.infos[index]})")
            raise psycopg2.IntegrityError(
                f"the copies of a table copied to every shard differ: {shards.infos[0]} wrote "
                f"{counts[0]} rows, {shards.infos[index]} wrote {counts[index]}"
                + (" with other RETURNING rows" if counts[index] == counts[0] else "")
                + "; run placement check, and repair the copies"
            )


def with_moments(plan: Plan, vars: Any, shards: ShardSet, shard: int) -> Any:
    if not plan.moments:
        return vars
    values = dict(vars or {})
    taken = shards.moments({moment.kind for moment in plan.moments}, shard)
    for moment in plan.moments:
        values[moment.name] = taken[moment.kind]
    return values


def write_scope(shards: ShardSet, writes: bool, targets: Sequence[int]) -> AbstractContextManager[Any]:
    """What a statement that may write runs in: the shards it writes on are part of the transaction's
    commit (two-phase when several); in autocommit, a write on several shards is one transaction."""
    return shards.write_scope(list(targets)) if writes else contextlib.nullcontext()
