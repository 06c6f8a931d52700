"""Checking the data against a placement, and discovering a placement from the data, on real shards."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import pytest
from cli_runner import run

import parallel_connection
from parallel_connection.placement import Custom, Hash, Placement, Ranges
from parallel_connection.placement_check import (
    CheckProgress,
    PlacementReport,
    check_placement,
    discover_placement,
)

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
INTRANS = psycopg2.extensions.TRANSACTION_STATUS_INTRANS
SAMPLE = Placement(sharded={"orders": ("customer_id", "modulo")}, copied=["customers"])

ITEMS = "pc_check_items"  # sharded on id by modulo, negative ids too
COPY = "pc_check_copy"  # the same rows on every shard
HASHED = "pc_check_hashed"  # sharded on a bigint id by PostgreSQL's own hash partitioning
HASHED_TEXT = "pc_check_hashed_text"  # sharded on a text code, likewise
RANGED = "pc_check_ranged"  # id and tag placed by key ranges
NULLABLE = "pc_check_nullable"  # sharded on k by modulo, some k NULL
SCATTERED = "pc_check_scattered"  # rows on random shards: no key explains them
EMPTY = "pc_check_empty"
RANGES = Ranges((100, 200), (2, 0, 1))
TABLES = (ITEMS, COPY, HASHED, HASHED_TEXT, RANGED, NULLABLE, SCATTERED, EMPTY)
OURS = Placement(
    sharded={
        ITEMS: ("id", "modulo"),
        HASHED: ("id", "hash"),
        HASHED_TEXT: ("code", "hash"),
        RANGED: ("id", RANGES),
        NULLABLE: ("k", "modulo"),
    },
    copied=[COPY],
)

HASHED_IDS = [-(2**63), 2**63 - 1, -1, 0, *range(-150_000_000, 150_000_000, 1_000_003)]
CODES = [f"code-{g}" for g in range(250)] + [f"é{g}✓" for g in range(50)] + [""]
SCHEMA = f"""
DROP TABLE IF EXISTS {", ".join(TABLES)}, pc_check_hash_parent, pc_check_text_parent;
CREATE TABLE {ITEMS} (id integer PRIMARY KEY, label text, amount integer);
CREATE TABLE {COPY} (id integer PRIMARY KEY, name text, price double precision, at timestamptz);
CREATE TABLE {HASHED} (id bigint PRIMARY KEY, note text);
CREATE TABLE {HASHED_TEXT} (code text PRIMARY KEY, n integer);
CREATE TABLE {RANGED} (id integer, tag text);
CREATE TABLE {NULLABLE} (k integer);
CREATE TABLE {SCATTERED} (id integer, v integer, label text);
CREATE TABLE {EMPTY} (id integer PRIMARY KEY);
CREATE TABLE pc_check_hash_parent (id bigint) PARTITION BY HASH (id);
CREATE TABLE pc_check_text_parent (code text) PARTITION BY HASH (code);
"""
COPY_ROWS = f"""
INSERT INTO {COPY}
SELECT g, 'name ' || g, g / 7.0, timestamptz '2024-01-01 00:00+00' + g * interval '1 hour'
  FROM generate_series(%s, %s) AS g
