"""Statements under a placement, on real shards, compared with the reference database (one database
holding every row): routing, co-location, CTEs, subqueries, views, volatile functions, catalogs,
strictness, fresh catalog facts, streaming and connection checks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from conftest import run_on_all
from mergetools import same_answer

import parallel_connection
from parallel_connection import NotSupportedError, ParallelConnection
from parallel_connection.placement import Hash, Modulo, Placement

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
INTRANS = psycopg2.extensions.TRANSACTION_STATUS_INTRANS

ORDERS = {"orders": ("customer_id", "modulo")}
CO_LOCATED = Placement(sharded={"pq_a": ("k", Modulo()), "pq_b": ("k", Modulo())}, copied=["customers"])
ORDERS_PLACEMENT = Placement(sharded=ORDERS, copied=["customers"])

# pq_a: 90 rows, k in 1..30 three times each; pq_b: 60 rows, k in 1..40. A row lives on shard k % 3.
PQ_A_ROWS = "SELECT g % 30 + 1 AS k, (g * 37) % 100 AS v FROM generate_series(1, 90) g"
PQ_B_ROWS = "SELECT g % 40 + 1 AS k, (g * 13) % 50 AS w FROM generate_series(1, 60) g"

DROP = """
DROP VIEW IF EXISTS pq_v, pq_vl, pq_vp CASCADE;
DROP TABLE IF EXISTS pq_a, pq_b, pq_icu CASCADE;
DROP SEQUENCE IF EXISTS pq_seq;
DROP AGGREGATE IF EXISTS pq_agg(int);
"""


@pytest.fixture(scope="module")
def tables(sample):
    every = [*sample.shard_dsns, sample.reference_dsn]
    run_on_all(every, DROP)
    run_on_all(every, "CREATE TABLE pq_a (k int NOT NULL, v int); CREATE TABLE pq_b (k int NOT NULL, w int)")
    run_on_all(every, "CREATE SEQUENCE pq_seq")
    n = len(sample.shard_dsns)
    for i, dsn in enumerate(sample.shard_dsns):
        run_on_all([dsn], f"INSERT INTO pq_a SELECT * FROM ({PQ_A_ROWS}) s WHERE k % {n} = {i}")
        run_on_all([dsn], f"INSERT INTO pq_b SELECT * FROM ({PQ_B_ROWS}) s WHERE k % {n} = {i}")
    run_on_all([sample.reference_dsn], f"INSERT INTO pq_a {PQ_A_ROWS}; INSERT INTO pq_b {PQ_B_ROWS}")
    run_on_all(
        every,
        """
        CREATE VIEW pq_v AS SELECT k % 2 AS g, count(*) AS n FROM pq_a GROUP BY 1;
        CREATE VIEW pq_vl AS SELECT * FROM pq_a ORDER BY v, k LIMIT 5;
        CREATE VIEW pq_vp AS SELECT * FROM pq_a WHERE v > 2;
        """,
    )
    yield sample
    run_on_all(every, DROP)


@contextlib.contextmanager
def opened(servers, placement: Placement | None = None, **kwargs: Any) -> Iterator[ParallelConnection]:
    pdb = parallel_connection.connect(servers.shard_dsns, placement=placement, **kwargs)
    try:
        yield pdb
    finally:
        if not pdb._closed:
            pdb.close()


def on_pdb(pdb, sql: str, params: Any = None) -> list[tuple]:
    with pdb.cursor() as cur:
        cur.execute(sql, params)
        return [tuple(r) for r in cur.fetchall()]


def on_ref(ref, sql: str, params: Any = None) -> list[tuple]:
    with ref.cursor() as cur:
        cur.execute(sql, params)
        rows = [tuple(r) for r in cur.fetchall()]
    ref.rollback()
    return rows


def same(got: list[tuple], want: list[tuple], ordered: bool) -> None:
    if ordered:
        assert got == want
    else:
        assert sorted(got, key=repr) == sorted(want, key=repr)


def exact(pdb, ref, sql: str, params: Any = None, ordered: bool = False) -> list[tuple]:
    got = on_pdb(pdb, sql, params)
    same(got, on_ref(ref, sql, params), ordered)
    return got


def exact_or_refused(pdb, ref, sql: str, params: Any = None, ordered: bool = False) -> str:
    """The reference's answer, or a NotSupportedError; never anything else."""
    try:
        got = on_pdb(pdb, sql, params)
    except NotSupportedError as exc:
        assert str(exc)
        pdb.rollback()
        return "refused"
    same(got, on_ref(ref, sql, params), ordered)
    return "exact"


