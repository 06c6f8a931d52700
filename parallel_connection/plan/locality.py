"""Which parts of a SELECT each shard answers alone, and which shards a statement needs.

Reads the bound statement (see ``names``) level by level. Each shard's
answer is its part of one database's answer when the sharded tables in a
FROM clause are joined on their shard keys with one shard function
(co-located), when a subquery over sharded rows is tied to the outer rows by
that key (correlated on it, or ``key IN (SELECT key ...)``), and when a
grouped, DISTINCT or windowed subquery keeps the key in its groups.
Anything else reading sharded rows is refused here, naming the construct.
The WHERE clause's tests of the key (``=``, ``IN``, ``= ANY``) are the
statement's routing pins.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeGuard, cast

from pglast import ast, enums

from ..errors import refuse
from .layout import Layout, TableInfo
from .model import Const, Param, Pin, Value
from .syntax import aggregate_name, conjuncts, is_aggregate, output_name, walk

__all__ = ["Analysis", "analyze"]

Identity = tuple[int, int, str]
"""(level, FROM item, column): one column of one FROM item of one query level."""


@dataclass
class Analysis:
    """What the planner needs to know about a top-level SELECT's rows."""

    sharded: bool
    """The statement reads a sharded table."""
    local: bool
    """The top level's groups, DISTINCT and windows keep the shard key: each shard's rows are final."""
    routes: tuple[tuple[Pin, ...], ...] = ()
    """For each sharded table read, the pins its rows satisfy: the shards of every group's keys
    hold every row the statement can see. Empty when some read has no pin (every shard then)."""
    local_reason: str = ""
    key_local: frozenset[int] = frozenset()
    """``id()`` of the subqueries each shard answers whole: tied to the outer rows by the shard key, or
    reading no sharded table."""
    output_keys: tuple[Any, ...] = ()
    """For each top-level output column, the shard function of the key it holds (None: not a key);
    empty when the select list is not known column by column (``*`` of unknown columns)."""


@dataclass
class _Item:
    alias: str | None
    sharded: bool = False
    columns: frozenset[str] | None = None
    keys: dict[str, Any] = field(default_factory=dict)
    """Columns holding the shard key, with their shard function: rows with key value k live on k's shard."""
    solid: set[str] = field(default_factory=set)
    """Key columns never NULL here: grouping by one keeps every group on one shard (NULL keys may sit
    on any shard, and the nullable side of an outer join is NULL on every shard)."""
    unkeyed: bool = False
    assumed: bool = False
    """A table whose placement is not declared: joins with it are assumed co-located."""
    name: str = ""
    key_type: int | None = None
    base: bool = False
    """A table itself (not a subquery or CTE)."""
    tied: bool = False
    """A LATERAL subquery correlated on the shard key: on each outer row's shard."""
    order: tuple[str, ...] | None = None
    """Its column names in order, when known (for ``SELECT *``)."""


@dataclass
class _Info:
    """One analysed SELECT: how its rows relate to the shards."""

    sharded: bool
    exact: bool
    reason: str
    keys: dict[str, Any]
    names: list[str | None]
    level: _Level | None = None
    solid: set[str] = field(default_factory=set)


class _Level:
    """One query level: its FROM items and which of their columns are equal.

    ``uf`` joins columns equal in every row (WHERE and inner join conditions);
    ``co`` also joins those an outer join matches on, which is all
    co-location needs (the rows it pairs are equal there).
    """

    def __init__(self, number: int, parent: _Level | None) -> None:
        self.number = number
        self.parent = parent
        self.items: list[_Item] = []
        self.uf: dict[Identity, Identity] = dict(parent.uf) if parent is not None else {}
        self.co: dict[Identity, Identity] = dict(parent.co) if parent is not None else {}
        self.pins: list[tuple[Identity, tuple[Value, ...], bool]] = []
        self.merged = False
        """A join USING or NATURAL merges columns: ``*`` is not every item's columns in order."""
        """The WHERE clause's tests of a column against keys: the column, and the pin."""

    def find(self, x: Identity) -> Identity:
        return _find(self.uf, x)

    def cofind(self, x: Identity) -> Identity:
        return _find(self.co, x)

    def union(self, a: Identity, b: Identity, *, outer: bool = False) -> None:
        for uf in (self.co,) if outer else (self.uf, self.co):
            ra, rb = _find(uf, a), _find(uf, b)
            if ra != rb:
                uf[ra] = rb

    def key_identities(self, *, solid: bool = False) -> list[tuple[Identity, Any, _Item]]:
        return [
            ((self.number, i, column), function, item)
            for i, item in enumerate(self.items)
            for column, function in item.keys.items()
            if not solid or column in item.solid
        ]


