"""Plan a write against the placement: rows routed by their key, changes decided on each row's shard,
copies written alike, or a refusal before anything is written.

An INSERT ... VALUES is split: each row goes to the shard its key maps to.
UPDATE, DELETE and INSERT ... SELECT run on every shard (or the shards their
key pins name) when each row's change is decided on its own shard: the
statement is checked as the SELECT that reads the same rows. A write to a
table copied to every shard runs on every copy and may read copies only.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any, cast

import pglast
from pglast import ast, enums, parser
from pglast.stream import maybe_double_quote_name

from ..errors import NotSupportedError, as_write_refusal, refuse_write
from .layout import TableInfo
from .locality import Analysis, analyze
from .model import ALL, Const, Moment, Param, Plan, Reroute, RowSplit, ShardFacts, Targets, Task, Value
from .names import bind_names
from .params import Template, to_pyformat
from .query import PER_SHARD, check_per_shard_values, layout_of, replace_moments
from .select import plan_select
from .sources import check_negated
from .syntax import copy_node, deparse, func_name, walk

__all__ = ["KEEPING_CASTS", "KEY_COLUMN", "READ_ONLY_VOLATILE", "plan_create_as", "plan_write"]

KEY_COLUMN = "_pc_key"
"""The name of the key an upsert returns last, for the client to order its rows (then dropped)."""

KEEPING_CASTS = frozenset(
    {"int2", "int4", "int8", "smallint", "integer", "int", "bigint", "numeric", "text", "varchar", "uuid"}
)
"""Types a key may be cast to: the value the shard stores is the value placed (no length, no rounding
beyond the column's own)."""

PER_ROW = frozenset({"random", "random_normal", "gen_random_uuid", "uuid_generate_v4", "clock_timestamp"})
"""Volatile functions one database also evaluates anew for every row: each shard's values are as good."""
READ_ONLY_VOLATILE = PER_ROW | frozenset(
    {"pg_sleep", "pg_sleep_for", "pg_sleep_until", "set_config", "timeofday", "nextval", "setval"}
)
"""Volatile functions that write nothing a transaction commits (a SELECT calling them is a read)."""


def plan_write(stmt: ast.Node, template: Template, facts: ShardFacts) -> Plan:
    """The plan of an INSERT, UPDATE, DELETE or MERGE (NotSupportedError: refused)."""
    try:
        return _plan_write(stmt, template, facts)
    except NotSupportedError as exc:
        raise as_write_refusal(exc) from None


def _plan_write(stmt: ast.Node, template: Template, facts: ShardFacts) -> Plan:
    for node in walk(stmt, into_selects=True):
        if node is not stmt and isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)):
            raise refuse_write("a data-modifying WITH inside a write (run the writes one by one)")
    relation = cast(ast.RangeVar, getattr(stmt, "relation", None))
    info = _target(relation, facts)
    if isinstance(stmt, ast.MergeStmt):
        plan = _plan_merge(stmt, template, facts, info)
    elif isinstance(stmt, ast.InsertStmt):
        plan = _plan_insert(stmt, template, facts, info)
    else:
        plan = _plan_change(cast("ast.UpdateStmt | ast.DeleteStmt", stmt), template, facts, info)
    # PostgreSQL cannot PREPARE a transaction that wrote a temporary table: such writes never
    # make a transaction two-phase (the table ends with the session anyway).
    return replace(plan, writes=not info.temporary)


def _target(relation: ast.RangeVar, facts: ShardFacts) -> TableInfo:
    bound = bind_names(relation, facts.catalog)
    if not isinstance(bound, ast.RangeVar):
        raise NotSupportedError(f"writing to the view {relation.relname} across shards")
    info = layout_of(facts).table(bound)
    shown = f"{relation.schemaname}.{relation.relname}" if relation.schemaname else str(relation.relname)
    temporary = relation.relpersistence == "t" or str(bound.schemaname or "").startswith("pg_temp")
    if info is None:
        return TableInfo("sharded", shown, temporary=temporary)
    return replace(info, name=shown, temporary=temporary)


