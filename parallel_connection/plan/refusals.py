"""What cannot be merged exactly: each refusal names the construct and the way out."""

from __future__ import annotations

from collections.abc import Callable

from pglast import ast, enums

from ..errors import refuse
from .syntax import aggregate_name, walk

__all__ = ["check_nested", "check_top", "refuse"]


def check_top(stmt: ast.SelectStmt, aggregates: frozenset[str]) -> None:
    """Refuse top-level constructs no merge can answer exactly."""
    if stmt.op != enums.SetOperation.SETOP_NONE:
        raise refuse(f"a set operation ({_setop(stmt)})")
    if stmt.lockingClause:
        raise refuse("FOR UPDATE / FOR SHARE")
    if stmt.intoClause is not None:
        raise refuse("SELECT INTO")
    if stmt.windowClause:
        raise refuse("a window function (WINDOW clause)")
    if stmt.limitOption == enums.LimitOption.LIMIT_OPTION_WITH_TIES:
        raise refuse("FETCH FIRST ... WITH TIES")
    for node in stmt.groupClause or ():
        if isinstance(node, ast.GroupingSet):
            raise refuse("GROUPING SETS / ROLLUP / CUBE")
    for node in walk(stmt):
        if isinstance(node, ast.FuncCall):
            if node.over is not None:
                raise refuse(f"a window function ({_name(node)}() OVER ...)")
            if node.agg_within_group:
                raise refuse(f"an ordered-set aggregate ({_name(node)}() WITHIN GROUP)")
        elif isinstance(node, ast.GroupingFunc):
            raise refuse("GROUPING()")


def check_nested(
    stmt: ast.SelectStmt, aggregates: frozenset[str], whole: Callable[[ast.SelectStmt], bool]
) -> None:
    """Refuse subqueries and CTEs whose per-shard answers would not add up.

    A subquery for which ``whole`` is true (it reads only tables copied to
    every shard) gets the same answer on every shard and is left alone.
    """
    for node in walk(stmt, into_selects=True):
        if isinstance(node, ast.SelectStmt) and node is not stmt and not whole(node):
            _check_subquery(node, aggregates)


def _check_subquery(sub: ast.SelectStmt, aggregates: frozenset[str]) -> None:
    where = "in a subquery or CTE"
    if sub.op != enums.SetOperation.SETOP_NONE:
        if sub.larg is not None and sub.rarg is not None:
            raise refuse(f"a set operation ({_setop(sub)}) {where}")
        return
    if sub.groupClause or sub.havingClause:
        raise refuse(f"GROUP BY / HAVING {where}")
    if sub.distinctClause is not None:
        raise refuse(f"DISTINCT {where}")
    if sub.limitCount is not None or sub.limitOffset is not None:
        raise refuse(f"LIMIT / OFFSET {where}")
    if sub.lockingClause:
        raise refuse(f"FOR UPDATE / FOR SHARE {where}")
    if sub.windowClause:
        raise refuse(f"a window function {where}")
    for node in walk(sub):
        if isinstance(node, ast.FuncCall):
            if node.over is not None:
                raise refuse(f"a window function ({_name(node)}() OVER ...) {where}")
            if aggregate_name(node, aggregates) is not None:
                raise refuse(f"an aggregate ({_name(node)}()) {where}")


def _name(call: ast.FuncCall) -> str:
    return ".".join(p.sval for p in call.funcname if p.sval != "pg_catalog")


def _setop(stmt: ast.SelectStmt) -> str:
    name = {
        enums.SetOperation.SETOP_UNION: "UNION",
        enums.SetOperation.SETOP_INTERSECT: "INTERSECT",
        enums.SetOperation.SETOP_EXCEPT: "EXCEPT",
    }.get(stmt.op, "UNION")
    return f"{name} ALL" if stmt.all else name
