"""Plan a top-level SELECT: ORDER BY, DISTINCT, LIMIT without aggregates, or hand off to aggregates."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from pglast import ast, enums

from .aggregates import AggregatePlanner, uses_aggregates
from .collation import check_collations
from .columns import ShardColumns
from .locality import Analysis
from .model import ClientPlan, Const, Param, ShardFacts, Value
from .ordering import limit_value, resolve_reference, sort_key
from .refusals import check_top, refuse
from .syntax import copy_node, func_name, walk

__all__ = ["plan_select"]

_BIGINT_MAX = 2**63 - 1


def plan_select(
    stmt: ast.SelectStmt, bound: ast.SelectStmt, analysis: Analysis, facts: ShardFacts
) -> tuple[ast.SelectStmt, ClientPlan] | None:
    """The shard statement and client plan, or None when the plain union is exact.

    ``bound`` is ``stmt`` with its names bound (see ``names``), for the checks;
    the shards run ``stmt`` rewritten. When ``analysis`` finds the top level
    shard-local (grouped by the shard key, say), only ORDER BY, DISTINCT and
    LIMIT are left to merge.
    """
    check_top(stmt, facts.aggregates, local=analysis.local)
    if uses_aggregates(stmt, facts.aggregates) and not analysis.local:
        for node in walk(stmt):
            if isinstance(node, ast.FuncCall) and len(node.funcname or ()) == 1:
                name = func_name(node)[1]
                if name in facts.shadowed:
                    raise refuse(
                        f"the aggregate {name}() (search_path finds a user-defined {name} before "
                        "pg_catalog's: the merge would combine it as the built-in)"
                    )
        check_collations(bound, facts.collated_columns, facts.catalog)
        return AggregatePlanner(stmt, facts.aggregates).plan()
    if (
        not stmt.sortClause
        and stmt.distinctClause is None
        and stmt.limitCount is None
        and stmt.limitOffset is None
    ):
        return None
    check_collations(bound, facts.collated_columns, facts.catalog)
    return _plan_rows(stmt)


def _plan_rows(stmt: ast.SelectStmt) -> tuple[ast.SelectStmt, ClientPlan]:
    """ORDER BY, DISTINCT [ON] and LIMIT / OFFSET over plain rows."""
    targets = list(stmt.targetList or ())
    columns = ShardColumns(targets)
    stars = [i for i, t in enumerate(targets) if _is_star(t)]
    plain_distinct = stmt.distinctClause is not None and not any(stmt.distinctClause)
    hidden_refs: list[int] = []

    def by_target(index: int) -> int:
        if not stars or index < stars[0]:
            return index
        return by_expr(targets[index].val)

    def by_position(index: int) -> int:
        return index

    def by_expr(expr: ast.Node) -> int:
        if plain_distinct:
            raise refuse("SELECT DISTINCT with an ORDER BY expression that is not in the select list")
        index = columns.hidden(cast(ast.Node, expr.arg) if isinstance(expr, ast.CollateClause) else expr)
        if index not in hidden_refs:
            hidden_refs.append(index)
        return index

    order = [
        sort_key(item, resolve_reference(item.node, targets, by_target, by_expr, by_position))
        for item in stmt.sortClause or ()
    ]
    distinct_on: list[int] = []
    if stmt.distinctClause is not None and not plain_distinct:
        distinct_on = [
            resolve_reference(e, targets, by_target, by_expr, by_position) for e in stmt.distinctClause
        ]
    hidden = len(columns.targets) - columns.visible
    if stars and hidden:
        # With SELECT * the width is known only from the shards' answer: count hidden columns from the end.
        order = [
            replace(k, column=k.column - len(columns.targets)) if k.column >= columns.visible else k
            for k in order
        ]
        distinct_on = [i - len(columns.targets) if i >= columns.visible else i for i in distinct_on]
    limit = limit_value(stmt.limitCount, "LIMIT")
    offset = limit_value(stmt.limitOffset, "OFFSET")
    if isinstance(limit, Const) and isinstance(offset, Const) and limit.value + offset.value > _BIGINT_MAX:
        limit = None  # no table has that many rows: the same as no LIMIT
    shard = copy_node(stmt)
    shard.targetList = tuple(columns.targets)
    if not any(isinstance(v, Const) and v.value < 0 for v in (limit, offset)):
        # A negative constant stays on the shards, which reject it as PostgreSQL does.
        shard.limitOffset = None
        shard.limitCount = _pushed_limit(limit, offset)
    client = ClientPlan(
        order=tuple(order),
        distinct=plain_distinct,
        distinct_on=tuple(distinct_on),
        limit=limit,
        offset=offset,
        hidden=hidden,
    )
    return shard, client


def _pushed_limit(limit: Value | None, offset: Value | None) -> ast.Node | None:
    """``LIMIT limit + offset`` for each shard: no shard row past that can be in the answer."""
    if limit is None:
        return None
    if offset is None:
        return _node(limit)
    if isinstance(limit, Const) and isinstance(offset, Const):
        total = limit.value + offset.value
        return _node(Const(total)) if total <= _BIGINT_MAX else None
    # least(limit::numeric + offset, bigint max): the sum of two bigints may not be one.
    numeric = ast.TypeName(names=(ast.String(sval="pg_catalog"), ast.String(sval="numeric")), typemod=-1)
    total = ast.A_Expr(
        kind=enums.A_Expr_Kind.AEXPR_OP,
        name=(ast.String(sval="+"),),
        lexpr=ast.TypeCast(arg=_node(limit), typeName=numeric),
        rexpr=_node(offset),
    )
    return ast.MinMaxExpr(op=enums.MinMaxOp.IS_LEAST, args=(total, _node(Const(_BIGINT_MAX))))


def _node(value: Value) -> ast.Node:
    if isinstance(value, Param):
        return ast.ParamRef(number=value.number)
    return ast.A_Const(isnull=False, val=ast.Integer(ival=value.value))


def _is_star(target: ast.ResTarget) -> bool:
    return isinstance(target.val, ast.ColumnRef) and isinstance(
        cast("tuple[Any, ...]", target.val.fields)[-1], ast.A_Star
    )
