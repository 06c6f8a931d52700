"""The last strategy: read each sharded table's rows (filtered, projected) and let PostgreSQL do the rest.

Every sharded table the statement still reads, at any depth, becomes a step
reading only the columns the statement names and the rows its own WHERE
tests let through (tests of that table alone, when no outer join can
NULL-extend it). The tests stay in the statement too, so moving them is
only a saving. What is left reads no sharded table: the coordinator
answers it whole, correlated subqueries and all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from pglast import ast, enums

from .names import is_cte_name
from .scopes import ctes_of, level_scope, relation_select
from .stager import Stager
from .syntax import all_of, column, conjuncts, copy_node, func_name, walk

__all__ = ["broadcast_tables", "pull_tables"]


def broadcast_tables(stager: Stager, stmt: ast.SelectStmt) -> ast.SelectStmt | None:
    """``stmt`` reading one sharded table where it lives and every other one through a step: those
    rows reach every shard, like a copied table's, so a join off the shard key runs on the shards."""
    if (stmt.op and stmt.larg is not None) or _first_kept(stager, stmt) is None:
        return None
    return pull_tables(stager, stmt, broadcast=True)


def _first_kept(stager: Stager, stmt: ast.SelectStmt) -> ast.RangeVar | None:
    """The largest sharded table of the top level that no outer join NULL-extends (the first, when
    the shards have no estimates): the one whose rows stay where they are."""
    candidates = [t for item in stmt.fromClause or () for t in _keepable(stager, item)]
    if not candidates:
        return None
    return max(candidates, key=lambda pair: pair[1])[0]


def _keepable(stager: Stager, item: ast.Node, *, nullable: bool = False) -> list[tuple[ast.RangeVar, float]]:
    """The sharded tables of a FROM item that no outer join NULL-extends, with their row estimates."""
    if isinstance(item, ast.JoinExpr):
        kind = item.jointype
        left = nullable or kind in (enums.JoinType.JOIN_RIGHT, enums.JoinType.JOIN_FULL)
        right = nullable or kind in (enums.JoinType.JOIN_LEFT, enums.JoinType.JOIN_FULL)
        return _keepable(stager, cast(ast.Node, item.larg), nullable=left) + _keepable(
            stager, cast(ast.Node, item.rarg), nullable=right
        )
    if not isinstance(item, ast.RangeVar) or nullable or (is_cte_name(item.relname) and not item.schemaname):
        return []
    info = stager.layout.table(item)
    return [(item, info.rows)] if info is not None and info.kind == "sharded" else []


def pull_tables(stager: Stager, stmt: ast.SelectStmt, *, broadcast: bool = False) -> ast.SelectStmt | None:
    """``stmt`` with every sharded table read through a step (``broadcast``: but the top level's
    first, see :func:`broadcast_tables`); None when one cannot be."""
    current = copy_node(stmt)
    keep = _first_kept(stager, current) if broadcast else None
    stager.ctes = ctes_of(current)  # the copy's CTEs: a body replaced here is seen by later steps
    named = _needs(current)
    before = len(stager.steps)
    for level in [n for n in walk(current, into_selects=True) if isinstance(n, ast.SelectStmt)]:
        if not level.fromClause:
            continue
        where = conjuncts(level.whereClause)
        items = list(level.fromClause)
        for index, item in enumerate(items):
            replaced = _item(stager, item, level, where, named, keep)
            if replaced is None:
                return None
            items[index] = replaced
        level.fromClause = tuple(items)
    return current if len(stager.steps) > before else None


def _item(
    stager: Stager,
    item: ast.Node,
    level: ast.SelectStmt,
    tests: list[ast.Node],
    named: _Needs,
    keep: ast.RangeVar | None,
) -> ast.Node | None:
    """The FROM item with its sharded tables pulled (itself when none), or None when one cannot be.

    ``tests`` filter this item's rows: the WHERE tests, and the join conditions that apply to
    this side (an outer join's condition to its nullable side only, WHERE tests never to it).
    """
    if isinstance(item, ast.JoinExpr):
        kind = item.jointype
        on = conjuncts(item.quals)
        left: list[ast.Node] = []
        right: list[ast.Node] = []
        if kind == enums.JoinType.JOIN_INNER:
            left = right = tests + on
        elif kind == enums.JoinType.JOIN_LEFT:
            left, right = tests, on
        elif kind == enums.JoinType.JOIN_RIGHT:
            left, right = on, tests
        larg = _item(stager, cast(ast.Node, item.larg), level, left, named, keep)
        rarg = _item(stager, cast(ast.Node, item.rarg), level, right, named, keep)
        if larg is None or rarg is None:
            return None
        item.larg, item.rarg = larg, rarg
        return item
    if not isinstance(item, ast.RangeVar) or item is keep:
        return item
    if is_cte_name(item.relname) and not item.schemaname:
        return item
    info = stager.layout.table(item)
    if info is None or info.kind != "sharded":
        return item
    if info.order is None:
        return None
    alias = cast(str, item.alias.aliasname if item.alias is not None else item.relname)
    renamed = item.alias is not None and bool(item.alias.colnames)
    columns = list(info.order) if renamed else named.columns(item, info.order)
    read = copy_node(item)
    if renamed and read.alias is not None:
        read.alias.colnames = None  # the step reads the table's own names, in order; the alias renames
    step = ast.SelectStmt(
        targetList=tuple(ast.ResTarget(val=column(alias, c)) for c in columns),
        fromClause=(read,),
        whereClause=None if renamed else all_of(_own_tests(stager, level, tests, alias, info.columns)),
    )
    number = stager.step(step, pull=True, keeps_collations=True)
    if number is None:
        return None
    colnames = item.alias.colnames if renamed and item.alias is not None else None
    declared = {c.name: c.declared_collation for c in _columns(stager, item)}
    collations = [(c, declared.get(c)) for c in columns]
    return ast.RangeSubselect(
        lateral=False,
        subquery=relation_select(number, collations),
        alias=ast.Alias(aliasname=alias, colnames=colnames),
    )


