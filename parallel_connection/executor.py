"""Where plans meet connections: statement -> plan -> tasks -> fan-out -> streams -> merge -> rows.

The cursor hands over the statement and its shard cursors; the executor
plans it (with the shards' facts, checked fresh), binds the tasks' targets
(the pins' keys to shards), runs the tasks on their shards at once, turns
each shard's answer into a stream and the streams into the merged rows. A
statement one shard answers runs on the caller's thread, its rows (read
there) the answer as they are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .casts import UserCasts
from .coordinator import run_staged
from .errors import NotSupportedError, refuse
from .merge.pipeline import MergeInputs, build_merge
from .outcome import (
    Outcome,
    Row,
    Statement,
    agreed_description,
    answered,
    check_copies,
    combined_status,
    counted,
    python_encoding,
    runner,
    served,
    shard_streams,
    text_of,
    with_moments,
    write_scope,
)
from .plan import ClientPlan, Plan, ShardFacts, check_shard_types, plan_statement, quick_plan, stage_statement
from .plan.params import shape_of
from .shards import ShardSet
from .streams import interleave
from .targets import bind_targets, key_binder, placed
from .writing import run_batch, run_rerouted, run_split

__all__ = [
    "ShardQueries",
    "execute",
    "execute_many",
    "run_finished",
    "run_one",
    "run_union",
    "shard_queries",
]


def execute(shards: ShardSet, cursors: Sequence[Any], statement: Statement, *, merge: bool) -> Outcome:
    """Run ``statement`` on the shards it needs; with ``merge``, as one database would answer it."""
    if not merge or len(cursors) == 1:
        return run_union(shards, cursors, statement.query, statement.vars, statement, range(len(cursors)))
    text = text_of(statement.query, cursors[0])
    quick = quick_plan(text)
    if quick is not None:
        if quick.word in _ENDING and not shards.autocommit:
            return _end_transaction(shards, cursors, statement, quick)
        return _run(shards, cursors, statement, quick, statement.vars)
    plan, shard_vars, targets = _planned(shards, cursors, statement, text)
    return _run(shards, cursors, statement, plan, shard_vars, targets)


@dataclass(frozen=True)
class ShardQueries:
    """A read the shards answer as planned: what each target runs, and what the client does after."""

    targets: list[int]
    queries: list[Any]
    """Each target's statement (psycopg2 placeholders), in the order of ``targets``."""
    vars: Any
    client: ClientPlan | None
    """The merge (None: the union of the targets' rows)."""
    names: tuple[str, ...]
    text_order_c: bool
    code_point_text: bool = False
    """Text orders by code point whatever its collation (``ShardFacts.code_point_text``)."""


def shard_queries(shards: ShardSet, cursors: Sequence[Any], statement: Statement) -> ShardQueries | None:
    """The plan of a read that needs only a union or an order / DISTINCT / LIMIT merge of the shards'
    rows (None: anything else, which the row path runs: writes, aggregates, stages, splits...)."""
    text = text_of(statement.query, cursors[0])
    if len(cursors) == 1:
        return ShardQueries([0], [statement.query], statement.vars, None, (), True)
    if quick_plan(text) is not None:
        return None
    plan, shard_vars, targets = _planned(shards, cursors, statement, text)
    if plan.split or plan.batch or plan.reroute or plan.writes or plan.copies or plan.refresh:
        return None
    one = bool(plan.pins) and len(targets) <= 1
    if (plan.staged is not None or plan.refusal is not None) and not one:
        return None
    shards.check_transaction()
    facts = shards.facts()
    text_order_c = facts.text_order_c
    if one:
        local = plan.local
        targets = targets or [0]
        if local is None or local.sql is None:
            return ShardQueries(targets, [statement.query], statement.vars, None, (), text_order_c)
        vars = with_moments(plan, shard_vars, shards, targets[0])
        return ShardQueries(targets, [local.sql], vars, None, (), text_order_c)
    task = plan.tasks[0]
    if task.sql is None and not plan.merge:
        used = targets[:1] if plan.first else targets
        return ShardQueries(used, [statement.query] * len(used), statement.vars, None, (), text_order_c)
    vars = with_moments(plan, shard_vars, shards, targets[0])
    query = task.sql if task.sql is not None else statement.query
    client = plan.client if plan.merge else None
    if client is not None and (client.aggregate is not None or client.distinct_on):
        return None
    return ShardQueries(
        targets, [query] * len(targets), vars, client, plan.names, text_order_c, facts.code_point_text
    )


