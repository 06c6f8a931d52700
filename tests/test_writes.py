"""Writes under a placement, on real shards, compared with the reference database: INSERTs routed by
their key, UPDATE / DELETE decided on each row's shard, upserts, copies written alike, and every
write that cannot be exact refused before anything is written."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.extras
import pytest
from conftest import connected, run_on_all

import parallel_connection
from parallel_connection import NotSupportedError, ParallelConnection
from parallel_connection.placement import Hash, Modulo, Placement, ShardedTable

PLACEMENT = Placement(
    sharded={
        "wr_a": ("k", Modulo()),
        "wr_b": ("k", Modulo()),
        "wr_h": ("v", Modulo()),
        "wr_s": ShardedTable("wr_s", "k", Modulo(), sequence="wr_s_k_seq"),
    },
    copied=["wr_c"],
)
SCHEMA = """
DROP TABLE IF EXISTS wr_a, wr_b, wr_c, wr_h, wr_s, wr_new, wr_new2 CASCADE;
CREATE TABLE wr_s (k bigserial PRIMARY KEY, v int);
CREATE TABLE wr_a (k int PRIMARY KEY, v int, note text);
CREATE TABLE wr_b (k int NOT NULL, w int);
CREATE TABLE wr_c (id int PRIMARY KEY, name text);
CREATE TABLE wr_h (k int, v int NOT NULL);
"""


@pytest.fixture
def db(sample: Any) -> Iterator[tuple[ParallelConnection, Any, list[Any]]]:
    """A ParallelConnection over empty tables, the reference database, and one connection per shard."""
    every = [*sample.shard_dsns, sample.reference_dsn]
    run_on_all(every, SCHEMA)
    try:
        with connected(sample, PLACEMENT) as opened:
            yield opened
    finally:
        run_on_all(every, "DROP TABLE IF EXISTS wr_a, wr_b, wr_c, wr_h, wr_s, wr_new, wr_new2 CASCADE")


def both(pdb: ParallelConnection, ref: Any, sql: str, vars: Any = None) -> tuple[Any, Any]:
    """Run on the shards and on the reference database; (the library's cursor, the reference's)."""
    cur = pdb.cursor()
    cur.execute(sql, vars)
    rcur = ref.cursor()
    rcur.execute(sql, vars)
    return cur, rcur


def contents(conn: Any, table: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {table} ORDER BY 1, 2")
        return cur.fetchall()


def same_contents(pdb: ParallelConnection, ref: Any, table: str) -> None:
    pdb.commit()
    ref.commit()
    assert contents(pdb, table) == contents(ref, table)


def on_each_shard(shards: list[Any], table: str) -> list[list[tuple[Any, ...]]]:
    return [contents(conn, table) for conn in shards]


def test_one_row_insert_lands_on_its_keys_shard_only(db) -> None:
    pdb, ref, shards = db
    cur, rcur = both(pdb, ref, "INSERT INTO wr_a (k, v) VALUES (%s, %s)", (4, 40))
    assert (cur.rowcount, cur.statusmessage) == (rcur.rowcount, rcur.statusmessage) == (1, "INSERT 0 1")
    pdb.commit()
    assert on_each_shard(shards, "wr_a") == [[], [(4, 40, None)], []]


def test_multi_row_insert_returns_rows_in_input_order(db) -> None:
    pdb, ref, shards = db
    sql = "INSERT INTO wr_a VALUES (%s, 1, 'a'), (2, %s, 'b'), (3, 3, 'c'), (%s, 4, 'd') RETURNING k, v"
    cur, rcur = both(pdb, ref, sql, (7, 20, 9))
    assert cur.fetchall() == rcur.fetchall() == [(7, 1), (2, 20), (3, 3), (9, 4)]
    assert cur.rowcount == rcur.rowcount == 4
    same_contents(pdb, ref, "wr_a")
    assert [sorted(r[0] % 3 for r in rows) for rows in on_each_shard(shards, "wr_a")] == [
        [0, 0, 0],
        [1],
        [],
    ] or all(row[0] % 3 == i for i, rows in enumerate(on_each_shard(shards, "wr_a")) for row in rows)


def test_every_row_is_on_the_shard_its_key_maps_to(db) -> None:
    pdb, ref, shards = db
    rows = [(k, k * 10, f"n{k}") for k in range(-20, 60)]
    with pdb.cursor() as cur:
        psycopg2.extras.execute_values(cur, "INSERT INTO wr_a VALUES %s", rows, page_size=17)
    psycopg2.extras.execute_values(ref.cursor(), "INSERT INTO wr_a VALUES %s", rows, page_size=17)
    same_contents(pdb, ref, "wr_a")
    for index, held in enumerate(on_each_shard(shards, "wr_a")):
        assert held and all(Modulo().shard_of(row[0], 3) == index for row in held)


def test_execute_values_with_fetch_returns_every_row_in_order(db) -> None:
    pdb, _ref, _ = db
    rows = [(k, -k) for k in (5, 1, 9, 3, 8, 2)]
    got = psycopg2.extras.execute_values(
        pdb.cursor(), "INSERT INTO wr_a (k, v) VALUES %s RETURNING k", rows, page_size=4, fetch=True
    )
    assert got == [(k,) for k, _ in rows]


def test_executemany_and_execute_batch_route_each_row(db) -> None:
    pdb, ref, shards = db
    rows = [(k, k + 1) for k in range(30)]
    for conn in (pdb, ref):
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO wr_a (k, v) VALUES (%s, %s)", rows[:15])
            assert cur.rowcount == 15
            psycopg2.extras.execute_batch(
                cur, "INSERT INTO wr_a (k, v) VALUES (%s, %s)", rows[15:], page_size=4
            )
    same_contents(pdb, ref, "wr_a")
    assert sum(len(rows) for rows in on_each_shard(shards, "wr_a")) == 30


def refused_writing_nothing(
    pdb: ParallelConnection, shards: list[Any], table: str, sqls: Any, match: str
) -> None:
    """Each statement is refused (``match`` in the error) and nothing is on any shard after."""
    cur = pdb.cursor()
    for sql in sqls:
        with pytest.raises(NotSupportedError, match=match):
            cur.execute(sql)
    pdb.rollback()
    assert on_each_shard(shards, table) == [[], [], []]


def test_a_row_without_its_key_is_refused_before_anything_is_written(db) -> None:
    pdb, _, shards = db
    sqls = (
        "INSERT INTO wr_a (v) VALUES (1)",
        "INSERT INTO wr_a VALUES (DEFAULT, 1, 'x')",
        "INSERT INTO wr_a VALUES (1, 1, 'x'), (1 + 1, 2, 'y')",
        "INSERT INTO wr_a DEFAULT VALUES",
    )
    refused_writing_nothing(pdb, shards, "wr_a", sqls, "shard key k")


def test_a_null_key_is_refused_by_the_server_as_one_database_refuses_it(db) -> None:
    pdb, ref, _ = db
    with pytest.raises(psycopg2.IntegrityError):
        pdb.cursor().execute("INSERT INTO wr_a (k, v) VALUES (%s, 1)", (None,))
    pdb.rollback()
    # A nullable key column keeps the row, as one database does.
    run_on_all([c.dsn for c in db[2]], "ALTER TABLE wr_b ALTER COLUMN k DROP NOT NULL")
    ref.cursor().execute("ALTER TABLE wr_b ALTER COLUMN k DROP NOT NULL")
    pdb.cursor().execute("INSERT INTO wr_b VALUES (NULL, 5), (1, 6)")
    ref.cursor().execute("INSERT INTO wr_b VALUES (NULL, 5), (1, 6)")
    same_contents(pdb, ref, "wr_b")


def load(pdb: ParallelConnection, ref: Any) -> None:
    a = [(k, k % 7, f"n{k}") for k in range(1, 41)]
    b = [(k % 20 + 1, k) for k in range(1, 61)]
    c = [(i, f"c{i}") for i in range(1, 8)]
    for conn in (pdb, ref):
        with conn.cursor() as cur:
            psycopg2.extras.execute_values(cur, "INSERT INTO wr_a VALUES %s", a)
            psycopg2.extras.execute_values(cur, "INSERT INTO wr_b VALUES %s", b)
            psycopg2.extras.execute_values(cur, "INSERT INTO wr_c VALUES %s", c)
        conn.commit()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE wr_a SET v = v + 1",
        "UPDATE wr_a SET v = v * 2 WHERE k = 5",
        "UPDATE wr_a SET v = 0 WHERE k IN (1, 2, 3)",
        "UPDATE wr_a SET note = wr_c.name FROM wr_c WHERE wr_c.id = wr_a.v",
        "UPDATE wr_a SET v = wr_b.w FROM wr_b WHERE wr_b.k = wr_a.k AND wr_b.w > 30",
        "UPDATE wr_a SET v = (SELECT max(w) FROM wr_b WHERE wr_b.k = wr_a.k)",
        "UPDATE wr_a SET note = 'x' WHERE v IN (SELECT id FROM wr_c WHERE name > 'c3')",
        "UPDATE wr_a SET note = 'y' WHERE k IN (SELECT k FROM wr_b WHERE w > 50)",
        "UPDATE wr_a SET (v, note) = (SELECT 1, 'z') WHERE k > 30",
        "DELETE FROM wr_a WHERE v = 3",
        "DELETE FROM wr_a WHERE k = 7",
        "DELETE FROM wr_a USING wr_b WHERE wr_b.k = wr_a.k AND wr_b.w < 10",
        "DELETE FROM wr_a WHERE EXISTS (SELECT 1 FROM wr_b WHERE wr_b.k = wr_a.k AND wr_b.w = 45)",
        "WITH c AS (SELECT id FROM wr_c WHERE id < 3) DELETE FROM wr_a WHERE v IN (SELECT id FROM c)",
        "UPDATE wr_c SET name = name || '!' WHERE id > 4",
        "DELETE FROM wr_c WHERE id = 2",
        "UPDATE wr_a SET note = now()::date::text WHERE k < 4",
    ],
)
def test_updates_and_deletes_match_one_database(db, sql: str) -> None:
    pdb, ref, _ = db
    load(pdb, ref)
    cur, rcur = both(pdb, ref, sql + " RETURNING *")
    assert cur.rowcount == rcur.rowcount
    assert cur.statusmessage == rcur.statusmessage
    assert sorted(cur.fetchall()) == sorted(rcur.fetchall())
    for table in ("wr_a", "wr_c"):
        same_contents(pdb, ref, table)


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("UPDATE wr_a SET k = k + 1", "changing the shard key k"),
        ("UPDATE wr_a SET v = (SELECT max(w) FROM wr_b)", "subquery reading a sharded table"),
        ("UPDATE wr_a SET v = wr_b.w FROM wr_b WHERE wr_b.w = wr_a.v", "co-located|shard key"),
        ("DELETE FROM wr_a WHERE v > (SELECT avg(w) FROM wr_b)", "subquery reading a sharded table"),
        ("DELETE FROM wr_a WHERE k NOT IN (SELECT w FROM wr_b)", "NOT IN|negated|subquery"),
        ("DELETE FROM wr_a WHERE ctid = '(0,1)'", "system column ctid"),
        ("UPDATE wr_c SET name = wr_a.note FROM wr_a WHERE wr_a.k = wr_c.id", "copied table wr_c"),
        ("UPDATE wr_c SET name = random()::text", "volatile function random"),
        ("UPDATE wr_a SET v = nextval('wr_seq')", "volatile function nextval"),
        ("INSERT INTO wr_a VALUES (1, 1, 'x') ON CONFLICT DO NOTHING", "conflict target"),
        ("INSERT INTO wr_a VALUES (1, 1, 'x') ON CONFLICT (v) DO NOTHING", "conflict target"),
        ("INSERT INTO wr_a VALUES (1, 1, 'x') ON CONFLICT (k) DO UPDATE SET k = 2", "changing the shard key"),
        ("INSERT INTO wr_a SELECT w, k, 'x' FROM wr_b RETURNING k", "RETURNING of rows that must pass"),
        ("INSERT INTO wr_a VALUES (100, (SELECT max(v) FROM wr_a), 'x')", "subquery reading"),
        ("CREATE TABLE wr_new AS SELECT count(*) FROM wr_a", "CREATE TABLE wr_new AS"),
        ("CREATE TABLE wr_new AS SELECT * FROM wr_a", "CREATE TABLE wr_new AS"),
        ("SELECT k, v INTO wr_new FROM wr_a", "CREATE TABLE wr_new AS"),
        ("CREATE TABLE wr_new AS SELECT * FROM wr_c", None),
        (
            "MERGE INTO wr_a USING wr_c ON wr_a.k = wr_c.id "
            "WHEN NOT MATCHED THEN INSERT VALUES (id, 1, name)",
            "WHEN NOT MATCHED THEN INSERT",
        ),
        (
            "MERGE INTO wr_a USING wr_b ON wr_a.k = wr_b.k "
            "WHEN NOT MATCHED THEN INSERT VALUES (wr_b.w, 1, 'x')",
            "WHEN NOT MATCHED THEN INSERT",
        ),
        ("MERGE INTO wr_a USING wr_b ON wr_a.k = wr_b.w WHEN MATCHED THEN DELETE", "co-located|shard key"),
        (
            "WITH x AS (DELETE FROM wr_b RETURNING k) DELETE FROM wr_a WHERE k IN (SELECT k FROM x)",
            "data-modifying",
        ),
    ],
)
def test_writes_that_cannot_be_exact_are_refused_before_anything_is_written(
    db, sql: str, match: str | None
) -> None:
    pdb, ref, shards = db
    load(pdb, ref)
    run_on_all([c.dsn for c in shards], "CREATE SEQUENCE IF NOT EXISTS wr_seq")
    before = [on_each_shard(shards, t) for t in ("wr_a", "wr_b", "wr_c")]
    cur = pdb.cursor()
    if match is None:
        cur.execute(sql)  # allowed: every shard's copy of the new table holds every copied row
        pdb.commit()
        assert on_each_shard(shards, "wr_new") == [contents(ref, "wr_c")] * 3
        return
    with pytest.raises(NotSupportedError, match=match):
        cur.execute(sql)
    pdb.rollback()
    assert [on_each_shard(shards, t) for t in ("wr_a", "wr_b", "wr_c")] == before
    run_on_all([c.dsn for c in shards], "DROP SEQUENCE IF EXISTS wr_seq")


@pytest.mark.parametrize(
    "sql",
    [
        "MERGE INTO wr_a USING (SELECT k, min(w) AS w FROM wr_b GROUP BY k) b ON wr_a.k = b.k "
        "WHEN MATCHED AND b.w > 5 THEN UPDATE SET v = b.w "
        "WHEN NOT MATCHED THEN INSERT (k, v, note) VALUES (b.k, b.w, 'merged')",
        "MERGE INTO wr_a USING (SELECT k, max(w) AS w FROM wr_b WHERE k > 15 GROUP BY k) b ON wr_a.k = b.k "
        "WHEN MATCHED THEN DELETE",
        "MERGE INTO wr_a USING wr_c ON wr_a.v = wr_c.id WHEN MATCHED THEN UPDATE SET note = wr_c.name",
        "WITH s AS (SELECT k, max(w) AS w FROM wr_b GROUP BY k) MERGE INTO wr_a USING s ON wr_a.k = s.k "
        "WHEN NOT MATCHED THEN INSERT VALUES (s.k, s.w, 'n')",
        "MERGE INTO wr_c USING (SELECT id + 10 AS id FROM wr_c) s ON wr_c.id = s.id "
        "WHEN NOT MATCHED THEN INSERT VALUES (s.id, 'copy')",
    ],
)
def test_merge_from_a_co_located_or_copied_source_matches_one_database(db, sql: str) -> None:
    writes_as_one_database(db, sql)


def writes_as_one_database(db: Any, sql: str) -> None:
    """``sql`` on loaded tables: the reference's count, status and rows, each row on its key's shard,
    every copy alike."""
    pdb, ref, shards = db
    load(pdb, ref)
    cur, rcur = both(pdb, ref, sql)
    assert (cur.rowcount, cur.statusmessage) == (rcur.rowcount, rcur.statusmessage)
    for table in ("wr_a", "wr_c"):
        same_contents(pdb, ref, table)
    for index, rows in enumerate(on_each_shard(shards, "wr_a")):
        assert all(Modulo().shard_of(row[0], 3) == index for row in rows)
    copies = on_each_shard(shards, "wr_c")
    assert copies[0] == copies[1] == copies[2]


def test_upserts_on_the_shard_key_match_one_database(db) -> None:
    pdb, ref, _ = db
    load(pdb, ref)
    for sql in (
        "INSERT INTO wr_a VALUES (3, 99, 'new'), (41, 1, 'n') ON CONFLICT (k) DO NOTHING RETURNING k",
        "INSERT INTO wr_a VALUES (4, 99, 'new'), (42, 1, 'n') ON CONFLICT (k) DO UPDATE "
        "SET v = wr_a.v + excluded.v RETURNING k, v",
    ):
        cur, rcur = both(pdb, ref, sql)
        assert (cur.rowcount, sorted(cur.fetchall())) == (rcur.rowcount, sorted(rcur.fetchall()))
    same_contents(pdb, ref, "wr_a")


def test_insert_select_of_co_located_rows_runs_on_each_shard(db) -> None:
    pdb, ref, _shards = db
    load(pdb, ref)
    cur, rcur = both(
        pdb, ref, "INSERT INTO wr_a SELECT k, w, 'b' FROM wr_b WHERE w > 40 ON CONFLICT (k) DO NOTHING"
    )
    assert cur.rowcount == rcur.rowcount
    cur, rcur = both(pdb, ref, "INSERT INTO wr_h SELECT v, k FROM wr_a WHERE k < 3")
    same_contents(pdb, ref, "wr_a")
    same_contents(pdb, ref, "wr_h")


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO wr_a SELECT w + 100, k, 'moved' FROM wr_b WHERE w > 20",
        "INSERT INTO wr_a (k, note) SELECT k + 100, 'n' || count(*) FROM wr_b GROUP BY k",
        "INSERT INTO wr_a (k, v) SELECT id + 500, id FROM wr_c",
        "INSERT INTO wr_a (k, v) SELECT max(w), count(*) FROM wr_b",
        "INSERT INTO wr_a (k, v) SELECT w + 2000, k FROM wr_b ORDER BY w LIMIT 7",
        "INSERT INTO wr_c SELECT k + 100, 'from b' FROM wr_b GROUP BY k",
        "INSERT INTO wr_a SELECT w + 3000, k FROM wr_b ON CONFLICT (k) DO NOTHING",
    ],
)
def test_insert_select_of_rows_on_other_shards_goes_through_the_client(db, sql: str) -> None:
    writes_as_one_database(db, sql)


def test_insert_select_through_the_client_streams_in_batches(db) -> None:
    pdb, _ref, shards = db
    cur = pdb.cursor()
    cur.execute("INSERT INTO wr_b SELECT g, -g FROM generate_series(1, 30000) g")
    assert cur.rowcount == 30000
    cur.execute("INSERT INTO wr_a (k, v) SELECT w, k FROM wr_b")
    assert (cur.rowcount, cur.statusmessage) == (30000, "INSERT 0 30000")
    pdb.commit()
    for index, rows in enumerate(on_each_shard(shards, "wr_a")):
        assert len(rows) == 10000 and all(Modulo().shard_of(k, 3) == index and k == -v for k, v, _ in rows)


def test_a_copied_table_is_written_alike_on_every_copy(db) -> None:
    pdb, ref, shards = db
    cur, rcur = both(pdb, ref, "INSERT INTO wr_c VALUES (1, 'a'), (2, now()::text) RETURNING id")
    assert (cur.rowcount, cur.fetchall()) == (rcur.rowcount, rcur.fetchall()) == (2, [(1,), (2,)])
    pdb.commit()
    copies = on_each_shard(shards, "wr_c")
    assert copies[0] == copies[1] == copies[2] and len(copies[0]) == 2


def test_without_a_placement_an_insert_is_refused_and_the_union_cursor_runs_it_everywhere(db, sample) -> None:
    _, _, shards = db
    with contextlib.closing(parallel_connection.connect(sample.shard_dsns)) as pdb, pdb:
        with pytest.raises(NotSupportedError, match='merge="union"'):
            pdb.cursor().execute("INSERT INTO wr_b VALUES (1, 1)")
        pdb.rollback()
        pdb.cursor(merge="union").execute("INSERT INTO wr_b VALUES (1, 1)")
        pdb.commit()
    assert on_each_shard(shards, "wr_b") == [[(1, 1)]] * 3


def test_rows_without_a_key_take_it_from_the_placements_sequence_on_the_first_shard(db) -> None:
    pdb, ref, shards = db
    for conn in (pdb, ref):
        with conn.cursor() as cur:
            cur.execute("INSERT INTO wr_s (v) VALUES (10), (%s) RETURNING k, v", (20,))
            assert cur.fetchall() == [(1, 10), (2, 20)]
            cur.executemany("INSERT INTO wr_s (v) VALUES (%s)", [(30,), (40,)])
            got = psycopg2.extras.execute_values(
                cur, "INSERT INTO wr_s (v) VALUES %s RETURNING k", [(v,) for v in range(50, 120)], fetch=True
            )
            assert got == [(k,) for k in range(5, 75)]
    same_contents(pdb, ref, "wr_s")
    for index, rows in enumerate(on_each_shard(shards, "wr_s")):
        assert rows and all(Modulo().shard_of(k, 3) == index for k, _ in rows)
    with pytest.raises(NotSupportedError, match="shard key k"):
        pdb.cursor().execute("INSERT INTO wr_s VALUES (DEFAULT, 1)")


@pytest.mark.parametrize("commit", ["COMMIT", "END", "method"])
def test_a_commit_of_writes_on_several_shards_is_all_or_nothing(db, commit: str) -> None:
    _pdb, _ref, shards = db
    run_on_all(
        [c.dsn for c in shards],
        "CREATE TABLE wr_new (k int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v int)",
    )
    placement = Placement(sharded={"wr_new": ("k", Modulo())})
    with (
        contextlib.closing(parallel_connection.connect([c.dsn for c in shards], placement=placement)) as conn,
        conn,
    ):
        cur = conn.cursor()
        cur.execute("INSERT INTO wr_new VALUES (1, 1), (2, 2)")
        cur.execute("INSERT INTO wr_new VALUES (4, 4)")  # shard 1 again: checked only at commit
        cur.execute("INSERT INTO wr_new VALUES (1, 5)")
        with pytest.raises(psycopg2.IntegrityError):
            cur.execute(commit) if commit != "method" else conn.commit()
        conn.rollback()
        assert on_each_shard(shards, "wr_new") == [[], [], []]
        cur.execute("INSERT INTO wr_new VALUES (1, 1), (2, 2), (3, 3)")
        cur.execute(commit) if commit != "method" else conn.commit()
        assert cur.statusmessage == "COMMIT" or commit == "method"
    assert [len(rows) for rows in on_each_shard(shards, "wr_new")] == [1, 1, 1]


UUIDS = Placement(sharded={"wr_u": ("id", Hash()), "wr_t": ("k", Hash())}, copied=["wr_c"])


@pytest.fixture
def typed(db):
    _pdb, ref, shards = db
    every = [*[c.dsn for c in shards], ref.dsn]
    run_on_all(
        every, "CREATE TABLE wr_u (id uuid PRIMARY KEY, v int); CREATE TABLE wr_t (k text PRIMARY KEY, v int)"
    )
    conn = parallel_connection.connect([c.dsn for c in shards], placement=UUIDS)
    try:
        yield conn, ref, shards
    finally:
        conn.close()
        ref.rollback()
        run_on_all(every, "DROP TABLE IF EXISTS wr_u, wr_t")


def test_uuid_keys_in_any_spelling_land_on_their_shard_and_are_found_again(typed) -> None:
    pdb, ref, shards = typed
    spellings = [
        "00000000-0000-0000-0000-000000000005",
        "{00000000-0000-0000-0000-000000000006}",
        "00000000000000000000000000000007",
        "00000000-0000-0000-0000-00000000000A",
    ]
    for conn in (pdb, ref):
        with conn.cursor() as cur:
            cur.execute("INSERT INTO wr_u VALUES (%s, 1), ('" + spellings[1] + "', 2)", (spellings[0],))
            psycopg2.extras.execute_values(cur, "INSERT INTO wr_u VALUES %s", [(s, 3) for s in spellings[2:]])
            cur.execute("UPDATE wr_u SET v = v + 100 WHERE id = %s", (spellings[0].upper(),))
            assert cur.rowcount == 1
            cur.execute("DELETE FROM wr_u WHERE id IN (%s, %s)", (spellings[2], spellings[3].lower()))
            assert cur.rowcount == 2
    same_contents(pdb, ref, "wr_u")
    for index, rows in enumerate(on_each_shard(shards, "wr_u")):
        assert all(Hash().shard_of(uuid.UUID(r[0]), 3) == index for r in rows)


def test_a_key_cast_that_would_change_it_is_refused(typed) -> None:
    pdb, _, shards = typed
    sqls = (
        "INSERT INTO wr_t VALUES ('abcdef'::varchar(2), 1)",
        "INSERT INTO wr_t VALUES ('abc'::char, 1), ('zz', 2), ('qq', 3)",
    )
    refused_writing_nothing(pdb, shards, "wr_t", sqls, "cast")


def test_a_numeric_key_for_an_integer_column_is_placed_as_postgresql_rounds_it(db) -> None:
    pdb, ref, shards = db
    for conn in (pdb, ref):
        conn.cursor().execute(
            "INSERT INTO wr_a (k, v) VALUES (24.5, 1), (%s, 2), (%s, 3)", (Decimal("7.5"), 2.5)
        )
    same_contents(pdb, ref, "wr_a")
    for index, rows in enumerate(on_each_shard(shards, "wr_a")):
        assert all(Modulo().shard_of(r[0], 3) == index for r in rows)


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("DO $$ BEGIN INSERT INTO wr_a VALUES (3, 1, 'x'); END $$", "DO on several shards"),
        ("CALL wr_p(4)", "CALL on several shards"),
        ("INSERT INTO wr_a VALUES (3, 1, 'x'); COMMIT", "COMMIT or ROLLBACK among several"),
        ("BEGIN; INSERT INTO wr_a VALUES (3, 1, 'x')", "COMMIT or ROLLBACK among several"),
        ("INSERT INTO wr_a (k, v) VALUES (11, 1) RETURNING (SELECT count(*) FROM wr_b)", "subquery reading"),
    ],
)
def test_code_and_transaction_ends_that_each_shard_would_run_are_refused(db, sql: str, match: str) -> None:
    pdb, _, shards = db
    run_on_all(
        [c.dsn for c in shards],
        "CREATE PROCEDURE wr_p(n int) LANGUAGE sql AS $$ INSERT INTO wr_a VALUES (n, 0, 'p') $$",
    )
    try:
        with pytest.raises(NotSupportedError, match=match):
            pdb.cursor().execute(sql)
        pdb.rollback()
        assert on_each_shard(shards, "wr_a") == [[], [], []]
    finally:
        run_on_all([c.dsn for c in shards], "DROP PROCEDURE wr_p")


def test_several_statements_count_the_last_one_as_one_database(db) -> None:
    pdb, ref, _ = db
    load(pdb, ref)
    sql = "INSERT INTO wr_a (k, v) VALUES (100, 1), (101, 2); UPDATE wr_c SET name = 'z' WHERE id < 3"
    cur, rcur = both(pdb, ref, sql)
    assert (cur.rowcount, cur.statusmessage) == (rcur.rowcount, rcur.statusmessage) == (2, "UPDATE 2")


def test_executemany_in_autocommit_keeps_what_ran_before_an_error(db) -> None:
    pdb, ref, _shards = db
    for conn in (pdb, ref):
        conn.autocommit = True
        with pytest.raises(psycopg2.IntegrityError):
            conn.cursor().executemany(
                "INSERT INTO wr_a (k, v) VALUES (%s, %s)", [(3, 1), (4, 1), (3, 2), (5, 1)]
            )
    assert contents(pdb, "wr_a") == contents(ref, "wr_a") == [(3, 1, None), (4, 1, None)]


def test_without_a_placement_a_write_reading_other_sharded_rows_is_refused(db, sample) -> None:
    _, _, _shards = db
    with contextlib.closing(parallel_connection.connect(sample.shard_dsns)) as pdb, pdb:
        for sql in (
            "UPDATE wr_a SET v = wr_b.w FROM wr_b WHERE wr_b.w = wr_a.k",
            "DELETE FROM wr_a WHERE k IN (SELECT w FROM wr_b)",
            "DELETE FROM wr_a USING wr_b WHERE wr_b.w = wr_a.k",
        ):
            with pytest.raises(NotSupportedError, match="no declared shard key"):
                pdb.cursor().execute(sql)
    with (
        contextlib.closing(parallel_connection.connect(sample.shard_dsns, replicated_tables=["wr_c"])) as pdb,
        pdb,
    ):
        pdb.cursor().execute("UPDATE wr_a SET v = 1 WHERE v IN (SELECT id FROM wr_c)")  # a copy: fine


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO wr_d (id, name) VALUES (1, 'a')",
        "INSERT INTO wr_d VALUES (1, 'a')",
        "INSERT INTO wr_d VALUES (1, 'a', DEFAULT, now())",
        "INSERT INTO wr_d (id, name) SELECT id, name FROM wr_c",
        "UPDATE wr_d SET u = DEFAULT",
        "UPDATE wr_d SET n = DEFAULT",
    ],
)
def test_a_copied_tables_default_each_copy_would_compute_is_refused(sample, sql: str) -> None:
    run_on_all(
        sample.shard_dsns,
        "DROP TABLE IF EXISTS wr_d; CREATE TABLE wr_d (id int PRIMARY KEY, name text, "
        "u uuid DEFAULT gen_random_uuid(), at timestamptz DEFAULT now(), n int GENERATED ALWAYS AS IDENTITY, "
        "plain int DEFAULT 7); CREATE TABLE IF NOT EXISTS wr_c (id int PRIMARY KEY, name text)",
    )
    placement = Placement(copied=["wr_d", "wr_c"])
    try:
        with (
            contextlib.closing(parallel_connection.connect(sample.shard_dsns, placement=placement)) as pdb,
            pdb,
        ):
            with pytest.raises(NotSupportedError, match="default, which each copy"):
                pdb.cursor().execute(sql)
            pdb.rollback()
            # Every value each copy would compute given in the statement: the copies agree.
            pdb.cursor().execute(
                "INSERT INTO wr_d (id, name, u, at, n) OVERRIDING SYSTEM VALUE VALUES (2, 'b', %s, %s, 5)",
                (str(uuid.UUID(int=9)), "2026-01-01 00:00:00+00"),
            )
            pdb.commit()
        copies = [contents(psycopg2.connect(dsn), "wr_d") for dsn in sample.shard_dsns]
        assert copies[0] == copies[1] == copies[2] and len(copies[0]) == 1
    finally:
        run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS wr_d, wr_c")


def test_placement_check_reads_uuid_keys_also_when_the_application_registered_uuids(typed) -> None:
    pdb, _, _shards = typed
    psycopg2.extras.execute_values(
        pdb.cursor(), "INSERT INTO wr_u VALUES %s", [(str(uuid.UUID(int=i)), i) for i in range(30)]
    )
    pdb.commit()
    for conn in pdb.connections:
        psycopg2.extras.register_uuid(conn_or_curs=conn)
    report = pdb.check_placement(progress=False)
    assert report.ok, report.problems()


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO wr_a VALUES (1, 9, 'dup'), (2, 9, 'x'), (107, 9, 'y'), (4, 9, 'z'), (105, 9, 'w') "
        "ON CONFLICT (k) DO NOTHING RETURNING k, note",
        "INSERT INTO wr_a AS a VALUES (3, 9, 'u'), (106, 9, 'v'), (5, 9, 'w') "
        "ON CONFLICT (k) DO UPDATE SET note = excluded.note WHERE a.v > 4 RETURNING *",
        "INSERT INTO wr_a VALUES (%s, 1, 'p'), (108, 1, 'q'), (%s, 1, 'r') "
        "ON CONFLICT (k) DO NOTHING RETURNING k",
    ],
)
def test_an_upsert_returns_its_rows_in_the_input_order(db, sql: str) -> None:
    pdb, ref, _ = db
    load(pdb, ref)
    cur, rcur = both(pdb, ref, sql, (6, 109) if "%s" in sql else None)
    assert cur.fetchall() == rcur.fetchall()
    assert [c.name for c in cur.description] == [c.name for c in rcur.description]
    same_contents(pdb, ref, "wr_a")
