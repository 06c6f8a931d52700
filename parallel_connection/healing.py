"""A fresh shard connection from the pool, for one that broke, set up as the one it replaces.

A connection that replaces a broken one between transactions must behave
as the old one did, as far as the library knows the session: the user's
autocommit and ``set_session`` (read from the old connection, which keeps
them after it closed), its client encoding, the settings that change
answers (those the shards' facts compare, as a healthy shard has them), and
what was done to every shard connection since (``register_type`` and the
like). What else the old session held (temporary tables, prepared
statements, other ``SET`` values) ended with it, as it would on one
database after a reconnect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from .catalog import SETTINGS

__all__ = ["cursor_like", "read_settings", "replacement"]

_NOT_SET = frozenset({"server_encoding", "client_encoding"})
"""Compared settings a session does not set with ``set_config`` (the encoding has its own call)."""


def read_settings(conn: Any) -> dict[str, str]:
    """The compared settings of an idle connection (left idle: what this read began is rolled back)."""
    names = [name for name in SETTINGS if name not in _NOT_SET]
    with conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
        cur.execute(
            sql.SQL("SELECT {}").format(
                sql.SQL(", ").join(sql.SQL("current_setting({})").format(sql.Literal(n)) for n in names)
            )
        )
        row = cur.fetchone()
    if not conn.autocommit:
        conn.rollback()
    return dict(zip(names, row or (), strict=True))


def replacement(
    pool: Any,
    old: Any,
    settings: Mapping[str, str] | None,
    setups: Sequence[Callable[[Any], None]],
    timeout: float | None,
) -> Any:
    """A connection from ``pool`` in place of the broken ``old`` (whose slot is freed first)."""
    if pool.holds(old):
        with contextlib.suppress(psycopg2.Error):
            pool.putconn(old, close=True)
    conn = pool.getconn(timeout=timeout)
    try:
        _set_up(conn, old, settings or {}, setups)
    except BaseException:
        with contextlib.suppress(psycopg2.Error):
            pool.putconn(conn, close=True)
        raise
    return conn


def _set_up(
    conn: Any, old: Any, settings: Mapping[str, str], setups: Sequence[Callable[[Any], None]]
) -> None:
    if conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        conn.rollback()
    conn.autocommit = False
    for setup in setups:  # the first makes the library's own cursors what they are on the others
        setup(conn)
    if conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        conn.commit()
    if conn.encoding != old.encoding:
        conn.set_client_encoding(old.encoding)
    wanted = sorted((name, value) for name, value in settings.items() if name not in _NOT_SET)
    if wanted:
        calls = sql.SQL(", ").join(
            sql.SQL("set_config({}, {}, false)").format(sql.Literal(n), sql.Literal(v)) for n, v in wanted
        )
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT {}").format(calls))
        conn.commit()
    default = "DEFAULT"  # where the old one never set it (a pooled connection may have)
    conn.set_session(
        isolation_level=default if old.isolation_level is None else old.isolation_level,
        readonly=default if old.readonly is None else old.readonly,
        deferrable=default if old.deferrable is None else old.deferrable,
        autocommit=old.autocommit,
    )


def cursor_like(old: Any, conn: Any) -> Any:
    """A cursor on ``conn`` made as ``old`` was (its class, name and options), for one on a connection
    that was replaced."""
    kwargs: dict[str, Any] = {"cursor_factory": type(old)}
    if old.name is not None:
        kwargs.update(name=old.name, withhold=old.withhold, scrollable=old.scrollable)
    cur = conn.cursor(**kwargs)
    cur.arraysize, cur.itersize = old.arraysize, old.itersize
    for caster in (old.string_types or {}).values():  # what was registered on the cursor itself
        psycopg2.extensions.register_type(caster, cur)
    if old.tzinfo_factory is not None:
        cur.tzinfo_factory = old.tzinfo_factory
    return cur