def _planned(
    shards: ShardSet, cursors: Sequence[Any], statement: Statement, text: str
) -> tuple[Plan, Any, list[int]]:
    """The statement's plan, its shard values and targets, with the shards' facts checked fresh.

    A statement one shard answers as written, by the key its parameters give, is planned once per
    shape of its parameters: then only that key is mapped to its shard (no shard values then).
    """
    facts = shards.facts()
    shape = shape_of(statement.vars)
    key = ("route", text, shape) if shape is not None else None
    route = facts.memos.get(key) if key is not None else None
    if route is not None:
        targets = route[1](statement.vars)
        if targets is not None and len(targets) <= 1:
            return route[0], None, targets
    plan, shard_vars = _plan(text, statement.vars, facts, cursors[0], shards)
    targets = bind_targets(plan, shard_vars, len(cursors))
    held = plan.split is not None and shards.holds(facts, plan.split.table)
    if plan.checked and (len(targets) > 1 or not plan.pins or plan.views) and not held:
        fresh = shards.check_facts(facts, targets)
        if fresh is not facts:
            plan, shard_vars = _plan(text, statement.vars, fresh, cursors[0], shards)
            targets = bind_targets(plan, shard_vars, len(cursors))
    elif key is not None and route is None and _routable(plan):
        bind = key_binder(plan, len(cursors), positional=isinstance(shape, int))
        if bind is not None:
            facts.memo(key, lambda: (plan, bind))
    return plan, shard_vars, targets


def _routable(plan: Plan) -> bool:
    """The plan sends the user's statement as written to the shard of its one pinned key (so its
    shard values are never needed), and one shard's facts need no fresh look."""
    local = plan.local
    rewritten = plan.split is not None or plan.batch or plan.reroute is not None or plan.refresh
    return bool(plan.pins) and not plan.views and not rewritten and (local is None or local.sql is None)


def _merged(shards: ShardSet, cursors: Sequence[Any], statement: Statement) -> Outcome:
    return execute(shards, cursors, statement, merge=True)


def _end_transaction(shards: ShardSet, cursors: Sequence[Any], statement: Statement, plan: Plan) -> Outcome:
    """COMMIT, END, ABORT or ROLLBACK [TO SAVEPOINT] as SQL: the connection's own commit or rollback.

    COMMIT is two-phase when the transaction wrote on several shards; COMMIT of a
    transaction a shard's error aborted rolls back everywhere, as PostgreSQL does
    (its status says ROLLBACK).
    """
    text = text_of(statement.query, cursors[0]).strip().rstrip(";").lower()
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
    text = text_of(query, cursors[0]) if merge and len(cursors) > 1 and params else None
    if text is None or quick_plan(text) is not None:
        shards.check_transaction()
        plan = quick_plan(text) if text is not None else None
        with write_scope(shards, plan.writes if plan is not None else True, everywhere):
            shards.run_statement(lambda i: cursors[i].executemany(query, params), everywhere)
        return counted(shards, cursors, everywhere)
    facts = shards.facts()
    planned = [_plan(text, p, facts, cursors[0], shards) for p in params]
    shards.check_transaction()
    if any(plan.batch or plan.mode != "union" for plan, _ in planned):
        raise refuse("executemany() of a statement whose rows are merged or that holds several statements")
    if shards.autocommit or not all(_as_written(plan) for plan, _ in planned):
        # In autocommit each execution commits on its own, in order, as psycopg2 runs them.
        return _one_by_one(shards, cursors, query, params, planned)
    targeted = [placed(plan, vars, len(cursors)) for plan, vars in planned]
    writes = any(plan.writes for plan, _ in planned)
    if all(plan.copies for plan, _ in planned):
        with write_scope(shards, True, everywhere):
            shards.run_statement(lambda i: cursors[i].executemany(query, params), everywhere)
        check_copies(shards, [c.rowcount for c in cursors], [None] * len(cursors))
        return _many_counted(shards, cursors, [0], [0])
    if all(len(targets) == 1 for targets in targeted):
        groups: dict[int, list[Any]] = {}
        for values, targets in zip(params, targeted, strict=True):
            groups.setdefault(targets[0], []).append(values)
        used = sorted(groups)
        with write_scope(shards, writes, used):
            shards.run_statement(lambda i: cursors[i].executemany(query, groups[i]), used)
        return _many_counted(shards, cursors, used, targeted[-1])
    if all(
        list(targets) == list(everywhere) and not plan.split
        for (plan, _), targets in zip(planned, targeted, strict=True)
    ):
        with write_scope(shards, writes, everywhere):
            shards.run_statement(lambda i: cursors[i].executemany(query, params), everywhere)
        return _many_counted(shards, cursors, everywhere, everywhere)
    return _one_by_one(shards, cursors, query, params, planned, targeted)