"""


def on_shard(dsn: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on one shard, autocommit, bypassing the library; its rows, if any."""
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def load_shard(dsn: str, index: int, shards: int) -> None:
    on_shard(dsn, SCHEMA)
    on_shard(dsn, COPY_ROWS, (1, 200))
    items = [(g, f"item {g}", g % 7) for g in range(-30, 270) if g % shards == index]
    # id by Ranges((100, 200), (2, 0, 1)) and tag by Ranges(("m", "x"), (2, 0, 1)) agree
    prefix = {2: "a", 0: "n", 1: "y"}[index]
    ranged = [(g, f"{prefix}{g}") for g in range(300) if RANGES.shard_of(g, shards) == index]
    if index == 1:
        ranged.append((250, "é1"))  # after "x" by code point, whatever the database's collation says
    if index == 2:
        ranged.append((50, "Z5"))  # before "m" by code point
    nullable = [(k,) for k in range(100) if k % shards == index] + [(None,)] * (5 if index == 0 else 0)
    rng = random.Random(index)
    scattered = [(g, g % 5, f"s{g}") for g in range(300) if rng.randrange(shards) == 0]
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            psycopg2.extras.execute_values(cur, f"INSERT INTO {ITEMS} VALUES %s", items)
            psycopg2.extras.execute_values(cur, f"INSERT INTO {RANGED} VALUES %s", ranged)
            psycopg2.extras.execute_values(cur, f"INSERT INTO {NULLABLE} VALUES %s", nullable)
            psycopg2.extras.execute_values(cur, f"INSERT INTO {SCATTERED} VALUES %s", scattered)
            # PostgreSQL itself says which rows its hash partitioning puts in remainder `index`.
            cur.execute(
                f"INSERT INTO {HASHED} SELECT v, 'note ' || v FROM unnest(%s::bigint[]) AS v"
                " WHERE satisfies_hash_partition('pc_check_hash_parent'::regclass, %s, %s, v)",
                (HASHED_IDS, shards, index),
            )
            cur.execute(
                f"INSERT INTO {HASHED_TEXT} SELECT v, length(v) FROM unnest(%s::text[]) AS v"
                " WHERE satisfies_hash_partition('pc_check_text_parent'::regclass, %s, %s, v)",
                (CODES, shards, index),
            )
    finally:
        conn.close()


@pytest.fixture(scope="module")
def tables(sample) -> Iterator[list[str]]:
    """Our own tables on every shard (orders and customers stay untouched), dropped at the end."""
    dsns = sample.shard_dsns
    for index, dsn in enumerate(dsns):
        load_shard(dsn, index, len(dsns))
    yield dsns
    for dsn in dsns:
        on_shard(dsn, f"DROP TABLE IF EXISTS {', '.join(TABLES)}, pc_check_hash_parent, pc_check_text_parent")


def connect(dsns: list[str], placement: Placement | None) -> parallel_connection.ParallelConnection:
    return parallel_connection.connect(dsns, placement=placement)


def check(dsns: list[str], placement: Placement, **options: Any) -> PlacementReport:
    pdb = connect(dsns, placement)
    try:
        return pdb.check_placement(progress=False, **options)
    finally:
        pdb.close()


def where(dsns: list[str], index: int) -> str:
    """How reports name shard ``index``."""
    pdb = connect(dsns, None)
    try:
        return str(pdb.shard_set.infos[index])
    finally:
        pdb.close()


# -- check -----------------------------------------------------------------------------------------


def test_the_sample_follows_its_placement(sample):
    report = check(sample.shard_dsns, SAMPLE)
    assert report.ok, report.problems()
    assert report.problems() == []
    orders, customers = report.table("orders"), report.table("customers")
    assert (orders.kind, customers.kind) == ("sharded", "copied")
    assert sum(orders.counts) == 3000 and orders.misplaced == (0, 0, 0)
    assert customers.counts == (5000, 5000, 5000)
    assert len(set(customers.checksums)) == 1
    assert orders.describe().startswith("orders: ok, sharded by modulo(customer_id), 3000 rows")
    assert report.summary().splitlines()[0] == "placement check: 2 tables on 3 shards, all ok"
    assert repr(report) == "PlacementReport(ok=True, tables=2, problems=0)"


def test_our_tables_follow_their_placement_whatever_the_function(tables):
    report = check(tables, OURS)
    assert report.ok, report.problems()
    assert sum(report.table(HASHED).counts) == len(HASHED_IDS)
    assert sum(report.table(HASHED_TEXT).counts) == len(CODES)
    assert sum(report.table(ITEMS).counts) == 300


def test_custom_functions_run_in_python_and_text_ranges_compare_by_code_point(tables):
    placement = Placement(
        sharded={ITEMS: ("id", Custom(lambda key: key % 3)), RANGED: ("tag", Ranges(("m", "x"), (2, 0, 1)))}
    )
    report = check(tables, placement)
    assert report.ok, report.problems()
    assert report.table(ITEMS).rule.endswith("<locals>.<lambda>(id)")
    assert report.table(RANGED).rule == "ranges(tag)"


