"""What a scan is asked to do: the table and id column, the work per range, the options."""

from __future__ import annotations

import functools
import hashlib
import inspect
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from os import PathLike
from typing import Any

import psycopg2
import psycopg2.sql as sql
from pglast import ast, enums, parser

from ..errors import ShardInfo, shown
from ..plan.syntax import walk
from ..pool import DEFAULT_TIMEOUT

__all__ = ["PLANS_SUFFIX", "IdRange", "InShard", "ScanOptions", "Target", "Work", "check_where"]

SPLITS = ("width", "rows")

NAME_BYTES = 63
"""PostgreSQL's identifier length (longer names are cut silently)."""
PLANS_SUFFIX = "_plans"


@dataclass(frozen=True)
class InShard:
    """``checkpoint=InShard()``: finished ranges kept on each shard, committed with their work (exactly once).

    ``table`` (in ``schema``) holds one row per finished range, and
    ``table + "_plans"`` each job's ranges; both are created on first use.
    ``job`` names the job (default: a fingerprint of the table, column,
    filter and work, as the file checkpoint uses).
    """

    table: str = "parallel_connection_ranges"
    schema: str = "public"
    job: str | None = None

    def __post_init__(self) -> None:
        for kind, name in (("table", self.table), ("schema", self.schema)):
            if not isinstance(name, str) or not name:
                raise ValueError(f"InShard: the {kind} name must be a non-empty string, not {name!r}")
        if len((self.table + PLANS_SUFFIX).encode()) > NAME_BYTES:
            raise ValueError(
                f"InShard: the table name {self.table!r} is too long (its plans table "
                f"{self.table + PLANS_SUFFIX!r} must fit in {NAME_BYTES} bytes)"
            )
        if self.job is not None and (not isinstance(self.job, str) or not self.job):
            raise ValueError(f"InShard: job must be a non-empty string, not {self.job!r}")


_FORBIDDEN = ('"', ";", "'", "\x00")


@dataclass(frozen=True)
class IdRange:
    """One job: ids ``start`` to ``end`` (both included) on one shard."""

    shard: ShardInfo
    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.shard}: ids {self.start}..{self.end}"


@dataclass(frozen=True)
class Target:
    """The table (optionally schema-qualified) and its integer id column."""

    table: tuple[str, ...]
    column: str

    @classmethod
    def parse(cls, table: str | Sequence[str], column: str) -> Target:
        """Check the names; ``table`` is ``"name"``, ``"schema.name"`` or ``("schema", "name")``."""
        parts = tuple(table.split(".")) if isinstance(table, str) else tuple(table)
        if not 1 <= len(parts) <= 2:
            raise psycopg2.ProgrammingError(f"table must be 'name' or 'schema.name', not {table!r}")
        for kind, name in [("table", p) for p in parts] + [("id column", column)]:
            if not isinstance(name, str) or not name.strip():
                raise psycopg2.ProgrammingError(f"the {kind} name must be a non-empty string, not {name!r}")
            if any(ch in name for ch in _FORBIDDEN):
                raise psycopg2.ProgrammingError(
                    f"the {kind} name {name!r} holds a quote or semicolon: pass the bare name, "
                    "it is quoted for you"
                )
        return cls(parts, column)

    @property
    def name(self) -> str:
        return ".".join(self.table)

    @property
    def table_sql(self) -> sql.Identifier:
        return sql.Identifier(*self.table)

    @property
    def column_sql(self) -> sql.Identifier:
        return sql.Identifier(self.column)


@dataclass(frozen=True)
class Work:
    """The job run on each range: SQL with ``%(start)s``/``%(end)s``, or ``fn(cursor, id_range)``."""

    sql: str | None = None
    fn: Callable[[Any, IdRange], Any] | None = None

    @classmethod
    def of(cls, work: str | Callable[[Any, IdRange], Any]) -> Work:
        if isinstance(work, str):
            missing = [p for p in ("%(start)s", "%(end)s") if p not in work]
            if missing:
                raise psycopg2.ProgrammingError(
                    f"the work SQL must use the range's bounds as {' and '.join(missing)}"
                )
            return cls(sql=work)
        if callable(work):
            return cls(fn=work)
        raise TypeError(f"work must be SQL text or a callable(cursor, id_range), not {type(work).__name__}")

    def identity(self) -> str:
        """A fingerprint that changes when the job changes (keys checkpoint records)."""
        text = "sql:" + self.sql if self.sql is not None else "fn:" + _fingerprint(self.fn)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fingerprint(fn: Any) -> str:
    """What makes a callable the job it is: its code and every value it carries.

    A value that can't be pickled is taken by ``repr``; one that shows only a
    memory address then changes every run, so such a job never resumes from
    a checkpoint rather than resuming a different job's results.
    """
    if isinstance(fn, functools.partial):
        return f"partial({_fingerprint(fn.func)}, {_value(fn.args)}, {_value(fn.keywords)})"
    if inspect.ismethod(fn):
        return f"method({_fingerprint(fn.__func__)}, {_value(fn.__self__)})"
    target = fn if inspect.isfunction(fn) else type(fn)
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"
    try:
        body = inspect.getsource(target)
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        body = repr((code.co_code, code.co_consts)) if code is not None else ""
    carried: list[Any] = []
    if inspect.isfunction(fn):
        carried += [fn.__defaults__, fn.__kwdefaults__]
        carried += [cell.cell_contents for cell in fn.__closure__ or () if _filled(cell)]
    else:
        carried.append(getattr(fn, "__dict__", None))
    return f"{name}:{body}:{_value(carried)}"


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _value(value: Any) -> str:
    try:
        return pickle.dumps(value, protocol=4).hex()
    except Exception:
        return repr(value)


