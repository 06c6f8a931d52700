"""Plan one SELECT against the placement: answered once, routed by its key pins, or spread and merged.

The order: bind names (views, CTEs, search_path), check where the rows
live (co-location, subqueries), then choose the tasks. A statement that
lands on one shard runs there as the user wrote it; a statement spread over
several shards is rewritten for the merge, with the moments (``now()``)
every shard must share sent as parameters.
"""

from __future__ import annotations

from typing import Any

from pglast import ast, enums

from ..catalog import SETTINGS
from ..errors import NotSupportedError, refuse
from .layout import Layout
from .locality import Analysis, analyze
from .model import ONE, Moment, Pin, Plan, ShardFacts, Targets, Task
from .names import bind_names
from .params import Template, to_pyformat
from .select import plan_select
from .sources import check_negated
from .syntax import copy_node, deparse, func_name, walk

__all__ = [
    "MOMENT_PARAM",
    "PER_SHARD",
    "STATEMENT_PARAM",
    "check_per_shard_values",
    "check_spread_values",
    "layout_of",
    "plan_query",
    "replace_moments",
]

MOMENT_PARAM = "_pc_now"
STATEMENT_PARAM = "_pc_statement_now"
_HARMLESS_VOLATILE = frozenset({"pg_sleep", "pg_sleep_for", "pg_sleep_until"})
PER_SHARD = frozenset(
    {
        "txid_current",
        "txid_current_if_assigned",
        "txid_current_snapshot",
        "pg_current_xact_id",
        "pg_current_xact_id_if_assigned",
        "pg_current_snapshot",
        "pg_backend_pid",
        "inet_server_addr",
        "inet_server_port",
        "pg_postmaster_start_time",
        "pg_conf_load_time",
        "pg_stat_get_backend_pid",
        "pg_my_temp_schema",
    }
)
"""Functions whose value is each shard's own (its transaction, its server): no combination is one
database's."""
_EQUAL_SETTINGS = frozenset(name.lower() for name in SETTINGS)
"""Settings the connection checks are equal on every shard: current_setting() of them is one value."""
_SYSTEM_COLUMNS = frozenset({"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"})
_MOMENT_WORDS = frozenset({"now", "today", "tomorrow", "yesterday"})
_ON_EVERY_SHARD = frozenset({"set_config"})
"""Functions that change the session: a SELECT calling them runs on every shard, as before."""

_TRANSACTION_MOMENTS = {"now", "transaction_timestamp"}
_STATEMENT_MOMENTS = {"statement_timestamp"}
_VALUE_TYPES = {
    enums.SQLValueFunctionOp.SVFOP_CURRENT_DATE: "date",
    enums.SQLValueFunctionOp.SVFOP_CURRENT_TIME: "timetz",
    enums.SQLValueFunctionOp.SVFOP_CURRENT_TIME_N: "timetz",
    enums.SQLValueFunctionOp.SVFOP_CURRENT_TIMESTAMP: "timestamptz",
    enums.SQLValueFunctionOp.SVFOP_CURRENT_TIMESTAMP_N: "timestamptz",
    enums.SQLValueFunctionOp.SVFOP_LOCALTIME: "time",
    enums.SQLValueFunctionOp.SVFOP_LOCALTIME_N: "time",
    enums.SQLValueFunctionOp.SVFOP_LOCALTIMESTAMP: "timestamp",
    enums.SQLValueFunctionOp.SVFOP_LOCALTIMESTAMP_N: "timestamp",
}


def layout_of(facts: ShardFacts) -> Layout:
    return Layout(facts.catalog, facts.placement, facts.shards, facts.aggregates, facts.replicated)


