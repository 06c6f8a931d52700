"""Columnar results: read_arrow / read_arrow_batches / read_pandas / read_polars and the cursor's
fetch_arrow family, against one reference database holding every row.

Types are checked value by value (numeric as decimal128 with the column's
scale, timestamptz in the session's zone, intervals as months/days/ns, json as
PostgreSQL's text, arrays, NULLs); merges (ORDER BY with NULLS FIRST / LAST,
DISTINCT, LIMIT / OFFSET) and everything the row path answers (aggregates)
are compared with the reference's rows.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import psycopg2
import psycopg2.extras
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mergetools import approx_rows, as_multiset, load
from test_merge_differential import aggregate_queries, row_queries
from test_merge_differential import tables as mt_tables

import parallel_connection
from parallel_connection import NotSupportedError

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

TYPES_TABLE = """
DROP TABLE IF EXISTS arrow_types;
CREATE TABLE arrow_types (
    id bigint PRIMARY KEY, i2 smallint, i4 integer, f8 double precision, n numeric(15, 4), nu numeric,
    t text, ts timestamp, tz timestamptz, d date, iv interval, b boolean, j jsonb, arr integer[],
    ba bytea, u uuid, o oid
)
"""
INSERT = (
    "INSERT INTO arrow_types VALUES %s",
    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::interval, %s, %s, %s, %s, %s, %s)",
)
WANT_TYPES = {
    "id": pa.int64(), "i2": pa.int16(), "i4": pa.int32(), "f8": pa.float64(),
    "n": pa.decimal128(15, 4), "t": pa.string(), "ts": pa.timestamp("us"), "d": pa.date32(),
    "iv": pa.month_day_nano_interval(), "b": pa.bool_(), "j": pa.string(), "arr": pa.list_(pa.int32()),
    "ba": pa.binary(), "u": pa.string(), "o": pa.uint32(),
}  # fmt: skip

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
MOMENT = st.datetimes(datetime.datetime(1900, 1, 1), datetime.datetime(2200, 1, 1))
ROW = st.tuples(
    st.one_of(st.none(), st.integers(-(2**15), 2**15 - 1)),
    st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    st.one_of(st.none(), st.decimals(-(10**11) + 1, 10**11 - 1, places=4, allow_nan=False)),
    st.one_of(
        st.none(),
        st.just(decimal.Decimal("NaN")),
        st.integers(0, 12).flatmap(
            lambda places: st.decimals(
                -(10**20), 10**20, allow_nan=False, allow_infinity=False, places=places
            )
        ),
    ),
    st.one_of(st.none(), TEXT),
    st.one_of(st.none(), MOMENT),
    st.one_of(st.none(), MOMENT.map(lambda m: m.replace(tzinfo=datetime.timezone.utc))),
    st.one_of(st.none(), st.dates(datetime.date(1, 1, 1), datetime.date(9999, 12, 31))),
    st.one_of(
        st.none(),
        st.tuples(st.integers(-9999, 9999), st.integers(-9999, 9999), st.integers(-(10**12), 10**12)),
    ),
    st.one_of(st.none(), st.booleans()),
    st.one_of(st.none(), st.dictionaries(TEXT, st.integers(-(2**53), 2**53) | TEXT, max_size=3)),
    st.one_of(st.none(), st.lists(st.one_of(st.none(), st.integers(-5, 5)), max_size=4)),
    st.one_of(st.none(), st.binary(max_size=6)),
    st.one_of(st.none(), st.uuids().map(str)),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)


@pytest.fixture(scope="module")
def typed_conns(sample: Any) -> Iterator[tuple[Any, Any]]:
    for dsn in [*sample.shard_dsns, sample.reference_dsn]:
        with closing(psycopg2.connect(dsn)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(TYPES_TABLE)
    shards = [psycopg2.connect(dsn) for dsn in sample.shard_dsns]
    ref = psycopg2.connect(sample.reference_dsn)
    yield shards, ref
    for conn in [*shards, ref]:
        conn.close()


def _connect(dsns: list[str], **options: Any) -> parallel_connection.ParallelConnection:
    """A connection whose writes on several shards commit shard by shard: no two-phase decision
    table is left on shard 0 for the catalog tests' schema comparisons to find."""
    return parallel_connection.connect(dsns, two_phase=False, **options)


