"""Where rows live: sharded tables (key column and shard function), tables copied to every shard.

A :class:`Placement` is a plain value, loadable from TOML; :meth:`Placement.bind` pins its names to
the catalog's relations for the planner.
"""

from __future__ import annotations

import abc
import bisect
import itertools
import operator
import os
import re
import struct
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn, TypeAlias, Union, cast
from uuid import UUID

import psycopg2

from .errors import shown

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]

__all__ = [
    "BoundPlacement",
    "Custom",
    "Hash",
    "Modulo",
    "Placement",
    "Ranges",
    "ShardFunction",
    "ShardedTable",
    "parse_name",
    "quote_identifier",
]

FunctionLike: TypeAlias = Union["ShardFunction", str, Callable[[Any], int]]
ShardSpec: TypeAlias = Union[str, tuple[str], tuple[str, FunctionLike], "ShardedTable"]
Kind: TypeAlias = Literal["sharded", "copied"]
UNKNOWN_CHOICES = ("refuse", "sharded")


def _describe(key: Any) -> str:
    if isinstance(key, int) and not isinstance(key, bool) and key.bit_length() > 64:
        return f"an int of {key.bit_length()} bits"
    return f"{shown(key)} (type {type(key).__name__})"


def _unmappable(function: str, key: Any, need: str) -> NoReturn:
    raise psycopg2.DataError(f"the {function} shard function needs {need}; got {_describe(key)}")


_DECIMAL_DIGITS = 1000


def _integer(function: str, key: Any) -> int:
    """``key`` as a Python int, or DataError: ints and integral Decimals, never bool."""
    if type(key) is int:
        return key
    if isinstance(key, bool):
        _unmappable(function, key, "an integer key")
    if isinstance(key, Decimal):
        if key.is_finite() and key.adjusted() < _DECIMAL_DIGITS and key == key.to_integral_value():
            return int(key)
        _unmappable(function, key, f"an integer key (a Decimal of at most {_DECIMAL_DIGITS} digits)")
    try:
        return operator.index(key)
    except TypeError:
        _unmappable(function, key, "an integer key")


class ShardFunction(abc.ABC):
    """Maps a shard key to a shard index. Equal functions map every key the same way."""

    name: ClassVar[str]

    @abc.abstractmethod
    def shard_of(self, key: Any, shards: int) -> int:
        """The index in ``range(shards)`` of the shard holding ``key``; DataError if it has none."""


@dataclass(frozen=True)
class Modulo(ShardFunction):
    """``key mod shards`` on integer keys, with the mathematical (non-negative) result.

    PostgreSQL's ``%`` is negative for a negative key, so rows split with SQL ``key % n = i``
    put no negative key anywhere; this function puts ``-1`` on the last shard.
    """

    name: ClassVar[str] = "modulo"

    def shard_of(self, key: Any, shards: int) -> int:
        return _integer("modulo", key) % shards


_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_GOLDEN = 0x9E3779B9 + 3923095  # Jenkins' initial state, before adding the key length
_PARTITION_SEED = 0x7A5B22367996DCFD  # HASH_PARTITION_SEED, src/include/catalog/partition.h
_COMBINE = 0x49A0F4DD15E5A8E3  # hash_combine64(0, h) == h + this constant, modulo 2**64
_WORDS = struct.Struct("<3I")


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _M32
    a ^= ((c << 4) | (c >> 28)) & _M32
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= ((a << 6) | (a >> 26)) & _M32
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= ((b << 8) | (b >> 24)) & _M32
    b = (b + a) & _M32
    a = (a - c) & _M32
    a ^= ((c << 16) | (c >> 16)) & _M32
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= ((a << 19) | (a >> 13)) & _M32
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= ((b << 4) | (b >> 28)) & _M32
    b = (b + a) & _M32
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    """Jenkins' final mix; returns ``(b << 32) | c`` as the ``*_extended`` functions do."""
    c ^= b
    c = (c - (((b << 14) | (b >> 18)) & _M32)) & _M32
    a ^= c
    a = (a - (((c << 11) | (c >> 21)) & _M32)) & _M32
    b ^= a
    b = (b - (((a << 25) | (a >> 7)) & _M32)) & _M32
    c ^= b
    c = (c - (((b << 16) | (b >> 16)) & _M32)) & _M32
    a ^= c
    a = (a - (((c << 4) | (c >> 28)) & _M32)) & _M32
    b ^= a
    b = (b - (((a << 14) | (a >> 18)) & _M32)) & _M32
    c ^= b
    c = (c - (((b << 24) | (b >> 8)) & _M32)) & _M32
    return (b << 32) | c