def _as_written(plan: Plan) -> bool:
    """The plan runs the user's statement and parameters as they are (on the shards it names)."""
    split = plan.split
    rewritten = plan.reroute is not None or plan.moments or (split is not None and split.sequence)
    return not rewritten and (not plan.tasks or plan.tasks[0].sql is None)


def _many_counted(
    shards: ShardSet, cursors: Sequence[Any], used: Sequence[int], last: Sequence[int]
) -> Outcome:
    """``executemany``'s counts: every execution's rows, and the last execution's status (psycopg2's)."""
    outcome = counted(shards, cursors, used)
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
    targeted: list[list[int]] | None = None,
) -> Outcome:
    """Each parameter set run as its own statement, in order; the counts summed."""
    total = 0
    statement = Statement(query, None, streaming=False, batch_size=0, tuples=True)
    outcome = Outcome()
    for number, (values, (plan, vars)) in enumerate(zip(params, planned, strict=True)):
        targets = list(targeted[number]) if targeted is not None else None
        outcome = _run(shards, cursors, replace(statement, vars=values), plan, vars, targets)
        total += max(outcome.rowcount, 0)
    return Outcome(rowcount=total, statusmessage=outcome.statusmessage, targets=outcome.targets)


def _plan(text: str, vars: Any, facts: ShardFacts, cursor: Any, shards: ShardSet) -> tuple[Plan, Any]:
    try:
        planned = plan_statement(text, vars, facts, quick=False)
        if planned is None:
            # Values psycopg2 renders as SQL (tuples, custom adapters): plan the rendered statement.
            text = cursor.mogrify(text, vars).decode(python_encoding(cursor))
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
        return run_rerouted(shards, cursors, plan.reroute, shard_vars, statement.batch_size, _merged)
    targets = bind_targets(plan, shard_vars, n) if targets is None else targets
    if plan.staged is not None and (not plan.pins or len(targets) > 1):
        vars = with_moments(plan, shard_vars, shards, targets[0] if targets else 0)
        return run_staged(shards, cursors, statement, plan, vars, execute)
    shards.check_transaction()
    if plan.refusal is not None and len(targets) > 1 and not (plan.pins and len(targets) <= 1):
        raise plan.refusal
    if not plan.writes and not plan.refresh:
        return _run_planned(shards, cursors, statement, plan, shard_vars, targets)
    try:
        with write_scope(shards, plan.writes, targets or [0]):
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
        target = targets[0] if targets else 0
        local = plan.local
        query, vars = statement.query, statement.vars
        if local is not None and local.sql is not None:
            query, vars = local.sql, with_moments(plan, shard_vars, shards, target)
        if statement.streaming:
            return run_union(shards, cursors, query, vars, statement, [target])
        return run_one(shards, cursors, query, vars, statement, target)
    task = plan.tasks[0]
    if plan.copies:
        vars = with_moments(plan, shard_vars, shards, 0)
        query = task.sql if task.sql is not None else statement.query
        return run_copies(shards, cursors, query, vars if task.sql else statement.vars, statement)
    if task.sql is None and not plan.merge:
        return run_union(
            shards, cursors, statement.query, statement.vars, statement, targets, first=plan.first
        )
    vars = with_moments(plan, shard_vars, shards, targets[0])
    query = task.sql if task.sql is not None else statement.query
    if not plan.merge:
        return run_union(shards, cursors, query, vars, statement, targets)
    if not statement.tuples:
        raise refuse("merging rows of this cursor_factory")
    return _run_merge(shards, cursors, statement, plan, query, vars, targets)


