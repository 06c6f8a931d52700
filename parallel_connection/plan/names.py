"""Bind a statement's names as PostgreSQL scopes them, for analysis.

The result is a copy of the statement in which every CTE has a name of its
own (so a CTE named like a table can never be mistaken for it, at any
depth), every table is schema-qualified as the shards' ``search_path``
resolves it, and every view is replaced by its definition (a view with
GROUP BY or LIMIT is a subquery, never a table). The shards still run the
statement as the user wrote it; only the planner reads the bound copy.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import pglast
from pglast import ast

from ..errors import refuse
from .syntax import copy_node

__all__ = ["CTE_PREFIX", "Relations", "bind_names", "is_cte_name"]

CTE_PREFIX = "_pc_cte_"
_MAX_VIEW_DEPTH = 16


class Relations(Protocol):
    """What the binder needs from the catalog."""

    def resolve(self, schema: str | None, name: str) -> Any:
        """The relation (``schema``, ``name``, ``kind``, ``view_sql``) a name means, or None."""


def is_cte_name(name: str | None) -> bool:
    return bool(name) and str(name).startswith(CTE_PREFIX)


def bind_names(stmt: ast.Node, relations: Relations | None) -> ast.Node:
    """A bound copy of ``stmt`` (see the module docstring); ``relations`` None: CTEs only."""
    counter = itertools.count()
    binder = _Binder(relations, lambda: f"{CTE_PREFIX}{next(counter)}")
    bound: ast.Node = binder.visit(copy_node(stmt), {}, 0)
    return bound


class _Binder:
    def __init__(self, relations: Relations | None, fresh: Callable[[], str]) -> None:
        self.relations = relations
        self.fresh = fresh

    def visit(self, node: Any, scope: Mapping[str, str], depth: int) -> Any:
        if isinstance(node, tuple):
            return tuple(self.visit(item, scope, depth) for item in node)
        if isinstance(node, list):
            return [self.visit(item, scope, depth) for item in node]
        if not isinstance(node, ast.Node):
            return node
        if isinstance(node, ast.RangeVar):
            return self.range_var(node, scope, depth)
        with_clause = getattr(node, "withClause", None)
        if isinstance(with_clause, ast.WithClause):
            scope = self.with_clause(with_clause, scope, depth)
        node_type: Any = type(node)  # pglast declares __slots__ only at runtime
        for name in node_type.__slots__:
            if name == "withClause":
                continue
            value = getattr(node, name, None)
            if isinstance(value, (ast.Node, tuple, list)):
                setattr(node, name, self.visit(value, scope, depth))
        return node

    def with_clause(self, clause: ast.WithClause, outer: Mapping[str, str], depth: int) -> dict[str, str]:
        """The scope inside a WITH: each CTE renamed; bodies see what PostgreSQL lets them see."""
        scope = dict(outer)
        ctes = list(clause.ctes or ())
        names = [self.fresh() for _ in ctes]
        if clause.recursive:
            scope.update({cte.ctename: new for cte, new in zip(ctes, names, strict=True)})
        for cte, new in zip(ctes, names, strict=True):
            cte.ctequery = self.visit(cte.ctequery, scope, depth)
            scope[cte.ctename] = new
            cte.ctename = new
        return scope

    def range_var(self, node: ast.RangeVar, scope: Mapping[str, str], depth: int) -> ast.Node:
        relname = cast(str, node.relname)  # PostgreSQL's parser always names the relation
        alias = node.alias if node.alias is not None else ast.Alias(aliasname=relname)
        if not node.schemaname and relname in scope:
            return ast.RangeVar(relname=scope[relname], inh=True, relpersistence="p", alias=alias)
        if self.relations is None:
            return node
        relation = self.relations.resolve(node.schemaname, relname)
        if relation is None:
            return node  # the shards report the missing relation themselves
        if relation.kind == "view" and relation.view_sql:
            if depth >= _MAX_VIEW_DEPTH:
                raise refuse(
                    f"views nested more than {_MAX_VIEW_DEPTH} deep ({relation.schema}.{relation.name})"
                )
            body = pglast.parse_sql(relation.view_sql)[0].stmt
            # A view's body sees no CTE of the statement that reads it.
            return ast.RangeSubselect(lateral=False, subquery=self.visit(body, {}, depth + 1), alias=alias)
        return ast.RangeVar(
            schemaname=relation.schema,
            relname=relation.name,
            inh=node.inh,
            relpersistence=node.relpersistence,
            alias=alias,
        )
