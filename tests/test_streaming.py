"""Named cursors stream every shard's rows with memory bounded by shards x itersize."""

from __future__ import annotations

import contextlib

import psycopg2.extras
import pytest

import parallel_connection


def test_named_cursor_returns_every_row(pdb, ref):
    with ref.cursor() as rcur:
        rcur.execute("SELECT id, amount FROM orders")
        expected = sorted(rcur.fetchall())
    with pdb.cursor(name="stream_all") as cur:
        cur.itersize = 97
        cur.execute("SELECT id, amount FROM orders")
        got = sorted(cur)
    assert got == expected


def test_named_cursor_reads_at_most_two_batches_ahead_per_shard(pdb):
    itersize = 25
    with pdb.cursor(name="bounded") as cur:
        cur.itersize = itersize
        cur.execute("SELECT id FROM orders")
        delivered = 0
        worst = 0
        while cur.fetchone() is not None:
            delivered += 1
            # Rows read from the servers but not yet handed to the caller.
            read = sum(stream.fetched for stream in cur._streams)
            worst = max(worst, read - delivered)
            assert cur.rowcount == delivered
        assert delivered > 10 * itersize * 3
    # One batch being consumed and one in flight per shard, at most.
    assert worst <= 2 * itersize * 3
    assert worst >= itersize, "the next batches should be fetched ahead"


def test_named_cursor_with_dict_rows_and_fetchmany(pdb, ref):
    with ref.cursor() as rcur:
        rcur.execute("SELECT count(*) FROM orders WHERE paid")
        expected = rcur.fetchone()[0]
    with pdb.cursor(name="dicts", cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.itersize = 50
        cur.execute("SELECT id, paid FROM orders WHERE paid")
        rows = []
        while batch := cur.fetchmany(33):
            rows.extend(batch)
    assert len(rows) == expected
    assert all(r["paid"] is True for r in rows)


def test_named_cursor_error_on_one_shard_names_it(pdb, sample):
    port = psycopg2.extensions.parse_dsn(sample.shard_dsns[2])["port"]
    sql = "SELECT 1 / (current_setting('port')::int - %s) FROM generate_series(1, 10)"
    cur = pdb.cursor(name="err", merge="union")
    with pytest.raises(psycopg2.errors.DivisionByZero, match=r"^shard 2 "), cur:
        cur.execute(sql, (int(port),))
        cur.fetchall()
    pdb.rollback()


def test_empty_named_cursor(pdb):
    with pdb.cursor(name="empty") as cur:
        cur.execute("SELECT id FROM orders WHERE false")
        assert cur.fetchall() == []
        assert [c.name for c in cur.description] == ["id"]


def test_named_cursor_needs_a_transaction_like_psycopg2(sample):
    with contextlib.closing(parallel_connection.connect(sample.shard_dsns)) as pdb, pdb:
        pdb.autocommit = True
        with pytest.raises(psycopg2.ProgrammingError), pdb.cursor(name="nope") as cur:
            cur.execute("SELECT 1")
            cur.fetchall()


def test_breaking_out_of_iteration_loses_no_row(pdb, ref):
    with ref.cursor() as rcur:
        rcur.execute("SELECT count(*) FROM orders")
        expected = rcur.fetchone()[0]
    for name in (None, "brk"):
        with pdb.cursor(name=name) as cur:
            cur.itersize = 100
            cur.execute("SELECT id FROM orders")
            seen = []
            for row in cur:
                seen.append(row)
                if len(seen) == 10:
                    break
            seen += cur.fetchall()
            assert cur.rownumber == expected
        assert len(seen) == len({r[0] for r in seen}) == expected
    pdb.rollback()


def test_a_failed_fetch_fails_again_instead_of_looking_finished(pdb, sample):
    port = int(psycopg2.extensions.parse_dsn(sample.shard_dsns[1])["port"])
    sql = "SELECT 1 / (g - 50 * (current_setting('port')::int = %s)::int) FROM generate_series(1, 100) g"
    with pdb.cursor(name="failing", merge="union") as cur:
        cur.itersize = 10
        cur.execute(sql, (port,))
        with pytest.raises(psycopg2.errors.DivisionByZero):
            cur.fetchall()
        with pytest.raises(psycopg2.errors.DivisionByZero):
            cur.fetchone()
    pdb.rollback()
