"""Check the shards' data against a placement, and propose a placement from the data.

:func:`check_placement` reads each table the placement names once per shard: copies must be identical
everywhere, sharded rows must sit on the shard their key maps to. :func:`discover_placement` reads each
user table once per shard and proposes the placement the data follows.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from .commit import TABLE as DECISIONS_TABLE
from .display import html_table, short
from .placement import (
    Custom,
    Hash,
    Modulo,
    Placement,
    Ranges,
    ShardedTable,
    ShardFunction,
    parse_name,
    quote_identifier,
)
from .shards import ShardSet

__all__ = [
    "CheckProgress",
    "Discovery",
    "PlacementReport",
    "ShardCheck",
    "TableCheck",
    "check_placement",
    "discover_placement",
]

T = TypeVar("T")
ProgressOption = bool | Callable[["CheckProgress"], None] | None

SHOWN_TABLES = 20
"""Tables a report's HTML lists (those with problems first)."""
SHOWN_PROBLEMS = 3
SHOWN_SHARDS = 8
_CHECK_HEADER = ("table", "kind", "rule", "status", "rows per shard", "problems")

ITERSIZE = 10_000
"""Keys fetched per round trip when a shard function runs in Python."""

_INTEGERS = frozenset({20, 21, 23})  # bigint, smallint, integer
_TEXTS = frozenset({25, 1043})  # text, varchar
_UUID = 2950
# PostgreSQL's HASH_PARTITION_SEED (src/include/catalog/partition.h); a one-column partition key's
# hash is hash_combine64(0, h) = h + _COMBINE modulo 2**64. Hash.shard_of computes the same.
_SEED = 0x7A5B22367996DCFD
_COMBINE = 0x49A0F4DD15E5A8E3
_WRAP = 1 << 64
_SAVEPOINT = "parallel_connection_check"
# Row text that does not depend on the session: the checksum of a copy must agree between shards.
_SETTINGS_SQL = (
    "SELECT set_config('DateStyle', 'ISO, MDY', true), set_config('IntervalStyle', 'postgres', true),"
    " set_config('TimeZone', 'UTC', true), set_config('extra_float_digits', '1', true),"
    " set_config('bytea_output', 'hex', true), set_config('lc_monetary', 'C', true)"
)
_ROW_HASH = "hashtextextended((t.*)::text, 0)"


# -- progress ----------------------------------------------------------------------


@dataclass(frozen=True)
class CheckProgress:
    """Where a check or a discovery is, after each (table, shard) step."""

    table: str
    shard: int
    done: int
    total: int


class _Progress:
    """A tqdm bar (``True``; ``None``: when stderr is a terminal) or a callback, called one at a time."""

    def __init__(self, total: int, show: ProgressOption, desc: str) -> None:
        self.total = total
        self.done = 0
        self._lock = threading.Lock()
        self._callback = show if callable(show) and not isinstance(show, bool) else None
        self._bar: Any = None
        if show is True or (show is None and sys.stderr.isatty()):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)

    def grow(self, steps: int) -> None:
        with self._lock:
            self.total += steps
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.refresh()

    def step(self, table: str, shard: int) -> None:
        with self._lock:
            self.done += 1
            if self._bar is not None:
                self._bar.update(1)
            if self._callback is not None:
                self._callback(CheckProgress(table, shard, self.done, self.total))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# -- the report ---------------------------------------------------------------------


@dataclass(frozen=True)
class ShardCheck:
    """One table on one shard."""

    shard: int
    where: str
    """The shard as errors name it: ``shard 1 (127.0.0.1:5433/db)``."""
    missing: str | None = None
    """Why the table could not be read here (``no such table``, ``no column id``), else None."""
    rows: int = 0
    checksum: int | None = None
    """A copy's checksum: the sum of a 64-bit hash of each row's text (None for a sharded table)."""
    targets: Mapping[int, int] = field(default_factory=dict)
    """A sharded table's rows by the shard their key maps to (this shard's own rows included)."""
    nulls: int = 0
    """Rows whose key is NULL: they belong to no shard."""
    unmappable: int = 0
    """Rows whose key the shard function can't map (it raised DataError)."""
    example: str | None = None
    """The shard function's error for the first such key."""

    @property
    def misplaced(self) -> int:
        """Rows whose key maps to another shard."""
        return sum(count for target, count in self.targets.items() if target != self.shard)


