"""COPY as PostgreSQL reads it: a statement's options (parsed with pglast), and text or CSV COPY
data cut into records, each with its shard key field, streamed chunk by chunk.

Pure: no connection. :func:`check_copy` is what the planner asks about a COPY sent through
``execute()``; :func:`split_records` is what ``copy_expert`` into a sharded table splits the
user's data with. Both follow PostgreSQL 15's ``ProcessCopyOptions``, ``CopyReadLineText`` and
``CopyReadAttributesText`` / ``CopyReadAttributesCSV`` rule by rule, so every record lands where
one database holding every row would have read it, or the data is refused as it would refuse it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, cast

import pglast
import psycopg2
import psycopg2.errors
import psycopg2.extensions
from pglast import ast

from .errors import NotSupportedError

__all__ = [
    "ASCII_UNSAFE_CODECS",
    "CopyOptions",
    "CopySpec",
    "KeyField",
    "Record",
    "copy_spec",
    "parse_copy",
    "python_codec",
    "read_options",
    "split_batches",
    "split_records",
]

Format = Literal["text", "csv", "binary"]
Header = Literal[False, True, "match"]
Columns = tuple[str, ...] | Literal["*"]


@dataclass(frozen=True)
class CopyOptions:
    """A COPY statement's options, with PostgreSQL's defaults filled in."""

    format: Format = "text"
    delimiter: str = "\t"
    null: str = "\\N"
    header: Header = False
    quote: str = '"'
    escape: str = '"'
    force_quote: Columns = ()
    force_not_null: Columns = ()
    force_null: Columns = ()
    encoding: str | None = None
    """The ENCODING option as written (None: the client encoding)."""
    freeze: bool = False

    @property
    def csv(self) -> bool:
        return self.format == "csv"


@dataclass(frozen=True)
class CopySpec:
    """One COPY statement: which way, what table or query, to or from where, and its options."""

    stmt: ast.CopyStmt
    is_from: bool
    relation: ast.RangeVar | None
    query: ast.Node | None
    columns: tuple[str, ...] | None
    """The column list as the parser folded it (None: every column)."""
    source: Literal["stdio", "file", "program"]
    options: CopyOptions

    @property
    def shown(self) -> str:
        """The table as written, or ``(query)``."""
        if self.relation is None:
            return "(query)"
        schema = self.relation.schemaname
        return f"{schema}.{self.relation.relname}" if schema else str(self.relation.relname)


def parse_copy(sql: str) -> CopySpec:
    """The COPY statement ``sql`` holds (ProgrammingError if it holds anything else)."""
    try:
        statements = pglast.parse_sql(sql)
    except pglast.parser.ParseError as exc:
        raise psycopg2.errors.SyntaxError(str(exc)) from None
    if len(statements) != 1 or not isinstance(statements[0].stmt, ast.CopyStmt):
        raise psycopg2.ProgrammingError("copy_expert() takes one COPY statement")
    return copy_spec(statements[0].stmt)


def copy_spec(stmt: ast.CopyStmt) -> CopySpec:
    """What ``stmt`` says, its options checked as PostgreSQL checks them."""
    is_from = bool(stmt.is_from)
    source: Literal["stdio", "file", "program"] = (
        "program" if stmt.is_program else "stdio" if stmt.filename is None else "file"
    )
    columns = tuple(_string(c) for c in stmt.attlist) if stmt.attlist else None
    return CopySpec(
        stmt, is_from, stmt.relation, stmt.query, columns, source, read_options(stmt.options, is_from)
    )


def _string(node: Any) -> str:
    """``defGetString``: an option's argument as text."""
    if isinstance(node, ast.String):
        return str(node.sval)
    if isinstance(node, ast.Integer):
        return str(node.ival)
    if isinstance(node, ast.Float):
        return str(node.fval)
    if isinstance(node, ast.Boolean):
        return "true" if node.boolval else "false"
    if isinstance(node, ast.A_Star):
        return "*"
    raise psycopg2.errors.SyntaxError(f"a COPY option takes a value, not {type(node).__name__}")