def _find(uf: dict[Identity, Identity], x: Identity) -> Identity:
    while uf.get(x, x) != x:
        x = uf[x]
    return x


class _Analyzer:
    def __init__(self, layout: Layout, *, lenient: bool = False) -> None:
        self.layout = layout
        self.lenient = lenient
        self.refs: list[tuple[_Level, Identity, Any]] = []
        """Every sharded table read with a known key: its level, key column and shard function."""
        self.levels = 0
        self.ctes: dict[str, _Info] = {}
        self.unkeyed = False
        self.key_local: set[int] = set()
        self.sharded_seen = 0
        self.system_read = False
        self.output_keys: tuple[Any, ...] = ()

    def fail(self, error: Exception) -> None:
        """Refuse, unless only looking for the routing (``lenient``)."""
        if not self.lenient:
            raise error

    # -- one query level ------------------------------------------------------------

    def select(self, stmt: ast.SelectStmt, parent: _Level | None, *, top: bool = False) -> _Info:
        # A set operation's WITH is its arms' (known before they are read).
        if stmt.withClause is not None:
            for cte in stmt.withClause.ctes or ():
                if isinstance(cte.ctequery, ast.SelectStmt):
                    info = _renamed(self.select(cte.ctequery, parent), cte.aliascolnames)
                    if stmt.withClause.recursive and info.sharded:
                        # Each shard's recursion would follow its own rows only.
                        info = _Info(True, False, "WITH RECURSIVE over sharded rows", {}, info.names)
                        self.unkeyed = True
                    self.ctes[cte.ctename] = info
        if stmt.op != enums.SetOperation.SETOP_NONE:
            return self.set_operation(stmt, parent)
        self.levels += 1
        level = _Level(self.levels, parent)
        if stmt.valuesLists:
            for sublink in _sublinks(stmt.valuesLists):
                self.sublink(sublink, level)
            return _Info(False, True, "", {}, [], level)
        quals: list[ast.Node] = []
        for item in stmt.fromClause or ():
            self.from_item(item, level, quals)
        self.equalities(conjuncts(stmt.whereClause), level)
        level.pins = list(_pins(stmt, level, self))
        self.check_colocated(level)
        filters = {id(s) for expr in [stmt.whereClause, *quals] for s in _sublinks(expr)}
        for expr in self.expressions(stmt, quals):
            for sublink in _sublinks(expr):
                self.sublink(sublink, level, filtering=id(sublink) in filters)
        sharded = any(item.sharded for item in level.items)
        outputs = _outputs(stmt, level)
        names = [name for name, _ in outputs]
        if not sharded:
            return _Info(False, True, "", {}, names, level)
        exact, reason = self.exactness(stmt, level, top=top)
        if top and all(expr is not None or name is not None for name, expr in outputs):
            self.output_keys = tuple(
                self.key_function(expr, level) if expr is not None else None for _, expr in outputs
            )
        keys: dict[str, Any] = {}
        solid: set[str] = set()
        for name, expr in outputs:
            function = self.key_function(expr, level)
            if name and function is not None:
                keys[name] = function
                if self.key_function(expr, level, solid=True) is not None:
                    solid.add(name)
        return _Info(True, exact, reason, keys, names, level, solid)

    def set_operation(self, stmt: ast.SelectStmt, parent: _Level | None) -> _Info:
        parts = [self.select(s, parent) for s in (stmt.larg, stmt.rarg) if s is not None]
        if not any(p.sharded for p in parts):
            return _Info(False, True, "", {}, parts[0].names if parts else [])
        op: dict[enums.SetOperation | None, str] = {
            enums.SetOperation.SETOP_INTERSECT: "INTERSECT",
            enums.SetOperation.SETOP_EXCEPT: "EXCEPT",
        }
        name = op.get(stmt.op, "UNION") + (" ALL" if stmt.all else "")
        if name == "UNION ALL" and all(p.exact and p.sharded for p in parts):
            return _Info(True, True, "", {}, parts[0].names)
        if name == "UNION ALL" and all(p.exact for p in parts):
            reason = "UNION ALL of sharded rows and rows every shard has (each shard would add them again)"
            return _Info(True, False, reason, {}, parts[0].names)
        return _Info(True, False, f"a set operation ({name}) over sharded rows", {}, parts[0].names)

    def from_item(self, node: ast.Node, level: _Level, quals: list[ast.Node]) -> list[int]:
        """Add the FROM item's tables to ``level``; the indexes of the items it added."""
        if isinstance(node, ast.RangeVar):
            return [self.add(level, self.range_var(node))]
        if isinstance(node, ast.RangeSubselect):
            subquery = cast(ast.SelectStmt, node.subquery)  # a subquery in FROM is always a SELECT
            info = self.select(subquery, level if node.lateral else level.parent)
            if (
                node.lateral
                and info.sharded
                and info.level is not None
                and self.correlated_on_key(info.level, level)
            ):
                # Tied to each outer row by the key: each shard answers it for its own rows.
                self.sharded_seen += 1
                item = _Item(node.alias.aliasname if node.alias is not None else None, True, tied=True)
                return [self.add(level, item)]
            return [self.add(level, self.derived(info, node.alias, "a subquery in FROM"))]
        if isinstance(node, ast.JoinExpr):
            left = self.from_item(cast(ast.Node, node.larg), level, quals)
            right = self.from_item(cast(ast.Node, node.rarg), level, quals)
            outer = node.jointype != enums.JoinType.JOIN_INNER
            if node.quals is not None:
                quals.append(node.quals)
                self.equalities(conjuncts(node.quals), level, outer=outer)
            for name in node.usingClause or ():
                self.using(level, left, right, name.sval, outer=outer)
            if node.usingClause or node.isNatural:
                level.merged = True  # SELECT * shows such columns once: its columns are not the items' own
            self.outer_join(node, level, left, right)
            return left + right
        if isinstance(node, ast.RangeTableSample):
            for sublink in _sublinks([node.args, node.repeatable]):
                self.sublink(sublink, level)
            return self.from_item(cast(ast.Node, node.relation), level, quals)
        for sublink in _sublinks(node):
            self.sublink(sublink, level)
        alias = getattr(node, "alias", None)
        return [self.add(level, _Item(alias.aliasname if alias is not None else None))]

    def range_var(self, node: ast.RangeVar) -> _Item:
        alias = node.alias.aliasname if node.alias is not None else node.relname
        info = self.layout.table(node)
        if info is None:
            cte = self.ctes.get(cast(str, node.relname))  # the parser always names the relation
            if cte is None:
                return _Item(alias)
            return self.derived(cte, node.alias, "a CTE")
        renames = [c.sval for c in node.alias.colnames or ()] if node.alias is not None else []
        return self.table_item(info, alias, renames)

    def table_item(self, info: TableInfo, alias: str | None, renames: list[str]) -> _Item:
        """A base table's item (its key, if any, is recorded for routing when the item is added).

        ``renames``: ``AS alias(a, b)`` names its first columns anew.
        """
        columns, key, order = info.columns, info.key, info.order
        if renames:
            if info.order is None:
                columns = key = order = None
            else:
                order = (*renames, *info.order[len(renames) :])
                columns = frozenset(order)
                key = order[info.order.index(info.key)] if info.key in info.order else None
        if info.kind == "whole":
            self.system_read = self.system_read or info.system
            return _Item(alias, columns=columns, name=info.name, order=order)
        self.sharded_seen += 1
        if info.key is None:
            self.unkeyed = True
            return _Item(alias, True, columns, unkeyed=True, assumed=True, name=info.name, order=order)
        if key is None:
            self.unkeyed = True  # renamed beyond what the catalog tells: no routing, no pushdown
            return _Item(alias, True, columns, unkeyed=True, name=info.name, order=order)
        item = _Item(
            alias, True, columns, {key: info.function}, name=info.name, key_type=info.key_type, order=order
        )
        item.solid = {key} if info.key_not_null else set()
        item.base = True
        return item

    def derived(self, info: _Info, alias: ast.Alias | None, what: str) -> _Item:
        info = _renamed(info, alias.colnames if alias is not None else None)
        known = None not in info.names
        item = _Item(
            alias.aliasname if alias is not None else None,
            columns=frozenset(n for n in info.names if n) if known else None,
            order=tuple(n for n in info.names if n) if known else None,
        )
        if not info.sharded:
            return item
        self.sharded_seen += 1
        if not info.exact:
            self.fail(refuse(f"{info.reason} in {what}"))
        item.sharded = True
        item.keys = dict(info.keys)
        item.solid = set(info.solid)
        item.unkeyed = not info.keys
        item.name = what
        return item

    def add(self, level: _Level, item: _Item) -> int:
        level.items.append(item)
        index = len(level.items) - 1
        keys = [(level.number, index, column) for column in item.keys]
        for other in keys[1:]:
            level.union(keys[0], other, outer=True)  # on one shard, not always equal (NULLs)
        if item.base:
            self.refs.extend((level, key, item.keys[key[2]]) for key in keys)
        return index

    # -- joins and co-location ------------------------------------------------------

    def equalities(self, conjuncts: list[ast.Node], level: _Level, *, outer: bool = False) -> None:
        for node in conjuncts:
            if _is_equality(node):
                a, b = self.resolve(node.lexpr, level), self.resolve(node.rexpr, level)
                if a is not None and b is not None:
                    level.union(a, b, outer=outer)

    def using(self, level: _Level, left: list[int], right: list[int], column: str, *, outer: bool) -> None:
        sides = []
        for indexes in (left, right):
            owners = [i for i in indexes if column in (level.items[i].columns or ())]
            if len(owners) == 1:
                sides.append((level.number, owners[0], column))
        if len(sides) == 2:
            level.union(sides[0], sides[1], outer=outer)

    def outer_join(self, node: ast.JoinExpr, level: _Level, left: list[int], right: list[int]) -> None:
        outer_names: dict[enums.JoinType | None, str] = {
            enums.JoinType.JOIN_LEFT: "LEFT JOIN",
            enums.JoinType.JOIN_RIGHT: "RIGHT JOIN",
            enums.JoinType.JOIN_FULL: "FULL JOIN",
        }
        outer = outer_names.get(node.jointype)
        if outer is None:
            return
        nullable = {"LEFT JOIN": right, "RIGHT JOIN": left}.get(outer, left + right)
        for index in nullable:
            level.items[index].solid = set()  # NULL on every shard where it has no match
        left_sharded = any(level.items[i].sharded for i in left)
        right_sharded = any(level.items[i].sharded for i in right)
        kept = {"LEFT JOIN": (left_sharded,), "RIGHT JOIN": (right_sharded,)}
        keeps = kept.get(outer, (left_sharded, right_sharded))
        if (left_sharded or right_sharded) and not all(keeps):
            self.fail(
                refuse(
                    f"{outer} keeping the rows of a table copied to every shard (or of no table) "
                    "when the other side is sharded"
                )
            )

    def check_colocated(self, level: _Level) -> None:
        if self.layout.declared:
            unknown = [i for i in level.items if i.sharded and not i.keys and not i.assumed and not i.tied]
            if unknown and sum(1 for i in level.items if i.sharded) > 1:
                self.fail(
                    refuse(
                        f"a join with {unknown[0].name or unknown[0].alias}, whose rows' shard key is "
                        "not known (a set operation or subquery that does not select the key)"
                    )
                )
        keyed = level.key_identities()
        if len(keyed) < 2:
            return
        first, function, item = keyed[0]
        for identity, other_function, other in keyed[1:]:
            if other is item:
                continue
            if level.cofind(identity) != level.cofind(first) or other_function != function:
                self.fail(
                    refuse(
                        f"a join of {_shown(item, first)} and {_shown(other, identity)} that is not "
                        "on their shard keys with one shard function (the rows they join may live "
                        "on different shards)"
                    )
                )

    def key_function(self, expr: Any, level: _Level, *, solid: bool = False) -> Any:
        """The shard function when ``expr`` is a column holding the level's shard key in every row.

        ``solid``: and never NULL, so that grouping by it keeps each group on one shard.
        """
        identity = self.resolve(expr, level)
        if identity is None:
            return None
        root = level.find(identity)
        for key, function, _ in level.key_identities(solid=solid):
            if level.find(key) == root:
                return function
        return None

    # -- subqueries ---------------------------------------------------------------------

    def sublink(self, node: ast.SubLink, level: _Level, *, filtering: bool = False) -> None:
        """Check a subquery: each shard must answer it for its own rows.

        ``filtering``: it is in WHERE or a join condition, where ``x IN (SELECT ...)``
        is a semi-join (assumed co-located, as joins are, when no key is declared).
        """
        sub = node.subselect
        if not isinstance(sub, ast.SelectStmt):
            return
        seen = self.sharded_seen
        info = self.select(sub, level)
        self.outer_aggregates(sub, info, level)
        if self.sharded_seen == seen:
            self.key_local.add(id(node))
        if not info.sharded:
            return
        inner = info.level
        if inner is not None and self.correlated_on_key(inner, level):
            self.key_local.add(id(node))
            return
        if self.key_in(node, info, level):
            return  # each shard has its keys; negated, a NULL key elsewhere would change the answer
        if inner is not None and any(i.assumed for i in inner.items) and self.outer_sharded(level):
            # No declared keys: tables are assumed co-located, as FROM items are.
            if self.correlated(sub, inner):
                return
            if filtering and node.subLinkType == enums.SubLinkType.ANY_SUBLINK and info.exact:
                return
        self.fail(
            refuse(
                "a subquery reading a sharded table that is not tied to the outer rows by the shard "
                "key (correlate it on the key, or join the table in FROM)"
            )
        )

    def correlated_on_key(self, inner: _Level, level: _Level) -> bool:
        inner_keys = inner.key_identities()
        if not inner_keys:
            return False
        outer: _Level | None = level
        while outer is not None:
            for identity, function, _ in outer.key_identities():
                for key, inner_function, _ in inner_keys:
                    if inner.find(key) == inner.find(identity) and function == inner_function:
                        return True
            outer = outer.parent
        return False

    def key_in(self, node: ast.SubLink, info: _Info, level: _Level) -> bool:
        """``outer_key IN (SELECT inner_key ...)`` over an exact subquery: each shard has its keys."""
        if node.subLinkType != enums.SubLinkType.ANY_SUBLINK or not info.exact:
            return False
        if node.operName and [n.sval for n in node.operName] != ["="]:
            return False
        sub = cast(ast.SelectStmt, node.subselect)  # a sublink's subquery is a SELECT
        if len(sub.targetList or ()) != 1 or info.level is None:
            return False
        outer = self.key_function(node.testexpr, level)
        inner = self.key_function(cast("tuple[Any, ...]", sub.targetList)[0].val, info.level)
        return outer is not None and outer == inner

    def correlated(self, sub: ast.SelectStmt, inner: _Level) -> bool:
        for node in walk(sub, into_selects=True):
            if isinstance(node, ast.ColumnRef):
                identity = self.resolve(node, inner)
                if identity is not None and identity[0] < inner.number:
                    return True
        return False

    def outer_aggregates(self, sub: ast.SelectStmt, info: _Info, level: _Level) -> None:
        """Refuse ``(SELECT count(t.x))``: an aggregate of the outer query's rows, hidden in a subquery."""
        aggregates = self.layout_aggregates()
        for node in walk([*(sub.targetList or ()), sub.havingClause]):
            if not (isinstance(node, ast.FuncCall) and is_aggregate(node, aggregates)):
                continue
            refs = [n for n in walk(node.args or ()) if isinstance(n, ast.ColumnRef)]
            inner = info.level
            if inner is not None and inner.items:
                outer = [r for r in refs if (i := self.resolve(r, inner)) is not None and i[0] < inner.number]
            else:
                outer = refs
            if refs and len(outer) == len(refs) and self.outer_sharded(level):
                name = aggregate_name(node, aggregates)
                self.fail(refuse(f"an aggregate of the outer query's rows ({name}) inside a subquery"))

    def outer_sharded(self, level: _Level | None) -> bool:
        while level is not None:
            if any(item.sharded for item in level.items):
                return True
            level = level.parent
        return False

    def layout_aggregates(self) -> frozenset[str]:
        return self.layout.aggregates

    # -- what each shard can finish -----------------------------------------------------

    def exactness(self, stmt: ast.SelectStmt, level: _Level, *, top: bool = False) -> tuple[bool, str]:
        """Whether this level's per-shard answers union to one database's answer, and if not why.

        ``top``: the statement itself, whose ORDER BY, LIMIT and OFFSET the merge applies.
        """
        aggregates = self.layout_aggregates()
        keyed = bool(level.key_identities())
        if not top and (stmt.limitCount is not None or stmt.limitOffset is not None):
            return False, "LIMIT / OFFSET"
        grouped = bool(stmt.groupClause) or stmt.havingClause is not None
        grouped = grouped or any(is_aggregate(n, aggregates) for t in stmt.targetList or () for n in walk(t))
        if grouped:
            items = list(stmt.groupClause or ())
            if any(isinstance(i, ast.GroupingSet) for i in items):
                return False, "GROUPING SETS / ROLLUP / CUBE"
            if not keyed or not any(self.key_function(i, level, solid=True) is not None for i in items):
                return False, "GROUP BY (without the shard key) or an aggregate"
        if stmt.distinctClause is not None:
            exprs = [e for e in stmt.distinctClause if e is not None]
            if not exprs:
                exprs = [t.val for t in stmt.targetList or ()]
            if not keyed or not any(self.key_function(e, level, solid=True) is not None for e in exprs):
                return False, "DISTINCT (without the shard key)"
        for window in self.windows(stmt):
            partition = list(window.partitionClause or ())
            if not keyed or not any(self.key_function(p, level, solid=True) is not None for p in partition):
                return False, "a window function (not PARTITION BY the shard key)"
        return True, ""

    def windows(self, stmt: ast.SelectStmt) -> Iterator[ast.WindowDef]:
        named = {w.name: w for w in stmt.windowClause or ()}
        for node in walk([*(stmt.targetList or ()), *(stmt.sortClause or ())]):
            if isinstance(node, ast.FuncCall) and node.over is not None:
                over = node.over
                if over.refname and over.refname in named and not over.partitionClause:
                    over = named[over.refname]
                elif over.name and over.name in named and not over.partitionClause:
                    over = named[over.name]
                yield over

    def expressions(self, stmt: ast.SelectStmt, quals: list[ast.Node]) -> list[Any]:
        """Every part of the level that may hold a subquery, but its FROM items and CTEs (seen apart)."""
        node_type: Any = type(stmt)
        skipped = {"fromClause", "withClause", "larg", "rarg", "intoClause"}
        parts = [getattr(stmt, name, None) for name in node_type.__slots__ if name not in skipped]
        return [*(part for part in parts if part is not None), *quals]

    # -- names ------------------------------------------------------------------------

    def resolve(self, expr: Any, level: _Level) -> Identity | None:
        """The FROM-item column a plain column reference means, looking outwards; None if unsure.

        A cast column (``k::varchar(1)``) is no column: its values are not the key's.
        """
        if not isinstance(expr, ast.ColumnRef):
            return None
        fields = [f.sval if isinstance(f, ast.String) else None for f in cast("tuple[Any, ...]", expr.fields)]
        if None in fields or not fields:
            return None
        column = str(fields[-1])
        qualifier = fields[-2] if len(fields) >= 2 else None
        current: _Level | None = level
        while current is not None:
            found = _owner(current, qualifier, column)
            if isinstance(found, str):  # "unsure"
                return None
            if found is not None:
                return (current.number, found, column)
            current = current.parent
        return None