# -- INSERT ---------------------------------------------------------------------------


def _plan_insert(stmt: ast.InsertStmt, template: Template, facts: ShardFacts, info: TableInfo) -> Plan:
    source = stmt.selectStmt
    select = cast(ast.SelectStmt, source) if source is not None else ast.SelectStmt()
    analysis = _analyzed(_with_ctes(select, stmt.withClause), facts)
    _check_returning(stmt, facts, info)
    if info.kind == "whole":
        _check_copy_defaults(stmt, facts, info)
        if analysis.sharded and source is not None and not select.valuesLists:
            return _plan_reroute(stmt, select, template, info, None)
        _check_copy_source(analysis, info, "INSERT into")
        _check_volatile(stmt, facts, copies=True)
        return _plan_everywhere(stmt, template, copies=True)
    _check_conflict(stmt.onConflictClause, info)
    if info.key is None:
        raise NotSupportedError(
            f"INSERT into {info.name}: the placement does not say which shard its rows belong to, "
            "so one database's answer cannot be kept; declare its shard key "
            f"(Placement(sharded={{{info.name!r}: 'key_column'}})), or use cursor(merge=\"union\") "
            "to run the INSERT on every shard as written"
        )
    position = _key_position(stmt, info)
    if select.valuesLists and not (select.sortClause or select.limitCount or select.limitOffset):
        if analysis.sharded:
            raise refuse_write(
                f"a subquery reading sharded rows in INSERT into {info.name} ... VALUES (each shard "
                "would read only its own rows)"
            )
        refusal = _volatile_refusal(stmt, facts)
        return _plan_split(stmt, template, info, position, refusal)
    if source is None:
        raise _no_key(info, "DEFAULT VALUES")
    if position < 0:
        raise refuse_write(
            f"INSERT into {info.name} ... SELECT without its shard key {info.key} (keys from the "
            f"sequence {info.sequence} are given to VALUES rows only): select the key too"
        )
    keeps_key = analysis.sharded and position < len(analysis.output_keys)
    if not keeps_key or analysis.output_keys[position] != info.function:
        return _plan_reroute(stmt, select, template, info, position)
    try:
        _check_local(select, analysis, facts, f"INSERT into {info.name} ... SELECT")
    except NotSupportedError:
        return _plan_reroute(stmt, select, template, info, position)
    return _plan_spread(stmt, template, analysis, _volatile_refusal(stmt, facts))


def _plan_reroute(
    stmt: ast.InsertStmt, select: ast.SelectStmt, template: Template, info: TableInfo, position: int | None
) -> Plan:
    """Rows read through the client and inserted where their keys belong (every copy: ``position`` None)."""
    if stmt.returningClause is not None:
        raise refuse_write(
            f"INSERT into {info.name} ... SELECT ... RETURNING of rows that must pass through the "
            "client (read the rows, then insert them with execute_values(..., fetch=True))"
        )
    shell = copy_node(stmt)
    shell.withClause = None
    shell.selectStmt = ast.SelectStmt(
        valuesLists=((ast.A_Const(isnull=True),),),
        limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
        op=enums.SetOperation.SETOP_NONE,
    )
    if any(isinstance(n, ast.ParamRef) for n in walk(shell, into_selects=True)):
        raise refuse_write(f"INSERT into {info.name} ... SELECT with parameters outside its SELECT")
    head, _, tail = _row_spans(deparse(shell), 1)
    reroute = Reroute(
        select=to_pyformat(deparse(_with_ctes(select, stmt.withClause)), template.names),
        head=head.replace("%", "%%"),
        tail=tail.replace("%", "%%"),
        position=position if position is not None else -1,
        function=info.function if position is not None else None,
        key_type=info.key_type,
        table=info.name,
        key=info.key,
    )
    return Plan(reroute=reroute, names=template.names, writes=True, checked=True)


