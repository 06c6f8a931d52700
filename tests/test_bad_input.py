"""Bad input gets psycopg2's errors (side by side with a plain psycopg2 connection), before anything
runs; DSN mistakes name the keyword, never the password; scan_ranges(where=) takes one expression."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest
from conftest import connected, first_rows, run_on_all
from psycopg2 import sql

import parallel_connection
from parallel_connection.errors import ShardInfo
from parallel_connection.local import PASSWORD_GROUP
from parallel_connection.placement import Modulo, Placement

Failure = tuple[type[BaseException], str, Any, Any]


def failure(call: Callable[[], Any]) -> Failure | None:
    """What ``call`` raised: class, message, pgcode and pgerror (None when it raised nothing)."""
    try:
        call()
    except Exception as exc:
        return type(exc), str(exc).strip(), getattr(exc, "pgcode", None), getattr(exc, "pgerror", None)
    return None


@pytest.fixture
def plain(sample: Any) -> Iterator[Any]:
    """A plain psycopg2 connection to shard 0: what the library must answer like."""
    conn = psycopg2.connect(sample.shard_dsns[0])
    yield conn
    conn.close()


@pytest.fixture(params=["merged", "union", "one shard"])
def ours(request: Any, sample: Any) -> Iterator[Any]:
    """A cursor merging over 3 shards, a union cursor over 3, a merging cursor over one shard."""
    dsns = sample.shard_dsns[:1] if request.param == "one shard" else sample.shard_dsns
    pdb = parallel_connection.connect(dsns)
    yield pdb.cursor(merge="union" if request.param == "union" else "auto")
    pdb.rollback()  # not commit: a union cursor's executemany counts as a write (two-phase commit)
    pdb.close()


# -- queries psycopg2 cannot send ----------------------------------------------------------------------

NOT_SENDABLE: dict[str, Callable[[Any], Any]] = {
    "execute(None)": lambda cur: cur.execute(None),
    "execute(None, vars)": lambda cur: cur.execute(None, (1,)),
    "execute(42)": lambda cur: cur.execute(42),
    "execute(bytearray)": lambda cur: cur.execute(bytearray(b"SELECT 1")),
    "execute(list)": lambda cur: cur.execute(["SELECT 1"]),
    "executemany(None)": lambda cur: cur.executemany(None, [(1,)]),
    "executemany(42)": lambda cur: cur.executemany(42, [(1,)]),
    "callproc(None)": lambda cur: cur.callproc(None),
    "callproc(42)": lambda cur: cur.callproc(42),
    "callproc(bytearray)": lambda cur: cur.callproc(bytearray(b"now")),
    "callproc(name, 42)": lambda cur: cur.callproc("now", 42),
    "byte 0xff": lambda cur: cur.execute(b"SELECT '\xff'"),
    "bad continuation": lambda cur: cur.execute(b"SELECT '\xc3\x28'"),
    "cut sequence": lambda cur: cur.execute(b"SELECT 1 WHERE '\xe2\x82' = 'x'"),
    "byte 0xff with vars": lambda cur: cur.execute(b"SELECT %s, '\xff'", ("x",)),
    "byte 0xff in a merged aggregate": lambda cur: cur.execute(
        b"SELECT count(*) FROM orders WHERE note = '\xff'"
    ),
    "byte 0xff in executemany": lambda cur: cur.executemany(b"SELECT %s, '\xff'", [(1,), (2,)]),
    "byte 0xff in callproc": lambda cur: cur.callproc(b"n\xffow"),
    "NUL in a parameter": lambda cur: cur.execute("SELECT %s", ("a\x00b",)),
    "NUL in a named parameter": lambda cur: cur.execute("SELECT %(a)s", {"a": "a\x00b"}),
    "NUL in executemany": lambda cur: cur.executemany("SELECT %s", [("a",), ("a\x00b",)]),
    "NUL in sql.Literal": lambda cur: cur.execute(sql.SQL("SELECT {}").format(sql.Literal("a\x00"))),
}


@pytest.mark.parametrize("case", NOT_SENDABLE)
def test_bad_input_raises_what_psycopg2_raises(ours: Any, plain: Any, case: str) -> None:
    theirs = failure(lambda: NOT_SENDABLE[case](plain.cursor()))
    assert theirs is not None
    assert failure(lambda: NOT_SENDABLE[case](ours)) == theirs


def test_undecodable_bytes_get_the_servers_error_with_its_code(ours: Any) -> None:
    with pytest.raises(psycopg2.errors.CharacterNotInRepertoire) as info:
        ours.execute(b"SELECT '\xff'")
    assert info.value.pgcode == "22021"
    assert str(info.value) == 'invalid byte sequence for encoding "UTF8": 0xff\n'
    assert info.value.pgerror == 'ERROR:  invalid byte sequence for encoding "UTF8": 0xff\n'


def test_a_refused_query_keeps_the_previous_results_as_psycopg2_does(ours: Any, plain: Any) -> None:
    for cur in (plain.cursor(), ours):
        cur.execute("SELECT 1")
        with pytest.raises(psycopg2.ProgrammingError, match=r"^can't execute an empty query$"):
            cur.execute(None)
        assert set(cur.fetchall()) == {(1,)}


def test_executemany_of_nothing_checks_nothing_as_psycopg2(ours: Any, plain: Any) -> None:
    mine, theirs = ours, plain.cursor()
    for cur in (mine, theirs):
        cur.executemany(None, [])
        cur.executemany(42, iter(()))
    assert (mine.rowcount, mine.description) == (theirs.rowcount, theirs.description) == (0, None)


# -- NUL in the query text ----------------------------------------------------------------------------


def _nul_message(plain: Any) -> str:
    found = failure(lambda: plain.cursor().execute("SELECT %s", ("\x00",)))
    assert found is not None and found[0] is ValueError
    return found[1]


@pytest.mark.parametrize(
    "call",
    [
        lambda cur: cur.execute("SELECT 1\x00; SELECT 2"),
        lambda cur: cur.execute(b"SELECT 1\x00 garbage"),
        lambda cur: cur.execute(sql.SQL("SELECT 1\x00; SELECT {}").format(sql.Literal(2))),
        lambda cur: cur.execute("SELECT %s\x00", (1,)),
        lambda cur: cur.executemany("SELECT %s\x00", [(1,)]),
        lambda cur: cur.callproc("now\x00"),
    ],
)
def test_nul_in_the_query_text_is_refused_with_psycopg2s_nul_error(ours: Any, plain: Any, call: Any) -> None:
    with pytest.raises(ValueError) as info:
        call(ours)
    assert str(info.value) == _nul_message(plain)


def test_psycopg2_runs_only_the_text_before_a_nul_which_is_why_it_is_refused(plain: Any) -> None:
    cur = plain.cursor()
    cur.execute("SELECT 1\x00; SELECT 2")
    assert cur.fetchall() == [(1,)]


# -- nothing runs, on any shard -----------------------------------------------------------------------

PLACEMENT = Placement(sharded={"bi_t": ("k", Modulo())})


@pytest.fixture
def table(sample: Any) -> Iterator[Any]:
    every = [*sample.shard_dsns, sample.reference_dsn]
    run_on_all(every, "DROP TABLE IF EXISTS bi_t; CREATE TABLE bi_t (k int PRIMARY KEY, note text)")
    run_on_all(every, "INSERT INTO bi_t SELECT k, 'row ' || k FROM generate_series(1, 9) AS k")
    try:
        with connected(sample, PLACEMENT) as opened:
            yield opened
    finally:
        run_on_all(every, "DROP TABLE IF EXISTS bi_t")


def _rows(conns: list[Any]) -> list[list[Any]]:
    out = []
    for conn in conns:
        with conn.cursor() as cur:
            cur.execute("SELECT k, note FROM bi_t ORDER BY k")
            out.append(cur.fetchall())
    return out


def test_undecodable_bytes_write_nothing_on_any_shard(table: Any) -> None:
    pdb, ref, shards = table
    before = _rows(shards)
    pdb.autocommit = ref.autocommit = True
    statement = b"INSERT INTO bi_t VALUES (10, 'ten'), (11, 'eleven'), (12, '\xff')"
    theirs = failure(lambda: ref.cursor().execute(statement))
    assert theirs is not None and theirs[0] is psycopg2.errors.CharacterNotInRepertoire
    assert failure(lambda: pdb.cursor().execute(statement)) == theirs
    assert failure(lambda: pdb.cursor().execute(b"UPDATE bi_t SET note = '\xff' WHERE k > 0")) == theirs
    assert _rows(shards) == before


def test_nul_in_a_delete_deletes_nothing_where_psycopg2_deletes_every_row(table: Any) -> None:
    pdb, ref, shards = table
    before = _rows(shards)
    pdb.autocommit = ref.autocommit = True
    statement = "DELETE FROM bi_t\x00 WHERE k = 1"
    with pytest.raises(ValueError, match="NUL"):
        pdb.cursor().execute(statement)
    assert _rows(shards) == before
    ref.cursor().execute(statement)
    assert _rows([ref]) == [[]], "libpq sent 'DELETE FROM bi_t': every row went"


# -- DSN typos: the keyword shown, the password never -------------------------------------------------

PW = "Tr0ub4dor3x"
TYPOS = [
    (f"host=127.0.0.1 prot=6640 password={PW}", "prot"),
    (f"host=127.0.0.1 passwrd={PW}", "passwrd"),
    (f"host=127.0.0.1 password='{PW}' dbnme=x", "dbnme"),
    (f"host = 127.0.0.1 password = {PW} prot = 1", "prot"),
    (f"host=127.0.0.1 PORT=6640 password={PW}", "PORT"),
    (f"host=127.0.0.1 port 6640 password={PW}", "port"),
    (f"host=127.0.0.1 password={PW} =6640", ""),
    (f"host=127.0.0.1 password='{PW}", None),
    (f"host=127.0.0.1 password={PW} dbname='x", None),
    (f"host=127.0.0.1 password={PW} more", None),
    (f"host=127.0.0.1 password={PW} {PW}-2=1", None),
    (f"postgresql://u:{PW}@127.0.0.1:6640/db?sslmod=require", "sslmod"),
    (f"postgresql://u:{PW}@127.0.0.1/db?sslmode", "sslmode"),
    (f"postgresql://u:{PW}@127.0.0.1/db?password=a=b", "password"),
    (f"postgres://u:{PW}@127.0.0.1/db?host=h&prot=1", "prot"),
    (f"postgresql://u@127.0.0.1/db?password={PW}&passwrd=x", "passwrd"),
    (f"postgresql://u:{PW}%zz@127.0.0.1/db", None),
    (f"postgresql://u:{PW}@[::1/db", "]"),
    (f"postgresql:/u:{PW}@127.0.0.1/db", None),
]


@pytest.mark.parametrize(("dsn", "keyword"), TYPOS)
def test_a_dsn_typo_names_the_keyword_never_the_password(dsn: str, keyword: str | None) -> None:
    with pytest.raises(psycopg2.ProgrammingError) as parsed:
        psycopg2.extensions.parse_dsn(dsn)
    theirs = failure(lambda: psycopg2.connect(dsn))
    with pytest.raises(psycopg2.ProgrammingError) as info:
        parallel_connection.connect(["host=127.0.0.1", dsn])
    message = str(info.value)
    assert theirs is not None and theirs[0] is type(info.value) is psycopg2.ProgrammingError
    assert message.startswith("shard 1: invalid dsn: ")
    assert PW not in message and PW not in repr(info.value)
    assert info.value.__context__ is None and info.value.__cause__ is None
    libpq = str(parsed.value).strip()
    if keyword is not None:
        assert f'"{keyword}"' in libpq and f'"{keyword}"' in message
    kept = {keyword, "="}
    expected = re.sub(r'"([^"]*)"', lambda m: m.group(0) if m.group(1) in kept else '"***"', libpq)
    assert expected in message


# -- passwords, whatever the DSN's form ---------------------------------------------------------------

SPECIAL = "Qx7@k:/%40 Zj'\"\\w9"
"""'@', ':', '/', a literal '%40', a space, both quotes and a backslash."""
MISWRITTEN = ["Seg1@Seg2Zx", "Qx7z/kLmw"]
"""Written into a URI unencoded: libpq reads another password, the rest lands in the host or port."""
USER = "bi_pw_user"


def fragments(password: str) -> set[str]:
    return {password[i : i + 4] for i in range(len(password) - 3)}


def leaks(password: str, *texts: str | None) -> list[str]:
    """The 4-character pieces of ``password`` found in ``texts``."""
    return sorted(f for f in fragments(password) if any(f in (t or "") for t in texts))


def forms(port: int, password: str = SPECIAL) -> list[tuple[str, dict[str, str]]]:
    """``password`` in every form a DSN takes it: (dsn, connect keyword arguments)."""
    encoded = quote(password, safe="")
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    where = f"host=127.0.0.1 port={port} user={USER} dbname=postgres"
    return [
        (psycopg2.extensions.make_dsn(where, password=password), {}),
        (f"password = '{escaped}' {where}", {}),
        (f"postgresql://{USER}:{encoded}@127.0.0.1:{port}/postgres", {}),
        (f"postgresql://{USER}@127.0.0.1:{port}/postgres?password={encoded}", {}),
        (where, {"password": password}),
    ]


def miswritten(port: int) -> list[tuple[str, str]]:
    return [(pw, f"postgresql://{USER}:{pw}@127.0.0.1:{port}/postgres") for pw in MISWRITTEN]


@pytest.fixture(scope="module")
def login_port(servers: Any) -> Iterator[int]:
    """Shard 0's port, where USER must log in with a password (scram; everyone else is trusted)."""
    if servers.cluster is None:
        pytest.skip("needs the suite's own servers, whose pg_hba.conf asks USER for a password")
    run_on_all(servers.shard_dsns[:1], f"DROP ROLE IF EXISTS {USER}")
    run_on_all(
        servers.shard_dsns[:1], f"CREATE ROLE {USER} LOGIN PASSWORD 'right-one' IN ROLE {PASSWORD_GROUP}"
    )
    yield int(psycopg2.extensions.parse_dsn(servers.shard_dsns[0])["port"])
    run_on_all(servers.shard_dsns[:1], f"DROP ROLE IF EXISTS {USER}")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_the_forms_hold_the_password_as_libpq_reads_it() -> None:
    for dsn, kwargs in forms(5432):
        assert psycopg2.extensions.parse_dsn(dsn).get("password", kwargs.get("password")) == SPECIAL
    for password, dsn in miswritten(5432):
        parsed = psycopg2.extensions.parse_dsn(dsn)
        assert parsed.get("password") != password
        assert leaks(password, str(parsed)), "libpq puts part of it in another field"


