"""Small helpers over pglast's AST: walking, naming, copying and printing nodes."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, TypeVar, cast

from pglast import ast, enums
from pglast.stream import RawStream

__all__ = [
    "aggregate_name",
    "all_of",
    "children",
    "column",
    "conjuncts",
    "deparse",
    "func_name",
    "integer_const",
    "is_aggregate",
    "output_name",
    "walk",
]

N = TypeVar("N")


def children(node: ast.Node) -> Iterator[ast.Node]:
    """The nodes directly below ``node``."""
    node_type: Any = type(node)  # pglast declares __slots__ only at runtime
    for name in node_type.__slots__:
        yield from _nodes(getattr(node, name, None))


def _nodes(value: Any) -> Iterator[ast.Node]:
    if isinstance(value, ast.Node):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _nodes(item)


def walk(node: Any, *, into_selects: bool = False) -> Iterator[ast.Node]:
    """``node`` and every node below it; nested SELECTs are yielded but not entered."""
    stack = list(_nodes(node))
    while stack:
        current = stack.pop()
        yield current
        if isinstance(current, ast.SelectStmt) and not into_selects and current is not node:
            continue
        stack.extend(children(current))


def copy_node(node: N) -> N:
    return copy.deepcopy(node)


def deparse(node: ast.Node) -> str:
    return RawStream()(node)


def func_name(call: ast.FuncCall) -> tuple[str | None, str]:
    """(schema or None, name) of a function call."""
    parts = [p.sval for p in cast("tuple[Any, ...]", call.funcname)]
    return (parts[-2] if len(parts) > 1 else None), parts[-1]


def aggregate_name(call: ast.FuncCall, aggregates: frozenset[str]) -> str | None:
    """The aggregate's name when ``call`` is an aggregate (not a window call), else None."""
    schema, name = func_name(call)
    if call.agg_star or call.agg_distinct or call.agg_filter is not None or call.agg_within_group:
        return name
    if call.agg_order:
        return name
    if name in aggregates and schema in (None, "pg_catalog"):
        return name
    if name in aggregates:
        return f"{schema}.{name}"
    return None


def is_aggregate(node: ast.Node, aggregates: frozenset[str]) -> bool:
    return (
        isinstance(node, ast.FuncCall) and node.over is None and aggregate_name(node, aggregates) is not None
    )


def integer_const(node: Any) -> int | None:
    """The value of an integer literal, else None."""
    if isinstance(node, ast.A_Const) and not node.isnull and isinstance(node.val, ast.Integer):
        return node.val.ival
    return None


def column(*names: str) -> ast.ColumnRef:
    """The column reference ``a.b`` for ``column("a", "b")``."""
    return ast.ColumnRef(fields=tuple(ast.String(sval=name) for name in names))


def bare_name(node: Any) -> str | None:
    """``x`` for the unqualified column reference ``x``, else None."""
    if isinstance(node, ast.ColumnRef):
        fields = cast("tuple[Any, ...]", node.fields)
        if len(fields) == 1 and isinstance(fields[0], ast.String):
            return fields[0].sval
    return None


def output_name(target: ast.ResTarget) -> str | None:
    """The column name PostgreSQL gives a select-list entry (FigureColname, main cases)."""
    if target.name:
        return target.name
    return _figure(target.val)


def _figure(node: Any) -> str | None:
    return _figure_strength(node)[0]


_VALUE_FUNCTION_NAMES = {
    "SVFOP_CURRENT_DATE": "current_date",
    "SVFOP_CURRENT_TIME": "current_time",
    "SVFOP_CURRENT_TIME_N": "current_time",
    "SVFOP_CURRENT_TIMESTAMP": "current_timestamp",
    "SVFOP_CURRENT_TIMESTAMP_N": "current_timestamp",
    "SVFOP_LOCALTIME": "localtime",
    "SVFOP_LOCALTIME_N": "localtime",
    "SVFOP_LOCALTIMESTAMP": "localtimestamp",
    "SVFOP_LOCALTIMESTAMP_N": "localtimestamp",
    "SVFOP_CURRENT_ROLE": "current_role",
    "SVFOP_CURRENT_USER": "current_user",
    "SVFOP_USER": "user",
    "SVFOP_SESSION_USER": "session_user",
    "SVFOP_CURRENT_CATALOG": "current_catalog",
    "SVFOP_CURRENT_SCHEMA": "current_schema",
}


def _figure_strength(node: Any) -> tuple[str | None, int]:
    """PostgreSQL's FigureColnameInternal: a name and how sure it is (2 strong, 1 weak, 0 none)."""
    if isinstance(node, ast.ColumnRef):
        last = cast("tuple[Any, ...]", node.fields)[-1]
        return (last.sval, 2) if isinstance(last, ast.String) else (None, 0)
    if isinstance(node, ast.A_Indirection):
        names = [i.sval for i in node.indirection or () if isinstance(i, ast.String)]
        return (names[-1], 2) if names else _figure_strength(node.arg)
    if isinstance(node, ast.FuncCall):
        return func_name(node)[1], 2
    if isinstance(node, ast.A_Expr):
        return ("nullif", 2) if node.kind == enums.A_Expr_Kind.AEXPR_NULLIF else (None, 0)
    if isinstance(node, ast.TypeCast):
        name, strength = _figure_strength(node.arg)
        if strength <= 1 and node.typeName is not None and node.typeName.names:
            return node.typeName.names[-1].sval, 1
        return name, strength
    if isinstance(node, ast.CollateClause):
        return _figure_strength(node.arg)
    if isinstance(node, ast.GroupingFunc):
        return "grouping", 2
    if isinstance(node, ast.SubLink):
        if node.subLinkType == enums.SubLinkType.EXISTS_SUBLINK:
            return "exists", 2
        if node.subLinkType == enums.SubLinkType.ARRAY_SUBLINK:
            return "array", 2
        if node.subLinkType in (enums.SubLinkType.EXPR_SUBLINK, enums.SubLinkType.MULTIEXPR_SUBLINK):
            inner = node.subselect
            targets = inner.targetList if isinstance(inner, ast.SelectStmt) else None
            if targets:
                first = targets[0]
                name = first.name or _figure(first.val)
                return (name, 2) if name else (None, 0)
        return None, 0
    if isinstance(node, ast.CaseExpr):
        name, strength = _figure_strength(node.defresult)
        return ("case", 1) if strength <= 1 else (name, strength)
    if isinstance(node, ast.A_ArrayExpr):
        return "array", 2
    if isinstance(node, ast.RowExpr):
        return "row", 2
    if isinstance(node, ast.CoalesceExpr):
        return "coalesce", 2
    if isinstance(node, ast.MinMaxExpr):
        return ("greatest" if node.op == enums.MinMaxOp.IS_GREATEST else "least"), 2
    if isinstance(node, ast.SQLValueFunction):
        op = getattr(node.op, "name", str(node.op))
        name = _VALUE_FUNCTION_NAMES.get(op)
        return (name, 2) if name else (None, 0)
    return None, 0


def conjuncts(node: ast.Node | None) -> list[ast.Node]:
    """The tests an AND of tests is made of (``a AND (b AND c)``: a, b, c)."""
    if node is None:
        return []
    if isinstance(node, ast.BoolExpr) and node.boolop == enums.BoolExprType.AND_EXPR:
        return [c for arg in node.args or () for c in conjuncts(arg)]
    return [node]


def all_of(nodes: list[ast.Node]) -> ast.Node | None:
    """The AND of ``nodes`` (None for none, the node itself for one)."""
    if not nodes:
        return None
    if len(nodes) == 1:
        return nodes[0]
    return ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=tuple(nodes))
