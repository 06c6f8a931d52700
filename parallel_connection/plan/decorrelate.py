"""Correlated subqueries over sharded rows, as grouped steps joined back to the outer rows.

The standard shapes: an aggregate subquery (``x < (SELECT 0.2 * avg(q) FROM
t WHERE t.k = outer.k)``) and ``[NOT] EXISTS (SELECT ... WHERE t.k =
outer.k AND ...)``, correlated only by equalities in their WHERE. The step
groups the subquery by its side of those equalities; the outer query
LEFT JOINs that step's rows on them (one row per key, so no outer row is
repeated) and reads the value, or tests that a row matched. A key with no
rows gets the aggregate's value over no rows, as the subquery would.
"""

from __future__ import annotations

from typing import Any, cast

from pglast import ast, enums

from .scopes import ctes_of, level_scope, relation_select
from .stager import Stager
from .syntax import all_of, column, conjuncts, copy_node, func_name, is_aggregate, output_name, walk

__all__ = ["decorrelate"]

_NULL_ON_EMPTY = frozenset(
    {
        "sum",
        "avg",
        "min",
        "max",
        "bool_and",
        "bool_or",
        "every",
        "stddev",
        "stddev_samp",
        "stddev_pop",
        "variance",
        "var_samp",
        "var_pop",
        "string_agg",
        "array_agg",
    }
)
"""Built-in aggregates whose value over no rows is NULL."""
_STRICT_FUNCTIONS = frozenset({"round", "trunc", "abs", "floor", "ceil", "ceiling", "sqrt", "ln", "exp"})


def decorrelate(stager: Stager, stmt: ast.SelectStmt) -> ast.SelectStmt | None:
    """``stmt`` with its decorrelatable subqueries over sharded rows joined back; None: none found."""
    current = copy_node(stmt)
    stager.ctes = ctes_of(current)  # the copy's CTEs: a body replaced here is seen by later steps
    changed = False
    counter = [0]
    for level in [n for n in walk(current, into_selects=True) if isinstance(n, ast.SelectStmt)]:
        if (level.op and level.larg is not None) or not level.fromClause:
            continue
        roots: list[ast.Node] = []
        if level.whereClause is not None:
            roots.append(level.whereClause)
        if not level.groupClause and not _aggregated(level, stager):
            roots.extend(level.targetList or ())
        for root in roots:
            for sub in [n for n in walk(root) if isinstance(n, ast.SubLink)]:
                changed |= _one(stager, level, sub, counter)
    return current if changed else None


def _aggregated(level: ast.SelectStmt, stager: Stager) -> bool:
    return level.havingClause is not None or any(
        is_aggregate(n, stager.facts.aggregates) for n in walk(level.targetList or ())
    )


def _star(level: ast.SelectStmt) -> bool:
    """An unqualified ``*`` in the select list (it expands to every FROM item's columns)."""
    return any(
        isinstance(t.val, ast.ColumnRef)
        and len(t.val.fields or ()) == 1
        and isinstance(t.val.fields[0], ast.A_Star)  # type: ignore[index]
        for t in level.targetList or ()
    )


