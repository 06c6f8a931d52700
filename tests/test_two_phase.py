"""A transaction that wrote on several shards commits atomically (two-phase commit), and what a
crashed client or a lost shard leaves prepared is recovered.

Until the executor calls ``write_scope`` itself, the tests write through the
shard connections inside ``pdb.shard_set.write_scope(...)``: the path every
write through the connection takes.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest
import yaml
from cli_runner import run

import parallel_connection
from parallel_connection import commit
from parallel_connection.commit import FORMAT_ID, TABLE
from parallel_connection.local import LocalCluster

ROOT = Path(__file__).resolve().parent.parent


def _admin(dsn: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def _query(dsn: str, statement: str, params: object = None) -> list[tuple]:
    conn = _admin(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def ids(dsn: str) -> list[int]:
    return [row[0] for row in _query(dsn, "SELECT id FROM tp_items ORDER BY id")]


def ours_prepared(dsn: str) -> list[str]:
    """This library's prepared parts in ``dsn``'s database."""
    rows = _query(dsn, "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
    return [gid for (gid,) in rows if gid.startswith(f"{FORMAT_ID}_")]


def decision_rows(dsn: str, schema: str = "public") -> list[tuple[str, bool]]:
    if not _query(dsn, "SELECT to_regclass(%s)", (f"{schema}.{TABLE}",))[0][0]:
        return []
    return [tuple(r) for r in _query(dsn, f"SELECT gid, committed FROM {schema}.{TABLE} ORDER BY gid")]


def roll_back_ours(dsn: str) -> None:
    conn = _admin(dsn)
    try:
        for gid in ours_prepared(dsn):
            conn.tpc_rollback(psycopg2.extensions.Xid.from_string(gid))
    finally:
        conn.close()


def write(pdb: parallel_connection.ParallelConnection, shards: list[int], first: int = 1) -> None:
    """Insert one row on each of ``shards`` (id ``first + shard``) as a write the executor wraps."""
    with pdb.shard_set.write_scope(shards):
        for index in shards:
            with pdb.connections[index].cursor() as cur:
                cur.execute("INSERT INTO tp_items VALUES (%s)", (first + index,))


@pytest.fixture(scope="module")
def shard_dsns(sample) -> Iterator[list[str]]:
    """The session's shards, with this module's tables; everything it made is gone afterwards."""
    dsns = sample.shard_dsns
    if int(_query(dsns[0], "SHOW max_prepared_transactions")[0][0]) == 0:
        pytest.skip("the test servers have max_prepared_transactions = 0")
    for dsn in dsns:
        _query(dsn, "DROP TABLE IF EXISTS tp_items, tp_deferred")
        _query(dsn, "CREATE TABLE tp_items (id int PRIMARY KEY)")
        _query(dsn, "CREATE TABLE tp_deferred (x int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    yield dsns
    for dsn in dsns:
        roll_back_ours(dsn)
        _query(dsn, f"DROP TABLE IF EXISTS tp_items, tp_deferred, public.{TABLE}")
        _query(dsn, "DROP SCHEMA IF EXISTS tp_decisions CASCADE")


@pytest.fixture
def dsns(shard_dsns) -> Iterator[list[str]]:
    """Empty tables, no decision rows and no prepared parts before each test (and no parts after)."""
    for dsn in shard_dsns:
        roll_back_ours(dsn)
        _query(dsn, "TRUNCATE tp_items, tp_deferred")
        if decision_rows(dsn):
            _query(dsn, f"TRUNCATE public.{TABLE}")
    yield shard_dsns
    for dsn in shard_dsns:
        roll_back_ours(dsn)


@pytest.fixture
def tp(dsns) -> Iterator[parallel_connection.ParallelConnection]:
    conn = parallel_connection.connect(dsns)
    yield conn
    if conn.closed != 1:  # broken (2) still hands its connections back
        conn.close()


# -- commit ------------------------------------------------------------------------------


def test_a_transaction_writing_on_three_shards_commits_on_each(tp, dsns):
    write(tp, [0, 1, 2])
    assert tp.shard_set.written == {0, 1, 2}
    tp.commit()
    assert [ids(d) for d in dsns] == [[1], [2], [3]]
    assert all(ours_prepared(d) == [] for d in dsns)
    assert tp.shard_set.written == frozenset()
    assert tp.notices == []  # psycopg2's own bookkeeping warnings are not the user's
    # The decision is one row on the first written shard; the next commit decided there deletes it.
    (first,) = decision_rows(dsns[0])
    assert first[1] is True
    write(tp, [0, 2], first=10)
    tp.commit()
    (second,) = decision_rows(dsns[0])
    assert second != first
    assert ids(dsns[2]) == [3, 12]


def test_recover_deletes_spent_decision_rows(tp, dsns):
    write(tp, [1, 2])
    tp.commit()
    assert len(decision_rows(dsns[1])) == 1
    assert tp.recover(grace=0) == []
    assert decision_rows(dsns[1]) == []


def test_error_at_prepare_commits_nothing_anywhere(tp, dsns):
    write(tp, [0, 1, 2])
    for index in (0, 1):
        with tp.connections[index].cursor() as cur:
            # Deferred: the duplicate only fails when shard 1 prepares.
            cur.execute("INSERT INTO tp_deferred VALUES (7), (%s)", (7 if index == 1 else 8,))
    with pytest.raises(psycopg2.errors.UniqueViolation) as info:
        tp.commit()
    message = str(info.value)
    assert message.startswith("shard 1 (")
    assert "PREPARE TRANSACTION" in message and "rolled back on every shard" in message
    assert [ids(d) for d in dsns] == [[], [], []]
    assert all(ours_prepared(d) == [] for d in dsns)
    assert tp.notices == []
    write(tp, [0, 1])  # the connection goes on
    tp.commit()
    assert [ids(d) for d in dsns] == [[1], [2], []]


def test_error_at_the_deciding_commit_commits_nothing_anywhere(tp, dsns):
    write(tp, [0, 1])
    with tp.connections[0].cursor() as cur:
        cur.execute("INSERT INTO tp_deferred VALUES (7), (7)")
    with pytest.raises(psycopg2.errors.UniqueViolation) as info:
        tp.commit()
    assert str(info.value).startswith("shard 0 (") and "deciding COMMIT" in str(info.value)
    assert [ids(d) for d in dsns] == [[], [], []]
    assert all(ours_prepared(d) == [] for d in dsns)


def test_what_cannot_be_prepared_is_refused_with_the_way_out(tp, dsns):
    write(tp, [0, 1])
    with tp.connections[1].cursor() as cur:
        cur.execute("CREATE TEMP TABLE tp_scratch (x int)")
    with pytest.raises(psycopg2.NotSupportedError) as info:
        tp.commit()
    assert "temporary" in str(info.value) and "two_phase=False" in str(info.value)
    assert [ids(d) for d in dsns] == [[], [], []]


def test_a_failed_transaction_rolls_back_without_preparing(tp, dsns, monkeypatch):
    monkeypatch.setattr(commit, "two_phase_commit", _never)
    write(tp, [0, 1])
    tp.shard_set.fail("a shard's error")
    tp.commit()
    assert [ids(d) for d in dsns] == [[], [], []]


def _never(*args: object) -> None:
    raise AssertionError("two-phase commit was not needed")


def test_read_only_and_one_shard_transactions_commit_without_preparing(tp, dsns, monkeypatch):
    monkeypatch.setattr(commit, "two_phase_commit", _never)
    with tp.cursor(merge="union") as cur:
        cur.execute("SELECT count(*) FROM tp_items")  # every shard read
    tp.commit()
    with tp.cursor(merge="union") as cur:
        cur.execute("SELECT count(*) FROM tp_items")
    write(tp, [2])
    tp.commit()
    assert [ids(d) for d in dsns] == [[], [], [3]]
    assert decision_rows(dsns[2]) == []


def test_rollback_forgets_the_written_shards(tp, dsns, monkeypatch):
    write(tp, [0, 1])
    tp.rollback()
    assert tp.shard_set.written == frozenset()
    monkeypatch.setattr(commit, "two_phase_commit", _never)
    write(tp, [1])
    tp.commit()
    assert [ids(d) for d in dsns] == [[], [2], []]


def test_autocommit_write_on_several_shards_is_one_transaction(tp, dsns):
    tp.autocommit = True
    with pytest.raises(psycopg2.errors.UniqueViolation), tp.shard_set.write_scope([0, 1]):
        with tp.connections[0].cursor() as cur:
            cur.execute("INSERT INTO tp_items VALUES (1)")
        with tp.connections[1].cursor() as cur:
            cur.execute("INSERT INTO tp_items VALUES (2), (2)")
    assert [ids(d) for d in dsns] == [[], [], []]
    assert [c.autocommit for c in tp.connections] == [True, True, True]
    write(tp, [0, 1])
    assert [ids(d) for d in dsns] == [[1], [2], []]  # committed as the block ended
    assert all(ours_prepared(d) == [] for d in dsns)
    assert [c.autocommit for c in tp.connections] == [True, True, True]
    assert len(decision_rows(dsns[0])) == 1


def test_autocommit_write_on_one_shard_runs_as_before(tp, dsns, monkeypatch):
    monkeypatch.setattr(commit, "two_phase_commit", _never)
    tp.autocommit = True
    write(tp, [1])
    assert ids(dsns[1]) == [2]


def test_decision_schema_names_where_decisions_are_kept(dsns):
    _query(dsns[0], "CREATE SCHEMA IF NOT EXISTS tp_decisions")
    with contextlib.closing(parallel_connection.connect(dsns, decision_schema="tp_decisions")) as pdb, pdb:
        write(pdb, [0, 1])
        pdb.commit()
    assert len(decision_rows(dsns[0], "tp_decisions")) == 1
    with contextlib.closing(parallel_connection.connect(dsns, decision_schema="tp_missing")) as pdb, pdb:
        write(pdb, [1, 2], first=10)
        with pytest.raises(psycopg2.errors.InvalidSchemaName) as info:
            pdb.commit()
    assert "decision_schema=" in str(info.value) and "two_phase=False" in str(info.value)
    assert [ids(d) for d in dsns] == [[1], [2], []]


@pytest.fixture
def writer(dsns) -> Iterator[list[str]]:
    """The shards' DSNs for a role that may write tp_items but create nothing in public (PostgreSQL 15)."""
    for dsn in dsns:
        _query(dsn, "DROP ROLE IF EXISTS tp_writer")
        _query(dsn, "CREATE ROLE tp_writer LOGIN")
        _query(dsn, "GRANT SELECT, INSERT ON tp_items TO tp_writer")
    # The decision table must not exist yet, as on a fresh database.
    _query(dsns[0], f"DROP TABLE IF EXISTS public.{TABLE}")
    yield [psycopg2.extensions.make_dsn(dsn, user="tp_writer") for dsn in dsns]
    for dsn in dsns:
        _query(dsn, "DROP OWNED BY tp_writer")
        _query(dsn, "DROP ROLE tp_writer")


