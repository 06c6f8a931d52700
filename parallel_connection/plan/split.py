"""The top level split in two: the shards compute the groups (or rows), PostgreSQL computes the rest.

With aggregates, a step computes each group's keys and aggregates (merged
from the shards' partials as ever); the rest of the statement (expressions
over them, HAVING, windows, DISTINCT, ORDER BY, LIMIT) reads that step's
rows as the groups. GROUPING SETS, ROLLUP and CUBE run one step per
grouping set. With windows and no aggregates, the step reads the rows the
windows need.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, cast

from pglast import ast, enums

from .scopes import Scope, level_scope, relation_select
from .stager import Stager
from .syntax import bare_name, column, copy_node, deparse, integer_const, is_aggregate, output_name, walk

__all__ = ["Source", "aggregate_calls", "split_top", "split_with"]

_GROUPS = "_pc_g"


Source = Callable[[Stager, ast.SelectStmt, list[ast.Node]], ast.SelectStmt | None]
"""Makes the groups' rows from the step computing them (and its aggregates); None: refused."""


class _Unsplittable(Exception):
    """A column the split cannot place (neither grouped nor aggregated, or correlated)."""


def split_top(stager: Stager, stmt: ast.SelectStmt) -> ast.SelectStmt | None:
    """The statement over the groups (or rows) a step computes; None when it does not split."""
    if stmt.op and stmt.larg is not None:
        return None
    aggregates = stager.facts.aggregates
    above = _above_where(stmt)
    grouped = (
        bool(stmt.groupClause)
        or stmt.havingClause is not None
        or any(is_aggregate(n, aggregates) for root in above for n in walk(root))
    )
    windowed = bool(stmt.windowClause) or any(
        isinstance(n, ast.FuncCall) and n.over is not None for root in above for n in walk(root)
    )
    if not grouped and not windowed:
        return None
    try:
        if grouped:
            return _split_groups(stager, stmt)
        return _split_rows(stager, stmt)
    except _Unsplittable:
        return None


def split_with(stager: Stager, stmt: ast.SelectStmt, source: Source) -> ast.SelectStmt | None:
    """The split with the groups' rows made by ``source`` (no grouping sets, no GROUPING())."""
    try:
        return _split_groups(stager, stmt, source)
    except _Unsplittable:
        return None


def aggregate_calls(stmt: ast.SelectStmt, aggregates: frozenset[str]) -> list[ast.FuncCall]:
    """The aggregate calls the top level evaluates after grouping."""
    return [
        cast(ast.FuncCall, n)
        for root in _above_where(stmt)
        for n in walk(root)
        if is_aggregate(n, aggregates)
    ]


def _above_where(stmt: ast.SelectStmt) -> list[ast.Node]:
    """What is evaluated after grouping: select list, HAVING, ORDER BY, windows, DISTINCT ON."""
    roots: list[ast.Node] = [*(stmt.targetList or ()), *(stmt.sortClause or ()), *(stmt.windowClause or ())]
    if stmt.havingClause is not None:
        roots.append(stmt.havingClause)
    roots.extend(n for n in stmt.distinctClause or () if n is not None)
    return roots