def _interval(value: tuple[int, int, int] | None) -> str | None:
    if value is None:
        return None
    months, days, micros = value
    return f"{months} months {days} days {micros} microseconds"


def _load_types(shards: list[Any], ref: Any, rows: list[tuple[Any, ...]], placement: list[int]) -> None:
    values = [
        (i, *row[:9], _interval(row[9]), row[10], None if row[11] is None else json.dumps(row[11]), *row[12:])
        for i, row in enumerate(rows)
    ]
    values = [(*v[:14], None if v[14] is None else psycopg2.Binary(v[14]), *v[15:]) for v in values]
    per_shard: list[list[Any]] = [[] for _ in shards]
    for value, shard in zip(values, placement, strict=True):
        per_shard[shard].append(value)
    for conn, part in [*zip(shards, per_shard, strict=True), (ref, values)]:
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("TRUNCATE arrow_types")
            if part:
                psycopg2.extras.execute_values(cur, INSERT[0], part, template=INSERT[1])
        conn.commit()


def _reference(ref: Any, zone: str) -> list[dict[str, Any]]:
    with ref.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute("SET TimeZone = %s", (zone,))
        cur.execute(
            "SELECT *, j::text AS j_text,"
            " (extract(year FROM iv) * 12 + extract(month FROM iv))::int AS iv_months,"
            " extract(day FROM iv)::int AS iv_days,"
            " ((extract(hour FROM iv) * 3600 + extract(minute FROM iv) * 60) * 1000000"
            " + extract(microseconds FROM iv))::bigint AS iv_micros"
            " FROM arrow_types ORDER BY id"
        )
        rows = [dict(r) for r in cur.fetchall()]
    ref.rollback()
    return rows


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, decimal.Decimal) and not want.is_finite():
        return got == str(want) or (isinstance(got, str) and got.lower() == str(want).lower())
    if isinstance(want, memoryview):
        return got == bytes(want)
    if isinstance(want, decimal.Decimal) and isinstance(got, str):
        return got == format(want, "f")  # a column holding NaN comes as PostgreSQL's text
    return bool(got == want) and type(got) is type(want)


@SETTINGS
@given(
    rows=st.lists(ROW, max_size=12),
    placement_seed=st.lists(st.integers(0, 2), min_size=12, max_size=12),
    zone=st.sampled_from(["UTC", "Europe/Paris", "America/Sao_Paulo", "Asia/Kolkata"]),
)
def test_every_type_is_postgresqls_value(pdb, typed_conns, rows, placement_seed, zone):
    shards, ref = typed_conns
    pdb.rollback()
    _load_types(shards, ref, rows, placement_seed[: len(rows)])
    with pdb.cursor() as cur:
        cur.execute("SET TimeZone = %s", (zone,))
    table = pdb.read_arrow("SELECT * FROM arrow_types ORDER BY id")
    pdb.rollback()
    want = _reference(ref, zone)
    for name, kind in WANT_TYPES.items():
        assert table.schema.field(name).type == kind, name
    assert table.schema.field("tz").type == pa.timestamp("us", tz=zone)
    nu = table.schema.field("nu").type
    if any(row[4] is not None and row[4].is_nan() for row in rows):
        assert nu == pa.string()  # NaN: no Arrow decimal holds it, the column is PostgreSQL's text
    else:
        assert pa.types.is_decimal(nu)
    got = table.to_pylist()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for name in ("id", "i2", "i4", "f8", "n", "t", "ts", "tz", "d", "b", "arr", "ba", "u", "o", "nu"):
            assert _same(g[name], w[name]), (name, g[name], w[name])
        if w["tz"] is not None:
            assert g["tz"].utcoffset() == w["tz"].utcoffset(), (g["tz"], w["tz"])
        assert g["j"] == w["j_text"]
        if w["iv"] is None:
            assert g["iv"] is None
        else:
            iv = g["iv"]
            assert (iv.months, iv.days, iv.nanoseconds) == (
                w["iv_months"],
                w["iv_days"],
                w["iv_micros"] * 1000,
            )