@dataclass(frozen=True)
class TableCheck:
    """One table the placement names, on every shard."""

    table: str
    kind: Literal["copied", "sharded"]
    shards: tuple[ShardCheck, ...]
    rule: str | None = None
    """How a sharded table's rows are placed, e.g. ``modulo(customer_id)``."""

    @property
    def counts(self) -> tuple[int | None, ...]:
        """Rows per shard (None where the table is missing)."""
        return tuple(None if s.missing else s.rows for s in self.shards)

    @property
    def checksums(self) -> tuple[int | None, ...]:
        """A copy's checksum per shard (None where missing, and for a sharded table)."""
        return tuple(None if s.missing else s.checksum for s in self.shards)

    @property
    def misplaced(self) -> tuple[int, ...]:
        """Per shard, the rows whose key maps to another shard (0 for a copy)."""
        return tuple(s.misplaced for s in self.shards)

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        """One line per problem, naming the table and the shards."""
        present = [s for s in self.shards if not s.missing]
        reasons = {s.missing for s in self.shards}
        if not present and len(reasons) == 1:
            return [f"{self.table}: {reasons.pop()} on any shard"]
        lines = [f"{self.table}: {s.missing} on {s.where}" for s in self.shards if s.missing]
        if self.kind == "copied":
            lines += self._copy_problems(present)
        else:
            lines += self._sharded_problems(present)
        return lines

    def _copy_problems(self, present: Sequence[ShardCheck]) -> list[str]:
        groups: dict[tuple[int, int | None], list[ShardCheck]] = {}
        for s in present:
            groups.setdefault((s.rows, s.checksum), []).append(s)
        if len(groups) < 2:
            return []
        # The most shards agree on the reference contents; a tie goes to the lowest shard.
        reference = max(groups.values(), key=lambda g: (len(g), -g[0].shard))
        lines = []
        for group in groups.values():
            if group is reference:
                continue
            them, us = _shards_text(group), _shards_text(reference)
            if group[0].rows != reference[0].rows:
                lines.append(
                    f"{self.table}: {them} {_has(group)} {_rows(group[0].rows)}, "
                    f"{us} {_has(reference)} {reference[0].rows}"
                )
            else:
                lines.append(
                    f"{self.table}: {them} {_has(group, 'holds', 'hold')} other rows than {us} "
                    f"({_rows(group[0].rows)} each, other checksum)"
                )
        return lines

    def _sharded_problems(self, present: Sequence[ShardCheck]) -> list[str]:
        lines = []
        for s in present:
            elsewhere = {t: c for t, c in sorted(s.targets.items()) if t != s.shard and c}
            if len(elsewhere) == 1:
                ((target, count),) = elsewhere.items()
                there = self._where(target)
                verb = _verb(count, "belongs", "belong")
                lines.append(f"{self.table}: {_rows(count)} on {s.where} {verb} on {there} by {self.rule}")
            elif elsewhere:
                spread = ", ".join(f"{c} on {self._where(t)}" for t, c in elsewhere.items())
                lines.append(
                    f"{self.table}: {_rows(s.misplaced)} on {s.where} belong on other shards by {self.rule}: "
                    f"{spread}"
                )
            if s.unmappable:
                has = _verb(s.unmappable, "has", "have")
                lines.append(
                    f"{self.table}: {_rows(s.unmappable)} on {s.where} {has} a key {self.rule} can't map "
                    f"(first: {s.example})"
                )
        return lines

    def _where(self, index: int) -> str:
        return self.shards[index].where if 0 <= index < len(self.shards) else f"shard {index}"

    def _row(self) -> tuple[str, ...]:
        problems = self.problems()
        shown = "; ".join(short(p) for p in problems[:SHOWN_PROBLEMS])
        if len(problems) > SHOWN_PROBLEMS:
            shown += f"; ... and {len(problems) - SHOWN_PROBLEMS} more"
        counts = self.counts
        rows = " + ".join("-" if c is None else str(c) for c in counts[:SHOWN_SHARDS])
        if len(counts) > SHOWN_SHARDS:
            rows += f" + ... ({len(counts) - SHOWN_SHARDS} more shards)"
        return (self.table, self.kind, self.rule or "", "ok" if not problems else "problems", rows, shown)

    def __repr__(self) -> str:
        problems = self.problems()
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        return f"TableCheck({short(self.describe())}{more})"

    def _repr_html_(self) -> str:
        return html_table(f"TableCheck: {self.table}", _CHECK_HEADER, [self._row()])

    def describe(self) -> str:
        """One line: ``orders: ok, sharded by modulo(customer_id), 3000 rows`` or the first problem."""
        problems = self.problems()
        if problems:
            return problems[0]
        counts = [s.rows for s in self.shards]
        if self.kind == "copied":
            return f"{self.table}: ok, copied, {_rows(counts[0] if counts else 0)} on every shard"
        nulls = sum(s.nulls for s in self.shards)
        spread = " + ".join(map(str, counts))
        note = f", {nulls} with a NULL key (on no shard by key)" if nulls else ""
        return f"{self.table}: ok, sharded by {self.rule}, {_rows(sum(counts))} ({spread}){note}"


