"""Where plans meet connections: statement -> plan -> tasks -> fan-out -> streams -> merge -> rows.

The cursor hands over the statement and its shard cursors; the executor
plans it (with the shards' facts, checked fresh), binds the tasks' targets
(the pins' keys to shards), runs the tasks on their shards at once, turns
each shard's answer into a stream and the streams into the merged rows.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import reprlib
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, cast

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.sql

from .errors import NotSupportedError, refuse
from .keys import as_key
from .merge.pipeline import MergeInputs, build_merge
from .merge.values import type_name
from .plan import Plan, ShardFacts, check_shard_types, plan_statement, quick_plan
from .plan.model import Const, Pin, Reroute, RowSplit, Targets
from .shards import ShardSet
from .streams import ShardStream, interleave

__all__ = [
    "Outcome",
    "Statement",
    "combined_status",
    "execute",
    "execute_many",
    "run_finished",
    "run_union",
]

Row = Any
_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40
FIRST_USER_OID = 16384
"""Types made in a database (enums, domains, composites) get their own OIDs on each shard."""


@dataclass
class Outcome:
    """What one statement gave: its description, counts, and the rows to serve."""

    description: tuple[Any, ...] | None = None
    rowcount: int = -1
    statusmessage: str | None = None
    batches: Iterator[list[Row]] | None = None
    streams: list[ShardStream] = field(default_factory=list)
    merged: bool = False
    """The rows come from a merge (a plain union otherwise)."""
    targets: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Statement:
    """One execute(): the statement, its parameters and how its rows are wanted."""

    query: Any
    vars: Any
    streaming: bool
    batch_size: int
    tuples: bool
    """Shard cursors return tuples, so rows can be merged."""


def execute(shards: ShardSet, cursors: Sequence[Any], statement: Statement, *, merge: bool) -> Outcome:
    """Run ``statement`` on the shards it needs; with ``merge``, as one database would answer it."""
    if not merge or len(cursors) == 1:
        return run_union(shards, cursors, statement.query, statement.vars, statement, range(len(cursors)))
    text = _text(statement.query, cursors[0])
    quick = quick_plan(text)
    if quick is not None:
        if quick.word in _ENDING and not shards.connections[0].autocommit:
            return _end_transaction(shards, cursors, statement, quick)
        return _run(shards, cursors, statement, quick, statement.vars)
    facts = shards.facts()
    plan, shard_vars = _plan(text, statement.vars, facts, cursors[0], shards)
    targets = bind_targets(plan, shard_vars, len(cursors))
    held = plan.split is not None and shards.holds(facts, plan.split.table)
    if plan.checked and (len(targets) > 1 or not plan.pins or plan.views) and not held:
        fresh = shards.check_facts(facts, targets)
        if fresh is not facts:
            plan, shard_vars = _plan(text, statement.vars, fresh, cursors[0], shards)
            targets = bind_targets(plan, shard_vars, len(cursors))
    return _run(shards, cursors, statement, plan, shard_vars, targets)


def _end_transaction(shards: ShardSet, cursors: Sequence[Any], statement: Statement, plan: Plan) -> Outcome:
    """COMMIT, END, ABORT or ROLLBACK [TO SAVEPOINT] as SQL: the connection's own commit or rollback.

    COMMIT is two-phase when the transaction wrote on several shards; COMMIT of a
    transaction a shard's error aborted rolls back everywhere, as PostgreSQL does
    (its status says ROLLBACK).
    """
    text = _text(statement.query, cursors[0]).strip().rstrip(";").lower()
    if plan.word == "rollback" and re.search(r"\bto\b", text):
        outcome = run_union(shards, cursors, statement.query, statement.vars, statement, range(len(cursors)))
        shards.clear_failure()
        return outcome
    failed = shards.failed
    if plan.word in ("commit", "end") and not failed:
        shards.commit()
        return Outcome(statusmessage="COMMIT", targets=list(range(len(cursors))))
    shards.rollback()
    return Outcome(statusmessage="ROLLBACK", targets=list(range(len(cursors))))


_ENDING = frozenset({"commit", "end", "abort", "rollback"})


def execute_many(
    shards: ShardSet, cursors: Sequence[Any], query: Any, params: list[Any], *, merge: bool
) -> Outcome:
    """``executemany``: every parameter set planned first (nothing written if one is refused), then
    each set on the shards its plan needs; sets that land on one shard go there in one batch.

    A write to a copied table counts one copy's rows, and every copy must count alike.
    """
    everywhere = range(len(cursors))
    text = _text(query, cursors[0]) if merge and len(cursors) > 1 and params else None
    if text is None or quick_plan(text) is not None:
        shards.check_transaction()
        plan = quick_plan(text) if text is not None else None
        with _write_scope(shards, plan.writes if plan is not None else True, everywhere):
            shards.run_statement(lambda i: cursors[i].executemany(query, params), everywhere)
        return _counted(shards, cursors, everywhere)
    facts = shards.facts()
    planned = [_plan(text, p, facts, cursors[0], shards) for p in params]
    shards.check_transaction()
    if any(plan.batch or plan.mode != "union" for plan, _ in planned):
        raise refuse("executemany() of a statement whose rows are merged or that holds several statements")
    if not all(_as_written(plan) for plan, _ in planned):
        return _one_by_one(shards, cursors, query, params, planned)
    placed = [_placed(plan, vars, len(cursors)) for plan, vars in planned]
    writes = any(plan.writes for plan, _ in planned)
    if all(plan.copies for plan, _ in planned):
        with _write_scope(shards, True, everywhere):
            shards.run_statement(lambda i: cursors[i].executemany(query, params), everywhere)
        _check_copies(shards, [c.rowcount for c in cursors], [None] * len(cursors))
        return _many_counted(shards, cursors, [0], [0])
    if all(len(targets) == 1 for targets in placed):
        groups: dict[int, list[Any]] = {}
        for values, targets in zip(params, placed, strict=True):
            groups.setdefault(targets[0], []).append(values)
        used = sorted(groups)
        with _write_scope(shards, writes, used):
            shards.run_statement(lambda i: cursors[i].executemany(query, groups[i]), used)
        return _many_counted(shards, cursors, used, placed[-1])
    if all(
        list(targets) == list(everywhere) and not plan.split
        for (plan, _), targets in zip(planned, placed, strict=True)
    ):
        with _write_scope(shards, writes, everywhere):
            shards.run_statement(lambda i: cursors[i].executemany(query, params), everywhere)
        return _many_counted(shards, cursors, everywhere, everywhere)
    return _one_by_one(shards, cursors, query, params, planned, placed)


def _as_written(plan: Plan) -> bool:
    """The plan runs the user's statement and parameters as they are (on the shards it names)."""
    split = plan.split
    rewritten = plan.reroute is not None or plan.moments or (split is not None and split.sequence)
    return not rewritten and (not plan.tasks or plan.tasks[0].sql is None)


