"""Plan a top-level SELECT: ORDER BY, DISTINCT, LIMIT without aggregates, or hand off to aggregates."""

from __future__ import annotations

from dataclasses import replace

from pglast import ast, enums

from .aggregates import AggregatePlanner, uses_aggregates
from .collation import check_collations
from .columns import ShardColumns
from .model import ClientPlan, Const, Param, Value
from .ordering import limit_value, resolve_reference, sort_key
from .refusals import check_nested, check_top, refuse
from .sources import check_sources
from .syntax import copy_node, walk

__all__ = ["plan_select", "reads_sharded", "tables_read"]

_BIGINT_MAX = 2**63 - 1


def tables_read(stmt: ast.Node) -> list[tuple[str | None, str]]:
    """(schema, name) of every table or view the statement reads (CTE names aside)."""
    ctes = {
        cte.ctename
        for node in walk(stmt, into_selects=True)
        if isinstance(node, ast.WithClause)
        for cte in node.ctes
    }
    return [
        (node.schemaname, node.relname)
        for node in walk(stmt, into_selects=True)
        if isinstance(node, ast.RangeVar) and (node.schemaname or node.relname not in ctes)
    ]


def reads_sharded(stmt: ast.Node, replicated: frozenset[str]) -> bool:
    """True when the statement reads a table that is not copied to every shard."""
    return any(
        name not in replicated and f"{schema}.{name}" not in replicated for schema, name in tables_read(stmt)
    )


def plan_select(
    stmt: ast.SelectStmt,
    aggregates: frozenset[str],
    replicated: frozenset[str] = frozenset(),
    collated: frozenset[tuple[str, ...]] = frozenset(),
) -> tuple[ast.SelectStmt, ClientPlan] | None:
    """The shard statement and client plan, or None when the plain union is exact."""
    check_top(stmt, aggregates)
    check_nested(stmt, aggregates, lambda sub: not reads_sharded(sub, replicated))
    check_sources(stmt, replicated)
    if uses_aggregates(stmt, aggregates):
        check_collations(stmt, collated)
        return AggregatePlanner(stmt, aggregates).plan()
    if (
        not stmt.sortClause
        and stmt.distinctClause is None
        and stmt.limitCount is None
        and stmt.limitOffset is None
    ):
        return None
    check_collations(stmt, collated)
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
        index = columns.hidden(expr.arg if isinstance(expr, ast.CollateClause) else expr)
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
    return isinstance(target.val, ast.ColumnRef) and isinstance(target.val.fields[-1], ast.A_Star)