def _seeded(length: int) -> tuple[int, int, int]:
    """The state of hash_bytes_extended after the partition seed, for a key of ``length`` bytes."""
    start = (_GOLDEN + length) & _M32
    return _mix((start + (_PARTITION_SEED >> 32)) & _M32, (start + (_PARTITION_SEED & _M32)) & _M32, start)


_A4, _B4, _C4 = _seeded(4)


def _hash_int8(value: int) -> int:
    """hashint8extended(value, HASH_PARTITION_SEED); int2 and int4 hash the same for equal values."""
    low = value & _M32
    high = (value >> 32) & _M32
    low ^= high if value >= 0 else high ^ _M32
    return _final((_A4 + low) & _M32, _B4, _C4)


def _hash_bytes(data: bytes) -> int:
    """hash_bytes_extended(data, HASH_PARTITION_SEED) as computed on a little-endian server."""
    length = len(data)
    a, b, c = _seeded(length)
    whole = length - length % 12
    for pos in range(0, whole, 12):
        x, y, z = _WORDS.unpack_from(data, pos)
        a, b, c = _mix((a + x) & _M32, (b + y) & _M32, (c + z) & _M32)
    if whole < length:
        x, y, z = _WORDS.unpack(data[whole:] + bytes(12 - length + whole))
        # The lowest byte of c is left for the length (already in the start state).
        a = (a + x) & _M32
        b = (b + y) & _M32
        c = (c + (z << 8)) & _M32
    return _final(a, b, c)


@dataclass(frozen=True)
class Hash(ShardFunction):
    """The shard that ``PARTITION BY HASH (key)`` with MODULUS = shards picks: REMAINDER = index.

    Keys: integers (smallint, integer and bigint hash alike for equal values; an integral Decimal
    hashes as its integer, not as numeric), ``str`` for text
    and varchar under a deterministic collation (the hash of its UTF-8 bytes, so a database whose
    encoding is not UTF8 only agrees on ASCII texts), ``bytes`` for bytea and ``uuid.UUID``.
    Text and bytea hashes are those of a little-endian server (x86-64, ARM64).
    """

    name: ClassVar[str] = "hash"

    def shard_of(self, key: Any, shards: int) -> int:
        if type(key) is str:
            if "\x00" in key:
                _unmappable("hash", key, "a text key without NUL characters")
            try:
                data = key.encode()
            except UnicodeEncodeError:
                _unmappable("hash", key, "a text key that UTF-8 can encode")
            h = _hash_bytes(data)
        elif isinstance(key, (bytes, bytearray, memoryview)):
            h = _hash_bytes(bytes(key))
        elif isinstance(key, UUID):
            h = _hash_bytes(key.bytes)
        else:
            value = _integer("hash", key)
            if not _INT64_MIN <= value <= _INT64_MAX:
                _unmappable("hash", key, "a key in bigint range")
            h = _hash_int8(value)
        return ((h + _COMBINE) & _M64) % shards


