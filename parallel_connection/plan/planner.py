"""Statement -> Plan, parsed once per statement template and cached."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import pglast
from pglast import ast

from .model import Plan, ShardFacts
from .params import Template, shard_vars, to_pyformat, to_template
from .refusals import refuse
from .select import plan_select, reads_sharded
from .syntax import deparse

__all__ = ["CACHE_SIZE", "plan_statement"]

CACHE_SIZE = 512


def plan_statement(query: str, vars: Any, facts: ShardFacts) -> tuple[Plan, Any] | None:
    """The plan for ``query`` and the parameters to send with ``plan.sql``.

    None when the parameters can only be understood by rendering them into
    the statement (``mogrify`` it, then plan the result without parameters).
    """
    if not _may_be_query(query):
        return Plan("union"), vars
    template = to_template(query, vars)
    if template is None:
        return None
    plan = _plan(template, facts)
    if plan is None:
        return None
    return plan, shard_vars(template, vars)


# Statements that start with one of these words and hold no ";" return no rows, or (RETURNING)
# each shard's own rows: the plain union, decided without parsing (big INSERTs stay cheap).
_UNION_WORDS = frozenset(
    [
        "insert",
        "update",
        "delete",
        "copy",
        "create",
        "drop",
        "alter",
        "truncate",
        "grant",
        "revoke",
        "comment",
        "vacuum",
        "analyze",
        "cluster",
        "reindex",
        "lock",
        "set",
        "reset",
        "begin",
        "start",
        "commit",
        "rollback",
        "savepoint",
        "release",
        "discard",
        "listen",
        "unlisten",
        "notify",
        "deallocate",
    ]
)
_WORD = re.compile(r"[A-Za-z]+")


def _may_be_query(query: str) -> bool:
    """False for statements that are surely not queries (INSERT, COPY, DDL...): they are never parsed."""
    start = _skip_comments(query)
    if start is None:
        return True
    word = _WORD.match(query, start)
    if word is None or word.group(0).lower() not in _UNION_WORDS:
        return True
    return ";" in query[start:].rstrip().rstrip(";")


def _skip_comments(query: str) -> int | None:
    """Where the first token starts, past blanks and (nested) comments; None if unsure."""
    i, n = 0, len(query)
    while i < n:
        if query[i].isspace():
            i += 1
        elif query.startswith("--", i):
            end = query.find("\n", i)
            i = n if end < 0 else end + 1
        elif query.startswith("/*", i):
            depth, i = 1, i + 2
            while depth and i < n:
                if query.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif query.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            if depth:
                return None
        else:
            return i
    return None


@lru_cache(maxsize=CACHE_SIZE)
def _plan(template: Template, facts: ShardFacts) -> Plan | None:
    """The plan, or None when a parameter's rendered value decides what the statement means."""
    try:
        statements = pglast.parse_sql(template.text)
    except pglast.parser.ParseError:
        return Plan("union")  # the shards report the syntax error themselves
    if any(_parameter_as_item(raw.stmt) for raw in statements):
        return None
    if len(statements) > 1:
        # psycopg2 returns the last statement's rows; each statement must be a plain union.
        for raw in statements:
            if _plan_one(raw.stmt, template, facts).mode != "union":
                raise refuse("several statements in one execute() with a query to merge or answer once")
        return Plan("union")
    if not statements:
        return Plan("union")
    return _plan_one(statements[0].stmt, template, facts)


def _plan_one(stmt: ast.Node, template: Template, facts: ShardFacts) -> Plan:
    """The plan of one parsed statement."""
    if isinstance(stmt, ast.VariableShowStmt):
        return Plan("first")
    if isinstance(stmt, ast.ExecuteStmt):
        raise refuse("EXECUTE of a prepared statement (what it returns is not known here)")
    if isinstance(stmt, ast.FetchStmt) and not stmt.ismove:
        raise refuse("FETCH from a cursor (what it returns is not known here)")
    if isinstance(stmt, ast.ExplainStmt):
        raise refuse("EXPLAIN (every shard has its own plan)")
    if not isinstance(stmt, ast.SelectStmt):
        return Plan("union")
    if not reads_sharded(stmt, facts.replicated):
        return Plan("first")
    planned = plan_select(stmt, facts.aggregates, facts.replicated, facts.collated_columns)
    if planned is None:
        return Plan("union")
    shard, client = planned
    return Plan("merge", to_pyformat(deparse(shard), template.names), client, template.names)


def _parameter_as_item(stmt: ast.Node) -> bool:
    """A parameter as a whole ORDER BY, GROUP BY or DISTINCT ON item.

    psycopg2 renders an integer as a literal, which PostgreSQL reads as a
    select-list position, not as a constant.
    """
    if not isinstance(stmt, ast.SelectStmt):
        return False
    items = [
        *(item.node for item in stmt.sortClause or ()),
        *(stmt.groupClause or ()),
        *(stmt.distinctClause or ()),
    ]
    return any(isinstance(item, ast.ParamRef) for item in items)