class _Rewriter:
    """Replaces group keys, aggregates and GROUPING() with columns of the groups' step."""

    def __init__(self, stager: Stager, groups: list[ast.Node], *, rows: bool = False) -> None:
        self.stager = stager
        self.groups = groups
        self.keys = [_key(g) for g in groups]
        self.aggregates: list[ast.Node] = []
        self.grouping: list[ast.GroupingFunc] = []
        self.rows = rows

    def column(self, name: str) -> ast.ColumnRef:
        return column(_GROUPS, name)

    def group(self, node: ast.Node) -> int | None:
        key = _key(node)
        if key in self.keys:
            return self.keys.index(key)
        if isinstance(node, ast.ColumnRef) and key[0] == "col":
            same = [i for i, k in enumerate(self.keys) if k[0] == "col" and k[-1] == key[-1]]
            if len(same) == 1 and (len(key) == 2 or len(self.keys[same[0]]) == 2):
                return same[0]
        return None

    def visit(self, node: Any) -> Any:
        if isinstance(node, tuple):
            return tuple(self.visit(n) for n in node)
        if not isinstance(node, ast.Node):
            return node
        if isinstance(node, ast.SortBy | ast.ResTarget | ast.WindowDef):
            return self.children(node)
        index = self.group(node)
        if index is not None:
            return self.column(f"g{index + 1}")
        if not self.rows and is_aggregate(node, self.stager.facts.aggregates):
            key = deparse(node)
            keys = [deparse(a) for a in self.aggregates]
            if key not in keys:
                self.aggregates.append(copy_node(node))
                keys.append(key)
            return self.column(f"a{keys.index(key) + 1}")
        if isinstance(node, ast.GroupingFunc):
            self.grouping.append(node)
            return self.column(f"f{len(self.grouping)}")
        if isinstance(node, ast.SubLink):
            inner = cast(ast.SelectStmt, node.subselect)
            if self.stager.outer(inner) != []:
                raise _Unsplittable
            sublink = copy_node(node)  # its left side (``x IN``, ``max(n) > ALL``) reads the groups
            sublink.testexpr = self.visit(node.testexpr) if node.testexpr is not None else None
            return sublink
        if isinstance(node, ast.ColumnRef):
            if self.rows:
                self.groups.append(node)
                self.keys.append(_key(node))
                return self.column(f"g{len(self.groups)}")
            raise _Unsplittable
        return self.children(node)

    def children(self, node: ast.Node) -> ast.Node:
        node = copy_node(node)
        node_type: Any = type(node)
        for name in node_type.__slots__:
            value = getattr(node, name, None)
            if isinstance(value, (ast.Node, tuple)):
                setattr(node, name, self.visit(value))
        return node


def _key(node: ast.Node) -> tuple[Any, ...]:
    if isinstance(node, ast.ColumnRef):
        fields = cast("tuple[Any, ...]", node.fields)
        return ("col", *(f.sval if isinstance(f, ast.String) else "*" for f in fields[-2:]))
    return ("expr", deparse(node))


def _split_groups(
    stager: Stager, stmt: ast.SelectStmt, source: Source | None = None
) -> ast.SelectStmt | None:
    targets = list(stmt.targetList or ())
    scope = level_scope(stmt, stager.layout, stager.ctes, None)
    items = [_resolved(g, targets, scope) for g in stmt.groupClause or ()]
    sets = _grouping_sets(items)
    plain = [g for g in items if not isinstance(g, ast.GroupingSet)]
    if source is not None and sets is not None:
        return None
    groups: list[ast.Node] = []
    for expr in [*plain, *(e for s in sets or () for e in s)]:
        if _key(expr) not in [_key(g) for g in groups]:
            groups.append(expr)
    keys = [_key(g) for g in groups]
    finished = not any(_is_final(t.val, stager, keys) for t in targets) and _only_plain(stmt, stager, keys)
    if source is None and sets is None and finished:
        return None  # already keys and aggregates: the step would be the statement again
    rewriter = _Rewriter(stager, groups)
    final = _final(stmt, rewriter, targets)
    if sets is not None and stmt.groupDistinct:
        distinct: dict[frozenset[tuple[Any, ...]], list[ast.Node]] = {}
        for grouping_set in sets:
            distinct.setdefault(frozenset(_key(e) for e in grouping_set), grouping_set)
        sets = list(distinct.values())
    if source is not None:
        if rewriter.grouping:
            return None
        made = source(stager, _group_step(stmt, rewriter, groups), rewriter.aggregates)
        if made is None:
            return None
        final.fromClause = (
            ast.RangeSubselect(lateral=False, subquery=made, alias=ast.Alias(aliasname=_GROUPS)),
        )
        return final
    numbers: list[int] = []
    chosen = sets if sets is not None else [groups]
    for grouping_set in chosen:
        step = _group_step(stmt, rewriter, grouping_set)
        if not stager.sharded(step):
            return None
        number = stager.step(step)
        if number is None:
            return None
        numbers.append(number)
    # Where a grouping set leaves a key out, its NULL takes the key's type from a set that has it.
    typed: dict[int, int] = {}
    for number, grouping_set in zip(numbers, chosen, strict=True):
        for index in {rewriter.group(e) for e in grouping_set} - {None}:
            typed.setdefault(cast(int, index), number)
    arms = [_arm(n, rewriter, s, typed) for n, s in zip(numbers, chosen, strict=True)]
    rows = arms[0]
    for arm in arms[1:]:
        rows = ast.SelectStmt(op=enums.SetOperation.SETOP_UNION, all=True, larg=rows, rarg=arm)
    final.fromClause = (ast.RangeSubselect(lateral=False, subquery=rows, alias=ast.Alias(aliasname=_GROUPS)),)
    return final


