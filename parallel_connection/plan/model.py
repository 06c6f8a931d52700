"""The plan's data: what the shards run and what the client does with their rows.

Plain frozen dataclasses, no SQL and no connections: the merge reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

_MISSING = object()

__all__ = [
    "AggregatePlan",
    "ClientPlan",
    "Const",
    "Expr",
    "Moment",
    "Output",
    "Param",
    "Partial",
    "Pin",
    "Plan",
    "Reroute",
    "RowSplit",
    "ShardFacts",
    "SortKey",
    "Staged",
    "Targets",
    "Task",
    "Value",
]


@dataclass(frozen=True, eq=False)
class ShardFacts:
    """What the planner must know about the shards: the catalog, the placement and a few summaries.

    Compared by identity: a fresh read of the catalog is a new value, so plans
    cached for the old one are never reused.
    """

    text_order_c: bool = False
    """Every shard orders text by code point (its database collation is C or POSIX)."""
    aggregates: frozenset[str] = frozenset()
    """Names of every aggregate function the shards know (built-in and user-defined)."""
    replicated: frozenset[str] = frozenset()
    """Tables the user says are copied whole to every shard (``name`` or ``schema.name``)."""
    collated_columns: frozenset[tuple[str, ...]] = frozenset()
    """(table, column, collation) of every table column whose collation is not default, C or POSIX."""
    declared_collations: frozenset[str] = frozenset()
    """Names of the table columns declared with a collation of their own (C included)."""
    code_point_text: bool = False
    """Every text value a statement can make orders by code point: ``text_order_c``, and no column,
    row type attribute or domain of the catalog has a collation of its own that orders otherwise."""
    catalog: Any = None
    """The shards' catalog (a ``catalog.Catalog``), when read."""
    placement: Any = None
    """The placement bound to the catalog (a ``placement.BoundPlacement``), or None: every table sharded."""
    shards: int = 1
    volatile: frozenset[str] = frozenset()
    """Names of the shards' volatile functions."""
    shadowed: frozenset[str] = frozenset()
    """Names of user aggregates that ``search_path`` finds before pg_catalog's of the same name."""
    memos: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)
    """Plans made with these facts (they go when the facts do: a global cache would keep every
    connection's catalog alive)."""

    def memo(self, key: Any, make: Callable[[], Any], size: int = 512) -> Any:
        """``make()``, remembered under ``key`` for these facts (the oldest of ``size`` dropped)."""
        found = self.memos.get(key, _MISSING)
        if found is _MISSING:
            found = make()
            if len(self.memos) >= size:
                self.memos.pop(next(iter(self.memos)), None)
            self.memos[key] = found
        return found


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
class Pin:
    """A WHERE test of the shard key: the statement's sharded rows live on the shards of ``values``."""

    function: Any
    """The key's shard function (a ``placement.ShardFunction``)."""
    values: tuple[Value, ...]
    array: bool = False
    """``values`` is one parameter holding a list (``key = ANY(%s)``)."""
    key_type: int | None = None
    """The key column's type OID, to read literals as the column's type."""


@dataclass(frozen=True)
class Targets:
    """Which shards a task runs on: all, one, or those its pins name (bound at execution)."""

    kind: Literal["all", "one", "pinned"] = "all"
    shard: int = 0
    pins: tuple[tuple[Pin, ...], ...] = ()
    """For ``pinned``: groups of pins; the shards are the union over groups of each group's shards."""


ALL = Targets()
ONE = Targets("one")


@dataclass(frozen=True)
class Task:
    """One statement for some shards. ``sql`` None: the user's statement and parameters, unchanged."""

    targets: Targets = ALL
    sql: str | None = None


@dataclass(frozen=True)
class Moment:
    """A value one statement must see the same on every shard (``now()``), sent as parameter ``name``."""

    name: str
    kind: Literal["transaction", "statement"]