def _arrow_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """The table's rows as tuples (columns may share a name)."""
    return list(zip(*[column.to_pylist() for column in table.columns], strict=True))


def _check_read(pdb: Any, ref: Any, sql: str, total: bool) -> None:
    try:
        with ref.cursor() as rcur:
            rcur.execute(sql)
            want = rcur.fetchall()
            names = [c.name for c in rcur.description]
    except psycopg2.Error:
        ref.rollback()
        with pytest.raises(psycopg2.Error):
            pdb.read_arrow(sql)
        pdb.rollback()
        return
    ref.rollback()
    try:
        table = pdb.read_arrow(sql)
    except NotSupportedError:
        pdb.rollback()
        with pytest.raises(NotSupportedError):  # refused alike on the row path
            pdb.cursor().execute(sql)
        pdb.rollback()
        return
    pdb.rollback()
    assert table.column_names == names, sql
    got = _arrow_rows(table)
    if total:
        assert approx_rows(got) == approx_rows(want), sql
    else:
        assert as_multiset(got) == as_multiset(want), sql


@SETTINGS
@given(table=mt_tables(), queries=st.lists(row_queries(), min_size=1, max_size=3))
def test_generated_row_queries_as_arrow_match_one_database(pdb, conns, table, queries):
    pdb.rollback()
    load(*conns, *table)
    for sql, total in queries:
        _check_read(pdb, conns[1], sql, total)


@settings(SETTINGS, max_examples=20)
@given(table=mt_tables(), queries=st.lists(aggregate_queries(), min_size=1, max_size=3))
def test_generated_aggregates_as_arrow_match_one_database(pdb, conns, table, queries):
    pdb.rollback()
    load(*conns, *table)
    for sql, total in queries:
        _check_read(pdb, conns[1], sql, total)


ORDERS = "SELECT id, customer_id, status, amount, weight, paid, ordered_at FROM orders"


def test_batches_are_the_table_in_bounded_pieces(pdb, ref):
    reader = pdb.read_arrow_batches(ORDERS + " WHERE id %% 3 = %s", (1,))
    batches = list(reader)
    table = pdb.read_arrow(ORDERS + " WHERE id %% 3 = %s", (1,))
    assert reader.schema == table.schema
    assert pa.Table.from_batches(batches, table.schema).sort_by("id").equals(table.sort_by("id"))
    with ref.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders WHERE id % 3 = 1")
        assert cur.fetchone()[0] == table.num_rows


def test_cursor_fetch_family_gives_the_rest_of_the_rows(pdb, ref):
    sql = ORDERS + " ORDER BY id LIMIT 50"
    cur = pdb.cursor()
    cur.execute(sql)
    first = cur.fetchone()
    table = cur.fetch_arrow()
    assert table.num_rows == 49
    whole = pdb.read_arrow(sql)
    assert whole.slice(1).equals(table)
    assert _arrow_rows(whole)[0] == tuple(first)
    cur.execute(sql)
    frame = cur.fetch_pandas()
    assert list(frame.columns) == [c.name for c in cur.description]
    assert len(frame) == 50
    cur.execute(sql)
    polars_frame = cur.fetch_polars()
    assert polars_frame.height == 50
    cur.execute(sql)
    batches = list(cur.fetch_arrow_batches())
    assert pa.Table.from_batches(batches).equals(whole)


def test_one_call_forms_agree(pdb):
    sql = ORDERS + " WHERE customer_id = %s ORDER BY id"
    table = pdb.read_arrow(sql, (7,))
    frame = pdb.read_pandas(sql, (7,))
    polars_frame = pdb.read_polars(sql, (7,))
    assert frame["id"].tolist() == table.column("id").to_pylist()
    assert polars_frame["id"].to_list() == table.column("id").to_pylist()


@pytest.fixture
def made(sample: Any) -> Iterator[list[str]]:
    """Tables (and the function) a test makes on the shards, dropped after it: the other tests
    compare the shards' catalogs with the reference's."""
    tables: list[str] = []
    yield tables
    drops = [f"DROP TABLE IF EXISTS {name} CASCADE" for name in tables]
    _run(sample.shard_dsns, *drops, "DROP FUNCTION IF EXISTS arrow_logged()")