@dataclass(frozen=True)
class ScanOptions:
    """Every knob of one scan (see :func:`scan_ranges` for their meaning)."""

    rows_per_range: int = 25_000
    split: str = "width"
    where: str | None = None
    params: Sequence[Any] | Mapping[str, Any] | None = None
    max_parallelism: int | None = None
    retries: int = 3
    retry_backoff: float = 0.1
    progress: bool | Callable[[Any], None] | None = None
    checkpoint: str | PathLike[str] | InShard | None = None
    snapshot: bool = False
    executor: Executor | None = None
    smoke_test: bool = False
    pool_timeout: float = DEFAULT_TIMEOUT
    stop_early: bool = True
    check_first: Callable[[Any], None] | None = None

    def check(self) -> None:
        """Refuse options that cannot work, before anything runs."""
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {self.split!r}")
        if not isinstance(self.rows_per_range, int) or self.rows_per_range < 1:
            raise ValueError(f"rows_per_range must be a positive integer, not {self.rows_per_range!r}")
        if self.max_parallelism is not None and self.max_parallelism < 1:
            raise ValueError(f"max_parallelism must be at least 1, not {self.max_parallelism}")
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")
        if isinstance(self.pool_timeout, bool) or not isinstance(self.pool_timeout, (int, float)):
            raise ValueError(f"pool_timeout must be a number of seconds, not {self.pool_timeout!r}")
        if not self.pool_timeout > 0:
            raise ValueError(f"pool_timeout must be more than 0 seconds, not {self.pool_timeout!r}")
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, PathLike, InShard)):
            raise TypeError(
                "checkpoint must be a file path or parallel_connection.InShard(), "
                f"not {type(self.checkpoint).__name__}"
            )
        if not isinstance(self.stop_early, bool):
            raise ValueError(f"stop_early must be True or False, not {self.stop_early!r}")
        if self.check_first is not None and not callable(self.check_first):
            raise TypeError(
                f"check_first must be a callable(range_result) or None, not {type(self.check_first).__name__}"
            )
        if isinstance(self.where, str):
            # Before any shard is touched; each shard checks the text it runs (params bound) again.
            held = self.where if self.params is None else _PLACEHOLDER.sub(_held, self.where)
            check_where(held, self.where)


_PLACEHOLDER = re.compile(r"%%|%\([^)]*\)s|%s")
_WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


def _held(match: re.Match[str]) -> str:
    return "%" if match.group() == "%%" else "NULL"


def check_where(text: str, where: Any = None) -> None:
    """Refuse ``text`` (a where= filter, its parameters bound) unless it is one expression.

    It must stay inside the parentheses it is put in, hold no second statement
    and nothing that writes or locks rows. A plain syntax error is left to the
    server to report (the text cannot reach outside its parentheses).
    """
    where = text if where is None else where
    try:
        tokens = parser.scan(text)
    except parser.ParseError as exc:
        raise _bad_where(where, f"it does not scan: {exc}") from None
    depth = 0
    for token in tokens:
        if token.name == "ASCII_59":
            raise _bad_where(where, "it holds a ';' (a second statement)")
        depth += {"ASCII_40": 1, "ASCII_41": -1}.get(token.name, 0)
        if depth < 0:
            raise _bad_where(where, "it closes a parenthesis it did not open")
    if depth:
        raise _bad_where(where, "its parentheses do not balance")
    try:
        statements = parser.parse_sql(f"SELECT 1 WHERE (\n{text}\n)")
    except parser.ParseError:
        return
    top = statements[0].stmt if len(statements) == 1 else None
    if not isinstance(top, ast.SelectStmt) or top.op != enums.SetOperation.SETOP_NONE or top.fromClause:
        raise _bad_where(where, "it reaches outside its expression")  # kept out by the scan above
    for node in walk(top.whereClause, into_selects=True):
        if isinstance(node, _WRITES):
            raise _bad_where(where, f"the {type(node).__name__[:-4].upper()} inside it writes")
        if isinstance(node, ast.SelectStmt) and node.lockingClause:
            raise _bad_where(where, "the FOR UPDATE / SHARE inside it locks rows")
        if isinstance(node, ast.SelectStmt) and node.intoClause:
            raise _bad_where(where, "the SELECT INTO inside it creates a table")


def _bad_where(where: Any, why: str) -> psycopg2.ProgrammingError:
    return psycopg2.ProgrammingError(
        f"where={shown(where)} refused before anything ran: {why}; where= takes one boolean expression "
        "on the table's columns, with values as %(name)s parameters passed in params="
    )