def _check_returning(stmt: ast.InsertStmt, facts: ShardFacts, info: TableInfo) -> None:
    """RETURNING is evaluated on each row's shard: what it reads must be there (tied by the key, or
    copied)."""
    returning = stmt.returningClause.exprs if stmt.returningClause is not None else None
    if not returning or not any(isinstance(n, ast.SubLink) for n in walk(returning, into_selects=True)):
        return
    probe = ast.SelectStmt(
        targetList=tuple(copy_node(t) for t in returning),
        fromClause=(stmt.relation,),
        limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
        op=enums.SetOperation.SETOP_NONE,
    )
    analysis = _analyzed(_with_ctes(probe, stmt.withClause), facts)
    if info.kind == "whole" and analysis.sharded:
        _check_copy_source(analysis, info, "INSERT into")


_MOMENT_CALLS = frozenset({"now", "transaction_timestamp", "statement_timestamp", "clock_timestamp"})


def _check_copy_defaults(stmt: ast.InsertStmt | ast.UpdateStmt, facts: ShardFacts, info: TableInfo) -> None:
    """A copied table's column the write leaves to a default each copy computes on its own (a
    serial, an identity, ``now()``, ``gen_random_uuid()``): the copies would differ."""
    target = cast(ast.RangeVar, stmt.relation)
    relation = facts.catalog.resolve(target.schemaname, target.relname) if facts.catalog is not None else None
    if relation is None:
        return
    drifting = {c.name for c in relation.columns if c.default is not None and _drifts(c.default, facts)}
    if not drifting:
        return
    if isinstance(stmt, ast.UpdateStmt):
        left = {t.name for t in stmt.targetList or () if isinstance(t.val, ast.SetToDefault)}
    else:
        every = [c.name for c in relation.columns]
        source = cast("ast.SelectStmt | None", stmt.selectStmt)
        rows = (source.valuesLists if source is not None else None) or ()
        if stmt.cols:
            named = [c.name for c in stmt.cols]
        elif rows:
            named = every[: len(rows[0])]
        elif (
            source is not None
            and source.targetList
            and not any(isinstance(n, ast.A_Star) for n in walk(source.targetList))
        ):
            named = every[: len(source.targetList)]
        else:
            named = every
        left = set(every) - set(named) if source is not None else set(every)
        left |= {named[i] for row in rows for i, v in enumerate(row) if isinstance(v, ast.SetToDefault)}
    if left & drifting:
        column = sorted(left & drifting)[0]
        raise refuse_write(
            f"a write to the copied table {info.name} leaving {column} to its default, which each copy "
            "computes on its own (the copies would differ): give its value in the statement"
        )


def _drifts(default: str, facts: ShardFacts) -> bool:
    """The default gives each shard its own value: an identity, or a volatile or moment function."""
    if default == "identity":
        return True
    try:
        parsed = pglast.parse_sql("SELECT " + default)
    except pglast.parser.ParseError:
        return True
    for node in walk(parsed[0].stmt, into_selects=True):
        if isinstance(node, ast.SQLValueFunction):
            return True
        if isinstance(node, ast.FuncCall) and func_name(node)[1] in facts.volatile | _MOMENT_CALLS:
            return True
    return False


def _key_position(stmt: ast.InsertStmt, info: TableInfo) -> int:
    """Where the key's value is in each inserted row."""
    if stmt.cols:
        names = [col.name for col in stmt.cols]
        if any(col.indirection for col in stmt.cols):
            raise refuse_write(f"INSERT into {info.name} assigning a field or element of a column")
    elif info.order is not None:
        names = list(info.order)
    else:
        raise refuse_write(f"INSERT into {info.name} without a column list (its columns are not known here)")
    if info.key not in names:
        if info.sequence is not None and stmt.cols:
            return -1
        raise _no_key(info, "a row without it")
    return names.index(cast(str, info.key))


