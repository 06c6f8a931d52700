"""Where a SELECT's rows come from: the plain union is exact only over a sharded FROM.

Each shard answers for its own rows of the sharded tables in the FROM clause.
A sharded table read only in a subquery, a CTE or a WHERE clause gives every
shard a different view of one answer; an outer join that keeps unmatched rows
of a copied table, or a negated subquery, keeps rows that another shard would
have matched. These are refused.
"""

from __future__ import annotations

from collections.abc import Mapping

from pglast import ast, enums

from .refusals import refuse
from .syntax import children, walk

__all__ = ["check_sources"]

_SHARDED, _WHOLE = "sharded", "whole"
_OUTER = {
    enums.JoinType.JOIN_LEFT: "LEFT JOIN",
    enums.JoinType.JOIN_RIGHT: "RIGHT JOIN",
    enums.JoinType.JOIN_FULL: "FULL JOIN",
}


class _Sources:
    def __init__(self, replicated: frozenset[str]) -> None:
        self.replicated = replicated

    def is_sharded_table(self, node: ast.RangeVar, ctes: Mapping[str, ast.Node]) -> bool | None:
        """True for a sharded table, False for a copied one, None for a CTE name."""
        if not node.schemaname and node.relname in ctes:
            return None
        name = node.relname
        return name not in self.replicated and f"{node.schemaname}.{name}" not in self.replicated

    def reads_sharded(
        self, node: ast.Node, ctes: Mapping[str, ast.Node], seen: frozenset[str] = frozenset()
    ) -> bool:
        """True when ``node`` reads a sharded table, itself or through a CTE of ``ctes``."""
        inner = {
            cte.ctename
            for sub in walk(node, into_selects=True)
            if isinstance(sub, ast.WithClause)
            for cte in sub.ctes
        }
        for sub in walk(node, into_selects=True):
            if not isinstance(sub, ast.RangeVar) or (not sub.schemaname and sub.relname in inner):
                continue
            if not sub.schemaname and sub.relname in ctes:
                name = sub.relname
                if name not in seen and self.reads_sharded(ctes[name], ctes, seen | {name}):
                    return True
            elif self.is_sharded_table(sub, {}):
                return True
        return False

    def select(self, stmt: ast.SelectStmt, ctes: Mapping[str, ast.Node]) -> str:
        """``sharded`` when the rows come from a sharded FROM, ``whole`` when no shard-local table is read."""
        scope = dict(ctes)
        if stmt.withClause is not None:
            scope.update({cte.ctename: cte.ctequery for cte in stmt.withClause.ctes})
        kinds = [self.item(item, scope) for item in stmt.fromClause or ()]
        sharded = _SHARDED in kinds
        if not sharded and self.reads_sharded(stmt, ctes):
            raise refuse(
                "a table that is not copied to every shard, read only in a subquery, CTE or "
                "expression (no such table in the FROM clause; tables copied to every shard are "
                "declared with replicated_tables)"
            )
        return _SHARDED if sharded else _WHOLE

    def item(self, node: ast.Node, ctes: Mapping[str, ast.Node]) -> str:
        """How one FROM item's rows relate to the shards."""
        if isinstance(node, ast.RangeVar):
            sharded = self.is_sharded_table(node, ctes)
            if sharded is None:
                return self.query(ctes[node.relname], ctes)
            return _SHARDED if sharded else _WHOLE
        if isinstance(node, ast.JoinExpr):
            return self.join(node, ctes)
        if isinstance(node, ast.RangeSubselect):
            return self.query(node.subquery, ctes)
        if isinstance(node, ast.RangeTableSample):
            return self.item(node.relation, ctes)
        if self.reads_sharded(node, ctes):
            raise refuse("a function or table expression in FROM reading a table not copied to every shard")
        return _WHOLE

    def join(self, node: ast.JoinExpr, ctes: Mapping[str, ast.Node]) -> str:
        left, right = self.item(node.larg, ctes), self.item(node.rarg, ctes)
        outer = _OUTER.get(node.jointype)
        if outer and left != right:
            kept = {"LEFT JOIN": left, "RIGHT JOIN": right, "FULL JOIN": _WHOLE}[outer]
            if kept == _WHOLE:
                raise refuse(
                    f"{outer} keeping the rows of a table copied to every shard (or of no table) "
                    "when the other side is not copied"
                )
        if _SHARDED in (left, right):
            return _SHARDED
        if node.quals is not None and self.reads_sharded(node.quals, ctes):
            raise refuse("a join condition reading a table not copied to every shard between copied tables")
        return _WHOLE

    def query(self, node: ast.Node, ctes: Mapping[str, ast.Node]) -> str:
        if isinstance(node, ast.SelectStmt):
            if node.op != enums.SetOperation.SETOP_NONE:
                if self.reads_sharded(node, ctes):
                    raise refuse("a set operation reading a table not copied to every shard in a subquery")
                return _WHOLE
            return self.select(node, ctes)
        if isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)):
            sharded = self.is_sharded_table(node.relation, {})
            return _SHARDED if sharded else _WHOLE
        return _SHARDED if self.reads_sharded(node, ctes) else _WHOLE


def check_sources(stmt: ast.SelectStmt, replicated: frozenset[str]) -> None:
    """Refuse a SELECT whose plain per-shard answers would not add up to one database's."""
    sources = _Sources(replicated)
    ctes = {
        cte.ctename: cte.ctequery
        for node in walk(stmt, into_selects=True)
        if isinstance(node, ast.WithClause)
        for cte in node.ctes
    }
    for sublink in _negated_sublinks(stmt, negated=False):
        if sources.reads_sharded(sublink.subselect, ctes):
            raise refuse(
                "NOT EXISTS, NOT IN, ALL (...) or another test of the truth of a subquery reading a table "
                "not copied to every shard"
            )
    sources.select(stmt, {})


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
