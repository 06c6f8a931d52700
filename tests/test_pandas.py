"""pandas.read_sql over a ParallelConnection gives the single-database frame."""

from __future__ import annotations

import pandas
import pytest

# pandas warns for every DBAPI2 connection other than sqlite3; the read itself is what we test.
pytestmark = pytest.mark.filterwarnings("ignore:pandas only supports SQLAlchemy:UserWarning")

SQL = "SELECT id, customer_id, status, amount, paid, ordered_at FROM orders WHERE id <= 500"


def frame(sql: str, con: object, **kwargs: object) -> pandas.DataFrame:
    return pandas.read_sql(sql, con, **kwargs).sort_values("id").reset_index(drop=True)


def test_read_sql_equals_the_reference_frame(pdb, ref):
    got = frame(SQL, pdb)
    assert len(got) == 500
    pandas.testing.assert_frame_equal(got, frame(SQL, ref))


def test_read_sql_with_params_and_exact_decimals(pdb, ref):
    sql = "SELECT id, amount FROM orders WHERE customer_id = %(cid)s"
    got = frame(sql, pdb, params={"cid": 2920}, coerce_float=False)
    pandas.testing.assert_frame_equal(got, frame(sql, ref, params={"cid": 2920}, coerce_float=False))
    assert not got.empty


def test_read_sql_in_chunks(pdb):
    chunks = list(pandas.read_sql(SQL, pdb, chunksize=120))
    assert [len(c) for c in chunks] == [120, 120, 120, 120, 20]
    assert sorted(pandas.concat(chunks)["id"]) == list(range(1, 501))
