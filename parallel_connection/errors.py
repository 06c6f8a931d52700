"""Shard-aware errors: name the shard, keep the DB-API class, never show a password."""

from __future__ import annotations

import contextlib
import re
import reprlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import psycopg2
import psycopg2.extensions

__all__ = [
    "NotSupportedError",
    "ShardInfo",
    "describe_dsn",
    "dsn_secrets",
    "redact",
    "refuse",
    "shard_error",
    "shown",
]


_SHORT = reprlib.Repr()
_SHORT.maxstring = 40
_SHORT.maxother = 40


def shown(value: Any) -> str:
    """``repr(value)`` cut short, for a value quoted in an error message."""
    return _SHORT.repr(value)


class NotSupportedError(psycopg2.NotSupportedError):
    """A statement this library cannot answer exactly across shards."""


def refuse(construct: str) -> NotSupportedError:
    """The error for a statement whose answer would be wrong if merged: the construct, the way out."""
    return NotSupportedError(
        f"{construct} cannot be merged exactly across shards; if the statement is "
        'shard-local, run it with cursor(merge="union") to get the plain union of the shards\' rows'
    )


def refuse_write(construct: str) -> NotSupportedError:
    """The error for a write the shards cannot do as one database would: refused before it runs."""
    return NotSupportedError(
        f"{construct}: refused before anything was written (on each shard's own connection, "
        "pdb.connections[i], a write touches that shard only)"
    )


def as_write_refusal(exc: NotSupportedError) -> NotSupportedError:
    """A refusal raised by the reading checks, worded for the write they were checking."""
    text = str(exc)
    suffix = refuse("").args[0]
    if text.endswith(suffix):
        return refuse_write(text[: -len(suffix)].rstrip())
    return exc


@dataclass(frozen=True)
class ShardInfo:
    """Where a shard lives: enough to name it in an error, never its password."""

    index: int
    host: str | None = None
    port: str | None = None
    dbname: str | None = None

    def __str__(self) -> str:
        where = f"{self.host or 'local'}:{self.port or 5432}/{self.dbname or '?'}"
        return f"shard {self.index} ({where})"

    @classmethod
    def from_connection(cls, index: int, conn: Any) -> ShardInfo:
        try:
            params = conn.get_dsn_parameters()
        except Exception:
            params = {}
        return cls(index, params.get("host"), params.get("port"), params.get("dbname"))

    @classmethod
    def from_dsn(cls, index: int, dsn: str, **kwargs: Any) -> ShardInfo:
        params = describe_dsn(dsn, index=index, **kwargs)
        return cls(index, params.get("host"), params.get("port"), params.get("dbname"))


_PASSWORD_KV = re.compile(r"""password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)""", re.IGNORECASE)
_PASSWORD_URI = re.compile(r"^[a-z]+://[^:/@?#]*:([^@/?#]*)@", re.IGNORECASE)
_PASSWORD_QUERY = re.compile(r"[?&]password=([^&#]*)", re.IGNORECASE)
_QUOTED = re.compile(r'"([^"]*)"')
_SAFE_WORDS = {"=", "", "host", "hostaddr", "port", "dbname", "user", "sslmode", "options"}


def dsn_secrets(dsn: str | None, extra: Iterable[str | None] = ()) -> set[str]:
    """Every password-like value in ``dsn`` (parsed leniently, even if invalid)."""
    found: set[str] = {s for s in extra if s}
    if dsn:
        for match in _PASSWORD_KV.finditer(dsn):
            found.add(match.group(1))
            found.add(match.group(1).strip("'").replace("\\'", "'"))
        for pattern in (_PASSWORD_URI, _PASSWORD_QUERY):
            for match in pattern.finditer(dsn):
                found.add(match.group(1))
                found.add(unquote(match.group(1)))
    return {s for s in found if s}


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def describe_dsn(dsn: str, *, index: int | None = None, **kwargs: Any) -> dict[str, str]:
    """The DSN's parameters (merged with ``kwargs``) without the password.

    A DSN that does not parse raises ``ProgrammingError`` whose message names
    the shard but quotes none of the DSN's words.
    """
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
        failure = None
    except psycopg2.ProgrammingError as exc:
        failure = str(exc).strip()
    if failure is not None:
        # Raised outside the except block, so the original (which may quote
        # the password) is not even kept as __context__.
        reason = _QUOTED.sub(
            lambda m: f'"{m.group(1)}"' if m.group(1).lower() in _SAFE_WORDS else '"***"', failure
        )
        reason = redact(reason, dsn_secrets(dsn))
        where = f"shard {index}: " if index is not None else ""
        raise psycopg2.ProgrammingError(
            f"{where}{reason} (the DSN itself is not shown; check its quoting and key=value pairs)"
        )
    params.update({k: str(v) for k, v in kwargs.items() if v is not None})
    params.pop("password", None)
    return params


def shard_error(exc: BaseException, shard: ShardInfo, secrets: Iterable[str] = ()) -> BaseException:
    """``exc`` re-made as the same class, its message naming ``shard``.

    psycopg2 errors keep ``pgcode`` and ``pgerror`` (redacted). The original
    is not chained: its text may hold a password the new message hides.
    """
    if isinstance(exc, psycopg2.Error):
        message = redact(f"{shard}: {str(exc).strip()}", secrets)
        new = type(exc)(message)
        new.__setstate__(  # type: ignore[no-untyped-call]  # types-psycopg2: Error.__setstate__ is unannotated
            {
                "pgcode": exc.pgcode,
                "pgerror": redact(exc.pgerror, secrets) if exc.pgerror else exc.pgerror,
            }
        )
        new.shard = shard  # type: ignore[attr-defined]
        new.__suppress_context__ = True
        return new
    if hasattr(exc, "add_note"):
        exc.add_note(f"raised on {shard}")
    with contextlib.suppress(AttributeError):
        exc.shard = shard  # type: ignore[attr-defined]
    return exc