@dataclass(frozen=True)
class Ranges(ShardFunction):
    """Explicit key ranges: interval ``i`` is ``splits[i-1] <= key < splits[i]``, held by ``shards[i]``.

    ``Ranges((1000, 2000))`` puts keys below 1000 on shard 0, 1000 to 1999 on shard 1, the rest on
    shard 2. Splits are strictly increasing ints or strs (strs compare by code point).
    """

    name: ClassVar[str] = "ranges"
    splits: tuple[int, ...] | tuple[str, ...]
    shards: tuple[int, ...] | None = None
    _text: bool | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        splits = self.splits
        if isinstance(splits, (str, bytes)) or not isinstance(splits, Iterable):
            raise TypeError(
                f"Ranges splits must be a tuple of ints or strs, e.g. (1000, 2000); got {splits!r}"
            )
        values: tuple[Any, ...] = tuple(splits)
        kinds = {str if isinstance(s, str) else int if type(s) is int else None for s in values}
        if None in kinds or len(kinds) > 1:
            raise ValueError(f"Ranges splits must be all ints or all strs; got {values!r}")
        if any(x >= y for x, y in itertools.pairwise(values)):
            raise ValueError(f"Ranges splits must be strictly increasing; got {splits!r}")
        if self.shards is None:
            shards = tuple(range(len(splits) + 1))
        else:
            if isinstance(self.shards, (str, bytes)) or not isinstance(self.shards, Iterable):
                raise TypeError(f"Ranges shards must be a tuple of shard indexes; got {self.shards!r}")
            shards = tuple(self.shards)
            if any(type(s) is not int or s < 0 for s in shards):
                raise ValueError(f"Ranges shards must be shard indexes (ints >= 0); got {shards!r}")
            if len(shards) != len(splits) + 1:
                raise ValueError(
                    f"Ranges with {len(splits)} splits has {len(splits) + 1} intervals and needs as many "
                    f"shards; got {len(shards)}: {shards!r}"
                )
        object.__setattr__(self, "splits", values)
        object.__setattr__(self, "shards", shards)
        object.__setattr__(self, "_text", isinstance(values[0], str) if values else None)

    @property
    def intervals(self) -> tuple[int, ...]:
        """The shard index of each interval (``shards``, never None)."""
        assert self.shards is not None
        return self.shards

    def shard_of(self, key: Any, shards: int) -> int:
        if self._text is None:
            interval = 0 if isinstance(key, str) else 0 * _integer("ranges", key)
        elif self._text:
            if not isinstance(key, str):
                _unmappable("ranges", key, "a str key")
            interval = bisect.bisect_right(self.splits, key)
        else:
            interval = bisect.bisect_right(self.splits, _integer("ranges", key))
        index = self.intervals[interval]
        if index >= shards:
            raise psycopg2.DataError(
                f"the ranges shard function puts {_describe(key)} on shard {index}, "
                f"but there are only {shards} shards"
            )
        return index


@dataclass(frozen=True, eq=False)
class Custom(ShardFunction):
    """Any callable ``key -> shard index``; equal only to a Custom wrapping the same object."""

    name: ClassVar[str] = "custom"
    fn: Callable[[Any], int]

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"Custom needs a callable key -> shard index; got {_describe(self.fn)}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Custom) and other.fn is self.fn

    def __hash__(self) -> int:
        return id(self.fn)

    def shard_of(self, key: Any, shards: int) -> int:
        label = f"custom ({getattr(self.fn, '__qualname__', type(self.fn).__name__)})"
        try:
            index = self.fn(key)
        except Exception as exc:
            raise psycopg2.DataError(
                f"the {label} shard function failed on {_describe(key)}: {type(exc).__name__}: {exc}"
            ) from exc
        if type(index) is not int or not 0 <= index < shards:
            raise psycopg2.DataError(
                f"the {label} shard function returned {_describe(index)} for {_describe(key)}; "
                f"it must return an int in range({shards})"
            )
        return index


def _function_from(spec: FunctionLike) -> ShardFunction:
    if isinstance(spec, ShardFunction):
        return spec
    if isinstance(spec, str):
        if spec == "modulo":
            return Modulo()
        if spec == "hash":
            return Hash()
        if spec == "ranges":
            raise ValueError('function "ranges" needs splits: pass Ranges((1000, 2000)) instead of "ranges"')
        raise ValueError(f'unknown shard function {spec!r}: use "modulo", "hash", Ranges(...) or a callable')
    if isinstance(spec, type) and issubclass(spec, ShardFunction):
        raise TypeError(f"pass a shard function instance such as {spec.__name__}(...), not the class")
    if callable(spec):
        return Custom(cast(Callable[[Any], int], spec))
    raise TypeError(
        f"a shard function is a ShardFunction, 'modulo', 'hash' or a callable; got {_describe(spec)}"
    )


_UNQUOTED = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_NAMEDATALEN = 64


