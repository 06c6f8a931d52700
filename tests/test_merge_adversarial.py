"""Wrong answers an adversarial tester found: each is now the reference's answer or a refusal."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extras
import pytest

from parallel_connection import NotSupportedError
from parallel_connection.merge.rowops import offset_limit

TABLE = """
DROP TABLE IF EXISTS adv;
DROP TYPE IF EXISTS adv_mood;
CREATE TYPE adv_mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE adv (
    id integer PRIMARY KEY,
    g integer,
    u uuid,
    m adv_mood,
    iv interval,
    ts timestamp,
    d date,
    t time,
    small smallint,
    tz timestamptz
)
"""

ROWS = [
    (1, 1, "00000000-0000-0000-0000-000000000001", "sad", "1 year", "infinity", "infinity", "24:00", 200),
    (2, 1, "00000000-0000-0000-0000-000000000002", "ok", "360 days", "9999-12-31 23:59:59.999999",
     "9999-12-31", "00:00", 300),
    (3, 2, "00000000-0000-0000-0000-000000000001", "happy", "1 mon", "-infinity", "-infinity", "12:00", 1),
    (4, 2, "00000000-0000-0000-0000-000000000003", "ok", "11 mons", "0001-01-01 00:00:00", "0001-01-01",
     "13:00", 2),
    (5, 3, None, None, None, "2024-01-01 00:00", "2024-01-01", None, None),
]  # fmt: skip


ROWS = [(*row, row[5] if row[5] != "-infinity" else "0001-01-01 00:00:00+00") for row in ROWS]


@pytest.fixture(scope="module")
def adv(sample):
    """ROWS spread over the shards (row i on shard i % n) and all on the reference."""
    dsns = [*sample.shard_dsns, sample.reference_dsn]
    shards = len(sample.shard_dsns)
    for n, dsn in enumerate(dsns):
        rows = ROWS if n == shards else [r for i, r in enumerate(ROWS) if i % shards == n]
        conn = psycopg2.connect(dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(TABLE)
                if rows:
                    psycopg2.extras.execute_values(cur, "INSERT INTO adv VALUES %s", rows)
        finally:
            conn.close()
    return sample


def answers(pdb: Any, ref: Any, sql: str, params: Sequence[Any] | None = None) -> tuple[Any, Any]:
    """(merged rows or the refusal, the reference's rows)."""
    with ref.cursor() as rcur:
        rcur.execute(sql, params)
        want = rcur.fetchall()
    ref.rollback()
    try:
        cur = pdb.cursor()
        cur.execute(sql, params)
        got = cur.fetchall()
    except NotSupportedError as exc:
        return exc, want
    finally:
        pdb.rollback()
    return got, want


def exact_or_refused(pdb: Any, ref: Any, sql: str, params: Any = None, *, naming: str) -> None:
    """The merged answer is the reference's, or a refusal whose message contains ``naming``."""
    got, want = answers(pdb, ref, sql, params)
    if isinstance(got, NotSupportedError):
        assert naming in str(got) and 'merge="union"' in str(got)
    else:
        assert got == want


def refused(pdb: Any, sql: str, params: Any = None, *, naming: str) -> None:
    cur = pdb.cursor()
    with pytest.raises(NotSupportedError, match=naming):
        cur.execute(sql, params)
        cur.fetchall()
    pdb.rollback()


# -- A1, B1: array partials psycopg2 returns as strings, arrays of arrays ---------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT status, count(DISTINCT ref) FROM orders GROUP BY status ORDER BY 1",
        "SELECT count(DISTINCT ref) FROM orders",
    ],
)
def test_count_distinct_of_a_type_returned_as_text(pdb, ref, sql):
    exact_or_refused(pdb, ref, sql, naming="count(DISTINCT")


@pytest.mark.parametrize("column", ["u", "m"])
def test_array_agg_of_a_type_returned_as_text(pdb, ref, adv, column):
    exact_or_refused(pdb, ref, f"SELECT array_agg({column}) FROM adv", naming="array_agg")
    exact_or_refused(pdb, ref, f"SELECT count(DISTINCT {column}) FROM adv", naming="count(DISTINCT")