def _many_counted(
    shards: ShardSet, cursors: Sequence[Any], used: Sequence[int], last: Sequence[int]
) -> Outcome:
    """``executemany``'s counts: every execution's rows, and the last execution's status (psycopg2's)."""
    outcome = _counted(shards, cursors, used)
    parts = [cursors[i].statusmessage for i in last]
    counts = [_status_count(m) for m in parts]
    outcome.statusmessage = combined_status(parts, -1 if None in counts else sum(c or 0 for c in counts))
    return outcome


def _status_count(message: str | None) -> int | None:
    last = (message or "").rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else None


def _one_by_one(
    shards: ShardSet,
    cursors: Sequence[Any],
    query: Any,
    params: list[Any],
    planned: list[tuple[Plan, Any]],
    placed: list[list[int]] | None = None,
) -> Outcome:
    """Each parameter set run as its own statement, in order; the counts summed."""
    total = 0
    statement = Statement(query, None, streaming=False, batch_size=0, tuples=True)
    outcome = Outcome()
    for number, (values, (plan, vars)) in enumerate(zip(params, planned, strict=True)):
        targets = list(placed[number]) if placed is not None else None
        outcome = _run(shards, cursors, replace(statement, vars=values), plan, vars, targets)
        total += max(outcome.rowcount, 0)
    return Outcome(rowcount=total, statusmessage=outcome.statusmessage, targets=outcome.targets)


