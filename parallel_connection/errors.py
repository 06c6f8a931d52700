"""Shard-aware errors: name the shard, keep the DB-API class, never show a password."""

from __future__ import annotations

import contextlib
import re
import reprlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import psycopg2
import psycopg2.extensions

__all__ = [
    "NotSupportedError",
    "ShardInfo",
    "describe_dsn",
    "dsn_secrets",
    "redact",
    "refuse",
    "server_error",
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


# The lenient view, for DSNs libpq cannot parse: an unquoted value runs on over bare words that are
# not ``key=`` (``password=two words`` is a password with a space, written without its quotes).
_PASSWORD_KV = re.compile(
    r"""password\s*=\s*('(?:[^'\\]|\\.)*(?:'|$)|(?:\\.|\S)+(?:\s+(?![^\s=]+\s*=)[^\s=']+)*)""", re.IGNORECASE
)
_PASSWORD_QUERY = re.compile(r"[?&]password=([^&]*)", re.IGNORECASE)
_URI = re.compile(r"^postgres(?:ql)?://", re.IGNORECASE)
_KV_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_QUOTED = re.compile(r'"([^"]*)"')
_KEYWORD_SHAPED = re.compile(r"[A-Za-z_]{1,64}")
"""libpq's keywords are letters and underscores; a word of any other shape may be a value, so it is hidden."""
MIN_FRAGMENT = 3
"""Pieces of a password (split by libpq into other fields, or unquoted words) are hidden from this length."""


def dsn_secrets(dsn: str | None, extra: Iterable[str | None] = ()) -> set[str]:
    """Every form in which the DSN's password (and ``extra``) can appear in a message.

    The password is the one libpq reads (``parse_dsn``), plus what the DSN's
    text says it is (also when it does not parse): as written (quoted,
    percent-encoded), decoded, quoted for a DSN, and as ``repr`` shows it.
    """
    found: set[str] = set()
    for value in extra:
        if value:
            found |= _forms(value)
    if not dsn:
        return found
    try:
        parsed = psycopg2.extensions.parse_dsn(dsn).get("password")
    except psycopg2.ProgrammingError:
        parsed = None
    if parsed:
        found |= _forms(parsed)
    uri = _URI.match(dsn) is not None
    written = [m.group(1) for m in (_PASSWORD_QUERY if uri else _PASSWORD_KV).finditer(dsn)]
    intended = _uri_password(dsn)
    if intended is not None:
        written.append(intended)
        if unquote(intended) != parsed:
            # libpq read another password than the one written (an unencoded '@' or '/' in it):
            # the rest of it went into the host, port or dbname.
            pieces = re.split(r"[@/:]", intended) + re.split(r"[@/:]", unquote(intended))
            found |= {piece for piece in pieces if len(piece) >= MIN_FRAGMENT}
    for raw in written:
        found |= {raw} | _forms(unquote(raw)) | _forms(_kv_unescaped(raw))
        if not raw.startswith("'"):  # the words of an unquoted password with spaces, one by one
            found |= {word for word in raw.split() if len(word) >= MIN_FRAGMENT}
    return {s for s in found if s}


def _forms(value: str) -> set[str]:
    """``value`` as written in a DSN (quoted, escaped, percent-encoded), by repr, and in an SQL literal."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    literal = value.replace("'", "''")
    forms = {value, escaped, f"'{escaped}'", quote(value, safe=""), repr(value)[1:-1], literal}
    return forms | {literal.replace("\\", "\\\\")}


def _kv_unescaped(raw: str) -> str:
    """A key=value DSN's value as libpq reads it: quotes removed, backslash escapes resolved."""
    if raw.startswith("'"):
        raw = raw[1:-1] if len(raw) > 1 and raw.endswith("'") and not raw.endswith("\\'") else raw[1:]
    return _KV_ESCAPE.sub(r"\1", raw)


def _uri_password(dsn: str) -> str | None:
    """A URI's password as written: up to the last '@' before the query (libpq stops at the first)."""
    scheme = _URI.match(dsn)
    if scheme is None:
        return None
    rest = dsn[scheme.end() :]
    first = rest.find("@")
    if first < 0:
        return None
    query = rest.find("?", first)
    credentials = rest[: rest.rfind("@", 0, query if query >= 0 else len(rest))]
    _, colon, password = credentials.partition(":")
    return password if colon else None


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def describe_dsn(dsn: str, *, index: int | None = None, **kwargs: Any) -> dict[str, str]:
    """The DSN's parameters (merged with ``kwargs``) without the password, nor any piece of it.

    A DSN that does not parse raises ``ProgrammingError`` whose message names
    the shard and the keywords libpq names, but none of the DSN's values.
    """
    secrets = dsn_secrets(dsn, [kwargs.get("password")])
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
        failure = None
    except psycopg2.ProgrammingError as exc:
        failure = str(exc).strip()
    if failure is not None:
        # Raised outside the except block, so the original (which may quote
        # the password) is not even kept as __context__.
        reason = redact(_QUOTED.sub(_keyword_or_hidden, failure), secrets)
        where = f"shard {index}: " if index is not None else ""
        raise psycopg2.ProgrammingError(
            f"{where}{reason} (the DSN's values are not shown; check its quoting and key=value pairs)"
        )
    params.update({k: str(v) for k, v in kwargs.items() if v is not None})
    params.pop("password", None)
    return {key: redact(value, secrets) for key, value in params.items()}


def _keyword_or_hidden(match: re.Match[str]) -> str:
    """A word libpq quotes: shown if it is shaped like a keyword (keywords are never secret)."""
    word = match.group(1)
    return f'"{word}"' if word in ("", "=", "]") or _KEYWORD_SHAPED.fullmatch(word) else '"***"'


def server_error(cls: type[psycopg2.Error], pgcode: str, message: str) -> psycopg2.Error:
    """The error a server would raise (``cls``, ``pgcode``, its message), for one found before sending."""
    exc = cls(message + "\n")
    exc.__setstate__({"pgcode": pgcode, "pgerror": f"ERROR:  {message}\n"})  # type: ignore[no-untyped-call]
    return exc


_DIAG_FIELDS = (
    "column_name", "constraint_name", "context", "datatype_name", "internal_position", "internal_query",
    "message_detail", "message_hint", "message_primary", "schema_name", "severity", "severity_nonlocalized",
    "source_file", "source_function", "source_line", "sqlstate", "statement_position", "table_name",
)  # fmt: skip
"""What psycopg2's ``Diagnostics`` says of a server's error."""


def shard_error(exc: BaseException, shard: ShardInfo, secrets: Iterable[str] = ()) -> BaseException:
    """``exc`` as the caller should see it: its message naming ``shard``, no secret in it.

    A server's error is kept as the object psycopg2 raised (its class, ``diag``,
    ``cursor``: the shard's cursor, ``pgcode``, ``pgerror``: the server's own
    text), only its message rewritten. Any other psycopg2 error, or one whose
    fields hold a secret, is re-made as the same class with ``pgcode`` and a
    redacted ``pgerror`` but no ``diag``: its original text may hold a
    password, so it is not chained.
    """
    if getattr(exc, "shard", None) is not None:
        return exc  # named already (by a fan-out inside this one)
    if isinstance(exc, psycopg2.Error):
        secrets = set(secrets)
        message = redact(f"{shard}: {str(exc).strip()}", secrets)
        if _is_clean(exc, secrets):
            exc.args = (message,)
            same = exc
        else:
            same = type(exc)(message)
            same.__setstate__(  # type: ignore[no-untyped-call]  # types-psycopg2: unannotated
                {
                    "pgcode": exc.pgcode,
                    "pgerror": redact(exc.pgerror, secrets) if exc.pgerror else exc.pgerror,
                }
            )
        same.shard = shard  # type: ignore[attr-defined]
        same.__context__ = same.__cause__ = None
        same.__suppress_context__ = True
        return same
    if hasattr(exc, "add_note"):
        exc.add_note(f"raised on {shard}")
    with contextlib.suppress(AttributeError):
        exc.shard = shard  # type: ignore[attr-defined]
    return exc


def _is_clean(exc: psycopg2.Error, secrets: set[str]) -> bool:
    """``exc`` is a server's answer (its fields are in ``diag``) and neither they nor its text hold a
    secret: it can be shown as it is."""
    diag = exc.diag
    if diag.sqlstate is None:
        return False
    texts = [str(exc), exc.pgerror, *(getattr(diag, name, None) for name in _DIAG_FIELDS)]
    return all(not text or redact(text, secrets) == text for text in texts)