def test_a_user_who_cannot_create_the_decision_table_is_told_the_way_out(writer, dsns):
    with contextlib.closing(parallel_connection.connect(writer)) as pdb, pdb:
        write(pdb, [0, 1])
        with pytest.raises(psycopg2.errors.InsufficientPrivilege) as info:
            pdb.commit()
    message = str(info.value)
    assert message.startswith("shard 0 (") and f"public.{TABLE}" in message
    assert "decision_schema=" in message and "two_phase=False" in message
    assert [ids(d) for d in dsns] == [[], [], []]
    assert all(ours_prepared(d) == [] for d in dsns)


# -- servers without prepared transactions -------------------------------------------------


@pytest.fixture(scope="module")
def unprepared() -> Iterator[list[str]]:
    """Two throwaway shards with max_prepared_transactions = 0."""
    with LocalCluster(2, settings={"max_prepared_transactions": "0"}) as cluster:
        for dsn in cluster.shard_dsns:
            _query(dsn, "CREATE TABLE tp_items (id int PRIMARY KEY)")
        yield cluster.shard_dsns


def test_writing_on_shards_that_cannot_prepare_is_refused_before_anything_runs(unprepared):
    ran = []
    with contextlib.closing(parallel_connection.connect(unprepared)) as pdb, pdb:
        write(pdb, [0])  # one shard: nothing to prepare
        with pytest.raises(psycopg2.NotSupportedError) as info, pdb.shard_set.write_scope([1]):
            ran.append(1)
        assert ran == []
        message = str(info.value)
        assert "max_prepared_transactions = 0" in message and "shard 0 (" in message
        assert "postgresql.conf" in message and "two_phase=False" in message
        pdb.rollback()
        pdb.autocommit = True
        with pytest.raises(psycopg2.NotSupportedError), pdb.shard_set.write_scope([0, 1]):
            ran.append(2)
        assert ran == []
    assert [ids(d) for d in unprepared] == [[], []]