def plan_query(stmt: ast.SelectStmt, template: Template, facts: ShardFacts) -> Plan:
    """The plan of a top-level SELECT."""
    for node in walk(stmt, into_selects=True):
        if isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)):
            raise NotSupportedError(
                "a data-modifying WITH (INSERT, UPDATE or DELETE inside a SELECT) is not routed to the "
                "shards its rows belong to; run it on the shard's own connection (pdb.connections[i])"
            )
    bound = bind_names(stmt, facts.catalog)
    assert isinstance(bound, ast.SelectStmt)
    views = _count(bound, ast.RangeSubselect) > _count(stmt, ast.RangeSubselect)
    layout = layout_of(facts)
    try:
        analysis = analyze(bound, layout)
    except NotSupportedError as exc:
        # Refused when spread; maybe every row it reads lives on the shards its keys name.
        routes = analyze(bound, layout, lenient=True).routes
        if not routes:
            raise
        return _routed(stmt, template, routes, Plan(names=template.names), exc, views)
    calls = {func_name(n)[1] for n in walk(bound, into_selects=True) if isinstance(n, ast.FuncCall)}
    if not analysis.sharded:
        if calls & _ON_EVERY_SHARD:
            return Plan(first=True, views=views)
        return Plan(tasks=(Task(ONE),), views=views)
    refusal: NotSupportedError | None = None
    try:
        spread = _spread(stmt, bound, analysis, template, facts)
    except NotSupportedError as exc:
        if not analysis.routes:
            raise
        spread, refusal = Plan(), exc
    if not analysis.routes:
        return spread
    return _routed(stmt, template, analysis.routes, spread, refusal, views)


def _routed(
    stmt: ast.SelectStmt,
    template: Template,
    routes: tuple[tuple[Pin, ...], ...],
    spread: Plan,
    refusal: NotSupportedError | None,
    views: bool,
) -> Plan:
    """``spread`` sent only to the shards the routes name; on one shard, the statement as written
    (with the transaction's moments), which one shard answers whatever it is."""
    pinned = Targets("pinned", pins=routes)
    local = copy_node(stmt)
    names = list(spread.names or template.names)
    moments = replace_moments(local, names)
    return Plan(
        tasks=tuple(Task(pinned, t.sql) for t in spread.tasks),
        merge=spread.merge,
        client=spread.client,
        names=tuple(names),
        pins=routes,
        local=Task(pinned, to_pyformat(deparse(local), tuple(names)) if moments else None),
        refusal=refusal,
        moments=tuple(dict.fromkeys((*spread.moments, *moments))),
        views=views,
    )


def _count(node: ast.Node, kind: type) -> int:
    return sum(1 for n in walk(node, into_selects=True) if isinstance(n, kind))


def _spread(
    stmt: ast.SelectStmt,
    bound: ast.SelectStmt,
    analysis: Analysis,
    template: Template,
    facts: ShardFacts,
) -> Plan:
    """The plan for a SELECT that runs on several shards (raises what cannot be answered exactly)."""
    check_spread_values(stmt, bound, facts)
    check_negated(bound, analysis.key_local)
    planned = plan_select(stmt, bound, analysis, facts)
    shard = copy_node(planned[0]) if planned is not None else copy_node(stmt)
    names = list(template.names)
    moments = replace_moments(shard, names)
    if planned is None and not moments:
        return Plan(names=template.names)
    task = Task(sql=to_pyformat(deparse(shard), tuple(names)))
    if planned is None:
        return Plan(tasks=(task,), moments=moments, names=tuple(names))
    return Plan(tasks=(task,), merge=True, client=planned[1], names=tuple(names), moments=moments)


def check_spread_values(stmt: ast.SelectStmt, bound: ast.SelectStmt, facts: ShardFacts) -> None:
    """Refuse what each shard would compute its own way: volatile and per-server functions, system
    columns, samples, moments read by each shard (see :func:`check_per_shard_values`)."""
    calls = {func_name(n)[1] for n in walk(bound, into_selects=True) if isinstance(n, ast.FuncCall)}
    volatile = sorted((calls & (facts.volatile | PER_SHARD)) - _HARMLESS_VOLATILE)
    if volatile:
        raise refuse(
            f"the volatile function {volatile[0]}() on several shards (each shard has its own "
            "value: one database would give one)"
        )
    check_per_shard_values(stmt, bound)


def _string(value: Any) -> str | None:
    return value.sval if isinstance(value, ast.String) else None


