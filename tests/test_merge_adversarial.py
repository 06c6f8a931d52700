"""Wrong answers an adversarial tester found: each is now the reference's answer or a refusal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg2
import psycopg2.extras
import pytest

from parallel_connection import NotSupportedError

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
    small smallint
)
"""

ROWS = [
    (1, 1, "00000000-0000-0000-0000-000000000001", "sad", "1 year", "infinity", "infinity", "24:00", 200),
    (2, 1, "00000000-0000-0000-0000-000000000002", "ok", "360 days", "9999-12-31 23:59:59.999999",
     "9999-12-31", "00:00", 300),
    (3, 2, "00000000-0000-0000-0000-000000000001", "happy", "1 mon", "-infinity", "-infinity", "12:00", 1),
    (4, 2, "00000000-0000-0000-0000-000000000003", "ok", "30 days", "0001-01-01 00:00:00", "0001-01-01",
     "13:00", 2),
    (5, 3, None, None, None, "2024-01-01 00:00", "2024-01-01", None, None),
]  # fmt: skip


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