def _outputs(stmt: ast.SelectStmt, level: _Level) -> list[tuple[str | None, Any]]:
    """The select list's (name, expression) pairs, ``*`` and ``t.*`` expanded when the columns are known."""
    outputs: list[tuple[str | None, Any]] = []
    for target in stmt.targetList or ():
        value = target.val
        if isinstance(value, ast.ColumnRef) and value.fields and isinstance(value.fields[-1], ast.A_Star):
            qualifier = value.fields[-2].sval if len(value.fields) >= 2 else None
            items = [i for i in level.items if qualifier is None or i.alias == qualifier]
            if not items or any(i.order is None for i in items) or (level.merged and qualifier is None):
                outputs.append((None, None))
                continue
            for item in items:
                for column in item.order or ():
                    ref = ast.ColumnRef(fields=(ast.String(sval=item.alias), ast.String(sval=column)))
                    outputs.append((column, ref if item.alias else None))
            continue
        outputs.append((output_name(target), value))
    return outputs


def _renamed(info: _Info, colnames: Any) -> _Info:
    """``info`` seen through a column list (``AS s(a, b)``, ``WITH s(a, b) AS``): names by position."""
    if not colnames:
        return info
    new = [c.sval for c in colnames]
    names = [*new, *info.names[len(new) :]]
    keys: dict[str, Any] = {}
    solid: set[str] = set()
    for old, name in zip(info.names, names, strict=False):
        if old is not None and name is not None and old in info.keys:
            keys[name] = info.keys[old]
            if old in info.solid:
                solid.add(name)
    return replace(info, names=names, keys=keys, solid=solid)