def _boolean(name: str, arg: Any) -> bool:
    """``defGetBoolean``."""
    if arg is None:
        return True
    if isinstance(arg, ast.Integer) and arg.ival in (0, 1):
        return bool(arg.ival)
    text = _string(arg).lower()
    if text in ("true", "on"):
        return True
    if text in ("false", "off"):
        return False
    raise psycopg2.errors.SyntaxError(f"{name} requires a Boolean value")


def _header(arg: Any, is_from: bool) -> Header:
    """``defGetCopyHeaderChoice``: true, false or match."""
    if arg is None:
        return True
    if isinstance(arg, ast.Integer):
        if arg.ival in (0, 1):
            return bool(arg.ival)
    else:
        text = _string(arg).lower()
        if text in ("true", "on"):
            return True
        if text in ("false", "off"):
            return False
        if text == "match":
            if not is_from:
                raise psycopg2.errors.FeatureNotSupported('cannot use "match" with HEADER in COPY TO')
            return "match"
    raise psycopg2.errors.SyntaxError('header requires a Boolean value or "match"')


def _columns(name: str, arg: Any, *, star: bool) -> Columns:
    if star and isinstance(arg, ast.A_Star):
        return "*"
    if isinstance(arg, (tuple, list)):
        return tuple(_string(c) for c in arg)
    raise psycopg2.errors.InvalidParameterValue(f'argument to option "{name}" must be a list of column names')


_OPTIONS = (
    "format", "freeze", "delimiter", "null", "header", "quote", "escape",
    "force_quote", "force_not_null", "force_null", "encoding",
)  # fmt: skip