@dataclass(frozen=True)
class PlacementReport:
    """What :func:`check_placement` found: one :class:`TableCheck` per table the placement names."""

    tables: tuple[TableCheck, ...]
    shards: int

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    def problems(self) -> list[str]:
        """Every problem, one line each, naming the table and the shards."""
        return [line for t in self.tables for line in t.problems()]

    def table(self, name: str) -> TableCheck:
        """The check of the table the placement names ``name``; KeyError if it names none."""
        wanted = parse_name(name)
        for t in self.tables:
            if parse_name(t.table) == wanted:
                return t
        raise KeyError(name)

    def lines(self) -> list[str]:
        """One line per table that is ok, and one per problem."""
        return [line for t in self.tables for line in (t.problems() or [t.describe()])]

    def headline(self) -> str:
        """``placement check: 2 tables on 3 shards, all ok`` (or ``1 with problems``)."""
        bad = sum(not t.ok for t in self.tables)
        verdict = "all ok" if not bad else f"{bad} with problems"
        tables = "1 table" if len(self.tables) == 1 else f"{len(self.tables)} tables"
        return f"placement check: {tables} on {self.shards} shards, {verdict}"

    def summary(self) -> str:
        """:meth:`headline`, then :meth:`lines`."""
        return "\n".join([self.headline(), *self.lines()])

    def __repr__(self) -> str:
        return f"PlacementReport(ok={self.ok}, tables={len(self.tables)}, problems={len(self.problems())})"

    def _repr_html_(self) -> str:
        # Tables with problems first: they are what a reader looks for.
        ordered = sorted(self.tables, key=lambda t: t.ok)
        left = len(ordered) - SHOWN_TABLES
        return html_table(
            self.headline(),
            _CHECK_HEADER,
            [t._row() for t in ordered[:SHOWN_TABLES]],
            more=f"... and {left} more tables (report.lines() lists them all)" if left > 0 else None,
        )


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _has(group: Sequence[ShardCheck], one: str = "has", many: str = "have") -> str:
    return _verb(len(group), one, many)


def _verb(count: int, one: str, many: str) -> str:
    return one if count == 1 else many


def _shards_text(group: Sequence[ShardCheck]) -> str:
    return _named([s.where for s in group])


def _named(wheres: Sequence[str]) -> str:
    """``shard 1 (...)``, or ``shards 0 (...), 1 (...) and 2 (...)``."""
    if len(wheres) == 1:
        return wheres[0]
    named = [w.removeprefix("shard ") for w in wheres]
    return "shards " + ", ".join(named[:-1]) + " and " + named[-1]


# -- running on the shards ----------------------------------------------------------


@contextlib.contextmanager
def _reading(conn: Any) -> Iterator[Any]:
    """A cursor for read-only work in the connection's transaction; the connection is left as found.

    An idle connection reads one snapshot and is rolled back at the end; in a transaction the work
    runs in a savepoint, rolled back at the end (the user's transaction goes on).
    """
    status = conn.get_transaction_status()
    if status == psycopg2.extensions.TRANSACTION_STATUS_INERROR:
        raise psycopg2.InternalError("the connection's transaction is aborted: roll back first")
    if status not in (
        psycopg2.extensions.TRANSACTION_STATUS_IDLE,
        psycopg2.extensions.TRANSACTION_STATUS_INTRANS,
    ):
        raise psycopg2.InterfaceError("the connection is busy: let its statement finish first")
    idle = status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    autocommit = conn.autocommit
    if autocommit:
        conn.autocommit = False
    try:
        with conn.cursor() as cur:
            if idle:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            else:
                cur.execute(f"SAVEPOINT {_SAVEPOINT}")
            cur.execute(_SETTINGS_SQL)
            yield cur
    except BaseException:
        with contextlib.suppress(psycopg2.Error):
            _restore(conn, idle, autocommit)
        raise
    _restore(conn, idle, autocommit)


def _restore(conn: Any, idle: bool, autocommit: bool) -> None:
    try:
        if idle:
            conn.rollback()
        else:
            with conn.cursor() as cur:
                cur.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                cur.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
    finally:
        if autocommit and not conn.closed:
            conn.autocommit = True


def _on_each(shards: ShardSet, work: Callable[[int, Any], T]) -> list[T]:
    """``work(i, cursor)`` on every shard at once, each in :func:`_reading`."""

    def run(index: int) -> T:
        with _reading(shards.connections[index]) as cur:
            return work(index, cur)

    return shards.run(run)


def _quoted(schema: str | None, name: str) -> str:
    """A relation name as ``to_regclass`` reads it back exactly."""
    parts = [name] if schema is None else [schema, name]
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


# -- check ------------------------------------------------------------------------------

_LOCATE_SQL = """
SELECT n.nspname, c.relname, c.relkind, a.atttypid::int8, current_setting('server_encoding'),
       CASE WHEN a.attnum IS NULL THEN has_table_privilege(c.oid, 'SELECT')
            ELSE has_column_privilege(c.oid, a.attnum, 'SELECT') END
  FROM (SELECT to_regclass(%(name)s) AS oid) AS r
  LEFT JOIN pg_class AS c ON c.oid = r.oid
  LEFT JOIN pg_namespace AS n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute AS a
         ON a.attrelid = c.oid AND a.attname = %(key)s AND a.attnum > 0 AND NOT a.attisdropped
"""
_READABLE = frozenset("rpvmf")  # tables, partitioned tables, views, materialized views, foreign tables
_RELKINDS = {
    "r": "a table",
    "p": "a partitioned table",
    "v": "a view",
    "m": "a materialized view",
    "f": "a foreign table",
    "S": "a sequence",
    "i": "an index",
    "I": "an index",
    "c": "a composite type",
}