def answered(pdb, ref, sql: str, params: Any = None, ordered: bool = True) -> list[tuple]:
    """The reference's answer: the same column names and types, the same values of the same types
    (in the same order when ``ordered``)."""
    return same_answer(pdb, ref, sql, params, ordered=ordered)


def refused(pdb, sql: str, params: Any = None, *names: str) -> str:
    with pytest.raises(NotSupportedError) as info:
        on_pdb(pdb, sql, params)
    message = str(info.value)
    for name in names:
        assert name.lower() in message.lower(), f"{name!r} not named in {message!r}"
    pdb.rollback()
    return message


# -- 1. routing ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(sample):
    """Two customers with orders on shard 1, one on shard 2."""
    conn = psycopg2.connect(sample.reference_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT DISTINCT customer_id FROM orders ORDER BY 1")
            ids = [r[0] for r in cur.fetchall()]
    finally:
        conn.close()
    one = [c for c in ids if c % 3 == 1][:2]
    two = [c for c in ids if c % 3 == 2][:1]
    return one[0], one[1], two[0]


ROUTED = [
    ("SELECT id, amount, status FROM orders WHERE customer_id = %s ORDER BY id", lambda a, b: (a,)),
    ("SELECT id, amount, status FROM orders WHERE customer_id IN (%s, %s) ORDER BY id", lambda a, b: (a, b)),
    ("SELECT id, amount, status FROM orders WHERE customer_id = ANY(%s) ORDER BY id", lambda a, b: ([a, b],)),
    ("SELECT id, amount, status FROM orders WHERE customer_id = {a} ORDER BY id", lambda a, b: None),
    ("SELECT count(*), sum(amount) FROM orders WHERE customer_id IN (%s, %s)", lambda a, b: (a, b)),
]


@pytest.mark.parametrize("sql, params", ROUTED, ids=["eq", "in", "any", "literal", "aggregate"])
def test_a_statement_pinning_keys_runs_only_on_their_shard(tables, ref, keys, sql, params):
    a, b, _ = keys
    sql = sql.format(a=a)
    with opened(tables, ORDERS_PLACEMENT) as pdb:
        on_pdb(pdb, "SELECT count(*) FROM orders")
        pdb.commit()
        assert [c.get_transaction_status() for c in pdb.connections] == [IDLE] * 3
        got = on_pdb(pdb, sql, params(a, b))
        statuses = [c.get_transaction_status() for c in pdb.connections]
        same(got, on_ref(ref, sql, params(a, b)), ordered=True)
        assert got and got != [(0, None)]
        assert statuses == [IDLE, INTRANS, IDLE], statuses


SHARD_LOCAL_ONLY = [
    "SELECT id, row_number() OVER (ORDER BY id) FROM orders WHERE customer_id IN (%s, %s) ORDER BY id",
    "SELECT count(*) FROM (SELECT id FROM orders WHERE customer_id IN (%s, %s) ORDER BY id LIMIT 1) s",
    "SELECT * FROM (SELECT id FROM orders WHERE customer_id IN (%s, %s) ORDER BY id DESC LIMIT 1) s",
    "SELECT customer_id, sum(amount) * 2, rank() OVER (ORDER BY count(*) DESC, customer_id) "
    "FROM orders WHERE customer_id IN (%s, %s) GROUP BY customer_id ORDER BY customer_id",
    "SELECT id FROM orders WHERE customer_id = %s UNION SELECT id FROM orders WHERE customer_id = %s "
    "ORDER BY id",
]


@pytest.mark.parametrize(
    "sql", SHARD_LOCAL_ONLY, ids=["window", "limit-count", "limit-rows", "window-over-groups", "union"]
)
def test_a_routed_statement_is_exact_on_one_shard_and_on_two(tables, ref, keys, sql):
    a, b, c = keys
    with opened(tables, ORDERS_PLACEMENT) as pdb:
        assert answered(pdb, ref, sql, (a, b))
        pdb.commit()
        assert answered(pdb, ref, sql, (a, c))


# -- 2. co-location ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM pq_a JOIN pq_b USING (k)",
        "SELECT count(*) FROM pq_a JOIN pq_b ON pq_a.k = pq_b.k",
        "SELECT pq_a.k, sum(v), sum(w) FROM pq_a JOIN pq_b ON pq_b.k = pq_a.k GROUP BY pq_a.k ORDER BY 1",
    ],
)
def test_a_join_on_the_shard_key_of_co_located_tables_is_exact(tables, ref, sql):
    with opened(tables, CO_LOCATED) as pdb:
        assert exact(pdb, ref, sql, ordered=True) != [(0,)]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM pq_a JOIN pq_b ON pq_a.v = pq_b.w",
        "SELECT pq_a.v, count(*), sum(pq_b.k) FROM pq_a JOIN pq_b ON pq_a.v = pq_b.w GROUP BY 1 ORDER BY 1",
        "SELECT pq_a.k, pq_b.k FROM pq_a LEFT JOIN pq_b ON pq_a.v = pq_b.w ORDER BY 1, 2 NULLS FIRST",
        "SELECT count(*) FROM pq_a JOIN pq_b ON pq_a.k = pq_b.k + 1",
    ],
    ids=["count", "grouped", "left", "key-expression"],
)
def test_a_join_off_the_shard_key_is_answered_as_one_database(tables, ref, sql):
    with opened(tables, CO_LOCATED) as pdb:
        assert answered(pdb, ref, sql, ordered="ORDER BY" in sql) not in ([], [(0,)])


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM pq_a JOIN pq_b USING (k)",
        "SELECT k, sum(v), sum(w) FROM pq_a JOIN pq_b USING (k) GROUP BY k ORDER BY k",
        "SELECT pq_a.k, pq_b.k FROM pq_a FULL JOIN pq_b ON pq_a.k = pq_b.k ORDER BY 1 NULLS FIRST, 2",
    ],
    ids=["count", "grouped", "full"],
)
def test_a_key_join_of_tables_with_different_shard_functions_is_answered_as_one_database(tables, ref, sql):
    placement = Placement(sharded={"pq_a": ("k", Modulo()), "pq_b": ("k", Hash())})
    # Sharded by other functions, equal keys may live on different shards: no shard can join alone.
    with opened(tables, placement) as pdb:
        assert answered(pdb, ref, sql, ordered="ORDER BY" in sql) not in ([], [(0,)])


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT k, sum(v) * 2, count(*) FROM pq_a GROUP BY k HAVING sum(v) > 10 ORDER BY k",
        "SELECT k, avg(v) + max(v), string_agg(v::text, ',' ORDER BY v) FROM pq_a GROUP BY k ORDER BY k",
        "SELECT k, v, sum(v) OVER (PARTITION BY k), rank() OVER (PARTITION BY k ORDER BY v) "
        "FROM pq_a ORDER BY k, v",
    ],
    ids=["having", "expressions", "window"],
)
def test_grouping_or_partitioning_by_the_shard_key_is_pushed_down_whole(tables, ref, sql):
    with opened(tables, CO_LOCATED) as pdb:
        assert exact(pdb, ref, sql, ordered=True)