def _owner(level: _Level, qualifier: str | None, column: str) -> int | str | None:
    if qualifier is not None:
        for i, item in enumerate(level.items):
            if item.alias == qualifier:
                return i
        return None
    owners = [i for i, item in enumerate(level.items) if item.columns is not None and column in item.columns]
    if len(owners) == 1:
        return owners[0]
    if owners or any(item.columns is None for item in level.items):
        return "unsure"
    return None


def _shown(item: _Item, identity: Identity) -> str:
    return f"{item.name or item.alias} (sharded on {identity[2]})"


def _is_equality(node: ast.Node) -> TypeGuard[ast.A_Expr]:
    return (
        isinstance(node, ast.A_Expr)
        and node.kind == enums.A_Expr_Kind.AEXPR_OP
        and [n.sval for n in cast("tuple[Any, ...]", node.name)] == ["="]
        and node.lexpr is not None
    )


def _sublinks(node: Any) -> Iterator[ast.SubLink]:
    """The subqueries in an expression (not those inside nested SELECTs)."""
    for sub in walk(node):
        if isinstance(sub, ast.SubLink):
            yield sub


def analyze(stmt: ast.SelectStmt, layout: Layout, *, lenient: bool = False) -> Analysis:
    """Check the bound top-level SELECT ``stmt`` and say how its rows are placed.

    ``lenient``: refuse nothing that routing to one shard would make exact;
    only the routing is of use then.
    """
    analyzer = _Analyzer(layout, lenient=lenient)
    info = analyzer.select(stmt, None, top=True)
    if analyzer.sharded_seen and analyzer.system_read:
        analyzer.fail(
            refuse(
                "a pg_catalog or information_schema relation in a statement that reads sharded rows "
                "(each shard has its own catalog: oids, settings, statistics)"
            )
        )
    routes = _routes(analyzer)
    return Analysis(
        sharded=info.sharded,
        local=info.exact or not info.sharded,
        routes=routes,
        local_reason=info.reason,
        key_local=frozenset(analyzer.key_local),
        output_keys=analyzer.output_keys,
    )