def _placed(plan: Plan, vars: Any, n: int) -> list[int]:
    """The shards one execution of ``plan`` runs on (refused here if it must not spread)."""
    targets = (
        sorted(set(_row_shards(plan.split, vars, plan.names, n)))
        if plan.split
        else bind_targets(plan, vars, n)
    )
    if plan.pins and not targets:
        targets = [0]
    if plan.refusal is not None and len(targets) > 1:
        raise plan.refusal
    return targets


def _plan(text: str, vars: Any, facts: ShardFacts, cursor: Any, shards: ShardSet) -> tuple[Plan, Any]:
    try:
        planned = plan_statement(text, vars, facts, quick=False)
        if planned is None:
            # Values psycopg2 renders as SQL (tuples, custom adapters): plan the rendered statement.
            text = cursor.mogrify(text, vars).decode(_python_encoding(cursor))
            planned = plan_statement(text, None, facts)
            assert planned is not None
    except NotSupportedError:
        fresh = shards.check_facts(facts)
        if fresh is facts:
            raise
        return _plan(text, vars, fresh, cursor, shards)
    return planned


def _run(
    shards: ShardSet,
    cursors: Sequence[Any],
    statement: Statement,
    plan: Plan,
    shard_vars: Any,
    targets: list[int] | None = None,
) -> Outcome:
    n = len(cursors)
    if plan.split is not None:
        return run_split(shards, cursors, statement, plan, shard_vars)
    if plan.batch:
        return run_batch(shards, cursors, plan, shard_vars)
    if plan.reroute is not None:
        return run_rerouted(shards, cursors, plan.reroute, shard_vars, statement.batch_size)
    targets = bind_targets(plan, shard_vars, n) if targets is None else targets
    shards.check_transaction()
    if plan.refusal is not None and len(targets) > 1 and not (plan.pins and len(targets) <= 1):
        raise plan.refusal
    try:
        with _write_scope(shards, plan.writes, targets or [0]):
            return _run_planned(shards, cursors, statement, plan, shard_vars, targets)
    finally:
        if plan.refresh:
            shards.forget_facts()


def _run_planned(
    shards: ShardSet,
    cursors: Sequence[Any],
    statement: Statement,
    plan: Plan,
    shard_vars: Any,
    targets: list[int],
) -> Outcome:
    """Run a plan (not split, not a batch) on its bound targets."""
    if plan.pins and len(targets) <= 1:
        # One shard holds every row the statement can see: it answers as it is.
        targets = targets or [0]
        local = plan.local
        if local is None or local.sql is None:
            return run_union(shards, cursors, statement.query, statement.vars, statement, targets)
        vars = _with_moments(plan, shard_vars, shards, targets[0])
        return run_union(shards, cursors, local.sql, vars, statement, targets)
    task = plan.tasks[0]
    if plan.copies:
        vars = _with_moments(plan, shard_vars, shards, 0)
        query = task.sql if task.sql is not None else statement.query
        return run_copies(shards, cursors, query, vars if task.sql else statement.vars, statement)
    if task.sql is None and not plan.merge:
        return run_union(
            shards, cursors, statement.query, statement.vars, statement, targets, first=plan.first
        )
    vars = _with_moments(plan, shard_vars, shards, targets[0])
    query = task.sql if task.sql is not None else statement.query
    if not plan.merge:
        return run_union(shards, cursors, query, vars, statement, targets)
    if not statement.tuples:
        raise refuse("merging rows of this cursor_factory")
    return _run_merge(shards, cursors, statement, plan, query, vars, targets)