def test_two_phase_false_commits_each_shard_on_its_own(unprepared):
    with contextlib.closing(parallel_connection.connect(unprepared, two_phase=False)) as pdb, pdb:
        write(pdb, [0, 1])
        pdb.commit()
        pdb.autocommit = True
        write(pdb, [0, 1], first=10)
    assert [ids(d) for d in unprepared] == [[1, 10], [2, 11]]
    for dsn in unprepared:
        _query(dsn, "TRUNCATE tp_items")


# -- failures between the phases ------------------------------------------------------------


def test_a_shard_lost_after_the_decision_is_committed_by_recover(tp, dsns, monkeypatch):
    victim = tp.connections[2].info.backend_pid

    def lose_shard_2(stage: str) -> None:
        if stage == "decided":
            _query(dsns[2], "SELECT pg_terminate_backend(%s, 5000)", (victim,))

    monkeypatch.setattr(commit, "stage_reached", lose_shard_2)
    write(tp, [0, 1, 2])
    with pytest.raises(psycopg2.OperationalError) as info:
        tp.commit()
    message = str(info.value)
    assert "is committed" in message and "shard 2 (" in message and "recover" in message
    assert [ids(d) for d in dsns] == [[1], [2], []]
    assert len(ours_prepared(dsns[2])) == 1
    with contextlib.closing(parallel_connection.connect(dsns)) as other, other:
        resolved = other.recover(grace=0)
    assert [(r.shard.index, r.action) for r in resolved] == [(2, "committed")]
    assert [ids(d) for d in dsns] == [[1], [2], [3]]
    assert all(ours_prepared(d) == [] for d in dsns)
    assert decision_rows(dsns[0]) == []  # finished: its decision row is spent