def _columns(stager: Stager, item: ast.RangeVar) -> tuple[Any, ...]:
    """The catalog's columns of a table (with their declared collations)."""
    catalog = stager.facts.catalog
    relation = catalog.resolve(item.schemaname, item.relname) if catalog is not None else None
    return tuple(relation.columns) if relation is not None else ()


@dataclass
class _Needs:
    """The columns a statement may read of the tables it pulls."""

    names: set[str] = field(default_factory=set)
    """Every column name it writes (a superset of what each table needs)."""
    whole: set[int] = field(default_factory=set)
    """``id()`` of the tables read whole (``*``, ``t.*``, a whole-row ``t``)."""
    everything: bool = False
    """A NATURAL join: every table is read whole."""

    def columns(self, item: ast.RangeVar, order: tuple[str, ...]) -> list[str]:
        if self.everything or id(item) in self.whole:
            return list(order)
        return [c for c in order if c in self.names] or list(order[:1])


def _needs(stmt: ast.SelectStmt) -> _Needs:
    needs = _Needs()
    tables = [n for n in walk(stmt, into_selects=True) if isinstance(n, ast.RangeVar)]

    def aliased(alias: str) -> set[int]:
        return {id(t) for t in tables if (t.alias.aliasname if t.alias is not None else t.relname) == alias}

    exists = {
        id(n.subselect)
        for n in walk(stmt, into_selects=True)
        if isinstance(n, ast.SubLink) and n.subLinkType == enums.SubLinkType.EXISTS_SUBLINK
    }
    for level in [n for n in walk(stmt, into_selects=True) if isinstance(n, ast.SelectStmt)]:
        if id(level) in exists:
            continue  # EXISTS reads no column of its select list
        for target in level.targetList or ():
            ref = target.val
            if isinstance(ref, ast.ColumnRef) and isinstance(
                cast("tuple[Any, ...]", ref.fields)[-1], ast.A_Star
            ):
                fields = cast("tuple[Any, ...]", ref.fields)
                if len(fields) == 1:
                    own = [
                        n
                        for item in level.fromClause or ()
                        for n in walk(item)
                        if isinstance(n, ast.RangeVar)
                    ]
                    needs.whole |= {id(t) for t in own}
                else:
                    needs.whole |= aliased(fields[-2].sval)
    for node in walk(stmt, into_selects=True):
        if isinstance(node, ast.JoinExpr):
            needs.everything |= bool(node.isNatural)
            needs.names.update(u.sval for u in node.usingClause or ())
        elif isinstance(node, ast.ColumnRef):
            fields = cast("tuple[Any, ...]", node.fields)
            last = fields[-1]
            if isinstance(last, ast.A_Star):
                if len(fields) > 1:
                    needs.whole |= aliased(fields[-2].sval)
                continue
            if len(fields) == 1:
                needs.whole |= aliased(last.sval)  # a whole-row reference (or a column of that name)
            needs.names.add(last.sval)
    return needs


def _own_tests(
    stager: Stager,
    level: ast.SelectStmt,
    tests: list[ast.Node],
    alias: str,
    columns: frozenset[str] | None,
) -> list[ast.Node]:
    """The tests that read only this table's columns, with no subquery or volatile call."""
    scope = level_scope(level, stager.layout, stager.ctes, None)
    others = [cols for name, cols in scope.items.items() if name != alias]
    return [copy_node(t) for t in tests if _movable(t, stager, alias, columns, others)]


def _movable(
    conjunct: ast.Node,
    stager: Stager,
    alias: str,
    columns: frozenset[str] | None,
    others: list[frozenset[str] | None],
) -> bool:
    refs = 0
    for node in walk(conjunct):
        if isinstance(node, (ast.SubLink, ast.SelectStmt)):
            return False
        if isinstance(node, ast.FuncCall):
            name = func_name(node)[1]
            if node.over is not None or name in stager.facts.volatile or name in stager.facts.aggregates:
                return False
        if isinstance(node, ast.ColumnRef):
            fields = cast("tuple[Any, ...]", node.fields)
            names = [f.sval for f in fields if isinstance(f, ast.String)]
            if len(names) != len(fields):
                return False
            if len(names) == 2:
                if names[0] != alias:
                    return False
            elif len(names) == 1:
                if columns is None or names[0] not in columns:
                    return False
                if any(o is None or names[0] in o for o in others):
                    return False
            else:
                return False
            refs += 1
    return refs > 0