@pytest.mark.parametrize("server", ["nothing listens", "wrong password"])
def test_a_password_never_shows_whatever_the_dsns_form(login_port: int, server: str) -> None:
    port = _closed_port() if server == "nothing listens" else login_port
    cases = [(SPECIAL, dsn, kwargs) for dsn, kwargs in forms(port)]
    cases += [(password, dsn, {}) for password, dsn in miswritten(port)]
    for password, dsn, kwargs in cases:
        with pytest.raises(psycopg2.OperationalError) as info:
            parallel_connection.connect([dsn], connect_timeout=5, **kwargs)
        exc = info.value
        assert str(exc).startswith("shard 0 (")
        assert not leaks(password, str(exc), repr(exc), exc.pgerror), dsn
        info_of = ShardInfo.from_dsn(0, dsn, **kwargs)
        assert not leaks(password, str(info_of), repr(info_of)), dsn
        if server == "wrong password" and password == SPECIAL:
            assert "password authentication failed" in str(exc)
    for password, dsn in miswritten(port):
        theirs = failure(lambda d=dsn: psycopg2.connect(d, connect_timeout=5))
        assert theirs is not None and leaks(password, theirs[1]), "psycopg2 itself shows a piece"


def test_a_password_with_every_special_character_logs_in_and_never_shows(login_port: int) -> None:
    admin = f"host=127.0.0.1 port={login_port} user=postgres dbname=postgres"
    run_on_all([admin], f"ALTER ROLE {USER} PASSWORD %s", (SPECIAL,))
    try:
        for dsn, kwargs in forms(login_port):
            with contextlib.closing(parallel_connection.connect([dsn], **kwargs)) as pdb, pdb:
                texts = [repr(pdb), str(pdb.shards), repr(pdb.shards)]
                with pytest.raises(psycopg2.errors.InvalidTextRepresentation) as info, pdb.cursor() as cur:
                    cur.execute("SELECT %s::int", (SPECIAL,))
                texts += [str(info.value), repr(info.value), info.value.pgerror]
                pdb.rollback()
            assert "invalid input syntax" in str(info.value)
            assert not leaks(SPECIAL, *texts), dsn
    finally:
        run_on_all([admin], f"ALTER ROLE {USER} PASSWORD 'right-one'")