def read_options(options: Iterable[ast.DefElem] | None, is_from: bool) -> CopyOptions:
    """``ProcessCopyOptions``: the options, checked, with the format's defaults filled in.

    Options PostgreSQL 15 does not know (ON_ERROR, DEFAULT, ...) are refused: how they change
    which rows are read is not modelled here.
    """
    given: dict[str, Any] = {}
    for option in options or ():
        name = str(option.defname)
        if name not in _OPTIONS:
            raise NotSupportedError(
                f'the COPY option "{name}" through the connection (only PostgreSQL 15\'s options are read '
                "here); run it on the shard's own connection (pdb.connections[i])"
            )
        if name in given:
            raise psycopg2.errors.SyntaxError("conflicting or redundant options")
        given[name] = option.arg
    fmt = _string(given["format"]) if "format" in given else "text"
    if fmt not in ("text", "csv", "binary"):
        raise psycopg2.errors.InvalidParameterValue(f'COPY format "{fmt}" not recognized')
    csv, binary = fmt == "csv", fmt == "binary"
    if binary and "delimiter" in given:
        raise psycopg2.errors.SyntaxError("cannot specify DELIMITER in BINARY mode")
    if binary and "null" in given:
        raise psycopg2.errors.SyntaxError("cannot specify NULL in BINARY mode")
    delimiter = _string(given["delimiter"]) if "delimiter" in given else "," if csv else "\t"
    null = _string(given["null"]) if "null" in given else "" if csv else "\\N"
    header = _header(given["header"], is_from) if "header" in given else False
    quote = _string(given["quote"]) if "quote" in given else None
    escape = _string(given["escape"]) if "escape" in given else None
    force_quote = _columns("force_quote", given["force_quote"], star=True) if "force_quote" in given else ()
    force_not_null: Columns = ()
    force_null: Columns = ()
    if "force_not_null" in given:
        force_not_null = _columns("force_not_null", given["force_not_null"], star=True)
    if "force_null" in given:
        force_null = _columns("force_null", given["force_null"], star=True)
    encoding = _string(given["encoding"]) if "encoding" in given else None
    freeze = _boolean("freeze", given["freeze"]) if "freeze" in given else False

    if len(delimiter.encode()) != 1:
        raise psycopg2.errors.FeatureNotSupported("COPY delimiter must be a single one-byte character")
    if delimiter in "\r\n":
        raise psycopg2.errors.InvalidParameterValue("COPY delimiter cannot be newline or carriage return")
    if "\r" in null or "\n" in null:
        raise psycopg2.errors.InvalidParameterValue(
            "COPY null representation cannot use newline or carriage return"
        )
    if not csv and delimiter in "\\.abcdefghijklmnopqrstuvwxyz0123456789":
        raise psycopg2.errors.InvalidParameterValue(f'COPY delimiter cannot be "{delimiter}"')
    if binary and header:
        raise psycopg2.errors.FeatureNotSupported("cannot specify HEADER in BINARY mode")
    if not csv and quote is not None:
        raise psycopg2.errors.FeatureNotSupported("COPY quote available only in CSV mode")
    quote = '"' if quote is None else quote
    if csv and len(quote.encode()) != 1:
        raise psycopg2.errors.FeatureNotSupported("COPY quote must be a single one-byte character")
    if csv and delimiter == quote:
        raise psycopg2.errors.InvalidParameterValue("COPY delimiter and quote must be different")
    if not csv and escape is not None:
        raise psycopg2.errors.FeatureNotSupported("COPY escape available only in CSV mode")
    escape = quote if escape is None else escape
    if csv and len(escape.encode()) != 1:
        raise psycopg2.errors.FeatureNotSupported("COPY escape must be a single one-byte character")
    for name, value, direction in (
        ("force quote", force_quote, "TO"),
        ("force not null", force_not_null, "FROM"),
        ("force null", force_null, "FROM"),
    ):
        if value and not csv:
            raise psycopg2.errors.FeatureNotSupported(f"COPY {name} available only in CSV mode")
        if value and is_from != (direction == "FROM"):
            raise psycopg2.errors.FeatureNotSupported(f"COPY {name} only available using COPY {direction}")
    if delimiter in null:
        raise psycopg2.errors.InvalidParameterValue(
            "COPY delimiter must not appear in the NULL specification"
        )
    if csv and quote in null:
        raise psycopg2.errors.InvalidParameterValue(
            "CSV quote character must not appear in the NULL specification"
        )
    return CopyOptions(
        cast(Format, fmt),
        delimiter,
        null,
        header,
        quote,
        escape,
        force_quote,
        force_not_null,
        force_null,
        encoding,
        freeze,
    )


# -- encodings --------------------------------------------------------------------------------------


def _normalized(name: str) -> str:
    """An encoding name as PostgreSQL's ``clean_encoding_name`` compares it (letters and digits)."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


_PG_ENCODINGS = {_normalized(name): codec for name, codec in psycopg2.extensions.encodings.items()}

ASCII_UNSAFE_CODECS = frozenset(
    {"cp932", "shift_jis_2004", "big5", "cp950", "gbk", "gb18030", "cp949", "johab"}
)
"""Python codecs of the client encodings whose multi-byte characters can hold ASCII bytes (SJIS,
SHIFT_JIS_2004, BIG5, GBK, GB18030, UHC, JOHAB): a quote or backslash byte may be half a character."""


def python_codec(encoding: str) -> str:
    """The Python codec of a PostgreSQL encoding name, refusing those that hide ASCII bytes."""
    codec = _PG_ENCODINGS.get(_normalized(encoding))
    if not codec:
        raise NotSupportedError(
            f"COPY data in the encoding {encoding} through the connection (Python has no codec for it); "
            "convert it to UTF8 first"
        )
    if codec in ASCII_UNSAFE_CODECS:
        raise NotSupportedError(
            f"COPY data in the encoding {encoding} into a sharded table: its multi-byte characters "
            "can hold bytes that look like quotes, backslashes or delimiters, so its rows are not split "
            "here; convert the data to UTF8 (or say ENCODING 'UTF8' for UTF-8 data)"
        )
    return codec


# -- the planner's question -------------------------------------------------------------------------


# -- the data ---------------------------------------------------------------------------------------


class Record(NamedTuple):
    """One record of COPY data: its bytes (line end included) and its shard key field."""

    data: bytes
    key: str | None
    """The key field's text as the column's input function gets it; None for NULL (or no key)."""
    line: int
    """The line PostgreSQL's error context would name for it."""
    header: bool = False


