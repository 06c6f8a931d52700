"""The plan's data: what the shards run and what the client does with their rows.

Plain frozen dataclasses, no SQL and no connections: the merge reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "AggregatePlan",
    "ClientPlan",
    "Const",
    "Expr",
    "Output",
    "Param",
    "Partial",
    "Plan",
    "ShardFacts",
    "SortKey",
    "Value",
]


@dataclass(frozen=True)
class ShardFacts:
    """What the planner must know about the shards, looked up once per connection."""

    text_order_c: bool = False
    """Every shard orders text by code point (its database collation is C or POSIX)."""
    aggregates: frozenset[str] = frozenset()
    """Names of every aggregate function the shards know (built-in and user-defined)."""
    replicated: frozenset[str] = frozenset()
    """Tables the user says are copied whole to every shard (``name`` or ``schema.name``)."""
    collated_columns: frozenset[tuple[str, ...]] = frozenset()
    """(table, column, collation) of every table column whose collation is not default, C or POSIX."""


@dataclass(frozen=True)
class Const:
    """A value known when the statement is planned."""

    value: Any


@dataclass(frozen=True)
class Param:
    """A value given with the statement: parameter ``$number``, bound at execution."""

    number: int


Value = Const | Param


@dataclass(frozen=True)
class SortKey:
    """One ORDER BY key: a column of the merged row and its direction."""

    column: int
    descending: bool = False
    nulls_first: bool = False
    collate_c: bool = False
    """The key is explicitly ``COLLATE "C"``: text order is code point order."""


@dataclass(frozen=True)
class Partial:
    """One aggregate call, as partial columns from each shard and how to combine them.

    ``kind`` is one of count, count_distinct, sum, min, max, avg, var, bool_and,
    bool_or, array_agg, string_agg. ``columns`` index the shard row. ``variant``
    says which variance or stddev (var_samp, var_pop, stddev_samp, stddev_pop).
    """

    kind: str
    columns: tuple[int, ...]
    variant: str = ""
    delimiter: Value | None = None


@dataclass(frozen=True)
class Output:
    """One column of a merged group: a shard column, or a combined aggregate."""

    source: Literal["column", "aggregate"]
    index: int
    name: str = ""


Expr = tuple[Any, ...]
"""A HAVING predicate as nested tuples the merge evaluates:

``("and", a, b, ...)``, ``("or", ...)``, ``("not", a)``, ``("cmp", op, a, b)``,
``("isnull", a)``, ``("arith", op, a, b)``, ``("column", i)``, ``("value", Value)``.
"""


@dataclass(frozen=True)
class AggregatePlan:
    """GROUP BY and aggregates: shard rows are partial groups, combined by key."""

    keys: tuple[int, ...]
    grouped: bool
    partials: tuple[Partial, ...]
    outputs: tuple[Output, ...]
    having: Expr | None = None


@dataclass(frozen=True)
class ClientPlan:
    """What the client does with the shards' rows, in this order.

    Aggregate (when ``aggregate``), filter HAVING, order, DISTINCT / DISTINCT ON,
    OFFSET and LIMIT, then keep the first ``visible`` columns. Without
    aggregation, each shard row carries ``hidden`` trailing columns the user
    never sees (sort and DISTINCT ON keys not in the select list).
    """

    order: tuple[SortKey, ...] = ()
    distinct: bool = False
    distinct_on: tuple[int, ...] = ()
    limit: Value | None = None
    offset: Value | None = None
    hidden: int = 0
    aggregate: AggregatePlan | None = None


@dataclass(frozen=True)
class Plan:
    """How to run one statement on the shards and merge the answers.

    ``mode`` is ``union`` (run unchanged, concatenate), ``first`` (run
    unchanged on every shard, return the first shard's rows: the statement
    reads no table, or only tables copied to every shard, or is a SHOW) or ``merge`` (run
    ``sql`` and merge as ``client`` says).
    In ``sql`` the parameters are ``%(name)s`` placeholders: see ``params``.
    """

    mode: Literal["union", "first", "merge"]
    sql: str | None = None
    client: ClientPlan = field(default_factory=ClientPlan)
    names: tuple[str, ...] = ()
    """The key of parameter ``$n`` in the parameters sent with ``sql`` is ``names[n - 1]``."""
