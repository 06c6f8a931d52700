"""Combine the shards' partial aggregates group by group into PostgreSQL's answers."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from psycopg2.extensions import Column

from ..errors import refuse
from ..plan.model import AggregatePlan, Partial, SortKey
from . import numeric
from .values import (
    ARRAY_ELEMENT,
    BOOL,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    NUMERIC,
    TEXT,
    VARCHAR,
    check_equality,
    check_order,
    equality_key,
    row_key,
    type_name,
)

__all__ = ["Combiner"]

SUMMABLE = frozenset({INT2, INT4, INT8, NUMERIC, FLOAT4, FLOAT8})
"""Not interval: psycopg2 turns months into 30 days and years into 365, so partial sums don't add up."""
EXACT_SUMS = frozenset({INT8, NUMERIC})
"""Sum types of integer and numeric arguments: their avg and variance are exact numerics."""


_SIZES = {INT2: 2, INT4: 4, INT8: 8, FLOAT4: 4, FLOAT8: 8, BOOL: 1, NUMERIC: -1, TEXT: -1, VARCHAR: -1}


def _bare(name: str, type_code: int) -> Column:
    """A computed column as one database describes it: the type's size; numeric without typmod."""
    if type_code == NUMERIC:
        return Column(name=name, type_code=type_code, internal_size=-1, precision=65535, scale=65535)
    return Column(name=name, type_code=type_code, internal_size=_SIZES.get(type_code))


class _Aggregate:
    """One aggregate's state within one group."""

    def __init__(
        self,
        combine: Callable[[Any, tuple[Any, ...]], Any],
        final: Callable[[Any], Any],
        start: Callable[[], Any],
    ):
        self.combine, self.final, self.start = combine, final, start