def _one(stager: Stager, level: ast.SelectStmt, sub: ast.SubLink, counter: list[int]) -> bool:
    inner = sub.subselect
    kind = sub.subLinkType
    if not isinstance(inner, ast.SelectStmt) or (inner.op and inner.larg is not None):
        return False
    if kind not in (enums.SubLinkType.EXPR_SUBLINK, enums.SubLinkType.EXISTS_SUBLINK):
        return False
    if not stager.sharded(inner) or inner.limitCount is not None or inner.limitOffset is not None:
        return False
    if inner.groupClause or inner.havingClause is not None or inner.windowClause or inner.withClause:
        return False
    if kind == enums.SubLinkType.EXISTS_SUBLINK and _aggregated(inner, stager):
        return False  # one row whatever it reads: EXISTS is true
    if _star(level):
        return False  # SELECT * would show the joined step's columns too
    refs = stager.outer(inner)
    if not refs:
        return False
    pairs, rest = _correlation(stager, inner, refs)
    if pairs is None:
        return False
    owner = _owner(stager, level, [outer for _, outer in pairs])
    if owner is None:
        return False
    restriction = _restriction(stager, level, owner[1], pairs)
    if restriction is not None:
        rest = [*rest, restriction]
    aggregate = kind == enums.SubLinkType.EXPR_SUBLINK
    if aggregate:
        if len(inner.targetList or ()) != 1:
            return False
        value = cast(ast.Node, cast(ast.ResTarget, inner.targetList[0]).val)  # type: ignore[index]
        if not any(is_aggregate(n, stager.facts.aggregates) for n in walk(value)):
            return False
        if inner.distinctClause is not None:
            return False
    counter[0] += 1
    alias = f"_pc_d{counter[0]}"
    keys = [ast.ResTarget(name=f"_pc_k{i + 1}", val=copy_node(e)) for i, (e, _) in enumerate(pairs)]
    marker = ast.ResTarget(name="_pc_m", val=ast.A_Const(isnull=False, val=ast.Boolean(boolval=True)))
    step = ast.SelectStmt(
        targetList=(*keys, marker),
        fromClause=inner.fromClause,
        whereClause=all_of(rest),
        groupClause=tuple(copy_node(e) for e, _ in pairs),
        op=enums.SetOperation.SETOP_NONE,
    )
    empty: ast.Node | None = None
    if aggregate:
        step.targetList = (*keys, marker, ast.ResTarget(name="_pc_v", val=copy_node(value)))
        if not _null_on_empty(value, stager):
            empty_step = ast.SelectStmt(
                targetList=(ast.ResTarget(name="v", val=copy_node(value)),),
                fromClause=inner.fromClause,
                whereClause=ast.A_Const(isnull=False, val=ast.Boolean(boolval=False)),
                op=enums.SetOperation.SETOP_NONE,
            )
            empty_number = stager.step(empty_step)
            if empty_number is None:
                return False
            empty = ast.SubLink(
                subLinkType=enums.SubLinkType.EXPR_SUBLINK, subselect=relation_select(empty_number)
            )
    number = stager.step(step)
    if number is None:
        return False
    on = all_of(
        [
            ast.A_Expr(
                kind=enums.A_Expr_Kind.AEXPR_OP,
                name=(ast.String(sval="="),),
                lexpr=column(alias, f"_pc_k{i + 1}"),
                rexpr=copy_node(o),
            )
            for i, (_, o) in enumerate(pairs)
        ]
    )
    joined = ast.JoinExpr(
        jointype=enums.JoinType.JOIN_LEFT,
        isNatural=False,
        larg=owner[1],
        rarg=ast.RangeSubselect(
            lateral=False, subquery=relation_select(number), alias=ast.Alias(aliasname=alias)
        ),
        quals=on,
    )
    items = list(level.fromClause or ())
    items[owner[0]] = joined
    level.fromClause = tuple(items)
    replacement: ast.Node
    if aggregate:
        replacement = column(alias, "_pc_v")
        if empty is not None:
            replacement = ast.CaseExpr(
                args=(ast.CaseWhen(expr=column(alias, "_pc_m"), result=column(alias, "_pc_v")),),
                defresult=empty,
            )
    else:
        replacement = ast.NullTest(arg=column(alias, "_pc_m"), nulltesttype=enums.NullTestType.IS_NOT_NULL)
    for target in level.targetList or ():
        if target.val is sub and target.name is None:
            target.name = output_name(target) or "?column?"  # the name the subquery gave the column
    _replace(level, sub, replacement)
    return True


def _correlation(
    stager: Stager, inner: ast.SelectStmt, refs: list[ast.ColumnRef]
) -> tuple[list[tuple[ast.Node, ast.Node]] | None, list[ast.Node]]:
    """(inner side, outer side) of each correlating equality, and the other WHERE tests."""
    outer_ids = {id(r) for r in refs}
    pairs: list[tuple[ast.Node, ast.Node]] = []
    rest: list[ast.Node] = []
    for conjunct in conjuncts(inner.whereClause):
        inside = {id(n) for n in walk(conjunct) if isinstance(n, ast.ColumnRef)} & outer_ids
        if not inside:
            rest.append(conjunct)
            continue
        if not (isinstance(conjunct, ast.A_Expr) and conjunct.kind == enums.A_Expr_Kind.AEXPR_OP):
            return None, []
        if [getattr(n, "sval", None) for n in conjunct.name or ()] != ["="]:
            return None, []
        left, right = cast(ast.Node, conjunct.lexpr), cast(ast.Node, conjunct.rexpr)
        left_outer = _all_outer(left, outer_ids)
        right_outer = _all_outer(right, outer_ids)
        if left_outer is True and right_outer is False:
            pairs.append((right, left))
        elif right_outer is True and left_outer is False:
            pairs.append((left, right))
        else:
            return None, []
    mentioned = {id(n) for c in rest for n in walk(c)}
    others = [n for n in walk(inner) if isinstance(n, ast.ColumnRef) and id(n) in outer_ids]
    if any(id(n) in mentioned for n in others) or not pairs:
        return None, []
    used = {id(n) for _, o in pairs for n in walk(o)}
    if any(id(r) not in used for r in refs):
        return None, []
    return pairs, rest