@dataclass(frozen=True)
class KeyField:
    """Which field of each record is the shard key (0-based), and the column's name for errors."""

    index: int
    name: str


_UNKNOWN, _NL, _CR, _CRNL = 0, 1, 2, 3
_LF_B, _CR_B, _BACKSLASH, _DOT = 0x0A, 0x0D, 0x5C, 0x2E
_EOL = {_NL: b"\n", _CR: b"\r", _CRNL: b"\r\n"}
_TEXT_SPECIAL = re.compile(rb"[\\\r\n]")
_TEXT_ESCAPE = re.compile(rb"\\([0-7]{1,3}|x[0-9A-Fa-f]{1,2}|.)", re.DOTALL)
_TEXT_LETTERS = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


_TEXT_STOPS = {
    _NL: re.compile(rb"\\[.\r\n]|\r"),
    _CR: re.compile(rb"\\[.\r\n]|\n"),
    _CRNL: re.compile(rb"\\[.\r\n]|\r(?!\n)|(?<!\r)\n"),
}
"""Where text-format lines stop being plain: a backslash before a dot or a line end, a line end of
another style."""


def _csv_stops(quote: bytes) -> dict[int, re.Pattern[bytes]]:
    """Where CSV lines stop being plain: a quote, ``\\.``, a line end of another style."""
    return {
        _NL: re.compile(quote + rb"|\\\.|\r"),
        _CR: re.compile(quote + rb"|\\\.|\n"),
        _CRNL: re.compile(quote + rb"|\\\.|\r(?!\n)|(?<!\r)\n"),
    }


def _unescape(match: re.Match[bytes]) -> bytes:
    """One backslash sequence of a text-format field, as CopyReadAttributesText reads it."""
    seq = match.group(1)
    first = seq[:1]
    if first in b"01234567":  # (never empty: the pattern reads one byte at least)
        return bytes([int(seq, 8) & 0xFF])
    if first == b"x" and len(seq) > 1:
        return bytes([int(seq[1:], 16)])
    return _TEXT_LETTERS.get(seq, seq)


def _bad(message: str, hint: str | None, context: str) -> psycopg2.Error:
    text = message + (f"\nHINT:  {hint}" if hint else "") + f"\nCONTEXT:  {context}"
    return psycopg2.errors.BadCopyFileFormat(text)