def test_a_row_on_the_wrong_shard_is_named_with_its_table_shard_and_count(tables):
    on_shard(tables[1], f"INSERT INTO {ITEMS} VALUES (3000, 'stray', 0), (3003, 'stray', 0), (3004, '', 0)")
    on_shard(tables[2], f"INSERT INTO {ITEMS} VALUES (3006, 'stray', 0), (3007, 'stray', 0)")
    try:
        report = check(tables, OURS)
    finally:
        on_shard(tables[1], f"DELETE FROM {ITEMS} WHERE id >= 3000")
        on_shard(tables[2], f"DELETE FROM {ITEMS} WHERE id >= 3000")
    assert not report.ok
    items = report.table(ITEMS)
    assert items.misplaced == (0, 2, 2)
    assert items.shards[1].targets[0] == 2
    assert report.problems() == [
        f"{ITEMS}: 2 rows on {where(tables, 1)} belong on {where(tables, 0)} by modulo(id)",
        f"{ITEMS}: 2 rows on {where(tables, 2)} belong on other shards by modulo(id): "
        f"1 on {where(tables, 0)}, 1 on {where(tables, 1)}",
    ]
    assert report.lines()[0] == report.problems()[0]
    assert "1 with problems" in report.summary()


def test_a_hash_sharded_row_on_the_wrong_shard_is_reported(tables):
    key = next(k for k in range(10**6, 10**7) if Hash().shard_of(k, 3) == 2)
    on_shard(tables[0], f"INSERT INTO {HASHED} VALUES (%s, 'stray')", (key,))
    code = next(c for c in (f"stray {g}" for g in range(100)) if Hash().shard_of(c, 3) == 1)
    on_shard(tables[0], f"INSERT INTO {HASHED_TEXT} VALUES (%s, 0)", (code,))
    try:
        report = check(tables, OURS)
    finally:
        on_shard(tables[0], f"DELETE FROM {HASHED} WHERE id = %s", (key,))
        on_shard(tables[0], f"DELETE FROM {HASHED_TEXT} WHERE code = %s", (code,))
    assert report.problems() == [
        f"{HASHED}: 1 row on {where(tables, 0)} belongs on {where(tables, 2)} by hash(id)",
        f"{HASHED_TEXT}: 1 row on {where(tables, 0)} belongs on {where(tables, 1)} by hash(code)",
    ]


def test_negative_keys_follow_the_mathematical_modulo(tables):
    # id -1 lives on shard 2 (-1 mod 3), where PostgreSQL's -1 % 3 = -1 would put it nowhere
    rows = on_shard(tables[2], f"SELECT count(*) FROM {ITEMS} WHERE id < 0")
    assert rows[0][0] == 10
    assert check(tables, OURS).table(ITEMS).ok


def test_a_copy_that_differs_on_one_shard_is_reported(tables):
    on_shard(tables[2], f"DELETE FROM {COPY} WHERE id = 7")
    on_shard(tables[1], f"UPDATE {COPY} SET name = 'changed' WHERE id = 9")
    try:
        report = check(tables, Placement(copied=[COPY]))
    finally:
        on_shard(tables[2], COPY_ROWS, (7, 7))
        on_shard(tables[1], f"UPDATE {COPY} SET name = 'name 9' WHERE id = 9")
    copy = report.table(COPY)
    assert copy.counts == (200, 200, 199)
    assert len(set(copy.checksums)) == 3
    assert report.problems() == [
        f"{COPY}: {where(tables, 1)} holds other rows than {where(tables, 0)} "
        "(200 rows each, other checksum)",
        f"{COPY}: {where(tables, 2)} has 199 rows, {where(tables, 0)} has 200",
    ]
    assert check(tables, Placement(copied=[COPY])).ok  # restored


def test_the_majority_is_the_reference_of_a_copy(tables):
    on_shard(tables[0], f"DELETE FROM {COPY} WHERE id = 200")
    try:
        report = check(tables, Placement(copied=[COPY]))
    finally:
        on_shard(tables[0], COPY_ROWS, (200, 200))
    others = f"shards {where(tables, 1).removeprefix('shard ')} and {where(tables, 2).removeprefix('shard ')}"
    assert report.problems() == [f"{COPY}: {where(tables, 0)} has 199 rows, {others} have 200"]