def _truncate(name: str) -> str:
    """PostgreSQL keeps the first NAMEDATALEN - 1 bytes of an identifier (whole UTF-8 characters)."""
    data = name.encode("utf-8", "surrogatepass")
    if len(data) < _NAMEDATALEN:
        return name
    return data[: _NAMEDATALEN - 1].decode("utf-8", "ignore")


def _identifiers(text: str) -> list[str]:
    """The dot-separated identifiers of ``text`` as SQL reads them; ValueError naming ``text``."""
    if not isinstance(text, str):
        raise TypeError(f"a table or column name is a str; got {_describe(text)}")
    parts: list[str] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos < end and text[pos] == '"':
            close = pos + 1
            chars: list[str] = []
            while True:
                close = text.find('"', close)
                if close < 0:
                    raise ValueError(f"unterminated quoted identifier in name {text!r}")
                if text.startswith('""', close):
                    chars.append(text[pos + 1 : close + 1])
                    pos = close + 1
                    close += 2
                    continue
                chars.append(text[pos + 1 : close])
                break
            part = "".join(chars)
            if not part:
                raise ValueError(f"empty quoted identifier in name {text!r}")
            parts.append(_truncate(part))
            pos = close + 1
        else:
            match = _UNQUOTED.match(text, pos)
            if match is None:
                what = "an empty part" if pos >= end or text[pos] == "." else f"unexpected {text[pos]!r}"
                raise ValueError(f"not a valid name: {text!r} has {what}")
            parts.append(_truncate(match.group().translate(_LOWER)))
            pos = match.end()
        while pos < end and text[pos].isspace():
            pos += 1
        if pos == end:
            return parts
        if text[pos] != ".":
            raise ValueError(f"not a valid name: {text!r} has unexpected {text[pos]!r}")
        pos += 1


def parse_name(text: str) -> tuple[str | None, str]:
    """``(schema, relation)`` of a table name as SQL reads it: ``public.Orders`` -> ("public", "orders")."""
    parts = _identifiers(text)
    if len(parts) > 2:
        raise ValueError(f"table name {text!r} has {len(parts)} parts; use table or schema.table")
    return (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _column(text: str) -> str:
    parts = _identifiers(text)
    if len(parts) != 1:
        raise ValueError(f"shard key {text!r} must be a single column name")
    return parts[0]


_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]*")


def quote_identifier(name: str) -> str:
    """``name`` as SQL text that reads back as ``name``."""
    if _PLAIN_IDENTIFIER.fullmatch(name):
        return name
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class ShardedTable:
    """A sharded table: its name as written, its key column and its shard function.

    ``name`` and ``key`` are read as SQL reads them. ``key`` is stored folded (``"CustomerId"``,
    quoted, keeps its case), so rebuild a table from :attr:`key_sql`, the key as SQL text: a key
    with capitals read again unquoted folds to another column.

    ``sequence`` names a sequence on the first shard that gives the keys of rows inserted without
    one (one ``nextval`` per row, read before the rows are placed): one counter for every shard.
    """

    name: str
    key: str
    function: ShardFunction = Modulo()
    sequence: str | None = None
    _parsed: tuple[str | None, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_parsed", parse_name(self.name))
        object.__setattr__(self, "key", _column(self.key))
        object.__setattr__(self, "function", _function_from(self.function))

    def __repr__(self) -> str:
        sequence = f", sequence={self.sequence!r}" if self.sequence is not None else ""
        return f"ShardedTable(name={self.name!r}, key={self.key_sql!r}, function={self.function!r}{sequence})"

    @property
    def schema(self) -> str | None:
        """The schema the name gives, or None for an unqualified name."""
        return self._parsed[0]

    @property
    def relname(self) -> str:
        """The relation's name as the catalog spells it."""
        return self._parsed[1]

    @property
    def key_sql(self) -> str:
        """The key column as SQL text (quoted when needed)."""
        return quote_identifier(self.key)


def _refuse_bare_string(value: object, argument: str, example: str) -> None:
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{argument}= takes a collection, not a single {type(value).__name__}: pass {example}"
        )


