"""COPY through the connection, on real shards, compared with the reference database: COPY FROM
STDIN split by key (text and CSV read exactly as PostgreSQL reads them), copied tables loaded on
every copy, COPY TO STDOUT each shard's rows, refusals, failures that write nothing, bounded memory;
and the record splitter checked against PostgreSQL's own reading of random data."""

from __future__ import annotations

import csv
import io
import random
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pglast
import psycopg2
import psycopg2.errors
import pytest
from conftest import connected, run_on_all
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import parallel_connection
from parallel_connection import NotSupportedError, ParallelConnection
from parallel_connection.copy_format import KeyField, parse_copy, split_records
from parallel_connection.placement import Hash, Modulo, Placement
from parallel_connection.plan.copies import check_copy

PLACEMENT = Placement(
    sharded={
        "cp_t": ("k", Modulo()),
        "cp_h": ("k", Hash()),
        "cp_chk": ("k", Modulo()),
        "cp_gen": ("k", Modulo()),
    },
    copied=["cp_c"],
)
TABLES = "cp_t, cp_h, cp_c, cp_chk, cp_g, cp_sp, cp_gen"
SCHEMA = f"""
DROP TABLE IF EXISTS {TABLES} CASCADE;
CREATE TABLE cp_t (k int, v text, w text);
CREATE TABLE cp_h (k text, v text);
CREATE TABLE cp_c (a int, b text);
CREATE TABLE cp_chk (k int, v int CHECK (v >= 0));
CREATE TABLE cp_g (k int, v text);
CREATE TABLE cp_sp (n serial, a text, b text, c text);
CREATE TABLE cp_gen (gone int, k int, x int, g int GENERATED ALWAYS AS (x * 2) STORED);
ALTER TABLE cp_gen DROP COLUMN gone;
"""
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def servers_with_tables(sample: Any) -> Iterator[Any]:
    every = [*sample.shard_dsns, sample.reference_dsn]
    run_on_all(every, SCHEMA)
    yield sample
    run_on_all(every, f"DROP TABLE IF EXISTS {TABLES} CASCADE")


@pytest.fixture
def db(servers_with_tables: Any) -> Iterator[tuple[ParallelConnection, Any, list[Any]]]:
    """A ParallelConnection with the placement, the reference database, and each shard's own connection."""
    sample = servers_with_tables
    run_on_all([*sample.shard_dsns, sample.reference_dsn], "TRUNCATE cp_t, cp_h, cp_c, cp_chk, cp_g, cp_gen")
    with connected(sample, PLACEMENT) as opened:
        yield opened


