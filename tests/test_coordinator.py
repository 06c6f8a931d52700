"""The coordinator stage on real servers: what the shards cannot finish, PostgreSQL finishes.

Statements run through the library and on the reference database holding
every row; the answers (names, types, values, order) must be the same. Also
the stage's own promises: a bound on the rows moved, read-only sessions,
streaming cursors, parameters, the transaction's own writes, and no staging
for what the client merges as before.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import pytest

import parallel_connection
from parallel_connection import NotSupportedError
from parallel_connection.placement import Placement
from parallel_connection.plan import plan_statement

PLACEMENT = Placement(sharded={"orders": ("customer_id", "modulo")}, copied=["customers"])


@pytest.fixture
def placed(sample: Any) -> Iterator[parallel_connection.ParallelConnection]:
    conn = parallel_connection.connect(sample.shard_dsns, placement=PLACEMENT)
    yield conn
    conn.close()


def _answer(conn: Any, sql: str, params: Any = None) -> tuple[list[tuple[str, int]], list[tuple[Any, ...]]]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        columns = [(d.name, d.type_code) for d in cur.description]
        return columns, [tuple(r) for r in cur.fetchall()]


def _both(conn: Any, ref: Any, sql: str) -> tuple[Any, Any]:
    """The library's and the reference's answers (names and type codes, rows), both rolled back."""
    got, want = _answer(conn, sql), _answer(ref, sql)
    conn.rollback()
    ref.rollback()
    return got, want


def _typed(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with each value's type and, for Decimals, its scale: equal only when exactly alike."""
    return [tuple((type(v).__name__, str(v) if isinstance(v, Decimal) else v) for v in row) for row in rows]


def assert_as_one_database(placed: Any, ref: Any, sql: str, params: Any = None) -> None:
    got = _answer(placed, sql, params)
    want = _answer(ref, sql, params)
    ref.rollback()
    assert got[0] == want[0], sql
    assert _typed(got[1]) == _typed(want[1]), sql


# Every statement orders its rows completely, so the lists must be equal as they are.
FINISHED_BY_THE_COORDINATOR = [
    "SELECT round(avg(amount), 2), coalesce(sum(quantity), 0), sum(amount) / count(*) FROM orders",
    "SELECT count(*)::float, 100.0 * sum(CASE WHEN paid THEN 1 ELSE 0 END) / sum(1) FROM orders",
    "SELECT status, round(avg(weight)::numeric, 3) AS w FROM orders GROUP BY status "
    "HAVING sum(amount) / count(*) > 10 ORDER BY w DESC NULLS LAST, status",
    "SELECT id, rank() OVER (ORDER BY amount DESC NULLS LAST, id) FROM orders ORDER BY 2 LIMIT 7",
    "SELECT status, sum(sum(amount)) OVER (ORDER BY status NULLS FIRST) FROM orders GROUP BY status "
    "ORDER BY status NULLS FIRST",
    "SELECT status, paid, count(*), GROUPING(status, paid) FROM orders GROUP BY ROLLUP (status, paid) "
    "ORDER BY 1 NULLS FIRST, 2 NULLS FIRST, 4",
    "SELECT status, count(*) FROM orders GROUP BY CUBE (status) ORDER BY 1 NULLS FIRST, 2",
    "SELECT count(*) FROM orders WHERE amount > (SELECT avg(amount) FROM orders)",
    "WITH big AS (SELECT customer_id, sum(amount) AS s FROM orders GROUP BY customer_id) "
    "SELECT count(*), max(s) FROM big WHERE s > (SELECT avg(s) FROM big)",
    "SELECT customer_id FROM orders WHERE quantity > 3 UNION SELECT id FROM customers WHERE id < 5 "
    "ORDER BY 1",
    "SELECT customer_id FROM orders INTERSECT SELECT id FROM customers WHERE country = 'NL' ORDER BY 1",
    "SELECT id FROM customers EXCEPT SELECT customer_id FROM orders WHERE paid ORDER BY 1",
    "SELECT status FROM orders UNION ALL SELECT country FROM customers ORDER BY 1 NULLS FIRST LIMIT 5",
    "SELECT c.id, count(o.id) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id "
    "GROUP BY c.id ORDER BY 2 DESC, 1 LIMIT 10",
    "SELECT count(*) FROM customers c WHERE NOT EXISTS "
    "(SELECT 1 FROM orders o WHERE o.quantity = c.id AND o.paid)",
    "SELECT id, amount FROM orders o WHERE amount > "
    "(SELECT 1.5 * avg(amount) FROM orders p WHERE p.status = o.status) ORDER BY amount DESC, id LIMIT 5",
    "SELECT id FROM (SELECT id, amount FROM orders ORDER BY amount DESC NULLS LAST, id LIMIT 20) t "
    "WHERE id % 2 = 0 ORDER BY id",
    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) FROM orders",
]


