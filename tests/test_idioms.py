"""psycopg2's idioms on a ParallelConnection, side by side with plain psycopg2 on the reference database."""

from __future__ import annotations

import contextlib
import io
import uuid
from decimal import Decimal

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.sql as sql
import pytest
from conftest import run_on_all

import parallel_connection

REPORT = "SELECT status, count(*) AS n, sum(amount) AS total, avg(amount) AS mean FROM orders GROUP BY status"
MERGED = [
    "SELECT avg(amount), sum(amount), count(*) FROM orders",
    f"{REPORT} ORDER BY status",
    "SELECT count(*), count(DISTINCT customer_id), max(amount), bool_and(amount > 0) FROM orders",
    "SELECT DISTINCT quantity FROM orders ORDER BY quantity LIMIT 4",
    "SELECT id, amount FROM orders ORDER BY amount DESC, id LIMIT 5",
    "SELECT round(avg(amount), 2) AS mean, count(*) FROM orders",  # the coordinator stage
]


def _rows(conn, query, params=None, **cursor):
    with conn.cursor(**cursor) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def _kind(row):
    """The row's type (named tuples: one class per list of names, so by their kind)."""
    return "namedtuple" if hasattr(row, "_fields") else type(row)


def _same(pdb, ref, query, **cursor):
    got, want = _rows(pdb, query, **cursor), _rows(ref, query, **cursor)
    if "ORDER BY" not in query:
        got, want = sorted(got, key=repr), sorted(want, key=repr)
    assert got == want, query
    assert [type(v).__name__ for v in got[0]] == [type(v).__name__ for v in want[0]], query
    return got


@pytest.fixture
def global_casters():
    """psycopg2's global typecasters, as they were, after the test."""
    saved = dict(psycopg2.extensions.string_types)
    yield
    psycopg2.extensions.string_types.clear()
    psycopg2.extensions.string_types.update(saved)


@pytest.fixture
def everywhere(sample):
    """Run set-up SQL on every shard and the reference (and drop what it made afterwards)."""
    drops: list[str] = []

    def run(create: str, drop: str) -> None:
        drops.append(drop)
        run_on_all([*sample.shard_dsns, sample.reference_dsn], create)

    yield run
    for drop in reversed(drops):
        run_on_all([*sample.shard_dsns, sample.reference_dsn], drop)


DEC2FLOAT = psycopg2.extensions.new_type(
    psycopg2.extensions.DECIMAL.values, "DEC2FLOAT", lambda v, cur: None if v is None else float(v)
)
COUNTED = psycopg2.extensions.new_type((20,), "COUNTED", lambda v, cur: None if v is None else f"n={v}")
"""Applied twice, a value would read n=n=...: each value is cast exactly once."""


# -- 1. connect(cursor_factory=...) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "factory", [psycopg2.extras.RealDictCursor, psycopg2.extras.DictCursor, psycopg2.extras.NamedTupleCursor]
)
def test_connect_cursor_factory_is_the_default_for_merged_and_union_rows(sample, ref, factory):
    with contextlib.closing(parallel_connection.connect(sample.shard_dsns, cursor_factory=factory)) as pdb:
        assert pdb.cursor_factory is factory
        for query in (f"{REPORT} ORDER BY status", "SELECT id, status FROM orders WHERE id <= 5 ORDER BY id"):
            got, want = _rows(pdb, query), _rows(ref, query, cursor_factory=factory)
            assert type(got[0]) is type(want[0])
            assert [list(r) for r in got] == [list(r) for r in want]
        with pdb.cursor(merge="union") as cur:
            cur.execute("SELECT 1 AS one")
            assert all(_kind(r) == _kind(want[0]) for r in cur.fetchall())
        with pdb.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:  # an explicit one wins
            cur.execute("SELECT count(*) FROM orders")
            assert cur.fetchone() == (3000,)


def test_shard_connections_with_their_own_cursor_factory_keep_it_after_putconn(sample, ref):
    conns = [psycopg2.connect(d, cursor_factory=psycopg2.extras.RealDictCursor) for d in sample.shard_dsns]
    try:
        pdb = parallel_connection.ParallelConnection(conns)
        assert pdb.cursor_factory is psycopg2.extras.RealDictCursor
        got = _rows(pdb, f"{REPORT} ORDER BY status")
        assert got == _rows(ref, f"{REPORT} ORDER BY status", cursor_factory=psycopg2.extras.RealDictCursor)
        pdb.close()
        assert all(c.cursor_factory is psycopg2.extras.RealDictCursor for c in conns)
    finally:
        for conn in conns:
            conn.close()


