"""The shards' select list while it is being rewritten: the user's columns, then hidden ones."""

from __future__ import annotations

from pglast import ast

from .syntax import copy_node

__all__ = ["HIDDEN_PREFIX", "ShardColumns"]

HIDDEN_PREFIX = "_pc_"


class ShardColumns:
    """Select-list entries for the shards; hidden ones are named ``_pc_<n>``."""

    def __init__(self, targets: list[ast.ResTarget] | None = None) -> None:
        self.targets: list[ast.ResTarget] = list(targets or [])
        self.visible = len(self.targets)
        self._hidden: list[tuple[ast.Node, int]] = []

    def add(self, expr: ast.Node, name: str | None = None, *, hidden: bool = True) -> int:
        """Append ``expr`` (named ``name``; a hidden one gets a hidden name); its index."""
        if hidden and not name:
            name = self._next_name()
        self.targets.append(ast.ResTarget(name=name, val=copy_node(expr)))
        return len(self.targets) - 1

    def hidden(self, expr: ast.Node) -> int:
        """The index of a hidden column computing ``expr`` (added once)."""
        for known, index in self._hidden:
            if known == expr:
                return index
        index = self.add(expr)
        self._hidden.append((copy_node(expr), index))
        return index

    def find(self, expr: ast.Node) -> int | None:
        """The index of a column already computing exactly ``expr``."""
        for index, target in enumerate(self.targets):
            if target.val == expr:
                return index
        return None

    def _next_name(self) -> str:
        return f"{HIDDEN_PREFIX}{len(self.targets)}"