@pytest.mark.parametrize("sql", FINISHED_BY_THE_COORDINATOR)
def test_what_the_shards_cannot_finish_is_answered_as_one_database(placed, ref, sql):
    assert_as_one_database(placed, ref, sql)


def test_parameters_reach_every_stage(placed, ref):
    sql = (
        "SELECT status, round(avg(amount), %s) FROM orders WHERE quantity > %s "
        "AND amount > (SELECT avg(amount) - %s FROM orders WHERE quantity > %s) GROUP BY status ORDER BY 1"
    )
    assert_as_one_database(placed, ref, sql, (2, 1, 5, 1))
    named = "SELECT count(*) FROM orders WHERE amount > (SELECT avg(amount) FROM orders WHERE status = %(s)s)"
    assert_as_one_database(placed, ref, named, {"s": "shipped"})


def test_a_staged_statement_sees_the_transactions_own_writes(placed, ref):
    try:
        with placed.cursor() as cur:
            cur.execute("SELECT round(avg(amount), 2) FROM orders")
            (before,) = cur.fetchone()
            cur.execute(
                "INSERT INTO orders (id, customer_id, status, amount, quantity) "
                "VALUES (900001, 1, 'x', 1000000, 1)"
            )
            cur.execute("SELECT round(avg(amount), 2) FROM orders")
            (after,) = cur.fetchone()
        assert after > before
    finally:
        placed.rollback()


def test_it_runs_in_read_only_sessions_and_transactions(placed, ref):
    sql = "SELECT status, round(avg(amount), 2) FROM orders GROUP BY status ORDER BY 1"
    placed.set_session(readonly=True)
    assert_as_one_database(placed, ref, sql)
    placed.rollback()
    placed.set_session(readonly=False)
    placed.autocommit = True
    with placed.cursor() as cur:
        cur.execute("BEGIN READ ONLY")
        cur.execute(sql)
        rows = cur.fetchall()
        cur.execute("COMMIT")
    assert _typed(rows) == _typed(_answer(ref, sql)[1])


def test_a_named_cursor_streams_the_final_rows(placed, ref):
    sql = "SELECT id, rank() OVER (ORDER BY amount, id) FROM orders ORDER BY 2"
    want = _answer(ref, sql)[1]
    with placed.cursor(name="staged") as cur:
        cur.itersize = 100
        cur.execute(sql)
        first = cur.fetchmany(10)
        rest = cur.fetchall()
    placed.rollback()
    assert first + rest == want


def test_the_rows_moved_to_the_coordinator_are_bounded(placed, ref):
    sql = "SELECT id, rank() OVER (ORDER BY amount, id) FROM orders ORDER BY 2 LIMIT 3"
    placed.moved_rows = 100
    with pytest.raises(NotSupportedError, match="moved_rows"):
        _answer(placed, sql)
    placed.rollback()
    placed.moved_rows = 1_000_000
    assert_as_one_database(placed, ref, sql)
    with pytest.raises(psycopg2.ProgrammingError):
        placed.moved_rows = -1


def test_the_bound_can_be_set_at_connect(sample, ref):
    with (
        contextlib.closing(
            parallel_connection.connect(sample.shard_dsns, placement=PLACEMENT, moved_rows=5)
        ) as conn,
        conn,
    ):
        assert conn.moved_rows == 5
        with pytest.raises(NotSupportedError, match="more than 5 rows"):
            _answer(conn, "SELECT customer_id FROM orders UNION SELECT id FROM customers")
        # Grouped first, the groups are few: within the bound.
        assert (
            _answer(conn, "SELECT round(avg(amount), 2) FROM orders")[1]
            == _answer(ref, "SELECT round(avg(amount), 2) FROM orders")[1]
        )