# -- 2. with pdb: ---------------------------------------------------------------------------------------


def test_with_commits_or_rolls_back_and_keeps_the_connection_open(sample, pdb, everywhere):
    everywhere("CREATE TABLE idiom_with (x int)", "DROP TABLE idiom_with")
    with pdb, pdb.cursor(merge="union") as cur:
        cur.execute("INSERT INTO idiom_with VALUES (1)")
    with pytest.raises(ZeroDivisionError), pdb, pdb.cursor(merge="union") as cur:
        cur.execute("INSERT INTO idiom_with VALUES (2)")
        raise ZeroDivisionError
    assert pdb.closed == 0
    with pdb:  # a second block, as psycopg2 >= 2.9 allows
        assert _rows(pdb, "SELECT count(*) FROM idiom_with") == [(0 + len(sample.shard_dsns),)]
    other = psycopg2.connect(sample.shard_dsns[0])
    try:
        assert _rows(other, "SELECT x FROM idiom_with") == [(1,)]
    finally:
        other.close()


# -- 3. a shard's error keeps diag, pgcode, pgerror and cursor -----------------------------------------


def test_a_shard_error_keeps_diag_pgcode_pgerror_and_its_cursor(pdb, ref, everywhere):
    everywhere(
        "CREATE TABLE idiom_unique (id int PRIMARY KEY); INSERT INTO idiom_unique VALUES (1)",
        "DROP TABLE idiom_unique",
    )
    insert = "INSERT INTO idiom_unique VALUES (1)"
    with pytest.raises(psycopg2.errors.UniqueViolation) as wanted:
        _rows(ref, insert)
    ref.rollback()
    cur = pdb.cursor(merge="union")
    with pytest.raises(psycopg2.errors.UniqueViolation) as raised:
        cur.execute(insert)
    pdb.rollback()
    got, want = raised.value, wanted.value
    for field in (
        "sqlstate",
        "constraint_name",
        "table_name",
        "message_primary",
        "message_detail",
        "severity",
    ):
        assert getattr(got.diag, field) == getattr(want.diag, field), field
    assert got.pgcode == want.pgcode == "23505"
    assert got.pgerror == want.pgerror
    assert got.cursor in cur.shard_cursors
    assert str(got).startswith(f"{got.shard}: ")


def test_a_shard_error_quoting_the_password_drops_diag_but_keeps_its_class(sample):
    secret = "idiom-Secret-42"
    dsns = [f"{dsn} password={secret}" for dsn in sample.shard_dsns]  # the servers trust, and ignore it
    with contextlib.closing(parallel_connection.connect(dsns)) as pdb:
        with pytest.raises(psycopg2.errors.InvalidTextRepresentation) as raised:
            _rows(pdb, f"SELECT '{secret}'::int FROM orders")
        exc = raised.value
        assert secret not in str(exc) and secret not in (exc.pgerror or "")
        assert exc.pgcode == "22P02" and exc.diag.message_primary is None
        assert all(secret not in text for text in pdb.dsn)
        assert all(info.password == "xxx" for info in pdb.info)


def test_a_merged_statement_error_keeps_diag(pdb, ref):
    query = "SELECT status, sum(1 / (quantity - quantity)) FROM orders GROUP BY status"
    with pytest.raises(psycopg2.errors.DivisionByZero) as wanted:
        _rows(ref, query)
    ref.rollback()
    with pytest.raises(psycopg2.errors.DivisionByZero) as raised:
        _rows(pdb, query)
    assert raised.value.diag.message_primary == wanted.value.diag.message_primary
    assert raised.value.diag.sqlstate == "22012"


# -- 4. psycopg2's functions taking a connection or cursor ---------------------------------------------


def test_sql_composables_render_on_a_connection_and_a_cursor(pdb, ref):
    query = sql.SQL("SELECT {} FROM {} WHERE {} = {} AND {} IN ({})").format(
        sql.Identifier("o", "id"),
        sql.Identifier("public", "orders") + sql.SQL(" o"),
        sql.Identifier("status"),
        sql.Literal("it's"),
        sql.Identifier("id"),
        sql.SQL(", ").join([sql.Literal(1), sql.Placeholder()]),
    )
    with pdb.cursor() as cur, ref.cursor() as rcur:
        assert query.as_string(pdb) == query.as_string(ref) == query.as_string(cur) == query.as_string(rcur)
        assert psycopg2.extensions.quote_ident("a b", pdb) == '"a b"'
        cur.execute(query, (2,))
        assert cur.fetchall() == []