def _restaged(cursors: Sequence[Any], statement: Statement, facts: ShardFacts) -> tuple[Plan, Any] | None:
    """The statement staged, when its merge was refused once the shards' result types were known."""
    text = text_of(statement.query, cursors[0])
    staged = stage_statement(text, statement.vars, facts)
    return staged if staged is not None and staged[0].staged is not None else None


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
    if len(targets) == 1 and not statement.streaming:
        return run_one(shards, cursors, query, vars, statement, targets[0])
    firsts = shards.run_statement(runner(cursors, query, vars, statement), targets)
    used = targets[:1] if first else targets
    outcome = counted(shards, cursors, used)
    return served(outcome, shards, cursors, targets, firsts, statement, serve=used)


def run_one(
    shards: ShardSet, cursors: Sequence[Any], query: Any, vars: Any, statement: Statement, index: int
) -> Outcome:
    """Run ``query`` on one shard, on the caller's thread: its rows, already read, are the answer."""
    rows = shards.run_statement(runner(cursors, query, vars, statement), [index])[0]
    return answered(cursors[index], index, rows)


def run_finished(shards: ShardSet, cursors: Sequence[Any], statement: Statement) -> Outcome:
    """The union of what every shard cursor already holds (after ``callproc``)."""
    targets = list(range(len(cursors)))
    firsts: list[list[Row] | None] = [None] * len(cursors)
    return served(counted(shards, cursors, targets), shards, cursors, targets, firsts, statement)


def run_copies(
    shards: ShardSet, cursors: Sequence[Any], query: Any, vars: Any, statement: Statement
) -> Outcome:
    """A write to a copied table: on every shard; one copy's count and RETURNING rows, as one database.

    Copies that answer differently have diverged: an error, and the transaction
    fails (COMMIT rolls back).
    """
    targets = list(range(len(cursors)))
    firsts = shards.run_statement(runner(cursors, query, vars, statement), targets)
    check_copies(shards, [c.rowcount for c in cursors], firsts)
    return served(counted(shards, cursors, [0]), shards, cursors, [0], firsts[:1], statement)


def _run_merge(
    shards: ShardSet,
    cursors: Sequence[Any],
    statement: Statement,
    plan: Plan,
    query: str,
    vars: Any,
    targets: list[int],
) -> Outcome:
    casts = UserCasts(cursors, targets)  # the merge computes on psycopg2's own values
    try:
        firsts = shards.run_statement(runner(cursors, query, vars, statement), targets)
        shard_description = agreed_description(shards, cursors, targets)
        assert shard_description is not None
        facts = shards.facts()
        check_shard_types(plan.client, [column.type_code for column in shard_description])
        try:
            description, merged = build_merge(
                plan.client,
                shard_description,
                params=vars,
                names=plan.names,
                text_order_c=facts.text_order_c,
                code_point_text=facts.code_point_text,
                streaming=statement.streaming,
                batch_size=max(1, statement.batch_size),
            )
        except NotSupportedError:
            # Types the client cannot order or compare as the server does (text under a collation
            # other than C, say): PostgreSQL does it, in stages. A named cursor has run its statement.
            restaged = None if statement.streaming else _restaged(cursors, statement, facts)
            if restaged is None:
                raise
            casts.restore()
            staged, staged_vars = restaged
            staged_vars = with_moments(staged, staged_vars, shards, targets[0])
            return run_staged(shards, cursors, statement, staged, staged_vars, execute)
    except BaseException:
        casts.restore()
        raise
    streams = shard_streams(shards, cursors, targets, firsts, statement)
    outcome = counted(shards, cursors, targets)
    outcome.description = description
    outcome.streams = streams
    outcome.merged = True
    rows = merged(MergeInputs([(s.index, s) for s in streams], lambda: interleave(streams)))
    outcome.batches = casts.apply(description, rows)
    outcome.cleanups.append(casts.restore)
    return outcome