def run_split(
    shards: ShardSet, cursors: Sequence[Any], statement: Statement, plan: Plan, vars: Any
) -> Outcome:
    """An INSERT ... VALUES split by key: each shard gets its rows; RETURNING rows in the input's order."""
    assert plan.split is not None
    shards.check_transaction()
    split = _with_keys(shards, plan.split)
    try:
        placed = _row_shards(split, vars, plan.names, len(cursors))
    except psycopg2.DataError as exc:
        shards.fail(exc)  # one database's INSERT would have failed on the value, and its transaction
        raise
    rows: dict[int, list[int]] = {}
    for number, shard in enumerate(placed):
        rows.setdefault(shard, []).append(number)
    targets = sorted(rows)
    if plan.refusal is not None and len(targets) > 1:
        raise plan.refusal
    vars = _with_moments(plan, vars, shards, targets[0])
    sql = {i: split.head + ", ".join(split.rows[r] for r in rows[i]) + split.tail for i in targets}
    unbuffered = replace(statement, streaming=False)
    with _write_scope(shards, True, targets):
        returned = shards.run_statement(lambda i: _runner(cursors, sql[i], vars, unbuffered)(i), targets)
    if len(targets) == len(cursors):
        shards.hold(shards.facts(), split.table)
    outcome = _counted(shards, cursors, targets)
    if outcome.description is not None:
        pending = {i: iter(batch or ()) for i, batch in zip(targets, returned, strict=True)}
        ordered = [row for shard in placed for row in itertools.islice(pending[shard], 1)]
        ordered += [row for i in targets for row in pending[i]]
        outcome.batches = iter([ordered])
    return outcome


def run_batch(shards: ShardSet, cursors: Sequence[Any], plan: Plan, vars: Any) -> Outcome:
    """Several statements in one execute(): each shard runs, in order, the statements (and rows) it needs."""
    n = len(cursors)
    parts: dict[int, list[str]] = {}
    for sub in plan.batch:
        for texts in parts.values():
            texts.append("")  # a mark: which shards ran the last statement tells its count
        if sub.split is not None:
            split = _with_keys(shards, sub.split)
            rows: dict[int, list[str]] = {}
            for number, shard in enumerate(_row_shards(split, vars, sub.names, n)):
                rows.setdefault(shard, []).append(split.rows[number])
            for shard, texts in rows.items():
                parts.setdefault(shard, []).append(split.head + ", ".join(texts) + split.tail)
            continue
        for shard in _placed(sub, vars, n):
            parts.setdefault(shard, []).append(cast(str, sub.tasks[0].sql))
    targets = sorted(parts)
    shards.check_transaction()
    moments = Plan(moments=tuple(dict.fromkeys(m for sub in plan.batch for m in sub.moments)))
    vars = _with_moments(moments, vars, shards, targets[0])
    last = [i for i in targets if parts[i][-1]]
    try:
        with _write_scope(shards, plan.writes, targets):
            shards.run_statement(
                lambda i: cursors[i].execute(";\n".join(filter(None, parts[i])), vars), targets
            )
    finally:
        if plan.refresh:
            shards.forget_facts()
    # psycopg2 reports the last statement: its count is the sum over the shards that ran it.
    return _counted(shards, cursors, last) if last else Outcome(rowcount=-1, targets=targets)