def test_a_failing_step_fails_the_statement_naming_the_shard(placed):
    with pytest.raises(psycopg2.errors.DivisionByZero, match="shard"):
        _answer(placed, "SELECT round(avg(amount / (quantity - quantity)), 2) FROM orders")
    placed.rollback()


def test_what_still_cannot_be_one_databases_answer_is_refused(placed):
    for sql in (
        "SELECT round(avg(amount), 2), random() FROM orders",
        "SELECT id, rank() OVER (ORDER BY pg_backend_pid()) FROM orders",
        "SELECT count(DISTINCT ctid::text) + 0 FROM orders",
    ):
        with pytest.raises(NotSupportedError):
            _answer(placed, sql)
        placed.rollback()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM orders ORDER BY amount, id",
        "SELECT status, count(*), avg(amount) FROM orders GROUP BY status",
        "SELECT DISTINCT status FROM orders",
        "SELECT id FROM orders ORDER BY id LIMIT 5",
    ],
)
def test_what_the_client_merges_is_not_staged(placed, sql):
    facts = placed.shard_set.facts()
    planned = plan_statement(sql, None, facts)
    assert planned is not None
    assert planned[0].staged is None
    assert planned[0].merge


TYPED = """
CREATE TABLE IF NOT EXISTS co_types (
    k integer PRIMARY KEY, i2 smallint, i8 bigint, n numeric(12, 4), f4 real, f8 double precision,
    t text, c char(6), vc varchar(9), b bytea, d date, ts timestamp, tz timestamptz, tm time,
    iv interval, u uuid, j json, jb jsonb, ok boolean
)
"""
TEXTS = ["plain", 'quo"te', "back\\slash", "com,ma", "{brace}", "NULL", "", " lead", "ünï", None]


def _typed_rows() -> list[tuple[Any, ...]]:
    rows = []
    for k in range(30):
        pick = k % len(TEXTS)
        rows.append(
            (
                k,
                k - 15,
                2**40 + k,
                Decimal(k) / 7 if k % 5 else None,
                float("nan") if k == 3 else float(k) / 3,
                float("inf") if k == 4 else -float(k) / 7,
                TEXTS[pick],
                "ab" if k % 2 else None,
                TEXTS[pick][:9] if TEXTS[pick] is not None else None,
                bytes([k, 0, 255]),
                f"2024-02-{k % 28 + 1:02d}",
                "infinity" if k == 6 else f"2024-02-{k % 28 + 1:02d} 10:{k:02d}:00.123456",
                f"2024-02-{k % 28 + 1:02d} 10:00:00+0{k % 9}",
                f"10:{k:02d}:30.5",
                "1 mon 3 days" if k == 7 else f"{k} days {k} hours",
                f"00000000-0000-0000-0000-{k:012d}",
                '{"a": [1, "x"], "b": null}' if k % 2 else "[]",
                "null" if k == 5 else json.dumps({"k": k}),
                None if k % 7 == 0 else k % 2 == 0,
            )
        )
    return rows


@pytest.fixture(scope="module")
def typed(sample: Any) -> Any:
    rows = _typed_rows()
    for index, dsn in enumerate([*sample.shard_dsns, sample.reference_dsn]):
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS co_types")
            cur.execute(TYPED)
            own = rows if index == len(sample.shard_dsns) else [r for r in rows if r[0] % 3 == index]
            for row in own:
                cur.execute(f"INSERT INTO co_types VALUES ({', '.join(['%s'] * len(row))})", row)
    placement = Placement(sharded={"co_types": ("k", "modulo")})
    with (
        contextlib.closing(parallel_connection.connect(sample.shard_dsns, placement=placement)) as conn,
        conn,
    ):
        yield conn


