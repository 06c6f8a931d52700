"""Edges of placement planning, each compared with the reference database: NULL shard keys, the
nullable side of outer joins, renamed columns, UNION ALL with copies, casts around the key,
data-modifying CTEs and values each shard makes its own. Exact or refused, never wrong."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from conftest import run_on_all

import parallel_connection
from parallel_connection import NotSupportedError
from parallel_connection.placement import Hash, Modulo, Placement

SHARDS = 3
PLACEMENT = Placement(
    sharded={
        "pe_a": ("k", Modulo()),
        "pe_b": ("k", Modulo()),
        "pe_n": ("k", Modulo()),
        "pe_t": ("k", Hash()),
    },
    copied=["pe_c"],
)
A = [(i % 20 - 3, i % 6, ["x", "y", None, "ab"][i % 4]) for i in range(60)]
B = [(i % 15 - 2, i % 5) for i in range(40)]
C = [(i, f"n{i % 4}") for i in range(-3, 12)]
# NULL keys belong to no shard: spread over all of them, as a loader without a rule would.
N = [(None if i % 4 == 0 else i % 7, i % 3) for i in range(30)]
T = [(k, i) for i, k in enumerate(["x", "x ", "5", "05", "AB", "ab", "xy", "y"] * 2)]


@pytest.fixture(scope="module")
def edges(sample) -> Iterator[Any]:
    every = [*sample.shard_dsns, sample.reference_dsn]
    drop = "DROP TABLE IF EXISTS pe_a, pe_b, pe_c, pe_n, pe_t CASCADE"
    run_on_all(every, drop)
    run_on_all(
        every,
        "CREATE TABLE pe_a (k int NOT NULL, v int, s text); CREATE TABLE pe_b (k int NOT NULL, w int); "
        "CREATE TABLE pe_c (id int, name text); CREATE TABLE pe_n (k int, v int); "
        "CREATE TABLE pe_t (k text NOT NULL, v int)",
    )
    tables = {"pe_a": (A, Modulo()), "pe_b": (B, Modulo()), "pe_t": (T, Hash())}
    for shard, dsn in enumerate(sample.shard_dsns):
        conn = psycopg2.connect(dsn)
        with conn, conn.cursor() as cur:
            for name, (rows, function) in tables.items():
                mine = [r for r in rows if function.shard_of(r[0], SHARDS) == shard]
                _insert(cur, name, mine)
            _insert(cur, "pe_c", C)
            _insert(cur, "pe_n", [r for j, r in enumerate(N) if _shard_of_maybe_null(r[0], j) == shard])
        conn.close()
    conn = psycopg2.connect(sample.reference_dsn)
    with conn, conn.cursor() as cur:
        for name, rows in (("pe_a", A), ("pe_b", B), ("pe_c", C), ("pe_n", N), ("pe_t", T)):
            _insert(cur, name, rows)
    conn.close()
    yield sample
    run_on_all(every, drop)


def _shard_of_maybe_null(key: int | None, position: int) -> int:
    return position % SHARDS if key is None else Modulo().shard_of(key, SHARDS)


def _insert(cur: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        marks = ", ".join(["%s"] * len(rows[0]))
        cur.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)


@pytest.fixture
def pdb(edges) -> Iterator[parallel_connection.ParallelConnection]:
    conn = parallel_connection.connect(edges.shard_dsns, placement=PLACEMENT)
    conn.autocommit = True
    yield conn
    conn.close()


def exact_or_refused(pdb, ref, sql: str, params: Any = None) -> bool:
    """True when answered (and then exactly as one database), False when refused."""
    with ref.cursor() as cur:
        cur.execute(sql, params)
        want = cur.fetchall()
    ref.rollback()
    try:
        with pdb.cursor() as cur:
            cur.execute(sql, params)
            got = cur.fetchall()
    except NotSupportedError:
        return False
    assert collections.Counter(map(repr, got)) == collections.Counter(map(repr, want)), sql
    return True


NULL_KEYS = [
    "SELECT k, count(*) FROM pe_n GROUP BY k",
    "SELECT k, count(*) FROM pe_n GROUP BY k HAVING count(*) > 1",
    "SELECT k, count(*) FROM pe_n GROUP BY k ORDER BY 2 DESC, 1 LIMIT 2",
    "SELECT k, v, count(*) OVER (PARTITION BY k) FROM pe_n",
    "SELECT count(*) FROM (SELECT k, count(*) FROM pe_n GROUP BY k) t",
    "SELECT count(*) FROM (SELECT DISTINCT k FROM pe_n) t",
    "SELECT count(*) FROM (SELECT DISTINCT ON (k) k, v FROM pe_n ORDER BY k, v) t",
    "WITH g AS (SELECT k, count(*) n FROM pe_n GROUP BY k) SELECT count(*) FROM g",
]
OUTER_JOIN_NULLS = [
    "SELECT pe_b.k, pe_a.v, sum(pe_a.v) OVER (PARTITION BY pe_b.k) "
    "FROM pe_a LEFT JOIN pe_b ON pe_a.k = pe_b.k",
    "SELECT * FROM (SELECT pe_b.k, count(*) n FROM pe_a LEFT JOIN pe_b ON pe_a.k = pe_b.k GROUP BY pe_b.k) t",
    "SELECT * FROM (SELECT DISTINCT pe_b.k FROM pe_a LEFT JOIN pe_b ON pe_a.k = pe_b.k) t",
    "SELECT count(*) FROM (SELECT pe_b.k FROM pe_a LEFT JOIN pe_b ON pe_a.k = pe_b.k GROUP BY pe_b.k) t",
]
RENAMED = [
    "SELECT * FROM pe_a AS x(v, k) WHERE k = 4",
    "SELECT k, count(*) FROM pe_a AS x(v, k) GROUP BY k",
    "SELECT count(*) FROM pe_a x(v, k) JOIN pe_b ON x.k = pe_b.k",
    "SELECT count(*) FROM (SELECT k, v FROM pe_a) s(v, k) JOIN pe_b ON s.k = pe_b.k",
    "WITH s(x, k) AS (SELECT k, v FROM pe_a) SELECT count(*) FROM s JOIN pe_b USING (k)",
    "SELECT count(*) FROM pe_b WHERE k IN (SELECT k FROM pe_a x(v, k))",
    "SELECT count(*) FROM pe_b WHERE NOT EXISTS (SELECT 1 FROM pe_a x(v, k) WHERE x.k = pe_b.k)",
]
UNION_WITH_COPIES = [
    "SELECT * FROM (SELECT k FROM pe_a UNION ALL SELECT id FROM pe_c) u",
    "WITH u AS (SELECT k FROM pe_a UNION ALL SELECT id FROM pe_c) SELECT count(*) FROM u",
    "SELECT * FROM (SELECT k FROM pe_a UNION ALL VALUES (1)) u",
    "SELECT * FROM (SELECT k FROM pe_a UNION ALL SELECT id FROM pe_c) u WHERE k = 4",
]
CASTS = [
    ("SELECT * FROM pe_t WHERE k = 'x  '::char(3)", None),
    ("SELECT * FROM pe_t WHERE k = %s::char(3)", ("x  ",)),
    ("SELECT * FROM pe_t WHERE k IN ('x  '::char(3), 'y')", None),
    ("SELECT * FROM pe_t WHERE k = 'xy'::varchar(1)", None),
    ("SELECT * FROM pe_t WHERE k = 5::text", None),
    ("SELECT * FROM pe_t WHERE k = %s::text", (5,)),
    ("SELECT * FROM pe_t WHERE k::char(3) = 'x'", None),
    ("SELECT * FROM pe_t WHERE k::varchar(1) = 'x'", None),
    ("SELECT * FROM pe_a WHERE k::varchar(1) = '1'", None),
    ("SELECT * FROM pe_a WHERE k = '05'", None),
    ("SELECT * FROM pe_a WHERE k = %s::bigint", (4,)),
]
PER_SHARD_VALUES = [
    "SELECT DISTINCT 'now'::timestamptz FROM pe_a",
    "SELECT count(DISTINCT pg_backend_pid()) FROM pe_a",
    "SELECT count(DISTINCT inet_server_port()) FROM pe_a",
    "SELECT count(DISTINCT ctid::text) FROM pe_a",
    "SELECT count(DISTINCT xmin::text) FROM pe_a",
]


@pytest.mark.parametrize("sql", NULL_KEYS)
def test_null_shard_keys_spread_over_shards_are_never_grouped_per_shard(pdb, ref, sql):
    exact_or_refused(pdb, ref, sql)


@pytest.mark.parametrize("sql", OUTER_JOIN_NULLS)
def test_the_nullable_side_of_an_outer_join_is_no_shard_key(pdb, ref, sql):
    exact_or_refused(pdb, ref, sql)


@pytest.mark.parametrize("sql", RENAMED)
def test_columns_renamed_by_an_alias_list_are_followed(pdb, ref, sql):
    exact_or_refused(pdb, ref, sql)


@pytest.mark.parametrize("sql", UNION_WITH_COPIES)
def test_union_all_with_rows_every_shard_has_is_not_repeated(pdb, ref, sql):
    exact_or_refused(pdb, ref, sql)


@pytest.mark.parametrize(("sql", "params"), CASTS)
def test_casts_around_the_key_route_as_postgresql_compares(pdb, ref, sql, params):
    exact_or_refused(pdb, ref, sql, params)


@pytest.mark.parametrize("sql", PER_SHARD_VALUES)
def test_values_each_shard_makes_its_own_are_refused(pdb, ref, sql):
    assert not exact_or_refused(pdb, ref, sql)


def test_not_null_keys_are_still_pushed_down(pdb, ref):
    sql = "SELECT k, sum(v) * 2, count(*) FROM pe_a GROUP BY k HAVING count(*) > 2 ORDER BY k"
    assert exact_or_refused(pdb, ref, sql)
    assert exact_or_refused(pdb, ref, "SELECT k, v, rank() OVER (PARTITION BY k ORDER BY v) FROM pe_a")


@pytest.mark.parametrize(
    "sql",
    [
        "WITH ins AS (INSERT INTO pe_c VALUES (200, 'z') RETURNING *) SELECT * FROM ins",
        "WITH u AS (UPDATE pe_b SET w = w RETURNING *) SELECT count(*) FROM u",
        "WITH u AS (UPDATE pe_a SET v = v + 100 WHERE k = 5 RETURNING *) SELECT count(*) FROM u",
    ],
)
def test_a_data_modifying_cte_is_refused_and_writes_nothing(pdb, ref, sql):
    with pdb.cursor() as cur:
        cur.execute("SELECT count(*), sum(v) FROM pe_a")
        before = cur.fetchall()
        with pytest.raises(NotSupportedError, match="data-modifying WITH"):
            cur.execute(sql)
        cur.execute("SELECT count(*), sum(v) FROM pe_a")
        assert cur.fetchall() == before
        cur.execute("SELECT count(*) FROM pe_c")
        assert cur.fetchall() == [(len(C),)]


HIDDEN_SUBQUERIES = [
    "VALUES ((SELECT count(*) FROM pe_a))",
    "SELECT * FROM (VALUES (EXISTS (SELECT 1 FROM pe_a WHERE k = 7))) v(x)",
    "WITH v(x) AS (VALUES ((SELECT count(*) FROM pe_a))) SELECT * FROM v",
    "SELECT id FROM pe_c WHERE id IN (VALUES ((SELECT k FROM pe_a WHERE k = 7 LIMIT 1)))",
    "SELECT k, x FROM pe_a, LATERAL (VALUES ((SELECT count(*) FROM pe_b))) v(x) WHERE pe_a.k < 3",
    "SELECT id FROM pe_c ORDER BY id LIMIT (SELECT count(*) FROM pe_a WHERE k < 3)",
    "SELECT id FROM pe_c ORDER BY id OFFSET (SELECT count(*) FROM pe_a WHERE k < 3)",
    "SELECT 1 LIMIT (SELECT count(*) FROM pe_a WHERE k < 3)",
    "SELECT id, sum(id) OVER w FROM pe_c WINDOW w AS (ORDER BY id ROWS BETWEEN "
    "(SELECT count(*) FROM pe_a WHERE k < 3) PRECEDING AND CURRENT ROW) ORDER BY id",
    "SELECT count(*) FROM pe_c TABLESAMPLE BERNOULLI ((SELECT count(*) FROM pe_a WHERE k < 3) * 5) "
    "REPEATABLE (1)",
]
SERVER_VALUES = [
    "SELECT count(DISTINCT current_setting('port')) FROM pe_a",
    "SELECT count(DISTINCT x) FROM pe_a, (SELECT setting x FROM pg_settings WHERE name = 'port') s",
    "SELECT count(DISTINCT nw) FROM pe_now",
]


@pytest.mark.parametrize("sql", HIDDEN_SUBQUERIES)
def test_subqueries_in_every_clause_are_seen(pdb, ref, sql):
    exact_or_refused(pdb, ref, sql)


@pytest.fixture
def now_view(edges):
    every = [*edges.shard_dsns, edges.reference_dsn]
    run_on_all(every, "CREATE OR REPLACE VIEW pe_now AS SELECT k, now() AS nw FROM pe_a")
    yield
    run_on_all(every, "DROP VIEW pe_now")


@pytest.mark.parametrize("sql", SERVER_VALUES)
def test_values_of_each_server_are_refused_even_through_views_and_catalogs(pdb, ref, now_view, sql):
    assert not exact_or_refused(pdb, ref, sql)


def test_a_list_entry_holding_several_dsns_is_refused(edges):
    with pytest.raises(psycopg2.InterfaceError, match="one DSN per list entry"):
        parallel_connection.connect(["\n".join(edges.shard_dsns)])