def test_a_transactions_own_writes_are_seen(sample, made):
    made.append("arrow_own")
    with closing(_connect(sample.shard_dsns, replicated_tables=["arrow_own"])) as pdb:
        pdb.autocommit = True
        with pdb.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS arrow_own")
            cur.execute("CREATE TABLE arrow_own (id int, v text)")
        pdb.autocommit = False
        with pdb.cursor() as cur:
            cur.execute("INSERT INTO arrow_own VALUES (1, 'a'), (2, 'b')")
        table = pdb.read_arrow("SELECT id, v FROM arrow_own ORDER BY id")
        assert _arrow_rows(table) == [(1, "a"), (2, "b")]
        pdb.rollback()
        assert pdb.read_arrow("SELECT id, v FROM arrow_own").num_rows == 0
        pdb.rollback()


def test_temporary_tables_shadow_as_in_the_session(sample):
    with closing(_connect(sample.shard_dsns)) as pdb:
        pdb.autocommit = True
        with pdb.cursor(merge="union") as cur:
            cur.execute("CREATE TEMPORARY TABLE region (r_name text)")
            cur.execute("INSERT INTO region VALUES ('only mine')")
        table = pdb.read_arrow("SELECT r_name FROM region")
        assert set(table.column("r_name").to_pylist()) == {"only mine"}


def test_session_settings_reach_the_read(sample):
    with closing(_connect(sample.shard_dsns)) as pdb:
        pdb.autocommit = True
        with pdb.cursor() as cur:
            cur.execute("CREATE SCHEMA IF NOT EXISTS arrow_elsewhere")
            cur.execute("DROP TABLE IF EXISTS arrow_elsewhere.region")
            cur.execute("CREATE TABLE arrow_elsewhere.region (r_name text)")
            cur.execute("SET search_path = arrow_elsewhere")
            cur.execute("SET IntervalStyle = 'iso_8601'")
        try:
            assert pdb.read_arrow("SELECT r_name FROM region").num_rows == 0
            text = pdb.read_arrow("SELECT interval '1 day'::text AS i").column("i").to_pylist()
            assert set(text) == {"P1D"}
        finally:
            with pdb.cursor() as cur:
                cur.execute("RESET search_path")
                cur.execute("DROP SCHEMA arrow_elsewhere CASCADE")


def test_repeatable_read_keeps_its_snapshot(sample, made):
    made.append("arrow_snap")
    copied = ["arrow_snap"]
    with closing(_connect(sample.shard_dsns, replicated_tables=copied)) as pdb:
        pdb.autocommit = True
        with pdb.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS arrow_snap")
            cur.execute("CREATE TABLE arrow_snap (id int)")
        pdb.autocommit = False
        pdb.set_session(isolation_level="REPEATABLE READ")
        assert pdb.read_arrow("SELECT id FROM arrow_snap").num_rows == 0
        with closing(_connect(sample.shard_dsns, replicated_tables=copied)) as other:
            with other.cursor() as cur:
                cur.execute("INSERT INTO arrow_snap VALUES (1)")
            other.commit()
            assert other.read_arrow("SELECT id FROM arrow_snap").num_rows == 1
        assert pdb.read_arrow("SELECT id FROM arrow_snap").num_rows == 0
        pdb.rollback()
        assert pdb.read_arrow("SELECT id FROM arrow_snap").num_rows == 1
        pdb.rollback()


def test_a_write_inside_a_select_is_rolled_back_with_the_transaction(sample, made):
    made.append("arrow_log")
    with closing(_connect(sample.shard_dsns)) as pdb:
        with pdb.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS arrow_log (n int)")
            cur.execute(
                "CREATE OR REPLACE FUNCTION arrow_logged() RETURNS int LANGUAGE sql AS "
                "'INSERT INTO arrow_log VALUES (1) RETURNING n'"
            )
        pdb.commit()
        pdb.read_arrow("SELECT arrow_logged() AS n")
        pdb.rollback()
        with pdb.cursor() as cur:
            cur.execute("SELECT count(*) FROM arrow_log")
            assert cur.fetchone() == (0,)
        pdb.rollback()


