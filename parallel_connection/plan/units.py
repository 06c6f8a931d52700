"""Recursive planning: uncorrelated subqueries, CTEs and set operation arms run first, as steps.

A unit (a CTE body, a subquery in FROM, a subquery in an expression, an arm
of a set operation) that reads sharded rows and is not correlated with the
query around it is a statement of its own. When it needs a merge (or stages
of its own), it runs first and the statement reads its rows instead: a CTE
read several times runs once.
"""

from __future__ import annotations

from typing import Any, cast

from pglast import ast, enums

from .scopes import ctes_of, relation_select
from .stager import Stager
from .syntax import bare_name, copy_node, integer_const, output_name, walk

__all__ = ["replace_set_arms", "replace_units"]


def replace_units(stager: Stager, stmt: ast.SelectStmt, *, everything: bool) -> ast.SelectStmt | None:
    """``stmt`` with its units that need a merge replaced by steps (``everything``: also the
    subqueries in expressions that are plain unions); None when nothing changed."""
    current = copy_node(stmt)
    stager.ctes = ctes_of(current)  # the copy's CTEs: a body replaced here is seen by later steps
    changed = _visit(stager, current, everything, top=True)
    return current if changed else None


def _visit(stager: Stager, stmt: ast.SelectStmt, everything: bool, *, top: bool = False) -> bool:
    changed = False
    if stmt.withClause is not None:
        for cte in stmt.withClause.ctes or ():
            body = cast(ast.SelectStmt, cte.ctequery)
            if not isinstance(body, ast.SelectStmt):
                continue
            number = _unit(stager, body, False)
            if number is not None:
                cte.ctequery = relation_select(number)
                changed = True
            else:
                changed |= _visit(stager, body, everything)
    if stmt.op and stmt.larg is not None and stmt.rarg is not None:
        changed |= _visit(stager, stmt.larg, everything)
        changed |= _visit(stager, stmt.rarg, everything)
        return changed
    for item in stmt.fromClause or ():
        changed |= _from_item(stager, item, everything)
    for node in _expression_roots(stmt):
        changed |= _sublinks(stager, node, everything)
    return changed


def _sublinks(stager: Stager, node: Any, everything: bool) -> bool:
    """The subqueries in an expression that run first replaced by their steps' rows."""
    changed = False
    for sub in walk(node):
        if isinstance(sub, ast.SubLink) and isinstance(sub.subselect, ast.SelectStmt):
            inner = sub.subselect
            number = _unit(stager, _sublink_step(sub), everything, original=inner)
            if number is not None:
                sub.subselect = relation_select(number)
                changed = True
            else:
                changed |= _visit(stager, inner, everything)
    return changed


def _from_item(stager: Stager, item: ast.Node, everything: bool) -> bool:
    if isinstance(item, ast.JoinExpr):
        changed = _from_item(stager, cast(ast.Node, item.larg), everything)
        changed |= _from_item(stager, cast(ast.Node, item.rarg), everything)
        if item.quals is not None:
            changed |= _sublinks(stager, item.quals, everything)
        return changed
    if isinstance(item, ast.RangeSubselect) and isinstance(item.subquery, ast.SelectStmt):
        if not item.lateral:
            number = _unit(stager, item.subquery, False)
            if number is not None:
                item.subquery = relation_select(number)
                return True
        return _visit(stager, item.subquery, everything)
    return False


def _expression_roots(stmt: ast.SelectStmt) -> list[Any]:
    """Every clause of one level that holds expressions (FROM and WITH are visited apart)."""
    skip = {"fromClause", "withClause", "larg", "rarg"}
    node_type: Any = type(stmt)
    return [
        getattr(stmt, name, None)
        for name in node_type.__slots__
        if name not in skip and isinstance(getattr(stmt, name, None), (ast.Node, tuple))
    ]


def _unit(
    stager: Stager, unit: ast.SelectStmt, everything: bool, original: ast.SelectStmt | None = None
) -> int | None:
    """The step that replaces ``unit``, or None to leave it where it is."""
    original = original if original is not None else unit
    if not stager.sharded(original) or stager.outer(original) != []:
        return None
    plan = stager.plans(unit)
    if plan is None:
        return None
    if not (everything or plan.merge or plan.staged is not None):
        return None
    return stager.step(unit, checked=True)


def _sublink_step(sub: ast.SubLink) -> ast.SelectStmt:
    """The statement whose rows stand for a subquery in an expression (EXISTS needs one row)."""
    inner = cast(ast.SelectStmt, sub.subselect)
    simple = not inner.op or inner.larg is None
    if (
        sub.subLinkType == enums.SubLinkType.EXISTS_SUBLINK
        and simple
        and inner.limitCount is None
        and inner.limitOffset is None
    ):
        step = copy_node(inner)
        step.limitCount = ast.A_Const(isnull=False, val=ast.Integer(ival=1))
        step.limitOption = enums.LimitOption.LIMIT_OPTION_COUNT
        return step
    return inner


