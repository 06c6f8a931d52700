"""Routing through subqueries, and the joins and subqueries routing must never make wrong.

On the sample schema (``orders`` sharded on ``customer_id % 3``, ``customers``
copied), each statement is compared with the reference database; the shards
that ran nothing are seen from their transaction status.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest

import parallel_connection
from parallel_connection import NotSupportedError
from parallel_connection.placement import Placement
from parallel_connection.sample import shard_of

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
PLACEMENT = Placement(sharded={"orders": ("customer_id", "modulo")}, copied=["customers"])


@pytest.fixture
def placed(sample) -> Iterator[parallel_connection.ParallelConnection]:
    pdb = parallel_connection.connect(sample.shard_dsns, placement=PLACEMENT)
    yield pdb
    pdb.close()


def customers_on(ref, shard: int, count: int) -> list[int]:
    with ref.cursor() as cur:
        cur.execute("SELECT DISTINCT customer_id FROM orders ORDER BY 1")
        ids = [row[0] for row in cur.fetchall()]
    return [c for c in ids if shard_of(c, 3) == shard][:count]


def both(pdb, ref, sql: str, params: Any = None) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with pdb.cursor() as cur:
        cur.execute("SELECT count(*) FROM customers")  # the catalog is read once, on every shard
    pdb.commit()
    with pdb.cursor() as cur:
        cur.execute(sql, params)
        got = [tuple(r) for r in cur.fetchall()]
    with ref.cursor() as cur:
        cur.execute(sql, params)
        want = [tuple(r) for r in cur.fetchall()]
    return got, want


def busy(pdb) -> list[int]:
    return [i for i, c in enumerate(pdb.connections) if c.get_transaction_status() != IDLE]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT EXISTS (SELECT 1 FROM orders WHERE customer_id = %(a)s AND amount > 500)",
        "SELECT (SELECT count(*) FROM orders WHERE customer_id = %(a)s)",
        "SELECT c.name FROM customers c WHERE c.id = %(a)s "
        "AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = %(a)s AND o.amount > 999)",
        "SELECT o.id, (SELECT count(*) FROM orders p WHERE p.customer_id = o.customer_id AND p.id < o.id) "
        "FROM orders o WHERE o.customer_id = %(a)s ORDER BY o.id",
        "SELECT * FROM (SELECT id FROM orders WHERE customer_id = %(a)s ORDER BY amount DESC, id LIMIT 2) s "
        "ORDER BY id",
    ],
)
def test_pins_inside_subqueries_route_to_the_shard_of_the_key(placed, ref, sql):
    (a,) = customers_on(ref, 1, 1)
    got, want = both(placed, ref, sql, {"a": a})
    assert got == want
    assert busy(placed) == [1]


@pytest.mark.parametrize(
    "sql",
    [
        # The EXISTS reads every customer's orders: one shard cannot answer it.
        "SELECT id FROM orders WHERE customer_id = %(a)s "
        "AND EXISTS (SELECT 1 FROM orders p WHERE p.amount > 990) ORDER BY id",
        "SELECT id FROM orders WHERE customer_id = %(a)s "
        "AND amount > (SELECT avg(amount) FROM orders) ORDER BY id",
        # The derived table is not pinned: its LIMIT is over every shard's rows.
        "SELECT o.id FROM orders o JOIN (SELECT id FROM orders ORDER BY amount DESC, id LIMIT 50) t "
        "ON t.id = o.id WHERE o.customer_id = %(a)s",
    ],
)
def test_a_pin_does_not_route_what_other_shards_hold(placed, ref, sql):
    (a,) = customers_on(ref, 1, 1)
    try:
        got, want = both(placed, ref, sql, {"a": a})
    except NotSupportedError:
        return
    assert sorted(got) == sorted(want)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM customers WHERE id NOT IN (SELECT customer_id FROM orders)",
        "WITH RECURSIVE r(id, n) AS (SELECT min(id), 1 FROM orders UNION ALL "
        "SELECT o.id, r.n + 1 FROM orders o JOIN r ON o.id = r.id + 1 WHERE r.n < 20) SELECT count(*) FROM r",
        "SELECT count(*) FROM (SELECT customer_id FROM orders UNION ALL SELECT customer_id FROM orders) u "
        "JOIN orders o ON o.id = u.customer_id",
    ],
)
def test_per_shard_answers_that_one_database_would_not_give_are_refused(placed, ref, sql):
    try:
        got, want = both(placed, ref, sql)
    except NotSupportedError:
        return
    assert got == want


def test_key_in_a_subquery_keyed_the_same_way_is_exact(placed, ref):
    sql = (
        "SELECT count(*), sum(amount) FROM orders WHERE customer_id IN "
        "(SELECT customer_id FROM orders GROUP BY customer_id HAVING count(*) >= 1 AND min(amount) < 100)"
    )
    got, want = both(placed, ref, sql)
    assert got == want


@pytest.fixture
def icu_domains(sample):
    every = [*sample.shard_dsns, sample.reference_dsn]
    from conftest import run_on_all

    try:
        run_on_all(
            every,
            "DROP DOMAIN IF EXISTS pr_icu_text; DROP DOMAIN IF EXISTS pr_ci_text; "
            "DROP COLLATION IF EXISTS pr_ci; "
            "CREATE COLLATION pr_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false); "
            'CREATE DOMAIN pr_icu_text AS text COLLATE "en-x-icu"; '
            "CREATE DOMAIN pr_ci_text AS text COLLATE pr_ci",
        )
    except psycopg2.Error as exc:
        pytest.skip(f"no ICU collations on this PostgreSQL build: {exc}")
    yield
    run_on_all(every, "DROP DOMAIN pr_icu_text; DROP DOMAIN pr_ci_text; DROP COLLATION pr_ci")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT status FROM orders WHERE status IS NOT NULL ORDER BY status::pr_icu_text DESC, id LIMIT 5",
        "SELECT DISTINCT upper(status)::pr_ci_text FROM orders",
        "SELECT lower(status)::pr_ci_text, count(*) FROM orders GROUP BY 1",
    ],
)
def test_a_collation_reached_through_a_domain_is_never_merged_as_code_points(placed, ref, icu_domains, sql):
    try:
        got, want = both(placed, ref, sql)
    except NotSupportedError as exc:
        assert "pr_icu_text" in str(exc) or "pr_ci_text" in str(exc)
        return
    assert sorted(map(repr, got)) == sorted(map(repr, want))


def test_an_insert_into_a_sharded_table_goes_to_the_shard_of_its_key(placed, ref):
    function = PLACEMENT.sharded[0].function
    with placed.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders")
        (before,) = cur.fetchone()
        cur.execute("INSERT INTO orders (id, customer_id) VALUES (%s, %s)", (10**9, 1))
        cur.executemany(
            "INSERT INTO orders (id, customer_id) VALUES (%s, %s)", [(10**9 + 1, 2), (10**9 + 2, 4)]
        )
        assert cur.rowcount == 2
        cur.execute("SELECT count(*) FROM orders")
        assert cur.fetchone() == (before + 3,)
        for index, conn in enumerate(placed.connections):
            with conn.cursor() as shard:
                shard.execute("SELECT customer_id FROM orders WHERE id >= %s", (10**9,))
                held = sorted(k for (k,) in shard.fetchall())
            assert held == [k for k in (1, 2, 4) if function.shard_of(k, 3) == index]
    placed.rollback()


def test_an_error_on_one_shard_aborts_the_whole_transaction(sample, ref):
    (a,) = customers_on(ref, 0, 1)
    (b,) = customers_on(ref, 1, 1)
    pdb = parallel_connection.connect(sample.shard_dsns, placement=PLACEMENT)
    try:
        with pdb.cursor() as cur:
            cur.execute("UPDATE orders SET note = 'aborted?' WHERE customer_id = %s", (a,))
            with pytest.raises(psycopg2.errors.DivisionByZero, match=r"^shard 1"):
                cur.execute("SELECT 1 / 0 FROM orders WHERE customer_id = %s", (b,))
            # Like one database: nothing runs until the transaction ends, whichever shard it needs.
            for sql, params in (
                ("SELECT count(*) FROM orders WHERE customer_id = %s", (a,)),
                ("SELECT 1", None),
            ):
                with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
                    cur.execute(sql, params)
        pdb.commit()  # rolls back everywhere, as COMMIT of an aborted transaction does
        with pdb.cursor() as cur:
            cur.execute("SELECT count(*) FROM orders WHERE note = 'aborted?'")
            assert cur.fetchone() == (0,)
            cur.execute("BEGIN")
            with pytest.raises(psycopg2.errors.DivisionByZero):
                cur.execute("SELECT 1 / 0 FROM orders WHERE customer_id = %s", (b,))
            cur.execute("COMMIT")
            assert cur.statusmessage == "ROLLBACK"
            cur.execute("SELECT count(*) FROM orders WHERE customer_id = %s", (a,))
            assert cur.fetchone()[0] > 0
    finally:
        pdb.close()


def test_a_routed_statement_sees_the_transactions_one_moment(placed, ref):
    (a,) = customers_on(ref, 1, 1)
    (b,) = customers_on(ref, 2, 1)
    placed.commit()
    with placed.cursor() as cur:
        cur.execute("SELECT now(), count(*) FROM orders")  # spread: the moment is taken here
        (moment, _) = cur.fetchone()
        cur.execute("SELECT DISTINCT now() FROM orders WHERE customer_id = %s", (a,))
        assert cur.fetchall() == [(moment,)]
        cur.execute("SELECT DISTINCT current_timestamp FROM orders WHERE customer_id = %s", (b,))
        assert cur.fetchall() == [(moment,)]
    placed.commit()
    placed.autocommit = True
    with placed.cursor() as cur:
        cur.execute("SELECT DISTINCT now() = statement_timestamp() FROM orders")
        assert cur.fetchall() == [(True,)]


def test_a_write_to_a_copied_table_counts_and_returns_one_copy(placed, ref):
    with placed.cursor() as cur:
        cur.execute("UPDATE customers SET name = name WHERE id <= 3 RETURNING id")
        assert cur.rowcount == 3 and cur.statusmessage == "UPDATE 3"
        assert sorted(cur.fetchall()) == [(1,), (2,), (3,)]
        cur.executemany("UPDATE customers SET name = name WHERE id = %s", [(1,), (2,)])
        assert cur.rowcount == 2
    placed.rollback()


def test_copies_that_diverged_fail_the_write_and_the_transaction(placed, sample):
    shard2 = psycopg2.connect(sample.shard_dsns[2])
    with shard2, shard2.cursor() as cur:
        cur.execute("SELECT country FROM customers WHERE id = 7")
        (country,) = cur.fetchone()
    try:
        with shard2, shard2.cursor() as cur:
            cur.execute("UPDATE customers SET country = 'XX' WHERE id = 7")
        with placed.cursor() as cur:
            with pytest.raises(psycopg2.IntegrityError, match="copies"):
                cur.execute("UPDATE customers SET name = name WHERE country = 'XX'")
            with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
                cur.execute("SELECT 1")
        placed.commit()  # rolls back
    finally:
        with shard2, shard2.cursor() as cur:
            cur.execute("UPDATE customers SET country = %s WHERE id = 7", (country,))
        shard2.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT max(quantity) FROM orders",
        "SELECT status, max(quantity), count(*) FROM orders GROUP BY status ORDER BY 1 NULLS FIRST",
        "SELECT max(quantity) - min(quantity), max(amount) FROM orders",
        "SELECT customer_id % 3 AS r, max(quantity) FROM orders GROUP BY 1 "
        "HAVING max(quantity) > 10 ORDER BY 1",
    ],
)
def test_a_user_aggregate_found_before_pg_catalogs_is_computed_as_one_database_computes_it(sample, sql):
    from conftest import run_on_all
    from mergetools import same_answer

    every = [*sample.shard_dsns, sample.reference_dsn]
    # A max(int) that sums: one database with this search_path calls it for integers, not the built-in.
    run_on_all(
        every,
        "DROP AGGREGATE IF EXISTS public.max(int); "
        "CREATE AGGREGATE public.max(int) (sfunc = int4pl, stype = int, initcond = '0')",
    )
    options = "-c search_path=public,pg_catalog"
    try:
        pdb = parallel_connection.connect(sample.shard_dsns, placement=PLACEMENT, options=options)
        ref = psycopg2.connect(sample.reference_dsn, options=options)
        try:
            with ref.cursor() as cur:
                cur.execute("SELECT max(quantity) = sum(quantity) FROM orders")
                assert cur.fetchone() == (True,)
            ref.rollback()
            same_answer(pdb, ref, sql)
        finally:
            pdb.close()
            ref.close()
    finally:
        run_on_all(every, "DROP AGGREGATE public.max(int)")


@pytest.mark.parametrize(
    "sql",
    [
        "WITH t AS (SELECT * FROM orders) SELECT count(*) FROM t t1 JOIN t t2 "
        "ON t1.customer_id = t2.customer_id AND t1.id < t2.id",
        "SELECT count(*) FROM (SELECT * FROM orders WHERE amount > 100) x "
        "JOIN (SELECT * FROM orders WHERE amount < 900) y USING (customer_id)",
        "SELECT o.id, l.n FROM orders o, "
        "LATERAL (SELECT count(*) AS n FROM orders p WHERE p.customer_id = o.customer_id) l",
        "SELECT o.id, l.id FROM orders o LEFT JOIN LATERAL (SELECT p.id FROM orders p "
        "WHERE p.customer_id = o.customer_id AND p.id > o.id ORDER BY p.id LIMIT 1) l ON true",
    ],
)
def test_star_subqueries_and_lateral_on_the_key_are_co_located(placed, ref, sql):
    got, want = both(placed, ref, sql)
    assert sorted(got, key=repr) == sorted(want, key=repr)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT c.id, o.id FROM customers c LEFT JOIN orders o ON o.customer_id = c.id WHERE c.id = %(a)s",
        "SELECT c.id, count(o.id) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id "
        "WHERE c.id IN (%(a)s, %(a)s) GROUP BY c.id",
        "SELECT o.id, c.name FROM orders o LEFT JOIN customers c ON c.id = o.customer_id WHERE c.id = %(a)s",
    ],
)
def test_a_pin_carried_by_an_outer_join_routes_to_one_shard(placed, ref, sql):
    (a,) = customers_on(ref, 2, 1)
    got, want = both(placed, ref, sql, {"a": a})
    assert sorted(got, key=repr) == sorted(want, key=repr)
    assert busy(placed) == [2]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT status, count(*) FROM orders GROUP BY status "
        "HAVING status IN (SELECT status FROM orders WHERE amount > 995)",
        "SELECT count(*) FROM orders GROUP BY quantity IN (SELECT quantity FROM orders WHERE amount > 990)",
        "SELECT id, quantity IN (SELECT quantity FROM orders WHERE amount > 990) FROM orders WHERE id < 50",
    ],
)
def test_without_a_placement_an_in_subquery_outside_where_is_no_join(pdb, ref, sql):
    try:
        got, want = both(pdb, ref, sql)
    except NotSupportedError:
        return
    assert sorted(got, key=repr) == sorted(want, key=repr)
