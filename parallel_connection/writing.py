"""Writes whose rows the client places: an INSERT split by key, several statements at once, and an
INSERT ... SELECT whose rows pass through the client."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import psycopg2
import psycopg2.extras

from .keys import as_key
from .outcome import Outcome, Row, Statement, check_copies, counted, runner, with_moments, write_scope
from .plan import Plan
from .plan.model import Const, Reroute, RowSplit
from .shards import ShardSet
from .streams import ShardStream
from .targets import placed, row_keys, row_shards, shards_of

__all__ = ["run_batch", "run_rerouted", "run_split"]

Read = Callable[[ShardSet, Sequence[Any], Statement], Outcome]
"""How a SELECT is answered as one database would (the executor's ``execute``, merging)."""


def run_split(
    shards: ShardSet, cursors: Sequence[Any], statement: Statement, plan: Plan, vars: Any
) -> Outcome:
    """An INSERT ... VALUES split by key: each shard gets its rows; RETURNING rows in the input's order."""
    assert plan.split is not None
    shards.check_transaction()
    split = with_keys(shards, plan.split)
    try:
        homes = row_shards(split, vars, plan.names, len(cursors))
    except psycopg2.DataError as exc:
        shards.fail(exc)  # one database's INSERT would have failed on the value, and its transaction
        raise
    rows: dict[int, list[int]] = {}
    for number, shard in enumerate(homes):
        rows.setdefault(shard, []).append(number)
    targets = sorted(rows)
    if plan.refusal is not None and len(targets) > 1:
        raise plan.refusal
    vars = with_moments(plan, vars, shards, targets[0])
    keyed = split.keyed_tail is not None and len(targets) > 1 and statement.tuples
    tail = split.keyed_tail if keyed and split.keyed_tail is not None else split.tail
    sql = {i: split.head + ", ".join(split.rows[r] for r in rows[i]) + tail for i in targets}
    unbuffered = replace(statement, streaming=False)
    with write_scope(shards, True, targets):
        returned = shards.run_statement(lambda i: runner(cursors, sql[i], vars, unbuffered)(i), targets)
    if len(targets) == len(cursors):
        shards.hold(shards.facts(), split.table)
    outcome = counted(shards, cursors, targets)
    if outcome.description is None:
        return outcome
    if keyed:
        outcome.description = outcome.description[:-1]
        ordered = _by_input_order(split, row_keys(split, vars, plan.names), returned)
    else:
        pending = {i: iter(batch or ()) for i, batch in zip(targets, returned, strict=True)}
        ordered = [row for shard in homes for row in itertools.islice(pending[shard], 1)]
        ordered += [row for i in targets for row in pending[i]]
    outcome.batches = iter([ordered])
    return outcome


def _by_input_order(split: RowSplit, keys: list[Any], returned: Sequence[list[Row] | None]) -> list[Row]:
    """An upsert's returned rows (each with its key last, then dropped) in the order of its input rows.

    Each returned row is the first input row of its key not yet matched: a key returns at most once
    per statement (a second row with it conflicts, or is refused by DO UPDATE).
    """
    positions: dict[Any, list[int]] = {}
    for number, key in enumerate(keys):
        positions.setdefault(as_key(key, split.key_type), []).append(number)
    placed_rows: list[tuple[int, int, Row]] = []
    for serial, row in enumerate(row for batch in returned for row in batch or ()):
        waiting = positions.get(as_key(row[-1], split.key_type))
        placed_rows.append((waiting.pop(0) if waiting else len(keys) + serial, serial, row[:-1]))
    return [row for _, _, row in sorted(placed_rows, key=lambda item: item[:2])]


def run_batch(shards: ShardSet, cursors: Sequence[Any], plan: Plan, vars: Any) -> Outcome:
    """Several statements in one execute(): each shard runs, in order, the statements (and rows) it needs."""
    n = len(cursors)
    parts: dict[int, list[str]] = {}
    for sub in plan.batch:
        for texts in parts.values():
            texts.append("")  # a mark: which shards ran the last statement tells its count
        if sub.split is not None:
            split = with_keys(shards, sub.split)
            rows: dict[int, list[str]] = {}
            for number, shard in enumerate(row_shards(split, vars, sub.names, n)):
                rows.setdefault(shard, []).append(split.rows[number])
            for shard, texts in rows.items():
                parts.setdefault(shard, []).append(split.head + ", ".join(texts) + split.tail)
            continue
        for shard in placed(sub, vars, n):
            parts.setdefault(shard, []).append(cast(str, sub.tasks[0].sql))
    targets = sorted(parts)
    shards.check_transaction()
    moments = Plan(moments=tuple(dict.fromkeys(m for sub in plan.batch for m in sub.moments)))
    vars = with_moments(moments, vars, shards, targets[0])
    last = [i for i in targets if parts[i][-1]]
    try:
        with write_scope(shards, plan.writes, targets):
            shards.run_statement(
                lambda i: cursors[i].execute(";\n".join(filter(None, parts[i])), vars), targets
            )
    finally:
        if plan.refresh:
            shards.forget_facts()
    # psycopg2 reports the last statement: its count is the sum over the shards that ran it (one
    # copy's, for a copied table).
    if plan.batch[-1].copies:
        last = last[:1]
    return counted(shards, cursors, last) if last else Outcome(rowcount=-1, targets=targets)


def run_rerouted(
    shards: ShardSet, cursors: Sequence[Any], reroute: Reroute, vars: Any, batch_size: int, read: Read
) -> Outcome:
    """INSERT ... SELECT through the client: the SELECT's rows, merged as one database answers it and
    streamed in batches, each inserted on the shards its key maps to (every copy: all shards)."""
    n = len(cursors)
    everywhere = list(range(n))
    shards.check_transaction()
    size = max(batch_size, 1000)
    total = 0
    with write_scope(shards, True, everywhere):
        readers = [conn.cursor(name=f"_pc_reroute_{uuid.uuid4().hex}") for conn in shards.connections]
        streams: list[ShardStream] = []
        try:
            select = Statement(reroute.select, vars, streaming=True, batch_size=size, tuples=True)
            outcome = read(shards, readers, select)
            streams = outcome.streams
            for batch in outcome.batches or iter(()):
                total += insert_routed(shards, cursors, reroute, batch)
        finally:
            for stream in streams:
                stream.close()
            for reader in readers:
                with contextlib.suppress(psycopg2.Error):
                    reader.close()
    status = f"INSERT 0 {total}"
    return Outcome(rowcount=total, statusmessage=status, targets=everywhere)


def insert_routed(shards: ShardSet, cursors: Sequence[Any], reroute: Reroute, rows: list[Row]) -> int:
    """Insert ``rows`` on the shards of their keys; how many one database would count."""
    if not rows:
        return 0
    n = len(cursors)
    groups: dict[int, list[Row]] = {}
    if reroute.function is None:
        groups = {i: rows for i in range(n)}
    else:
        split = RowSplit("", (), "", (), reroute.function, reroute.key_type, reroute.table, reroute.key or "")
        for row, shard in zip(
            rows, shards_of(split, [row[reroute.position] for row in rows], n), strict=True
        ):
            groups.setdefault(shard, []).append(row)
    sql = reroute.head + "%s" + reroute.tail

    def insert(i: int) -> int:
        psycopg2.extras.execute_values(cursors[i], sql, groups[i], page_size=len(groups[i]))
        count: int = cursors[i].rowcount
        return count

    counts = shards.run_statement(insert, sorted(groups))
    if reroute.function is None:
        check_copies(shards, counts, [None] * len(counts))
        return counts[0]
    return sum(counts)


def with_keys(shards: ShardSet, split: RowSplit) -> RowSplit:
    """``split`` with every row's key, taken from its sequence (on the first shard) if it has one."""
    if split.sequence is None:
        return split

    def take(i: int) -> list[int]:
        with shards.connections[i].cursor() as cur:
            cur.execute(
                "SELECT nextval(%s::regclass) FROM generate_series(1, %s)", (split.sequence, len(split.rows))
            )
            return [int(key) for (key,) in cur.fetchall()]

    keys = shards.run(take, [0])[0]
    rows = tuple(row[:-1] + f", {key})" for row, key in zip(split.rows, keys, strict=True))
    return replace(split, rows=rows, keys=tuple(Const(key) for key in keys), sequence=None)