def _moments_in(node: ast.Node) -> int:
    """How many ``now()``-like calls a statement holds (a view's count too, once expanded)."""
    count = 0
    for sub in walk(node, into_selects=True):
        if isinstance(sub, ast.SQLValueFunction) and sub.op in _VALUE_TYPES:
            count += 1
        elif isinstance(sub, ast.FuncCall) and not sub.args:
            schema, name = func_name(sub)
            count += schema in (None, "pg_catalog") and name in _TRANSACTION_MOMENTS | _STATEMENT_MOMENTS
    return count


def check_per_shard_values(stmt: ast.SelectStmt, bound: ast.SelectStmt) -> None:
    """Refuse values each shard makes its own: system columns, samples, ``'now'`` read by each shard,
    moments inside views, settings the connection does not check equal."""
    if _moments_in(bound) > _moments_in(stmt):
        raise refuse(
            "now(), CURRENT_TIMESTAMP or another moment inside a view, on several shards (each shard "
            "would take its own: write it in the statement, where it is taken once)"
        )
    for node in walk(bound, into_selects=True):
        if isinstance(node, ast.FuncCall) and func_name(node)[1] == "current_setting" and node.args:
            first = node.args[0]
            name = _string(first.val) if isinstance(first, ast.A_Const) else None
            if name is None or name.lower() not in _EQUAL_SETTINGS:
                raise refuse(
                    f"current_setting({name or '...'}) on several shards (a setting each server may "
                    "have its own value of)"
                )
        elif isinstance(node, ast.ColumnRef):
            last = node.fields[-1] if node.fields else None
            if isinstance(last, ast.String) and last.sval in _SYSTEM_COLUMNS:
                raise refuse(f"the system column {last.sval} on several shards (each shard has its own)")
        elif isinstance(node, ast.RangeTableSample):
            raise refuse("TABLESAMPLE on several shards (each shard samples its own rows)")
        elif isinstance(node, ast.TypeCast) and isinstance(node.arg, ast.A_Const):
            value = node.arg.val
            if isinstance(value, ast.String) and (value.sval or "").strip().lower() in _MOMENT_WORDS:
                raise refuse(
                    f"the literal '{value.sval}' on several shards (each shard reads its own clock): "
                    "use now() or CURRENT_DATE, which are taken once"
                )


def replace_moments(stmt: ast.Node, names: list[str]) -> tuple[Moment, ...]:
    """Replace ``now()``, ``CURRENT_DATE``... with parameters every shard gets the same value of."""
    found: dict[str, Moment] = {}

    def param(kind: str) -> ast.ParamRef:
        name = MOMENT_PARAM if kind == "transaction" else STATEMENT_PARAM
        if name not in names:
            names.append(name)
        found[name] = Moment(name, "transaction" if kind == "transaction" else "statement")
        return ast.ParamRef(number=names.index(name) + 1)

    def visit(node: object) -> object:
        if isinstance(node, tuple):
            return tuple(visit(n) for n in node)
        if not isinstance(node, ast.Node):
            return node
        if isinstance(node, ast.SQLValueFunction) and node.op in _VALUE_TYPES:
            moment = _cast(param("transaction"), "timestamptz")
            typmod = node.typmod if node.typmod is not None and node.typmod >= 0 else None
            return _cast(moment, _VALUE_TYPES[node.op], typmod)
        if isinstance(node, ast.FuncCall) and not node.args and node.over is None:
            schema, name = func_name(node)
            if schema in (None, "pg_catalog") and name in _TRANSACTION_MOMENTS | _STATEMENT_MOMENTS:
                kind = "transaction" if name in _TRANSACTION_MOMENTS else "statement"
                return _cast(param(kind), "timestamptz")
        node_type: Any = type(node)  # pglast declares __slots__ only at runtime
        for slot in node_type.__slots__:
            value = getattr(node, slot, None)
            if isinstance(value, (ast.Node, tuple)):
                setattr(node, slot, visit(value))
        return node

    visit(stmt)
    return tuple(found.values())


def _cast(arg: ast.Node, type_name: str, typmod: int | None = None) -> ast.TypeCast:
    mods = (ast.A_Const(isnull=False, val=ast.Integer(ival=typmod)),) if typmod is not None else None
    name = ast.TypeName(
        names=(ast.String(sval="pg_catalog"), ast.String(sval=type_name)), typmods=mods, typemod=-1
    )
    return ast.TypeCast(arg=arg, typeName=name)