def test_register_type_on_the_connection_acts_on_every_shard_and_is_kept_in_setups(sample, pdb, ref):
    before = len(pdb.shard_set.setups)
    psycopg2.extensions.register_type(DEC2FLOAT, pdb)
    psycopg2.extensions.register_type(DEC2FLOAT, ref)
    assert len(pdb.shard_set.setups) == before + 1
    _same(pdb, ref, "SELECT id, amount FROM orders WHERE id <= 9 ORDER BY id")
    for query in MERGED:
        _same(pdb, ref, query)
    fresh = psycopg2.connect(sample.shard_dsns[1])  # what a connection replacing a broken one gets
    try:
        for setup in pdb.shard_set.setups:
            setup(fresh)
        assert _rows(fresh, "SELECT 1.5::numeric") == [(1.5,)]
    finally:
        fresh.close()
    other = parallel_connection.connect(sample.shard_dsns)
    try:  # only this connection
        assert _rows(other, "SELECT 1.5::numeric") == [(Decimal("1.5"),)]
    finally:
        other.close()


def test_register_type_on_a_cursor_acts_on_that_cursor_only(pdb):
    cur = pdb.cursor()
    before = len(pdb.shard_set.setups)
    psycopg2.extensions.register_type(DEC2FLOAT, cur)
    cur.execute("SELECT sum(amount) FROM orders")
    assert isinstance(cur.fetchone()[0], float)
    assert len(pdb.shard_set.setups) == before
    assert isinstance(_rows(pdb, "SELECT sum(amount) FROM orders")[0][0], Decimal)


def test_register_composite_types_values_on_every_shard_merged_rows_included(pdb, ref, everywhere):
    everywhere("CREATE TYPE idiom_pair AS (id int, status text)", "DROP TYPE idiom_pair")
    # Made on each server at its own time: the type's OID differs from shard to shard.
    caster = psycopg2.extras.register_composite("idiom_pair", pdb)
    psycopg2.extras.register_composite("idiom_pair", ref)
    assert caster.name == "idiom_pair"
    query = "SELECT id, (id, status)::idiom_pair AS pair FROM orders ORDER BY id LIMIT 4"
    got = _same(pdb, ref, query)
    assert got[0][1].id == got[0][0]
    _same(pdb, ref, "SELECT (id, status)::idiom_pair FROM orders WHERE id <= 6")
    with pytest.raises(parallel_connection.NotSupportedError, match="globally"):
        psycopg2.extras.register_composite("idiom_pair", pdb, globally=True)


def test_register_hstore_types_values_in_merged_rows(pdb, ref, everywhere):
    everywhere("CREATE EXTENSION IF NOT EXISTS hstore", "DROP EXTENSION hstore")
    psycopg2.extras.register_hstore(pdb)
    psycopg2.extras.register_hstore(ref)
    query = "SELECT id, hstore('status', status) AS h FROM orders ORDER BY id LIMIT 3"
    got = _same(pdb, ref, query)
    assert isinstance(got[0][1], dict)


def test_register_default_json_and_uuid_on_the_connection(pdb, ref, global_casters):
    loads = lambda text: ("parsed", text)  # noqa: E731
    psycopg2.extras.register_default_json(pdb, loads=loads)
    psycopg2.extras.register_default_json(ref, loads=loads)
    psycopg2.extras.register_uuid(None, pdb)
    psycopg2.extras.register_uuid(None, ref)
    query = "SELECT id, json_build_object('id', id), md5(id::text)::uuid FROM orders ORDER BY id LIMIT 3"
    got = _same(pdb, ref, query)
    assert got[0][1][0] == "parsed" and isinstance(got[0][2], uuid.UUID)


# -- 5. get_dsn_parameters(), info, dsn ------------------------------------------------------------------


def test_dsn_parameters_info_and_dsn_are_one_per_shard(sample, pdb):
    plain = [psycopg2.connect(d) for d in sample.shard_dsns]
    try:
        assert pdb.get_dsn_parameters() == [c.get_dsn_parameters() for c in plain]
        assert pdb.dsn == [c.dsn for c in plain]
        assert [i.port for i in pdb.info] == [c.info.port for c in plain]
        assert [i.dbname for i in pdb.info] == [c.info.dbname for c in plain]
        assert [i.transaction_status for i in pdb.info] == [psycopg2.extensions.TRANSACTION_STATUS_IDLE] * 3
        assert all(i.password is None for i in pdb.info)
    finally:
        for conn in plain:
            conn.close()