def _no_key(info: TableInfo, what: str) -> NotSupportedError:
    return NotSupportedError(
        f"INSERT into the sharded table {info.name} with {what}: every row needs a value for its shard "
        f"key {info.key} to be placed on its shard (give the key in the INSERT; a value the server "
        "would compute, as a serial or DEFAULT, is different on each shard)"
    )


def _not_colocated(info: TableInfo) -> NotSupportedError:
    return refuse_write(
        f"INSERT into the sharded table {info.name} ... SELECT whose rows do not keep the shard key "
        f"{info.key} of a table sharded alike (each shard would insert rows that belong elsewhere): "
        "select the rows, then insert them with execute_values(), which routes each row"
    )


def _plan_split(
    stmt: ast.InsertStmt, template: Template, info: TableInfo, position: int, refusal: Exception | None
) -> Plan:
    """Each VALUES row on the shard its key maps to."""
    names = list(template.names)
    text = template.text
    local = copy_node(stmt)
    moments = replace_moments(local, names)
    if moments:
        text = deparse(local)
    rows = cast("tuple[tuple[Any, ...], ...]", cast(ast.SelectStmt, local.selectStmt).valuesLists)
    if position < 0:
        keys: tuple[Value, ...] = ()
    else:
        keys = tuple(_key_value(row[position], info, number) for number, row in enumerate(rows, 1))
    head, spans, tail = _row_spans(text, len(rows))
    if position < 0:
        # The key column joins the column list; each row gets its key from the sequence when placed.
        close = head.rindex(")")
        head = head[:close] + ", " + maybe_double_quote_name(cast(str, info.key)) + head[close:]
    py = tuple(names)
    keyed = _keyed_tail(local, info, len(rows)) if position >= 0 else None
    split = RowSplit(
        head=to_pyformat(head, py),
        rows=tuple(to_pyformat(row, py) for row in spans),
        tail=to_pyformat(tail, py),
        keyed_tail=to_pyformat(keyed, py) if keyed is not None else None,
        keys=keys,
        function=info.function,
        key_type=info.key_type,
        table=info.name,
        key=cast(str, info.key),
        position=position,
        sequence=info.sequence if position < 0 else None,
    )
    # With its columns named, where each row goes depends on no catalog fact that could go stale
    # unnoticed (a moved or retyped key column is refused by the shards), so no stamp is checked.
    return Plan(split=split, names=py, moments=moments, refusal=refusal, writes=True, checked=not stmt.cols)


def _keyed_tail(stmt: ast.InsertStmt, info: TableInfo, count: int) -> str | None:
    """For an upsert with RETURNING, whose skipped rows return nothing: the text after the rows with
    the key returned last, so that the rows can be put back in the input's order."""
    if stmt.onConflictClause is None or stmt.returningClause is None:
        return None
    keyed = copy_node(stmt)
    relation = cast(ast.RangeVar, keyed.relation)
    qualifier = relation.alias.aliasname if relation.alias is not None else relation.relname
    column = ast.ColumnRef(fields=(ast.String(sval=qualifier), ast.String(sval=info.key)))
    returning = cast(ast.ReturningClause, keyed.returningClause)
    returning.exprs = (*(returning.exprs or ()), ast.ResTarget(name=KEY_COLUMN, val=column))
    return _row_spans(deparse(keyed), count)[2]