def _sharded_entry(name: str, spec: ShardSpec) -> ShardedTable:
    if isinstance(spec, ShardedTable):
        if parse_name(spec.name) != parse_name(name):
            raise ValueError(
                f"sharded={{{name!r}: ...}} holds a ShardedTable for another table, {spec.name!r}"
            )
        return spec
    if isinstance(spec, str):
        return ShardedTable(name, spec)
    if isinstance(spec, (tuple, list)) and len(spec) in (1, 2) and isinstance(spec[0], str):
        return ShardedTable(name, spec[0], _function_from(spec[1]) if len(spec) == 2 else Modulo())
    raise TypeError(
        f"sharded[{name!r}] must be a key column, (key, function) or a ShardedTable; got {_describe(spec)}"
    )


class Placement:
    """Which tables are sharded (key and shard function), which are copied whole, and the rest.

    ``unknown`` says what a table the placement does not name is: ``"refuse"`` (a statement reading
    it is refused) or ``"sharded"`` (every shard holds some of its rows).
    """

    __slots__ = ("_copied", "_sharded", "_unknown")
    _sharded: tuple[ShardedTable, ...]
    _copied: tuple[str, ...]
    _unknown: str

    def __init__(
        self,
        sharded: Mapping[str, ShardSpec] | Iterable[ShardedTable] = (),
        copied: Iterable[str] = (),
        unknown: str = "refuse",
    ) -> None:
        _refuse_bare_string(sharded, "sharded", "a mapping, e.g. sharded={'orders': 'customer_id'}")
        _refuse_bare_string(copied, "copied", "a list, e.g. copied=['cust']")
        if isinstance(sharded, Mapping):
            tables = tuple(_sharded_entry(name, spec) for name, spec in sharded.items())
        else:
            tables = tuple(sharded)
            for table in tables:
                if not isinstance(table, ShardedTable):
                    raise TypeError(
                        f"sharded= as a list holds ShardedTable values; got {_describe(table)}: "
                        "for a table and its key pass a mapping, e.g. sharded={'orders': 'customer_id'}"
                    )
        copies = tuple(copied)
        for name in copies:
            if not isinstance(name, str):
                raise TypeError(f"copied= holds table names (str); got {_describe(name)}")
        if unknown not in UNKNOWN_CHOICES:
            raise ValueError(f"unknown= must be 'refuse' or 'sharded'; got {unknown!r}")
        seen: dict[tuple[str | None, str], str] = {}
        for kind, name in [*(("sharded", t.name) for t in tables), *(("copied", n) for n in copies)]:
            parsed = parse_name(name)
            if parsed in seen:
                raise ValueError(f"table {name!r} is named twice: as {seen[parsed]} and as {kind} {name!r}")
            seen[parsed] = f"{kind} {name!r}"
        object.__setattr__(self, "_sharded", tables)
        object.__setattr__(self, "_copied", copies)
        object.__setattr__(self, "_unknown", unknown)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Placement is immutable; build a new one (tried to set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a Placement is immutable (tried to delete {name!r})")

    @property
    def sharded(self) -> tuple[ShardedTable, ...]:
        """The sharded tables, in the order given."""
        return self._sharded

    @property
    def copied(self) -> tuple[str, ...]:
        """The names of the tables copied whole to every shard, as given."""
        return self._copied

    @property
    def unknown(self) -> str:
        """What a table the placement does not name is: "refuse" or "sharded"."""
        return self._unknown

    def _identity(self) -> tuple[frozenset[ShardedTable], frozenset[str], str]:
        return frozenset(self._sharded), frozenset(self._copied), self._unknown

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Placement):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        sharded = ", ".join(f"{t.name!r}: ({t.key_sql!r}, {t.function!r})" for t in self._sharded)
        return f"Placement(sharded={{{sharded}}}, copied={list(self._copied)!r}, unknown={self._unknown!r})"

    @classmethod
    def copies_only(cls, tables: Iterable[str]) -> Placement:
        """Only copied tables, every other table read as sharded (``replicated_tables=``)."""
        return cls(copied=tables, unknown="sharded")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Placement:
        """A placement from the structure the TOML format describes (see :meth:`from_toml`)."""
        return _from_dict(data, "placement")

    @classmethod
    def from_toml(cls, text: str) -> Placement:
        """A placement from TOML text.

        Top-level ``unknown = "refuse"`` (or ``"sharded"``) and ``copied = ["customers"]``; one
        ``[sharded.orders]`` table per sharded table with ``key = "customer_id"`` and ``function =
        "modulo"`` (the default), ``"hash"``, or ``"ranges"`` with ``splits = [1000, 2000]`` and
        optionally ``shards = [2, 0, 1]``. Quote a schema-qualified name: ``[sharded."public.t"]``.
        """
        return _from_toml(text, "placement TOML")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Placement:
        """A placement from a TOML file (see :meth:`from_toml`)."""
        return _from_toml(Path(path).read_text(encoding="utf-8"), str(path))

    def to_toml(self) -> str:
        """This placement as TOML that :meth:`from_toml` reads back equal; ValueError for Custom."""
        lines = [f"unknown = {_toml_string(self._unknown)}"]
        lines.append(f"copied = [{', '.join(_toml_string(name) for name in self._copied)}]")
        for table in self._sharded:
            function = table.function
            if not isinstance(function, (Modulo, Hash, Ranges)):
                raise ValueError(
                    f"sharded table {table.name!r}: a {function.name} shard function can't be written as TOML"
                )
            lines += ["", f"[sharded.{_toml_key(table.name)}]", f"key = {_toml_string(table.key_sql)}"]
            lines.append(f"function = {_toml_string(function.name)}")
            if table.sequence is not None:
                lines.append(f"sequence = {_toml_string(table.sequence)}")
            if isinstance(function, Ranges):
                splits = ", ".join(_toml_string(s) if isinstance(s, str) else str(s) for s in function.splits)
                lines.append(f"splits = [{splits}]")
                if function.intervals != tuple(range(len(function.splits) + 1)):
                    lines.append(f"shards = [{', '.join(map(str, function.intervals))}]")
        return "\n".join(lines) + "\n"

    def check_shards(self, n: int) -> None:
        """ValueError if a shard function names a shard index that ``n`` shards don't have."""
        if type(n) is not int or n < 1:
            raise ValueError(f"a placement needs at least one shard; got {n!r}")
        for table in self._sharded:
            function = table.function
            if isinstance(function, Ranges) and max(function.intervals) >= n:
                raise ValueError(
                    f"sharded table {table.name!r} puts a key range on shard {max(function.intervals)}, "
                    f"but there are only {n} shards (0 to {n - 1})"
                )

    def bind(self, resolve: Callable[[str | None, str], tuple[str, str] | None]) -> BoundPlacement:
        """Pin each name to its relation: ``resolve(schema, name)`` is the catalog's (schema, name)."""
        sharded: dict[tuple[str, str], ShardedTable] = {}
        copied: set[tuple[str, str]] = set()
        given: dict[tuple[str, str], str] = {}
        unresolved: list[str] = []
        for kind, name, table in [
            *(("sharded", t.name, t) for t in self._sharded),
            *(("copied", n, None) for n in self._copied),
        ]:
            qualified = resolve(*parse_name(name))
            if qualified is None:
                unresolved.append(name)
                continue
            if qualified in given:
                raise ValueError(
                    f"{given[qualified]} and {kind} {name!r} are the same table, "
                    f"{quote_identifier(qualified[0])}.{quote_identifier(qualified[1])}: name it once"
                )
            given[qualified] = f"{kind} {name!r}"
            if table is None:
                copied.add(qualified)
            else:
                sharded[qualified] = table
        return BoundPlacement(
            types.MappingProxyType(sharded), frozenset(copied), self._unknown, tuple(unresolved)
        )