def _is_final(node: Any, stager: Stager, keys: list[tuple[Any, ...]] | None = None) -> bool:
    """More than a group key or one aggregate: an expression the split finishes."""
    if keys is not None and _key(node) in keys:
        return False
    return not (isinstance(node, ast.ColumnRef) or is_aggregate(node, stager.facts.aggregates))


def _only_plain(stmt: ast.SelectStmt, stager: Stager, keys: list[tuple[Any, ...]]) -> bool:
    """No HAVING, windows or GROUPING(), and ORDER BY only positions, keys and aggregates."""
    return (
        stmt.havingClause is None
        and all(
            integer_const(s.node) is not None or not _is_final(s.node, stager, keys)
            for s in stmt.sortClause or ()
        )
        and not stmt.windowClause
        and not any(isinstance(n, ast.FuncCall) and n.over is not None for n in walk(stmt.targetList or ()))
        and not any(isinstance(n, ast.GroupingFunc) for n in walk(stmt.targetList or ()))
    )


def _final(stmt: ast.SelectStmt, rewriter: _Rewriter, targets: list[ast.ResTarget]) -> ast.SelectStmt:
    """What is left of the statement, over the groups' columns."""
    outputs = {output_name(t) for t in targets}
    final = ast.SelectStmt(
        targetList=tuple(_named(rewriter.visit(t), t) for t in targets),
        whereClause=rewriter.visit(stmt.havingClause) if stmt.havingClause is not None else None,
        windowClause=rewriter.visit(stmt.windowClause) if stmt.windowClause else None,
        sortClause=tuple(_order_item(item, rewriter, targets, outputs) for item in stmt.sortClause or ())
        or None,
        distinctClause=tuple(
            n if n is None else _order_expr(n, rewriter, targets, outputs) for n in stmt.distinctClause
        )
        if stmt.distinctClause is not None
        else None,
        limitCount=stmt.limitCount,
        limitOffset=stmt.limitOffset,
        limitOption=stmt.limitOption,
        op=enums.SetOperation.SETOP_NONE,
    )
    return final


def _named(target: ast.ResTarget, original: ast.ResTarget) -> ast.ResTarget:
    if original.name is None and not isinstance(original.val, ast.SubLink):
        target.name = output_name(original) or "?column?"
    return target


def _order_item(
    item: ast.SortBy, rewriter: _Rewriter, targets: list[ast.ResTarget], outputs: set[str | None]
) -> ast.SortBy:
    item = copy_node(item)
    item.node = _order_expr(cast(ast.Node, item.node), rewriter, targets, outputs)
    return item


def _order_expr(
    node: ast.Node, rewriter: _Rewriter, targets: list[ast.ResTarget], outputs: set[str | None]
) -> ast.Node:
    """An ORDER BY or DISTINCT ON item: a position or an output name stays, an expression is rewritten."""
    if integer_const(node) is not None:
        return node
    if isinstance(node, ast.ColumnRef) and len(node.fields or ()) == 1:
        field = cast("tuple[Any, ...]", node.fields)[0]
        if isinstance(field, ast.String) and field.sval in outputs:
            return node
    return cast(ast.Node, rewriter.visit(node))