def _routes(analyzer: _Analyzer) -> tuple[tuple[Pin, ...], ...]:
    """For every sharded table read, the pins its rows satisfy; () unless every read has some."""
    if analyzer.unkeyed or not analyzer.refs:
        return ()
    groups: list[tuple[Pin, ...]] = []
    for level, key, function in analyzer.refs:
        item = level.items[key[1]]
        group: list[Pin] = []
        current: _Level | None = level
        while current is not None:
            for identity, values, array in current.pins:
                # A pin is a test no NULL passes: on an outer join's far side it means a match,
                # so the join's own equalities carry it (``co``).
                if level.cofind(identity) == level.cofind(key):
                    group.append(Pin(function, values, array=array, key_type=item.key_type))
            current = current.parent
        if not group:
            return ()
        groups.append(tuple(group))
    return tuple(dict.fromkeys(groups))


def _pins(
    stmt: ast.SelectStmt, level: _Level, analyzer: _Analyzer
) -> Iterator[tuple[Identity, tuple[Value, ...], bool]]:
    """The WHERE clause's tests of a column against values: (the column, the values, one array?)."""
    for node in conjuncts(stmt.whereClause):
        if not isinstance(node, ast.A_Expr) or [n.sval for n in cast("tuple[Any, ...]", node.name)] != ["="]:
            continue
        if node.kind == enums.A_Expr_Kind.AEXPR_OP:
            for column, value in ((node.lexpr, node.rexpr), (node.rexpr, node.lexpr)):
                identity = analyzer.resolve(column, level)
                constant = _value(value)
                if identity is not None and constant is not None:
                    yield identity, (constant,), False
        elif node.kind == enums.A_Expr_Kind.AEXPR_IN and isinstance(node.rexpr, (tuple, list)):
            identity = analyzer.resolve(node.lexpr, level)
            values = [_value(v) for v in node.rexpr]
            if identity is not None and all(v is not None for v in values):
                yield identity, tuple(v for v in values if v is not None), False
        elif node.kind == enums.A_Expr_Kind.AEXPR_OP_ANY:
            identity = analyzer.resolve(node.lexpr, level)
            if identity is None:
                continue
            rexpr = node.rexpr.arg if isinstance(node.rexpr, ast.TypeCast) else node.rexpr
            if isinstance(rexpr, ast.ParamRef):
                yield identity, (Param(cast(int, rexpr.number)),), True
            elif isinstance(rexpr, ast.A_ArrayExpr):
                values = [_value(v) for v in rexpr.elements or ()]
                if all(v is not None for v in values):
                    yield identity, tuple(v for v in values if v is not None), False


