"""Property: the union of the shards' rows is what one database holding every row returns."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections import Counter

import psycopg2
import psycopg2.extras
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import parallel_connection

COLUMNS = """
    id bigint, customer_id integer, status text, amount numeric(12, 2), quantity integer,
    weight double precision, paid boolean, ordered_at timestamptz, ship_date date,
    note text, tags text[], payload jsonb, ref uuid
"""

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
_row = st.tuples(
    st.none() | st.integers(-(2**31), 2**31 - 1),
    st.none() | st.sampled_from(["new", "paid", "shipped", "cancelled", "Zürich", ""]),
    st.none() | st.decimals(min_value=-(10**9), max_value=10**9, places=2, allow_nan=False),
    st.none() | st.integers(-1000, 1000),
    st.none() | st.floats(allow_nan=False, width=64),
    st.none() | st.booleans(),
    st.none()
    | st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2100, 1, 1), timezones=st.just(dt.timezone.utc)),
    st.none() | st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)),
    st.none() | _text,
    st.none() | st.lists(st.none() | _text, max_size=3),
    st.none() | st.dictionaries(st.sampled_from("abc"), st.integers(-5, 5) | st.booleans(), max_size=3),
    st.none() | st.uuids(),
)

# Where each row goes: by the shard key, all on one shard, or anywhere.
_placement = st.one_of(
    st.just("key"),
    st.sampled_from([0, 1, 2]),
    st.just("random"),
)

_predicates = st.sampled_from(
    [
        ("TRUE", None),
        ("customer_id > %s", (0,)),
        ("status = %s", ("paid",)),
        ("note IS NULL", None),
        ("amount BETWEEN %s AND %s", (decimal.Decimal("-100.00"), decimal.Decimal("100000.00"))),
        ("paid", None),
        ("FALSE", None),
    ]
)


@pytest.fixture(scope="module")
def tables(sample):
    conns = [psycopg2.connect(d) for d in [*sample.shard_dsns, sample.reference_dsn]]
    for conn in conns:
        conn.autocommit = True
        psycopg2.extras.register_uuid(conn_or_curs=conn)
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS prop_rows; CREATE TABLE prop_rows ({COLUMNS})")
    pdb = parallel_connection.connect(sample.shard_dsns)
    for conn in pdb.connections:
        psycopg2.extras.register_uuid(conn_or_curs=conn)
    yield conns, pdb
    pdb.close()
    for conn in conns:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE prop_rows")
        conn.close()


def _load(conns, rows, placement, choices) -> None:
    shards, reference = conns[:-1], conns[-1]
    buckets: list[list[tuple]] = [[] for _ in shards]
    for i, row in enumerate(rows):
        if placement == "key":
            target = (row[1] or 0) % len(shards)
        elif placement == "random":
            target = choices[i % len(choices)] if choices else 0
        else:
            target = placement
        buckets[target].append(row)
    for conn, bucket in [*zip(shards, buckets, strict=True), (reference, rows)]:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE prop_rows")
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO prop_rows VALUES %s",
                [
                    (*r[:10], r[10], psycopg2.extras.Json(r[11]) if r[11] is not None else None, r[12])
                    for r in bucket
                ],
            )


def _key(row: tuple) -> str:
    return repr(row)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(_row, max_size=25).map(lambda rs: [(i, *r) for i, r in enumerate(rs)]),
    placement=_placement,
    choices=st.lists(st.integers(0, 2), min_size=1, max_size=25),
    predicate=_predicates,
    named=st.booleans(),
    itersize=st.integers(1, 7),
)
def test_union_equals_one_database(tables, rows, placement, choices, predicate, named, itersize):
    conns, pdb = tables
    _load(conns, rows, placement, choices)
    where, params = predicate
    sql = f"SELECT * FROM prop_rows WHERE {where}"
    with conns[-1].cursor() as cur:
        cur.execute(sql, params)
        expected = cur.fetchall()
        expected_columns = [(c.name, c.type_code) for c in cur.description]
    cur = pdb.cursor(name="prop" if named else None)
    cur.itersize = itersize
    cur.execute(sql, params)
    got = cur.fetchall()
    assert [(c.name, c.type_code) for c in cur.description] == expected_columns
    cur.close()
    pdb.rollback()
    assert Counter(map(_key, got)) == Counter(map(_key, expected))
    assert len(got) == len(expected)


def test_uuid_values_survive(tables):
    conns, pdb = tables
    ref = uuid.uuid4()
    _load(conns, [(1, 5, None, None, None, None, None, None, None, None, None, None, ref)], "key", [0])
    with pdb.cursor() as cur:
        cur.execute("SELECT ref FROM prop_rows")
        assert cur.fetchall() == [(ref,)]