def _restriction(
    stager: Stager, level: ast.SelectStmt, owner: ast.Node, pairs: list[tuple[ast.Node, ast.Node]]
) -> ast.Node | None:
    """``inner keys IN (SELECT outer keys FROM owner WHERE its own tests)``: only the groups an outer
    row can look up, when the owner reads no sharded table (each shard can then test it alone)."""
    if stager.sharded(owner):
        return None
    others = [item for item in level.fromClause or () if item is not owner]
    tests: list[ast.Node] = []
    for conjunct in conjuncts(level.whereClause):
        if _owners_own(stager, conjunct, owner, others):
            tests.append(copy_node(conjunct))
    if not tests:
        return None
    select = ast.SelectStmt(
        targetList=tuple(ast.ResTarget(val=copy_node(o)) for _, o in pairs),
        fromClause=(copy_node(owner),),
        whereClause=all_of(tests),
        op=enums.SetOperation.SETOP_NONE,
    )
    inner = [copy_node(i) for i, _ in pairs]
    test: ast.Node = (
        inner[0]
        if len(inner) == 1
        else ast.RowExpr(args=tuple(inner), row_format=enums.CoercionForm.COERCE_IMPLICIT_CAST)
    )
    return ast.SubLink(subLinkType=enums.SubLinkType.ANY_SUBLINK, testexpr=test, subselect=select)


def _owners_own(stager: Stager, conjunct: ast.Node, owner: ast.Node, others: list[ast.Node]) -> bool:
    """A WHERE test of the owner's columns alone: no other item's, no sharded or correlated subquery,
    no volatile call."""
    refs = 0
    for node in walk(conjunct):
        if isinstance(node, ast.SelectStmt):
            if stager.sharded(node) or stager.outer(node) != []:
                return False
        elif isinstance(node, ast.FuncCall) and func_name(node)[1] in stager.facts.volatile:
            return False
        elif isinstance(node, ast.ColumnRef):
            if not _holds(stager, owner, node) or any(_holds(stager, o, node) for o in others):
                return False
            refs += 1
    return refs > 0


def _all_outer(node: ast.Node, outer_ids: set[int]) -> bool | None:
    """True: only outer columns; False: only inner ones; None: both (or a subquery)."""
    refs = [n for n in walk(node) if isinstance(n, ast.ColumnRef)]
    if any(isinstance(n, ast.SubLink) for n in walk(node)) or not refs:
        return None if refs else False
    outer = [id(r) in outer_ids for r in refs]
    if all(outer):
        return True
    return False if not any(outer) else None


def _owner(stager: Stager, level: ast.SelectStmt, outers: list[ast.Node]) -> tuple[int, ast.Node] | None:
    """The one FROM item of ``level`` holding every outer column the equalities read."""
    items = list(level.fromClause or ())
    found: set[int] = set()
    for expr in outers:
        for ref in [n for n in walk(expr) if isinstance(n, ast.ColumnRef)]:
            owners = [i for i, item in enumerate(items) if _holds(stager, item, ref)]
            if len(owners) != 1:
                return None
            found.add(owners[0])
    if len(found) != 1:
        return None
    index = found.pop()
    return index, items[index]


def _holds(stager: Stager, item: ast.Node, ref: ast.ColumnRef) -> bool:
    scope = level_scope(ast.SelectStmt(fromClause=(item,)), stager.layout, stager.ctes, None)
    return scope.owns(ref) is True


def _null_on_empty(node: Any, stager: Stager) -> bool:
    """The expression is NULL when its aggregates see no rows (NULL-valued aggregates, strict around)."""
    if is_aggregate(node, stager.facts.aggregates):
        schema, name = func_name(node)
        builtin = schema == "pg_catalog" or (schema is None and name not in stager.facts.shadowed)
        return builtin and name in _NULL_ON_EMPTY
    if isinstance(node, ast.A_Const):
        return False
    if isinstance(node, ast.TypeCast):
        return _null_on_empty(node.arg, stager)
    if isinstance(node, ast.A_Expr) and node.kind == enums.A_Expr_Kind.AEXPR_OP:
        return any(_null_on_empty(n, stager) for n in (node.lexpr, node.rexpr) if n is not None)
    if isinstance(node, ast.FuncCall) and func_name(node)[1] in _STRICT_FUNCTIONS and node.args:
        return _null_on_empty(node.args[0], stager)
    return False


def _replace(level: ast.SelectStmt, old: ast.Node, new: ast.Node) -> None:
    def visit(node: Any) -> Any:
        if node is old:
            return new
        if isinstance(node, tuple):
            return tuple(visit(n) for n in node)
        if isinstance(node, ast.Node) and not isinstance(node, ast.SelectStmt):
            node_type: Any = type(node)
            for name in node_type.__slots__:
                value = getattr(node, name, None)
                if isinstance(value, (ast.Node, tuple)):
                    setattr(node, name, visit(value))
        return node

    for slot in ("whereClause", "targetList"):
        value = getattr(level, slot)
        if value is not None:
            setattr(level, slot, visit(value))