def _key_value(expr: Any, info: TableInfo, row: int) -> Value:
    """The key of one VALUES row: a constant or a parameter, maybe cast to a type that keeps it."""
    while isinstance(expr, ast.TypeCast):
        type_name = cast(ast.TypeName, expr.typeName)
        name = cast(str, type_name.names[-1].sval) if type_name.names else ""
        if type_name.typmods or type_name.arrayBounds or name not in KEEPING_CASTS:
            raise _no_key(info, f"a key cast to {name or 'a type'} in row {row} (the shards would change it)")
        expr = expr.arg
    if isinstance(expr, ast.ParamRef):
        return Param(cast(int, expr.number))
    if isinstance(expr, ast.A_Const):
        if expr.isnull:
            return Const(None)
        value = expr.val
        if isinstance(value, ast.Integer):
            return Const(value.ival)
        if isinstance(value, ast.Float):
            return Const(Decimal(str(value.fval)))
        if isinstance(value, ast.String):
            return Const(value.sval)
    if isinstance(expr, ast.SetToDefault):
        raise _no_key(info, f"DEFAULT as the key in row {row}")
    raise _no_key(info, f"a key computed by an expression in row {row}")


def _row_spans(text: str, count: int) -> tuple[str, list[str], str]:
    """``text`` (an INSERT ... VALUES) cut into the part before the rows, each row, and the rest."""
    tokens = parser.scan(text)  # offsets in characters
    depth = 0
    start = None
    spans: list[tuple[int, int]] = []
    values_seen = False
    for token in tokens:
        if token.name == "VALUES" and depth == 0 and not values_seen:
            values_seen = True
            continue
        if token.name == "ASCII_40":
            if depth == 0 and values_seen and len(spans) < count:
                start = token.start
            depth += 1
        elif token.name == "ASCII_41":
            depth -= 1
            if depth == 0 and start is not None:
                spans.append((start, token.end + 1))
                start = None
                if len(spans) == count:
                    break
    if len(spans) != count:
        raise refuse_write("an INSERT ... VALUES whose rows could not be told apart")
    return text[: spans[0][0]], [text[a:b] for a, b in spans], text[spans[-1][1] :]


def _check_conflict(clause: ast.OnConflictClause | None, info: TableInfo) -> None:
    """ON CONFLICT on a sharded table: the conflicting row must live on the inserted row's shard."""
    if clause is None or info.kind == "whole":
        return
    infer = clause.infer
    if infer is not None and infer.conname:
        raise refuse_write(
            f"ON CONFLICT ON CONSTRAINT on the sharded table {info.name} (name the constraint's "
            f"columns instead: ON CONFLICT ({info.key}, ...))"
        )
    columns = [e.name for e in (infer.indexElems or ()) if e.name] if infer is not None else []
    if info.key is None or info.key not in columns:
        raise refuse_write(
            f"ON CONFLICT on the sharded table {info.name} without its shard key {info.key or ''} in "
            "the conflict target (a conflicting row could be on another shard): "
            f"ON CONFLICT ({info.key or 'key'}, ...)"
        )
    if clause.action == enums.OnConflictAction.ONCONFLICT_UPDATE:
        _check_no_key_change(clause.targetList, info)
        for node in walk([clause.targetList, clause.whereClause], into_selects=True):
            if isinstance(node, ast.SubLink):
                raise refuse_write(f"a subquery in ON CONFLICT DO UPDATE on the sharded table {info.name}")


# -- UPDATE and DELETE ----------------------------------------------------------------


def _plan_change(
    stmt: ast.UpdateStmt | ast.DeleteStmt, template: Template, facts: ShardFacts, info: TableInfo
) -> Plan:
    if isinstance(stmt.whereClause, ast.CurrentOfExpr):
        raise refuse_write(
            "WHERE CURRENT OF on several shards (the cursor is on one shard: use its connection)"
        )
    select = _as_select(stmt)
    word = "UPDATE" if isinstance(stmt, ast.UpdateStmt) else "DELETE FROM"
    if info.kind == "whole":
        if isinstance(stmt, ast.UpdateStmt):
            _check_copy_defaults(stmt, facts, info)
        analysis = _analyzed(select, facts)
        _check_copy_source(analysis, info, word)
        _check_volatile(stmt, facts, copies=True)
        return _plan_everywhere(stmt, template, copies=True)
    if isinstance(stmt, ast.UpdateStmt):
        _check_no_key_change(stmt.targetList, info)
    _check_declared(select, facts, word)
    try:
        analysis = _analyzed(select, facts)
        check_per_shard_values(select, cast(ast.SelectStmt, bind_names(select, facts.catalog)))
        refusal = _volatile_refusal(stmt, facts)
    except NotSupportedError as exc:
        routes = analyze(_bound(select, facts), layout_of(facts), lenient=True).routes
        if not routes:
            raise
        analysis, refusal = Analysis(sharded=True, local=True, routes=routes), as_write_refusal(exc)
    return _plan_spread(stmt, template, analysis, refusal)


