"""A SELECT the shards cannot finish alone, planned in stages: steps first, PostgreSQL finishes the rest.

When the one-pass plan refuses a statement, it is rewritten by one strategy
after another until the rest plans:

* subqueries and CTEs that need a merge run first as steps (``units``);
* correlated subqueries become grouped steps joined back (``decorrelate``);
* set operations combine their arms' rows (``units``);
* the top level's groups or rows are computed by a step, and what is left
  (expressions over aggregates, HAVING, windows, ORDER BY, LIMIT) runs over
  them (``split``), or each shard's partial groups are combined (``combine``);
* a join off the shard key sends all but its largest table to every shard
  (``pulls.broadcast_tables``);
* last, sharded tables are read filtered and projected, and PostgreSQL
  answers everything else over those rows (``pulls.pull_tables``).

Each step is a statement of its own, planned (and staged) like any other;
its rows reach later statements as ``unnest`` of typed arrays. A final
statement that reads no sharded table runs on one shard: the coordinator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from pglast import ast

from .combine import combine_partials
from .decorrelate import decorrelate
from .layout import Layout
from .model import Plan, ShardFacts, Staged
from .names import bind_names
from .params import Template
from .pulls import broadcast_tables, pull_tables
from .query import check_spread_values, replace_moments
from .scopes import ctes_of
from .split import split_top
from .stager import Answer, Stager
from .syntax import walk
from .units import replace_set_arms, replace_units, union_on_shards

__all__ = ["plan_staged"]

_MAX_DEPTH = 6

Strategy = Callable[[Stager, ast.SelectStmt], ast.SelectStmt | None]


def plan_staged(
    stmt: ast.SelectStmt, template: Template, facts: ShardFacts, answer: Answer, depth: int, layout: Layout
) -> Plan | None:
    """The staged plan of a refused SELECT, or None when no strategy makes the rest plan."""
    if depth > _MAX_DEPTH or stmt.lockingClause or stmt.intoClause is not None:
        return None
    if any(isinstance(n, ast.WithClause) and n.recursive for n in walk(stmt, into_selects=True)):
        return None  # a recursive CTE's steps would each need the rows of the one before
    current = cast(ast.SelectStmt, bind_names(stmt, facts.catalog))
    check_spread_values(stmt, current, facts)
    for node in walk(current, into_selects=True):
        info = layout.table(node) if isinstance(node, ast.RangeVar) else None
        if info is not None and info.system:
            return None  # each server's own catalog: no one database's answer
    names = list(template.names)
    moments = replace_moments(current, names)  # taken once for every step: one statement, one moment
    stager = Stager(layout, facts, tuple(names), answer, depth)
    stager.ctes = ctes_of(current)
    if not moments and union_on_shards(stager, current):
        return Plan(names=template.names, checked=True)
    strategies: list[Strategy] = [
        lambda s, q: replace_units(s, q, everything=False),
        decorrelate,
        lambda s, q: replace_units(s, q, everything=True),
        replace_set_arms,
        split_top,
        combine_partials,
        broadcast_tables,
        pull_tables,
    ]
    for strategy in strategies:
        stager.ctes = ctes_of(current)
        candidate = strategy(stager, current)
        if candidate is None:
            continue
        current = candidate
        stager.ctes = ctes_of(current)
        final = stager.plans(current)
        if final is not None:
            staged = Staged(
                tuple(stager.steps),
                stager.text(current),
                frozenset(stager.pulls),
                frozenset(stager.unions),
            )
            return Plan(staged=staged, names=stager.names, checked=True, moments=moments)
    return None