def test_refusals_are_the_row_paths(pdb):
    with pytest.raises(NotSupportedError, match="EXECUTE"):
        pdb.read_arrow("EXECUTE some_statement")
    pdb.rollback()
    with pytest.raises(psycopg2.ProgrammingError, match="no rows"):
        pdb.read_arrow("SET TimeZone = 'UTC'")
    pdb.rollback()


def test_without_the_driver_the_row_path_answers(sample, monkeypatch):
    from parallel_connection.columnar import driver, read  # read imported first: it binds available

    monkeypatch.setattr(driver, "available", lambda: False)
    monkeypatch.setattr(read, "available", lambda: False)
    with closing(_connect(sample.shard_dsns)) as pdb:
        table = pdb.read_arrow(ORDERS + " ORDER BY id LIMIT 5")
        with closing(_connect(sample.shard_dsns)) as other:
            assert table.equals(other.read_arrow(ORDERS + " ORDER BY id LIMIT 5"))


@pytest.fixture
def driver_reads(monkeypatch):
    """The shard indexes the driver reads, in order (empty: the row path answered)."""
    from parallel_connection.columnar.driver import Driver

    reads: list[int] = []
    real = Driver.read

    def counted(self, index, *args, **kwargs):
        reads.append(index)
        yield from real(self, index, *args, **kwargs)

    monkeypatch.setattr(Driver, "read", counted)
    return reads


@pytest.mark.parametrize(
    "sql",
    [
        ORDERS,
        ORDERS + " ORDER BY amount DESC NULLS LAST, id LIMIT 7 OFFSET 3",
        "SELECT DISTINCT status FROM orders ORDER BY status",
        ORDERS + " WHERE id = 5",
        "SELECT id, amount * 2 AS twice FROM orders ORDER BY twice, id LIMIT 5",
    ],
)
def test_plain_reads_go_through_the_driver(pdb, ref, driver_reads, sql):
    reads = driver_reads
    table = pdb.read_arrow(sql)
    assert reads, "the row path answered"
    with ref.cursor() as cur:
        cur.execute(sql)
        want = cur.fetchall()
    ordered = "ORDER BY" in sql
    got = _arrow_rows(table)
    assert (got if ordered else sorted(got)) == (want if ordered else sorted(want))


# -- what a read on another connection could get wrong ------------------------------------------


def _run(dsns: list[str], *statements: str) -> None:
    for dsn in dsns:
        with closing(psycopg2.connect(dsn)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)


def test_set_role_and_row_security_are_the_sessions(sample):
    _run(
        [*sample.shard_dsns, sample.reference_dsn],
        "DROP TABLE IF EXISTS arrow_rls",
        "DROP ROLE IF EXISTS arrow_reader",
        "CREATE ROLE arrow_reader",
        "CREATE TABLE arrow_rls (id int, owner text)",
        "INSERT INTO arrow_rls VALUES (1, 'arrow_reader'), (2, 'someone')",
        "ALTER TABLE arrow_rls ENABLE ROW LEVEL SECURITY",
        "CREATE POLICY mine ON arrow_rls USING (owner = current_user)",
        "GRANT SELECT ON arrow_rls TO arrow_reader",
    )
    with closing(_connect(sample.shard_dsns, replicated_tables=["arrow_rls"])) as pdb:
        pdb.autocommit = True
        with pdb.cursor() as cur:
            cur.execute("SET ROLE arrow_reader")
        table = pdb.read_arrow("SELECT id, current_user AS who FROM arrow_rls ORDER BY id")
        assert _arrow_rows(table) == [(1, "arrow_reader")]
        with pdb.cursor() as cur:
            cur.execute("RESET ROLE")
    _run([*sample.shard_dsns, sample.reference_dsn], "DROP TABLE arrow_rls", "DROP ROLE arrow_reader")


def test_values_arrow_cannot_hold_are_refused(pdb):
    for sql in (
        "SELECT 'infinity'::timestamptz AS t",
        "SELECT '-infinity'::date AS d",
        "SELECT time '24:00' AS t",
    ):
        with pytest.raises(NotSupportedError, match="cannot hold"):
            pdb.read_arrow(sql)
        pdb.rollback()
    sql = "SELECT x FROM (VALUES ('infinity'::timestamp), ('2024-01-01')) AS v(x) ORDER BY x"
    with pytest.raises(NotSupportedError):
        pdb.read_arrow(sql)
    pdb.rollback()


