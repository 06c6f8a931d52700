"""Statement -> Plan, parsed once per statement template and cached."""

from __future__ import annotations

import functools
import re
from dataclasses import replace
from typing import Any, cast

import pglast
from pglast import ast

from ..errors import NotSupportedError, refuse_write
from .copies import check_copy
from .literal_rows import cut_literal_rows, split_rows
from .model import ALL, ONE, Plan, RowSplit, ShardFacts, Task
from .params import Template, shape_of, shard_vars, to_pyformat, to_template
from .query import layout_of, plan_query
from .refusals import refuse
from .stages import plan_staged
from .syntax import copy_node, func_name, walk
from .writes import READ_ONLY_VOLATILE, plan_create_as, plan_write

__all__ = ["CACHE_SIZE", "plan_statement", "quick_plan", "stage_statement"]

CACHE_SIZE = 512


def plan_statement(
    query: str, vars: Any, facts: ShardFacts, *, quick: bool = True
) -> tuple[Plan, Any] | None:
    """The plan for ``query`` and the parameters to send with the plan's task SQL.

    None when the parameters can only be understood by rendering them into
    the statement (``mogrify`` it, then plan the result without parameters).
    ``quick=False``: the caller already knows :func:`quick_plan` has no plan for it.
    """
    fast = quick_plan(query) if quick else None
    if fast is not None:
        return fast, vars
    shape = shape_of(vars)
    known = facts.memos.get(("statement", query, shape)) if shape is not None else None
    if known is not None:  # planned before with parameters of this shape: no template to make
        template, plan = known
        return plan, shard_vars(template, vars)
    template = to_template(query, vars)
    if template is None:
        return None
    literal = _literal_insert(template, facts)
    if literal is not None:
        return literal, shard_vars(template, vars)
    plan = _plan(template, facts)
    if plan is None:
        return None
    if shape is not None:
        facts.memo(("statement", query, shape), lambda: (template, plan), CACHE_SIZE)
    return plan, shard_vars(template, vars)


# Statements that start with one of these words and hold no ";" return no rows: the plain union,
# decided without parsing. Writes (INSERT, UPDATE, DELETE, COPY, MERGE) are always parsed.
_UNION_WORDS = frozenset(
    [
        "insert",
        "update",
        "delete",
        "copy",
        "create",
        "drop",
        "alter",
        "truncate",
        "grant",
        "revoke",
        "comment",
        "vacuum",
        "analyze",
        "cluster",
        "reindex",
        "lock",
        "set",
        "reset",
        "begin",
        "start",
        "commit",
        "end",
        "abort",
        "rollback",
        "savepoint",
        "release",
        "discard",
        "listen",
        "unlisten",
        "notify",
        "deallocate",
    ]
)
_WORD = re.compile(r"[A-Za-z]+")


def quick_plan(query: str) -> Plan | None:
    """The plan of a statement that needs no parsing (DDL, SET, COMMIT...), else None."""
    if len(query) <= _REMEMBERED:
        return _remembered_quick_plan(query)
    return _quick_plan(query)


_REMEMBERED = 2000
"""Statements up to this long have their quick plan (or its absence) remembered: they come again."""


def _quick_plan(query: str) -> Plan | None:
    word = _first_word(query)
    if word is None:
        return None
    writes = word in _DDL_WRITE_WORDS and not _OUTSIDE_TRANSACTIONS.search(query)
    return Plan(refresh=word in _DDL_WORDS, word=word, writes=writes)


_remembered_quick_plan = functools.lru_cache(maxsize=CACHE_SIZE)(_quick_plan)


_WRITE_WORDS = frozenset(["insert", "update", "delete", "copy", "merge"])
_DDL_WORDS = (
    _UNION_WORDS - _WRITE_WORDS - {"begin", "start", "commit", "end", "abort", "rollback", "savepoint"}
)
_DDL_WORDS -= {"release"}
_DDL_WRITE_WORDS = frozenset(["drop", "alter", "truncate", "grant", "revoke", "comment"])
_OUTSIDE_TRANSACTIONS = re.compile(r"\b(concurrently|database|tablespace|system|subscription)\b", re.I)
"""DDL that cannot run inside a transaction block: never wrapped in one."""