class _Splitter:
    """The state of one COPY FROM's data: the buffer, the line end style, the line count."""

    def __init__(
        self,
        chunks: Iterable[bytes],
        options: CopyOptions,
        key: KeyField | None,
        table: str,
        encoding: str,
        server_encoding: str,
    ) -> None:
        if options.format == "binary":
            raise NotSupportedError("splitting binary COPY data by key")
        self.chunks = iter(chunks)
        self.options = options
        self.key = key
        self.table = table
        self.encoding = encoding
        self.server_encoding = server_encoding
        self.buf = bytearray()
        self.start = 0
        self.eof = False
        self.done = False
        self.eol = _UNKNOWN
        self.line = 0
        self.in_header = False
        """The line being read is the header (PostgreSQL reads its fields only for HEADER MATCH)."""
        self.csv = options.csv
        self.delim = options.delimiter.encode()
        self.null = _encoded(options.null, encoding)
        self.quote = options.quote.encode()[0]
        self.escape = options.escape.encode()[0]
        q, e = re.escape(options.quote.encode()), re.escape(options.escape.encode())
        self.csv_line = re.compile(b"[" + q + rb"\r\n]")
        self.csv_quoted = re.compile(b"[" + q + e + b"]")
        self.csv_plain = re.compile(b"[" + q + re.escape(self.delim) + b"]")
        self.text_field = re.compile(b"[\\\\" + re.escape(self.delim) + b"]")
        self.stops = _csv_stops(q) if self.csv else _TEXT_STOPS
        name = key.name if key is not None else ""
        self.force_not_null = options.force_not_null == "*" or name in options.force_not_null
        self.force_null = options.force_null == "*" or name in options.force_null

    # -- buffering ---------------------------------------------------------------------------------

    def fill(self) -> int:
        """Read the next chunk (or reach the end); the offset every position moved by."""
        shift = self.start
        if shift:
            del self.buf[:shift]
            self.start = 0
        for chunk in self.chunks:
            if chunk:
                self.buf += chunk
                return shift
        self.eof = True
        return shift

    def context(self) -> str:
        return f"COPY {self.table}, line {self.line}"

    def bad(self, message: str, hint: str | None = None) -> psycopg2.Error:
        return _bad(message, hint, self.context())

    # -- records -----------------------------------------------------------------------------------

    def batches(self) -> Iterator[list[Record]]:
        """The records, a buffer's worth at a time: plain lines in bulk, the others one by one."""
        read_line = self.csv_line_read if self.csv else self.text_line_read
        self.in_header = self.options.header is not False
        key_of = self.key_of if self.key is not None else None
        while not self.done:
            batch: list[Record] = []
            if not self.in_header and self.eol != _UNKNOWN:
                line = self.line
                if key_of is not None and not self.csv:
                    batch = self.text_records(self.plain_lines(), line)
                    line += len(batch)
                else:
                    for record, content in self.plain_lines():
                        line += 1
                        batch.append(Record(record, None if key_of is None else key_of(content), line))
                self.line = line
            self.line += 1
            got = read_line()
            if got is not None:
                record, content = got
                if self.in_header:
                    self.in_header = False
                    batch.append(Record(record, None, self.line, True))
                else:
                    batch.append(Record(record, None if key_of is None else key_of(content), self.line))
            if batch:
                yield batch

    def text_records(self, lines: list[tuple[bytes, bytes]], line: int) -> list[Record]:
        """Plain text-format lines as records: a key field with no backslash and ASCII only is read
        in place (most are), any other by :meth:`key_of`."""
        assert self.key is not None
        index, delim, null, key_of = self.key.index, self.delim, self.null, self.key_of
        records: list[Record] = []
        for record, content in lines:
            line += 1
            parts = content.split(delim, index + 1)
            if len(parts) > index and b"\\" not in content and parts[index].isascii():
                raw = parts[index]
                records.append(Record(record, None if raw == null else raw.decode("ascii"), line))
            else:
                records.append(Record(record, key_of(content), line))
        return records

    def plain_lines(self) -> list[tuple[bytes, bytes]]:
        """The buffered whole lines, up to the first that needs care: its line ends are only the
        style's own, and it holds no quote (CSV), no backslash before a line end or a dot
        (text), no ``\\.``. Each line: (its bytes, its content)."""
        buf, start = self.buf, self.start
        eol = _EOL[self.eol]
        last = _CR_B if self.eol == _CR else _LF_B
        end = buf.rfind(last, start) + 1
        if end <= start:
            return []
        trouble = self.stops[self.eol].search(buf, start, end)
        if trouble is not None:
            end = buf.rfind(last, start, trouble.start()) + 1
            if end <= start:
                return []
        region = bytes(buf[start:end])
        self.start = end
        lines = region.split(eol)
        lines.pop()  # what follows the last line end: nothing
        return [(line + eol, line) for line in lines]

    def take(self, content_end: int, end: int) -> tuple[bytes, bytes]:
        buf, start = self.buf, self.start
        record = bytes(buf[start:end])
        self.start = end
        return record, record[: content_end - start]

    def last(self) -> tuple[bytes, bytes] | None:
        """At the end of the data: what is left is the last line (without a line end)."""
        self.done = True
        if self.start >= len(self.buf):
            return None
        return self.take(len(self.buf), len(self.buf))

    def byte_at(self, pos: int) -> tuple[int, int]:
        """(the byte at ``pos``, or 0 past the end of the data; ``pos`` after any refill)."""
        while pos >= len(self.buf) and not self.eof:
            pos -= self.fill()
        return (self.buf[pos] if pos < len(self.buf) else 0), pos

    def line_end(self, p: int, quoted_hint: bool) -> tuple[bytes, bytes]:
        """The line ends at the CR or LF at ``p``: check it against the style the first line set."""
        what = "unquoted" if quoted_hint else "literal"
        if self.buf[p] == _CR_B:
            hint = (
                "Use quoted CSV field to represent carriage return."
                if quoted_hint
                else ('Use "\\r" to represent carriage return.')
            )
            if self.eol in (_UNKNOWN, _CRNL):
                nxt, q = self.byte_at(p + 1)
                p = q - 1
                if nxt == _LF_B:
                    self.eol = _CRNL
                    return self.take(p, p + 2)
                if self.eol == _CRNL:
                    raise self.bad(f"{what} carriage return found in data", hint)
                self.eol = _CR
            elif self.eol == _NL:
                raise self.bad(f"{what} carriage return found in data", hint)
            return self.take(p, p + 1)
        if self.eol in (_CR, _CRNL):
            hint = (
                "Use quoted CSV field to represent newline."
                if quoted_hint
                else 'Use "\\n" to represent newline.'
            )
            raise self.bad(f"{what} newline found in data", hint)
        self.eol = _NL
        return self.take(p, p + 1)

    def marker(self, p: int) -> tuple[bool, int]:
        """``\\.`` at ``p``: (True if it ends the data, else False; ``p`` after any refill).

        Text data: a marker not followed by a line end of the data's style is an error; CSV
        data: it is data (``\\.`` can be a CSV value), unless the line end is of another style.
        """
        q = p + 2
        if self.eol == _CRNL:
            c2, q = self.byte_at(q)
            p = q - 2
            if c2 == _LF_B:
                if self.csv:
                    return False, p
                raise self.bad("end-of-copy marker does not match previous newline style")
            if c2 != _CR_B:
                if self.csv:
                    return False, p
                raise self.bad("end-of-copy marker corrupt")
            q += 1
        c2, q2 = self.byte_at(q)
        p -= q - q2
        if c2 not in (_CR_B, _LF_B):
            if self.csv:
                return False, p
            raise self.bad("end-of-copy marker corrupt")
        if (self.eol in (_NL, _CRNL) and c2 != _LF_B) or (self.eol == _CR and c2 != _CR_B):
            raise self.bad("end-of-copy marker does not match previous newline style")
        return True, p

    def text_line_read(self) -> tuple[bytes, bytes] | None:
        """The next line of text-format data: (its bytes, its content without the line end)."""
        buf = self.buf
        pos = self.start
        search = _TEXT_SPECIAL.search
        while True:
            match = search(buf, pos)
            if match is None:
                if self.eof:
                    return self.last()
                pos = len(buf) - self.fill()
                continue
            p = match.start()
            c = buf[p]
            if c == _BACKSLASH:
                nxt, q = self.byte_at(p + 1)
                p = q - 1
                if q >= len(buf):
                    return self.last()  # a backslash just before the end of the data is data
                if nxt == _DOT:
                    _, p = self.marker(p)  # text data: the marker ends it, or is an error
                    self.done = True
                    return self.take(p, p) if p > self.start else None
                pos = p + 2
                continue
            return self.line_end(p, quoted_hint=False)

    def csv_line_read(self) -> tuple[bytes, bytes] | None:
        """The next line of CSV data: quoted fields may span line ends."""
        buf = self.buf
        if self.start >= len(buf):
            self.fill()
            if self.start >= len(buf):
                self.done = True
                return None
        pos = self.start
        in_quote = False
        if buf[pos] == _BACKSLASH:
            # PostgreSQL sees the quote first: a backslash quote opens a quoted field.
            in_quote = self.quote == _BACKSLASH
            nxt, q = self.byte_at(pos + 1)
            pos = q - 1
            if q >= len(buf):
                if in_quote and not self.in_header:
                    raise self.bad("unterminated CSV quoted field")
                return self.last()
            if nxt == _DOT:
                ended, pos = self.marker(pos)
                if ended:
                    self.done = True
                    return None
            pos += 1
        line_search, quoted_search = self.csv_line.search, self.csv_quoted.search
        quote, escape = self.quote, self.escape
        while True:
            if in_quote:
                match = quoted_search(buf, pos)
                end = len(buf) if match is None else match.start()
                self.line += buf.count(b"\n" if self.eol == _NL else b"\r", pos, end)
                if match is None:
                    if self.eof:
                        if not self.in_header:
                            raise self.bad("unterminated CSV quoted field")
                        return self.last()
                    pos = len(buf) - self.fill()
                    continue
                p = end
                if buf[p] == escape:
                    nxt, q = self.byte_at(p + 1)
                    p = q - 1
                    if q < len(buf) and nxt in (quote, escape):
                        pos = p + 2
                        continue
                    if buf[p] != quote:
                        pos = p + 1
                        continue
                in_quote = False
                pos = p + 1
                continue
            match = line_search(buf, pos)
            if match is None:
                if self.eof:
                    return self.last()
                pos = len(buf) - self.fill()
                continue
            p = match.start()
            if buf[p] == quote:
                in_quote = True
                pos = p + 1
                continue
            return self.line_end(p, quoted_hint=True)

    # -- the key field -----------------------------------------------------------------------------

    def key_of(self, content: bytes) -> str | None:
        assert self.key is not None
        if self.csv:
            raw, value, quoted = self.csv_field(content, self.key.index)
            text = None if not quoted and raw == self.null else self.decode(value, self.encoding)
            if text is None and self.force_not_null:
                text = self.options.null
            elif text is not None and self.force_null and text == self.options.null:
                text = None
            return text
        raw = self.text_raw(content, self.key.index)
        if raw == self.null:
            return None
        if raw.isascii() and b"\\" not in raw:
            return raw.decode("ascii")  # most keys: nothing to convert, unescape or check
        if self.encoding != self.server_encoding:
            raw = self.convert(raw)
        if b"\\" in raw:
            raw = _TEXT_ESCAPE.sub(_unescape, raw)
        return self.decode(raw, self.server_encoding)

    def missing(self) -> psycopg2.Error:
        assert self.key is not None
        return self.bad(f'missing data for column "{self.key.name}"')

    def text_raw(self, content: bytes, index: int) -> bytes:
        """Field ``index`` of a text-format line, escapes not yet read."""
        parts = content.split(self.delim, index + 1)
        if len(parts) > index and (
            b"\\" not in content or not any(b"\\" in part for part in parts[: index + 1])
        ):
            return parts[index]  # a backslash after the key field can't move its bounds
        if len(parts) <= index and b"\\" not in content:
            raise self.missing()
        search = self.text_field.search
        field = start = pos = 0
        n = len(content)
        while True:
            match = search(content, pos)
            if match is None:
                break
            p = match.start()
            if content[p] == _BACKSLASH:
                if p + 1 >= n:
                    n = p  # a backslash ending the line is dropped, and not part of the raw field
                    break
                pos = p + 2
                continue
            if field == index:
                return content[start:p]
            field += 1
            start = pos = p + 1
        if field != index:
            raise self.missing()
        return content[start:n]

    def csv_field(self, content: bytes, index: int) -> tuple[bytes, bytes, bool]:
        """Field ``index`` of a CSV line: (its raw bytes, its value, whether it held a quote)."""
        quote, escape = self.quote, self.escape
        parts = content.split(self.delim, index + 1)
        if len(parts) > index and not any(quote in part for part in parts[: index + 1]):
            return parts[index], parts[index], False  # a quote after the key field can't move its bounds
        if len(parts) <= index and quote not in content:
            raise self.missing()
        plain, quoted = self.csv_plain.search, self.csv_quoted.search
        n = len(content)
        pos = field = 0
        while True:
            start, saw_quote = pos, False
            out = bytearray()
            wanted = field == index
            while True:
                match = plain(content, pos)
                p = n if match is None else match.start()
                if wanted:
                    out += content[pos:p]
                if match is None or content[p] != quote:
                    break
                saw_quote, pos = True, p + 1
                while True:
                    inner = quoted(content, pos)
                    if inner is None:
                        raise self.bad("unterminated CSV quoted field")
                    q = inner.start()
                    if wanted:
                        out += content[pos:q]
                    if content[q] == escape and q + 1 < n and content[q + 1] in (escape, quote):
                        if wanted:
                            out.append(content[q + 1])
                        pos = q + 2
                        continue
                    pos = q + 1
                    if content[q] == quote:
                        break
                    if wanted:
                        out.append(content[q])
            if wanted:
                return content[start:p], bytes(out), saw_quote
            if match is None:
                raise self.missing()
            field, pos = field + 1, p + 1

    def convert(self, raw: bytes) -> bytes:
        """Bytes of the data's encoding in the server's, as PostgreSQL converts each line."""
        return self.decode(raw, self.encoding).encode(self.server_encoding)

    def decode(self, raw: bytes, encoding: str) -> str:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError as exc:
            bad = raw[exc.start : exc.start + 2].hex(" ", 1)
            raise psycopg2.errors.CharacterNotInRepertoire(
                f"invalid byte sequence for encoding {encoding}: 0x{bad}\nCONTEXT:  {self.context()}"
            ) from None