@dataclass(frozen=True)
class _Found:
    table: sql.Identifier
    key_type: int | None
    utf8: bool


def _locate(cur: Any, name: str, key: str | None) -> _Found | str:
    """The relation ``name`` means on this shard, or why there is none to read."""
    cur.execute(_LOCATE_SQL, {"name": _quoted(*parse_name(name)), "key": key})
    schema, relname, relkind, key_type, encoding, readable = cur.fetchone()
    if relname is None:
        return "no such table"
    if relkind not in _READABLE:
        return f"not a table but {_kind(relkind)}"
    if key is not None and key_type is None:
        return f"no column {quote_identifier(key)}"
    if not readable:
        return "no SELECT privilege"
    return _Found(sql.Identifier(schema, relname), key_type, encoding == "UTF8")


def _kind(relkind: str) -> str:
    return _RELKINDS.get(relkind, f"relkind {relkind!r}")


def _rule(table: ShardedTable) -> str:
    function = table.function
    label = function.name
    if isinstance(function, Custom):
        label = getattr(function.fn, "__qualname__", type(function.fn).__name__)
    return f"{label}({table.key_sql})"


def check_placement(shards: ShardSet, *, progress: ProgressOption = None) -> PlacementReport:
    """Check every table the shards' placement names, one pass per table per shard, shards in parallel.

    Copies: the row count and an order-independent checksum must agree on every shard. Sharded
    tables: the rows whose key maps to another shard (NULL keys are counted apart: they belong to no
    shard). A table missing on a shard is a problem in the report, not an error. Each shard reads in
    its connection's transaction, which is left as found (an idle connection is rolled back).
    ``progress``: a bar over the (table, shard) steps (``True``; ``None``: when stderr is a
    terminal) or a callable receiving :class:`CheckProgress`.
    """
    placement = shards.placement
    if placement is None:
        raise psycopg2.ProgrammingError(
            "the connection has no placement to check: connect with placement=..., "
            "or propose one with discover_placement()"
        )
    n = len(shards)
    tables: list[tuple[str, ShardedTable | None]] = [
        *((t.name, t) for t in placement.sharded),
        *((name, None) for name in placement.copied),
    ]
    names = [str(info) for info in shards.infos]
    meter = _Progress(len(tables) * n, progress, "placement check")

    def work(index: int, cur: Any) -> list[ShardCheck]:
        results = []
        for name, table in tables:
            found = _locate(cur, name, None if table is None else table.key)
            if isinstance(found, str):
                results.append(ShardCheck(index, names[index], missing=found))
            elif table is None:
                results.append(_check_copy(cur, found, index, names[index]))
            else:
                results.append(_check_sharded(cur, found, table.key, table.function, index, n, names[index]))
            meter.step(name, index)
        return results

    try:
        per_shard = _on_each(shards, work)
    finally:
        meter.close()
    checks = []
    for position, (name, table) in enumerate(tables):
        kind: Literal["copied", "sharded"] = "copied" if table is None else "sharded"
        rule = None if table is None else _rule(table)
        checks.append(TableCheck(name, kind, tuple(r[position] for r in per_shard), rule))
    return PlacementReport(tuple(checks), n)


def _check_copy(cur: Any, found: _Found, index: int, where: str) -> ShardCheck:
    query = sql.SQL("SELECT count(*), coalesce(sum({h}), 0) FROM {t} AS t").format(
        h=sql.SQL(_ROW_HASH), t=found.table
    )
    cur.execute(query)
    rows, checksum = cur.fetchone()
    return ShardCheck(index, where, rows=rows, checksum=int(checksum))


def _check_sharded(
    cur: Any, found: _Found, key: str, function: ShardFunction, index: int, n: int, where: str
) -> ShardCheck:
    target = _target_sql(sql.Identifier(key), function, found, n)
    if target is None:
        return _stream_keys(cur.connection, found, key, function, index, n, where)
    expression, params = target
    cur.execute(
        sql.SQL("SELECT target, count(*) FROM (SELECT {e} AS target FROM {t}) AS s GROUP BY target").format(
            e=expression, t=found.table
        ),
        params,
    )
    counted = cur.fetchall()
    targets = {int(t): c for t, c in counted if t is not None}
    nulls = sum(c for t, c in counted if t is None)
    return ShardCheck(index, where, rows=sum(targets.values()) + nulls, targets=targets, nulls=nulls)


def _modulo_sql(key: sql.Composable, n: int) -> tuple[sql.Composable, list[Any]]:
    """The mathematical ``key mod n`` (PostgreSQL's ``%`` is negative for a negative key)."""
    return sql.SQL("mod(mod({k}, %s) + %s, %s)").format(k=key), [n, n, n]