def _literal_insert(template: Template, facts: ShardFacts) -> Plan | None:
    """An INSERT of literal rows split without parsing each row: its skeleton (one row of NULLs) is
    planned and cached, the rows are cut by a scanner of constants. None: plan it the usual way."""
    settings = facts.catalog.settings if facts.catalog is not None else {}
    if settings.get("standard_conforming_strings", "on") != "on":
        return None
    rows = cut_literal_rows(template.text)
    if rows is None:
        return None
    head = _skeleton(Template(rows.head + rows.nulls, template.names, template.positional), facts)
    if head is None or head.position < 0:
        return None
    cut = split_rows(rows, head.position)
    if cut is None or len(cut[0]) < 2:
        return None
    texts, keys, tail = cut
    skeleton = _skeleton(Template(rows.head + rows.nulls + tail, template.names, template.positional), facts)
    if skeleton is None or skeleton.position != head.position:
        return None
    plan = _plan(Template(rows.head + rows.nulls + tail, template.names, template.positional), facts)
    assert plan is not None
    rows_py = tuple(to_pyformat(row, template.names) for row in texts)
    return replace(plan, split=replace(skeleton, rows=rows_py, keys=keys))


def _skeleton(template: Template, facts: ShardFacts) -> RowSplit | None:
    """The split of a one-row INSERT, or None (refused, or not split)."""
    try:
        plan = _plan(template, facts)
    except NotSupportedError:
        return None  # the full parse says why, naming the row
    split = plan.split if plan is not None else None
    return split if split is not None and len(split.rows) == 1 else None


def _first_word(query: str) -> str | None:
    """The first word of a statement that is surely neither a query nor a write (DDL, SET...), else None."""
    start = 0 if query[:1].isalpha() else _skip_comments(query)
    if start is None:
        return None
    match = _WORD.match(query, start)
    word = match.group(0).lower() if match is not None else None
    if word is None or word not in _UNION_WORDS or word in _WRITE_WORDS or word == "create":
        return None
    return None if ";" in query[start:].rstrip().rstrip(";") else word


def _skip_comments(query: str) -> int | None:
    """Where the first token starts, past blanks and (nested) comments; None if unsure."""
    i, n = 0, len(query)
    while i < n:
        if query[i].isspace():
            i += 1
        elif query.startswith("--", i):
            end = query.find("\n", i)
            i = n if end < 0 else end + 1
        elif query.startswith("/*", i):
            depth, i = 1, i + 2
            while depth and i < n:
                if query.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif query.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            if depth:
                return None
        else:
            return i
    return None


def _plan(template: Template, facts: ShardFacts) -> Plan | None:
    """The plan, or None when a parameter's rendered value decides what the statement means."""
    plan: Plan | None = facts.memo(("plan", template), lambda: _make_plan(template, facts), CACHE_SIZE)
    return plan


def _make_plan(template: Template, facts: ShardFacts) -> Plan | None:
    try:
        statements = pglast.parse_sql(template.text)
    except pglast.parser.ParseError:
        return Plan()  # the shards report the syntax error themselves
    # A RawStmt always holds its statement.
    if any(_parameter_as_item(cast(ast.Node, raw.stmt)) for raw in statements):
        return None
    if len(statements) > 1:
        return _plan_several(statements, template, facts)
    if not statements:
        return Plan()
    return _plan_one(cast(ast.Node, statements[0].stmt), template, facts)


