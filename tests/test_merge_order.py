"""ORDER BY merges on real shards: NULLs on every shard, keys of several columns, directions, text,
timestamps; each answer is the reference server's, for client-side and named cursors alike."""

from __future__ import annotations

import datetime
import random
from decimal import Decimal

import psycopg2
import psycopg2.extras
import pytest
from mergetools import load, same_answer, spread_table

from parallel_connection import NotSupportedError

WORDS = ["a", "B", "é", "", "ab", "a ", "Z", "😀", "日本"]


def rows_with_nulls(n: int, spread: int, seed: int) -> list[tuple[object, ...]]:
    """``n`` rows of mt: keys drawn from ``spread`` values (few: many ties), a NULL in one of four."""
    rnd = random.Random(seed)

    def maybe(value: object) -> object:
        return None if rnd.random() < 0.25 else value

    return [
        (
            i,
            maybe(rnd.randrange(spread // 4 + 1)),
            maybe(rnd.choice(WORDS) + str(rnd.randrange(spread // 8 + 1))),
            maybe(rnd.randrange(spread)),
            maybe(Decimal(rnd.randrange(-spread, spread)) / 4),
            maybe(rnd.randrange(spread) / 2),
            maybe(rnd.random() < 0.5),
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module", params=[(400, 8), (3000, 100_000)], ids=["many_ties", "few_ties"])
def nulls_everywhere(request, conns):
    """Rows whose every key column has NULLs and values on every shard (row i on shard i % 3)."""
    n, spread = request.param
    rows = rows_with_nulls(n, spread, seed=n)
    for column in range(1, 7):
        for shard in range(3):
            assert any(r[column] is None for r in rows[shard::3]), (column, shard)
            assert any(r[column] is not None for r in rows[shard::3]), (column, shard)
    load(*conns, rows, [i % 3 for i in range(n)])
    return conns


ORDERS = [
    "x, id",
    "x NULLS FIRST, id",
    "x DESC, id",
    "x DESC NULLS LAST, id DESC",
    "y, id DESC",
    "y DESC NULLS LAST, id",
    "s, id",
    "s DESC, id",
    "s NULLS FIRST, id DESC",
    "f DESC, id",
    "b, id",
    # A NULL in the second key meets equal first keys from other shards.
    "g, x, id",
    "g, x NULLS FIRST, id",
    "g DESC, x DESC, id DESC",
    "g DESC NULLS LAST, x NULLS FIRST, id",
    "g, y DESC, id",
    "g NULLS FIRST, s DESC NULLS LAST, id",
    "x, s, id DESC",
    "s, x DESC, id",
    "b DESC, g, y, id",
]


@pytest.mark.parametrize("named", [False, True], ids=["client", "named"])
@pytest.mark.parametrize("order", ORDERS)
def test_order_by_with_nulls_on_every_shard_is_one_databases_order(pdb, nulls_everywhere, order, named):
    sql = f"SELECT id, g, s, x, y, f, b FROM mt ORDER BY {order}"
    same_answer(pdb, nulls_everywhere[1], sql, name=f"nulls_{abs(hash(order))}" if named else None)
    pdb.rollback()


@pytest.mark.parametrize("named", [False, True], ids=["client", "named"])
@pytest.mark.parametrize("order", ["g, x", "g DESC, x NULLS FIRST", "x, g DESC", "s, g", "g, s DESC"])
def test_ties_on_every_key_with_nulls_in_the_second_come_in_one_databases_order(
    pdb, nulls_everywhere, order, named
):
    # Only the key columns are selected: rows tied on every key are equal, so the order is exact.
    keys = order.replace(" DESC", "").replace(" NULLS FIRST", "")
    sql = f"SELECT {keys} FROM mt ORDER BY {order}"
    same_answer(pdb, nulls_everywhere[1], sql, name="ties_nulls" if named else None)
    pdb.rollback()


@pytest.mark.parametrize("named", [False, True], ids=["client", "named"])
def test_hidden_sort_keys_with_nulls_are_dropped_after_the_merge(pdb, nulls_everywhere, named):
    sql = "SELECT id FROM mt ORDER BY g DESC NULLS LAST, s NULLS FIRST, id"
    got = same_answer(pdb, nulls_everywhere[1], sql, name="hidden_nulls" if named else None)
    assert all(len(row) == 1 for row in got)
    pdb.rollback()


def test_streaming_with_a_small_itersize_merges_across_batch_ends(pdb, nulls_everywhere):
    sql = "SELECT id, g, x FROM mt ORDER BY g NULLS FIRST, x DESC, id"
    with nulls_everywhere[1].cursor() as rcur:
        rcur.execute(sql)
        want = rcur.fetchall()
    nulls_everywhere[1].rollback()
    cur = pdb.cursor(name="small_batches")
    cur.itersize = 7
    cur.execute(sql)
    got = [tuple(row) for row in cur]
    cur.close()
    pdb.rollback()
    assert got == want


@pytest.fixture
def moments(pdb, conns):
    """Tables of timestamps, dates and a text key on every server: ties across shards, NULLs."""
    start = datetime.datetime(2024, 3, 1, tzinfo=datetime.timezone.utc)
    rows = [
        (
            i,
            None if i % 7 == 0 else start + datetime.timedelta(minutes=(i * 37) % 90),
            None if i % 5 == 0 else (start + datetime.timedelta(days=(i * 11) % 9)).date(),
            None if i % 6 == 0 else f"k{(i * 13) % 17}",
        )
        for i in range(300)
    ]
    columns = "id int PRIMARY KEY, at timestamptz, day date, k text"
    yield from spread_table(pdb, conns, "mt_when", columns, [rows[0::3], rows[1::3], rows[2::3]])


@pytest.mark.parametrize("named", [False, True], ids=["client", "named"])
@pytest.mark.parametrize(
    "order",
    [
        "at, id",
        "at DESC, id",
        "day NULLS FIRST, at DESC, id",
        "k, at, id",
        "k DESC, day, id DESC",
        "day, k, id",
    ],
)
def test_timestamps_dates_and_text_with_nulls_order_like_one_database(pdb, moments, order, named):
    sql = f"SELECT id, at, day, k FROM mt_when ORDER BY {order}"
    same_answer(pdb, moments[1], sql, name="moments" if named else None)
    pdb.rollback()


@pytest.fixture
def icu_words(pdb, conns):
    """A column under an ICU collation; each shard holds words whose ICU order is not code point order."""
    words = [["a", "B"], ["b", "C"], ["A", "c"]]
    parts = [list(enumerate(part)) for part in words]
    yield from spread_table(pdb, conns, "mt_icu", 'id int, s text COLLATE "und-x-icu"', parts)


# unnest() of an array of the column gives its elements the column's collation, under a new name.
UNNESTED = "SELECT u.w FROM mt_icu, unnest(ARRAY[mt_icu.s]) AS u(w) ORDER BY u.w"


@pytest.mark.parametrize("named", [False, True], ids=["client", "named"])
def test_a_shard_sorting_under_another_collation_is_refused_not_merged_by_code_point(pdb, icu_words, named):
    with icu_words[1].cursor() as rcur:
        rcur.execute(UNNESTED)
        icu_order = [w for (w,) in rcur.fetchall()]
    icu_words[1].rollback()
    assert icu_order != sorted(icu_order)  # a merge by code point would answer wrongly
    cur = pdb.cursor(name="icu_unnest") if named else pdb.cursor()
    with pytest.raises(NotSupportedError, match=r'sorts differently from code point order.*COLLATE "C"'):
        cur.execute(UNNESTED)
        cur.fetchall()
    pdb.rollback()


@pytest.mark.parametrize("named", [False, True], ids=["client", "named"])
def test_the_same_key_collate_c_is_merged_by_code_point(pdb, icu_words, named):
    sql = UNNESTED + ' COLLATE "C"'
    got = same_answer(pdb, icu_words[1], sql, name="icu_unnest_c" if named else None)
    assert [w for (w,) in got] == sorted(w for (w,) in got)
    pdb.rollback()


def test_text_keys_merge_without_a_python_key_per_row(pdb, nulls_everywhere, monkeypatch):
    """The text check and the merge run in C: the per-row Python key is never built."""
    from parallel_connection.merge import runs

    def no_python_key(*args, **kwargs):
        raise AssertionError("a Python key per row")

    monkeypatch.setattr(runs.RowOrder, "_slow", no_python_key)
    for order in ("s, id", "s DESC NULLS LAST, x, id", "g, s NULLS FIRST, id", "x, g DESC, id"):
        same_answer(pdb, nulls_everywhere[1], f"SELECT id, s, x, g FROM mt ORDER BY {order}")
        pdb.rollback()


@pytest.fixture
def ends_of_time(pdb, conns):
    """infinity and the calendar's last value (one Python value for both) on different shards."""
    rows = [
        (1, 1, "infinity", "infinity", "infinity"),
        (2, 1, "9999-12-31 23:59:59.999999", "9999-12-31", "9999-12-31 23:59:59.999999+00"),
        (3, 1, "-infinity", "-infinity", "0001-01-01 00:00:00+00"),
        (4, 1, "0001-01-01 00:00:00", "0001-01-01", "0001-01-02 00:00:00+00"),
        (5, 1, "2024-01-01 00:00", "2024-01-01", "2024-01-01 00:00+00"),
        (6, 2, None, None, None),
    ]
    columns = "id int, g int, ts timestamp, d date, tz timestamptz"
    yield from spread_table(pdb, conns, "mt_ends", columns, [rows[i::3] for i in range(len(conns[0]))])


@pytest.mark.parametrize("named", [False, True], ids=["client", "named"])
@pytest.mark.parametrize("column", ["ts", "d", "tz"])
@pytest.mark.parametrize(
    "order", ["{c}, id", "{c} DESC, id", "g, {c}, id", "g DESC, {c} DESC NULLS LAST, id"]
)
def test_an_infinity_among_the_keys_is_ordered_exactly_or_refused(pdb, ends_of_time, column, order, named):
    sql = f"SELECT id FROM mt_ends ORDER BY {order.format(c=column)}"
    with ends_of_time[1].cursor() as rcur:
        rcur.execute(sql)
        want = rcur.fetchall()
    ends_of_time[1].rollback()
    cur = pdb.cursor(name="ends") if named else pdb.cursor()
    try:
        cur.execute(sql)
        got = cur.fetchall()
    except NotSupportedError as exc:
        assert "ORDER BY on a date or timestamp" in str(exc)
    else:
        assert got == want, sql
    finally:
        pdb.rollback()


@pytest.fixture
def own_database(servers):
    """A database of its own on every server (its catalog holds only what the test makes)."""
    from psycopg2.extensions import make_dsn

    dsns = [*servers.shard_dsns, servers.reference_dsn]
    for dsn in dsns:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS mt_text_facts")
            cur.execute("CREATE DATABASE mt_text_facts TEMPLATE template0 LOCALE 'C' ENCODING 'UTF8'")
        conn.close()
    own = [make_dsn(dsn, dbname="mt_text_facts") for dsn in dsns]
    yield own[:-1], own[-1]
    for dsn in dsns:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS mt_text_facts WITH (FORCE)")
        conn.close()


def _on_all(dsns, sql):
    for dsn in dsns:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
        conn.close()


def test_text_runs_are_checked_only_while_the_catalog_holds_a_collation_but_c(own_database, monkeypatch):
    """With no column, row type or domain under a collation of its own, text orders by code point
    wherever it comes from: the shards' runs are not checked. One such anywhere brings the check back."""
    import parallel_connection
    from parallel_connection.merge import runs

    shard_dsns, reference_dsn = own_database
    rows = [(i, w + str(i % 7)) for i, w in enumerate(WORDS * 30)]
    for shard, dsn in enumerate([*shard_dsns, reference_dsn]):
        part = rows if shard == len(shard_dsns) else rows[shard :: len(shard_dsns)]
        conn = psycopg2.connect(dsn)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE tw (id int, s text)")
            psycopg2.extras.execute_values(cur, "INSERT INTO tw VALUES %s", part)
        conn.commit()
        conn.close()
    from parallel_connection.columnar import read

    checks = []
    in_order = runs.RowOrder.in_order
    monkeypatch.setattr(runs.RowOrder, "in_order", lambda self, run: checks.append(1) or in_order(self, run))
    runs_sorted = read.runs_sorted
    monkeypatch.setattr(read, "runs_sorted", lambda *args: checks.append(2) or runs_sorted(*args))
    pdb = parallel_connection.connect(shard_dsns)
    reference = psycopg2.connect(reference_dsn)
    try:
        sql = "SELECT s, id FROM tw ORDER BY s, id"
        for made, dropped in (
            (None, None),
            ('CREATE TABLE elsewhere (t text COLLATE "und-x-icu")', "DROP TABLE elsewhere"),
            ('CREATE DOMAIN icu_text AS text COLLATE "und-x-icu"', "DROP DOMAIN icu_text"),
            ('CREATE TYPE pair AS (a int, t text COLLATE "und-x-icu")', "DROP TYPE pair"),
        ):
            if made is not None:
                _on_all([*shard_dsns, reference_dsn], made)
            checks.clear()
            rows = same_answer(pdb, reference, sql)
            assert [tuple(r.values()) for r in pdb.read_arrow(sql).to_pylist()] == rows
            assert pdb.shard_set.facts().code_point_text is (made is None), made
            assert sorted(set(checks)) == ([] if made is None else [1, 2]), made
            pdb.rollback()
            if dropped is not None:
                _on_all([*shard_dsns, reference_dsn], dropped)
    finally:
        pdb.close()
        reference.close()