def test_every_kind_of_value_reaches_the_coordinator_unchanged(typed, ref):
    # The derived table's LIMIT over every shard's rows runs first; its rows move to the coordinator.
    sql = "SELECT * FROM (SELECT * FROM co_types WHERE k <> 6 ORDER BY k LIMIT 25) s ORDER BY k DESC"
    got, want = _both(typed, ref, sql)
    assert [name for name, _ in got[0]] == [name for name, _ in want[0]]

    def comparable(rows: list[tuple[Any, ...]]) -> list[str]:
        # repr: NaN equals itself; the value's type counts (Decimal scale, tzinfo, ...)
        return [repr(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)) for row in rows]

    assert comparable(got[1]) == comparable(want[1])


def test_every_stage_sees_one_moment(placed, ref):
    # In autocommit each step is a statement of its own; now() is still the statement's one moment.
    placed.autocommit = True
    with placed.cursor() as cur:
        cur.execute("SELECT (SELECT min(now()) FROM orders) = now(), now() - (SELECT max(now()) FROM orders)")
        assert cur.fetchone() == (True, datetime.timedelta(0))
        # With the user's parameters too (the moment is one more parameter of every step).
        cur.execute(
            "SELECT count(*) FROM orders WHERE ordered_at < now() + %s * interval '1 day' "
            "AND amount > (SELECT avg(amount) FROM orders WHERE quantity > %s AND ordered_at < now())",
            (1, 2),
        )
        (count,) = cur.fetchone()
    with ref.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM orders WHERE ordered_at < now() + %s * interval '1 day' "
            "AND amount > (SELECT avg(amount) FROM orders WHERE quantity > %s AND ordered_at < now())",
            (1, 2),
        )
        assert cur.fetchone() == (count,)
    ref.rollback()


@pytest.fixture(scope="module")
def big_and_small(sample: Any) -> Any:
    """Two tables sharded on their own keys, joined off them: 300 rows and 20 rows."""
    big = [(k, k % 20) for k in range(300)]
    small = [(k, f"s{k}") for k in range(20)]
    for index, dsn in enumerate([*sample.shard_dsns, sample.reference_dsn]):
        everything = index == len(sample.shard_dsns)
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS co_big, co_small")
            cur.execute("CREATE TABLE co_big (k int PRIMARY KEY, s int)")
            cur.execute("CREATE TABLE co_small (k int PRIMARY KEY, label text)")
            for table, rows in (("co_big", big), ("co_small", small)):
                own = rows if everything else [r for r in rows if r[0] % 3 == index]
                psycopg2.extras.execute_values(cur, f"INSERT INTO {table} VALUES %s", own)
            cur.execute("ANALYZE co_big")
            cur.execute("ANALYZE co_small")
    placement = Placement(sharded={"co_big": ("k", "modulo"), "co_small": ("k", "modulo")})
    with (
        contextlib.closing(parallel_connection.connect(sample.shard_dsns, placement=placement)) as conn,
        conn,
    ):
        yield conn


def test_a_join_off_the_key_sends_the_smaller_table_to_the_shards(big_and_small, ref):
    # The big table's rows stay on their shards; only the small one's 20 rows move.
    big_and_small.moved_rows = 25
    sql = (
        "SELECT label, count(*), sum(b.k) FROM co_big b JOIN co_small s ON s.k = b.s "
        "GROUP BY label ORDER BY label"
    )
    assert _typed(_answer(big_and_small, sql)[1]) == _typed(_answer(ref, sql)[1])
    big_and_small.rollback()
    ref.rollback()


@pytest.mark.parametrize(
    "sql",
    [
        # Computed at the coordinator on moved rows: the server's own text, not psycopg2's values.
        "SELECT k, iv::text, ts::text, jb IS NULL, jb::text, j::text, tm::text, "
        "row_number() OVER (ORDER BY k) FROM co_types ORDER BY k",
        "SELECT k, ts + iv FROM (SELECT * FROM co_types WHERE k <> 6 ORDER BY k LIMIT 20) s ORDER BY k",
        # char(n) through a step that is staged again keeps its length.
        "WITH z AS (SELECT c, k FROM co_types ORDER BY k LIMIT 9) SELECT c FROM z "
        "INTERSECT SELECT c FROM co_types ORDER BY 1",
    ],
)
def test_values_computed_on_at_the_coordinator_are_postgresqls(typed, ref, sql):
    got, want = _both(typed, ref, sql)
    assert got[0] == want[0]
    assert [repr(r) for r in got[1]] == [repr(r) for r in want[1]]