def test_a_table_missing_on_a_shard_is_reported_not_raised(tables):
    for dsn in tables[:2]:
        on_shard(dsn, "CREATE TABLE pc_check_partial (id integer)")
    try:
        report = check(
            tables,
            Placement(
                sharded={"pc_check_nowhere": "id", COPY: "nope"},
                copied=["pc_check_partial", "public.pc_check_gone"],
            ),
        )
    finally:
        for dsn in tables[:2]:
            on_shard(dsn, "DROP TABLE pc_check_partial")
    assert report.problems() == [
        "pc_check_nowhere: no such table on any shard",
        f"{COPY}: no column nope on any shard",
        f"pc_check_partial: no such table on {where(tables, 2)}",
        "public.pc_check_gone: no such table on any shard",
    ]


def test_a_table_without_select_privilege_is_reported_not_raised(tables):
    for dsn in tables:
        on_shard(dsn, "DROP ROLE IF EXISTS pc_check_reader")
        on_shard(dsn, "CREATE ROLE pc_check_reader LOGIN")
        on_shard(dsn, "GRANT SELECT ON customers TO pc_check_reader")
        on_shard(dsn, f"GRANT SELECT (amount) ON {ITEMS} TO pc_check_reader")
    dsns = [psycopg2.extensions.make_dsn(dsn, user="pc_check_reader") for dsn in tables]
    try:
        report = check(dsns, Placement(sharded={ITEMS: "id"}, copied=[COPY, "customers"]))
        pdb = connect(dsns, None)
        try:
            found = discover_placement(pdb.shard_set, progress=False, tables=[COPY, "customers"])
        finally:
            pdb.close()
    finally:
        for dsn in tables:
            on_shard(dsn, "DROP OWNED BY pc_check_reader")
            on_shard(dsn, "DROP ROLE pc_check_reader")
    assert report.problems() == [
        f"{ITEMS}: no SELECT privilege on any shard",
        f"{COPY}: no SELECT privilege on any shard",
    ]
    assert found.placement == Placement(copied=["customers"])
    assert found.undecided == [f"{COPY}: no SELECT privilege on any shard"]


def test_null_keys_are_counted_apart_and_are_no_problem(tables):
    nullable = check(tables, OURS).table(NULLABLE)
    assert nullable.ok
    assert [s.nulls for s in nullable.shards] == [5, 0, 0]
    assert nullable.counts == (39, 33, 33)
    assert "5 with a NULL key" in nullable.describe()


def test_keys_the_function_cannot_map_are_reported(tables):
    report = check(tables, Placement(sharded={RANGED: ("tag", "modulo")}))
    lines = report.problems()
    assert len(lines) == 3
    assert lines[0].startswith(f"{RANGED}: 100 rows on {where(tables, 0)} have a key modulo(tag) can't map")
    assert "needs an integer key" in lines[0]


def test_the_connection_is_left_as_found(tables):
    pdb = connect(tables, OURS)
    try:
        conns = pdb.shard_set.connections
        pdb.check_placement(progress=False)
        assert [c.get_transaction_status() for c in conns] == [IDLE] * 3
        # In a transaction on shard 0: it goes on, with its own settings, after the check.
        with conns[0].cursor() as cur:
            cur.execute("SET LOCAL TimeZone = 'Asia/Tokyo'")
            cur.execute("CREATE TEMP TABLE pc_check_mine (x integer)")
        assert pdb.check_placement(progress=False).ok
        assert conns[0].get_transaction_status() == INTRANS
        assert conns[1].get_transaction_status() == IDLE
        with conns[0].cursor() as cur:
            cur.execute("SHOW TimeZone")
            assert cur.fetchone() == ("Asia/Tokyo",)
            cur.execute("SELECT count(*) FROM pc_check_mine")
        pdb.rollback()
        pdb.autocommit = True
        assert pdb.check_placement(progress=False).ok
        assert pdb.autocommit and all(c.autocommit for c in conns)
        pdb.autocommit = False
        with conns[1].cursor() as cur, pytest.raises(psycopg2.Error):
            cur.execute("SELECT nope")
        with pytest.raises(psycopg2.InternalError, match=r"shard 1 .*aborted: roll back first"):
            pdb.check_placement(progress=False)
        pdb.rollback()
        assert pdb.check_placement(progress=False).ok
    finally:
        pdb.close()