# -- 3. CTEs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "WITH pq_a AS (SELECT * FROM pq_a WHERE v > 1) SELECT count(*) FROM pq_a",
        # A CTE named like a copied table holds the sharded table's rows: it is not the copy.
        "WITH customers AS (SELECT * FROM pq_a WHERE v > 1) SELECT count(*) FROM customers",
    ],
)
def test_a_cte_named_like_a_table_hides_it(tables, ref, sql):
    with opened(tables, CO_LOCATED) as pdb:
        exact(pdb, ref, sql)


# -- 4. uncorrelated subqueries ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT ARRAY(SELECT v FROM pq_a ORDER BY v)",
        "SELECT count(*) FROM pq_b WHERE EXISTS (SELECT 1 FROM pq_a WHERE v > 50)",
        "SELECT count(*) FROM pq_b WHERE EXISTS (SELECT 1 FROM pq_a WHERE k = 1)",
        "SELECT EXISTS (SELECT 1 FROM pq_a)",
        "SELECT (SELECT v FROM pq_a WHERE k = 1 ORDER BY v LIMIT 1)",
        "SELECT count(*) FROM pq_b WHERE w > (SELECT v FROM pq_a WHERE k = 1 ORDER BY v LIMIT 1)",
        "SELECT (SELECT count(pq_a.v)) FROM pq_a",
        "SELECT count(*) FROM pq_b WHERE NOT EXISTS (SELECT 1 FROM pq_a WHERE v > 98)",
        "SELECT count(*) FROM pq_b WHERE w IN (SELECT v FROM pq_a)",
        "SELECT count(*) FROM pq_b WHERE w NOT IN (SELECT v FROM pq_a)",
        "SELECT count(*) FROM pq_b WHERE w > ALL (SELECT v FROM pq_a WHERE k = 2)",
        "SELECT k, w, w > (SELECT avg(v) FROM pq_a) FROM pq_b ORDER BY k, w",
    ],
    ids=[
        "array",
        "exists-where",
        "exists-one-shard",
        "exists-select",
        "scalar",
        "scalar-where",
        "outer-agg",
        "not-exists",
        "in",
        "not-in",
        "all",
        "scalar-select",
    ],
)
def test_an_uncorrelated_subquery_over_a_sharded_table_is_answered_as_one_database(tables, ref, sql):
    with opened(tables, CO_LOCATED) as pdb:
        answered(pdb, ref, sql)