def replace_set_arms(stager: Stager, stmt: ast.SelectStmt) -> ast.SelectStmt | None:
    """A set operation whose arms that read sharded rows run first: PostgreSQL combines their rows."""
    if not stmt.op or stmt.larg is None or stmt.rarg is None:
        return None
    current = copy_node(stmt)
    stager.ctes = ctes_of(current)  # the copy's CTEs: a body replaced here is seen by later steps
    changed = False
    top = _top_rows(current)

    def arms(node: ast.SelectStmt, distinct: bool) -> ast.SelectStmt:
        nonlocal changed
        if node.op and node.larg is not None and node.rarg is not None:
            except_all = node.all and node.op == enums.SetOperation.SETOP_EXCEPT
            inner_distinct = (distinct or not node.all) and not except_all
            node.larg = arms(node.larg, inner_distinct)
            node.rarg = arms(node.rarg, inner_distinct)
            return node
        if not stager.sharded(node):
            return node
        step = copy_node(node)
        if distinct and step.distinctClause is None and step.limitCount is None and step.limitOffset is None:
            step.distinctClause = (None,)  # the set operation removes duplicates anyway
        if top is not None and not (step.sortClause or step.limitCount or step.limitOffset):
            # The first rows of a UNION ALL are among the first rows of each arm.
            step.sortClause, step.limitCount = copy_node(top[0]), top[1]
            step.limitOption = enums.LimitOption.LIMIT_OPTION_COUNT
        number = stager.step(step)
        if number is None:
            return node
        changed = True
        return relation_select(number)

    arms(current, False)
    return current if changed else None


def _top_rows(stmt: ast.SelectStmt) -> tuple[tuple[ast.SortBy, ...], ast.Node] | None:
    """(ORDER BY by position, LIMIT) each arm of a UNION ALL may keep, or None.

    Only for a tree of UNION ALL ordered by output positions or the first arm's output names,
    with a constant LIMIT (and OFFSET): each arm's first LIMIT + OFFSET rows hold the answer's.
    """
    if stmt.limitOption != enums.LimitOption.LIMIT_OPTION_COUNT or not stmt.sortClause:
        return None
    limit, offset = integer_const(stmt.limitCount), integer_const(stmt.limitOffset)
    if limit is None or (stmt.limitOffset is not None and offset is None):
        return None
    leaves: list[ast.SelectStmt] = []

    def union_all(node: ast.SelectStmt) -> bool:
        if node.op and node.larg is not None and node.rarg is not None:
            return bool(node.op == enums.SetOperation.SETOP_UNION and node.all) and (
                union_all(node.larg) and union_all(node.rarg)
            )
        leaves.append(node)
        return True

    if not union_all(stmt) or not leaves[0].targetList:
        return None
    names = [output_name(t) for t in leaves[0].targetList]
    order: list[ast.SortBy] = []
    for item in stmt.sortClause:
        position = integer_const(item.node)
        name = bare_name(item.node)
        if position is None and name is not None and names.count(name) == 1:
            position = names.index(name) + 1
        if position is None or not 1 <= position <= len(names):
            return None
        sort = copy_node(item)
        sort.node = ast.A_Const(isnull=False, val=ast.Integer(ival=position))
        order.append(sort)
    rows = limit + (offset or 0)
    return tuple(order), ast.A_Const(isnull=False, val=ast.Integer(ival=rows))


def union_on_shards(stager: Stager, stmt: ast.SelectStmt) -> bool:
    """A UNION ALL whose every arm is each shard's part of its rows: the shards run it whole and
    the client takes the union, streaming (no ORDER BY or LIMIT over it)."""
    if not stmt.op or stmt.larg is None or stmt.sortClause or stmt.limitCount or stmt.limitOffset:
        return False
    if stmt.withClause is not None:
        return False

    def arms(node: ast.SelectStmt) -> list[ast.SelectStmt] | None:
        if node.op and node.larg is not None and node.rarg is not None:
            if node.op != enums.SetOperation.SETOP_UNION or not node.all:
                return None
            left, right = arms(node.larg), arms(node.rarg)
            return None if left is None or right is None else left + right
        return [node]

    leaves = arms(stmt)
    if leaves is None:
        return False
    for leaf in leaves:
        if not stager.sharded(leaf):
            return False  # a copy's rows would come once per shard
        plan = stager.plans(leaf)
        plain = plan is not None and not (plan.merge or plan.staged or plan.pins or plan.first)
        if not plain or plan is None or plan.moments or any(t.sql is not None for t in plan.tasks):
            return False
    return True