@pytest.mark.parametrize(
    "sql",
    [
        # The joined step's columns never show: not under *, not as names the statement uses.
        "SELECT * FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.quantity = c.id) ORDER BY id",
        "SELECT id, m, v FROM (SELECT id, quantity AS m, amount AS v FROM orders) o "
        "WHERE EXISTS (SELECT 1 FROM customers c JOIN orders p ON p.customer_id = c.id "
        "WHERE p.quantity = o.m AND p.paid) ORDER BY id LIMIT 20",
        # EXISTS over an aggregate is always true, whatever the correlation finds.
        "SELECT count(*) FROM customers c WHERE EXISTS "
        "(SELECT count(*) FROM orders o WHERE o.quantity = c.id)",
        "SELECT count(*) FROM customers c WHERE NOT EXISTS "
        "(SELECT max(id) FROM orders o WHERE o.quantity = c.id)",
        # A correlated count of no rows is 0, not NULL.
        "SELECT c.id, (SELECT count(*) FROM orders o WHERE o.quantity = c.id) FROM customers c "
        "ORDER BY c.id LIMIT 15",
    ],
)
def test_decorrelated_subqueries_answer_as_one_database(placed, ref, sql):
    assert_as_one_database(placed, ref, sql)


def test_an_infinity_through_a_merge_is_refused_by_name(typed):
    # psycopg2 reads 'infinity' as the calendar's last day: a merged step cannot hand it on exactly.
    with pytest.raises(NotSupportedError, match="infinities"):
        _answer(typed, "SELECT ts::text FROM (SELECT ts, k FROM co_types ORDER BY k LIMIT 20) s")
    typed.rollback()


@pytest.fixture(scope="module")
def icu_database(sample: Any) -> Any:
    """A database whose default collation is ICU's (not code point order) on every server."""
    dsns = [*sample.shard_dsns, sample.reference_dsn]
    words = ["b", "A", "a", "B", "é", "e", "Z", None]
    for index, dsn in enumerate(dsns):
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS co_icu")
            cur.execute(
                "CREATE DATABASE co_icu TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu "
                "ICU_LOCALE 'und' LOCALE 'C.UTF-8'"
            )
        conn.close()
        with psycopg2.connect(dsn, dbname="co_icu") as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE w (k int PRIMARY KEY, g int, s text)")
            rows = [(k, k % 2, w) for k, w in enumerate(words)]
            own = rows if index == len(sample.shard_dsns) else [r for r in rows if r[0] % 3 == index]
            if own:
                psycopg2.extras.execute_values(cur, "INSERT INTO w VALUES %s", own)
    placement = Placement(sharded={"w": ("k", "modulo")})
    with (
        contextlib.closing(
            parallel_connection.connect(sample.shard_dsns, placement=placement, dbname="co_icu")
        ) as conn,
        conn,
    ):
        reference = psycopg2.connect(sample.reference_dsn, dbname="co_icu")
        yield conn, reference
        reference.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT s FROM w ORDER BY s NULLS FIRST, k",
        "SELECT g, min(s), max(s), count(*) FROM w GROUP BY g ORDER BY g",
        "SELECT min(s), max(s) FROM w",
        "SELECT s, k FROM w ORDER BY s DESC NULLS LAST, k LIMIT 4",
        'SELECT s FROM w ORDER BY s COLLATE "C" NULLS FIRST, k',
        "SELECT 1 FROM w GROUP BY s HAVING s > 'a'",
        "SELECT 'q' AS lit, min(s) FROM w GROUP BY 1",
        "SELECT 7 AS lit, max(s) FROM w GROUP BY 1",
        "SELECT s::name AS n FROM w WHERE s IS NOT NULL ORDER BY 1",
    ],
)
def test_text_under_the_databases_own_collation_is_compared_by_postgresql(icu_database, sql):
    conn, reference = icu_database
    got, want = _both(conn, reference, sql)
    assert got == want