def _hash_sql(hashed: sql.Composable, n: int) -> tuple[sql.Composable, list[Any]]:
    """The remainder ``PARTITION BY HASH`` (modulus ``n``) gives a key whose extended hash is ``hashed``."""
    expression = sql.SQL("mod(mod({h} + %s::numeric, %s::numeric), %s)").format(h=hashed)
    return expression, [_WRAP + _COMBINE, _WRAP, n]


def _int_hash(key: sql.Composable) -> sql.Composable:
    return sql.SQL("hashint8extended({k}::int8, {s})").format(k=key, s=sql.Literal(_SEED))


def _text_hash(key: sql.Composable) -> sql.Composable:
    # Under "C" the hash is that of the bytes, as Hash.shard_of hashes a str's UTF-8 bytes.
    return sql.SQL('hashtextextended({k} COLLATE "C", {s})').format(k=key, s=sql.Literal(_SEED))


def _target_sql(
    key: sql.Composable, function: ShardFunction, found: _Found, n: int
) -> tuple[sql.Composable, list[Any]] | None:
    """The shard ``function`` maps ``key`` to, in SQL that computes what Python would; None: no such SQL."""
    key_type = found.key_type
    if key_type in _INTEGERS and isinstance(function, Modulo):
        return _modulo_sql(key, n)
    if key_type in _INTEGERS and isinstance(function, Hash):
        return _hash_sql(_int_hash(key), n)
    if isinstance(function, Ranges):
        text = bool(function.splits) and isinstance(function.splits[0], str)
        if (key_type in _INTEGERS and not text) or (
            key_type in _TEXTS and found.utf8 and (text or not function.splits)
        ):
            # "C" compares UTF-8 bytes, which order as code points do.
            left = sql.SQL('{k} COLLATE "C"').format(k=key) if text else key
            whens = [sql.SQL("WHEN {l} < %s THEN %s").format(l=left) for _ in function.splits]
            params: list[Any] = [
                v for pair in zip(function.splits, function.intervals, strict=False) for v in pair
            ]
            expression = sql.SQL("CASE WHEN {k} IS NULL THEN NULL {w} ELSE %s END").format(
                k=key, w=sql.SQL(" ").join(whens)
            )
            return expression, [*params, function.intervals[-1]]
    return None


def _stream_keys(
    conn: Any, found: _Found, key: str, function: ShardFunction, index: int, n: int, where: str
) -> ShardCheck:
    """Map every key in Python, ``ITERSIZE`` keys per round trip through a server-side cursor."""
    targets: Counter[int] = Counter()
    nulls = unmappable = 0
    example: str | None = None
    is_uuid = found.key_type == _UUID  # psycopg2 reads a uuid as str unless told otherwise
    cursor = conn.cursor(f"parallel_connection_check_{uuid.uuid4().hex[:12]}")
    try:
        cursor.itersize = ITERSIZE
        cursor.execute(sql.SQL("SELECT {k} FROM {t}").format(k=sql.Identifier(key), t=found.table))
        while batch := cursor.fetchmany(ITERSIZE):
            for (value,) in batch:
                if value is None:
                    nulls += 1
                    continue
                try:  # a uuid is a str unless the application called register_uuid()
                    stored = uuid.UUID(value) if is_uuid and isinstance(value, str) else value
                    targets[function.shard_of(stored, n)] += 1
                except psycopg2.DataError as exc:
                    unmappable += 1
                    example = example or str(exc)
    finally:
        with contextlib.suppress(psycopg2.Error):
            cursor.close()
    rows = sum(targets.values()) + nulls + unmappable
    return ShardCheck(
        index, where, rows=rows, targets=dict(targets), nulls=nulls, unmappable=unmappable, example=example
    )


# -- discover -----------------------------------------------------------------------

_RESOLVE_SQL = """
SELECT n.nspname, c.relname, c.relkind
  FROM unnest(%s::text[]) WITH ORDINALITY AS x(name, i)
  LEFT JOIN pg_class AS c ON c.oid = to_regclass(x.name)
  LEFT JOIN pg_namespace AS n ON n.oid = c.relnamespace
 ORDER BY x.i
"""
_LIST_SQL = """
SELECT n.nspname, c.relname, pg_table_is_visible(c.oid), has_table_privilege(c.oid, 'SELECT'),
       array_agg(a.attname::text ORDER BY a.attnum),
       array_agg(a.atttypid::int8 ORDER BY a.attnum),
       array_agg(EXISTS (SELECT FROM pg_constraint AS k
                          WHERE k.conrelid = c.oid AND k.contype IN ('p', 'f', 'u')
                            AND a.attnum = ANY (k.conkey))
                 ORDER BY a.attnum)
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
  JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relkind IN ('r', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND NOT starts_with(n.nspname::text, 'pg_toast') AND NOT starts_with(n.nspname::text, 'pg_temp_')
   AND NOT (%(every)s AND c.relname = %(decisions)s)
   AND CASE WHEN %(every)s THEN NOT c.relispartition
            ELSE (n.nspname::text, c.relname::text)
                 IN (SELECT * FROM unnest(%(schemas)s::text[], %(names)s::text[]))
       END
 GROUP BY c.oid, n.nspname, c.relname
 ORDER BY n.nspname, c.relname
"""
_FUNCTIONS = ("modulo", "hash")


