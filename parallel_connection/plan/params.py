"""psycopg2 placeholders to PostgreSQL ``$n`` parameters and back.

Statements are planned as templates: ``%s`` and ``%(name)s`` become ``$n``
before parsing, so the same statement with other values hits the plan cache,
and the rewritten SQL gets its placeholders back before it is sent.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

__all__ = ["Template", "plain_value", "shape_of", "shard_vars", "to_pyformat", "to_template"]

_TOKEN = re.compile(r"%%|%\(([^)]*)\)s|%s|%")
_DOLLAR_NUMBER = re.compile(r"\$(\d+)")
_PLAIN = (type(None), bool, int, float, Decimal, str, bytes, datetime.date, datetime.time, datetime.timedelta)


@dataclass(frozen=True)
class Template:
    """A statement with ``$n`` parameters; ``names[n - 1]`` is the n-th one's key."""

    text: str
    names: tuple[str, ...]
    positional: bool


def to_template(query: str, vars: Any) -> Template | None:
    """``query`` as a template, or None when only ``mogrify`` can say what it means."""
    if vars is None:
        return Template(query, (), False)
    if _DOLLAR_NUMBER.search(query):
        return None
    if isinstance(vars, Mapping):
        values: Sequence[Any] = list(vars.values())
        positional = False
    elif isinstance(vars, (list, tuple)):
        values, positional = vars, True
    else:
        return None
    if not all(map(plain_value, values)):
        return None
    keys = None if positional else frozenset(vars)
    rewritten = _rewrite(query, keys)
    if rewritten is None:
        return None
    text, names = rewritten
    if positional and len(names) != len(values):
        return None
    return Template(text, names, positional)


@lru_cache(maxsize=1024)
def _rewrite(query: str, keys: frozenset[str] | None) -> tuple[str, tuple[str, ...]] | None:
    """``query`` with ``$n`` placeholders, and their names; ``keys`` None: positional ``%s``."""
    positional = keys is None
    names: list[str] = []
    failed = False

    def replace(match: re.Match[str]) -> str:
        nonlocal failed
        token = match.group(0)
        if token == "%%":
            return "%"
        if token == "%s" and positional:
            names.append(f"p{len(names) + 1}")
            return f"${len(names)}"
        if match.group(1) is not None and keys is not None:
            name = match.group(1)
            if name not in keys:
                failed = True
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"
        failed = True
        return token

    text = _TOKEN.sub(replace, query)
    return None if failed else (text, tuple(names))


def shape_of(vars: Any) -> Any:
    """What the template of a statement depends on in ``vars``: the number of positional values, or
    the names (None: not known without making it, its values are not all plain)."""
    if vars is None:
        return ()
    if isinstance(vars, (tuple, list)):
        return len(vars) if all(map(plain_value, vars)) else None
    if isinstance(vars, dict):
        return frozenset(vars) if all(map(plain_value, vars.values())) else None
    return None


def shard_vars(template: Template, vars: Any) -> Any:
    """The parameters to send with the rewritten SQL."""
    if not template.names:
        return None
    if template.positional:
        return dict(zip(template.names, vars, strict=True))
    return vars


def to_pyformat(sql: str, names: tuple[str, ...]) -> str:
    """Rewritten SQL with ``$n`` as ``%(name)s`` again and every ``%`` doubled."""
    if not names:
        return sql
    sql = sql.replace("%", "%%")
    return _DOLLAR_NUMBER.sub(lambda m: f"%({names[int(m.group(1)) - 1]})s", sql)


def plain_value(value: Any) -> bool:
    """A value psycopg2 renders as a literal that means the same wherever ``$n`` stands."""
    if type(value) in _PLAIN_SET:
        return True
    if isinstance(value, list):
        return all(map(plain_value, value))
    return isinstance(value, _PLAIN_TYPES)


_PLAIN_TYPES = (*_PLAIN, uuid.UUID)
_PLAIN_SET = frozenset(_PLAIN_TYPES)