def _check_declared(select: ast.SelectStmt, facts: ShardFacts, word: str) -> None:
    """Refuse a write that reads a sharded table with no declared key together with other sharded
    rows: where their rows meet is not known, so each shard could change rows by what it lacks."""
    layout = layout_of(facts)
    tables = [
        info
        for node in walk(_bound(select, facts), into_selects=True)
        if isinstance(node, ast.RangeVar) and (info := layout.table(node)) is not None
    ]
    sharded = [info for info in tables if info.kind == "sharded"]
    unkeyed = [info.name for info in sharded if info.key is None]
    if unkeyed and len(sharded) > 1:
        raise refuse_write(
            f"{word} reading {unkeyed[0]}, a sharded table with no declared shard key, with other "
            "sharded rows (which shard holds the rows it meets is not known): declare the tables' keys "
            "in a Placement"
        )


def _as_select(stmt: ast.UpdateStmt | ast.DeleteStmt) -> ast.SelectStmt:
    """The SELECT reading the rows the write reads: its values, its FROM / USING, WHERE and RETURNING."""
    values: list[ast.Node] = []
    extra: tuple[Any, ...] = ()
    if isinstance(stmt, ast.UpdateStmt):
        extra = stmt.fromClause or ()
        for target in stmt.targetList or ():
            value = target.val
            if isinstance(value, ast.MultiAssignRef):
                if value.colno == 1:
                    values.append(cast(ast.Node, value.source))
            elif not isinstance(value, ast.SetToDefault):
                values.append(value)
    else:
        extra = stmt.usingClause or ()
    targets = [ast.ResTarget(val=v) for v in values]
    returning = stmt.returningClause.exprs if stmt.returningClause is not None else None
    targets += [copy_node(t) for t in returning or ()]
    if not targets:
        targets = [ast.ResTarget(val=ast.A_Const(isnull=False, val=ast.Integer(ival=1)))]
    select = ast.SelectStmt(
        targetList=tuple(targets),
        fromClause=(stmt.relation, *extra),
        whereClause=stmt.whereClause,
        limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
        op=enums.SetOperation.SETOP_NONE,
    )
    return _with_ctes(select, stmt.withClause)


def _check_no_key_change(targets: Any, info: TableInfo) -> None:
    for target in targets or ():
        if target.name == info.key:
            raise refuse_write(
                f"changing the shard key {info.key} of the sharded table {info.name} (the row may "
                "belong on another shard): delete the row and insert it again"
            )


# -- MERGE ----------------------------------------------------------------------------


