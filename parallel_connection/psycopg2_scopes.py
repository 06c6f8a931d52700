"""psycopg2's functions that take a connection or cursor, given a ParallelConnection or ParallelCursor.

``register_type(x, pdb)``, ``register_composite(name, pdb)``, ``sql.Identifier(...).as_string(pdb)``
and the like check in C that their scope is a psycopg2 connection or cursor.
psycopg2.sql and psycopg2.extras look these functions up at call time as
attributes of psycopg2.extensions, and users call them as attributes of
their modules, so importing parallel_connection puts a thin wrapper in
their place: given a ParallelConnection (or ParallelCursor) it calls
psycopg2's own function on every shard connection (or shard cursor), since
types made in a database have their own OIDs on each shard; given anything
else it is psycopg2's function, unchanged. A registration on the connection
is also recorded in ``pdb.shard_set.setups``, so that a shard connection
replacing a broken one gets it too. Names imported before
parallel_connection (``from psycopg2.extensions import register_type``)
stay psycopg2's own.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.sql

from .connection import ParallelConnection
from .cursor import ParallelCursor
from .errors import NotSupportedError

__all__ = ["install"]

_WRAPPED = "__parallel_connection_original__"

_SCOPED = (
    "register_composite",
    "register_hstore",
    "register_json",
    "register_default_json",
    "register_default_jsonb",
    "register_uuid",
    "register_inet",
    "register_range",
    "register_ipaddress",
)
"""psycopg2.extras' functions taking ``conn_or_curs`` (the json ones live in psycopg2._json, whose
own calls between them pass shard connections, so only psycopg2.extras' names are wrapped)."""
_PER_DATABASE = frozenset({"register_composite", "register_hstore", "register_range"})
"""Registrations of types made in a database: their OIDs differ from shard to shard."""


def _parallel(scope: Any) -> bool:
    return isinstance(scope, (ParallelConnection, ParallelCursor))


def _first(scope: Any) -> Any:
    """The psycopg2 connection or cursor that stands for ``scope`` where one is enough (quoting)."""
    if isinstance(scope, ParallelConnection):
        return scope.connections[0]
    if isinstance(scope, ParallelCursor):
        return scope.shard_cursors[0]
    return scope


def _each(scope: Any, call: Callable[[Any], Any]) -> Any:
    """``call`` on every shard connection (or shard cursor) of ``scope``; shard 0's result.

    A connection's registration is kept in its ``setups``, for connections that replace broken ones.
    """
    if isinstance(scope, ParallelCursor):
        return [call(cur) for cur in scope.shard_cursors][0]  # noqa: RUF015  (every cursor, not one)
    shard_set = scope.shard_set
    results = shard_set.run(lambda i: call(shard_set.connections[i]))
    shard_set.setups.append(call)
    return results[0]


def _wrap_register_type(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def register_type(obj: Any, scope: Any = None) -> Any:
        if _parallel(scope):
            return _each(scope, lambda target: original(obj, target))
        return original(obj) if scope is None else original(obj, scope)

    return register_type


def _wrap_quote_ident(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def quote_ident(string: Any, scope: Any) -> Any:
        return original(string, _first(scope))

    return quote_ident


def _wrap_scoped(original: Callable[..., Any]) -> Callable[..., Any]:
    """A psycopg2.extras function with a ``conn_or_curs`` parameter."""
    signature = inspect.signature(original)
    name = original.__name__

    @functools.wraps(original)
    def scoped(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        scope = bound.arguments.get("conn_or_curs")
        if not _parallel(scope):
            return original(*args, **kwargs)
        if bound.arguments.get("globally"):
            if name in _PER_DATABASE:
                raise NotSupportedError(
                    f"{name}(..., globally=True) on a ParallelConnection: the type has its own OID on "
                    "each shard, so one global typecaster cannot serve them all; register it on the "
                    "connection (globally=False), which registers it on every shard connection"
                )
            bound.arguments["conn_or_curs"] = _first(scope)  # only read to find built-in OIDs
            return original(*bound.args, **bound.kwargs)

        def call(target: Any) -> Any:
            mine = signature.bind(*args, **kwargs)  # one per call: the shards' calls run at once
            mine.arguments["conn_or_curs"] = target
            return original(*mine.args, **mine.kwargs)

        return _each(scope, call)

    return scoped


def _wrap_as_string(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def as_string(self: Any, context: Any) -> Any:
        return original(self, _first(context))

    return as_string


def _replace(owner: Any, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    current = getattr(owner, name, None)
    if current is None or hasattr(current, _WRAPPED):
        return
    wrapper = wrap(current)
    setattr(wrapper, _WRAPPED, current)
    setattr(owner, name, wrapper)


def install() -> None:
    """Put the wrappers in psycopg2's modules (once; importing parallel_connection does it)."""
    _replace(psycopg2.extensions, "register_type", _wrap_register_type)
    _replace(psycopg2.extensions, "quote_ident", _wrap_quote_ident)
    _replace(psycopg2.sql.Literal, "as_string", _wrap_as_string)
    for name in _SCOPED:
        if callable(getattr(psycopg2.extras, name, None)):
            _replace(psycopg2.extras, name, _wrap_scoped)