@pytest.mark.parametrize(
    "sql", ["SELECT count(DISTINCT tags) FROM orders", "SELECT count(DISTINCT ARRAY[id]) FROM orders"]
)
def test_count_distinct_of_arrays(pdb, ref, sql):
    exact_or_refused(pdb, ref, sql, naming="count(DISTINCT")


# -- A5, B7: HAVING compares and computes as PostgreSQL does, or refuses ----------------


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT status FROM orders GROUP BY status HAVING count(*) = '743' ORDER BY 1", None),
        ("SELECT status FROM orders GROUP BY status HAVING count(*) = %s ORDER BY 1", ("743",)),
        ("SELECT status FROM orders GROUP BY status HAVING count(*) <> '743' ORDER BY 1", None),
        ("SELECT status FROM orders GROUP BY status HAVING max(ship_date) = '2024-12-30' ORDER BY 1", None),
        ("SELECT status FROM orders GROUP BY status HAVING max(amount) <> '999.37' ORDER BY 1", None),
        ("SELECT status FROM orders GROUP BY status HAVING bool_or(id > 5) = 'true' ORDER BY 1", None),
        (
            "SELECT ref FROM orders GROUP BY ref HAVING ref >= %s ORDER BY 1",
            ("FFFFFFFF-0000-0000-0000-000000000000",),
        ),
    ],
)
def test_having_compares_with_a_string_as_postgresql_does(pdb, ref, sql, params):
    exact_or_refused(pdb, ref, sql, params, naming="HAVING")


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT status FROM orders GROUP BY status HAVING count(*) > %s ORDER BY 1", (2.5,)),
        ("SELECT status FROM orders GROUP BY status HAVING count(*) = %s ORDER BY 1", (743,)),
        ("SELECT status FROM orders GROUP BY status HAVING max(amount) >= %s ORDER BY 1", (999.37,)),
        ("SELECT status FROM orders GROUP BY status HAVING max(ship_date) >= '2024-12-30'::date ORDER BY 1",
         None),
        ("SELECT status FROM orders GROUP BY status HAVING sum(quantity) * 2 > 8000 ORDER BY 1", None),
    ],
)  # fmt: skip
def test_having_still_answers_well_typed_conditions(pdb, ref, sql, params):
    got, want = answers(pdb, ref, sql, params)
    assert got == want


@pytest.mark.parametrize(
    "having",
    [
        "count(*)",
        "count(*) > 1 AND count(*)",
        "NOT count(*)",
        "count(*) = true",
        "max(small) * max(small) > 0",
        "count(*) * 9223372036854775807 > 0",
    ],
)
def test_having_postgresql_rejects_is_not_answered(pdb, ref, adv, having):
    sql = f"SELECT g FROM adv GROUP BY g HAVING {having} ORDER BY 1"
    with pytest.raises(psycopg2.Error), ref.cursor() as rcur:
        rcur.execute(sql)
    ref.rollback()
    refused(pdb, sql, naming="HAVING")


# -- A6: interval order and equality are not Python's timedelta's ----------------------

INTERVAL_QUERIES = [
    "SELECT count(*) FROM adv GROUP BY iv ORDER BY 1",
    "SELECT DISTINCT iv FROM adv ORDER BY 1",
    "SELECT id FROM adv ORDER BY iv, id",
    "SELECT DISTINCT ON (iv) id FROM adv ORDER BY iv, id",
    "SELECT count(DISTINCT iv) FROM adv",
    "SELECT max(iv), min(iv) FROM adv",
    "SELECT sum(iv) FROM adv",
]


def test_interval_is_neither_ordered_nor_grouped_nor_summed(pdb, ref, adv):
    for sql in INTERVAL_QUERIES:
        exact_or_refused(pdb, ref, sql, naming="interval")


# -- A11: infinities and 24:00 that psycopg2 returns as other values --------------------

CALENDAR_QUERIES = [
    ("SELECT id FROM adv ORDER BY {c}, id", "ORDER BY"),
    ("SELECT id FROM adv ORDER BY {c} DESC, id", "ORDER BY"),
    ("SELECT DISTINCT {c} FROM adv", "DISTINCT"),
    ("SELECT DISTINCT ON ({c}) id FROM adv ORDER BY {c}, id", "ORDER BY"),
    ("SELECT {c}, count(*) FROM adv GROUP BY {c}", "GROUP BY"),
    ("SELECT count(DISTINCT {c}) FROM adv", "count(DISTINCT"),
    ("SELECT max({c}), min({c}) FROM adv", "time"),
]


