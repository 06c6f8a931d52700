"""ParallelCursor.shard_rows(): a union's rows, each with the shard it came from."""

from __future__ import annotations

import psycopg2
import pytest

from parallel_connection.sample import shard_of

SQL = "SELECT id, customer_id FROM orders WHERE id <= 200"


@pytest.mark.parametrize("name", [None, "streamed"])
def test_each_row_comes_with_its_shard(pdb, name):
    with pdb.cursor(name, merge="union") as cur:
        cur.itersize = 7
        cur.execute(SQL)
        tagged = list(cur.shard_rows())
        assert cur.rownumber == 200
        assert cur.fetchall() == []
    assert sorted(row[0] for _, row in tagged) == list(range(1, 201))
    assert all(shard == shard_of(row[1], 3) for shard, row in tagged)


def test_merged_rows_have_no_shard(pdb):
    with pdb.cursor() as cur:
        cur.execute(SQL)
        with pytest.raises(psycopg2.ProgrammingError, match='merge="union"'):
            cur.shard_rows()


def test_only_before_the_first_fetch(pdb):
    with pdb.cursor(merge="union") as cur:
        cur.execute(SQL)
        cur.fetchone()
        with pytest.raises(psycopg2.ProgrammingError, match="before any fetch"):
            cur.shard_rows()