def test_the_decision_shard_lost_while_deciding_leaves_recover_to_decide(tp, dsns, monkeypatch):
    victim = tp.connections[0].info.backend_pid

    def lose_shard_0(stage: str) -> None:
        if stage == "prepared":
            _query(dsns[0], "SELECT pg_terminate_backend(%s, 5000)", (victim,))

    monkeypatch.setattr(commit, "stage_reached", lose_shard_0)
    write(tp, [0, 1, 2])
    with pytest.raises(psycopg2.OperationalError) as info:
        tp.commit()
    assert "outcome is unknown" in str(info.value) and "shard 0 (" in str(info.value)
    assert [len(ours_prepared(d)) for d in dsns] == [0, 1, 1]
    with contextlib.closing(parallel_connection.connect(dsns)) as other, other:
        resolved = other.recover(grace=0)
    # Shard 0 never committed: no decision, so its partners roll back.
    assert sorted((r.shard.index, r.action) for r in resolved) == [(1, "rolled back"), (2, "rolled back")]
    assert [ids(d) for d in dsns] == [[], [], []]


_CRASHING_CLIENT = """
import os, signal, sys
import parallel_connection
from parallel_connection import commit

stage, dsns = sys.argv[1], sys.argv[2:]

def crash(reached):
    if reached == stage:
        os.kill(os.getpid(), signal.SIGKILL)

commit.stage_reached = crash
pdb = parallel_connection.connect(dsns)
with pdb.shard_set.write_scope([0, 1, 2]):
    for index, conn in enumerate(pdb.connections):
        conn.cursor().execute("INSERT INTO tp_items VALUES (%s)", (100 + index,))
pdb.commit()
"""