class Combiner:
    """Merges partial groups into final rows: group key columns, then each output."""

    def __init__(
        self, plan: AggregatePlan, description: Sequence[Any], text_order_c: bool, delimiters: list[Any]
    ) -> None:
        self.plan = plan
        self.types = [c.type_code for c in description]
        self._key_normalizers = []
        for index in plan.keys:
            check_equality(self.types[index], "GROUP BY")
            self._key_normalizers.append((index, equality_key(self.types[index], "GROUP BY")))
        self.aggregates = [
            self._aggregate(p, text_order_c, d) for p, d in zip(plan.partials, delimiters, strict=True)
        ]
        self.description = tuple(self._column(o, description) for o in plan.outputs)

    def combine(self, rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Every merged group as a row of the plan's outputs."""
        groups: dict[Any, list[Any]] = {}
        aggregates = self.aggregates
        columns = [p.columns for p in self.plan.partials]
        normalizers = self._key_normalizers
        for row in rows:
            key = tuple(row[i] if f is None else f(row[i]) for i, f in normalizers)
            state = groups.get(key)
            if state is None:
                state = groups[key] = [row, *(a.start() for a in aggregates)]
            for n, (agg, cols) in enumerate(zip(aggregates, columns, strict=True), start=1):
                state[n] = agg.combine(state[n], tuple(row[c] for c in cols))
        out = []
        for first, *states in groups.values():
            finals = [a.final(s) for a, s in zip(aggregates, states, strict=True)]
            out.append(
                tuple(first[o.index] if o.source == "column" else finals[o.index] for o in self.plan.outputs)
            )
        return out

    # -- building ------------------------------------------------------------------

    def _column(self, output: Any, description: Sequence[Any]) -> Column:
        """The shard's column where its value passes through or keeps its type, else a bare one."""
        if output.source == "column":
            source = description[output.index]
            return _renamed(source, output.name or source.name)
        partial = self.plan.partials[output.index]
        result_type = _result_type(partial, self.types)
        first = description[partial.columns[0]]
        if partial.kind not in ("avg", "var", "count_distinct") and first.type_code == result_type:
            return _renamed(first, output.name)
        return _bare(output.name, result_type)

    def _aggregate(self, partial: Partial, text_order_c: bool, delimiter: Any) -> _Aggregate:
        kind, cols, types = partial.kind, partial.columns, self.types
        first_type = types[cols[0]]
        if kind == "count":
            return _Aggregate(lambda s, v: s + v[0], lambda s: s, lambda: 0)
        if kind == "count_distinct":
            element = ARRAY_ELEMENT.get(first_type)
            if element is None:
                raise refuse(f"count(DISTINCT ...) on values of type {type_name(first_type)}")
            check_equality(element, "count(DISTINCT ...)")
            norm = equality_key(element, "count(DISTINCT ...)")
            return _Aggregate(_union(norm, type_name(element)), lambda s: len(s), set)
        if kind == "sum":
            if first_type not in SUMMABLE:
                raise refuse(f"sum() over type {type_name(first_type)}")
            return _Aggregate(_add, _sum_final(first_type), lambda: None)
        if kind in ("min", "max"):
            check_order(first_type, text_order_c, f"{kind}()")
            key, _ = row_key([SortKey(0)], [first_type], check=False)  # an infinity is its own extreme
            pick = max if kind == "max" else min
            return _Aggregate(_extreme(pick, key), lambda s: s, lambda: None)
        if kind == "avg":
            sum_type = types[cols[1]]
            if sum_type in EXACT_SUMS:
                return _Aggregate(_pairwise, lambda s: numeric.avg(s[0], s[1]) if s else None, lambda: None)
            if sum_type == FLOAT8:
                return _Aggregate(_pairwise, lambda s: s[1] / s[0] if s and s[0] else None, lambda: None)
            raise refuse(
                f"avg() whose sum is {type_name(sum_type)} (cast the argument to double precision or numeric)"
            )
        if kind == "var":
            sum_type = types[cols[1]]
            variant = partial.variant
            if sum_type in EXACT_SUMS:
                return _Aggregate(
                    _pairwise, lambda s: numeric.variance(s[0], s[2], s[3], variant), lambda: None
                )
            if sum_type == FLOAT8:
                return _Aggregate(
                    _pairwise, lambda s: _float(numeric.variance(s[0], s[2], s[3], variant)), lambda: None
                )
            raise refuse(
                f"{variant}() over type {sum_type} (cast the argument to double precision or numeric)"
            )
        if kind in ("bool_and", "bool_or"):
            both = all if kind == "bool_and" else any
            return _Aggregate(_collect, lambda s: both(s) if s else None, list)
        if kind == "array_agg":
            return _Aggregate(_concat(type_name(first_type)), lambda s: s, lambda: None)
        if kind == "string_agg":
            if first_type not in (TEXT, VARCHAR):
                raise refuse("string_agg() over bytea")
            joiner = "" if delimiter is None else str(delimiter)
            return _Aggregate(_collect, lambda s: joiner.join(s) if s else None, list)
        raise refuse(f"the aggregate {kind}()")


def _renamed(column: Column, name: str) -> Column:
    """``column`` itself, or a copy of every field under another name."""
    if name == column.name:
        return column
    return Column(
        name=name,
        type_code=column.type_code,
        display_size=column.display_size,
        internal_size=column.internal_size,
        precision=column.precision,
        scale=column.scale,
        null_ok=column.null_ok,
        table_oid=column.table_oid,
        table_column=column.table_column,
    )


def _result_type(partial: Partial, types: list[int]) -> int:
    first = types[partial.columns[0]]
    if partial.kind in ("count", "count_distinct"):
        return INT8
    if partial.kind in ("bool_and", "bool_or"):
        return BOOL
    if partial.kind in ("avg", "var"):
        return NUMERIC if types[partial.columns[1]] in EXACT_SUMS else FLOAT8
    return first


def _add(state: Any, values: tuple[Any, ...]) -> Any:
    value = values[0]
    if value is None:
        return state
    if state is None:
        return value
    if isinstance(value, Decimal):
        return numeric.EXACT.add(state, value)
    return state + value


def _sum_final(type_code: int) -> Callable[[Any], Any]:
    if type_code == FLOAT4:
        return lambda s: None if s is None else struct.unpack("f", struct.pack("f", s))[0]
    return lambda s: s


def _pairwise(state: Any, values: tuple[Any, ...]) -> Any:
    """Element-wise sums of (count, sum[, sum of squares]) partials; NULL sums skipped."""
    if state is None:
        return list(values)
    for i, value in enumerate(values):
        if value is None:
            continue
        if state[i] is None:
            state[i] = value
        elif isinstance(value, Decimal) or isinstance(state[i], Decimal):
            state[i] = numeric.EXACT.add(Decimal(state[i]), Decimal(value))
        else:
            state[i] = state[i] + value
    return state


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _array(value: Any, what: str) -> list[Any]:
    """A partial array as a list; refused when psycopg2 returned it as a string."""
    if not isinstance(value, list):
        raise refuse(f"{what} (psycopg2 returns arrays of this type as strings)")
    return value


def _union(
    norm: Callable[[Any], Any] | None, element: str
) -> Callable[[set[Any], tuple[Any, ...]], set[Any]]:
    what = f"count(DISTINCT ...) on type {element}"

    def combine(state: set[Any], values: tuple[Any, ...]) -> set[Any]:
        if values[0] is None:
            return state
        items = [v for v in _array(values[0], what) if v is not None]
        if any(isinstance(v, list) for v in items):
            raise refuse("count(DISTINCT ...) on arrays")
        state.update(items if norm is None else map(norm, items))
        return state

    return combine


def _extreme(pick: Callable[..., Any], key: Callable[[Any], Any]) -> Callable[[Any, tuple[Any, ...]], Any]:
    def combine(state: Any, values: tuple[Any, ...]) -> Any:
        value = values[0]
        if value is None:
            return state
        if state is None:
            return value
        return pick(state, value, key=lambda v: key((v,)))

    return combine


def _collect(state: list[Any], values: tuple[Any, ...]) -> list[Any]:
    if values[0] is not None:
        state.append(values[0])
    return state


def _concat(array_type: str) -> Callable[[Any, tuple[Any, ...]], Any]:
    what = f"array_agg() returning {array_type}"

    def combine(state: Any, values: tuple[Any, ...]) -> Any:
        if values[0] is None:
            return state
        items = _array(values[0], what)
        if state is None:
            return list(items)
        if items and state and _shape(items[0]) != _shape(state[0]):
            raise refuse("array_agg() of arrays whose dimensions differ from shard to shard")
        return state + items

    return combine


def _shape(value: Any) -> list[int]:
    """The lengths of an element's dimensions ([] for a scalar)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape
