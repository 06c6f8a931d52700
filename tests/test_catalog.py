"""Catalog facts read from real shards: name resolution, views, collations, types, settings, the stamp."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import psycopg2
import psycopg2.extensions
import pytest
from conftest import run_on_all
from psycopg2 import sql

from parallel_connection.catalog import (
    Catalog,
    StampReader,
    catalog_query,
    combine,
    combine_stamps,
    read_catalog,
    read_stamp,
    schema_differences,
    settings_differences,
)

Connection = psycopg2.extensions.connection


def _connect(dsn: str, autocommit: bool = True) -> Connection:
    conn = psycopg2.connect(dsn)
    conn.autocommit = autocommit
    return conn


def _run(conn: Connection, *statements: str) -> None:
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


def _catalog(conn: Connection) -> Catalog:
    with conn.cursor() as cur:
        return read_catalog(cur)


def _stamp(conn: Connection) -> tuple[int, ...]:
    with conn.cursor() as cur:
        return read_stamp(cur)


@pytest.fixture
def schema(sample) -> Iterator[str]:
    """A schema of this test's own on every shard, dropped afterwards."""
    name = f"pc_catalog_{uuid.uuid4().hex[:8]}"
    run_on_all(sample.shard_dsns, f"CREATE SCHEMA {name}")
    yield name
    run_on_all(sample.shard_dsns, f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
def conn(sample) -> Iterator[Connection]:
    """An autocommit connection to shard 0."""
    conn = _connect(sample.shard_dsns[0])
    yield conn
    conn.close()


@pytest.fixture
def other(sample) -> Iterator[Connection]:
    """Another session on shard 0."""
    conn = _connect(sample.shard_dsns[0])
    yield conn
    conn.close()


def _icu_collation(conn: Connection, schema: str) -> str:
    """A case-insensitive ICU collation in ``schema`` (skips the test on a build without ICU)."""
    with conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT FROM pg_collation WHERE collprovider = 'i')")
        if not cur.fetchone()[0]:
            pytest.skip("this PostgreSQL build has no ICU (configure --with-icu): no ICU collations")
        cur.execute(
            f"CREATE COLLATION {schema}.ci"
            " (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
        )
    return "ci"


# -- one shard's facts ------------------------------------------------------------------------------


class _CountingCursor:
    """A cursor that counts the statements it runs."""

    def __init__(self, cursor: psycopg2.extensions.cursor) -> None:
        self.cursor = cursor
        self.statements: list[str] = []

    def execute(self, sql: str, params: object = None) -> None:
        self.statements.append(sql)
        self.cursor.execute(sql, params)

    def fetchone(self) -> tuple[object, ...] | None:
        return self.cursor.fetchone()


def test_one_select_reads_the_sample_tables(conn):
    with conn.cursor() as cur:
        counting = _CountingCursor(cur)
        catalog = read_catalog(counting)
    assert counting.statements == [catalog_query()]
    orders = catalog.resolve(None, "orders")
    assert orders is not None and (orders.schema, orders.kind, orders.view_sql) == ("public", "table", None)
    columns = {c.name: c for c in orders.columns}
    assert [c.name for c in orders.columns][:3] == ["id", "customer_id", "status"]
    assert (columns["amount"].type_name, columns["amount"].type_oid) == ("numeric(12,2)", 1700)
    assert columns["tags"].type_name == "text[]"
    assert columns["status"].collation is None and columns["status"].deterministic
    assert catalog.qualified(None, "customers") == ("public", "customers")
    assert catalog.text_order_c
    assert {"sum", "count", "row_number", "string_agg"} <= catalog.aggregates
    assert "lower" in catalog.functions and "lower" not in catalog.aggregates
    assert {"random", "nextval", "clock_timestamp"} <= catalog.volatile and "lower" not in catalog.volatile
    assert catalog.collations["C"].is_c and catalog.collations["POSIX"].is_c
    assert catalog.collations["ucs_basic"].is_c and catalog.collations["default"].provider == "d"
    assert catalog.settings["server_encoding"] == "UTF8" and "TimeZone" in catalog.settings


def test_system_relations_are_known_without_columns(conn):
    catalog = _catalog(conn)
    pg_class = catalog.resolve(None, "pg_class")
    assert pg_class is not None and (pg_class.schema, pg_class.kind, pg_class.columns) == (
        "pg_catalog",
        "table",
        (),
    )
    tables = catalog.resolve("information_schema", "tables")
    assert tables is not None and tables.kind == "view" and tables.view_sql is None
    assert catalog.resolve(None, "tables") is None
    assert catalog.relations["pg_catalog", "pg_class_oid_index"].kind == "index"
    assert catalog.is_system("pg_catalog") and catalog.is_system("information_schema")
    assert catalog.is_system("pg_toast") and catalog.is_system("pg_toast_temp_3")
    assert not catalog.is_system("public") and not catalog.is_system("pg_temp_3")


def test_bare_names_follow_the_search_path(conn, schema):
    _run(
        conn,
        f"CREATE SCHEMA {schema}_b",
        f"CREATE TABLE {schema}.t (a int)",
        f"CREATE TABLE {schema}_b.t (b int)",
        f"CREATE TABLE {schema}.only_a (a int)",
        f"CREATE TABLE {schema}.pg_class (a int)",
    )
    try:
        _run(conn, f"SET search_path = {schema}_b, {schema}")
        catalog = _catalog(conn)
        assert catalog.search_path == ("pg_catalog", f"{schema}_b", schema)
        assert catalog.qualified(None, "t") == (f"{schema}_b", "t")
        assert catalog.qualified(schema, "t") == (schema, "t")
        assert catalog.qualified(None, "only_a") == (schema, "only_a")
        assert catalog.qualified(None, "orders") is None
        assert catalog.qualified("public", "orders") == ("public", "orders")
        assert catalog.qualified(None, "pg_class") == ("pg_catalog", "pg_class")
        assert catalog.qualified("nosuch", "t") is None

        _run(conn, f"SET search_path = {schema}, pg_catalog")
        catalog = _catalog(conn)
        assert catalog.search_path == (schema, "pg_catalog")
        assert catalog.qualified(None, "pg_class") == (schema, "pg_class")
    finally:
        _run(conn, f"DROP SCHEMA {schema}_b CASCADE")


def test_search_path_with_user_quoted_and_missing_schemas(conn, schema):
    quoted = f"{schema} Mixed"
    _run(conn, f'CREATE SCHEMA "{quoted}"', f'CREATE TABLE "{quoted}"."Odd Name" (a int)')
    try:
        _run(conn, f'SET search_path = "$user", "no such schema", "{quoted}", public')
        catalog = _catalog(conn)
        assert catalog.search_path == ("pg_catalog", quoted, "public")
        assert catalog.settings["search_path"] == f'"$user", "no such schema", "{quoted}", public'
        assert catalog.qualified(None, "Odd Name") == (quoted, "Odd Name")
        assert catalog.qualified(None, "odd name") is None
        assert catalog.qualified(None, "orders") == ("public", "orders")
        # A schema named like the user joins "$user"'s place; rolled back, so no other session sees it.
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            user = cur.fetchone()[0]
        _run(conn, f'CREATE SCHEMA "{user}"', f'CREATE TABLE "{user}".orders (x int)')
        catalog = _catalog(conn)
        assert catalog.search_path == ("pg_catalog", user, quoted, "public")
        assert catalog.qualified(None, "orders") == (user, "orders")
        conn.rollback()
    finally:
        conn.autocommit = True
        _run(conn, f'DROP SCHEMA "{quoted}" CASCADE')


