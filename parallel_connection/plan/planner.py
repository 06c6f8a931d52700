"""Statement -> Plan, parsed once per statement template and cached."""

from __future__ import annotations

import re
from dataclasses import replace
from functools import lru_cache
from typing import Any, cast

import pglast
from pglast import ast

from .model import ALL, ONE, Plan, ShardFacts, Task
from .params import Template, shard_vars, to_template
from .query import check_write, plan_query
from .refusals import refuse

__all__ = ["CACHE_SIZE", "plan_statement", "quick_plan"]

CACHE_SIZE = 512


def plan_statement(
    query: str, vars: Any, facts: ShardFacts, *, quick: bool = True
) -> tuple[Plan, Any] | None:
    """The plan for ``query`` and the parameters to send with the plan's task SQL.

    None when the parameters can only be understood by rendering them into
    the statement (``mogrify`` it, then plan the result without parameters).
    ``quick=False``: the caller already knows :func:`quick_plan` has no plan for it.
    """
    fast = quick_plan(query, writes=facts.placement is not None) if quick else None
    if fast is not None:
        return fast, vars
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


def quick_plan(query: str, *, writes: bool) -> Plan | None:
    """The plan of a statement that needs no parsing (INSERT, COPY, DDL, SET...), else None.

    With ``writes``, writes are parsed (to check them against the placement).
    """
    word = _first_word(query, writes=writes)
    return None if word is None else Plan(refresh=word in _DDL_WORDS, word=word)


_WRITE_WORDS = frozenset(["insert", "update", "delete", "copy", "merge"])
_DDL_WORDS = _UNION_WORDS - _WRITE_WORDS - {"begin", "start", "commit", "rollback", "savepoint", "release"}


def _first_word(query: str, *, writes: bool) -> str | None:
    """The first word of a statement that is surely not a query (INSERT, COPY, DDL...), else None.

    Such statements are never parsed (big INSERTs stay cheap), unless
    ``writes``: with a placement, writes are checked against it.
    """
    start = _skip_comments(query)
    if start is None:
        return None
    match = _WORD.match(query, start)
    word = match.group(0).lower() if match is not None else None
    if word is None or word not in _UNION_WORDS or (writes and word in _WRITE_WORDS):
        return None
    return None if ";" in query[start:].rstrip().rstrip(";") else word


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
        return Plan()  # the shards report the syntax error themselves
    # A RawStmt always holds its statement.
    if any(_parameter_as_item(cast(ast.Node, raw.stmt)) for raw in statements):
        return None
    if len(statements) > 1:
        # psycopg2 returns the last statement's rows; each statement must be a plain union.
        plans = [_plan_one(cast(ast.Node, raw.stmt), template, facts) for raw in statements]
        for plan in plans:
            if plan.mode != "union" or plan.pins or plan.moments or plan.tasks[0].targets != ALL:
                raise refuse("several statements in one execute() with a query to merge or answer once")
        return Plan(refresh=any(p.refresh for p in plans))
    if not statements:
        return Plan()
    return _plan_one(cast(ast.Node, statements[0].stmt), template, facts)


_REFRESHING = (ast.VariableSetStmt, ast.DiscardStmt)
_DATA = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)
_SESSION: tuple[type[ast.Node], ...] = (
    ast.TransactionStmt,
    ast.VariableShowStmt,
    ast.ClosePortalStmt,
    ast.ListenStmt,
)
_SESSION += (ast.UnlistenStmt, ast.NotifyStmt, ast.DeallocateStmt, ast.CopyStmt, ast.LockStmt)


def _plan_one(stmt: ast.Node, template: Template, facts: ShardFacts) -> Plan:
    """The plan of one parsed statement."""
    if isinstance(stmt, ast.VariableShowStmt):
        return Plan(tasks=(Task(ONE),))
    if isinstance(stmt, ast.ExecuteStmt):
        raise refuse("EXECUTE of a prepared statement (what it returns is not known here)")
    if isinstance(stmt, ast.FetchStmt) and not stmt.ismove:
        raise refuse("FETCH from a cursor (what it returns is not known here)")
    if isinstance(stmt, ast.ExplainStmt):
        raise refuse("EXPLAIN (every shard has its own plan)")
    if isinstance(stmt, ast.SelectStmt):
        return replace(plan_query(stmt, template, facts), checked=True)
    if isinstance(stmt, _DATA):
        copies = check_write(stmt, facts)
        return Plan(checked=facts.placement is not None, copies=copies)
    if isinstance(stmt, _REFRESHING):
        return Plan(refresh=True)
    if isinstance(stmt, (*_SESSION, ast.FetchStmt)):
        return Plan()
    return Plan(refresh=True)  # DDL: the catalog may have changed


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