@dataclass(frozen=True)
class Discovery:
    """A placement proposed from the data, and the tables left out of it (with the reason)."""

    placement: Placement
    undecided: list[str]
    """``"table: reason"`` for each table left out: a statement reading it is refused until you name it."""
    notes: list[str]
    """Other findings: other columns that would do as key, NULL keys."""
    shards: int

    def to_toml(self) -> str:
        """The placement as TOML, led by comments listing the tables left out and why."""
        lines = [
            f"# Proposed by parallel_connection's discover_placement from the data on {self.shards} shards.",
            "# Check it (parallel-connection placement check --placement FILE) before relying on it.",
        ]
        if self.undecided:
            lines.append("# Left out (statements reading them are refused until the placement names them):")
            lines += [f"#   {_comment(line)}" for line in self.undecided]
        if self.notes:
            lines.append("# Notes:")
            lines += [f"#   {_comment(line)}" for line in self.notes]
        return "\n".join(lines) + "\n" + self.placement.to_toml()

    def __repr__(self) -> str:
        p = self.placement
        return (
            f"Discovery(sharded={len(p.sharded)}, copied={len(p.copied)}, undecided={len(self.undecided)}, "
            f"shards={self.shards})"
        )


def _comment(text: str) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


@dataclass(frozen=True)
class _Column:
    name: str
    type_oid: int
    keyed: bool
    """In a primary key, foreign key or unique constraint."""


@dataclass(frozen=True)
class _Table:
    display: str
    qualified: tuple[str, str]
    columns: tuple[_Column, ...]

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(*self.qualified)

    def functions(self, column: _Column) -> tuple[str, ...]:
        return _FUNCTIONS if column.type_oid in _INTEGERS else ("hash",)


@dataclass(frozen=True)
class _Pass:
    """One table on one shard: count, checksum, and per candidate column its keys and the rows off."""

    rows: int
    checksum: int
    keys: Mapping[str, int]
    off: Mapping[tuple[str, str], int]


def discover_placement(
    shards: ShardSet, *, progress: ProgressOption = None, tables: Iterable[str] | None = None
) -> Discovery:
    """Propose a placement from the data: copies, and sharded tables with their key and function.

    Every user table (or those ``tables`` names) is read once per shard, shards in parallel. A table
    with the same row count and checksum everywhere (and some rows) is a copy. Otherwise each integer
    column is tried with ``modulo`` and ``hash``, each text column with ``hash``: a column whose every
    non-NULL key sits on the shard the function maps it to is a key (preferred: a column in a
    primary, foreign or unique key, then an ``id``-like name, then fewest NULLs, then column order).
    Tables with no such column, or empty everywhere, are left out and listed in
    :attr:`Discovery.undecided`. The connection is left as found (see :func:`check_placement`).
    """
    if isinstance(tables, str):
        raise TypeError("tables= takes a collection of names, e.g. tables=['orders']")
    wanted = None if tables is None else [str(name) for name in tables]
    parsed = None if wanted is None else [parse_name(name) for name in wanted]
    n = len(shards)
    names = [str(info) for info in shards.infos]
    listings = _on_each(shards, lambda i, cur: _list(cur, parsed))
    found, undecided = _combine(listings, wanted, names)
    meter = _Progress(len(found) * n, progress, "placement discover")
    try:
        passes = _on_each(shards, lambda i, cur: [_pass(cur, t, i, n, meter) for t in found])
        outcomes, rejected = _choose(shards, found, passes, names, meter)
    finally:
        meter.close()
    copied: list[str] = []
    sharded: dict[str, tuple[str, str]] = {}
    notes: list[str] = []
    for position, (table, outcome) in enumerate(zip(found, outcomes, strict=True)):
        if outcome is None:
            copied.append(table.display)
        elif isinstance(outcome, str):
            undecided.append(f"{table.display}: {outcome}")
        else:
            sharded[table.display] = outcome
            notes += _notes(table, [p[position] for p in passes], outcome, rejected[position])
    placement = Placement(
        sharded={name: (quote_identifier(key), function) for name, (key, function) in sharded.items()},
        copied=copied,
    )
    return Discovery(placement, undecided, notes, n)


_Outcome = str | tuple[str, str] | None
"""None: a copy; (column, function): sharded; a str: why the table is left out."""