def sorted_rows(rows: Any) -> Any:
    return rows if isinstance(rows, Exception) else sorted(rows, key=repr)


@pytest.mark.parametrize("column", ["ts", "d", "tz", "t"])
def test_infinities_and_24_00_are_not_confused_with_other_values(pdb, ref, adv, column):
    for template, naming in CALENDAR_QUERIES:
        if naming == "count(DISTINCT" and column != "t":
            continue  # psycopg2 cannot parse infinity inside a timestamp[] (a DataError, not a wrong answer)
        sql = template.format(c=column)
        got, want = answers(pdb, ref, sql)
        if isinstance(got, NotSupportedError):
            assert (naming in str(got) or "time" in str(got)) and 'merge="union"' in str(got), sql
        else:
            assert sorted_rows(got) == sorted_rows(want), sql


# -- B3: LIMIT / OFFSET parameters as PostgreSQL converts them ---------------------------


@pytest.mark.parametrize("limit", ["3", " 3 ", Decimal("2"), Decimal("2.5"), 2.0, 2.5, 1.4999])
@pytest.mark.parametrize("offset", ["", " OFFSET 1"])
def test_limit_parameters_convert_as_postgresql_does(pdb, ref, limit, offset):
    got, want = answers(pdb, ref, f"SELECT id FROM orders ORDER BY id LIMIT %s{offset}", (limit,))
    assert got == want


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-1, psycopg2.errors.InvalidRowCountInLimitClause),
        ("-1", psycopg2.errors.InvalidRowCountInLimitClause),
        (Decimal("-0.7"), psycopg2.errors.InvalidRowCountInLimitClause),
        ("3.0", psycopg2.errors.InvalidTextRepresentation),
        ("3_0", psycopg2.errors.InvalidTextRepresentation),
        (2**63, psycopg2.errors.NumericValueOutOfRange),
        (float("inf"), psycopg2.errors.NumericValueOutOfRange),
        (True, NotSupportedError),
    ],
)
def test_limit_parameters_postgresql_rejects_are_errors(value, error):
    with pytest.raises(error):
        list(offset_limit(iter(range(10)), None, value))


def test_limit_rounds_numeric_half_away_from_zero():
    assert list(offset_limit(iter(range(10)), Decimal("0.5"), Decimal("2.5"))) == [1, 2, 3]
    assert list(offset_limit(iter(range(10)), "+1", 1.5)) == [1, 2]


# -- description: columns passing through keep the shards' details ----------------------


def described(description: Any) -> list[tuple[Any, ...]]:
    """Every field but table_oid (the same table has another OID on each server)."""
    return [(*column, column.table_column) for column in description]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT status, amount, count(*), sum(amount), max(amount) AS top FROM orders GROUP BY 1, 2",
        "SELECT status AS s, min(ship_date) FROM orders GROUP BY status",
        "SELECT count(*), max(note) FROM orders",
    ],
)
def test_merged_description_is_the_reference_description(pdb, ref, sql):
    cur = pdb.cursor()
    cur.execute(sql)
    with ref.cursor() as rcur:
        rcur.execute(sql)
        assert described(cur.description) == described(rcur.description)
        has_table = [c.table_oid is not None for c in rcur.description]
    assert [c.table_oid is not None for c in cur.description] == has_table


def test_array_agg_of_arrays_of_different_dimensions_is_not_answered(pdb, ref, adv):
    sql = "SELECT array_agg(CASE WHEN id % 3 = 0 THEN ARRAY[id, id] ELSE ARRAY[id] END) FROM adv"
    with pytest.raises(psycopg2.Error, match="dimensionality"), ref.cursor() as rcur:
        rcur.execute(sql)
    ref.rollback()
    refused(pdb, sql, naming="array_agg")
    got, want = answers(pdb, ref, "SELECT array_agg(ARRAY[id, g]) FROM adv")
    assert sorted(got[0][0]) == sorted(want[0][0])  # array_agg's order is the scan's