def _grouping_sets(items: list[ast.Node]) -> list[list[ast.Node]] | None:
    """Every grouping set (GROUP BY's items crossed), or None when GROUP BY has none."""
    if not any(isinstance(g, ast.GroupingSet) for g in items):
        return None
    product: list[list[list[ast.Node]]] = [_sets_of(g) for g in items]
    return [[e for part in combo for e in part] for combo in itertools.product(*product)]


def _sets_of(node: ast.Node) -> list[list[ast.Node]]:
    if not isinstance(node, ast.GroupingSet):
        return [_elements(node)]
    kind = node.kind
    content = list(node.content or ())
    if kind == enums.GroupingSetKind.GROUPING_SET_EMPTY:
        return [[]]
    if kind == enums.GroupingSetKind.GROUPING_SET_SIMPLE:
        return [[e for c in content for e in _elements(c)]]
    if kind == enums.GroupingSetKind.GROUPING_SET_ROLLUP:
        parts = [_elements(c) for c in content]
        return [[e for p in parts[:n] for e in p] for n in range(len(parts), -1, -1)]
    if kind == enums.GroupingSetKind.GROUPING_SET_CUBE:
        parts = [_elements(c) for c in content]
        chosen = itertools.product([True, False], repeat=len(parts))
        return [[e for p, keep in zip(parts, mask, strict=True) if keep for e in p] for mask in chosen]
    return [s for c in content for s in _sets_of(c)]


def _elements(node: ast.Node) -> list[ast.Node]:
    if isinstance(node, ast.RowExpr) and node.row_format == enums.CoercionForm.COERCE_IMPLICIT_CAST:
        return list(node.args or ())
    return [node]


def _resolved(node: ast.Node, targets: list[ast.ResTarget], scope: Scope) -> ast.Node:
    """A GROUP BY item as PostgreSQL reads it: a position or an output name (that no input column
    has) as the select-list expression it names."""
    position = integer_const(node)
    if position is not None and 1 <= position <= len(targets):
        return cast(ast.Node, targets[position - 1].val)
    name = bare_name(node)
    if name is not None and isinstance(node, ast.ColumnRef):
        named = [t for t in targets if t.name == name]
        if named:
            owned = scope.owns(node)
            if owned is None:
                raise _Unsplittable  # a table column or the output name: not known here
            if not owned:
                return cast(ast.Node, named[0].val)
    if isinstance(node, ast.GroupingSet):
        resolved = copy_node(node)
        resolved.content = tuple(_resolved(c, targets, scope) for c in node.content or ()) or None
        return resolved
    if isinstance(node, ast.RowExpr) and node.row_format == enums.CoercionForm.COERCE_IMPLICIT_CAST:
        row = copy_node(node)
        row.args = tuple(_resolved(c, targets, scope) for c in node.args or ()) or None
        return row
    return node


def _group_step(stmt: ast.SelectStmt, rewriter: _Rewriter, grouping_set: list[ast.Node]) -> ast.SelectStmt:
    """The step computing one grouping set's keys and every aggregate."""
    present = [rewriter.group(e) for e in grouping_set]
    targets = [
        ast.ResTarget(name=f"g{i + 1}", val=copy_node(g))
        for i, g in enumerate(rewriter.groups)
        if i in present
    ]
    targets += [ast.ResTarget(name=f"a{j + 1}", val=copy_node(a)) for j, a in enumerate(rewriter.aggregates)]
    if not any(i in present for i in range(len(rewriter.groups))) and not rewriter.aggregates:
        # One group of every row (GROUP BY (), HAVING alone): an aggregate makes it one row, even of none.
        count = ast.FuncCall(
            funcname=(ast.String(sval="pg_catalog"), ast.String(sval="count")),
            agg_star=True,
            agg_within_group=False,
            agg_distinct=False,
            func_variadic=False,
        )
        targets.append(ast.ResTarget(name="a0", val=count))
    # By position: a key may be a constant or a parameter, which GROUP BY cannot name itself.
    keys = sum(1 for i in range(len(rewriter.groups)) if i in present)
    group_by = [ast.A_Const(isnull=False, val=ast.Integer(ival=n + 1)) for n in range(keys)]
    return ast.SelectStmt(
        targetList=tuple(targets),
        fromClause=stmt.fromClause,
        whereClause=stmt.whereClause,
        groupClause=tuple(group_by) if group_by or not stmt.groupClause else None,
        withClause=stmt.withClause,
        op=enums.SetOperation.SETOP_NONE,
    )