def _plan_merge(stmt: ast.MergeStmt, template: Template, facts: ShardFacts, info: TableInfo) -> Plan:
    source = ast.SelectStmt(
        targetList=(ast.ResTarget(val=ast.A_Const(isnull=False, val=ast.Integer(ival=1))),),
        fromClause=(
            ast.JoinExpr(
                jointype=enums.JoinType.JOIN_INNER,
                larg=stmt.relation,
                rarg=stmt.sourceRelation,
                quals=stmt.joinCondition,
                isNatural=False,
            ),
        ),
        limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
        op=enums.SetOperation.SETOP_NONE,
    )
    analysis = _analyzed(_with_ctes(source, stmt.withClause), facts)
    _check_declared(_with_ctes(source, stmt.withClause), facts, "MERGE")
    if info.kind == "whole":
        _check_copy_source(analysis, info, "MERGE into")
        _check_volatile(stmt, facts, copies=True)
        return _plan_everywhere(stmt, template, copies=True)
    for clause in stmt.mergeWhenClauses or ():
        if clause.commandType == enums.CmdType.CMD_INSERT:
            _check_merge_insert(stmt, clause, facts, info, sharded_source=analysis.sharded)
        else:
            _check_no_key_change(clause.targetList, info)
    return _plan_spread(stmt, template, analysis, _volatile_refusal(stmt, facts))


def _check_merge_insert(
    stmt: ast.MergeStmt,
    clause: ast.MergeWhenClause,
    facts: ShardFacts,
    info: TableInfo,
    *,
    sharded_source: bool,
) -> None:
    """WHEN NOT MATCHED THEN INSERT into a sharded table: the new row's key must be the key of the
    (co-located) source row, whose shard is then the new row's."""
    refusal = refuse_write(
        f"MERGE ... WHEN NOT MATCHED THEN INSERT into the sharded table {info.name} whose key is not "
        "the shard key of a source sharded alike (each shard would insert the source rows it cannot "
        f"match): insert with execute_values(), or MERGE from a source sharded on {info.key}"
    )
    names = [t.name for t in clause.targetList] if clause.targetList else list(info.order or ())
    if not sharded_source or info.key not in names or not clause.values:
        raise refusal
    position = names.index(cast(str, info.key))
    if position >= len(clause.values):
        raise refusal
    probe = ast.SelectStmt(
        targetList=(ast.ResTarget(val=clause.values[position]),),
        fromClause=(stmt.sourceRelation,),
        limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
        op=enums.SetOperation.SETOP_NONE,
    )
    analysis = _analyzed(_with_ctes(probe, stmt.withClause), facts)
    if analysis.output_keys[:1] != (info.function,):
        raise refusal


# -- CREATE TABLE AS, SELECT INTO ---------------------------------------------------


def plan_create_as(query: ast.SelectStmt, into: ast.IntoClause, facts: ShardFacts) -> None:
    """Refuse a CREATE TABLE ... AS / SELECT INTO whose new table would not be what one database has.

    Allowed: rows each shard selects whole, into a table the placement shards
    on a key the rows keep; rows every shard has alike, into a copied table.
    """
    try:
        _check_create_as(query, into, facts)
    except NotSupportedError as exc:
        raise as_write_refusal(exc) from None


def _check_create_as(query: ast.SelectStmt, into: ast.IntoClause, facts: ShardFacts) -> None:
    analysis = _analyzed(query, facts)
    rel = cast(ast.RangeVar, into.rel)
    name = f"{rel.schemaname}.{rel.relname}" if rel.schemaname else cast(str, rel.relname)
    if facts.placement is None:
        if analysis.sharded:
            _check_local(query, analysis, facts, f"CREATE TABLE {name} AS")
        return
    if analysis.sharded:
        raise refuse_write(
            f"CREATE TABLE {name} AS over sharded rows (the new table's placement is not known yet): "
            f"create {name} first, declare it in the placement, then INSERT INTO {name} SELECT ..., "
            "which runs on each shard when the rows keep the shard key"
        )
    if name in facts.placement.unresolved or rel.relname in facts.placement.unresolved:
        raise refuse_write(
            f"CREATE TABLE {name} AS for a table the placement declares: create it first, then insert"
        )


def _output_name(value: Any) -> str | None:
    fields = value.fields if isinstance(value, ast.ColumnRef) else None
    if fields and isinstance(fields[-1], ast.String):
        return cast(str, fields[-1].sval)
    return None


# -- shared ---------------------------------------------------------------------------