@pytest.mark.parametrize(
    "sql",
    [
        # One group of every row, even of none.
        "SELECT 1 FROM orders GROUP BY ()",
        "SELECT 1 FROM orders WHERE amount < 0 HAVING true",
        "SELECT 1, 2 FROM orders GROUP BY GROUPING SETS ((), ())",
        # A grouping set's missing key is a NULL of the key's type, whatever set comes first.
        "SELECT status, paid, quantity, count(*) FROM orders GROUP BY GROUPING SETS ((status), (paid), "
        "(quantity)) ORDER BY 1 NULLS FIRST, 2 NULLS FIRST, 3 NULLS FIRST, 4",
        "SELECT paid, quantity, count(*) FROM orders GROUP BY GROUPING SETS ((quantity), (quantity), (paid)) "
        "ORDER BY 1 NULLS FIRST, 2 NULLS FIRST, 3",
    ],
)
def test_grouping_edges_answer_as_one_database(placed, ref, sql):
    assert_as_one_database(placed, ref, sql)


def test_char_keys_of_grouping_sets_keep_their_padding(typed, ref):
    sql = (
        "SELECT k % 2 AS odd, k % 3 AS third, c, count(*) FROM co_types "
        "GROUP BY GROUPING SETS ((k % 2), (k % 3), (c)) ORDER BY 1 NULLS FIRST, 2 NULLS FIRST, 3 NULLS FIRST"
    )
    got, want = _both(typed, ref, sql)
    assert got == want


def test_composite_values_are_not_moved(typed):
    with pytest.raises(NotSupportedError, match="composite"):
        _answer(typed, "SELECT * FROM (SELECT row_of, k FROM co_types row_of ORDER BY k LIMIT 3) s")
    typed.rollback()


def test_an_outer_joined_side_off_the_key_is_not_combined_per_shard(sample, big_and_small, ref):
    # customers LEFT JOIN (a join off the key): each shard's part of the right side is not its own.
    placement = Placement(
        sharded={"co_big": ("k", "modulo"), "co_small": ("k", "modulo")}, copied=["customers"]
    )
    sql = (
        "SELECT c.id, count(s.k), max(b.k) FROM customers c LEFT JOIN (co_big b JOIN co_small s "
        "ON s.k = b.s) ON c.id = b.s WHERE c.id < 30 GROUP BY c.id ORDER BY c.id"
    )
    with (
        contextlib.closing(parallel_connection.connect(sample.shard_dsns, placement=placement)) as conn,
        conn,
    ):
        assert _typed(_answer(conn, sql)[1]) == _typed(_answer(ref, sql)[1])
    ref.rollback()


def test_a_staged_statement_is_never_run_as_a_plain_union(placed):
    staged = "SELECT count(*) FROM orders WHERE amount > (SELECT avg(amount) FROM orders)"
    with placed.cursor() as cur:
        with pytest.raises(NotSupportedError, match="several statements"):
            cur.execute(staged + "; SELECT 1")
        placed.rollback()
        with pytest.raises(NotSupportedError, match="executemany"):
            cur.executemany(staged + " + %s", [(1,), (2,)])
    placed.rollback()


@pytest.mark.parametrize(
    "sql",
    [
        # Arrays move as their own text, cast back at the coordinator (unnest would flatten them).
        "SELECT customer_id, ids, cardinality(ids) FROM (SELECT customer_id, array_agg(id ORDER BY id) "
        "AS ids FROM orders GROUP BY customer_id ORDER BY customer_id LIMIT 5) s ORDER BY 1",
        "SELECT id, ARRAY[status, NULL, 'a,b', 'q\"\\\\'] AS a, ARRAY[[quantity, 1], [2, 3]] AS m, "
        "rank() OVER (ORDER BY amount DESC NULLS LAST, id) FROM orders ORDER BY 4 LIMIT 5",
    ],
)
def test_array_values_reach_the_coordinator_unchanged(placed, ref, sql):
    assert_as_one_database(placed, ref, sql)


def test_arrays_of_dates_and_intervals_move_as_text_when_nothing_merges_them(typed, ref):
    sql = (
        "SELECT k, ARRAY[d, NULL] AS ds, ARRAY[iv] AS ivs, row_number() OVER (ORDER BY k) "
        "FROM co_types ORDER BY k"
    )
    got, want = _both(typed, ref, sql)
    assert got == want


