"""The planner alone: what shards run, what the client does, what is refused (no servers)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from parallel_connection import NotSupportedError
from parallel_connection.plan import Const, Param, ShardFacts, plan_statement

FACTS = ShardFacts(
    text_order_c=True,
    aggregates=frozenset(
        {"count", "sum", "avg", "min", "max", "stddev", "array_agg", "string_agg", "my_agg"}
    ),
)


def plan(sql, vars=None):
    planned = plan_statement(sql, vars, FACTS)
    assert planned is not None
    return planned


def test_plain_select_is_a_union_without_rewriting():
    p, _ = plan("SELECT id, amount FROM orders WHERE amount > 5")
    assert p.mode == "union" and p.sql is None


def test_select_without_a_table_is_answered_by_one_shard():
    for sql in (
        "SELECT 1",
        "SELECT now()",
        "SELECT * FROM generate_series(1, 3)",
        "WITH x AS (SELECT 1) SELECT * FROM x",
    ):
        assert plan(sql)[0].tasks[0].targets.kind == "one", sql


def test_order_by_key_outside_the_select_list_becomes_a_hidden_column():
    p, _ = plan("SELECT id FROM orders ORDER BY amount DESC")
    assert p.mode == "merge"
    assert "amount AS _pc_1" in p.sql
    assert p.client.hidden == 1
    key = p.client.order[0]
    assert (key.column, key.descending, key.nulls_first) == (1, True, True)


def test_order_by_alias_and_position_use_the_select_list():
    p, _ = plan("SELECT id, amount AS a FROM orders ORDER BY a NULLS FIRST, 1")
    assert p.client.hidden == 0
    assert [(k.column, k.descending, k.nulls_first) for k in p.client.order] == [
        (1, False, True),
        (0, False, False),
    ]


def test_limit_and_offset_are_pushed_down_as_their_sum():
    p, _ = plan("SELECT id FROM orders ORDER BY id LIMIT 10 OFFSET 5")
    assert "LIMIT 15" in p.sql and "OFFSET" not in p.sql
    assert p.client.limit == Const(10) and p.client.offset == Const(5)


def test_parameters_become_named_placeholders_and_limits_stay_parameters():
    p, shard_vars = plan("SELECT id FROM orders WHERE note LIKE 'a%%' ORDER BY id LIMIT %s OFFSET %s", (3, 1))
    assert "LIKE 'a%%'" in p.sql
    assert "LEAST(CAST(%(p1)s AS numeric) + %(p2)s, 9223372036854775807)" in p.sql
    assert shard_vars == {"p1": 3, "p2": 1}
    assert p.client.limit == Param(1) and p.names == ("p1", "p2")


def test_repeated_statement_with_other_values_hits_the_plan_cache():
    sql = "SELECT status, count(*) FROM orders WHERE amount > %(low)s GROUP BY status"
    first = plan(sql, {"low": 1})[0]
    size = len(FACTS.memos)
    assert plan(sql, {"low": 2})[0] is first
    assert len(FACTS.memos) == size


def test_values_psycopg2_renders_as_sql_are_left_to_mogrify():
    assert plan_statement("SELECT id FROM orders WHERE id IN %s ORDER BY id", ((1, 2),), FACTS) is None


def test_avg_and_stddev_are_rewritten_to_sums_and_counts():
    p, _ = plan("SELECT status, avg(quantity), stddev(weight) FROM orders GROUP BY status")
    assert "count(quantity)" in p.sql and "sum(quantity)" in p.sql
    assert "sum(CAST(CAST(weight AS pg_catalog.text) AS numeric) * CAST(CAST(weight" in p.sql
    kinds = [partial.kind for partial in p.client.aggregate.partials]
    assert kinds == ["avg", "var"]


def test_filter_is_kept_on_every_partial():
    p, _ = plan("SELECT avg(amount) FILTER (WHERE paid) FROM orders")
    assert p.sql.count("FILTER (WHERE paid)") == 2


def test_group_by_position_stays_the_position_of_the_same_expression():
    p, _ = plan("SELECT date_trunc('day', ordered_at) AS day, count(*) FROM orders GROUP BY 1")
    assert p.sql.startswith("SELECT date_trunc('day', ordered_at) AS day,") and p.sql.endswith("GROUP BY 1")
    p, _ = plan("SELECT count(*), status FROM orders GROUP BY 2")
    assert p.sql.endswith("GROUP BY 2") and p.client.aggregate.keys == (1,)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT date_trunc('day', ordered_at) AS day, count(*) FROM orders GROUP BY day",
        "SELECT 'x' AS status, count(*) FROM orders GROUP BY status",
    ],
)
def test_group_by_an_output_name_is_refused_as_ambiguous_without_the_catalog(sql):
    # One database reads "status" as the table column when one exists: without the shards' catalog
    # the plan can't know (test_plan_adversarial checks the answer on servers, which know).
    with pytest.raises(NotSupportedError, match=r"GROUP BY (day|status) \(an output name"):
        plan(sql)


def test_group_by_an_output_name_of_the_same_column_is_fine():
    p, _ = plan("SELECT upper(status) AS status, count(*) FROM orders GROUP BY status")
    assert "GROUP BY status" in p.sql


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, row_number() OVER () FROM orders",
        "SELECT status, rank() OVER (ORDER BY count(*) DESC) FROM orders GROUP BY status",
        "SELECT id FROM orders UNION SELECT id FROM orders",
        "SELECT id FROM orders INTERSECT SELECT id FROM orders",
        "SELECT id FROM orders EXCEPT SELECT id FROM orders",
        "SELECT id FROM orders EXCEPT ALL SELECT id FROM orders WHERE amount > 5",
        "SELECT status, count(*) FROM orders GROUP BY ROLLUP (status)",
        "SELECT status, paid, count(*) FROM orders GROUP BY CUBE (status, paid)",
        "SELECT status, count(*) FROM orders GROUP BY GROUPING SETS ((status), ())",
        "WITH t AS (SELECT * FROM orders LIMIT 5) SELECT * FROM t",
        "SELECT sum(amount) / count(*) FROM orders",
        "SELECT status, avg(amount) * 2 + max(amount) FROM orders GROUP BY status",
        "SELECT count(*) FROM orders HAVING count(*) IN (1, 2)",
        "SELECT status FROM orders GROUP BY status HAVING sum(amount) / count(*) > 10",
        # PostgreSQL itself rejects these two: the final statement gets its error (test_plan_adversarial).
        "SELECT DISTINCT status FROM orders GROUP BY status ORDER BY count(*)",
        "SELECT DISTINCT ON (count(*)) status FROM orders GROUP BY status ORDER BY status",
    ],
)
def test_what_the_shards_cannot_finish_alone_is_planned_in_stages(sql):
    p, _ = plan(sql)
    assert p.staged is not None
    # Steps read the shards first; the final statement reads their rows.
    assert p.staged.steps and "_pc_relation(1)" in p.staged.final


@pytest.mark.parametrize(
    ("sql", "construct"),
    [
        ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) FROM orders", "ordered-set aggregate"),
        ("SELECT id FROM orders FOR UPDATE", "FOR UPDATE"),
        ("SELECT id, row_number() OVER () FROM orders FOR UPDATE", "FOR UPDATE"),
        ("SELECT sum(amount) / count(*) FROM orders FOR SHARE", "FOR UPDATE / FOR SHARE"),
        ("SELECT string_agg(note, ',' ORDER BY id) FROM orders", "ORDER BY inside"),
        ("SELECT array_agg(id ORDER BY id) FROM orders", "ORDER BY inside"),
        ("SELECT count(*) FROM (SELECT DISTINCT customer_id FROM orders) t", "DISTINCT (without the shard"),
        ("SELECT id FROM orders WHERE amount > (SELECT avg(amount) FROM orders)", "a subquery reading"),
        ("SELECT my_agg(amount) FROM orders", "aggregate my_agg()"),
        ("SELECT * FROM orders ORDER BY id FETCH FIRST 3 ROWS WITH TIES", "WITH TIES"),
        ("SELECT id FROM orders ORDER BY id LIMIT 2 + 3", "LIMIT with an expression"),
        ("SELECT sum(DISTINCT amount) FROM orders", "sum(DISTINCT"),
        ("SELECT ctid, row_number() OVER () FROM orders", "system column ctid"),
        ("SELECT count(*) FROM orders HAVING max(xmin::text) > '1'", "system column xmin"),
        ("SELECT id, count(*) OVER () FROM orders TABLESAMPLE SYSTEM (10)", "TABLESAMPLE"),
        ("SELECT 'now'::timestamptz, count(*) OVER () FROM orders", "'now'"),
        ("SELECT current_setting('port'), sum(amount) / count(*) FROM orders", "current_setting(port)"),
    ],
)
def test_refusals_name_the_construct_and_the_escape_hatch(sql, construct):
    with pytest.raises(NotSupportedError) as info:
        plan(sql)
    assert construct in str(info.value)
    assert 'cursor(merge="union")' in str(info.value)


VOLATILE = replace(FACTS, volatile=frozenset({"random", "nextval", "txid_current", "pg_backend_pid"}))


@pytest.mark.parametrize(
    ("sql", "function"),
    [
        ("SELECT id, random() FROM orders", "random()"),
        ("SELECT sum(amount) / count(*) + random() FROM orders", "random()"),
        ("SELECT id, row_number() OVER (ORDER BY random()) FROM orders", "random()"),
        ("SELECT id FROM orders WHERE random() < 0.5 UNION SELECT 1", "random()"),
        ("SELECT nextval('s'), id FROM orders", "nextval()"),
        ("SELECT txid_current(), count(*) FROM orders GROUP BY ROLLUP (status)", "txid_current()"),
        ("SELECT pg_backend_pid() FROM orders EXCEPT SELECT 1", "pg_backend_pid()"),
    ],
)
def test_a_volatile_function_on_several_shards_is_refused_even_where_stages_could_run(sql, function):
    with pytest.raises(NotSupportedError) as info:
        plan_statement(sql, None, VOLATILE)
    assert f"volatile function {function}" in str(info.value)
    assert 'cursor(merge="union")' in str(info.value)


@pytest.mark.parametrize(
    "sql",
    [
        "WITH d AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM d",
        "WITH d AS (UPDATE orders SET note = 'x' RETURNING id) SELECT id, row_number() OVER () FROM d",
    ],
)
def test_a_data_modifying_cte_is_refused(sql):
    with pytest.raises(NotSupportedError, match="data-modifying WITH"):
        plan(sql)


def test_plain_subqueries_and_joins_are_allowed():
    p, _ = plan(
        "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id "
        "WHERE o.customer_id IN (SELECT id FROM customers WHERE country = 'NL') ORDER BY o.id"
    )
    assert p.mode == "merge"


def test_statements_other_than_select_fan_out_unchanged():
    for sql in (
        "UPDATE orders SET note = 'x' WHERE id = 1",
        "DELETE FROM orders WHERE false",
        "CREATE TABLE x (a int)",
    ):
        assert plan(sql)[0].mode == "union"


def test_statements_that_cannot_be_queries_are_not_parsed():
    before = len(FACTS.memos)
    big = "DROP TABLE " + ", ".join(f"t{i}" for i in range(20000))
    p, vars = plan_statement(big, None, FACTS)
    assert p.mode == "union" and vars is None and p.writes
    assert len(FACTS.memos) == before
    # Writes are always parsed: without a placement, no row of an INSERT has a known shard.
    with pytest.raises(NotSupportedError, match="which shard its rows belong to"):
        plan_statement("INSERT INTO orders (id) VALUES (1)", None, FACTS)
    assert (
        plan_statement("/* report */ -- daily\n SELECT id FROM orders ORDER BY id", None, FACTS)[0].mode
        == "merge"
    )


def test_subqueries_over_tables_copied_to_every_shard_are_allowed_once_declared():
    sql = "SELECT id FROM orders WHERE customer_id IN (SELECT max(id) FROM customers GROUP BY country)"
    with pytest.raises(NotSupportedError):
        plan(sql)
    facts = ShardFacts(FACTS.text_order_c, FACTS.aggregates, frozenset({"customers"}))
    planned = plan_statement(sql, None, facts)
    assert planned is not None and planned[0].mode == "union"
    planned = plan_statement("SELECT count(*) FROM public.customers", None, facts)
    assert planned is not None and planned[0].tasks[0].targets.kind == "one"