def _choose(
    shards: ShardSet,
    found: Sequence[_Table],
    passes: Sequence[Sequence[_Pass]],
    names: Sequence[str],
    meter: _Progress,
) -> tuple[list[_Outcome], list[set[tuple[str, str]]]]:
    """Each table's outcome, and the keys turned down; a text key for hash is verified in Python."""
    n = len(shards)
    outcomes: list[_Outcome] = [None] * len(found)
    rejected: list[set[tuple[str, str]]] = [set() for _ in found]
    pending = list(range(len(found)))
    while pending:
        verify: list[tuple[_Table, _Column]] = []
        positions = []
        for position in pending:
            outcome = _decide(found[position], [p[position] for p in passes], names, rejected[position])
            if outcome is None or isinstance(outcome, str):
                outcomes[position] = outcome
                continue
            column, function = outcome
            outcomes[position] = (column.name, function)
            if column.type_oid in _TEXTS:  # SQL hashes the server's bytes: only Python is exact
                verify.append((found[position], column))
                positions.append(position)
        if not verify:
            break
        meter.grow(len(verify) * n)

        def exact(index: int, cur: Any, verify: list[tuple[_Table, _Column]] = verify) -> list[bool]:
            return [_verify(cur, table, column, index, n, names, meter) for table, column in verify]

        results = _on_each(shards, exact)
        pending = []
        for k, (position, (_, column)) in enumerate(zip(positions, verify, strict=True)):
            if not all(r[k] for r in results):
                rejected[position].add((column.name, "hash"))
                pending.append(position)
    return outcomes, rejected


@dataclass(frozen=True)
class _Listed:
    """A user table as one shard's catalog has it."""

    visible: bool
    """Found by its bare name on the search path."""
    readable: bool
    columns: tuple[_Column, ...]


_Listing = tuple[list[tuple[str, str, str] | None] | None, dict[tuple[str, str], _Listed]]
"""How each named table resolves on one shard (None without names), and its user tables."""


def _list(cur: Any, parsed: list[tuple[str | None, str]] | None) -> _Listing:
    """One shard's user tables (or the named ones): how each named table resolves, and their columns."""
    resolved: list[tuple[str, str, str] | None] | None = None
    if parsed is not None:
        cur.execute(_RESOLVE_SQL, ([_quoted(*name) for name in parsed],))
        resolved = [None if row[1] is None else (row[0], row[1], row[2]) for row in cur.fetchall()]
    chosen = [r for r in resolved or () if r is not None]
    cur.execute(
        _LIST_SQL,
        {
            "every": parsed is None,
            "schemas": [r[0] for r in chosen],
            "names": [r[1] for r in chosen],
            "decisions": DECISIONS_TABLE,
        },
    )
    relations = {
        (schema, name): _Listed(visible, readable, tuple(map(_Column, cols, types, keyed)))
        for schema, name, visible, readable, cols, types, keyed in cur.fetchall()
    }
    return resolved, relations


def _combine(
    listings: Sequence[_Listing],
    wanted: list[str] | None,
    names: Sequence[str],
) -> tuple[list[_Table], list[str]]:
    """The tables to read on every shard, and those left out already (missing somewhere, not tables)."""
    undecided: list[str] = []
    candidates: list[tuple[str, tuple[str, str]]] = []
    if wanted is None:
        keys = sorted({key for _, relations in listings for key in relations})
        for key in keys:
            visible = next(r[key].visible for _, r in listings if key in r)
            display = (
                quote_identifier(key[1])
                if visible
                else f"{quote_identifier(key[0])}.{quote_identifier(key[1])}"
            )
            candidates.append((display, key))
    else:
        for position, given in enumerate(wanted):
            hits = [resolved[position] for resolved, _ in listings if resolved is not None]
            first = next((h for h in hits if h is not None), None)
            if first is None:
                undecided.append(f"{given}: no such table on any shard")
            elif first[2] not in ("r", "p"):
                undecided.append(f"{given}: {_kind(first[2])}, not a table")
            else:
                candidates.append((given, (first[0], first[1])))
    tables = []
    seen: set[tuple[str, str]] = set()
    for display, key in candidates:
        if key in seen:
            continue  # named twice
        seen.add(key)
        missing = [i for i, (_, relations) in enumerate(listings) if key not in relations]
        if missing:
            undecided.append(f"{display}: missing on {_list_shards(missing, names)}")
            continue
        unreadable = [i for i, (_, relations) in enumerate(listings) if not relations[key].readable]
        if unreadable:
            on = "any shard" if len(unreadable) == len(names) else _list_shards(unreadable, names)
            undecided.append(f"{display}: no SELECT privilege on {on}")
            continue
        shapes = [relations[key].columns for _, relations in listings]
        common = set.intersection(*({(c.name, c.type_oid) for c in shape} for shape in shapes))
        columns = tuple(
            _Column(c.name, c.type_oid, any(c2.keyed for s in shapes for c2 in s if c2.name == c.name))
            for c in shapes[0]
            if (c.name, c.type_oid) in common and c.type_oid in _INTEGERS | _TEXTS
        )
        tables.append(_Table(display, key, columns))
    return tables, undecided


