"""ORDER BY, DISTINCT ON and LIMIT / OFFSET: resolved to shard columns and client values."""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, cast

from pglast import ast, enums

from .collation import is_c
from .model import Const, Param, SortKey, Value
from .refusals import refuse
from .syntax import bare_name, integer_const, output_name

__all__ = ["limit_value", "resolve_reference", "sort_key"]


def resolve_reference(
    expr: ast.Node,
    targets: list[ast.ResTarget],
    by_target: Callable[[int], int],
    by_expr: Callable[[ast.Node], int],
    by_position: Callable[[int], int] | None = None,
) -> int:
    """The column an ORDER BY / DISTINCT ON item means, by PostgreSQL's rules.

    A number is a select-list position; a bare name is an output column name
    first; an expression equal to a select-list entry is that entry; anything
    else is computed as its own (hidden) column.
    """
    position = integer_const(expr)
    if position is not None:
        if not 1 <= position <= len(targets) and not _has_star(targets):
            raise refuse(f"ORDER BY position {position} (not in the select list)")
        return (by_position or by_target)(position - 1)
    name = bare_name(expr)
    if name is not None:
        for index, target in enumerate(targets):
            if output_name(target) == name:
                return by_target(index)
    for index, target in enumerate(targets):
        if target.val == expr:
            return by_target(index)
    return by_expr(expr)


def sort_key(item: ast.SortBy, column: int) -> SortKey:
    """The direction and NULLS placement of one ORDER BY item, with PostgreSQL's defaults."""
    if item.sortby_dir == enums.SortByDir.SORTBY_USING:
        raise refuse("ORDER BY ... USING")
    descending = item.sortby_dir == enums.SortByDir.SORTBY_DESC
    if item.sortby_nulls == enums.SortByNulls.SORTBY_NULLS_FIRST:
        nulls_first = True
    elif item.sortby_nulls == enums.SortByNulls.SORTBY_NULLS_LAST:
        nulls_first = False
    else:
        nulls_first = descending
    node = item.node
    collate_c = isinstance(node, ast.CollateClause) and is_c(node)
    return SortKey(column, descending, nulls_first, collate_c)


def limit_value(node: ast.Node | None, clause: str) -> Value | None:
    """LIMIT / OFFSET as a constant or a parameter; None when absent or ALL."""
    if node is None or (isinstance(node, ast.A_Const) and node.isnull):
        return None
    value = integer_const(node)
    if value is not None:
        return Const(value)
    if isinstance(node, ast.ParamRef):
        return Param(cast(int, node.number))
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.Float):
        return Const(int(Decimal(cast(str, node.val.fval)).to_integral_value(rounding=ROUND_HALF_UP)))
    raise refuse(f"{clause} with an expression (only a number or a parameter is merged)")


def _has_star(targets: list[ast.ResTarget]) -> bool:
    return any(
        isinstance(t.val, ast.ColumnRef) and isinstance(cast("tuple[Any, ...]", t.val.fields)[-1], ast.A_Star)
        for t in targets
    )