def test_the_session_temporary_schema_comes_first(conn, schema):
    _run(conn, f"SET search_path = {schema}", f"CREATE TABLE {schema}.shadowed (a int)")
    assert _catalog(conn).temp_schema is None
    _run(conn, "CREATE TEMP TABLE shadowed (b text)")
    catalog = _catalog(conn)
    temp = catalog.temp_schema
    assert temp is not None and temp.startswith("pg_temp_") and catalog.search_path[0] == temp
    relation = catalog.resolve(None, "shadowed")
    assert relation is not None and relation.schema == temp and relation.columns[0].name == "b"
    assert catalog.qualified("pg_temp", "shadowed") == (temp, "shadowed")
    assert catalog.qualified(schema, "shadowed") == (schema, "shadowed")

    _run(conn, f"SET search_path = {schema}, pg_temp")
    catalog = _catalog(conn)
    assert catalog.search_path == ("pg_catalog", schema, temp)
    assert catalog.qualified(None, "shadowed") == (schema, "shadowed")
    _run(conn, "DROP TABLE pg_temp.shadowed")


def test_other_sessions_temporary_tables_are_invisible(conn, other):
    _run(other, "CREATE TEMP TABLE pc_catalog_someone_elses (a int)")
    catalog = _catalog(conn)
    assert catalog.resolve(None, "pc_catalog_someone_elses") is None
    assert not any(name == "pc_catalog_someone_elses" for _, name in catalog.relations)


def test_views_carry_their_sql(conn, schema):
    _run(
        conn,
        f"CREATE VIEW {schema}.paid AS SELECT id, amount FROM public.orders WHERE paid",
        f"CREATE MATERIALIZED VIEW {schema}.totals AS"
        " SELECT customer_id, sum(amount) FROM public.orders GROUP BY 1",
    )
    catalog = _catalog(conn)
    view = catalog.relations[schema, "paid"]
    assert view.kind == "view" and [c.name for c in view.columns] == ["id", "amount"]
    assert view.view_sql is not None and "WHERE orders.paid" in view.view_sql
    totals = catalog.relations[schema, "totals"]
    assert (totals.kind, totals.view_sql, [c.name for c in totals.columns]) == (
        "matview",
        None,
        ["customer_id", "sum"],
    )

    _run(conn, f"CREATE OR REPLACE VIEW {schema}.paid AS SELECT id, amount FROM public.orders WHERE NOT paid")
    view = _catalog(conn).relations[schema, "paid"]
    assert view.view_sql is not None and "NOT orders.paid" in view.view_sql


def test_an_icu_collated_column_is_nondeterministic(conn, schema):
    ci = _icu_collation(conn, schema)
    _run(
        conn,
        f'CREATE TABLE {schema}.people (name text COLLATE {schema}.{ci}, code text COLLATE "C", note text)',
    )
    catalog = _catalog(conn)
    name, code, note = catalog.relations[schema, "people"].columns
    assert (name.collation, name.deterministic, name.declared_collation) == (ci, False, ci)
    assert (code.collation, code.deterministic, code.declared_collation) == (None, True, "C")
    assert (note.collation, note.deterministic, note.declared_collation) == (None, True, None)
    fact = catalog.qualified_collations[schema, ci]
    assert (fact.provider, fact.deterministic, fact.is_c) == ("i", False, False)
    assert catalog.resolve_collation(schema, ci) == fact and catalog.resolve_collation(None, ci) is None
    _run(conn, f"SET search_path = public, {schema}")
    assert _catalog(conn).collations[ci] == fact


def test_a_domain_carries_its_collation_to_columns(conn, schema):
    ci = _icu_collation(conn, schema)
    _run(
        conn,
        f"CREATE DOMAIN {schema}.ci_text AS text COLLATE {schema}.{ci}",
        f'CREATE DOMAIN {schema}.c_text AS text COLLATE "C"',
        f"CREATE DOMAIN {schema}.positive AS integer CHECK (VALUE > 0)",
        f"CREATE TABLE {schema}.tagged (tag {schema}.ci_text, code {schema}.c_text, n {schema}.positive)",
    )
    catalog = _catalog(conn)
    domain = catalog.types[schema, "ci_text"]
    assert (domain.kind, domain.base_oid, domain.collation, domain.deterministic) == ("domain", 25, ci, False)
    assert catalog.types[schema, "c_text"].collation is None
    positive = catalog.types[schema, "positive"]
    assert (positive.base_oid, positive.collation, positive.deterministic) == (23, None, True)
    tag, code, n = catalog.relations[schema, "tagged"].columns
    assert (tag.type_name, tag.collation, tag.deterministic) == (f"{schema}.ci_text", ci, False)
    assert (code.collation, n.collation) == (None, None)
    assert catalog.resolve_type(schema, "ci_text") == domain and catalog.resolve_type(None, "ci_text") is None
    _run(conn, f"SET search_path = {schema}")
    assert _catalog(conn).resolve_type(None, "ci_text") == domain