def test_rows_of_no_columns_are_counted(pdb, ref):
    table = pdb.read_arrow("SELECT FROM orders")
    with ref.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders")
        assert table.num_rows == cur.fetchone()[0] and table.num_columns == 0


def test_fractional_limit_and_offset_round_as_postgresql_does(pdb, ref):
    sql = "SELECT id FROM orders ORDER BY id LIMIT %s OFFSET %s"
    for values in [(2.7, 1.5), (decimal.Decimal("2.5"), decimal.Decimal("0.5"))]:
        with ref.cursor() as cur:
            cur.execute(sql, values)
            want = cur.fetchall()
        assert _arrow_rows(pdb.read_arrow(sql, values)) == want


def test_now_is_the_transactions(sample):
    with closing(_connect(sample.shard_dsns)) as pdb:
        with pdb.cursor() as cur:
            cur.execute("SELECT now()")
            began = cur.fetchone()[0]
        import time

        time.sleep(0.05)
        for sql in (
            "SELECT now() AS t",
            "SELECT now() AS t FROM orders LIMIT 1",
            "SELECT current_timestamp AS t",
        ):
            assert pdb.read_arrow(sql).column("t").to_pylist() == [began], sql
        pdb.rollback()


def test_session_state_a_read_changes_stays_the_sessions(sample):
    with closing(_connect(sample.shard_dsns[:1])) as pdb:
        pdb.autocommit = True
        assert pdb.read_arrow("SELECT pg_advisory_lock(4242) AS l").num_rows == 1
        with pdb.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(4242)")
            assert cur.fetchone() == (True,)


def test_a_statement_without_rows_is_refused_before_it_runs(pdb):
    with pytest.raises(psycopg2.ProgrammingError, match="nothing was run"):
        pdb.read_arrow("CREATE TABLE arrow_never (id int)")
    pdb.rollback()
    with pdb.cursor() as cur:
        cur.execute("SELECT to_regclass('arrow_never') IS NULL")
        assert cur.fetchone() == (True,)


def test_polars_names_the_repeated_columns(pdb):
    with pytest.raises(psycopg2.ProgrammingError, match="'n' repeat"):
        pdb.read_polars("SELECT 1 AS n, 2 AS n FROM orders LIMIT 1")


def test_the_statement_deadline_bounds_a_read(sample):
    import time

    with closing(_connect(sample.shard_dsns, statement_deadline=1)) as pdb:
        pdb.autocommit = True
        start = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled, match="statement deadline"):
            pdb.read_arrow("SELECT pg_sleep(5) AS s, id FROM orders")
        assert time.monotonic() - start < 3
        assert pdb.read_arrow("SELECT count(*) AS n FROM orders").num_rows == 1


def test_a_read_leaves_the_session_as_it_found_it(sample):
    with closing(_connect(sample.shard_dsns)) as pdb:
        pdb.read_arrow(ORDERS + " LIMIT 3")
        assert pdb.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        with pdb.cursor() as cur:
            cur.execute("SELECT 1 FROM orders LIMIT 1")
        pdb.read_arrow(ORDERS + " LIMIT 3")
        assert pdb.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        pdb.rollback()


MOMENTS = (
    "SELECT id, timestamptz '2024-01-15 12:00+00' + id * interval '1 day' AS at, "
    "ARRAY[timestamptz '2024-07-01 00:30+00' - id * interval '1 hour', NULL] AS ats "
    "FROM orders WHERE id <= 6 ORDER BY id"
)


