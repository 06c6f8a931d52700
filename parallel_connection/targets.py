"""A plan's shards for one execution: its pins' keys, or each inserted row's key, mapped to shards."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg2

from .errors import NotSupportedError, shown
from .keys import as_key
from .plan import Plan
from .plan.model import Const, Param, Pin, RowSplit, Targets

__all__ = ["bind_targets", "key_binder", "placed", "row_keys", "row_shards", "shards_of"]


def bind_targets(plan: Plan, vars: Any, n: int) -> list[int]:
    """The shards the plan's tasks run on, with this execution's parameters."""
    targets = plan.tasks[0].targets if plan.tasks else Targets()
    if targets.kind == "one":
        return [targets.shard]
    if targets.kind == "all" or not plan.pins:
        return list(range(n))
    chosen: set[int] = set()
    for group in plan.pins:
        shards: set[int] | None = None
        for pin in group:
            found = _pin_shards(pin, vars, plan.names, n)
            if found is not None:
                shards = found if shards is None else shards & found
        if shards is None:
            return list(range(n))
        chosen |= shards
    return sorted(chosen)


def key_binder(plan: Plan, n: int, *, positional: bool) -> Callable[[Any], list[int] | None] | None:
    """For a plan whose shards are those of one key given as a parameter (``WHERE key = %s``): what
    :func:`bind_targets` gives, read straight off the execution's parameters (positional, or by
    name); None from it when the usual way must tell. None: a plan of another kind."""
    if (
        not plan.tasks
        or plan.tasks[0].targets.kind != "pinned"
        or len(plan.pins) != 1
        or len(plan.pins[0]) != 1
    ):
        return None
    pin = plan.pins[0][0]
    value = pin.values[0] if len(pin.values) == 1 and not pin.array else None
    if not isinstance(value, Param):
        return None
    function, key_type = pin.function, pin.key_type
    at: Any = value.number - 1 if positional else plan.names[value.number - 1]

    def bind(vars: Any) -> list[int] | None:
        bound = vars[at]
        if bound is None:
            return []  # key = NULL matches no row anywhere
        key = as_key(bound, key_type)
        if key is None:
            return None
        try:
            return [function.shard_of(key, n)]
        except (psycopg2.DataError, TypeError, ValueError):
            return None

    return bind


def _pin_shards(pin: Pin, vars: Any, names: tuple[str, ...], n: int) -> set[int] | None:
    """The shards holding the pin's keys; None when a value can't be mapped (ask every shard)."""
    values: list[Any] = []
    for value in pin.values:
        bound = value.value if isinstance(value, Const) else vars[names[value.number - 1]]
        if pin.array:
            if not isinstance(bound, (list, tuple)):
                return None
            values.extend(bound)
        else:
            values.append(bound)
    shards: set[int] = set()
    for value in values:
        if value is None:
            continue  # key = NULL matches no row anywhere
        key = as_key(value, pin.key_type)
        if key is None:
            return None
        try:
            shards.add(pin.function.shard_of(key, n))
        except (psycopg2.DataError, TypeError, ValueError):
            return None
    return shards


def placed(plan: Plan, vars: Any, n: int) -> list[int]:
    """The shards one execution of ``plan`` runs on (refused here if it must not spread)."""
    targets = (
        sorted(set(row_shards(plan.split, vars, plan.names, n)))
        if plan.split
        else bind_targets(plan, vars, n)
    )
    if plan.pins and not targets:
        targets = [0]
    if plan.refusal is not None and len(targets) > 1:
        raise plan.refusal
    return targets


def row_shards(split: RowSplit, vars: Any, names: tuple[str, ...], n: int) -> list[int]:
    """The shard of each row of a split INSERT; a key no shard function can place is a DataError.

    A NULL key goes to the first shard, where the row is kept (or refused by a NOT NULL), as one
    database would.
    """
    return shards_of(split, row_keys(split, vars, names), n)


def row_keys(split: RowSplit, vars: Any, names: tuple[str, ...]) -> list[Any]:
    """Each row's key value, as given (a constant, or this execution's parameter)."""
    return [
        value.value if isinstance(value, Const) else vars[names[value.number - 1]] for value in split.keys
    ]


def shards_of(split: RowSplit, values: Sequence[Any], n: int) -> list[int]:
    """The shard of each key value (NULL: the first shard)."""
    placed: list[int] = []
    for number, bound in enumerate(values, 1):
        if bound is None:
            placed.append(0)
            continue
        key = as_key(bound, split.key_type)
        if key is None:
            raise NotSupportedError(
                f"row {number} of the INSERT into {split.table}: its shard key {split.key} = "
                f"{shown(bound)} is not read here as the key column's type would read it, so its "
                "shard is not known (nothing was written); pass the key as a value of that type"
            )
        try:
            placed.append(split.function.shard_of(key, n))
        except psycopg2.DataError as exc:
            raise psycopg2.DataError(f"row {number} of the INSERT into {split.table}: {exc}") from None
    return placed