def test_system_types_shadow_user_types_of_the_same_name(conn, schema):
    _run(conn, f"CREATE DOMAIN {schema}.int4 AS bigint", f"SET search_path = {schema}")
    catalog = _catalog(conn)
    assert ("pg_catalog", "int4") in catalog.system_types
    assert catalog.resolve_type(None, "int4") is None
    fact = catalog.resolve_type(schema, "int4")
    assert fact is not None and fact.kind == "domain" and fact.base_oid == 20


def test_enums_ranges_and_composites(conn, schema):
    _run(
        conn,
        f"CREATE TYPE {schema}.mood AS ENUM ('sad', 'ok')",
        f"ALTER TYPE {schema}.mood ADD VALUE 'meh' BEFORE 'ok'",
        f"CREATE TYPE {schema}.span AS RANGE (subtype = float8)",
        f"CREATE TYPE {schema}.pair AS (a int, b text)",
    )
    catalog = _catalog(conn)
    mood = catalog.types[schema, "mood"]
    assert (mood.kind, mood.labels) == ("enum", ("sad", "meh", "ok"))
    assert (catalog.types[schema, "span"].kind, catalog.types[schema, "span"].base_oid) == ("range", 701)
    assert catalog.types[schema, "pair"].kind == "composite"
    assert [c.name for c in catalog.relations[schema, "pair"].columns] == ["a", "b"]
    assert not any(name.startswith("_") for s, name in catalog.types if s == schema)


def test_user_aggregates_and_volatile_functions(conn, schema):
    _run(
        conn,
        f"CREATE AGGREGATE {schema}.pc_total(integer) (sfunc = int4pl, stype = integer)",
        f"CREATE FUNCTION {schema}.pc_roll() RETURNS float8 LANGUAGE sql VOLATILE AS 'SELECT random()'",
        f"CREATE FUNCTION {schema}.pc_twice(integer) RETURNS integer LANGUAGE sql IMMUTABLE"
        " AS 'SELECT $1 * 2'",
    )
    catalog = _catalog(conn)
    assert "pc_total" in catalog.aggregates and (schema, "pc_total") in catalog.user_aggregates
    assert not any(s == "pg_catalog" for s, _ in catalog.user_aggregates)
    assert {"pc_total", "pc_roll", "pc_twice"} <= catalog.functions
    assert "pc_roll" in catalog.volatile and "pc_twice" not in catalog.volatile


def test_reading_in_a_transaction_sees_its_own_changes_and_ends_nothing(sample, schema):
    conn = _connect(sample.shard_dsns[0], autocommit=False)
    try:
        _run(conn, f"CREATE TABLE {schema}.pending (a int)")
        assert (schema, "pending") in _catalog(conn).relations
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        conn.rollback()
        assert (schema, "pending") not in _catalog(conn).relations
    finally:
        conn.close()


# -- every shard's facts ----------------------------------------------------------------------------


@pytest.fixture
def shard_conns(sample) -> Iterator[list[Connection]]:
    conns = [_connect(dsn) for dsn in sample.shard_dsns]
    yield conns
    for conn in conns:
        conn.close()


def _names(sample) -> list[str]:
    return [f"db{i}" for i in range(len(sample.shard_dsns))]