# -- scan_ranges(where=): one boolean expression --------------------------------------------------------

WORK = "SELECT count(*) AS n FROM bi_victim WHERE id BETWEEN %(start)s AND %(end)s"
HOSTILE = [
    "1=1) ; DROP TABLE bi_victim; SELECT (1",
    "id > 0; DROP TABLE bi_victim",
    "id > 0 --\n; DROP TABLE bi_victim",
    "id > 0 /* a comment */ ; DROP TABLE bi_victim",
    "EXISTS (WITH d AS (DELETE FROM bi_victim RETURNING 1) SELECT 1 FROM d)",
    "EXISTS (WITH d AS (INSERT INTO bi_victim VALUES (0) RETURNING 1) SELECT 1 FROM d)",
    "EXISTS (WITH d AS (UPDATE bi_victim SET id = 0 RETURNING 1) SELECT 1 FROM d)",
    "EXISTS (SELECT 1 FROM bi_victim FOR UPDATE)",
    "EXISTS (SELECT 1 INTO bi_new FROM bi_victim)",
    "1=1) UNION (SELECT 2",
    "id IN %(ids)s) OR (true",
    "id = 'unterminated",
]


@pytest.fixture
def victim(sample: Any) -> Iterator[list[str]]:
    """A table on every shard that a where= must never touch."""
    run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS bi_victim, bi_new")
    run_on_all(sample.shard_dsns, "CREATE TABLE bi_victim AS SELECT generate_series(1, 50) AS id")
    run_on_all(sample.shard_dsns, "CREATE INDEX ON bi_victim (id)")
    yield sample.shard_dsns
    run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS bi_victim, bi_new")


