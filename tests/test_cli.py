"""The command line end to end, as subprocesses against the throwaway shards."""

from __future__ import annotations

import csv
import datetime
import decimal
import io
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from cli_runner import MODULE, SCRIPT, Ran, cli_env, run, run_on_terminal
from conftest import port_of, run_on_all

import parallel_connection
from parallel_connection import cli
from parallel_connection.formats import text
from parallel_connection.local import PASSWORD_GROUP, LocalCluster, _free_port
from parallel_connection.sample import shard_of

COLUMNS = (
    "id, customer_id, status, amount, quantity, weight, paid, ordered_at, ship_date, note, tags, payload, ref"
)
ALL_TYPES = f"SELECT {COLUMNS} FROM orders WHERE id <= 300"


def direct(ref: Any, sql: str, params: Any = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of ``sql`` on the reference server (one database, every row)."""
    with ref.cursor() as cur:
        cur.execute(sql, params)
        return [c.name for c in cur.description], cur.fetchall()


def assert_fails(ran: Ran, code: int, *words: str) -> str:
    """One line on stderr (after any progress) naming ``words``, exit ``code``, no traceback or password."""
    assert ran.returncode == code, ran
    assert ran.stdout == ""
    lines = [line for line in ran.stderr.splitlines() if not line.endswith(" ...")]  # progress
    assert len(lines) == 1, ran.stderr
    line = lines[0]
    assert line.startswith("parallel-connection: ")
    assert "Traceback" not in ran.stderr
    assert "secret" not in ran.stderr
    for word in words:
        assert word in line, line
    return line


def as_plain(value: Any) -> Any:
    """A value as JSON output should carry it (numbers exact, dates ISO 8601)."""
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


# -- output ---------------------------------------------------------------------


def test_csv_equals_a_direct_query(sample, ref):
    ran = run(["query", ALL_TYPES, "--format", "csv"], dsns=sample.shard_dsns)
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == ""
    header, *rows = list(csv.reader(io.StringIO(ran.stdout)))
    columns, expected = direct(ref, ALL_TYPES)
    assert header == columns
    assert len(rows) == 300
    assert sorted(rows) == sorted([text(v) for v in row] for row in expected)
    assert rows[[r[0] for r in rows].index("1")][:4] == ["1", "2920", "paid", "0.37"]


def test_json_equals_a_direct_query_exactly(sample, ref):
    ran = run(["query", ALL_TYPES, "--format", "json"], dsns=sample.shard_dsns)
    assert ran.returncode == 0, ran.stderr
    got = json.loads(ran.stdout, parse_float=decimal.Decimal)
    columns, expected = direct(ref, ALL_TYPES)
    want = [{c: as_plain(v) for c, v in zip(columns, row, strict=True)} for row in expected]
    assert sorted(got, key=lambda r: r["id"]) == sorted(want, key=lambda r: r["id"])
    assert any(r["note"] is None for r in got) and any(r["paid"] is None for r in got)
    assert all(isinstance(r["amount"], decimal.Decimal) for r in got)


def test_table_is_the_default_on_a_terminal(sample, ref):
    sql = "SELECT id, customer_id, status, amount, paid FROM orders WHERE id <= 40"
    ran = run_on_terminal(["query", sql], env=cli_env(sample.shard_dsns))
    assert ran.returncode == 0, ran.stderr
    header, rule, *body, footer = ran.stdout.splitlines()
    columns, expected = direct(ref, sql)
    assert [c.strip() for c in header.split("|")] == columns
    assert set(rule) == {"-", "+"}
    assert footer == "(40 rows)"
    cells = [[c.strip() for c in line.split("|")] for line in body]
    assert sorted(cells) == sorted([text(v) for v in row] for row in expected)
    assert re.search(r"^\s+1 \|\s+2920 \| paid\s+\|\s+0\.37 \| false$", ran.stdout, re.MULTILINE)


def test_csv_is_the_default_when_piped(sample):
    ran = run(["query", "SELECT id, status FROM orders WHERE id = 1"], dsns=sample.shard_dsns)
    assert ran.stdout == "id,status\n1,paid\n"


def test_union_with_a_shard_column_tags_each_row_with_its_shard(sample):
    sql = "SELECT id, customer_id FROM orders WHERE id <= 300"
    ran = run(["query", "--union", "--shard-column", "shard", sql], dsns=sample.shard_dsns)
    assert ran.returncode == 0, ran.stderr
    header, *rows = list(csv.reader(io.StringIO(ran.stdout)))
    assert header == ["shard", "id", "customer_id"]
    assert len(rows) == 300
    assert all(int(s) == shard_of(int(c), len(sample.shard_dsns)) for s, _, c in rows)


def test_union_returns_every_shards_copy_of_a_copied_table(sample):
    sql = "SELECT id, name FROM customers WHERE id <= 2"
    args = ["query", "--union", "--shard-column", "shard", sql, "--format", "json"]
    ran = run(args, dsns=sample.shard_dsns)
    got = json.loads(ran.stdout)
    assert sorted((r["shard"], r["id"]) for r in got) == [(s, i) for s in range(3) for i in (1, 2)]


def test_streaming_gives_the_same_rows(sample):
    sql = "SELECT * FROM orders"
    buffered = run(["query", sql, "--format", "json"], dsns=sample.shard_dsns)
    streamed = run(["query", "--stream", sql, "--format", "json"], dsns=sample.shard_dsns)
    assert streamed.returncode == 0, streamed.stderr
    assert len(streamed.stdout.splitlines()) == 3002
    assert sorted(streamed.stdout.splitlines()) == sorted(buffered.stdout.splitlines())


def test_a_bug_is_one_line_too(monkeypatch, capsys):
    monkeypatch.setattr(cli, "connect", lambda *a, **k: 1 / 0)
    code = cli.main(["query", "--dsn", "host=nowhere password=secret", "SELECT 1"])
    assert code == 1
    assert capsys.readouterr().err == "parallel-connection: error: ZeroDivisionError: division by zero\n"


def test_null_and_no_header_options(sample):
    sql = "SELECT id, note FROM orders WHERE id = 7"
    ran = run(["query", sql, "--null", "NULL", "--no-header"], dsns=sample.shard_dsns)
    assert ran.stdout == "7,NULL\n"


def test_params_and_sql_from_stdin(sample, ref):
    sql = "SELECT id FROM orders WHERE customer_id = %(cid)s AND note LIKE 'note%%'"
    ran = run(["query", "-", "--param", "cid=2920", "--no-header"], dsns=sample.shard_dsns, stdin=sql)
    assert ran.returncode == 0, ran.stderr
    _, expected = direct(ref, sql, {"cid": 2920})
    assert sorted(ran.stdout.split()) == sorted(str(r[0]) for r in expected)


def test_a_statement_without_rows_reports_its_status_on_stderr(sample):
    ran = run(["query", "CREATE TEMP TABLE scratch (x int)"], dsns=sample.shard_dsns)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "", "CREATE TABLE\n")


# -- where rows live -------------------------------------------------------------------


def test_replicated_tables_are_read_once_as_one_database_would(sample, ref):
    sql = "SELECT count(*) AS n FROM customers"
    _, expected = direct(ref, sql)
    undeclared = run(["query", sql, "--no-header"], dsns=sample.shard_dsns)
    assert undeclared.returncode == 0, undeclared.stderr
    assert undeclared.stdout == f"{3 * expected[0][0]}\n"  # read as sharded: each copy counted
    for args in (["query", "--replicated", "customers"], ["--replicated", "customers", "query"]):
        ran = run([*args, sql, "--no-header"], dsns=sample.shard_dsns)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == f"{expected[0][0]}\n"
    join = "SELECT count(*) AS n FROM orders o JOIN customers c ON c.id = o.customer_id"
    twice = ["--replicated", "customers", "--replicated", "customers"]
    ran = run(["query", *twice, join, "--no-header"], dsns=sample.shard_dsns)
    assert ran.stdout == f"{direct(ref, join)[1][0][0]}\n", ran.stderr


def test_placement_check_takes_replicated_tables(sample):
    ran = run(["placement", "check", "--replicated", "customers"], dsns=sample.shard_dsns)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "customers: ok, copied, 5000 rows on every shard\n"
    assert "placement check: 1 table on 3 shards, all ok" in ran.stderr


def test_replicated_and_placement_are_usage_errors_where_they_do_not_fit(sample, tmp_path):
    placement = tmp_path / "placement.toml"
    placement.write_text('copied = ["customers"]\n')
    both = ["query", "--placement", str(placement), "--replicated", "customers", "SELECT 1"]
    assert_fails(run(both, dsns=sample.shard_dsns), 2, "--placement FILE or --replicated TABLE, not both")
    bad = run(["scan", "--replicated", "no such", "orders", "id", "SELECT 1"], dsns=sample.shard_dsns)
    assert_fails(bad, 2, "--replicated: not a valid name")
    assert_fails(
        run(["--replicated", "customers", "recover"], dsns=sample.shard_dsns), 2, "--replicated is for"
    )


# -- where the shards come from ---------------------------------------------------


def test_dsns_from_flags_a_file_or_the_environment_agree(sample, tmp_path):
    sql = "SELECT id FROM orders WHERE id <= 30"
    dsn_file = tmp_path / "shards.txt"
    dsn_file.write_text("# my shards\n\n" + "\n".join(f"  {d}" for d in sample.shard_dsns) + "\n")
    flags = [arg for dsn in sample.shard_dsns for arg in ("--dsn", dsn)]
    outputs = [
        run(["query", sql], dsns=sample.shard_dsns),
        run(["query", *flags, sql], dsns=[]),
        run(["query", "--dsn-file", str(dsn_file), sql], dsns=[]),
    ]
    assert all(o.returncode == 0 for o in outputs), outputs
    assert len({tuple(sorted(o.stdout.splitlines())) for o in outputs}) == 1
    assert len(outputs[0].stdout.splitlines()) == 31


def test_no_shards_is_a_usage_error(sample):
    assert_fails(run(["query", "SELECT 1"], dsns=None), 2, "PARALLEL_CONNECTION_DSNS", "--dsn")


def test_dsns_joined_with_semicolons_are_refused_not_read_as_one(sample):
    glued = ";".join(sample.shard_dsns)
    assert_fails(run(["query", "SELECT 1"], dsns=[glued]), 2, "one DSN per line")


def test_dsn_and_dsn_file_together_is_a_usage_error(sample, tmp_path):
    ran = run(["query", "--dsn", sample.shard_dsns[0], "--dsn-file", str(tmp_path / "x"), "SELECT 1"])
    assert_fails(ran, 2, "not both")


def test_shard_column_without_union_is_a_usage_error(sample):
    assert_fails(run(["query", "--shard-column", "s", "SELECT 1"], dsns=sample.shard_dsns), 2, "--union")


def test_console_script_is_installed(sample):
    assert SCRIPT.exists()
    sql = "SELECT count(*) AS n FROM customers"
    ran = run(["query", "--union", sql], dsns=sample.shard_dsns, argv0=[str(SCRIPT)])
    assert ran.stdout.splitlines() == ["n", "5000", "5000", "5000"]
    version = run(["--version"], argv0=[str(SCRIPT)])
    assert version.stdout.strip() == f"parallel-connection {parallel_connection.__version__}"


# -- one class of failure, one exit code --------------------------------------------


def test_bad_dsn_exits_3_naming_the_shard(sample):
    bad = "host=127.0.0.1 password=secret nonsense"
    ran = run(["query", "--dsn", sample.shard_dsns[0], "--dsn", bad, "SELECT 1"])
    assert_fails(ran, 3, "bad DSN", "shard 1")


def test_unreachable_shard_exits_4_naming_it(sample):
    port = _free_port()
    dead = f"host=127.0.0.1 port={port} user=postgres password=secret dbname=postgres"
    dsns = [sample.shard_dsns[0], dead, sample.shard_dsns[2]]
    env = cli_env(dsns, PGPASSWORD="secret")
    ran = run(["query", "SELECT 1"], env=env)
    assert_fails(ran, 4, "cannot connect", f"shard 1 (127.0.0.1:{port}/postgres)")


def test_passwords_come_from_libpq_and_a_wrong_one_exits_4_unseen(sample, tmp_path):
    role = "cli_password_user"
    run_on_all(sample.shard_dsns, f"DROP ROLE IF EXISTS {role}")
    run_on_all(sample.shard_dsns, f"CREATE ROLE {role} LOGIN PASSWORD 'right' IN ROLE {PASSWORD_GROUP}")
    try:
        dsns = [f"{d} user={role}" for d in sample.shard_dsns]
        passfile = tmp_path / "pgpass"
        passfile.write_text(f"127.0.0.1:*:*:{role}:right\n")
        passfile.chmod(0o600)
        whoami = "SELECT current_user AS who"
        ok = run(["query", "--union", whoami], env=cli_env(dsns, PGPASSFILE=str(passfile)))
        assert ok.stdout.splitlines() == ["who"] + [role] * 3, ok.stderr
        assert run(["query", "--union", whoami], env=cli_env(dsns, PGPASSWORD="right")).returncode == 0
        ran = run(["query", "SELECT 1"], env=cli_env(dsns, PGPASSWORD="secret"))
        line = assert_fails(ran, 4, "cannot connect", "password authentication failed")
        assert re.search(r"shard \d \(127\.0\.0\.1:\d+/postgres\)", line)
        wrong_in_dsn = [f"{d} user={role} password=secret" for d in sample.shard_dsns]
        assert_fails(run(["query", "SELECT 1"], dsns=wrong_in_dsn), 4, "password authentication failed")
    finally:
        run_on_all(sample.shard_dsns, f"DROP ROLE IF EXISTS {role}")


def test_bad_sql_exits_5_naming_the_shard(sample):
    line = assert_fails(run(["query", "SELEC 1"], dsns=sample.shard_dsns), 5, "SQL error", "syntax error")
    assert re.search(r"shard \d \(127\.0\.0\.1:\d+/postgres\)", line)
    missing = run(["query", "SELECT nope FROM orders"], dsns=sample.shard_dsns)
    assert_fails(missing, 5, 'column "nope" does not exist')


def test_unsupported_merge_exits_6(monkeypatch, capsys):
    monkeypatch.setattr(cli, "connect", lambda *a, **k: _RefusingConnection())
    code = cli.main(["query", "--dsn", "host=nowhere", "SELECT rank() OVER () FROM orders"])
    out, err = capsys.readouterr()
    assert code == 6 and out == ""
    assert err == (
        "parallel-connection: not supported across shards: window functions cannot be merged "
        "across shards; use --union\n"
    )


def test_unsupported_merge_exits_6_end_to_end(sample):
    # Each shard would draw its own random values: refused, whatever the coordinator can finish.
    ran = run(["query", "SELECT id, random() FROM orders ORDER BY id"], dsns=sample.shard_dsns)
    assert_fails(ran, 6, "not supported across shards", "random()")


PYTHON_WORDS = ("cursor(", "merge=", "Placement(", "pdb.", "connect(", "moved_rows", "copy_", "()")


@pytest.mark.parametrize(
    ("args", "stdin", "code", "words"),
    [
        (["SELECT id, random() FROM orders ORDER BY id"], None, 6, ["random()", "run it with --union"]),
        (
            ["WITH gone AS (DELETE FROM orders WHERE false RETURNING id) SELECT * FROM gone"],
            None,
            6,
            ["data-modifying WITH", "run it on one shard alone (give only its --dsn)"],
        ),
        (
            ["DO $$ BEGIN END $$"],
            None,
            6,
            [
                "or on every shard with --union",
                "given only one shard's --dsn, a write touches that shard only",
            ],
        ),
        (
            ["--replicated", "customers", "INSERT INTO orders (id, customer_id) VALUES (999999, 1)"],
            None,
            6,
            ['declare its shard key ([sharded.orders] with key = "COLUMN" in a --placement FILE)', "--union"],
        ),
        (
            ["--moved-rows", "100", "SELECT id, rank() OVER (ORDER BY amount) FROM orders"],
            None,
            6,
            ["moves more than 100 rows", "raise the bound with --moved-rows N"],
        ),
        (["COPY orders TO STDOUT"], None, 5, ["query does not run COPY ... TO STDOUT: SELECT the rows"]),
        (["COPY orders FROM STDIN"], "1\t2\n", 5, ["query does not run COPY ... FROM STDIN"]),
    ],
    ids=["union", "one-shard", "write-one-shard", "placement-key", "moved-rows", "copy-to", "copy-from"],
)
def test_refusal_hints_speak_the_command_lines_options(sample, args, stdin, code, words):
    line = assert_fails(run(["query", *args], dsns=sample.shard_dsns, stdin=stdin), code, *words)
    assert not [word for word in PYTHON_WORDS if word in line.replace("random()", "")], line


def test_an_undeclared_table_hint_names_the_placement_file(sample, tmp_path):
    placement = tmp_path / "placement.toml"
    placement.write_text('unknown = "refuse"\ncopied = ["customers"]\n')
    ran = run(["query", "--placement", str(placement), "SELECT count(*) FROM orders"], dsns=sample.shard_dsns)
    line = assert_fails(ran, 6, "public.orders is not in the placement", "declare it in the --placement FILE")
    assert 'unknown = "sharded" there' in line
    assert not [word for word in PYTHON_WORDS if word in line], line


def test_statement_timeout_exits_7_naming_the_shard(sample):
    ran = run(["query", "--timeout", "0.2", "SELECT pg_sleep(5)"], dsns=sample.shard_dsns)
    assert_fails(ran, 7, "shard failed", "statement timeout", "shard ")


def test_interrupt_exits_130_and_cancels_every_shard(sample):
    marker = "cli_interrupt_marker"
    proc = subprocess.Popen(
        [*MODULE, "query", "--union", f"SELECT pg_sleep(30) AS {marker}"],
        env=cli_env(sample.shard_dsns),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while sleeping(sample.shard_dsns, marker) < len(sample.shard_dsns):
            assert time.monotonic() < deadline, "the statement never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert_fails(Ran(proc.returncode, out, err), 130, "interrupted")
    deadline = time.monotonic() + 5
    while sleeping(sample.shard_dsns, marker):
        assert time.monotonic() < deadline, "a shard kept running the statement"
        time.sleep(0.05)


def test_a_closed_pipe_ends_quietly(sample):
    proc = subprocess.Popen(
        [*MODULE, "query", "SELECT * FROM orders", "--format", "json"],
        env=cli_env(sample.shard_dsns),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"[\n"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 141
    assert err == ""


def sleeping(dsns: list[str], marker: str) -> int:
    """How many shards are running the statement tagged ``marker``."""
    count = 0
    for dsn in dsns:
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
                    (f"%{marker}%",),
                )
                count += cur.fetchone()[0]
        finally:
            conn.close()
    return count


class _RefusingConnection:
    """Just enough of a ParallelConnection for ``cli.main``: every statement is refused."""

    autocommit = False

    def commit(self) -> None:
        pass

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return self

    def execute(self, query: Any, vars: Any = None) -> None:
        raise parallel_connection.NotSupportedError(
            'window functions cannot be merged across shards; use cursor(merge="union")'
        )

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass


# -- throwaway local shards ----------------------------------------------------------


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A temporary folder the servers can use (as the postgres user, when run as root)."""
    folder = Path(tempfile.mkdtemp(prefix="parallel_connection_cli_"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_shards_up_dsns_down(server_dir):
    folder = server_dir / "shards"
    where = ["--dir", str(folder)]
    up = run(["shards", "up", "--shards", "2", "--orders", "50", *where], env=cli_env())
    try:
        assert up.returncode == 0, up.stderr
        dsns = up.stdout.splitlines()
        assert len(dsns) == 2 and all(d.startswith("host=127.0.0.1 port=") for d in dsns)
        assert run(["shards", "dsns", *where], env=cli_env()).stdout.splitlines() == dsns

        export = run(["shards", "dsns", "--export", *where], env=cli_env()).stdout
        script = f'{export}\nprintf "%s" "$PARALLEL_CONNECTION_DSNS"'
        shell = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
        assert shell.stdout.splitlines() == dsns

        ids = run(["query", "--union", "--shard-column", "s", "SELECT id FROM orders"], dsns=dsns)
        rows = list(csv.reader(io.StringIO(ids.stdout)))[1:]
        assert sorted(int(i) for _, i in rows) == list(range(1, 51))
        assert {s for s, _ in rows} == {"0", "1"}

        again = run(["shards", "up", *where], env=cli_env())
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines() == dsns
        assert f"shards are already up in {folder}" in again.stderr

        LocalCluster.attach(folder).stop_server(1)
        assert_fails(run(["shards", "dsns", *where], env=cli_env()), 8, "shard1 (127.0.0.1:", "not running")
    finally:
        down = run(["shards", "down", *where], env=cli_env())
    assert down.returncode == 0, down.stderr
    assert not folder.exists()
    assert_fails(run(["query", "SELECT 1"], dsns=dsns), 4, "cannot connect")
    assert_fails(run(["shards", "dsns", *where], env=cli_env()), 8, "no shards are up")
    assert run(["shards", "down", *where], env=cli_env()).returncode == 0


def kill_postmaster(folder: Path, name: str) -> None:
    """``kill -9`` a server's postmaster (its postmaster.pid stays behind) and wait until it is gone."""
    pid = int((folder / name / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "the killed postmaster did not go away"
        time.sleep(0.05)


def test_shards_up_starts_a_killed_shard_again_on_its_port(server_dir):
    folder = server_dir / "shards"
    where = ["--dir", str(folder)]
    up = run(["shards", "up", "--shards", "2", "--orders", "50", *where], env=cli_env())
    try:
        assert up.returncode == 0, up.stderr
        dsns = up.stdout.splitlines()
        run_on_all(dsns, "CREATE TABLE kept (x int)")
        run_on_all(dsns, "CHECKPOINT")  # synchronous_commit is off: a killed server loses its last commits
        kill_postmaster(folder, "shard1")
        assert (folder / "shard1" / "postmaster.pid").exists()  # stale: PostgreSQL sees to it
        port = port_of(dsns[1])
        dead = run(["shards", "dsns", *where], env=cli_env())
        assert_fails(dead, 8, f"shard1 (127.0.0.1:{port}) is not running (1 of 2 are)", "shards up")

        again = run(["shards", "up", *where], env=cli_env())
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines() == dsns  # the same ports: exported DSNs stay right
        assert re.search(r"shard0 on 127\.0\.0\.1:\d+: running$", again.stderr, re.M)
        assert f"shard1 on 127.0.0.1:{port}: was not running, started again" in again.stderr
        assert "already up" not in again.stderr
        ids = run(["query", "SELECT count(*) FROM orders", "--no-header"], dsns=dsns)
        assert ids.stdout == "50\n", ids.stderr  # the data kept
        run_on_all(dsns, "SELECT * FROM kept")
        assert run(["shards", "dsns", *where], env=cli_env()).stdout.splitlines() == dsns

        LocalCluster.attach(folder).stop_server(1)
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            taken = run(["shards", "up", *where], env=cli_env())
            assert_fails(taken, 8, f"shard1 cannot start again on its port {port}", "shards down")
        assert run(["shards", "up", *where], env=cli_env()).stdout.splitlines() == dsns
        changed = run(["shards", "up", "--shards", "3", *where], env=cli_env())
        assert_fails(changed, 8, f"{folder} holds 2 shards, not 3", "shards down")
    finally:
        down = run(["shards", "down", *where], env=cli_env())
    assert down.returncode == 0, down.stderr
    assert not folder.exists()


def test_shards_up_refuses_a_folder_that_is_not_its_own(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    ran = run(["shards", "up", "--dir", str(tmp_path)], env=cli_env())
    assert_fails(ran, 8, "not empty")
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_shards_dir_defaults_to_the_environment_variable(tmp_path):
    env = cli_env(PARALLEL_CONNECTION_SHARDS_DIR=str(tmp_path / "elsewhere"))
    assert_fails(run(["shards", "dsns"], env=env), 8, str(tmp_path / "elsewhere"))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the servers to the postgres user")
def test_shards_up_as_root_says_when_postgres_cannot_reach_the_folder(tmp_path):
    tmp_path.chmod(0o700)
    ran = run(["shards", "up", "--dir", str(tmp_path / "shards")], env=cli_env())
    assert_fails(ran, 8, "postgres user cannot write")
    assert not (tmp_path / "shards").exists()


# -- scan: a job per id range ---------------------------------------------------------

SCAN_TOTALS = """
    SELECT count(*) AS orders, sum(amount) AS amount, count(note) AS notes
    FROM orders WHERE id BETWEEN %(start)s AND %(end)s
"""
SCAN_SUMMARY = re.compile(
    r"^parallel-connection: scan: (\d+) ranges on 3 shards, (\d+) done(?: \((\d+) from the checkpoint\))?, "
    r"(\d+) failed(?:, (\d+) not run)?, \d+ rows returned or changed, "
    r"0 rows with a NULL id not scanned \(\d+\.\d s\)$",
    re.MULTILINE,
)


def reference_totals(ref: Any) -> list[str]:
    _, rows = direct(ref, "SELECT count(*), sum(amount), count(note) FROM orders")
    return [text(v) for v in rows[0]]


def test_scan_prints_the_ranges_summed_like_one_database(sample, ref):
    ran = run(["scan", "orders", "id", SCAN_TOTALS, "--rows-per-range", "500"], dsns=sample.shard_dsns)
    assert ran.returncode == 0, ran.stderr
    assert list(csv.reader(io.StringIO(ran.stdout))) == [["orders", "amount", "notes"], reference_totals(ref)]
    summary = SCAN_SUMMARY.fullmatch(ran.stderr.strip())
    assert summary, ran.stderr
    assert summary.group(1) == summary.group(2) and int(summary.group(1)) >= 15


def test_scan_each_prints_every_ranges_rows_with_its_shard_and_bounds(sample, ref):
    work = "SELECT count(*) AS orders, min(id) AS first FROM orders WHERE id BETWEEN %(start)s AND %(end)s"
    args = ["scan", "orders", "id", work, "--rows-per-range", "700", "--each", "--format", "json"]
    ran = run(args, dsns=sample.shard_dsns)
    assert ran.returncode == 0, ran.stderr
    rows = json.loads(ran.stdout)
    assert {r["shard"] for r in rows} == {0, 1, 2}
    assert sum(r["orders"] for r in rows) == 3000
    for shard in range(3):
        spans = sorted((r["start"], r["end"]) for r in rows if r["shard"] == shard)
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(spans))  # no gap, no overlap
    assert all(r["first"] is None or r["start"] <= r["first"] <= r["end"] for r in rows)


def test_scan_reads_work_from_stdin_with_params_and_a_filter(sample, ref):
    work = "SELECT count(*) AS paid FROM orders WHERE id BETWEEN %(start)s AND %(end)s AND status = %(s)s"
    args = ["scan", "orders", "id", "-", "-p", "s=paid", "--where", "id > 1000", "--split", "rows"]
    ran = run([*args, "--no-header"], dsns=sample.shard_dsns, stdin=work)
    assert ran.returncode == 0, ran.stderr
    _, expected = direct(ref, "SELECT count(*) FROM orders WHERE status = 'paid' AND id > 1000")
    assert ran.stdout == f"{expected[0][0]}\n"


def test_scan_of_an_update_prints_its_rowcount(sample):
    run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS cli_scan_copy")
    run_on_all(
        sample.shard_dsns, "CREATE TABLE cli_scan_copy AS SELECT id, NULL::numeric AS gross FROM orders"
    )
    run_on_all(sample.shard_dsns, "INSERT INTO cli_scan_copy VALUES (NULL, NULL)")
    try:
        backfill = (
            "UPDATE cli_scan_copy SET gross = 1 WHERE id BETWEEN %(start)s AND %(end)s AND gross IS NULL"
        )
        first = run(
            ["scan", "cli_scan_copy", "id", backfill, "--rows-per-range", "1000"], dsns=sample.shard_dsns
        )
        assert first.returncode == 0, first.stderr
        assert first.stdout == "rowcount\n3000\n"
        assert "warning: cli_scan_copy.id leads no index" in first.stderr
        assert ", 3 rows with a NULL id not scanned (" in first.stderr
        assert "NULL" not in first.stderr.replace("rows with a NULL id not scanned", "")  # said once
        again = run(["scan", "cli_scan_copy", "id", backfill], dsns=sample.shard_dsns)
        assert again.stdout == "rowcount\n0\n"
    finally:
        run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS cli_scan_copy")


def test_scan_smoke_test_runs_the_first_range_of_each_shard_with_a_progress_bar(sample):
    args = ["scan", "orders", "id", SCAN_TOTALS, "--rows-per-range", "500", "--smoke-test", "--progress"]
    ran = run(args, dsns=sample.shard_dsns)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == ""  # the sums of a few ranges would look like an answer
    assert "ranges: 100%" in ran.stderr and "3/3" in ran.stderr
    assert "smoke test (first range of each shard): 3 ranges on 3 shards, 3 done, 0 failed" in ran.stderr
    each = run([*args[:-1], "--each", "--no-header"], dsns=sample.shard_dsns)
    assert sorted(line.split(",")[0] for line in each.stdout.splitlines()) == ["0", "1", "2"]
    assert "ranges:" not in each.stderr  # no bar unless asked for, off a terminal


def test_scan_refuses_a_bad_table_or_column_before_any_work(sample, tmp_path):
    checkpoint = tmp_path / "never.jsonl"
    work = "SELECT count(*) AS n FROM orders WHERE id BETWEEN %(start)s AND %(end)s"
    for table, column, words in [
        ("no_such_table", "id", ["table no_such_table does not exist"]),
        ("orders", "nope", ["has no column nope"]),
        ("orders", "status", ["orders.status is text", "integer column"]),
    ]:
        ran = run(["scan", table, column, work, "--checkpoint", str(checkpoint)], dsns=sample.shard_dsns)
        line = assert_fails(ran, 5, "SQL error", *words)
        assert re.search(r"shard \d \(127\.0\.0\.1:\d+/postgres\)", line)
    no_bounds = run(["scan", "orders", "id", "SELECT 1 AS one"], dsns=sample.shard_dsns)
    assert_fails(no_bounds, 5, "%(start)s and %(end)s")
    assert not checkpoint.exists()
    zero = run(["scan", "orders", "id", work, "--rows-per-range", "0"], dsns=sample.shard_dsns)
    assert zero.returncode == 2 and "--rows-per-range: must be at least 1" in zero.stderr


def test_scan_failed_ranges_exit_9_and_the_checkpoint_reruns_only_them(sample, ref, tmp_path):
    """A range failing for good is listed (shard, ids, error); a rerun with the checkpoint does the rest."""
    run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS cli_scan_block")
    run_on_all(sample.shard_dsns, "CREATE TABLE cli_scan_block AS SELECT 1500::bigint AS id")
    work = """
        SELECT count(*) AS orders, sum(amount) AS amount, count(note) AS notes,
               1 / (1 - (SELECT count(*) FROM cli_scan_block WHERE id BETWEEN %(start)s AND %(end)s)) AS ok
        FROM orders WHERE id BETWEEN %(start)s AND %(end)s
    """
    checkpoint = tmp_path / "scan.jsonl"
    dsns = [f"{d} password=secret" for d in sample.shard_dsns]
    args = ["scan", "orders", "id", work, "--rows-per-range", "500", "--checkpoint", str(checkpoint)]
    try:
        failed = run(args, dsns=dsns)
        assert failed.returncode == 9, failed
        assert failed.stdout == ""  # no sums that miss ranges
        assert "secret" not in failed.stderr and "Traceback" not in failed.stderr
        summary = SCAN_SUMMARY.search(failed.stderr)
        assert summary and summary.group(4) == "3", failed.stderr
        lines = [line for line in failed.stderr.splitlines() if "ranges failed:" in line]
        assert len(lines) == 4, failed.stderr
        for shard, line in enumerate(lines[:3]):
            match = re.fullmatch(
                rf"parallel-connection: ranges failed: shard {shard} \(127\.0\.0\.1:\d+/postgres\) "
                r"ids (\d+)-(\d+): division by zero",
                line,
            )
            assert match and int(match.group(1)) <= 1500 <= int(match.group(2)), line
        assert lines[3].endswith(
            f"3 ranges failed; run the same command again: "
            f"--checkpoint {checkpoint} skips the finished ranges"
        )

        run_on_all(sample.shard_dsns, "TRUNCATE cli_scan_block")
        rerun = run(args, dsns=dsns)
        assert rerun.returncode == 0, rerun.stderr
        summary = SCAN_SUMMARY.fullmatch(rerun.stderr.strip())
        assert summary, rerun.stderr
        total, done, resumed, failures, not_run = summary.groups()
        assert (int(done), int(resumed), int(failures), not_run) == (int(total), int(total) - 3, 0, None)
        header, row = list(csv.reader(io.StringIO(rerun.stdout)))
        assert header == ["orders", "amount", "notes", "ok"]
        assert row[:3] == reference_totals(ref) and row[3] == total
    finally:
        run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS cli_scan_block")


def test_scan_checks_the_works_columns_on_the_first_range_before_running_the_rest(sample, tmp_path):
    checkpoint = tmp_path / "scan.jsonl"
    work = "SELECT status, count(*) AS n FROM orders WHERE id BETWEEN %(start)s AND %(end)s GROUP BY status"
    args = ["scan", "orders", "id", work, "--rows-per-range", "50", "--checkpoint", str(checkpoint)]
    line = assert_fails(run(args, dsns=sample.shard_dsns), 2, "'status' holds str values", "--each")
    assert re.search(
        r"checked on the first range \(shard \d \(127\.0\.0\.1:\d+/postgres\) ids \d+-\d+\)", line
    )
    assert len(checkpoint.read_text().splitlines()) <= 1  # not the other 60 ranges
    clash = ["scan", "orders", "id", work.replace("status,", "status AS shard,"), "--each"]
    assert_fails(run(clash, dsns=sample.shard_dsns), 2, "clash with the range columns", "first range")


def test_scan_whose_first_ranges_all_fail_alike_stops_and_says_so_once(sample):
    work = "SELECT nope FROM orders WHERE id BETWEEN %(start)s AND %(end)s"
    ran = run(["scan", "orders", "id", work, "--rows-per-range", "2"], dsns=sample.shard_dsns)
    assert ran.returncode == 9, ran
    assert ran.stdout == "" and "Traceback" not in ran.stderr
    summary, line = ran.stderr.splitlines()  # not a line per range: 1,500 of them
    match = SCAN_SUMMARY.fullmatch(summary)
    assert match, summary
    total, _, _, failed, not_run = match.groups()
    assert int(total) >= 1500 and int(failed) + int(not_run) == int(total) and int(not_run) > 1400
    assert re.fullmatch(
        rf"parallel-connection: ranges failed: {failed} ranges failed with the same error, {not_run} "
        r"ranges not run \(the scan stopped early: its first ranges all failed\): "
        r'shard \d \(127\.0\.0\.1:\d+/postgres\) ids \d+-\d+: column "nope" does not exist',
        line,
    ), line


def test_scan_interrupted_exits_130_keeping_finished_ranges_in_the_checkpoint(sample, ref, tmp_path):
    checkpoint = tmp_path / "slow.jsonl"
    work = """
        SELECT count(*) AS orders, sum(amount) AS amount, count(note) AS notes
        FROM orders, pg_sleep(0.2) WHERE id BETWEEN %(start)s AND %(end)s
    """
    args = ["scan", "orders", "id", work, "--rows-per-range", "100", "--max-parallelism", "3"]
    args += ["--checkpoint", str(checkpoint)]
    proc = subprocess.Popen(
        [*MODULE, *args],
        env=cli_env(sample.shard_dsns),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not checkpoint.exists() or len(checkpoint.read_text().splitlines()) < 3:
            assert time.monotonic() < deadline and proc.poll() is None, "no range finished"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert out == "" and "Traceback" not in err
    assert re.search(r"interrupted: \d+ ranges finished before the stop; run the same command again", err)
    kept = len(checkpoint.read_text().splitlines())
    summary = SCAN_SUMMARY.search(err)
    assert summary, err
    total, done, _, _, not_run = summary.groups()
    assert int(done) == kept and int(not_run) == int(total) - kept > 0

    rerun = run(args, dsns=sample.shard_dsns)
    assert rerun.returncode == 0, rerun.stderr
    summary = SCAN_SUMMARY.fullmatch(rerun.stderr.strip())
    assert summary and int(summary.group(3)) == kept, rerun.stderr
    assert list(csv.reader(io.StringIO(rerun.stdout)))[1] == reference_totals(ref)
