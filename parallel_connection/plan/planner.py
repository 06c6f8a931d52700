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
    return plan, shard_vars(template, vars)


_LEADING_COMMENTS = re.compile(r"\s*(?:(?:--[^\n]*\n?|/\*.*?\*/)\s*)*", re.DOTALL)
_QUERY_WORDS = ("select", "with", "values", "table", "(")


def _may_be_query(query: str) -> bool:
    """False for statements that are surely not queries (INSERT, COPY, DDL...): they are never parsed."""
    start = _LEADING_COMMENTS.match(query)
    head = query[start.end() if start else 0 :][:6].lower()
    return head.startswith(_QUERY_WORDS)


@lru_cache(maxsize=CACHE_SIZE)
def _plan(template: Template, facts: ShardFacts) -> Plan:
    try:
        statements = pglast.parse_sql(template.text)
    except pglast.parser.ParseError:
        return Plan("union")  # the shards report the syntax error themselves
    selects = [s.stmt for s in statements if isinstance(s.stmt, ast.SelectStmt)]
    if not selects:
        return Plan("union")
    if len(statements) > 1:
        for stmt in selects:
            if reads_sharded(stmt, facts.replicated) and plan_select(
                stmt, facts.aggregates, facts.replicated
            ):
                raise refuse("several statements in one execute() with a SELECT to merge")
        return Plan("union")
    stmt = selects[0]
    if not reads_sharded(stmt, facts.replicated):
        return Plan("first")
    planned = plan_select(stmt, facts.aggregates, facts.replicated)
    if planned is None:
        return Plan("union")
    shard, client = planned
    return Plan("merge", to_pyformat(deparse(shard), template.names), client, template.names)