def _intact(dsns: list[str]) -> bool:
    tables = first_rows(dsns, "SELECT to_regclass('bi_victim') IS NOT NULL, to_regclass('bi_new') IS NULL")
    if tables != [(True, True)] * len(dsns):
        return False
    return first_rows(dsns, "SELECT count(*), min(id) FROM bi_victim") == [(50, 1)] * len(dsns)


def _refused(exc: BaseException) -> bool:
    message = str(exc)
    return re.match(r"(shard \d .*: )?where=", message) is not None and "one boolean expression" in message


@pytest.mark.parametrize("where", HOSTILE)
def test_a_where_that_is_not_one_expression_is_refused_before_any_shard_is_asked(
    pdb: Any, victim: list[str], where: str
) -> None:
    with pytest.raises(psycopg2.ProgrammingError) as info:
        pdb.scan_ranges("bi_no_such_table", "id", WORK, where=where, params={"ids": (1, 2)})
    assert _refused(info.value), str(info.value)
    assert "does not exist" not in str(info.value)
    assert _intact(victim)


def test_with_autocommit_neither_a_where_nor_a_parameters_adapter_runs_a_second_statement(
    pdb: Any, victim: list[str]
) -> None:
    pdb.autocommit = True
    injected = psycopg2.extensions.AsIs("0) ; DROP TABLE bi_victim; SELECT (1")
    for where, params in [
        ("1=1) ; DROP TABLE bi_victim; SELECT (1", None),
        ("id > %(lo)s", {"lo": injected}),
        ("id > 0 OR EXISTS (WITH d AS (DELETE FROM bi_victim RETURNING 1) SELECT 1 FROM d)", None),
    ]:
        with pytest.raises(psycopg2.ProgrammingError) as info:
            pdb.scan_ranges("bi_victim", "id", WORK, where=where, params=params, progress=False)
        assert _refused(info.value), str(info.value)
    assert _intact(victim)


@pytest.mark.parametrize("split", ["width", "rows"])
def test_a_where_with_a_list_parameter_and_a_trailing_comment_still_runs(
    pdb: Any, victim: list[str], split: str
) -> None:
    report = pdb.scan_ranges(
        "bi_victim",
        "id",
        WORK + " AND id IN %(ids)s",
        where="id IN %(ids)s -- a few ids",
        params={"ids": (3, 7, 11, 40)},
        split=split,
        rows_per_range=5,
        progress=False,
    )
    assert report.ok and report.totals()["n"] == 4 * len(victim)


@pytest.mark.parametrize(
    ("table", "column"),
    [
        ("bi_victim; DROP TABLE bi_victim", "id"),
        ("bi_victim", "id; DROP TABLE bi_victim"),
        ('bi"victim', "id"),
    ],
)
def test_hostile_names_stay_refused(pdb: Any, victim: list[str], table: str, column: str) -> None:
    with pytest.raises(psycopg2.ProgrammingError, match="quote or semicolon"):
        pdb.scan_ranges(table, column, WORK)
    assert _intact(victim)