def test_progress_is_reported_per_table_and_shard(tables, capsys):
    seen: list[CheckProgress] = []
    pdb = connect(tables, OURS)
    try:
        pdb.check_placement(progress=seen.append)
        assert len(seen) == 6 * 3
        assert [p.done for p in seen] == list(range(1, 19))
        assert {p.total for p in seen} == {18}
        names = [*OURS.copied, *(t.name for t in OURS.sharded)]
        assert {(p.table, p.shard) for p in seen} == {(name, i) for name in names for i in range(3)}
        pdb.check_placement(progress=True)
        assert "placement check" in capsys.readouterr().err
    finally:
        pdb.close()


def test_checking_needs_a_placement(sample):
    pdb = connect(sample.shard_dsns, None)
    try:
        with pytest.raises(psycopg2.ProgrammingError, match="no placement"):
            check_placement(pdb.shard_set)
    finally:
        pdb.close()


# -- discover ----------------------------------------------------------------------------------------


def test_discover_proposes_copies_and_keys(tables):
    pdb = connect(tables, None)
    try:
        found = discover_placement(
            pdb.shard_set, progress=False, tables=["orders", "customers", *TABLES, "pc_check_nowhere"]
        )
    finally:
        pdb.close()
    assert found.placement == Placement(
        sharded={
            "orders": ("customer_id", "modulo"),
            ITEMS: ("id", "modulo"),
            HASHED: ("id", "hash"),
            HASHED_TEXT: ("code", "hash"),
            NULLABLE: ("k", "modulo"),
        },
        copied=["customers", COPY],
    )
    left_out = {line.split(":")[0]: line for line in found.undecided}
    assert set(left_out) == {RANGED, SCATTERED, EMPTY, "pc_check_nowhere"}
    assert "empty on every shard" in left_out[EMPTY]
    assert "no such table" in left_out["pc_check_nowhere"]
    assert "closest:" in left_out[SCATTERED]
    assert f"{NULLABLE}: 5 rows with a NULL k (on no shard by key)" in found.notes
    text = found.to_toml()
    assert Placement.from_toml(text) == found.placement
    assert f"#   {left_out[EMPTY]}" in text.splitlines()
    assert repr(found) == "Discovery(sharded=5, copied=2, undecided=4, shards=3)"


def test_discover_agrees_with_the_check(tables):
    pdb = connect(tables, None)
    try:
        found = discover_placement(pdb.shard_set, progress=False, tables=TABLES)
        pdb.shard_set.set_placement(found.placement)
        assert pdb.check_placement(progress=False).ok
    finally:
        pdb.close()


def test_discover_reads_every_table_by_default(tables):
    seen: list[CheckProgress] = []
    pdb = connect(tables, None)
    try:
        found = discover_placement(pdb.shard_set, progress=seen.append)
    finally:
        pdb.close()
    assert ("orders", "customer_id") in {(t.name, t.key) for t in found.placement.sharded}
    assert "customers" in found.placement.copied
    assert seen and seen[-1].done == seen[-1].total


def test_one_stray_row_leaves_a_table_undecided(tables):
    code = next(c for c in (f"odd {g}" for g in range(100)) if Hash().shard_of(c, 3) == 1)
    on_shard(tables[0], f"INSERT INTO {HASHED_TEXT} VALUES (%s, 0)", (code,))
    pdb = connect(tables, None)
    try:
        found = discover_placement(pdb.shard_set, progress=False, tables=[HASHED_TEXT])
    finally:
        pdb.close()
        on_shard(tables[0], f"DELETE FROM {HASHED_TEXT} WHERE code = %s", (code,))
    assert found.placement.sharded == ()
    assert found.undecided[0].startswith(f"{HASHED_TEXT}: differs between shards")