@dataclass(frozen=True)
class RowSplit:
    """An INSERT ... VALUES split by key: each shard gets ``head``, its own rows, then ``tail``.

    ``keys[i]`` is row ``i``'s key value; its shard is the key ``function``'s
    (the key read as the column of type ``key_type`` reads it).
    """

    head: str
    rows: tuple[str, ...]
    tail: str
    keys: tuple[Value, ...]
    function: Any
    key_type: int | None
    table: str
    key: str
    position: int = 0
    """Where the key is in each row (-1: rows without a key, given by ``sequence``)."""
    sequence: str | None = None
    """The sequence on the first shard whose next values are the keys of rows inserted without one."""
    keyed_tail: str | None = None
    """``tail`` returning each row's key last (an upsert's skipped rows return nothing, so the rows
    of several shards are put in the input's order by their keys)."""


@dataclass(frozen=True)
class Reroute:
    """An INSERT ... SELECT whose rows are read through the client (``select``, planned and merged
    as any statement) and inserted on the shards of their keys (``function`` None: on every copy)
    as ``head`` + rows + ``tail``."""

    select: str
    head: str
    tail: str
    position: int
    function: Any
    key_type: int | None
    table: str
    key: str | None


@dataclass(frozen=True)
class Staged:
    """A statement answered in stages: ``steps`` run first, in order, each as a statement of its own
    (planned, spread and merged like any other); their rows become relations that later steps and
    ``final`` read. The final statement then runs like any other, on the coordinator when it reads
    no sharded table. SQL has ``%(name)s`` parameters and ``_pc_relation(n)`` for step n's rows."""

    steps: tuple[str, ...]
    final: str
    pulls: frozenset[int] = frozenset()
    """Steps that read a table's rows as they are (so the bound on moved rows can cut them short)."""
    unions: frozenset[int] = frozenset()
    """Steps whose rows are every shard's own answer, unmerged: partials the next statement combines."""


@dataclass(frozen=True)
class Plan:
    """How to run one statement on the shards and merge the answers.

    ``tasks`` run on their targets; the rows are the union of theirs, or
    merged as ``client`` says when ``merge`` is set. ``first`` keeps one
    shard's rows only. With ``pins`` (groups: one per sharded table read, of
    the tests its rows pass), the statement goes only to the shards of the
    pinned keys: on one shard ``local`` runs (one shard holds every
    row it can see, so it answers any SQL); on several, ``tasks`` run on
    those shards, unless ``refusal`` says the spread statement cannot be
    answered exactly. In task SQL the parameters are ``%(name)s``
    placeholders: the key of ``$n`` is ``names[n - 1]``.
    """

    tasks: tuple[Task, ...] = (Task(),)
    merge: bool = False
    client: ClientPlan = field(default_factory=ClientPlan)
    names: tuple[str, ...] = ()
    first: bool = False
    pins: tuple[tuple[Pin, ...], ...] = ()
    local: Task | None = None
    refusal: Exception | None = None
    moments: tuple[Moment, ...] = ()
    refresh: bool = False
    """The statement may change the catalog or the settings (DDL, SET): read them again after it."""
    checked: bool = False
    """Planned from the shards' facts: check that they are fresh before spreading it."""
    views: bool = False
    """It reads views: check the facts are fresh even when it lands on one shard."""
    copies: bool = False
    """A write to a table copied to every shard: every copy must answer alike; one copy's answer is kept."""
    word: str = ""
    """The statement's first word when it was not parsed (``commit``, ``rollback``, ``create``...)."""
    split: RowSplit | None = None
    """An INSERT whose rows go to the shards of their keys."""
    writes: bool = False
    """It may write on the shards it runs on (a transaction writing on several commits in two phases)."""
    reroute: Reroute | None = None
    """An INSERT ... SELECT whose rows pass through the client, routed by key."""
    batch: tuple[Plan, ...] = ()
    """Several statements in one execute(), each with its own plan, run in order on their shards."""
    staged: Staged | None = None
    """What the shards cannot finish alone: steps first, then the rest over their rows."""

    @property
    def mode(self) -> str:
        """``staged``, ``merge``, ``first`` or ``union``: how the rows of the tasks come back."""
        if self.staged is not None:
            return "staged"
        return "merge" if self.merge else "first" if self.first else "union"

    @property
    def sql(self) -> str | None:
        """The SQL of the (first) task."""
        return self.tasks[0].sql if self.tasks else None