def _plan_several(statements: Any, template: Template, facts: ShardFacts) -> Plan:
    """Several statements in one execute(): each its own plan, run in order on its own shards.

    psycopg2 returns the last statement's rows: statements that return rows
    must each be the plain union of every shard's rows.
    """
    text_all = template.text  # pglast's locations count characters
    plans: list[Plan] = []
    plain = True
    for raw in statements:
        stmt = cast(ast.Node, raw.stmt)
        end = raw.stmt_location + raw.stmt_len if raw.stmt_len else len(text_all)
        text = text_all[raw.stmt_location : end]
        if isinstance(stmt, ast.TransactionStmt):
            raise refuse(
                "BEGIN, COMMIT or ROLLBACK among several statements in one execute() (each shard would "
                "end its own transaction): send them in execute() calls of their own"
            )
        plan = _plan_one(stmt, Template(text, template.names, template.positional), facts)
        task = plan.tasks[0] if plan.tasks else Task()
        special = plan.pins or plan.moments or plan.split or plan.copies or plan.refusal is not None
        simple = plan.mode == "union" and not special and task.targets == ALL and task.sql is None
        if not simple and _returns_rows(stmt):
            raise refuse("several statements in one execute() with a query to merge or answer once")
        plain = plain and simple
        own = task.sql if task.sql is not None else to_pyformat(text, template.names)
        plans.append(replace(plan, tasks=(Task(task.targets, own),)))
    refresh = any(p.refresh for p in plans)
    writes = any(p.writes for p in plans)
    if plain:
        return Plan(refresh=refresh, writes=writes)
    return Plan(batch=tuple(plans), refresh=refresh, writes=writes, checked=True, names=template.names)


def _returns_rows(stmt: ast.Node) -> bool:
    returning = getattr(stmt, "returningClause", None)
    return isinstance(stmt, (ast.SelectStmt, ast.VariableShowStmt)) or bool(returning and returning.exprs)


_REFRESHING = (ast.VariableSetStmt, ast.DiscardStmt)
_DATA = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
_SESSION: tuple[type[ast.Node], ...] = (
    ast.TransactionStmt,
    ast.VariableShowStmt,
    ast.ClosePortalStmt,
    ast.ListenStmt,
)
_SESSION += (ast.UnlistenStmt, ast.NotifyStmt, ast.DeallocateStmt, ast.CopyStmt, ast.LockStmt)


def _plan_one(stmt: ast.Node, template: Template, facts: ShardFacts) -> Plan:
    """The plan of one parsed statement."""
    if isinstance(stmt, ast.VariableShowStmt):
        return Plan(tasks=(Task(ONE),))
    if isinstance(stmt, ast.ExecuteStmt):
        raise refuse("EXECUTE of a prepared statement (what it returns is not known here)")
    if isinstance(stmt, ast.FetchStmt) and not stmt.ismove:
        raise refuse("FETCH from a cursor (what it returns is not known here)")
    if isinstance(stmt, (ast.DoStmt, ast.CallStmt)):
        word = "DO" if isinstance(stmt, ast.DoStmt) else "CALL"
        raise refuse_write(
            f"{word} on several shards (what its code writes is not known here, and every shard would "
            f'run it): run it on one shard\'s connection, or on every shard with cursor(merge="union")'
        )
    if isinstance(stmt, ast.ExplainStmt):
        raise refuse("EXPLAIN (every shard has its own plan)")
    if isinstance(stmt, ast.SelectStmt):
        if stmt.intoClause is not None:
            query = replace_into(stmt)
            plan_create_as(query, stmt.intoClause, facts)
            return Plan(refresh=True, writes=not _temporary(stmt.intoClause.rel), checked=True)
        plan = answer_select(stmt, template, facts, 0)
        return replace(plan, checked=not _constant(stmt), writes=_writes_by_calls(stmt, facts))
    if isinstance(stmt, ast.CreateTableAsStmt):
        if not isinstance(stmt.query, ast.SelectStmt):
            raise refuse("CREATE TABLE ... AS EXECUTE (what it returns is not known here)")
        into = cast(ast.IntoClause, stmt.into)
        plan_create_as(stmt.query, into, facts)
        return Plan(refresh=True, writes=not _temporary(into.rel), checked=True)
    if isinstance(stmt, _DATA):
        return plan_write(stmt, template, facts)
    if isinstance(stmt, ast.CopyStmt):
        check_copy(stmt, facts)
        if stmt.is_from:  # what is left: a copied table's server file or program, on every copy
            return Plan(copies=True, writes=True, checked=True)
        return Plan(tasks=(Task(ONE),))  # a copied table to a server file: one copy's rows
    if isinstance(stmt, _REFRESHING):
        return Plan(refresh=True)
    if isinstance(stmt, (*_SESSION, ast.FetchStmt)):
        return Plan()
    # DDL: the catalog may have changed
    temporary = isinstance(stmt, ast.CreateStmt) and _temporary(stmt.relation)
    return Plan(refresh=True, writes=not (temporary or _OUTSIDE_TRANSACTIONS.search(template.text)))