def _pass(cur: Any, table: _Table, index: int, n: int, meter: _Progress) -> _Pass:
    """Count, checksum and, per candidate column and function, the rows off their shard: one scan."""
    parts: list[sql.Composable] = [sql.SQL("count(*)"), sql.SQL(f"coalesce(sum({_ROW_HASH}), 0)")]
    params: list[Any] = []
    labels: list[tuple[str, str | None]] = []
    for column in table.columns:
        key = sql.Identifier("t", column.name)
        parts.append(sql.SQL("count({k})").format(k=key))
        labels.append((column.name, None))
        for function in table.functions(column):
            if function == "modulo":
                expression, args = _modulo_sql(key, n)
            else:
                hashed = _int_hash(key) if column.type_oid in _INTEGERS else _text_hash(key)
                expression, args = _hash_sql(hashed, n)
            parts.append(sql.SQL("count(*) FILTER (WHERE {e} <> %s)").format(e=expression))
            params += [*args, index]
            labels.append((column.name, function))
    query = sql.SQL("SELECT {p} FROM {t} AS t").format(p=sql.SQL(", ").join(parts), t=table.identifier)
    cur.execute(query, params)
    rows, checksum, *values = cur.fetchone()
    keys = {name: v for (name, function), v in zip(labels, values, strict=True) if function is None}
    off = {
        (name, function): v
        for (name, function), v in zip(labels, values, strict=True)
        if function is not None
    }
    meter.step(table.display, index)
    return _Pass(rows, int(checksum), keys, off)


def _verify(
    cur: Any, table: _Table, column: _Column, index: int, n: int, names: Sequence[str], meter: _Progress
) -> bool:
    """Whether every key of ``column`` maps to this shard by Hash, computed in Python."""
    found = _Found(table.identifier, column.type_oid, True)
    check = _stream_keys(cur.connection, found, column.name, Hash(), index, n, names[index])
    meter.step(table.display, index)
    return not check.misplaced and not check.unmappable


def _decide(
    table: _Table, passes: Sequence[_Pass], names: Sequence[str], rejected: set[tuple[str, str]]
) -> str | tuple[_Column, str] | None:
    """None: a copy; (column, function): sharded; a str: why the table is left out."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(passes):
        groups.setdefault((p.rows, p.checksum), []).append(i)
    if len(groups) == 1:
        if passes[0].rows == 0:
            return "empty on every shard: nothing tells a copy from a sharded table (name it yourself)"
        return None
    rows = sum(p.rows for p in passes)

    def keys(column: _Column) -> int:
        return sum(p.keys[column.name] for p in passes)

    def off(option: tuple[_Column, str]) -> int:
        return sum(p.off[option[0].name, option[1]] for p in passes)

    options = [
        (column, function)
        for column in table.columns
        for function in table.functions(column)
        if (column.name, function) not in rejected and keys(column) > 0
    ]
    consistent = [option for option in options if off(option) == 0]
    if consistent:
        return min(
            consistent,
            key=lambda o: (
                _likeness(o[0]),
                rows - keys(o[0]),
                table.columns.index(o[0]),
                _FUNCTIONS.index(o[1]),
            ),
        )
    reason = "differs between shards"
    same = max(groups.values(), key=len)
    if len(same) > 1 and passes[same[0]].rows:
        others = [i for i in range(len(passes)) if i not in same]
        reason += (
            f" ({_list_shards(same, names)} hold the same {_rows(passes[same[0]].rows)}: a copy that differs "
            f"on {_list_shards(others, names)}?)"
        )
    if not options:
        return f"{reason}, and has no integer or text column with keys to shard on"
    column, function = closest = min(options, key=off)
    return (
        f"{reason}, and no integer or text column puts every row on the shard modulo or hash maps it to "
        f"(closest: {quote_identifier(column.name)} by {function}, {off(closest)} of {keys(column)} "
        "rows elsewhere)"
    )


def _likeness(column: _Column) -> int:
    """0 for a column in a primary, foreign or unique key, 1 for an id-like name, else 2."""
    if column.keyed:
        return 0
    return 1 if column.name == "id" or column.name.endswith("_id") else 2


def _list_shards(indexes: Sequence[int], names: Sequence[str]) -> str:
    return _named([names[i] for i in indexes])


def _notes(
    table: _Table, passes: Sequence[_Pass], chosen: tuple[str, str], rejected: set[tuple[str, str]]
) -> list[str]:
    notes = []
    column, function = chosen
    keyed = sum(p.keys[column] for p in passes)
    nulls = sum(p.rows for p in passes) - keyed
    if nulls:
        notes.append(
            f"{table.display}: {_rows(nulls)} with a NULL {quote_identifier(column)} (on no shard by key)"
        )
    others = [
        f"{quote_identifier(c.name)} by {f}"
        for c in table.columns
        for f in table.functions(c)
        if (c.name, f) != chosen
        and (c.name, f) not in rejected
        and sum(p.keys[c.name] for p in passes) > 0
        and sum(p.off[c.name, f] for p in passes) == 0
    ]
    if others:
        notes.append(
            f"{table.display}: {quote_identifier(column)} by {function} chosen; "
            f"also consistent: {', '.join(others)}"
        )
    return notes