@dataclass(frozen=True)
class BoundPlacement:
    """A placement pinned to the catalog's relations, keyed by qualified ``(schema, name)``.

    ``unresolved`` holds the names that matched no relation (a later catalog refresh can bind them);
    :meth:`kind_of` reports only what the placement names: the caller applies ``unknown``.
    """

    sharded: Mapping[tuple[str, str], ShardedTable]
    copied: frozenset[tuple[str, str]]
    unknown: str
    unresolved: tuple[str, ...] = ()

    def __hash__(self) -> int:
        return hash((frozenset(self.sharded.items()), self.copied, self.unknown, self.unresolved))

    def kind_of(self, qualified: tuple[str, str]) -> Kind | None:
        """The kind of relation ``qualified`` is ("sharded" or "copied"), or None if not named."""
        if qualified in self.sharded:
            return "sharded"
        if qualified in self.copied:
            return "copied"
        return None

    def table(self, qualified: tuple[str, str]) -> ShardedTable | None:
        """The sharded table at ``qualified``, or None."""
        return self.sharded.get(qualified)


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_TOML_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_key(text: str) -> str:
    return text if _TOML_BARE_KEY.fullmatch(text) else _toml_string(text)


def _from_toml(text: str, where: str) -> Placement:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where}: not valid TOML: {exc}") from None
    return _from_dict(data, where)