def _encoded(text: str, encoding: str) -> bytes | None:
    """The NULL marker as the data's bytes (None: the data can't hold it, so nothing matches it)."""
    try:
        return text.encode(encoding)
    except UnicodeEncodeError:
        return None


def split_records(
    chunks: Iterable[bytes],
    options: CopyOptions,
    key: KeyField | None,
    *,
    table: str,
    encoding: str = "utf_8",
    server_encoding: str = "utf_8",
) -> Iterator[Record]:
    """The records of text or CSV COPY data read from ``chunks``, as COPY FROM reads them.

    Each record's bytes are exactly the input's (line end included; the last line may have
    none), so a shard given them reads what one database would; the data ends at its end or
    at the ``\\.`` end marker. ``key`` says which field to read (None: read none). Malformed
    line structure raises PostgreSQL's own error (BadCopyFileFormat); ``encoding`` is the data's
    Python codec, ``server_encoding`` the one escapes like ``\\xE9`` produce bytes of.
    """
    splitter = _Splitter(chunks, options, key, table, encoding, server_encoding)
    return (record for batch in splitter.batches() for record in batch)


def split_batches(
    chunks: Iterable[bytes],
    options: CopyOptions,
    key: KeyField | None,
    *,
    table: str,
    encoding: str = "utf_8",
    server_encoding: str = "utf_8",
) -> Iterator[list[Record]]:
    """:func:`split_records`, a list of records at a time (faster to route)."""
    return _Splitter(chunks, options, key, table, encoding, server_encoding).batches()