@pytest.mark.parametrize(
    "zone, label",
    [
        ("Europe/Paris", "Europe/Paris"),
        ("UTC+3", "-03:00"),  # POSIX: hours west of Greenwich
        ("<+0530>-05:30", "+05:30"),
        (-4, "-04:00"),  # SET TIME ZONE -4
        ("EST5EDT,M3.2.0,M11.1.0", "UTC"),  # a daylight saving rule Arrow cannot name
    ],
)
def test_timestamps_and_their_arrays_carry_the_sessions_zone(pdb, ref, zone, label):
    """Scalars and array elements alike, from the driver and from the row path: the same instants
    as PostgreSQL's, labelled with the session's zone (its fixed offset, for a POSIX one)."""
    for conn in (pdb, ref):
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE %s" if isinstance(zone, int) else "SET TimeZone = %s", (zone,))
    with ref.cursor() as cur:
        cur.execute(MOMENTS)
        want = cur.fetchall()
    with pdb.cursor() as cur:
        cur.execute(MOMENTS)
        fetched = cur.fetch_arrow()
    for table in (pdb.read_arrow(MOMENTS), fetched):
        assert table.schema.field("at").type == pa.timestamp("us", tz=label)
        assert table.schema.field("ats").type == pa.list_(pa.timestamp("us", tz=label))
        got = _arrow_rows(table)
        assert got == want  # aware datetimes: equal instants
        if label != "UTC":
            offsets = [(at.utcoffset(), [a.utcoffset() for a in ats if a]) for _, at, ats in got]
            assert offsets == [(at.utcoffset(), [a.utcoffset() for a in ats if a]) for _, at, ats in want]
    pdb.rollback()
    ref.rollback()


PANDAS_SQL = "SELECT id, customer_id, status, amount, quantity, weight, paid FROM orders ORDER BY id"


@pytest.mark.parametrize("backend", ["pyarrow", "numpy_nullable"])
def test_pandas_dtype_backends_are_pandas_read_sqls(pdb, ref, backend):
    """``dtype_backend`` as pandas.read_sql takes it: the reference's values, NULLs as pandas' NA,
    numeric exact (Arrow's decimal128 with "pyarrow", Decimal objects with "numpy_nullable")."""
    import pandas

    with ref.cursor() as cur:
        cur.execute(PANDAS_SQL)
        want = cur.fetchall()
    assert any(None in row for row in want)  # NULLs to read
    with pdb.cursor() as cur:
        cur.execute(PANDAS_SQL)
        fetched = cur.fetch_pandas(dtype_backend=backend)
    for frame in (pdb.read_pandas(PANDAS_SQL, dtype_backend=backend), fetched):
        if backend == "pyarrow":
            assert all(isinstance(t, pandas.ArrowDtype) for t in frame.dtypes)
            assert frame.dtypes["amount"].pyarrow_dtype == pa.decimal128(12, 2)
        else:
            assert str(frame.dtypes["quantity"]) == "Int32"
            assert str(frame.dtypes["paid"]) == "boolean"
            assert str(frame.dtypes["weight"]) == "Float64"
        got = [tuple(None if v is pandas.NA else v for v in row) for row in frame.itertuples(index=False)]
        assert got == want
    pdb.rollback()


def test_a_dtype_backend_pandas_does_not_know_is_refused(pdb):
    with pytest.raises(ValueError, match="dtype_backend is 'arrow'"):
        pdb.read_pandas("SELECT 1 AS one", dtype_backend="arrow")
    with pytest.raises(ValueError, match="not both"):
        pdb.read_pandas("SELECT 1 AS one", dtype_backend="pyarrow", types_mapper=dict().get)
    pdb.rollback()


def test_the_drivers_reads_are_read_committed_and_read_only(sample, driver_reads):
    """Every read on the driver's own connections, the first and those after, runs READ COMMITTED
    and READ ONLY (set once per connection, for all its transactions), whatever the session's."""
    reads = driver_reads
    sql = (
        "SELECT current_setting('transaction_isolation') AS iso, "
        "current_setting('transaction_read_only') AS ro, count(*) AS n FROM orders"
    )
    with closing(parallel_connection.connect(sample.shard_dsns[:1])) as one:
        one.autocommit = True
        for _ in range(2):
            table = one.read_arrow(sql)
            assert table.column("iso").to_pylist() == ["read committed"]
            assert table.column("ro").to_pylist() == ["on"]
        assert len(reads) == 2, "the row path answered"
        with one.cursor() as cur:
            cur.execute(sql)
            assert cur.fetchone()[1] == "off"  # the session's own transaction may write
