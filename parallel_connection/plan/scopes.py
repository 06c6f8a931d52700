"""What a piece of a bound SELECT reads: sharded tables, the columns of its FROM items, outer columns.

The staged planner asks these questions of subqueries, CTEs and FROM items
before it moves them into steps of their own. Answers err on the safe side:
a column that cannot be placed counts as a reference to an outer query.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from pglast import ast

from .layout import Layout
from .names import is_cte_name
from .syntax import column, output_name, walk

__all__ = [
    "RELATION",
    "Scope",
    "column_names",
    "ctes_of",
    "level_scope",
    "outer_refs",
    "reads_sharded",
    "relation_select",
    "select_levels",
]

RELATION = "_pc_relation"
"""The marker function of a step's rows in FROM: ``_pc_relation(n)`` is replaced by ``unnest(...)``."""


def relation_select(number: int, collations: list[tuple[str, str | None]] | None = None) -> ast.SelectStmt:
    """``SELECT * FROM _pc_relation(number)``: the rows of step ``number``.

    ``collations``: each column's name and collation (the moved rows take the database's default
    collation, so a column declared with another one gets it back).
    """
    call = ast.FuncCall(
        funcname=(ast.String(sval=RELATION),),
        args=(ast.A_Const(isnull=False, val=ast.Integer(ival=number)),),
        agg_within_group=False,
        agg_star=False,
        agg_distinct=False,
        func_variadic=False,
    )
    star = ast.ResTarget(val=ast.ColumnRef(fields=(ast.A_Star(),)))
    function = ast.RangeFunction(
        lateral=False, ordinality=False, is_rowsfrom=False, functions=((call, None),)
    )
    targets: tuple[ast.ResTarget, ...] = (star,)
    if collations is not None and any(c is not None for _, c in collations):
        targets = tuple(_collated(name, collation) for name, collation in collations)
    return ast.SelectStmt(targetList=targets, fromClause=(function,))


def _collated(name: str, collation: str | None) -> ast.ResTarget:
    value: ast.Node = column(name)
    if collation is not None:
        value = ast.CollateClause(arg=value, collname=(ast.String(sval=collation),))
    return ast.ResTarget(name=name, val=value)


def ctes_of(stmt: ast.Node) -> dict[str, ast.CommonTableExpr]:
    """Every CTE of a bound statement by its (unique) bound name."""
    found: dict[str, ast.CommonTableExpr] = {}
    for node in walk(stmt, into_selects=True):
        if isinstance(node, ast.CommonTableExpr) and node.ctename:
            found[node.ctename] = node
    return found


def reads_sharded(node: ast.Node, layout: Layout, ctes: dict[str, ast.CommonTableExpr]) -> bool:
    """``node`` reads a sharded table, directly or through the CTEs it names."""
    seen: set[str] = set()
    stack = [node]
    while stack:
        for sub in walk(stack.pop(), into_selects=True):
            if not isinstance(sub, ast.RangeVar):
                continue
            name = cast(str, sub.relname)
            if is_cte_name(name) and not sub.schemaname:
                if name in ctes and name not in seen:
                    seen.add(name)
                    stack.append(cast(ast.Node, ctes[name].ctequery))
                continue
            info = layout.table(sub)
            if info is not None and info.kind == "sharded":
                return True
    return False


@dataclass
class Scope:
    """One query level's FROM items: alias -> column names (None: not known)."""

    items: dict[str, frozenset[str] | None]
    parent: Scope | None = None

    def owns(self, column: ast.ColumnRef) -> bool | None:
        """True when this level's items hold ``column``; None when it cannot be told."""
        fields = cast("tuple[Any, ...]", column.fields)
        names = [f.sval for f in fields if isinstance(f, ast.String)]
        if isinstance(fields[-1], ast.A_Star):
            return True if len(names) == 0 else names[-1] in self.items
        if len(names) >= 2:
            return names[-2] in self.items
        name = names[0]
        if name in self.items:
            return True  # a whole-row reference
        unknown = False
        for columns in self.items.values():
            if columns is None:
                unknown = True
            elif name in columns:
                return True
        return None if unknown else False


def column_names(stmt: Any) -> frozenset[str] | None:
    """The output column names of a SELECT, when known without the shards."""
    while isinstance(stmt, ast.SelectStmt) and stmt.op and stmt.larg is not None:
        stmt = stmt.larg
    if not isinstance(stmt, ast.SelectStmt):
        return None
    if stmt.valuesLists:
        return frozenset(f"column{i + 1}" for i in range(len(stmt.valuesLists[0])))
    names: set[str] = set()
    for target in stmt.targetList or ():
        if isinstance(target.val, ast.ColumnRef) and isinstance(
            cast("tuple[Any, ...]", target.val.fields)[-1], ast.A_Star
        ):
            return None
        name = output_name(target)
        names.add(name if name is not None else "?column?")
    return frozenset(names)