def _arm(
    number: int, rewriter: _Rewriter, grouping_set: list[ast.Node], typed: dict[int, int]
) -> ast.SelectStmt:
    """One grouping set's rows with every column of the groups (NULL where not grouped) and GROUPING().

    ``typed``: for each key, a step that has it; a NULL is that key's (``SELECT gN ... LIMIT 0``),
    so the arms' UNION ALL types every column as one database's grouping sets do.
    """
    present = {rewriter.group(e) for e in grouping_set}
    source = relation_select(number)
    columns: list[ast.ResTarget] = []
    for i in range(len(rewriter.groups)):
        value: ast.Node = column(f"g{i + 1}") if i in present else _typed_null(i, typed[i])
        columns.append(ast.ResTarget(name=f"g{i + 1}", val=value))
    columns += [
        ast.ResTarget(name=f"a{j + 1}", val=column(f"a{j + 1}")) for j in range(len(rewriter.aggregates))
    ]
    for k, call in enumerate(rewriter.grouping):
        bits = 0
        for arg in call.args or ():
            bits = bits * 2 + (0 if rewriter.group(arg) in present else 1)
        columns.append(
            ast.ResTarget(name=f"f{k + 1}", val=ast.A_Const(isnull=False, val=ast.Integer(ival=bits)))
        )
    source.targetList = tuple(columns) or source.targetList
    return source


def _typed_null(index: int, number: int) -> ast.SubLink:
    """``(SELECT gN FROM step LIMIT 0)``: NULL of the key's type."""
    select = relation_select(number)
    select.targetList = (ast.ResTarget(val=column(f"g{index + 1}")),)
    select.limitCount = ast.A_Const(isnull=False, val=ast.Integer(ival=0))
    select.limitOption = enums.LimitOption.LIMIT_OPTION_COUNT
    return ast.SubLink(subLinkType=enums.SubLinkType.EXPR_SUBLINK, subselect=select)


def _split_rows(stager: Stager, stmt: ast.SelectStmt) -> ast.SelectStmt | None:
    """Windows without aggregates: a step reads the columns they need; the rest runs over its rows."""
    targets = list(stmt.targetList or ())
    if any(isinstance(n, ast.A_Star) for t in targets for n in walk(t)):
        return None
    rewriter = _Rewriter(stager, [], rows=True)
    final = _final(stmt, rewriter, targets)
    step = ast.SelectStmt(
        targetList=tuple(
            ast.ResTarget(name=f"g{i + 1}", val=copy_node(g)) for i, g in enumerate(rewriter.groups)
        )
        or (ast.ResTarget(name="g0", val=ast.A_Const(isnull=False, val=ast.Integer(ival=1))),),
        fromClause=stmt.fromClause,
        whereClause=stmt.whereClause,
        withClause=stmt.withClause,
        op=enums.SetOperation.SETOP_NONE,
    )
    if not stager.sharded(step):
        return None  # the rows are no sharded table's: nothing would be gained
    number = stager.step(step, pull=True)
    if number is None:
        return None
    final.fromClause = (
        ast.RangeSubselect(
            lateral=False, subquery=relation_select(number), alias=ast.Alias(aliasname=_GROUPS)
        ),
    )
    return final