def _key_type(column: Any, level: _Level, analyzer: _Analyzer) -> int | None:
    identity = analyzer.resolve(column, level)
    if identity is None or identity[0] != level.number:
        return None
    return level.items[identity[1]].key_type


_SAME_VALUE_CASTS = frozenset({"int2", "int4", "int8", "smallint", "integer", "bigint", "text"})
"""Casts of a key's value that keep it as the key compares it (no truncation, no padding)."""


def _value(node: Any) -> Value | None:
    """A pin's value: a literal or a parameter, maybe cast without changing what it is."""
    if isinstance(node, ast.TypeCast):
        type_name = node.typeName
        names = [n.sval for n in type_name.names or ()] if type_name is not None else []
        if type_name is None or type_name.typmods or type_name.arrayBounds or not names:
            return None
        if names[-1] not in _SAME_VALUE_CASTS or names[:-1] not in ([], ["pg_catalog"]):
            return None
        node = node.arg
    if isinstance(node, ast.ParamRef):
        return Param(cast(int, node.number))
    if isinstance(node, ast.A_Const) and not node.isnull:
        value = node.val
        if isinstance(value, ast.Integer):
            return Const(value.ival)
        if isinstance(value, ast.String):
            return Const(value.sval)
        if isinstance(value, ast.Float):
            return Const(value.fval)
    return None