# -- command line -------------------------------------------------------------------------------------


def test_cli_placement_check_exits_0_when_all_is_ok(tables, tmp_path):
    path = tmp_path / "placement.toml"
    path.write_text(SAMPLE.to_toml())
    ran = run(["placement", "check", "--placement", str(path)], dsns=tables)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "orders: ok, sharded by modulo(customer_id), 3000 rows (1000 + 999 + 1001)",
        "customers: ok, copied, 5000 rows on every shard",
    ]
    assert ran.stderr == "parallel-connection: placement check: 2 tables on 3 shards, all ok\n"


def test_cli_placement_check_exits_10_listing_the_problems(tables, tmp_path):
    path = tmp_path / "placement.toml"
    path.write_text(Placement(sharded={ITEMS: ("id", "hash")}, copied=["customers"]).to_toml())
    ran = run(["--placement", str(path), "placement", "check"], dsns=tables)
    assert ran.returncode == 10, ran.stderr
    lines = ran.stdout.splitlines()
    assert len(lines) == 4
    assert all(line.startswith(f"{ITEMS}: ") and "by hash(id)" in line for line in lines[:3])
    assert lines[3] == "customers: ok, copied, 5000 rows on every shard"
    assert ran.stderr == (
        "parallel-connection: placement problems: 1 of 2 tables on 3 shards does not follow the placement "
        "(the lines above say where)\n"
    )


def test_cli_placement_check_needs_a_placement(tables):
    ran = run(["placement", "check"], dsns=tables)
    assert ran.returncode == 2
    assert "needs --placement FILE" in ran.stderr


def test_cli_placement_discover_prints_toml_that_reads_back(tables, tmp_path):
    tables_given = ["--table", "orders", "--table", "customers", "--table", EMPTY]
    ran = run(["placement", "discover", *tables_given], dsns=tables)
    assert ran.returncode == 0, ran.stderr
    assert Placement.from_toml(ran.stdout) == SAMPLE
    assert f"#   {EMPTY}: empty on every shard" in ran.stdout
    assert "1 sharded, 1 copied, 1 left out" in ran.stderr
    path = tmp_path / "proposed.toml"
    ran = run(["placement", "discover", "--output", str(path), "--table", "orders"], dsns=tables)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == ""
    assert Placement.from_file(path) == Placement(sharded={"orders": "customer_id"})


def test_cli_query_takes_a_placement(tables, tmp_path):
    path = tmp_path / "placement.toml"
    path.write_text(SAMPLE.to_toml())
    statement = "SELECT count(*) AS n FROM orders JOIN customers ON customers.id = orders.customer_id"
    ran = run(["query", "--placement", str(path), statement], dsns=tables)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "n\n3000\n"
    ran = run(["--placement", str(path), "query", statement], dsns=tables)
    assert (ran.returncode, ran.stdout) == (0, "n\n3000\n")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read --placement"),
        ("copied = [", "not valid TOML"),
        ('[sharded.orders]\nfunction = "modulo"\n', "missing key"),
        ('[sharded.orders]\nkey = "id"\nfunction = "ranges"\nsplits = [1, 2, 3]\n', "only 3 shards"),
    ],
)
def test_cli_a_bad_placement_file_exits_2_naming_it(tables, tmp_path, content, problem):
    path = tmp_path / "bad.toml"
    if content is not None:
        path.write_text(content)
    for command in (["query", "SELECT 1"], ["scan", "orders", "id", "SELECT 1"], ["placement", "check"]):
        ran = run([*command, "--placement", str(path)], dsns=tables)
        assert ran.returncode == 2, ran
        assert ran.stdout == ""
        assert ran.stderr.startswith("parallel-connection: usage: ")
        assert str(path) in ran.stderr and problem in ran.stderr
        assert len(ran.stderr.splitlines()) == 1


def test_cli_placement_is_refused_where_it_means_nothing(tables, tmp_path):
    ran = run(["--placement", str(tmp_path / "p.toml"), "placement", "discover"], dsns=tables)
    assert ran.returncode == 2
    assert "--placement is for query, scan and placement check" in ran.stderr
