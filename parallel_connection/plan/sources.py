"""Negated subqueries: each shard would keep the rows another shard would have matched."""

from __future__ import annotations

from pglast import ast, enums

from .refusals import refuse
from .syntax import children

__all__ = ["check_negated"]


def check_negated(stmt: ast.SelectStmt, key_local: frozenset[int]) -> None:
    """Refuse a negated test of a subquery over sharded rows, unless the shard key ties it to the outer rows.

    Each shard would keep the rows whose match lives on another shard.
    ``stmt`` is bound (see ``names``); ``key_local`` holds the ``id()`` of the
    subqueries each shard answers whole (tied by the key, or reading no sharded table).
    """
    for sublink in _negated_sublinks(stmt, negated=False):
        if id(sublink) not in key_local:
            raise refuse(
                "NOT EXISTS, NOT IN, ALL (...) or another test of the truth of a subquery reading a "
                "table that is not copied to every shard, unless the subquery is correlated on the "
                "shard key"
            )


def _negated_sublinks(node: ast.Node, *, negated: bool, parent: ast.Node | None = None) -> list[ast.SubLink]:
    """Subqueries whose answer is negated (NOT, IS NOT TRUE, ...) or quantified with ALL.

    An EXISTS or IN test counts as negated too when anything but AND, OR or
    the clause itself uses its truth value (``= false``, CASE, ...).
    """
    found: list[ast.SubLink] = []
    if isinstance(node, ast.SubLink):
        tested = node.subLinkType in (enums.SubLinkType.EXISTS_SUBLINK, enums.SubLinkType.ANY_SUBLINK)
        if negated or node.subLinkType == enums.SubLinkType.ALL_SUBLINK or (tested and not _plain(parent)):
            found.append(node)
    negated = negated or _negates(node)
    for child in children(node):
        found += _negated_sublinks(child, negated=negated, parent=node)
    return found


def _plain(parent: ast.Node | None) -> bool:
    """A place where a subquery's truth value only filters or is shown as is."""
    if isinstance(parent, ast.BoolExpr):
        return parent.boolop != enums.BoolExprType.NOT_EXPR
    return parent is None or isinstance(parent, (ast.SelectStmt, ast.JoinExpr, ast.ResTarget))


def _negates(node: ast.Node) -> bool:
    if isinstance(node, ast.BoolExpr):
        return node.boolop == enums.BoolExprType.NOT_EXPR
    return isinstance(node, ast.BooleanTest) and node.booltesttype != enums.BoolTestType.IS_TRUE
