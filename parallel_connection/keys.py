"""A shard key value as the key column's type reads it: what the shard functions are given."""

from __future__ import annotations

import decimal
import uuid
from typing import Any

from .plan.layout import INTEGER_TYPES

__all__ = ["as_key"]

_TEXT_TYPES = frozenset({25, 1043, 1042})
"""text, varchar, char(n): keys that take Python strings (char(n) without its trailing spaces)."""
_UUID, _BYTEA = 2950, 17


def as_key(value: Any, key_type: int | None) -> Any:
    """A parameter or literal as the key column's type would read it (None: not sure).

    Integers as the column stores them (PostgreSQL rounds a numeric half away
    from zero; psycopg2 sends a float as a numeric literal), text as text, a uuid in any of its
    spellings as ``uuid.UUID``, bytea as bytes. A key of another type, or a
    value the column's type would not read alike, is None: the caller asks
    every shard, or refuses.
    """
    if isinstance(value, bool):
        return None
    if key_type in INTEGER_TYPES or (key_type is None and isinstance(value, int)):
        return _integer(value)
    if key_type in _TEXT_TYPES:
        if isinstance(value, (int, decimal.Decimal)):
            value = str(value)
        if not isinstance(value, str):
            return None
        return value.rstrip(" ") if key_type == 1042 else value
    if key_type == _UUID:
        if isinstance(value, uuid.UUID):
            return value
        try:
            return uuid.UUID(value.strip()) if isinstance(value, str) else None
        except ValueError:
            return None
    if key_type == _BYTEA:
        return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else None
    return value if key_type is None else None


def _integer(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value.to_integral_value(rounding=decimal.ROUND_HALF_UP))
    if isinstance(value, float):
        # psycopg2 sends a float as its repr, which PostgreSQL reads as a numeric literal.
        return (
            _integer(decimal.Decimal(repr(value))) if value == value and abs(value) != float("inf") else None
        )
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None