# -- 5. views ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT g, n FROM pq_v ORDER BY g",
        "SELECT sum(n) FROM pq_v",
        "SELECT count(*) FROM pq_vl",
        "SELECT k, v FROM pq_vl ORDER BY v, k",
    ],
)
def test_a_view_that_groups_or_limits_is_never_read_as_a_table(tables, ref, sql):
    with opened(tables, CO_LOCATED) as pdb:
        exact_or_refused(pdb, ref, sql, ordered=True)


@pytest.mark.parametrize("sql", ["SELECT count(*) FROM pq_vp", "SELECT k, v FROM pq_vp ORDER BY k, v"])
def test_a_plain_view_over_a_sharded_table_is_exact(tables, ref, sql):
    with opened(tables, CO_LOCATED) as pdb:
        exact(pdb, ref, sql, ordered=True)


# -- 6. volatile and stable functions ------------------------------------------------------------------


def test_now_is_one_value_across_the_shards(tables, ref):
    with opened(tables, CO_LOCATED) as pdb:
        exact(pdb, ref, "SELECT count(DISTINCT x) FROM (SELECT now() AS x FROM pq_a) s")
        rows = on_pdb(pdb, "SELECT now(), count(*) FROM pq_a GROUP BY now()")
        assert [r[1] for r in rows] == [90], rows


@pytest.mark.parametrize(
    "sql, name",
    [
        ("SELECT random() FROM pq_a", "random"),
        ("SELECT nextval('pq_seq') FROM pq_a", "nextval"),
        ("SELECT txid_current() FROM pq_a", "txid_current"),
        ("SELECT k, row_number() OVER (ORDER BY random()) FROM pq_a", "random"),
        ("SELECT sum(v) / count(*) + random() FROM pq_a", "random"),
        ("SELECT k FROM pq_a WHERE random() < 0.5 UNION SELECT k FROM pq_b", "random"),
        ("SELECT pg_backend_pid(), count(*) OVER () FROM pq_a", "pg_backend_pid"),
        ("SELECT inet_server_port(), k FROM pq_a EXCEPT SELECT 1, k FROM pq_b", "inet_server_port"),
        ("SELECT current_setting('port'), sum(v) / count(*) FROM pq_a", "current_setting"),
        ("SELECT k, ctid FROM pq_a JOIN pq_b USING (k) WHERE v = w", "ctid"),
        ("SELECT count(*) OVER () FROM pq_a TABLESAMPLE SYSTEM (50)", "TABLESAMPLE"),
        ("SELECT k FROM pq_a ORDER BY v, k LIMIT 3 FOR UPDATE", "FOR UPDATE"),
    ],
)
def test_what_each_shard_answers_its_own_way_is_refused_on_several_shards(tables, sql, name):
    with opened(tables, CO_LOCATED) as pdb:
        refused(pdb, sql, None, name)


# -- 7. catalogs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'pq_a'",
        "SELECT count(*) FROM pg_class WHERE relname = 'pq_a'",
        "SELECT relname FROM pg_catalog.pg_class WHERE relname LIKE 'pq\\_%%' ORDER BY 1",
    ],
)
@pytest.mark.parametrize("placement", [None, CO_LOCATED], ids=["no-placement", "strict"])
def test_a_catalog_relation_is_answered_once(tables, ref, sql, placement):
    with opened(tables, placement) as pdb:
        got = exact(pdb, ref, sql, ordered=True)
        if "count" in sql:
            assert got == [(1,)]


# -- 8. names ------------------------------------------------------------------------------------------


def test_replicated_tables_as_a_bare_string_is_a_type_error(tables):
    with pytest.raises(TypeError):
        parallel_connection.connect(tables.shard_dsns, replicated_tables="customers")


def test_a_schema_qualified_copy_matches_the_unqualified_name(tables, ref):
    placement = Placement(sharded=ORDERS, copied=["public.customers"])
    with opened(tables, placement) as pdb:
        assert exact(pdb, ref, "SELECT count(*) FROM customers") == [(5000,)]
        exact(pdb, ref, "SELECT count(*) FROM public.customers")