def _item_columns(
    node: ast.Node, layout: Layout, ctes: dict[str, ast.CommonTableExpr]
) -> Iterator[tuple[str, frozenset[str] | None]]:
    """(alias, columns) of every relation one FROM item brings into scope."""
    if isinstance(node, ast.JoinExpr):
        if node.alias is not None:
            yield cast(str, node.alias.aliasname), None
            return
        yield from _item_columns(cast(ast.Node, node.larg), layout, ctes)
        yield from _item_columns(cast(ast.Node, node.rarg), layout, ctes)
        return
    alias = getattr(node, "alias", None)
    colnames = frozenset(c.sval for c in alias.colnames) if alias is not None and alias.colnames else None
    if isinstance(node, ast.RangeVar):
        name = cast(str, alias.aliasname if alias is not None else node.relname)
        if is_cte_name(node.relname) and not node.schemaname:
            cte = ctes.get(cast(str, node.relname))
            own: frozenset[str] | None
            if cte is not None and cte.aliascolnames:
                own = frozenset(c.sval for c in cte.aliascolnames)
            else:
                own = column_names(cte.ctequery) if cte is not None else None
            yield name, colnames or own
            return
        info = layout.table(node)
        yield (
            name,
            colnames
            if colnames and info is not None and info.columns is None
            else (info.columns if info is not None else None),
        )
        return
    if isinstance(node, ast.RangeSubselect):
        name = cast(str, alias.aliasname) if alias is not None else ""
        yield name, colnames or column_names(node.subquery)
        return
    if isinstance(node, ast.RangeFunction):
        name = cast(str, alias.aliasname) if alias is not None else ""
        yield name, colnames
        return
    yield "", None


def level_scope(
    stmt: ast.SelectStmt, layout: Layout, ctes: dict[str, ast.CommonTableExpr], parent: Scope | None
) -> Scope:
    items: dict[str, frozenset[str] | None] = {}
    for item in stmt.fromClause or ():
        for alias, columns in _item_columns(item, layout, ctes):
            items[alias] = columns
    return Scope(items, parent)


def select_levels(stmt: ast.SelectStmt) -> Iterator[ast.SelectStmt]:
    """The simple SELECTs of a set operation tree (``stmt`` itself when it is one)."""
    if stmt.op and stmt.larg is not None and stmt.rarg is not None:
        yield from select_levels(stmt.larg)
        yield from select_levels(stmt.rarg)
    else:
        yield stmt


def outer_refs(
    unit: ast.SelectStmt, layout: Layout, ctes: dict[str, ast.CommonTableExpr]
) -> list[ast.ColumnRef] | None:
    """The column references inside ``unit`` to queries around it; None when some cannot be placed."""
    found: list[ast.ColumnRef] = []
    unknown = False

    def visit(stmt: ast.SelectStmt, parent: Scope | None) -> None:
        nonlocal unknown
        for level in select_levels(stmt):
            scope = level_scope(level, layout, ctes, parent)
            for node in _level_nodes(level):
                if isinstance(node, ast.SelectStmt):
                    visit(node, scope)
                elif isinstance(node, ast.ColumnRef):
                    owner: Scope | None = scope
                    placed = False
                    while owner is not None:
                        owns = owner.owns(node)
                        if owns is None:
                            unknown = True
                            placed = True
                            break
                        if owns:
                            placed = True
                            break
                        owner = owner.parent
                    if not placed:
                        found.append(node)

    visit(unit, None)
    return None if unknown else found


def _level_nodes(level: ast.SelectStmt) -> Iterator[ast.Node]:
    """The nodes of one query level, with its nested SELECTs (not entered) and WITH bodies."""
    stack: list[Any] = []
    for name in type(level).__slots__:  # type: ignore[attr-defined]
        if name in ("larg", "rarg"):
            continue
        stack.append(getattr(level, name, None))
    while stack:
        value = stack.pop()
        if isinstance(value, (tuple, list)):
            stack.extend(value)
            continue
        if not isinstance(value, ast.Node):
            continue
        yield value
        if isinstance(value, ast.SelectStmt):
            continue
        node_type: Any = type(value)
        for name in node_type.__slots__:
            stack.append(getattr(value, name, None))