def test_combine_takes_any_shards_collation_and_unions_names(sample, shard_conns, schema):
    ci = _icu_collation(shard_conns[1], schema)
    for i, conn in enumerate(shard_conns):
        collate = f"COLLATE {schema}.{ci}" if i == 1 else ""
        _run(conn, f"CREATE TABLE {schema}.t (id int, name text {collate})")
    _run(shard_conns[2], f"CREATE AGGREGATE {schema}.pc_only_here(integer) (sfunc = int4pl, stype = integer)")
    catalogs = [_catalog(conn) for conn in shard_conns]
    combined = combine(catalogs, _names(sample))
    assert catalogs[0].relations[schema, "t"].columns[1].collation is None
    name = combined.relations[schema, "t"].columns[1]
    assert (name.collation, name.deterministic) == (ci, False)
    assert (schema, "pc_only_here") in combined.user_aggregates and "pc_only_here" in combined.aggregates
    assert "pc_only_here" not in catalogs[0].aggregates
    assert combined.text_order_c == all(c.text_order_c for c in catalogs)
    assert combined.stamp == combine_stamps(c.stamp for c in catalogs)
    assert combined.stamp == combine_stamps(_stamp(conn) for conn in shard_conns)
    combined_orders, first_orders = combined.resolve(None, "orders"), catalogs[0].resolve(None, "orders")
    assert replace(combined_orders, rows=first_orders.rows) == first_orders
    # The row estimate is every shard's: the sum of their own.
    assert combined_orders.rows == sum(c.resolve(None, "orders").rows for c in catalogs)
    assert combined.qualified_collations[schema, ci].deterministic is False
    assert schema_differences(catalogs, _names(sample)) == [
        f"{schema}.t is table (id integer, name text) on shards 0 (db0) and 2 (db2) "
        f'but table (id integer, name text COLLATE "{ci}") on shard 1 (db1)'
    ]


def test_schema_differences_name_missing_tables(sample, shard_conns, schema):
    _run(shard_conns[0], f"CREATE TABLE {schema}.here (a int)")
    _run(shard_conns[2], f"CREATE TABLE {schema}.here (a bigint)")
    catalogs = [_catalog(conn) for conn in shard_conns]
    assert schema_differences(catalogs, _names(sample)) == [
        f"{schema}.here is table (a integer) on shard 0 (db0) but missing on shard 1 (db1), "
        "table (a bigint) on shard 2 (db2)"
    ]


def test_combine_checks_its_arguments(conn):
    catalog = _catalog(conn)
    with pytest.raises(ValueError, match="no shard catalogs"):
        combine([], [])
    with pytest.raises(ValueError, match="2 shard names"):
        combine([catalog], ["a", "b"])


def test_settings_differences_name_the_setting_the_shards_and_their_values(sample, shard_conns):
    names = _names(sample)
    assert settings_differences([_catalog(conn) for conn in shard_conns], names) == []
    _run(shard_conns[2], "SET TimeZone = 'Europe/Paris'", "SET DateStyle = 'German, DMY'")
    catalogs = [_catalog(conn) for conn in shard_conns]
    zone = catalogs[0].settings["TimeZone"]
    style = catalogs[0].settings["DateStyle"]
    assert settings_differences(catalogs, names) == [
        f'TimeZone is "{zone}" on shards 0 (db0) and 1 (db1) but "Europe/Paris" on shard 2 (db2)',
        f'DateStyle is "{style}" on shards 0 (db0) and 1 (db1) but "German, DMY" on shard 2 (db2)',
    ]


def test_a_database_level_setting_differs_in_new_sessions(sample, shard_conns):
    conn = shard_conns[1]
    with conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        database = sql.Identifier(cur.fetchone()[0])
        cur.execute(sql.SQL("ALTER DATABASE {} SET IntervalStyle = iso_8601").format(database))
        try:
            fresh = _connect(sample.shard_dsns[1])
            catalogs = [_catalog(shard_conns[0]), _catalog(fresh)]
            fresh.close()
        finally:
            cur.execute(sql.SQL("ALTER DATABASE {} RESET IntervalStyle").format(database))
    assert settings_differences(catalogs, ["a", "b"]) == [
        'IntervalStyle is "postgres" on shard 0 (a) but "iso_8601" on shard 1 (b)'
    ]