def run_rerouted(
    shards: ShardSet, cursors: Sequence[Any], reroute: Reroute, vars: Any, batch_size: int
) -> Outcome:
    """INSERT ... SELECT through the client: the SELECT's rows, merged as one database answers it and
    streamed in batches, each inserted on the shards its key maps to (every copy: all shards)."""
    n = len(cursors)
    everywhere = list(range(n))
    shards.check_transaction()
    size = max(batch_size, 1000)
    total = 0
    with _write_scope(shards, True, everywhere):
        readers = [conn.cursor(name=f"_pc_reroute_{uuid.uuid4().hex}") for conn in shards.connections]
        streams: list[ShardStream] = []
        try:
            select = Statement(reroute.select, vars, streaming=True, batch_size=size, tuples=True)
            outcome = execute(shards, readers, select, merge=True)
            streams = outcome.streams
            for batch in outcome.batches or iter(()):
                total += _insert_routed(shards, cursors, reroute, batch)
        finally:
            for stream in streams:
                stream.close()
            for reader in readers:
                with contextlib.suppress(psycopg2.Error):
                    reader.close()
    status = f"INSERT 0 {total}"
    return Outcome(rowcount=total, statusmessage=status, targets=everywhere)


def _insert_routed(shards: ShardSet, cursors: Sequence[Any], reroute: Reroute, rows: list[Row]) -> int:
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
            rows, _shards_of(split, [row[reroute.position] for row in rows], n), strict=True
        ):
            groups.setdefault(shard, []).append(row)
    sql = reroute.head + "%s" + reroute.tail

    def insert(i: int) -> int:
        psycopg2.extras.execute_values(cursors[i], sql, groups[i], page_size=len(groups[i]))
        count: int = cursors[i].rowcount
        return count

    counts = shards.run_statement(insert, sorted(groups))
    if reroute.function is None:
        _check_copies(shards, counts, [None] * len(counts))
        return counts[0]
    return sum(counts)


def _with_keys(shards: ShardSet, split: RowSplit) -> RowSplit:
    """``split`` with every row's key, taken from its sequence (on the first shard) if it has one."""
    if split.sequence is None:
        return split
    with shards.connections[0].cursor() as cur:
        cur.execute(
            "SELECT nextval(%s::regclass) FROM generate_series(1, %s)", (split.sequence, len(split.rows))
        )
        keys = [int(key) for (key,) in cur.fetchall()]
    rows = tuple(row[:-1] + f", {key})" for row, key in zip(split.rows, keys, strict=True))
    return replace(split, rows=rows, keys=tuple(Const(key) for key in keys), sequence=None)


def _row_shards(split: RowSplit, vars: Any, names: tuple[str, ...], n: int) -> list[int]:
    """The shard of each row of a split INSERT; a key no shard function can place is a DataError.

    A NULL key goes to the first shard, where the row is kept (or refused by a NOT NULL), as one
    database would.
    """
    bound = [
        value.value if isinstance(value, Const) else vars[names[value.number - 1]] for value in split.keys
    ]
    return _shards_of(split, bound, n)


def _shards_of(split: RowSplit, values: Sequence[Any], n: int) -> list[int]:
    """The shard of each key value (NULL: the first shard)."""
    placed: list[int] = []
    for number, bound in enumerate(values, 1):
        if bound is None:
            placed.append(0)
            continue
        key = as_key(bound, split.key_type)
        if key is None:
            raise psycopg2.DataError(
                f"row {number} of the INSERT into {split.table}: its shard key {split.key} = "
                f"{_short.repr(bound)} cannot be read as the key column's type here; pass it as a "
                "value of that type"
            )
        try:
            placed.append(split.function.shard_of(key, n))
        except psycopg2.DataError as exc:
            raise psycopg2.DataError(f"row {number} of the INSERT into {split.table}: {exc}") from None
    return placed


def _write_scope(shards: ShardSet, writes: bool, targets: Sequence[int]) -> AbstractContextManager[Any]:
    """What a statement that may write runs in: the shards it writes on are part of the transaction's
    commit (two-phase when several); in autocommit, a write on several shards is one transaction."""
    return shards.write_scope(list(targets)) if writes else contextlib.nullcontext()


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