# -- 6. LoggingConnection, LoggingCursor, MinTimeLoggingConnection ---------------------------------------


def test_logging_connection_logs_each_shards_statement(sample):
    factory = psycopg2.extras.LoggingConnection
    with contextlib.closing(
        parallel_connection.connect(sample.shard_dsns, connection_factory=factory)
    ) as pdb:
        with pytest.raises(psycopg2.ProgrammingError, match="initialize"):
            pdb.cursor()
        log = io.StringIO()
        pdb.initialize(log)
        rows = _rows(pdb, f"{REPORT} ORDER BY status")
        assert len(rows) == 5
        lines = [line for line in log.getvalue().splitlines() if line]
        assert len(lines) == 3 and len(set(lines)) == 1  # each shard's (rewritten) statement
        assert "GROUP BY status" in lines[0] and "pg_catalog" not in log.getvalue()
        _rows(pdb, "SELECT id FROM orders WHERE id = 1", cursor_factory=psycopg2.extras.LoggingCursor)
        assert log.getvalue().count("WHERE id = 1") == 3


def test_min_time_logging_connection_logs_with_its_times(sample):
    factory = psycopg2.extras.MinTimeLoggingConnection
    with contextlib.closing(
        parallel_connection.connect(sample.shard_dsns, connection_factory=factory)
    ) as pdb:
        log = io.StringIO()
        pdb.initialize(log, mintime=0)
        assert _rows(pdb, "SELECT count(*) FROM orders") == [(3000,)]
        assert log.getvalue().count("execution time") == 3


def test_initialize_needs_logging_connections(pdb):
    with pytest.raises(AttributeError, match="LoggingConnection"):
        pdb.initialize(io.StringIO())


# -- 7. the user's typecasters on merged values ----------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "connection"])
def test_typecasters_apply_to_merged_values_exactly_once(pdb, ref, global_casters, scope):
    for caster in (DEC2FLOAT, COUNTED):
        if scope == "global":
            psycopg2.extensions.register_type(caster)
        else:
            psycopg2.extensions.register_type(caster, pdb)
            psycopg2.extensions.register_type(caster, ref)
    got = _same(pdb, ref, "SELECT avg(amount), sum(amount), count(*) FROM orders")
    assert isinstance(got[0][0], float) and got[0][2] == "n=3000"
    for query in MERGED:
        _same(pdb, ref, query)
    _same(pdb, ref, "SELECT count(*) FROM orders WHERE amount > (SELECT avg(amount) FROM orders)")
    with pdb.cursor(name="idiom_stream") as cur:  # streamed merges too
        cur.execute("SELECT id, amount FROM orders ORDER BY amount DESC, id LIMIT 3")
        assert cur.fetchall() == _rows(ref, "SELECT id, amount FROM orders ORDER BY amount DESC, id LIMIT 3")


def test_a_typecaster_on_the_cursor_is_restored_after_a_merge(pdb):
    cur = pdb.cursor()
    psycopg2.extensions.register_type(COUNTED, cur)
    cur.execute("SELECT count(*) FROM orders")
    assert cur.fetchone() == ("n=3000",)
    cur.execute("SELECT count(*) FROM orders WHERE customer_id = 1")  # one shard: psycopg2 casts it
    (value,) = cur.fetchone()
    assert value.startswith("n=")
    assert all(c.string_types[20] is COUNTED for c in cur.shard_cursors)


def test_execute_takes_parameters_as_another_name_for_vars(pdb, ref):
    sql = "SELECT count(*) FROM orders WHERE customer_id = %(cid)s"
    with pdb.cursor() as cur, ref.cursor() as plain:
        cur.execute(sql, parameters={"cid": 2920})
        plain.execute(sql, {"cid": 2920})
        assert cur.fetchall() == plain.fetchall()
        with pytest.raises(psycopg2.ProgrammingError, match="not both"):
            cur.execute(sql, {"cid": 1}, parameters={"cid": 2})


def test_deferrable_and_set_isolation_level_act_on_every_shard(pdb, ref):
    for conn in (pdb, ref):
        conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE)
        conn.deferrable = True
    assert (pdb.isolation_level, pdb.deferrable) == (ref.isolation_level, ref.deferrable)
    assert all(c.deferrable and c.isolation_level == ref.isolation_level for c in pdb.connections)
    for conn in (pdb, ref):
        conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    assert pdb.autocommit and ref.autocommit and all(c.autocommit for c in pdb.connections)