_CONSTANT = (ast.SelectStmt, ast.ResTarget, ast.A_Const, ast.Integer, ast.Float, ast.Boolean, ast.String)


def _constant(stmt: ast.SelectStmt) -> bool:
    """``SELECT 1``, ``SELECT 'x' AS two``: constants only, no name the catalog resolves (no table,
    function, operator or type), so no fact of the shards' can change its plan (a ping, say)."""
    return all(isinstance(node, _CONSTANT) for node in walk(stmt, into_selects=True))


def answer_select(stmt: ast.SelectStmt, template: Template, facts: ShardFacts, depth: int) -> Plan:
    """The plan of a SELECT: in one pass when the shards can finish it, else in stages.

    A statement whose pins may put it on one shard keeps its one-pass plan for
    that case and gets the staged plan for when it spreads.
    """
    try:
        plan = plan_query(stmt, template, facts)
    except NotSupportedError as exc:
        staged = _staged(stmt, template, facts, depth)
        if staged is None:
            raise exc from None
        return staged
    if plan.refusal is not None:
        staged = _staged(stmt, template, facts, depth)
        if staged is not None:
            return replace(plan, staged=staged.staged)
    return plan


def _staged(stmt: ast.SelectStmt, template: Template, facts: ShardFacts, depth: int) -> Plan | None:
    def answer(sub: ast.SelectStmt, level: int, names: tuple[str, ...]) -> Plan:
        return answer_select(sub, Template(template.text, names, template.positional), facts, level)

    return plan_staged(stmt, template, facts, answer, depth, layout_of(facts))


def stage_statement(query: str, vars: Any, facts: ShardFacts) -> tuple[Plan, Any] | None:
    """The staged plan of a SELECT whose merge the shards' result types refused (text ordered under
    a collation other than C, say): PostgreSQL then compares. None when it cannot be staged."""
    template = to_template(query, vars)
    if template is None:
        return None
    staged = _staged_text(template, facts)
    return (staged, shard_vars(template, vars)) if staged is not None else None


def _staged_text(template: Template, facts: ShardFacts) -> Plan | None:
    staged: Plan | None = facts.memo(("staged", template), lambda: _make_staged(template, facts), CACHE_SIZE)
    return staged


def _make_staged(template: Template, facts: ShardFacts) -> Plan | None:
    try:
        statements = pglast.parse_sql(template.text)
    except pglast.parser.ParseError:
        return None
    stmt = statements[0].stmt if len(statements) == 1 else None
    if not isinstance(stmt, ast.SelectStmt) or stmt.intoClause is not None:
        return None
    try:
        return _staged(stmt, template, facts, 0)
    except NotSupportedError:
        return None


def _temporary(relation: Any) -> bool:
    """A temporary table: PostgreSQL cannot PREPARE a transaction that touched one, so its writes
    never make a transaction two-phase (it ends with the session anyway)."""
    return isinstance(relation, ast.RangeVar) and relation.relpersistence == "t"


def replace_into(stmt: ast.SelectStmt) -> ast.SelectStmt:
    """``stmt`` without its INTO clause: the query whose rows fill the new table."""
    query = copy_node(stmt)
    query.intoClause = None
    return query


def _writes_by_calls(stmt: ast.SelectStmt, facts: ShardFacts) -> bool:
    """A SELECT calling a volatile function that may write (a user function, say)."""
    calls = {func_name(n)[1] for n in walk(stmt, into_selects=True) if isinstance(n, ast.FuncCall)}
    return bool((calls & facts.volatile) - READ_ONLY_VOLATILE)


def _parameter_as_item(stmt: ast.Node) -> bool:
    """A parameter as a whole ORDER BY, GROUP BY or DISTINCT ON item.

    psycopg2 renders an integer as a literal, which PostgreSQL reads as a
    select-list position, not as a constant.
    """
    if not isinstance(stmt, ast.SelectStmt):
        return False
    items = [
        *(item.node for item in stmt.sortClause or ()),
        *(stmt.groupClause or ()),
        *(stmt.distinctClause or ()),
    ]
    return any(isinstance(item, ast.ParamRef) for item in items)
