"""Groups the client cannot combine, as each shard's partial groups that PostgreSQL combines.

Two shapes. Rows each shard can read alone (a co-located FROM) grouped with
aggregates PostgreSQL must compare (``min`` / ``max`` of text under a
linguistic collation, say): each shard's groups are partials, and the
coordinator takes the min of the mins, the sum of the counts. And a copied
table outer-joined to sharded rows (``customer LEFT JOIN orders ... GROUP
BY c_custkey``), which keeps every customer on every shard: when the
aggregates read only the sharded side and skip NULLs (``count(o_orderkey)``,
``min``, ``max``), the row an unmatched customer gets on each shard adds
nothing, so each shard's groups are partials too.
"""

from __future__ import annotations

from typing import Any, cast

from pglast import ast, enums

from .scopes import level_scope, relation_select
from .split import aggregate_calls, split_with
from .stager import Stager
from .syntax import column, func_name, walk

__all__ = ["combine_partials"]

_COMBINE = {"count": "sum", "min": "min", "max": "max"}


def combine_partials(stager: Stager, stmt: ast.SelectStmt) -> ast.SelectStmt | None:
    """The statement over combined per-shard groups; None when its shape is neither above."""
    if (stmt.op and stmt.larg is not None) or not stmt.fromClause:
        return None
    if any(isinstance(g, ast.GroupingSet) for g in stmt.groupClause or ()):
        return None
    if any(isinstance(n, ast.SubLink) for n in walk(stmt)):
        return None
    calls = aggregate_calls(stmt, stager.facts.aggregates)
    if not calls or not all(_combinable(call, stager.facts.shadowed) for call in calls):
        return None
    if _shard_local_rows(stager, stmt):
        return split_with(stager, stmt, _combined)
    if len(stmt.fromClause) != 1:
        return None
    join = cast(ast.Node, stmt.fromClause[0])
    if not isinstance(join, ast.JoinExpr) or join.jointype != enums.JoinType.JOIN_LEFT:
        return None
    kept, other = cast(ast.Node, join.larg), cast(ast.Node, join.rarg)
    if stager.sharded(kept) or not stager.sharded(other):
        return None
    if not _shard_local_rows(stager, ast.SelectStmt(fromClause=(other,))):
        return None  # each shard must read its own part of the sharded side's rows
    if not all(_nullable_side_only(call, stager, other) for call in calls):
        return None
    kept_scope = level_scope(ast.SelectStmt(fromClause=(kept,)), stager.layout, stager.ctes, None)
    for clause in (stmt.whereClause, *(stmt.groupClause or ())):
        for ref in [n for n in walk(clause) if isinstance(n, ast.ColumnRef)]:
            if kept_scope.owns(ref) is not True:
                return None
    return split_with(stager, stmt, _combined)


def _shard_local_rows(stager: Stager, stmt: ast.SelectStmt) -> bool:
    """Each shard reads its own part of the FROM and WHERE rows (a plain union answers them)."""
    if any(isinstance(n, ast.RangeSubselect) and n.lateral for n in walk(stmt.fromClause)):
        return False  # a LATERAL subquery's groups or LIMIT would be each shard's own
    rows = ast.SelectStmt(
        targetList=(ast.ResTarget(val=ast.A_Const(isnull=False, val=ast.Integer(ival=1))),),
        fromClause=stmt.fromClause,
        whereClause=stmt.whereClause,
        op=enums.SetOperation.SETOP_NONE,
    )
    plan = stager.plans(rows)
    return plan is not None and not (plan.merge or plan.staged or plan.pins or plan.first)


def _combinable(call: ast.FuncCall, shadowed: frozenset[str]) -> bool:
    """A built-in count, min or max (not a user aggregate that search_path finds first)."""
    schema, name = func_name(call)
    if schema not in (None, "pg_catalog") or name not in _COMBINE:
        return False
    if schema is None and name in shadowed:
        return False
    return not (call.agg_distinct or call.agg_order or call.over or call.agg_within_group)


def _nullable_side_only(call: ast.FuncCall, stager: Stager, side: ast.Node) -> bool:
    """An aggregate of one column of the outer join's nullable side, NULL-skipping, unfiltered."""
    if call.agg_star or call.agg_filter is not None:
        return False
    if len(call.args or ()) != 1 or not isinstance(call.args[0], ast.ColumnRef):  # type: ignore[index]
        return False
    scope = level_scope(ast.SelectStmt(fromClause=(side,)), stager.layout, stager.ctes, None)
    return scope.owns(call.args[0]) is True  # type: ignore[index]


def _combined(stager: Stager, step: ast.SelectStmt, aggregates: list[ast.Node]) -> ast.SelectStmt | None:
    """The groups' source: each shard's partial groups (a union), combined by PostgreSQL."""
    number = stager.step(step, union=True)
    if number is None:
        return None
    source = relation_select(number)
    groups = [t for t in step.targetList or () if (t.name or "").startswith("g")]
    columns: list[ast.ResTarget] = [ast.ResTarget(name=t.name, val=column(cast(str, t.name))) for t in groups]
    for j, call in enumerate(aggregates):
        name = _COMBINE[func_name(cast(ast.FuncCall, call))[1]]
        value: Any = ast.FuncCall(
            funcname=(ast.String(sval="pg_catalog"), ast.String(sval=name)),
            args=(column(f"a{j + 1}"),),
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
        source.groupClause = tuple(column(cast(str, t.name)) for t in groups)
    return source
