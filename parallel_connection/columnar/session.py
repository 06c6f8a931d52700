"""Whether the driver, reading on a connection of its own, sees what the caller's session would.

It does when the statement is one SELECT that depends on nothing but the
rows and the settings copied over: not on the session's transaction (its
writes, its snapshot, its ``now()``), its temporary tables, its identity,
or its state that a read would change (advisory locks, sequences).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pglast
import pglast.ast
import pglast.parser
import pglast.visitors

from ..casts import LibraryCursor
from .types import arrow_zone

__all__ = ["Session", "driver_readable", "may_return_rows", "read_session"]

_SESSION = """SELECT current_setting('transaction_isolation'),
       txid_current_if_assigned() IS NOT NULL
         OR EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()),
       current_user = session_user AND session_user = %s,
       current_setting('TimeZone'),
       (SELECT coalesce(json_object_agg(name, setting), '{}')::text FROM pg_catalog.pg_settings
         WHERE source = 'session' AND name NOT IN
           ('transaction_isolation', 'transaction_read_only', 'transaction_deferrable', 'client_encoding',
            'application_name', 'default_transaction_isolation', 'default_transaction_read_only',
            'default_transaction_deferrable', 'session_authorization', 'role'))"""
"""The isolation; a transaction that wrote or a session with temporary tables (neither visible to
another connection); the session still its login user (no SET ROLE, no SET SESSION AUTHORIZATION);
the time zone; the settings to copy."""

_SESSION_BOUND = frozenset(
    {
        "now", "transaction_timestamp", "statement_timestamp", "pg_backend_pid", "set_config",
        "currval", "lastval", "nextval", "setval", "pg_my_temp_schema", "pg_is_other_temp_schema",
        "txid_current", "txid_current_if_assigned", "pg_current_xact_id", "pg_current_xact_id_if_assigned",
        "txid_current_snapshot", "pg_current_snapshot", "pg_export_snapshot", "pg_notify",
        "inet_client_addr", "inet_client_port", "pg_listening_channels", "pg_trigger_depth",
        "pg_backend_memory_contexts", "pg_stat_get_backend_pid",
    }
)  # fmt: skip
"""Functions whose answer or effect belongs to the session that runs them."""
_PURE = frozenset(
    {
        "lower", "upper", "length", "char_length", "abs", "round", "trunc", "floor", "ceil", "ceiling",
        "substr", "substring", "concat", "concat_ws", "replace", "split_part", "left", "right", "btrim",
        "ltrim", "rtrim", "trim", "md5", "greatest", "least", "date_trunc", "date_part", "extract",
        "to_char", "mod", "power", "sqrt", "sign", "position", "strpos", "starts_with", "coalesce",
        "nullif", "array_length", "cardinality", "jsonb_extract_path_text", "json_extract_path_text",
    }
)  # fmt: skip
"""Built-in functions that read nothing of the session but its copied settings."""


@dataclass(frozen=True)
class Session:
    """What the driver copies of one shard session."""

    settings: dict[str, str]
    zone: str


def read_session(conn: Any) -> Session | None:
    """This shard session as the driver must copy it, or None when the driver may not read for it."""
    with conn.cursor(cursor_factory=LibraryCursor) as cur:
        cur.execute(_SESSION, (conn.info.user,))
        row = cur.fetchone()
    assert row is not None
    isolation, private, as_logged_in, zone, settings = row
    if private or not as_logged_in:
        return None
    if not (conn.autocommit or isolation in ("read committed", "read uncommitted")):
        return None
    return Session(json.loads(settings), arrow_zone(zone))


def driver_readable(text: str, in_transaction: bool) -> bool:
    """``text`` is one SELECT (so it can be read as a subquery) that calls nothing bound to the
    session; in a transaction already under way, nothing but built-ins known to read no session
    state (a function of yours might read ``now()``)."""
    statement = _only(text)
    if not isinstance(statement, pglast.ast.SelectStmt) or statement.intoClause is not None:
        return False
    calls = _Calls()
    calls(statement)
    if calls.moments or any(name in _SESSION_BOUND or "advisory" in name for name in calls.names):
        return False
    return not in_transaction or all(name in _PURE for name in calls.names)


def may_return_rows(text: str) -> bool:
    """The statement (the last of several) can return rows; unreadable SQL: the server will say."""
    try:
        statements = pglast.parse_sql(text)
    except pglast.parser.ParseError:
        return True
    if not statements:
        return False
    statement = statements[-1].stmt
    if isinstance(statement, (pglast.ast.InsertStmt, pglast.ast.UpdateStmt, pglast.ast.DeleteStmt)):
        return statement.returningClause is not None
    rows = (
        pglast.ast.SelectStmt,
        pglast.ast.ExplainStmt,
        pglast.ast.VariableShowStmt,
        pglast.ast.ExecuteStmt,
        pglast.ast.FetchStmt,
        pglast.ast.CallStmt,
    )
    return isinstance(statement, rows)


def _only(text: str) -> Any:
    try:
        statements = pglast.parse_sql(text)
    except pglast.parser.ParseError:
        return None
    return statements[0].stmt if len(statements) == 1 else None


class _Calls(pglast.visitors.Visitor):
    """The functions a statement calls (their last name, lower case) and its CURRENT_* moments."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.moments = False

    def visit_FuncCall(self, ancestors: Any, node: Any) -> None:
        parts = [getattr(part, "sval", "") for part in node.funcname]
        qualified = len(parts) > 1 and parts[0] != "pg_catalog"
        self.names.append("" if qualified else parts[-1].lower())

    def visit_SQLValueFunction(self, ancestors: Any, node: Any) -> None:
        op = getattr(node.op, "name", str(node.op))
        self.moments = self.moments or "TIME" in op or "DATE" in op  # not CURRENT_USER and the like