# -- the stamp --------------------------------------------------------------------------------------

# Each runs in the test's schema (search_path) on top of _STAMP_SETUP.
_STAMP_SETUP = (
    "CREATE SCHEMA {schema}_x",
    "CREATE TABLE t (id int, name text)",
    "CREATE TABLE base (k int)",
    "CREATE VIEW v AS SELECT k FROM base WHERE k > 0",
    "CREATE DOMAIN d AS text",
    "CREATE TYPE mood AS ENUM ('sad', 'ok')",
    "CREATE FUNCTION f(integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT $1'",
    "CREATE SEQUENCE s",
)
_CHANGES = {
    "create table": "CREATE TABLE t2 (a int)",
    "drop table": "DROP TABLE t",
    "rename table": "ALTER TABLE t RENAME TO t3",
    "add column": "ALTER TABLE t ADD COLUMN extra int",
    "drop column": "ALTER TABLE t DROP COLUMN name",
    "rename column": "ALTER TABLE t RENAME COLUMN name TO title",
    "column type": "ALTER TABLE t ALTER COLUMN id TYPE bigint",
    "column collation": 'ALTER TABLE t ALTER COLUMN name TYPE text COLLATE "POSIX"',
    "create view": "CREATE VIEW v2 AS SELECT 1 AS one",
    "replace view": "CREATE OR REPLACE VIEW v AS SELECT k FROM base WHERE k > 1",
    "drop view": "DROP VIEW v",
    "create index": "CREATE INDEX ON t (id)",
    "create domain": "CREATE DOMAIN d2 AS integer",
    "drop domain": "DROP DOMAIN d",
    "create collation": 'CREATE COLLATION c2 FROM "C"',
    "create aggregate": "CREATE AGGREGATE agg(integer) (sfunc = int4pl, stype = integer)",
    "create function": "CREATE FUNCTION g() RETURNS integer LANGUAGE sql AS 'SELECT 1'",
    "function volatility": "ALTER FUNCTION f(integer) VOLATILE",
    "replace function": "CREATE OR REPLACE FUNCTION f(integer) RETURNS integer LANGUAGE sql AS 'SELECT 2'",
    "enum value": "ALTER TYPE mood ADD VALUE 'meh'",
    "set schema": "ALTER TABLE t SET SCHEMA {schema}_x",
    "create schema": "CREATE SCHEMA {schema}_y",
    "drop schema": "DROP SCHEMA {schema}_x",
    "temp table of this session": "CREATE TEMP TABLE tt (a int)",
    "set time zone": "SET TimeZone = 'Asia/Tokyo'",
    "set search path": "SET search_path = public",
}
_NO_CHANGES = {
    "insert": "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g",
    "update": "UPDATE t SET name = 'y'",
    "delete": "DELETE FROM t",
    "vacuum analyze": "VACUUM ANALYZE t",
    "nextval": "SELECT nextval('s')",
    "select": "SELECT * FROM v",
}


@pytest.fixture
def stamped(conn, schema) -> Iterator[str]:
    """``schema`` with the stamp tests' objects, the connection's search path set to it."""
    _run(conn, f"SET search_path = {schema}", *(s.format(schema=schema) for s in _STAMP_SETUP))
    yield schema
    _run(conn, f"DROP SCHEMA IF EXISTS {schema}_x CASCADE", f"DROP SCHEMA IF EXISTS {schema}_y")


@pytest.mark.parametrize("change", list(_CHANGES))
def test_the_stamp_changes_with_the_catalog(conn, stamped, change):
    reader = StampReader()
    with conn.cursor() as cur:
        before = read_stamp(cur)
        assert reader.read(cur) == before == _catalog(conn).stamp
    _run(conn, _CHANGES[change].format(schema=stamped))
    with conn.cursor() as cur:
        after = read_stamp(cur)
        assert after != before
        assert reader.read(cur) == after == _catalog(conn).stamp


