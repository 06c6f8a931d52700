"""A copied table outer-joined to sharded rows, aggregated: per-key partials on each shard, combined.

``customer LEFT JOIN orders ... GROUP BY c_custkey`` keeps every customer on
every shard, so no shard's groups are final. But when the aggregates read
only the sharded side and skip NULLs (``count(o_orderkey)``, ``min``,
``max``), the row an unmatched customer gets on each shard adds nothing:
each shard's groups are partials of one database's, and PostgreSQL
combines them (a sum of counts, a min of mins) over the shards' rows.
"""

from __future__ import annotations

from typing import Any, cast

from pglast import ast, enums

from .scopes import level_scope, relation_select
from .split import aggregate_calls, split_with
from .stager import Stager
from .syntax import func_name, walk

__all__ = ["combine_partials"]

_COMBINE = {"count": "sum", "min": "min", "max": "max"}


def combine_partials(stager: Stager, stmt: ast.SelectStmt) -> ast.SelectStmt | None:
    """The statement over combined per-shard groups; None when its shape is not the one above."""
    if (stmt.op and stmt.larg is not None) or len(stmt.fromClause or ()) != 1:
        return None
    join = cast(ast.Node, stmt.fromClause[0])  # type: ignore[index]
    if not isinstance(join, ast.JoinExpr) or join.jointype != enums.JoinType.JOIN_LEFT:
        return None
    kept, other = cast(ast.Node, join.larg), cast(ast.Node, join.rarg)
    if stager.sharded(kept) or not stager.sharded(other):
        return None
    if any(isinstance(g, ast.GroupingSet) for g in stmt.groupClause or ()):
        return None
    calls = aggregate_calls(stmt, stager.facts.aggregates)
    if not calls or not all(_combinable(call, stager, other) for call in calls):
        return None
    kept_scope = level_scope(ast.SelectStmt(fromClause=(kept,)), stager.layout, stager.ctes, None)
    for clause in (stmt.whereClause, *(stmt.groupClause or ())):
        for ref in [n for n in walk(clause) if isinstance(n, ast.ColumnRef)]:
            if kept_scope.owns(ref) is not True:
                return None
    if any(isinstance(n, ast.SubLink) for n in walk(stmt)):
        return None
    return split_with(stager, stmt, _combined)


def _combinable(call: ast.FuncCall, stager: Stager, side: ast.Node) -> bool:
    schema, name = func_name(call)
    if schema not in (None, "pg_catalog") or name not in _COMBINE:
        return False
    if call.agg_star or call.agg_distinct or call.agg_filter is not None or call.agg_order or call.over:
        return False
    scope = level_scope(ast.SelectStmt(fromClause=(side,)), stager.layout, stager.ctes, None)
    refs = [n for n in walk(call.args) if isinstance(n, ast.ColumnRef)]
    if len(call.args or ()) != 1 or not isinstance(call.args[0], ast.ColumnRef):  # type: ignore[index]
        return False
    return all(scope.owns(ref) is True for ref in refs)


def _combined(stager: Stager, step: ast.SelectStmt, aggregates: list[ast.Node]) -> ast.SelectStmt | None:
    """The groups' source: each shard's partial groups (a union), combined by PostgreSQL."""
    number = stager.step(step, union=True)
    if number is None:
        return None
    source = relation_select(number)
    groups = [t for t in step.targetList or () if (t.name or "").startswith("g")]
    columns: list[ast.ResTarget] = [
        ast.ResTarget(name=t.name, val=ast.ColumnRef(fields=(ast.String(sval=cast(str, t.name)),)))
        for t in groups
    ]
    for j, call in enumerate(aggregates):
        name = _COMBINE[func_name(cast(ast.FuncCall, call))[1]]
        value: Any = ast.FuncCall(
            funcname=(ast.String(sval="pg_catalog"), ast.String(sval=name)),
            args=(ast.ColumnRef(fields=(ast.String(sval=f"a{j + 1}"),)),),
            agg_within_group=False,
            agg_star=False,
            agg_distinct=False,
            func_variadic=False,
        )
        if name == "sum":  # of counts: a count again
            value = ast.TypeCast(
                arg=value,
                typeName=ast.TypeName(
                    names=(ast.String(sval="pg_catalog"), ast.String(sval="int8")), typemod=-1
                ),
            )
        columns.append(ast.ResTarget(name=f"a{j + 1}", val=value))
    source.targetList = tuple(columns)
    if groups:
        source.groupClause = tuple(
            ast.ColumnRef(fields=(ast.String(sval=cast(str, t.name)),)) for t in groups
        )
    return source