def _with_moments(plan: Plan, vars: Any, shards: ShardSet, shard: int) -> Any:
    if not plan.moments:
        return vars
    values = dict(vars or {})
    taken = shards.moments({moment.kind for moment in plan.moments}, shard)
    for moment in plan.moments:
        values[moment.name] = taken[moment.kind]
    return values


def run_union(
    shards: ShardSet,
    cursors: Sequence[Any],
    query: Any,
    vars: Any,
    statement: Statement,
    targets: Sequence[int],
    *,
    first: bool = False,
) -> Outcome:
    """Run ``query`` on ``targets``; the rows are the union (``first``: only the first target's)."""
    targets = list(targets)
    firsts = shards.run_statement(_runner(cursors, query, vars, statement), targets)
    used = targets[:1] if first else targets
    outcome = _counted(shards, cursors, used)
    return _served(outcome, shards, cursors, targets, firsts, statement, serve=used)


def run_finished(shards: ShardSet, cursors: Sequence[Any], statement: Statement) -> Outcome:
    """The union of what every shard cursor already holds (after ``callproc``)."""
    targets = list(range(len(cursors)))
    firsts: list[list[Row] | None] = [None] * len(cursors)
    return _served(_counted(shards, cursors, targets), shards, cursors, targets, firsts, statement)


def run_copies(
    shards: ShardSet, cursors: Sequence[Any], query: Any, vars: Any, statement: Statement
) -> Outcome:
    """A write to a copied table: on every shard; one copy's count and RETURNING rows, as one database.

    Copies that answer differently have diverged: an error, and the transaction
    fails (COMMIT rolls back).
    """
    targets = list(range(len(cursors)))
    firsts = shards.run_statement(_runner(cursors, query, vars, statement), targets)
    _check_copies(shards, [c.rowcount for c in cursors], firsts)
    return _served(_counted(shards, cursors, [0]), shards, cursors, [0], firsts[:1], statement)


def _check_copies(shards: ShardSet, counts: list[int], rows: Sequence[list[Row] | None]) -> None:
    """Every copy wrote as many rows (and returned the same ones); else the copies diverged."""
    returned = [sorted(map(repr, batch)) if batch is not None else None for batch in rows]
    for index in range(1, len(counts)):
        if counts[index] != counts[0] or returned[index] != returned[0]:
            shards.fail(f"the copies diverged ({shards.infos[0]} and {shards.infos[index]})")
            raise psycopg2.IntegrityError(
                f"the copies of a table copied to every shard differ: {shards.infos[0]} wrote "
                f"{counts[0]} rows, {shards.infos[index]} wrote {counts[index]}"
                + (" with other RETURNING rows" if counts[index] == counts[0] else "")
                + "; run placement check, and repair the copies"
            )


def _run_merge(
    shards: ShardSet,
    cursors: Sequence[Any],
    statement: Statement,
    plan: Plan,
    query: str,
    vars: Any,
    targets: list[int],
) -> Outcome:
    firsts = shards.run_statement(_runner(cursors, query, vars, statement), targets)
    shard_description = agreed_description(shards, cursors, targets)
    assert shard_description is not None
    check_shard_types(plan.client, [column.type_code for column in shard_description])
    facts = shards.facts()
    description, merged = build_merge(
        plan.client,
        shard_description,
        params=vars,
        names=plan.names,
        text_order_c=facts.text_order_c,
        streaming=statement.streaming,
        batch_size=max(1, statement.batch_size),
    )
    streams = _streams(shards, cursors, targets, firsts, statement)
    outcome = _counted(shards, cursors, targets)
    outcome.description = description
    outcome.streams = streams
    outcome.merged = True
    outcome.batches = merged(MergeInputs([(s.index, s) for s in streams], lambda: interleave(streams)))
    return outcome