@pytest.mark.parametrize(
    ("stage", "action", "rows"),
    [("prepared", "rolled back", [[], [], []]), ("decided", "committed", [[100], [101], [102]])],
)
def test_a_client_killed_mid_commit_is_recovered(dsns, stage, action, rows):
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASHING_CLIENT, stage, *dsns], capture_output=True, text=True, timeout=60
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert [len(ours_prepared(d)) for d in dsns] == [0, 1, 1]
    with contextlib.closing(parallel_connection.connect(dsns)) as pdb, pdb:
        # Young parts may belong to a client still committing: left alone.
        early = pdb.shard_set.recover()
        assert (early.resolved, early.waiting) == ([], 2)
        resolved = pdb.recover(grace=0)
    assert sorted((r.shard.index, r.action) for r in resolved) == [(1, action), (2, action)]
    assert len({r.transaction for r in resolved}) == 1
    assert [ids(d) for d in dsns] == rows
    assert all(ours_prepared(d) == [] for d in dsns)
    if action == "rolled back":
        # Abort markers on every shard: a committer that was only slow can no longer decide to commit.
        (transaction,) = {r.transaction for r in resolved}
        assert all((transaction, False) in decision_rows(d) for d in dsns)
        with pytest.raises(psycopg2.errors.UniqueViolation):
            _query(dsns[0], f"INSERT INTO {TABLE} (gid) VALUES (%s)", (transaction,))


def test_recover_while_a_client_is_deciding_waits_for_its_decision(tp, dsns, monkeypatch):
    racers: list[threading.Thread] = []
    found: list[list[commit.Resolved]] = []

    def recover_now() -> None:
        with contextlib.closing(parallel_connection.connect(dsns)) as other, other:
            found.append(other.recover(grace=0))

    def race(stage: str) -> None:
        if stage == "prepared":
            racers.append(threading.Thread(target=recover_now))
            racers[0].start()
            time.sleep(0.5)  # recover finds the parts and waits on the uncommitted decision row

    monkeypatch.setattr(commit, "stage_reached", race)
    write(tp, [0, 1, 2])
    tp.commit()
    racers[0].join(30)
    (resolved,) = found
    assert all(r.action == "committed" for r in resolved)
    assert [ids(d) for d in dsns] == [[1], [2], [3]]
    assert all(ours_prepared(d) == [] for d in dsns)


class Crash(Exception):
    """The client stops between the phases (its prepared parts stay)."""


def test_cli_recover_prints_each_resolved_part(tp, dsns, monkeypatch):
    def crash(stage: str) -> None:
        if stage == "decided":
            raise Crash

    monkeypatch.setattr(commit, "stage_reached", crash)
    write(tp, [0, 1, 2])
    with pytest.raises(Crash):
        tp.commit()
    tp.close()
    ran = run(["recover", "--grace", "0"], dsns=dsns)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert len(lines) == 2 and all(line.endswith(": committed") for line in lines)
    assert lines[0].startswith("shard 1 (") and lines[1].startswith("shard 2 (")
    assert "recover: 3 shards, 2 prepared transactions resolved (2 committed, 0 rolled back)" in ran.stderr
    assert [ids(d) for d in dsns] == [[1], [2], [3]]
    again = run(["recover"], dsns=dsns)
    assert again.returncode == 0 and again.stdout == ""
    assert "0 prepared transactions resolved" in again.stderr


# -- the servers ----------------------------------------------------------------------------


def test_local_servers_and_compose_enable_prepared_transactions(sample):
    if sample.cluster is not None:
        assert all(int(_query(d, "SHOW max_prepared_transactions")[0][0]) > 0 for d in sample.shard_dsns)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        command = " ".join(service["command"])
        assert "-c max_prepared_transactions=" in command
        assert not command.endswith("max_prepared_transactions=0")
