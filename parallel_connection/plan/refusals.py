"""What cannot be merged exactly: each refusal names the construct and the way out."""

from __future__ import annotations

from typing import Any, cast

from pglast import ast, enums

from ..errors import refuse
from .syntax import walk

__all__ = ["check_top", "refuse"]


def check_top(stmt: ast.SelectStmt, aggregates: frozenset[str], *, local: bool = False) -> None:
    """Refuse top-level constructs no merge can answer exactly.

    ``local``: each shard's groups and windows are final (they keep the shard key).
    """
    if stmt.op != enums.SetOperation.SETOP_NONE:
        raise refuse(f"a set operation ({_setop(stmt)})")
    if stmt.lockingClause:
        raise refuse("FOR UPDATE / FOR SHARE")
    if stmt.intoClause is not None:
        raise refuse("SELECT INTO")
    if stmt.windowClause and not local:
        raise refuse("a window function (WINDOW clause)")
    if stmt.limitOption == enums.LimitOption.LIMIT_OPTION_WITH_TIES:
        raise refuse("FETCH FIRST ... WITH TIES")
    for node in stmt.groupClause or ():
        if isinstance(node, ast.GroupingSet):
            raise refuse("GROUPING SETS / ROLLUP / CUBE")
    for node in walk(stmt):
        if isinstance(node, ast.FuncCall) and not local:
            if node.over is not None:
                raise refuse(f"a window function ({_name(node)}() OVER ...)")
            if node.agg_within_group:
                raise refuse(f"an ordered-set aggregate ({_name(node)}() WITHIN GROUP)")
        elif isinstance(node, ast.GroupingFunc):
            raise refuse("GROUPING()")


def _name(call: ast.FuncCall) -> str:
    return ".".join(p.sval for p in cast("tuple[Any, ...]", call.funcname) if p.sval != "pg_catalog")


def _setop(stmt: ast.SelectStmt) -> str:
    names: dict[enums.SetOperation | None, str] = {
        enums.SetOperation.SETOP_UNION: "UNION",
        enums.SetOperation.SETOP_INTERSECT: "INTERSECT",
        enums.SetOperation.SETOP_EXCEPT: "EXCEPT",
    }
    name = names.get(stmt.op, "UNION")
    return f"{name} ALL" if stmt.all else name
