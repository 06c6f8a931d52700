"""Collations: the merge orders and compares text by code point, as PostgreSQL's "C" collation does.

A ``COLLATE`` naming another collation, or a table column declared with one
(a linguistic or case-insensitive ICU collation, say), would be ordered or
compared differently by one database: such keys are refused unless they
say ``COLLATE "C"``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, cast

from pglast import ast

from .refusals import refuse
from .syntax import bare_name, func_name, integer_const, output_name, walk

__all__ = ["check_collations", "is_c"]

_C = ("c", "posix")
_COMPARING = ("min", "max")


def is_c(node: ast.CollateClause) -> bool:
    """``COLLATE "C"`` or ``"POSIX"``, optionally ``pg_catalog.``-qualified."""
    names = [n.sval.lower() for n in cast("tuple[Any, ...]", node.collname)]
    return names[-1] in _C and (len(names) == 1 or names[:-1] == ["pg_catalog"])


def check_collations(stmt: ast.SelectStmt, collated: frozenset[tuple[str, ...]], catalog: Any = None) -> None:
    """Refuse a merge that would order or compare text under a collation other than C.

    ``collated`` holds (table, column, collation) of the columns declared with
    another collation; ``catalog`` knows the domains that carry one.
    """
    if catalog is not None:
        _check_domains(stmt, catalog)
    for node in walk(stmt, into_selects=True):
        if isinstance(node, ast.CollateClause) and not is_c(node):
            name = ".".join(n.sval for n in cast("tuple[Any, ...]", node.collname))
            raise refuse(f'COLLATE "{name}" (the merge compares text by code point, as COLLATE "C" does)')
    tables = {node.relname for node in walk(stmt, into_selects=True) if isinstance(node, ast.RangeVar)}
    read = {(column, collation) for table, column, collation in collated if table in tables}
    if not read:
        return
    names = _with_aliases(stmt, dict(sorted(read)))
    for key in _keys(stmt):
        if isinstance(key, ast.CollateClause) and is_c(key):
            continue
        for node in walk(key, into_selects=True):
            if not isinstance(node, ast.ColumnRef):
                continue
            last = cast("tuple[Any, ...]", node.fields)[-1]
            if isinstance(last, ast.A_Star):
                raise refuse(
                    "ordering or comparing * while a table column has a collation other than C "
                    f"({_show(read)}): name the columns"
                )
            if isinstance(last, ast.String) and last.sval in names:
                column = cast(str, last.sval)  # it is a key of names
                raise refuse(
                    f'ordering or comparing {column} (collation "{names[column]}", not "C"; '
                    f'write {column} COLLATE "C" to order by code point)'
                )


def _check_domains(stmt: ast.SelectStmt, catalog: Any) -> None:
    """Refuse a key cast to a domain whose collation is not C (``v::my_icu_text``)."""
    for key in _keys(stmt):
        for node in walk(key, into_selects=True):
            if not isinstance(node, ast.TypeCast) or node.typeName is None:
                continue
            type_names = cast("tuple[Any, ...]", node.typeName.names)
            names = [n.sval for n in type_names if isinstance(n, ast.String)]
            if not names or len(names) > 2:
                continue
            fact = catalog.resolve_type(names[0] if len(names) == 2 else None, names[-1])
            if fact is not None and (fact.collation is not None or not fact.deterministic):
                raise refuse(
                    f"ordering or comparing a value of the type {fact.schema}.{fact.name} (collation "
                    f'"{fact.collation}", not "C"; add COLLATE "C" to order by code point)'
                )


def _keys(stmt: ast.SelectStmt) -> Iterator[ast.Node]:
    """Expressions the merge orders or compares: sort, DISTINCT, GROUP BY keys, HAVING, min/max."""
    targets = list(stmt.targetList or ())
    items = [
        *(item.node for item in stmt.sortClause or ()),
        *(stmt.groupClause or ()),
        *(e for e in stmt.distinctClause or () if e is not None),
    ]
    for item in items:
        yield item
        yield from _referenced(item, targets)
    if stmt.distinctClause is not None and not any(stmt.distinctClause):
        yield from (t.val for t in targets)
    if stmt.havingClause is not None:
        yield stmt.havingClause
    for node in walk([*targets, stmt.havingClause, *(stmt.sortClause or ())]):
        if isinstance(node, ast.FuncCall) and (func_name(node)[1] in _COMPARING or node.agg_distinct):
            yield from node.args or ()


def _referenced(item: ast.Node, targets: list[ast.ResTarget]) -> Iterator[ast.Node]:
    """The select-list entries a position or an output name may mean."""
    position = integer_const(item)
    if position is not None and 1 <= position <= len(targets):
        yield cast(ast.Node, targets[position - 1].val)  # a select-list entry always has a value
    name = bare_name(item)
    for target in targets:
        if name is not None and output_name(target) == name:
            yield cast(ast.Node, target.val)


def _with_aliases(stmt: ast.SelectStmt, names: dict[str, str]) -> Mapping[str, str]:
    """Collated column names, plus the output names of select-list entries that use them."""
    for _ in range(3):
        for node in walk(stmt, into_selects=True):
            if not isinstance(node, ast.ResTarget) or node.val is None:
                continue
            alias = output_name(node)
            found = _mentioned(node.val, names)
            if alias and found and alias not in names:
                names[alias] = found
    return names


def _mentioned(expr: ast.Node, names: Mapping[str, str]) -> str | None:
    if isinstance(expr, ast.CollateClause) and is_c(expr):
        return None
    for node in walk(expr, into_selects=True):
        last = cast("tuple[Any, ...]", node.fields)[-1] if isinstance(node, ast.ColumnRef) else None
        if isinstance(last, ast.String) and last.sval in names:
            return names[cast(str, last.sval)]
    return None


def _show(collated: set[tuple[str, str]]) -> str:
    return ", ".join(f'{column} "{collation}"' for column, collation in sorted(collated)[:3])
