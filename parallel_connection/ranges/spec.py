"""What a scan is asked to do: the table and id column, the work per range, the options."""

from __future__ import annotations

import functools
import hashlib
import inspect
import pickle
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from os import PathLike
from typing import Any

import psycopg2
import psycopg2.sql as sql

from ..errors import ShardInfo

__all__ = ["IdRange", "ScanOptions", "Target", "Work"]

SPLITS = ("width", "rows")
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
    checkpoint: str | PathLike[str] | None = None
    snapshot: bool = False
    executor: Executor | None = None
    smoke_test: bool = False

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
