"""Where a bound table's rows live: sharded (on which key), copied, or the shards' own catalog.

The layout joins the placement the user declared with the catalog the
shards report. It is what the planner asks about every table it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

from pglast import ast

from ..errors import NotSupportedError
from .names import is_cte_name

__all__ = ["INTEGER_TYPES", "Layout", "TableInfo"]

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")
INTEGER_TYPES = frozenset({20, 21, 23})
"""bigint, smallint, integer: keys that take Python ints."""


@dataclass(frozen=True)
class TableInfo:
    """One table a statement reads, as the planner sees it."""

    kind: Literal["sharded", "whole"]
    name: str
    key: str | None = None
    """The shard key column (None: a sharded table whose key is not declared)."""
    function: Any = None
    """The shard function (a ``ShardFunction``), with ``key``."""
    columns: frozenset[str] | None = None
    """Its column names when the catalog knows them."""
    key_type: int | None = None
    """The key column's type OID when known."""
    order: tuple[str, ...] | None = None
    """Its column names in order, when the catalog knows them (for ``AS alias(a, b)`` renames)."""
    key_not_null: bool = False
    """The key column is declared NOT NULL."""
    system: bool = False
    """A relation of the shards' own catalog (pg_catalog, information_schema): each shard has its own."""
    temporary: bool = False
    """A temporary table (of this session)."""
    sequence: str | None = None
    """The sequence on the first shard that gives the keys of rows inserted without one."""
    rows: float = -1
    """The planner's estimate of its rows over every shard (-1: unknown)."""


class Layout:
    """The placement (bound to the catalog) and the catalog, as one question: where are these rows?"""

    def __init__(
        self,
        catalog: Any,
        placement: Any,
        shards: int,
        aggregates: frozenset[str],
        replicated: frozenset[str] = frozenset(),
    ) -> None:
        self.aggregates = aggregates
        self.catalog = catalog
        self.placement = placement
        self.shards = shards
        self.replicated = replicated
        """Without a placement: names read as copied (the planner's tests)."""

    @property
    def declared(self) -> bool:
        """True when the user gave a placement (tables have declared keys)."""
        return self.placement is not None

    def table(self, node: ast.RangeVar) -> TableInfo | None:
        """How a bound table reference's rows are placed; None for a CTE reference."""
        if is_cte_name(node.relname) and not node.schemaname:
            return None
        schema, name = node.schemaname, cast(str, node.relname)  # the parser always names the relation
        shown = f"{schema}.{name}" if schema else name
        relation = self.catalog.resolve(schema, name) if self.catalog is not None else None
        order = tuple(c.name for c in relation.columns) if relation is not None else None
        rows = relation.rows if relation is not None else -1
        columns = frozenset(order) if order is not None else None
        if schema and (schema in SYSTEM_SCHEMAS or schema.startswith("pg_toast")):
            return TableInfo("whole", shown, columns=columns, order=order, system=True)
        if relation is not None and relation.schema in SYSTEM_SCHEMAS:
            return TableInfo("whole", shown, columns=columns, order=order, system=True)
        if self.placement is None:
            if name in self.replicated or shown in self.replicated:
                return TableInfo("whole", shown, columns=columns, order=order)
            return TableInfo("sharded", shown, columns=columns, order=order, rows=rows)
        qualified = (relation.schema, relation.name) if relation is not None else (schema or "", name)
        kind = self.placement.kind_of(qualified)
        if kind == "copied":
            return TableInfo("whole", shown, columns=columns, order=order)
        if kind == "sharded":
            sharded = self.placement.table(qualified)
            key = next((c for c in relation.columns if c.name == sharded.key), None) if relation else None
            return TableInfo(
                "sharded",
                shown,
                sharded.key,
                sharded.function,
                columns,
                key.type_oid if key is not None else None,
                order,
                key is not None and key.not_null,
                sequence=sharded.sequence,
                rows=rows,
            )
        if relation is None:
            # No such relation: the shards report it as PostgreSQL would.
            return TableInfo("sharded", shown, columns=columns, order=order)
        if self.placement.unknown == "sharded":
            return TableInfo("sharded", shown, columns=columns, order=order, rows=rows)
        raise NotSupportedError(
            f"the table {relation.schema}.{relation.name} is not in the placement, so where its rows "
            "live is unknown; declare it in Placement(sharded={...}) or Placement(copied=[...]) "
            '(or unknown="sharded" to read undeclared tables as sharded, with unchecked joins)'
        )
