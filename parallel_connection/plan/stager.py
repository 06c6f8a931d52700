"""The steps of one staged statement, as the strategies make them (see ``stages``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from pglast import ast

from ..errors import NotSupportedError
from .layout import Layout
from .model import Plan, ShardFacts
from .names import is_cte_name
from .scopes import ctes_of, outer_refs, reads_sharded
from .syntax import copy_node, deparse, walk

__all__ = ["Answer", "Stager"]

_DOLLAR_NUMBER = re.compile(r"\$(\d+)")

Answer = Callable[[ast.SelectStmt, int, tuple[str, ...]], Plan]
"""Plan a SELECT (staging it when needed) at a depth, with its parameters' names; raises
NotSupportedError."""


@dataclass
class Stager:
    """The steps of one staged statement, and what the strategies need to make more."""

    layout: Layout
    facts: ShardFacts
    names: tuple[str, ...]
    answer: Answer
    depth: int
    steps: list[str] = field(default_factory=list)
    pulls: set[int] = field(default_factory=set)
    unions: set[int] = field(default_factory=set)
    ctes: dict[str, ast.CommonTableExpr] = field(default_factory=dict)

    def sharded(self, node: ast.Node) -> bool:
        return reads_sharded(node, self.layout, self.ctes)

    def outer(self, unit: ast.SelectStmt) -> list[ast.ColumnRef] | None:
        return outer_refs(unit, self.layout, self.ctes)

    def plans(self, stmt: ast.SelectStmt) -> Plan | None:
        """The plan of ``stmt`` as a statement of its own, or None when it is refused."""
        try:
            return self.answer(self.with_ctes(stmt), self.depth + 1, self.names)
        except NotSupportedError:
            return None

    def step(
        self,
        stmt: ast.SelectStmt,
        *,
        pull: bool = False,
        checked: bool = False,
        union: bool = False,
        keeps_collations: bool = False,
    ) -> int | None:
        """Make ``stmt`` a step; its number (for ``relation_select``), or None when it is refused.

        ``pull``: it reads rows as they are (the bound on moved rows may cut it short).
        ``union``: its rows are every shard's own answer, unmerged (partials to combine).
        ``keeps_collations``: the statement reading it gives its columns their collations back;
        otherwise a step whose text may have another collation than the database's is refused.
        """
        whole = self.with_ctes(stmt)
        if not (pull and keeps_collations) and self.collated(whole):
            return None  # its rows would lose their collation on the way: pull the tables instead
        if not (checked or union) and self.plans(stmt) is None:
            return None
        self.steps.append(self.text(whole))
        if pull:
            self.pulls.add(len(self.steps))
        if union:
            self.unions.add(len(self.steps))
        return len(self.steps)

    def collated(self, stmt: ast.Node) -> bool:
        """``stmt`` may return text under a collation other than the database's: a COLLATE, or a
        column declared with one (by name, of the tables it reads)."""
        names: set[str] = set()
        if self.facts.declared_collations and self.facts.catalog is not None:
            for node in walk(stmt, into_selects=True):
                if isinstance(node, ast.RangeVar):
                    relation = self.facts.catalog.resolve(node.schemaname, cast(str, node.relname))
                    columns = relation.columns if relation is not None else ()
                    names.update(c.name for c in columns if c.declared_collation is not None)
        for node in walk(stmt, into_selects=True):
            if isinstance(node, ast.CollateClause) or self._collated_type(node):
                return True
            if names and isinstance(node, ast.ColumnRef):
                last = cast("tuple[Any, ...]", node.fields)[-1]
                if isinstance(last, ast.String) and last.sval in names:
                    return True
        return False

    def _collated_type(self, node: ast.Node) -> bool:
        """A cast to a domain declared with a collation of its own."""
        catalog = self.facts.catalog
        if not isinstance(node, ast.TypeCast) or node.typeName is None or catalog is None:
            return False
        parts = [n.sval for n in node.typeName.names or () if isinstance(n, ast.String)]
        if not parts:
            return False
        fact = catalog.resolve_type(parts[-2] if len(parts) > 1 else None, parts[-1])
        return fact is not None and (fact.collation is not None or not fact.deterministic)

    def with_ctes(self, stmt: ast.SelectStmt) -> ast.SelectStmt:
        """``stmt`` with the definitions of the outer CTEs it reads (bound names are unique)."""
        own = ctes_of(stmt)
        needed: list[str] = []
        stack: list[ast.Node] = [stmt]
        while stack:
            for node in walk(stack.pop(), into_selects=True):
                if isinstance(node, ast.RangeVar) and not node.schemaname:
                    name = cast(str, node.relname)
                    if is_cte_name(name) and name in self.ctes and name not in own and name not in needed:
                        needed.append(name)
                        stack.append(cast(ast.Node, self.ctes[name].ctequery))
        if not needed:
            return stmt
        order = list(self.ctes)
        definitions = [copy_node(self.ctes[n]) for n in sorted(needed, key=order.index)]
        whole = copy_node(stmt)
        inner = list(whole.withClause.ctes or ()) if whole.withClause is not None else []
        whole.withClause = ast.WithClause(ctes=tuple(definitions + inner), recursive=False)
        return whole

    def text(self, stmt: ast.Node) -> str:
        """SQL with ``%(name)s`` parameters, every other ``%`` doubled."""
        names = self.names
        sql = deparse(stmt).replace("%", "%%")
        return _DOLLAR_NUMBER.sub(lambda m: f"%({names[int(m.group(1)) - 1]})s", sql)
