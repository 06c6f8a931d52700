"""polars.read_database over the shards gives the frame one database gives.

Through the SQLAlchemy engine (``postgresql+parallel_connection``) and on a
ParallelConnection itself, compared with the reference database read the same way.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import polars
import pytest
import sqlalchemy as sa
from polars.testing import assert_frame_equal

SQL = "SELECT id, customer_id, status, amount, weight, paid, ordered_at, ship_date FROM orders"
BY_CUSTOMER = SQL + " WHERE customer_id IN (:a, :b) ORDER BY id"
BY_CUSTOMER_PYFORMAT = SQL + " WHERE customer_id IN (%(a)s, %(b)s) ORDER BY id"
CUSTOMERS = {"a": 2920, "b": 1543}


@pytest.fixture(scope="module")
def engine(sample: Any) -> Iterator[sa.Engine]:
    query = urllib.parse.urlencode([("shard", dsn) for dsn in sample.shard_dsns])
    eng = sa.create_engine(f"postgresql+parallel_connection:///?{query}")
    yield eng
    eng.dispose()


def test_read_database_through_the_engine_equals_the_reference(engine, reference_engine):
    options = {"parameters": CUSTOMERS}
    got = polars.read_database(BY_CUSTOMER, connection=engine, execute_options=options)
    assert got.height > 1 and got["customer_id"].n_unique() == 2
    assert_frame_equal(
        got, polars.read_database(BY_CUSTOMER, connection=reference_engine, execute_options=options)
    )


def test_read_database_in_batches_through_the_engine(engine, reference_engine):
    query = SQL + " ORDER BY id"
    batches = list(polars.read_database(query, connection=engine, iter_batches=True, batch_size=1000))
    assert [b.height for b in batches] == [1000, 1000, 1000]
    assert_frame_equal(polars.concat(batches), polars.read_database(query, connection=reference_engine))


def test_read_database_on_a_parallel_connection_equals_the_reference(pdb, ref):
    query = SQL + " WHERE id <= 500 ORDER BY id"
    got = polars.read_database(query, connection=pdb)
    assert got.height == 500
    assert_frame_equal(got, polars.read_database(query, connection=ref))


def test_read_database_on_a_parallel_connection_with_psycopg2s_vars_keyword(pdb, ref):
    options = {"vars": CUSTOMERS}
    got = polars.read_database(BY_CUSTOMER_PYFORMAT, connection=pdb, execute_options=options)
    assert got.height > 1
    assert_frame_equal(
        got, polars.read_database(BY_CUSTOMER_PYFORMAT, connection=ref, execute_options=options)
    )


def test_read_database_on_a_parallel_connection_with_parameters(pdb, ref):
    options = {"parameters": CUSTOMERS}
    got = polars.read_database(BY_CUSTOMER_PYFORMAT, connection=pdb, execute_options=options)
    assert got.height > 1
    assert_frame_equal(
        got, polars.read_database(BY_CUSTOMER_PYFORMAT, connection=ref, execute_options=options)
    )