def contents(conn: Any, table: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {table}")
        rows = sorted(cur.fetchall(), key=repr)
    if not conn.autocommit:
        conn.rollback()
    return rows


def load_both(pdb: ParallelConnection, ref: Any, sql: str, data: bytes) -> int:
    """COPY ``data`` through the library and into the reference database; both commit; the count."""
    cur = pdb.cursor()
    cur.copy_expert(sql, io.BytesIO(data))
    pdb.commit()
    with ref.cursor() as rcur:
        rcur.copy_expert(sql, io.BytesIO(data))
        assert cur.rowcount == rcur.rowcount
    ref.commit()
    return cur.rowcount


def same_rows(pdb: ParallelConnection, ref: Any, shards: list[Any], table: str) -> list[list[Any]]:
    """The shards together hold the reference's rows; each shard's rows, for placement checks."""
    each = [contents(conn, table) for conn in shards]
    assert sorted((row for rows in each for row in rows), key=repr) == contents(ref, table)
    return each


def on_their_shards(each: list[list[Any]], shard_of: Any) -> None:
    for index, rows in enumerate(each):
        assert all(shard_of(row) == index for row in rows), (index, rows)


def truncate(shards: list[Any], ref: Any, table: str) -> None:
    for conn in [*shards, ref]:
        with conn.cursor() as cur:
            cur.execute(f"TRUNCATE {table}")
    ref.commit()


def nothing_anywhere(shards: list[Any], table: str) -> None:
    assert [contents(conn, table) for conn in shards] == [[] for _ in shards]


# -- encoders of COPY data, written independently of the library ------------------------------------


def text_field(value: Any, delimiter: str = "\t", null: str = "\\N") -> str:
    """One value in PostgreSQL's text COPY format."""
    if value is None:
        return null
    text = str(value).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return text.replace(delimiter, "\\" + delimiter)


def text_rows(rows: list[tuple[Any, ...]], delimiter: str = "\t", null: str = "\\N") -> bytes:
    lines = [delimiter.join(text_field(v, delimiter, null) for v in row) + "\n" for row in rows]
    return "".join(lines).encode()


class _Null(int):
    """A CSV field the csv module writes empty and unquoted (QUOTE_NONNUMERIC quotes every str)."""

    def __str__(self) -> str:
        return ""

    __repr__ = __str__


def csv_rows(rows: list[tuple[Any, ...]], header: tuple[str, ...] | None = None) -> bytes:
    """CSV by the csv module: NULL is an unquoted empty field, every string is quoted."""
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows([_Null() if v is None else v for v in row] for row in rows)
    return out.getvalue().encode()


SPECIAL = ["\t", "\n", "\r", "\r\n", "\\", "\\N", "\\.", '"', "'", ",", ";", "|", "", " ", "é", "😀", "NULL"]
texts = st.one_of(
    st.none(),
    st.sampled_from(SPECIAL),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
    st.lists(st.sampled_from([*SPECIAL, "a", "1"]), max_size=6).map("".join),
)
rows_kvw = st.lists(st.tuples(st.integers(-10_000, 10_000), texts, texts), max_size=30)


# -- COPY FROM into a sharded table -----------------------------------------------------------------


@SETTINGS
@given(rows=rows_kvw)
def test_text_rows_land_on_their_keys_shards_as_one_database_reads_them(db, rows) -> None:
    pdb, ref, shards = db
    truncate(shards, ref, "cp_t")
    assert load_both(pdb, ref, "COPY cp_t FROM STDIN", text_rows(rows)) == len(rows)
    on_their_shards(same_rows(pdb, ref, shards, "cp_t"), lambda row: row[0] % 3)


@SETTINGS
@given(rows=rows_kvw, header=st.booleans())
def test_csv_rows_quotes_and_nulls_land_on_their_keys_shards(db, rows, header) -> None:
    pdb, ref, shards = db
    truncate(shards, ref, "cp_t")
    data = csv_rows(rows, ("k", "v", "w") if header else None)
    sql = f"COPY cp_t FROM STDIN WITH (FORMAT csv{', HEADER' if header else ''})"
    assert load_both(pdb, ref, sql, data) == len(rows)
    on_their_shards(same_rows(pdb, ref, shards, "cp_t"), lambda row: row[0] % 3)


@SETTINGS
@given(rows=st.lists(st.tuples(texts.filter(lambda t: t is not None), texts), max_size=20))
def test_text_keys_hash_to_their_shards(db, rows) -> None:
    pdb, ref, shards = db
    truncate(shards, ref, "cp_h")
    load_both(pdb, ref, "COPY cp_h FROM STDIN WITH (FORMAT csv)", csv_rows(rows))
    on_their_shards(same_rows(pdb, ref, shards, "cp_h"), lambda row: Hash().shard_of(row[0], 3))


@pytest.mark.parametrize(
    ("sql", "data"),
    [
        ("COPY cp_t FROM STDIN WITH (DELIMITER '|', NULL 'nil')", b"1|a\\|b|nil\n2|nil|\\x41\\101\\t\n"),
        ("COPY cp_t (w, k) FROM STDIN", b"first\t4\nsecond\t5\n"),
        ("COPY cp_t (k, v) FROM STDIN", b"1\ta\r\n2\tb\\\r\\n\r\n\\.\r\n9\tnot read\r\n"),
        ("COPY cp_t (k, v) FROM STDIN", b"1\ta\r2\tb\r"),
        ("COPY cp_t (k, v) FROM STDIN", b" 7 \tpadded\n-8\tnegative\n10\tlast line without an end"),
        ("COPY cp_t (k, v) FROM STDIN", b"11\tbefore the marker\\.\n12\tnot read\n"),
        ("COPY cp_t FROM STDIN (FORMAT csv)", b'1,"multi\nline\r\nvalue",""\n2,,"x""y"\n\\.\n3,no,\n'),
        ("COPY cp_t FROM STDIN (FORMAT csv)", b'1,\\.,x\n2,"\\.",y\n'),
        (
            "COPY cp_t FROM STDIN (FORMAT csv, DELIMITER ';', QUOTE '''', ESCAPE '\\', NULL 'NULL')",
            b"1;'it\\'s';NULL\n2;'back\\\\slash';'NULL'\n3;'a;b\nc';\n",
        ),
        ("COPY cp_t FROM STDIN (FORMAT csv, HEADER MATCH)", b"k,v,w\r\n1,a,b\r\n2,c,d\r\n"),
        ("COPY cp_t FROM STDIN (FORMAT csv, FORCE_NOT_NULL (v), FORCE_NULL (w))", b'1,,""\n2,"",x\n'),
        ("COPY cp_t FROM STDIN (FORMAT text, HEADER)", b"a header line\n5\tx\ty\n"),
        ("COPY cp_t (k, v) FROM STDIN (ENCODING 'LATIN1')", "6\tcaf\xe9\n".encode("latin-1")),
        ("COPY cp_t (k, v) FROM STDIN WHERE k > 1", b"1\tfiltered out\n2\tkept\n"),
    ],
)
def test_options_line_ends_end_marker_as_one_database_reads_them(db, sql, data) -> None:
    pdb, ref, shards = db
    count = load_both(pdb, ref, sql, data)
    assert count == len(contents(ref, "cp_t")) > 0
    on_their_shards(same_rows(pdb, ref, shards, "cp_t"), lambda row: row[0] % 3)


def test_without_a_column_list_the_key_is_found_past_dropped_and_generated_columns(db) -> None:
    pdb, ref, shards = db
    load_both(pdb, ref, "COPY cp_gen FROM STDIN", b"1\t10\n2\t20\n4\t40\n")
    each = same_rows(pdb, ref, shards, "cp_gen")
    on_their_shards(each, lambda row: row[0] % 3)
    assert sorted(row for rows in each for row in rows) == [(1, 10, 20), (2, 20, 40), (4, 40, 80)]


def test_text_keys_in_the_data_encoding_and_escapes_in_the_servers(db) -> None:
    pdb, ref, shards = db
    data = "café\tlatin-1\n".encode("latin-1")
    load_both(pdb, ref, "COPY cp_h FROM STDIN (ENCODING 'LATIN1')", data)
    load_both(pdb, ref, "COPY cp_h FROM STDIN", b"caf\\xc3\\xa9\tescaped\n" + "naïve\tplain\n".encode())
    each = same_rows(pdb, ref, shards, "cp_h")
    on_their_shards(each, lambda row: Hash().shard_of(row[0], 3))
    assert [row[0] for rows in each for row in rows].count("café") == 2


def test_a_null_key_goes_to_the_first_shard_as_an_inserts_does(db) -> None:
    pdb, ref, shards = db
    data = text_rows([(1, "a", None), (2, None, None), (None, "b", "c"), (4, "d", "e")])
    load_both(pdb, ref, "COPY cp_t FROM STDIN", data)
    each = same_rows(pdb, ref, shards, "cp_t")
    assert [row for row in each[0] if row[0] is None] == [(None, "b", "c")]


def test_a_key_that_is_not_the_columns_type_is_refused_naming_the_line(db) -> None:
    pdb, _, shards = db
    cur = pdb.cursor()
    with pytest.raises(psycopg2.DataError) as info:
        cur.copy_expert("COPY cp_t FROM STDIN", io.BytesIO(b"1\ta\n2\tb\nthree\tc\n"))
    message = str(info.value)
    assert "line 3" in message and "cp_t" in message and " k " in message
    pdb.rollback()
    nothing_anywhere(shards, "cp_t")
    pdb.autocommit = True
    with pytest.raises(psycopg2.DataError, match="line 2"):
        cur.copy_expert("COPY cp_t FROM STDIN (FORMAT csv)", io.BytesIO(b"1,a\nx,b\n3,c\n"))
    with pytest.raises(psycopg2.DataError, match=r"line 1 .*'one'"):
        cur.copy_expert("COPY cp_t FROM STDIN", io.BytesIO(b"one\ta\n"))
    nothing_anywhere(shards, "cp_t")


class LazyRows(io.RawIOBase):
    """``rows`` lines of COPY text, made as they are read (``line(n)`` is line ``n``)."""

    def __init__(self, rows: int, line: Any = None) -> None:
        self.rows, self.made, self.pending, self.size = rows, 0, b"", 0
        self.line = line or (lambda n: b"%d\t%s row %d\t\\N\n" % (n, b"some text " * 8, n))

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while len(self.pending) < size and self.made < self.rows:
            self.made += 1
            self.pending += self.line(self.made)
        out, self.pending = self.pending[:size], self.pending[size:]
        self.size += len(out)
        return out


def test_a_shards_error_names_it_stops_every_copy_and_writes_nothing(db) -> None:
    pdb, _, shards = db
    cur = pdb.cursor()
    rows = [(k, 1) for k in range(1, 3001)]
    rows[1500] = (1501, -1)  # k 1501 lives on shard 1501 % 3 = 1
    with pytest.raises(psycopg2.IntegrityError) as info:
        cur.copy_expert("COPY cp_chk FROM STDIN", io.BytesIO(text_rows(rows)))
    assert "shard 1" in str(info.value) and "cp_chk_v_check" in str(info.value)
    with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
        cur.execute("SELECT 1")
    pdb.rollback()
    nothing_anywhere(shards, "cp_chk")
    pdb.autocommit = True
    with pytest.raises(psycopg2.IntegrityError, match="shard 1"):
        cur.copy_expert("COPY cp_chk FROM STDIN", io.BytesIO(text_rows(rows)))
    nothing_anywhere(shards, "cp_chk")
    big = LazyRows(300_000, lambda n: b"%d\t%d\n" % (n, -1 if n == 100 else n))
    with pytest.raises(psycopg2.IntegrityError, match="shard 1"):
        cur.copy_expert("COPY cp_chk FROM STDIN", big)
    assert big.made < 150_000  # the shard's error stopped the copy before the end of the input
    nothing_anywhere(shards, "cp_chk")
    with pytest.raises(psycopg2.ProgrammingError, match="named cursor"):
        pdb.cursor("named").copy_expert("COPY cp_chk FROM STDIN", io.BytesIO(b""))


class BreaksAfter(LazyRows):
    """Lazy rows whose ``read`` raises ``exc`` after ``reads`` reads."""

    def __init__(self, exc: BaseException, reads: int) -> None:
        super().__init__(100_000)
        self.exc, self.reads = exc, reads

    def read(self, size: int = -1) -> bytes:
        self.reads -= 1
        if self.reads < 0:
            raise self.exc
        return super().read(size)


@pytest.mark.parametrize("autocommit", [False, True])
def test_a_failing_file_or_ctrl_c_stops_every_copy_and_the_connection_goes_on(db, autocommit) -> None:
    pdb, _, shards = db
    pdb.autocommit = autocommit
    cur = pdb.cursor()
    for exc in (OSError("the disk is gone"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            cur.copy_expert("COPY cp_t FROM STDIN", BreaksAfter(exc, 40))
        pdb.rollback()
        nothing_anywhere(shards, "cp_t")
    cur.copy_expert("COPY cp_t FROM STDIN", io.BytesIO(b"1\tstill works\t\\N\n"))
    pdb.commit()
    assert cur.rowcount == 1 and [len(contents(conn, "cp_t")) for conn in shards] == [0, 1, 0]


def test_malformed_data_is_refused_with_postgresqls_error(db) -> None:
    pdb, _, shards = db
    cur = pdb.cursor()
    for data, message in [
        (b"1\ta\r\n2\tb\n", "literal newline found in data"),
        (b'1,"never closed\n2,b\n', "unterminated CSV quoted field"),
        (b"1\ta\n\\.x\n", "end-of-copy marker corrupt"),
    ]:
        sql = "COPY cp_t FROM STDIN" + (" (FORMAT csv)" if b'"' in data else "")
        with pytest.raises(psycopg2.errors.BadCopyFileFormat, match=message):
            cur.copy_expert(sql, io.BytesIO(data))
        pdb.rollback()
    nothing_anywhere(shards, "cp_t")


def test_a_big_input_streams_in_bounded_memory(db) -> None:
    pdb, _, shards = db
    cur = pdb.cursor()
    data = LazyRows(200_000)
    tracemalloc.start()
    try:
        cur.copy_expert("COPY cp_t FROM STDIN", data, size=65536)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    pdb.commit()
    assert cur.rowcount == 200_000
    assert peak < data.size / 10, (peak, data.size)
    counts = []
    for conn in shards:
        with conn.cursor() as c:
            c.execute("SELECT count(*), count(*) FILTER (WHERE k %% 3 <> %s) FROM cp_t", (len(counts),))
            counts.append(c.fetchone())
    assert counts == [(66_666, 0), (66_667, 0), (66_667, 0)]


# -- copied tables, COPY TO, copy_from / copy_to ----------------------------------------------------


def test_a_copied_table_gets_the_same_rows_on_every_copy_and_copy_to_gives_one(db) -> None:
    pdb, ref, shards = db
    data = b'a,b\n1,one\n2,\n3,"x,y"\n'
    assert load_both(pdb, ref, "COPY cp_c FROM STDIN (FORMAT csv, HEADER)", data) == 3
    assert [contents(conn, "cp_c") for conn in shards] == [contents(ref, "cp_c")] * 3
    out = io.StringIO()
    cur = pdb.cursor()
    cur.copy_expert("COPY cp_c TO STDOUT (FORMAT csv, HEADER)", out)
    want = io.StringIO()
    ref.cursor().copy_expert("COPY cp_c TO STDOUT (FORMAT csv, HEADER)", want)
    assert out.getvalue() == want.getvalue() and cur.rowcount == 3
    binary, want_binary = io.BytesIO(), io.BytesIO()
    cur.copy_expert("COPY cp_c TO STDOUT (FORMAT binary)", binary)
    ref.cursor().copy_expert("COPY cp_c TO STDOUT (FORMAT binary)", want_binary)
    ref.rollback()
    assert binary.getvalue() == want_binary.getvalue()
    assert load_both(pdb, ref, "COPY cp_c FROM STDIN (FORMAT binary)", binary.getvalue()) == 3
    assert [contents(conn, "cp_c") for conn in shards] == [contents(ref, "cp_c")] * 3


def test_copy_from_and_copy_to_round_trip_like_psycopg2(db) -> None:
    pdb, ref, shards = db
    rows = [(k, f"v{k}\twith tab", None if k % 4 else "w") for k in range(-5, 20)]
    data = text_rows(rows, "|", "NULL").decode()
    cur = pdb.cursor()
    cur.copy_from(io.StringIO(data), "cp_t", sep="|", null="NULL", columns=("k", "v", "w"))
    assert cur.rowcount == len(rows)
    ref.cursor().copy_from(io.StringIO(data), "cp_t", sep="|", null="NULL", columns=("k", "v", "w"))
    pdb.commit()
    ref.commit()
    on_their_shards(same_rows(pdb, ref, shards, "cp_t"), lambda row: row[0] % 3)
    out, want = io.StringIO(), io.StringIO()
    cur.copy_to(out, "cp_t", sep=";", columns=["w", "k"])
    ref.cursor().copy_to(want, "cp_t", sep=";", columns=["w", "k"])
    assert sorted(out.getvalue().splitlines()) == sorted(want.getvalue().splitlines())
    assert cur.rowcount == len(rows)
    headed = io.BytesIO()
    cur.copy_expert("COPY cp_t (k) TO STDOUT (FORMAT csv, HEADER)", headed)
    lines = headed.getvalue().decode().splitlines()
    assert lines[0] == "k" and sorted(map(int, lines[1:])) == sorted(r[0] for r in rows)
    with pytest.raises(psycopg2.errors.UndefinedTable):
        cur.copy_from(io.StringIO(data), "public.cp_t")  # one identifier, as psycopg2 >= 2.9 quotes it


def test_copy_of_a_select_gives_the_shards_rows_or_is_refused_naming_a_cursor(db) -> None:
    pdb, ref, _ = db
    load_both(pdb, ref, "COPY cp_t FROM STDIN", text_rows([(k, str(k), None) for k in range(12)]))
    cur = pdb.cursor()
    out = io.StringIO()
    cur.copy_expert("COPY (SELECT k, v FROM cp_t WHERE k > 3) TO STDOUT", out)
    assert sorted(out.getvalue().splitlines()) == sorted(f"{k}\t{k}" for k in range(4, 12))
    out = io.StringIO()
    cur.copy_expert("COPY (SELECT k FROM cp_t WHERE k = 7 ORDER BY v) TO STDOUT", out)
    assert out.getvalue() == "7\n"  # one shard holds every row it reads: it answers as written
    for query in [
        "SELECT * FROM cp_t ORDER BY k",
        "SELECT count(*) FROM cp_t",
        "SELECT * FROM cp_t LIMIT 3",
        "SELECT DISTINCT v FROM cp_t",
    ]:
        with pytest.raises(NotSupportedError, match="with a cursor"):
            cur.copy_expert(f"COPY ({query}) TO STDOUT", io.StringIO())
    with pytest.raises(NotSupportedError, match="binary"):
        cur.copy_expert("COPY cp_t TO STDOUT (FORMAT binary)", io.BytesIO())


# -- refusals before anything runs ------------------------------------------------------------------


def test_copies_that_cant_be_placed_are_refused(db, servers_with_tables) -> None:
    pdb, _, shards = db
    cur = pdb.cursor()
    with pytest.raises(NotSupportedError, match="leaves out the shard key k"):
        cur.copy_expert("COPY cp_t (v) FROM STDIN", io.BytesIO(b"x\n"))
    with pytest.raises(NotSupportedError, match="binary"):
        cur.copy_expert("COPY cp_t FROM STDIN (FORMAT binary)", io.BytesIO(b""))
    with pytest.raises(NotSupportedError, match="SJIS"):
        cur.copy_expert("COPY cp_t FROM STDIN (ENCODING 'SJIS')", io.BytesIO(b"1\tx\n"))
    with pytest.raises(NotSupportedError, match="not in the placement"):
        cur.copy_expert("COPY cp_g FROM STDIN", io.BytesIO(b"1\tx\n"))
    with pytest.raises(psycopg2.errors.UndefinedTable):
        cur.copy_expert("COPY cp_missing FROM STDIN", io.BytesIO(b"1\tx\n"))
    with pytest.raises(TypeError):
        cur.copy_expert("COPY cp_t FROM STDIN", None)
    bare = parallel_connection.connect(servers_with_tables.shard_dsns)
    try:
        with pytest.raises(NotSupportedError, match="Placement"):
            bare.cursor().copy_expert("COPY cp_g FROM STDIN", io.BytesIO(b"1\tx\n"))
        out = io.StringIO()
        bare.cursor().copy_expert("COPY cp_g TO STDOUT", out)  # reading needs no key
    finally:
        bare.close()
    nothing_anywhere(shards, "cp_t")
    nothing_anywhere(shards, "cp_g")


def test_check_copy_refuses_what_execute_cannot_run_on_every_shard(db) -> None:
    pdb, _, _ = db
    facts = pdb.shard_set.facts()

    def check(sql: str) -> None:
        check_copy(pglast.parse_sql(sql)[0].stmt, facts)

    with pytest.raises(psycopg2.ProgrammingError, match="copy_from"):
        check("COPY cp_t FROM STDIN")
    with pytest.raises(psycopg2.ProgrammingError, match="copy_to"):
        check("COPY cp_t TO STDOUT")
    for sql in ["COPY cp_t FROM '/tmp/rows'", "COPY cp_t FROM PROGRAM 'cat rows'", "COPY cp_t TO '/tmp/x'"]:
        with pytest.raises(NotSupportedError, match="copy_expert"):
            check(sql)
    with pytest.raises(NotSupportedError, match="STDOUT"):
        check("COPY (SELECT 1) TO '/tmp/x'")
    check("COPY cp_c FROM '/tmp/rows.txt'")  # a copied table: every copy reads its own server's file


# -- the splitter against PostgreSQL itself ---------------------------------------------------------

PIECES = [b"a", b"1", b"\\", b".", b"\t", b",", b'"', b"\n", b"\r", b"\r\n", b"N", b"'", b"x", b"0"]
PIECES += [b"\xc3\xa9", b"|", b"\\.", b"\\N", b"7", b"9", b'""', b'"a,b"', b"\\\\"]
FORMATS = [
    "",
    "(FORMAT csv)",
    "(FORMAT csv, HEADER)",
    "(FORMAT text, HEADER)",
    "(DELIMITER '|', NULL 'N')",
    "(FORMAT csv, QUOTE '''', ESCAPE '\\', NULL 'N')",
    "(FORMAT csv, FORCE_NULL (a, b, c))",
    "(FORMAT csv, FORCE_NOT_NULL (a, b, c))",
    "(FORMAT csv, DELIMITER '|', ESCAPE 'x')",
    "(FORMAT csv, QUOTE '\\')",
]
LINE_ERRORS = ("carriage return found", "newline found", "end-of-copy marker", "unterminated CSV")


@st.composite
def copy_data(draw: Any) -> tuple[str, bytes]:
    options = draw(st.sampled_from(FORMATS))
    if draw(st.booleans()):
        return options, b"".join(draw(st.lists(st.sampled_from(PIECES), max_size=25)))
    delimiter = b"|" if "'|'" in options else b"," if "csv" in options else b"\t"
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    field = st.lists(st.sampled_from([*PIECES[:15], b"", b'"', b'""', b'"a,b"']), max_size=3).map(b"".join)
    lines = draw(st.lists(st.lists(field, min_size=3, max_size=3).map(delimiter.join), max_size=10))
    end = draw(st.sampled_from([eol, b"", eol + b"\\." + eol, b"\\." + eol]))
    return options, eol.join(lines) + end


@pytest.fixture
def reference(servers_with_tables: Any) -> Iterator[Any]:
    conn = psycopg2.connect(servers_with_tables.reference_dsn)
    conn.autocommit = True
    yield conn
    conn.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=copy_data(), seed=st.integers(0, 2**32))
def test_the_splitter_reads_every_key_field_as_postgresql_does(reference, case, seed) -> None:
    options, data = case
    sql = f"COPY cp_sp (a, b, c) FROM STDIN {options}"
    with reference.cursor() as cur:
        cur.execute("TRUNCATE cp_sp RESTART IDENTITY")
        try:
            cur.copy_expert(sql, io.BytesIO(data))
            cur.execute("SELECT a, b, c FROM cp_sp ORDER BY n")
            read: list[tuple[Any, ...]] | str = cur.fetchall()
        except psycopg2.Error as exc:
            read = str(exc)
    rnd = random.Random(seed)
    spec = parse_copy(sql)
    for index, name in enumerate("abc"):
        sizes = rnd.choice([1, 2, 3, 7, 64, 4096])
        chunks = [data[i : i + sizes] for i in range(0, len(data), sizes)]
        try:
            records = list(split_records(chunks, spec.options, KeyField(index, name), table="cp_sp"))
        except psycopg2.Error as exc:
            assert isinstance(read, str), f"PostgreSQL read {read!r}; the splitter raised {exc}"
            continue
        if isinstance(read, str):
            assert not any(m in read for m in LINE_ERRORS), f"PostgreSQL: {read}; the splitter did not refuse"
            continue
        assert [r.key for r in records if not r.header] == [row[index] for row in read]
        assert data.startswith(b"".join(r.data for r in records))  # the input's own bytes, in order
