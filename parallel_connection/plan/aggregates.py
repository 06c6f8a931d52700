"""GROUP BY and aggregates: each shard computes partial groups, the client combines them.

``avg`` becomes count and sum; variance and stddev become count, sum and the
exact (numeric) sums of values and squares; ``count(DISTINCT x)`` becomes the shard's set
of distinct values. HAVING, ORDER BY and LIMIT then run on the merged groups.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from decimal import Decimal

from pglast import ast, enums

from .columns import ShardColumns
from .having import compile_having
from .model import AggregatePlan, ClientPlan, Const, Output, Param, Partial, Value
from .ordering import limit_value, resolve_reference, sort_key
from .refusals import refuse
from .syntax import (
    aggregate_name,
    bare_name,
    copy_node,
    func_name,
    integer_const,
    is_aggregate,
    output_name,
    walk,
)

__all__ = ["AggregatePlanner", "check_shard_types", "uses_aggregates"]

_REAL = 700

_VARIANCE = {
    "variance": "var_samp",
    "var_samp": "var_samp",
    "var_pop": "var_pop",
    "stddev": "stddev_samp",
    "stddev_samp": "stddev_samp",
    "stddev_pop": "stddev_pop",
}
_SAME = {
    "count": "count",
    "sum": "sum",
    "min": "min",
    "max": "max",
    "bool_and": "bool_and",
    "every": "bool_and",
}
_SAME |= {"bool_or": "bool_or", "array_agg": "array_agg", "string_agg": "string_agg"}
_ORDER_MATTERS = ("array_agg", "string_agg")


def uses_aggregates(stmt: ast.SelectStmt, aggregates: frozenset[str]) -> bool:
    """True when the top level of ``stmt`` groups or aggregates."""
    if stmt.groupClause or stmt.havingClause is not None:
        return True
    nodes = [*(stmt.targetList or ()), *(stmt.sortClause or ())]
    return any(is_aggregate(n, aggregates) for node in nodes for n in walk(node))


def check_shard_types(client: ClientPlan, type_codes: Sequence[int]) -> None:
    """Refuse partial aggregates whose type makes the combined answer inexact (checked once rows arrive).

    PostgreSQL sums ``real`` in single precision, row by row: no combination
    of per-shard sums gives its answer.
    """
    if client.aggregate is None:
        return
    for partial in client.aggregate.partials:
        if partial.kind == "sum" and type_codes[partial.columns[0]] == _REAL:
            raise refuse("sum() over real (cast the argument to double precision or numeric)")


class AggregatePlanner:
    """Rewrites one aggregating SELECT into partial-aggregate shard SQL and a client plan."""

    def __init__(self, stmt: ast.SelectStmt, aggregates: frozenset[str]) -> None:
        self.stmt = stmt
        self.aggregates = aggregates
        self.targets = list(stmt.targetList or ())
        self.columns = ShardColumns()
        self.partials: list[Partial] = []
        self._calls: list[tuple[ast.FuncCall, int]] = []
        self.outputs: list[Output] = []

    def plan(self) -> tuple[ast.SelectStmt, ClientPlan]:
        stmt = self.stmt
        for target in self.targets:
            if isinstance(target.val, ast.ColumnRef) and isinstance(_fields(target.val)[-1], ast.A_Star):
                raise refuse("SELECT * with GROUP BY or aggregates")
        for target in self.targets:
            self.outputs.append(self._visible(target))
        grouped = [self._group_item(item) for item in stmt.groupClause or ()]
        group_items = [item for item, _ in grouped]
        keys = tuple(key for _, key in grouped)
        having = (
            compile_having(stmt.havingClause, self._having_leaf) if stmt.havingClause is not None else None
        )
        order = tuple(
            sort_key(item, self._output_for(item.node, "ORDER BY")) for item in stmt.sortClause or ()
        )
        distinct_on: tuple[int, ...] = ()
        distinct = False
        if stmt.distinctClause is not None:
            if stmt.distinctClause == (None,) or not any(stmt.distinctClause):
                distinct = True
            else:
                distinct_on = tuple(self._output_for(e, "DISTINCT ON") for e in stmt.distinctClause)
        # The shards never see these clauses here, so check what PostgreSQL would check.
        if distinct and any(key.column >= len(self.targets) for key in order):
            raise refuse("SELECT DISTINCT with an ORDER BY expression that is not in the select list")
        if distinct_on and order and set(distinct_on) != {k.column for k in order[: len(distinct_on)]}:
            raise refuse("DISTINCT ON expressions that are not the leading ORDER BY expressions")
        if not group_items and not self.partials:
            # HAVING (or GROUP BY ()) alone: one group of every row, even of none; the shards'
            # rewritten statement would return rows, not one group (the coordinator finishes it).
            raise refuse("HAVING or GROUP BY () without an aggregate")
        shard = ast.SelectStmt(
            targetList=tuple(self.columns.targets),
            fromClause=stmt.fromClause,
            whereClause=stmt.whereClause,
            groupClause=tuple(group_items) or None,
            withClause=stmt.withClause,
            limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
            op=enums.SetOperation.SETOP_NONE,
        )
        aggregate = AggregatePlan(
            keys=keys,
            grouped=bool(group_items),
            partials=tuple(self.partials),
            outputs=tuple(self.outputs),
            having=having,
        )
        client = ClientPlan(
            order=order,
            distinct=distinct,
            distinct_on=distinct_on,
            limit=limit_value(stmt.limitCount, "LIMIT"),
            offset=limit_value(stmt.limitOffset, "OFFSET"),
            hidden=len(self.outputs) - len(self.targets),
            aggregate=aggregate,
        )
        return shard, client

    # -- select list, GROUP BY, ORDER BY --------------------------------------------

    def _group_item(self, item: ast.Node) -> tuple[ast.Node, int]:
        """The shard's GROUP BY item and the shard column holding the key.

        A position stays a position (of the same expression in the shard's
        select list), so the shards read it as PostgreSQL reads the user's.
        """
        position = integer_const(item)
        if position is not None:
            if not 1 <= position <= len(self.targets):
                raise refuse(f"GROUP BY position {position} (not in the select list)")
            output = self.outputs[position - 1]
            if output.source != "column":
                raise refuse(f"GROUP BY position {position} (an aggregate)")
            return ast.A_Const(isnull=False, val=ast.Integer(ival=output.index + 1)), output.index
        name = bare_name(item)
        if name is not None:
            for target in self.targets:
                if target.name == name and not _mentions_column(target.val, name):
                    # PostgreSQL reads such a name as a table column when one exists,
                    # and only otherwise as the output name: the plan can't tell which.
                    raise refuse(
                        f"GROUP BY {name} (an output name, which PostgreSQL reads as a table "
                        "column when one has that name: group by the expression or its position)"
                    )
        return item, self._key_column(item)

    def _visible(self, target: ast.ResTarget) -> Output:
        val = typing.cast(ast.Node, target.val)  # a select-list entry always has a value
        if is_aggregate(val, self.aggregates):
            call = typing.cast(ast.FuncCall, val)  # is_aggregate() holds only for a FuncCall
            return Output("aggregate", self._partial(call), output_name(target) or "?column?")
        self._refuse_nested_aggregate(val, "a select-list expression over aggregate results")
        return Output("column", self.columns.add(val, target.name, hidden=False))

    def _key_column(self, item: ast.Node) -> int:
        found = self.columns.find(item)
        return found if found is not None else self.columns.hidden(item)

    def _output_for(self, expr: ast.Node, clause: str) -> int:
        """The merged-row column an ORDER BY or DISTINCT ON item means (hidden if need be)."""
        return resolve_reference(expr, self.targets, lambda i: i, lambda e: self._hidden_output(e, clause))

    def _hidden_output(self, expr: ast.Node, clause: str) -> int:
        if isinstance(expr, ast.CollateClause):
            expr = typing.cast(ast.Node, expr.arg)
        if is_aggregate(expr, self.aggregates):
            output = Output("aggregate", self._partial(typing.cast(ast.FuncCall, expr)))
        else:
            self._refuse_nested_aggregate(expr, f"{clause} on an expression over aggregate results")
            output = Output("column", self._key_column(expr))
        for index, known in enumerate(self.outputs):
            if known.source == output.source and known.index == output.index:
                return index
        self.outputs.append(output)
        return len(self.outputs) - 1

    def _having_leaf(self, expr: ast.Node) -> tuple[str, object]:
        """A HAVING operand: a literal, a parameter, or a merged-row column."""
        if isinstance(expr, ast.A_Const):
            return ("value", Const(_literal(expr)))
        if isinstance(expr, ast.ParamRef):
            return ("value", Param(typing.cast(int, expr.number)))
        return ("column", self._hidden_output(expr, "HAVING"))

    def _refuse_nested_aggregate(self, expr: ast.Node, construct: str) -> None:
        if any(is_aggregate(n, self.aggregates) for n in walk(expr)):
            raise refuse(construct)

    # -- aggregates --------------------------------------------------------------------

    def _partial(self, call: ast.FuncCall) -> int:
        """The index of the partial aggregate that answers ``call`` (added once)."""
        for known, index in self._calls:
            if known == call:
                return index
        partial = self._rewrite(call)
        self.partials.append(partial)
        self._calls.append((call, len(self.partials) - 1))
        return len(self.partials) - 1

    def _rewrite(self, call: ast.FuncCall) -> Partial:
        shown = aggregate_name(call, self.aggregates) or "?"
        schema, name = func_name(call)
        if schema not in (None, "pg_catalog") or (
            name not in _SAME and name not in _VARIANCE and name != "avg"
        ):
            raise refuse(f"the aggregate {shown}()")
        if call.func_variadic:
            raise refuse(f"VARIADIC in {name}()")
        for node in walk(call.args or ()):
            if is_aggregate(node, self.aggregates):
                raise refuse(f"a nested aggregate in {name}()")
        if call.agg_order and name in _ORDER_MATTERS:
            raise refuse(f"{name}() with ORDER BY inside the call")
        args = tuple(call.args or ())
        if call.agg_distinct and name not in ("count", "min", "max", "bool_and", "bool_or", "every"):
            raise refuse(f"{name}(DISTINCT ...)")
        if name == "count" and call.agg_distinct:
            if len(args) != 1:
                raise refuse("count(DISTINCT ...) over several expressions")
            return Partial("count_distinct", (self._call(call, "array_agg", args, distinct=True),))
        if name == "avg":
            return Partial("avg", (self._call(call, "count", args), self._call(call, "sum", args)))
        if name in _VARIANCE:
            if len(args) != 1:
                raise refuse(f"{name}() with {len(args)} arguments")
            columns = (
                self._call(call, "count", args),
                self._call(call, "sum", args),
                self._call(call, "sum", (_numeric(args[0]),)),
                self._call(call, "sum", (_numeric_square(args[0]),)),
            )
            return Partial("var", columns, variant=_VARIANCE[name])
        delimiter: Value | None = None
        if name == "string_agg":
            delimiter = _delimiter(args)
        column = self._call(call, name, args, star=call.agg_star, distinct=call.agg_distinct)
        return Partial(_SAME[name], (column,), delimiter=delimiter)

    def _call(
        self,
        call: ast.FuncCall,
        name: str,
        args: tuple[ast.Node, ...],
        *,
        star: bool | None = False,
        distinct: bool | None = False,
    ) -> int:
        partial = ast.FuncCall(
            funcname=(ast.String(sval=name),),
            args=tuple(copy_node(a) for a in args) or None,
            agg_filter=copy_node(call.agg_filter),
            agg_star=star,
            agg_distinct=distinct,
            agg_within_group=False,
            func_variadic=False,
            funcformat=enums.CoercionForm.COERCE_EXPLICIT_CALL,
        )
        return self.columns.hidden(partial)


def _numeric(arg: ast.Node) -> ast.Node:
    """``arg::text::numeric``: float8 keeps every digit of its (shortest round-trip) text.

    ``float8::numeric`` keeps only 15 significant digits.
    """
    return _cast(_cast(copy_node(arg), "text"), "numeric")


def _cast(arg: ast.Node, type_name: str) -> ast.Node:
    name = ast.TypeName(names=(ast.String(sval="pg_catalog"), ast.String(sval=type_name)), typemod=-1)
    return ast.TypeCast(arg=arg, typeName=name)


def _numeric_square(arg: ast.Node) -> ast.Node:
    cast = _numeric(arg)
    return ast.A_Expr(
        kind=enums.A_Expr_Kind.AEXPR_OP, name=(ast.String(sval="*"),), lexpr=cast, rexpr=copy_node(cast)
    )


def _delimiter(args: tuple[ast.Node, ...]) -> Value:
    if len(args) == 2:
        delimiter = args[1]
        if isinstance(delimiter, ast.A_Const) and (delimiter.isnull or isinstance(delimiter.val, ast.String)):
            return Const(None if delimiter.isnull else typing.cast(ast.String, delimiter.val).sval)
        if isinstance(delimiter, ast.ParamRef):
            return Param(typing.cast(int, delimiter.number))
    raise refuse("string_agg() whose delimiter is not a string literal or a parameter")


def _literal(node: ast.A_Const) -> object:
    if node.isnull:
        return None
    value = node.val
    if isinstance(value, ast.Integer):
        return value.ival
    if isinstance(value, ast.Float):
        return Decimal(typing.cast(str, value.fval))
    if isinstance(value, ast.Boolean):
        return value.boolval
    if isinstance(value, ast.String):
        return value.sval
    raise refuse(f"the literal {value!r} in HAVING")


def _mentions_column(expr: ast.Node, name: str) -> bool:
    return any(bare_name(n) == name or _last_field(n) == name for n in walk(expr))


def _last_field(node: ast.Node) -> str | None:
    last = _fields(node)[-1] if isinstance(node, ast.ColumnRef) else None
    if isinstance(last, ast.String):
        return last.sval
    return None


def _fields(node: ast.ColumnRef) -> tuple[typing.Any, ...]:
    """A column reference's name parts; PostgreSQL's parser always sets them."""
    return typing.cast("tuple[typing.Any, ...]", node.fields)