@pytest.mark.parametrize("change", list(_NO_CHANGES))
def test_the_stamp_ignores_data_changes(conn, stamped, change):
    before = _stamp(conn)
    _run(conn, _NO_CHANGES[change])
    assert _stamp(conn) == before


def test_the_stamp_ignores_other_sessions_temporary_objects(conn, other, stamped):
    before = _stamp(conn)
    _run(
        other,
        "CREATE TEMP TABLE pc_catalog_scratch (id int PRIMARY KEY, note text)",
        "CREATE TEMP VIEW pc_catalog_scratch_view AS SELECT id FROM pc_catalog_scratch",
        "CREATE TYPE pg_temp.pc_catalog_scratch_mood AS ENUM ('a')",
        "INSERT INTO pc_catalog_scratch VALUES (1, 'x')",
        "ALTER TABLE pc_catalog_scratch ADD COLUMN more text",
    )
    assert _stamp(conn) == before
    _run(other, "DROP TABLE pc_catalog_scratch CASCADE", "DROP TYPE pg_temp.pc_catalog_scratch_mood")
    assert _stamp(conn) == before


def test_the_stamp_sees_other_sessions_committed_changes(conn, other, stamped):
    reader = StampReader()
    with conn.cursor() as cur:
        before = reader.read(cur)
    _run(other, f"ALTER TABLE {stamped}.t RENAME COLUMN name TO label")
    with conn.cursor() as cur:
        assert reader.read(cur) != before
        assert reader.read(cur) == read_stamp(cur)


def _reads(
    reader: StampReader, cur: psycopg2.extensions.cursor, times: int
) -> tuple[set[tuple[int, ...]], int]:
    """The stamps ``times`` reads return, and how many of them scanned the catalogs."""
    scans = reader.scans
    stamps = {reader.read(cur) for _ in range(times)}
    return stamps, reader.scans - scans


def test_the_reader_scans_only_after_a_transaction_ended(conn, other, stamped):
    # Other transactions (autovacuum's, say) may end meanwhile: a few reads, most of them without a scan.
    reader = StampReader()
    with conn.cursor() as cur:
        first = reader.read(cur)
        stamps, scans = _reads(reader, cur, 5)
        assert stamps == {first} and scans < 5
        _run(other, f"INSERT INTO {stamped}.t VALUES (1, 'a')")
        stamps, scans = _reads(reader, cur, 5)
        assert stamps == {first} and 1 <= scans < 5
        cur.execute("SET TimeZone = 'Asia/Tokyo'")
        stamps, scans = _reads(reader, cur, 5)
        assert stamps == {read_stamp(cur)} and first not in stamps and scans < 5


def test_the_reader_scans_nothing_within_a_snapshot(sample, other, stamped):
    conn = _connect(sample.shard_dsns[0], autocommit=False)
    conn.set_session(isolation_level="REPEATABLE READ")
    reader = StampReader()
    try:
        catalog = _catalog(conn)
        reader.prime(catalog)
        _run(other, f"INSERT INTO {stamped}.t VALUES (1, 'a')")
        with conn.cursor() as cur:
            assert _reads(reader, cur, 3) == ({catalog.stamp}, 0)
    finally:
        conn.close()


def test_the_reader_never_trusts_a_transaction_that_wrote(sample, stamped):
    conn = _connect(sample.shard_dsns[0], autocommit=False)
    reader = StampReader()
    try:
        _run(conn, f"SET search_path = {stamped}")
        conn.commit()
        with conn.cursor() as cur:
            before = reader.read(cur)
            cur.execute("CREATE TABLE rolled_back (a int)")
            inside = reader.read(cur)
            cur.execute("ALTER TABLE rolled_back ADD COLUMN b int")
            assert inside != before and reader.read(cur) not in (before, inside)
        conn.rollback()
        with conn.cursor() as cur:
            assert reader.read(cur) == before == read_stamp(cur)
    finally:
        conn.close()