@pytest.mark.parametrize(
    "sql",
    [
        # A set operation whose arms read sharded rows only through its CTE reads every shard's.
        "WITH w AS (SELECT count(*) AS n FROM orders) SELECT n FROM w UNION ALL SELECT n FROM w",
        "WITH w AS (SELECT id FROM orders) SELECT count(*) FROM (SELECT id FROM w UNION ALL "
        "SELECT id FROM w) u",
        "WITH w AS (SELECT customer_id FROM orders) SELECT customer_id FROM w INTERSECT "
        "SELECT id FROM customers ORDER BY 1 LIMIT 5",
        "WITH w AS (SELECT count(*) AS n FROM orders) VALUES (1) UNION ALL SELECT n FROM w",
    ],
)
def test_a_set_operations_own_cte_of_sharded_rows_reads_every_shard(placed, ref, sql):
    assert_as_one_database(placed, ref, sql)


def test_an_insert_of_a_set_operation_over_a_cte_inserts_every_shards_rows(placed, ref):
    sql = (
        "INSERT INTO orders (id, customer_id, status) WITH w AS (SELECT id, customer_id FROM orders "
        "WHERE id < 40) SELECT id + 900000, customer_id, 'x' FROM w UNION ALL "
        "SELECT id + 910000, customer_id, 'y' FROM w"
    )
    counts = []
    for conn in (placed, ref):
        with conn.cursor() as cur:
            cur.execute(sql)
            cur.execute("SELECT count(*) FROM orders WHERE id >= 900000")
            counts.append(cur.fetchone()[0])
        conn.rollback()
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize(
    "sql",
    [
        # HAVING with a subquery: its left side reads the groups.
        "SELECT quantity, count(*) FROM orders GROUP BY quantity HAVING quantity IN "
        "(SELECT quantity FROM orders WHERE amount > 990) ORDER BY 1",
        "SELECT status, max(amount) FROM orders GROUP BY status HAVING max(amount) > ALL "
        "(SELECT amount FROM orders WHERE amount < 500) ORDER BY 1 NULLS FIRST",
        # GROUP BY naming a constant of the select list.
        "SELECT 'q' AS lit, round(avg(amount), 2) FROM orders GROUP BY lit",
    ],
)
def test_what_grouped_statements_name_reaches_the_groups(placed, ref, sql):
    assert_as_one_database(placed, ref, sql)


def test_a_constant_rolled_up_is_nulled_in_its_total(placed, ref):
    # PostgreSQL sorts by neither row (the key is a constant): compare them as a multiset.
    got, want = _both(placed, ref, "SELECT 'q' AS lit, count(*) FROM orders GROUP BY ROLLUP (1)")
    assert got[0] == want[0]
    assert sorted(got[1], key=repr) == sorted(want[1], key=repr)


def test_a_subquery_in_a_join_condition_runs_first(placed, ref):
    sql = (
        "SELECT c.country, count(*) FROM orders o JOIN customers c ON c.id = o.customer_id "
        "AND o.amount > (SELECT avg(amount) FROM orders) GROUP BY 1 ORDER BY 1 NULLS FIRST"
    )
    placed.moved_rows = 10  # one value moves: the orders stay on their shards
    assert_as_one_database(placed, ref, sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, amount FROM orders WHERE paid UNION ALL SELECT id, amount FROM orders WHERE NOT paid "
        "ORDER BY amount DESC NULLS LAST, id LIMIT 5",
        "SELECT id, amount FROM orders UNION ALL SELECT customer_id, amount FROM orders "
        "ORDER BY 2 NULLS FIRST, 1 DESC LIMIT 4 OFFSET 3",
    ],
)
def test_the_first_rows_of_a_union_all_move_only_each_arms_first_rows(placed, ref, sql):
    placed.moved_rows = 20  # each arm's first LIMIT + OFFSET rows, not the tables
    assert_as_one_database(placed, ref, sql)


def test_an_error_of_the_coordinator_says_it_came_from_every_shards_rows(placed):
    sql = "SELECT id, rank() OVER (ORDER BY status::int) FROM orders"  # statuses are not numbers
    with pytest.raises(psycopg2.DataError, match="shard 0") as caught:
        _answer(placed, sql)
    placed.rollback()
    notes = getattr(caught.value, "__notes__", None)
    if hasattr(caught.value, "add_note"):
        assert notes and "coordinator" in notes[0]