def _runner(cursors: Sequence[Any], query: Any, vars: Any, statement: Statement) -> Any:
    streaming, batch_size = statement.streaming, statement.batch_size

    def run(i: int) -> list[Row] | None:
        cur = cursors[i]
        cur.execute(query, vars)
        if streaming:
            batch: list[Row] = cur.fetchmany(batch_size) if batch_size > 0 else cur.fetchall()
            return batch
        # Converting this shard's rows here overlaps with the shards still running.
        return cur.fetchall() if cur.description is not None else None

    return run


def _served(
    outcome: Outcome,
    shards: ShardSet,
    cursors: Sequence[Any],
    targets: Sequence[int],
    firsts: Sequence[list[Row] | None],
    statement: Statement,
    *,
    serve: Sequence[int] | None = None,
) -> Outcome:
    """``outcome`` with the targets' rows as streams; their union is served (of ``serve``'s only)."""
    if outcome.description is None:
        return outcome
    outcome.streams = _streams(shards, cursors, targets, firsts, statement)
    shown = outcome.streams if serve is None else [s for s in outcome.streams if s.index in serve]
    outcome.batches = interleave(shown)
    return outcome


def _streams(
    shards: ShardSet,
    cursors: Sequence[Any],
    targets: Sequence[int],
    firsts: Sequence[list[Row] | None],
    statement: Statement,
) -> list[ShardStream]:
    return [
        ShardStream(i, cursors[i], shards.fanout, batch_size=statement.batch_size, first_batch=first)
        for i, first in zip(targets, firsts, strict=True)
    ]


def _counted(shards: ShardSet, cursors: Sequence[Any], targets: Sequence[int]) -> Outcome:
    used = [cursors[i] for i in targets]
    counts = [c.rowcount for c in used]
    rowcount = -1 if -1 in counts else sum(counts)
    return Outcome(
        description=agreed_description(shards, cursors, targets),
        rowcount=rowcount,
        statusmessage=combined_status([c.statusmessage for c in used], rowcount),
        targets=list(targets),
    )


def agreed_description(
    shards: ShardSet, cursors: Sequence[Any], targets: Sequence[int]
) -> tuple[Any, ...] | None:
    """The shards' common description of their result; an error naming two shards that disagree."""
    descriptions = [(i, cursors[i].description) for i in targets]
    first_index, first = descriptions[0]
    shape = _shape(first)
    for index, other in descriptions[1:]:
        if _shape(other) != shape:
            infos = shards.infos
            raise psycopg2.ProgrammingError(
                "the shards return different columns for this statement: "
                f"{infos[first_index]} gives {_show(first)} but {infos[index]} gives {_show(other)}; "
                "make the schemas agree, or select the columns explicitly"
            )
    return tuple(first) if first is not None else None


def _text(query: Any, cursor: Any) -> str:
    if isinstance(query, psycopg2.sql.Composable):
        return query.as_string(cursor)
    if isinstance(query, bytes):
        return query.decode(_python_encoding(cursor))
    return str(query)


def _python_encoding(cursor: Any) -> str:
    encoding: str = psycopg2.extensions.encodings.get(cursor.connection.encoding, "utf-8")
    return encoding


def _shape(description: Sequence[Any] | None) -> list[tuple[str, int | None]] | None:
    if description is None:
        return None
    return [(col.name, col.type_code if col.type_code < FIRST_USER_OID else None) for col in description]


def _show(description: Sequence[Any] | None) -> str:
    if description is None:
        return "no result set"
    names = [f"{c.name} {type_name(c.type_code)}" for c in description]
    return "(" + ", ".join(names) + ")"


def combined_status(messages: list[str | None], rowcount: int) -> str | None:
    """One status like a single server's: ``UPDATE 12`` for shards that updated 12 rows."""
    present = [m for m in messages if m]
    if not present:
        return None
    verbs = {m.rsplit(" ", 1)[0] if m.rsplit(" ", 1)[-1].isdigit() else m for m in present}
    if len(verbs) == 1 and rowcount >= 0 and present[0].rsplit(" ", 1)[-1].isdigit():
        return f"{verbs.pop()} {rowcount}"
    return present[0]