def _with_ctes(select: ast.SelectStmt, with_clause: ast.WithClause | None) -> ast.SelectStmt:
    if with_clause is None:
        return select
    select = copy_node(select)
    if select.withClause is not None:
        raise refuse_write("a WITH clause both on the write and on its SELECT")
    select.withClause = with_clause
    return select


def _bound(select: ast.SelectStmt, facts: ShardFacts) -> ast.SelectStmt:
    return cast(ast.SelectStmt, bind_names(select, facts.catalog))


def _analyzed(select: ast.SelectStmt, facts: ShardFacts) -> Analysis:
    bound = _bound(select, facts)
    analysis = analyze(bound, layout_of(facts))
    check_negated(bound, analysis.key_local)
    return analysis


def _check_local(select: ast.SelectStmt, analysis: Analysis, facts: ShardFacts, what: str) -> None:
    """Each shard's rows of ``select`` must be final: no merge across shards."""
    if plan_select(select, _bound(select, facts), analysis, facts) is not None or not analysis.local:
        raise refuse_write(
            f"{what} a SELECT whose rows need a merge across shards (aggregates, ORDER BY with "
            "LIMIT, DISTINCT): read its rows with a cursor, then insert them"
        )


def _check_copy_source(analysis: Analysis, info: TableInfo, word: str) -> None:
    if analysis.sharded:
        raise refuse_write(
            f"{word} the copied table {info.name} reading sharded rows (each copy would get its "
            "shard's values, and the copies would differ)"
        )


def _calls(stmt: ast.Node) -> set[str]:
    return {func_name(n)[1] for n in walk(stmt, into_selects=True) if isinstance(n, ast.FuncCall)}


def _volatile_refusal(stmt: ast.Node, facts: ShardFacts) -> Exception | None:
    """Why the write cannot run on several shards because of what it calls, or None."""
    try:
        _check_volatile(stmt, facts, copies=False)
    except NotSupportedError as exc:
        return exc
    return None


def _check_volatile(stmt: ast.Node, facts: ShardFacts, *, copies: bool) -> None:
    calls = _calls(stmt)
    allowed = frozenset({"pg_sleep"}) if copies else PER_ROW | {"pg_sleep"}
    volatile = sorted((calls & (facts.volatile | PER_SHARD)) - allowed)
    if volatile:
        where = "on every copy" if copies else "on several shards"
        raise refuse_write(
            f"the volatile function {volatile[0]}() in a write {where} (each shard computes its own "
            "value: compute it first and pass it as a parameter)"
        )


def _plan_everywhere(stmt: ast.Node, template: Template, *, copies: bool) -> Plan:
    """A write every shard runs alike (a copied table): ``now()`` taken once for all."""
    names, moments, sql = _with_moments(stmt, template)
    return Plan(
        tasks=(Task(ALL, sql),), names=names, moments=moments, copies=copies, writes=True, checked=True
    )


def _with_moments(
    stmt: ast.Node, template: Template
) -> tuple[tuple[str, ...], tuple[Moment, ...], str | None]:
    """The parameter names, the moments and the SQL with ``now()``-like calls as parameters (None: the
    statement has none, and runs as written)."""
    local = copy_node(stmt)
    names = list(template.names)
    moments = replace_moments(local, names)
    return tuple(names), moments, to_pyformat(deparse(local), tuple(names)) if moments else None


def _plan_spread(stmt: ast.Node, template: Template, analysis: Analysis, refusal: Exception | None) -> Plan:
    """A write each shard decides for its own rows; only to the shards its key pins name, if any."""
    names, moments, sql = _with_moments(stmt, template)
    targets = Targets("pinned", pins=analysis.routes) if analysis.routes else ALL
    return Plan(
        tasks=(Task(targets, sql),),
        names=names,
        pins=analysis.routes,
        local=Task(targets, sql) if analysis.routes else None,
        moments=moments,
        refusal=refusal,
        writes=True,
        checked=True,
    )