# -- 9. strict placement -------------------------------------------------------------------------------


def test_a_table_the_placement_does_not_name_is_refused(tables):
    with opened(tables, Placement(sharded=ORDERS)) as pdb:
        refused(pdb, "SELECT * FROM pq_a", None, "pq_a")


def test_an_undeclared_copy_in_an_outer_join_is_refused(tables):
    with opened(tables, Placement(sharded=ORDERS)) as pdb:
        refused(
            pdb,
            "SELECT count(*) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id",
            None,
            "customers",
        )


def test_unknown_sharded_reads_unnamed_tables_as_sharded(tables, ref):
    with opened(tables, Placement(sharded=ORDERS, unknown="sharded")) as pdb:
        exact(pdb, ref, "SELECT count(*), sum(v) FROM pq_a")


# -- 10. catalog facts are never stale -----------------------------------------------------------------


def test_new_collations_and_aggregates_are_seen_at_once(tables, ref):
    every = [*tables.shard_dsns, tables.reference_dsn]
    with ref.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_collation WHERE collname = 'en-x-icu'")
        if cur.fetchone()[0] == 0:
            pytest.skip("no ICU collations on this server")
    ref.rollback()
    words = ["a", "B", "c", "é", "e", "Z", "z", "ä", "A"]
    with opened(tables, Placement(sharded=ORDERS, unknown="sharded")) as pdb:
        on_pdb(pdb, "SELECT count(*) FROM pq_a")  # facts read, transaction open
        run_on_all(every, 'CREATE TABLE pq_icu (t text COLLATE "en-x-icu")')
        for i, dsn in enumerate(tables.shard_dsns):
            mine = [w for j, w in enumerate(words) if j % 3 == i]
            run_on_all([dsn], "INSERT INTO pq_icu SELECT unnest(%s::text[])", (mine,))
        run_on_all([tables.reference_dsn], "INSERT INTO pq_icu SELECT unnest(%s::text[])", (words,))
        run_on_all(every, "CREATE AGGREGATE pq_agg(int) (SFUNC = int4pl, STYPE = int, INITCOND = '0')")
        ordered = "SELECT t FROM pq_icu ORDER BY t"
        aggregate = "SELECT pq_agg(v) FROM pq_a"
        # The plain (bytewise) order differs from ICU's: a merge as plain would be wrong.
        assert sorted(words) != [r[0] for r in on_ref(ref, ordered)]
        for _ in ("same transaction", "after commit"):
            answered(pdb, ref, ordered)
            answered(pdb, ref, aggregate)
            pdb.commit()


# -- 11. streaming -------------------------------------------------------------------------------------


def test_a_named_cursor_with_itersize_zero_returns_every_row(tables, ref):
    want = on_ref(ref, "SELECT count(*) FROM orders")[0][0]
    with opened(tables, ORDERS_PLACEMENT) as pdb:
        cur = pdb.cursor("pq_stream")
        cur.itersize = 0
        cur.execute("SELECT id FROM orders")
        ids = [r[0] for r in cur]
        cur.close()
    assert len(ids) == want == len(set(ids))


# -- 12. settings that differ between shards -----------------------------------------------------------


def test_a_shard_with_another_timezone_is_refused_naming_it(tables):
    conns = [psycopg2.connect(d) for d in tables.shard_dsns]
    try:
        conns[2].autocommit = True
        with conns[2].cursor() as cur:
            cur.execute("SET TIME ZONE 'Asia/Tokyo'")
        conns[2].autocommit = False
        with pytest.raises(psycopg2.Error) as info:
            # Checked when the connection starts (or, at the latest, by its first statement).
            on_pdb(ParallelConnection(conns), "SELECT count(*) FROM orders")
        message = str(info.value)
        assert "timezone" in message.lower(), message
        assert "shard 2" in message.lower(), message
    finally:
        for conn in conns:
            conn.close()


# -- 13. connection arguments --------------------------------------------------------------------------


def test_dsns_as_one_string_are_refused(tables):
    with pytest.raises(psycopg2.InterfaceError):
        parallel_connection.connect("\n".join(tables.shard_dsns))


def test_the_same_dsn_twice_is_refused(tables):
    d = tables.shard_dsns
    with pytest.raises(psycopg2.InterfaceError):
        parallel_connection.connect([d[0], d[0], d[1]])


def test_parallel_connection_takes_connections_not_dsns():
    with pytest.raises(psycopg2.InterfaceError):
        ParallelConnection(["dbname=x"])
