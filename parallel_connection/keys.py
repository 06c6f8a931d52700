"""A shard key value as the key column's type reads it: what the shard functions are given."""

from __future__ import annotations

import decimal
from typing import Any

from .plan.layout import INTEGER_TYPES

__all__ = ["as_key"]

_TEXT_TYPES = frozenset({25, 1043, 1042})
"""text, varchar, char(n): keys that take Python strings (char(n) without its trailing spaces)."""


def as_key(value: Any, key_type: int | None) -> Any:
    """A parameter or literal as the key column's type would read it (None: not sure)."""
    if isinstance(value, bool):
        return None
    if key_type in INTEGER_TYPES or (key_type is None and isinstance(value, int)):
        if isinstance(value, int):
            return value
        if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                return None
        return None
    if key_type in _TEXT_TYPES:
        if isinstance(value, (int, decimal.Decimal)):
            value = str(value)
        if not isinstance(value, str):
            return None
        return value.rstrip(" ") if key_type == 1042 else value
    return value