_TABLE_KEYS = ("key", "function", "splits", "shards", "sequence")


def _from_dict(data: Mapping[str, Any], where: str) -> Placement:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a table of placement settings; got {_describe(data)}")
    for name in data:
        if name not in ("unknown", "copied", "sharded"):
            raise ValueError(f"{where}: unknown setting {name!r}; expected unknown, copied or sharded")
    unknown = data.get("unknown", "refuse")
    if unknown not in UNKNOWN_CHOICES:
        raise ValueError(f'{where}: unknown must be "refuse" or "sharded"; got {shown(unknown)}')
    copied = data.get("copied", [])
    if not isinstance(copied, list) or not all(isinstance(name, str) for name in copied):
        raise ValueError(f'{where}: copied must be a list of table names, e.g. copied = ["customers"]')
    sharded_data = data.get("sharded", {})
    if not isinstance(sharded_data, Mapping):
        raise ValueError(f"{where}: sharded must be a table of tables, e.g. [sharded.orders] with key = ...")
    tables = [_table_from_dict(where, name, entry) for name, entry in sharded_data.items()]
    try:
        return Placement(tables, copied, unknown)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _table_from_dict(where: str, name: str, entry: Any) -> ShardedTable:
    here = f"{where}: sharded table {name!r}"
    if isinstance(entry, str):
        entry = {"key": entry}
    if not isinstance(entry, Mapping):
        raise ValueError(f"{here}: expected a table with key = ...; got {_describe(entry)}")
    if "key" not in entry and entry and all(isinstance(v, Mapping) for v in entry.values()):
        inner = next(iter(entry))
        raise ValueError(
            f'{here} has no key; for a schema-qualified name quote it: [sharded."{name}.{inner}"]'
        )
    for setting in entry:
        if setting not in _TABLE_KEYS:
            raise ValueError(f"{here}: unknown setting {setting!r}; expected one of {', '.join(_TABLE_KEYS)}")
    if "key" not in entry:
        raise ValueError(f'{here}: missing key, the shard key column, e.g. key = "customer_id"')
    key = entry["key"]
    if not isinstance(key, str):
        raise ValueError(f"{here}: key must be a column name (a string); got {_describe(key)}")
    kind = entry.get("function", "modulo")
    function: ShardFunction
    try:
        if kind == "ranges":
            if "splits" not in entry:
                raise ValueError('function = "ranges" needs splits, e.g. splits = [1000, 2000]')
            splits, shards = entry["splits"], entry.get("shards")
            if not isinstance(splits, list) or (shards is not None and not isinstance(shards, list)):
                raise ValueError("splits and shards must be arrays, e.g. splits = [1000, 2000]")
            function = Ranges(tuple(splits), None if shards is None else tuple(shards))
        elif kind in ("modulo", "hash"):
            for setting in ("splits", "shards"):
                if setting in entry:
                    raise ValueError(f'{setting} is only for function = "ranges", not {kind!r}')
            function = _function_from(kind)
        else:
            raise ValueError(f'unknown function {shown(kind)}; expected "modulo", "hash" or "ranges"')
        sequence = entry.get("sequence")
        if sequence is not None and not isinstance(sequence, str):
            raise ValueError(f"sequence must be a sequence's name (a string); got {_describe(sequence)}")
        return ShardedTable(name, key, function, sequence)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{here}: {exc}") from None
