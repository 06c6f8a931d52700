"""A statement one shard answers runs on the caller's own thread, and keeps every guarantee of the
fan-out: the statement deadline (a black-holed shard too), Ctrl-C, the turns of threads sharing
the connection, healing, errors that name the shard, and the cursor's DB-API state.

On the sample schema, ``orders`` sharded on ``customer_id % 3``: customer 2920's orders (order 1
among them) live on shard 1, so ``WHERE customer_id = 2920`` goes there alone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest
from conftest import active, port_of, wait_until

import parallel_connection
from parallel_connection.deadline import CUT_GRACE
from parallel_connection.fanout import CANCEL_GRACE
from parallel_connection.placement import Placement
from parallel_connection.proxy import TcpProxy

PLACEMENT = Placement(sharded={"orders": ("customer_id", "modulo")}, copied=["customers"])
ON_SHARD_1 = "SELECT count(*), sum(id) FROM orders WHERE customer_id = %s"
SLEEP_ON_SHARD_1 = "SELECT pg_sleep(%s), count(*) FROM orders WHERE customer_id = %s"
CUSTOMER = 2920  # (1 * 7919) % 5000 + 1: order 1's customer; 2920 % 3 == 1


def _prefix(index: int, dsn: str) -> str:
    return f"shard {index} (127.0.0.1:{port_of(dsn)}/"


class _Recording(psycopg2.extensions.cursor):
    """A shard cursor that notes the thread each statement ran on."""

    threads: list[threading.Thread] = []

    def execute(self, query, vars=None):  # type: ignore[no-untyped-def]
        _Recording.threads.append(threading.current_thread())
        return super().execute(query, vars)


@pytest.fixture
def placed(sample) -> Iterator[parallel_connection.ParallelConnection]:
    pdb = parallel_connection.connect(sample.shard_dsns, placement=PLACEMENT)
    yield pdb
    if not pdb._closed:
        pdb.close()


def _expected(ref) -> tuple[int, int]:
    with ref.cursor() as cur:
        cur.execute(ON_SHARD_1, (CUSTOMER,))
        return tuple(cur.fetchone())


def test_a_routed_statement_runs_on_the_callers_thread_and_only_on_its_shard(placed, ref):
    placed.autocommit = True
    _Recording.threads = []
    with placed.cursor(cursor_factory=_Recording) as cur:
        for _ in range(3):
            cur.execute(ON_SHARD_1, (CUSTOMER,))
            assert tuple(cur.fetchone()) == _expected(ref)
        used = [i for i, c in enumerate(cur.shard_cursors) if c.query is not None]
        assert cur.rowcount == 1 and cur.rownumber == 1 and cur.statusmessage == "SELECT 1"
        assert [d.name for d in cur.description] == ["count", "sum"]
    assert used == [1]
    assert _Recording.threads and all(t is threading.main_thread() for t in _Recording.threads)


def test_a_one_shard_connection_runs_on_the_callers_thread(sample):
    pdb = parallel_connection.connect(sample.shard_dsns[:1])
    try:
        _Recording.threads = []
        with pdb.cursor(cursor_factory=_Recording) as cur:
            cur.execute("SELECT 1")
            assert cur.fetchall() == [(1,)]
            assert cur.rowcount == 1 and cur.rownumber == 1 and cur.statusmessage == "SELECT 1"
        with pdb.cursor(cursor_factory=_Recording, merge="union") as cur:
            cur.execute("SELECT g FROM generate_series(1, 3) g")
            assert list(cur.shard_rows()) == [(0, (1,)), (0, (2,)), (0, (3,))]
        assert len(_Recording.threads) == 2
        assert all(t is threading.main_thread() for t in _Recording.threads)
    finally:
        pdb.close()


def test_a_routed_statement_to_a_black_holed_shard_is_cut_at_its_deadline(sample):
    with TcpProxy.for_dsn(sample.shard_dsns[1]) as proxy:
        dsns = [sample.shard_dsns[0], proxy.dsn(sample.shard_dsns[1]), sample.shard_dsns[2]]
        pdb = parallel_connection.connect(dsns, placement=PLACEMENT, statement_deadline=1.0)
        try:
            pdb.autocommit = True
            with pdb.cursor() as cur:
                cur.execute(ON_SHARD_1, (CUSTOMER,))  # planned and healthy before the black hole
                expected = cur.fetchone()
                proxy.black_hole = True
                start = time.monotonic()
                with pytest.raises(psycopg2.OperationalError, match="the connection was cut") as info:
                    cur.execute(ON_SHARD_1, (CUSTOMER,))
                took = time.monotonic() - start
                assert str(info.value).startswith(_prefix(1, dsns[1]))
                assert 1.0 <= took < 1.0 + CUT_GRACE + 1.0
                proxy.black_hole = False
                cur.execute(ON_SHARD_1, (CUSTOMER,))  # the cut connection was replaced
                assert cur.fetchone() == expected
                cur.execute("SELECT count(*) FROM orders WHERE customer_id = 3")  # shard 0
                assert cur.fetchone()[0] > 0
        finally:
            pdb.close()


def test_a_slow_routed_statement_is_cancelled_at_its_deadline(placed):
    placed.statement_deadline = 0.5
    with placed.cursor() as cur:
        start = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled, match=r"statement deadline of 0\.5 s") as info:
            cur.execute(SLEEP_ON_SHARD_1, (5, CUSTOMER))
        assert time.monotonic() - start < 0.5 + 0.8
        assert str(info.value).startswith("shard 1 ")
    placed.rollback()
    with placed.cursor() as cur:
        cur.execute(ON_SHARD_1, (CUSTOMER,))
        assert cur.fetchone()[0] > 0


def _interrupt_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_cancels_a_routed_statement_on_its_server_at_once(placed, sample):
    with placed.cursor() as cur:
        _interrupt_after(0.3)
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            cur.execute(SLEEP_ON_SHARD_1, (30, CUSTOMER))
        assert time.monotonic() - start < 0.3 + 1.0
    assert wait_until(lambda: active(sample.shard_dsns[1], "%pg_sleep%") == 0, 2.0)
    placed.rollback()
    with placed.cursor() as cur:
        cur.execute(ON_SHARD_1, (CUSTOMER,))
        assert cur.fetchone()[0] > 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_on_a_one_shard_connection_cancels_its_statement(sample):
    pdb = parallel_connection.connect(sample.shard_dsns[:1])
    try:
        pdb.autocommit = True
        with pdb.cursor() as cur:
            _interrupt_after(0.3)
            start = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                cur.execute("SELECT pg_sleep(30)")
            assert time.monotonic() - start < 0.3 + 1.0
            assert wait_until(lambda: active(sample.shard_dsns[0], "%pg_sleep(30)%") == 0, 2.0)
            cur.execute("SELECT 2")
            assert cur.fetchone() == (2,)
    finally:
        pdb.close()


def test_ctrl_c_during_a_routed_statement_to_a_black_holed_shard_ends_after_the_grace(sample):
    with TcpProxy.for_dsn(sample.shard_dsns[1]) as proxy:
        dsns = [sample.shard_dsns[0], proxy.dsn(sample.shard_dsns[1]), sample.shard_dsns[2]]
        pdb = parallel_connection.connect(dsns, placement=PLACEMENT)
        try:
            pdb.autocommit = True
            with pdb.cursor() as cur:
                cur.execute(ON_SHARD_1, (CUSTOMER,))
                expected = cur.fetchone()
                proxy.black_hole = True  # the cancel request is black-holed too
                _interrupt_after(0.3)
                start = time.monotonic()
                with pytest.raises(KeyboardInterrupt):
                    cur.execute(ON_SHARD_1, (CUSTOMER,))
                assert time.monotonic() - start < 0.3 + CANCEL_GRACE + 1.0
                proxy.black_hole = False
                cur.execute(ON_SHARD_1, (CUSTOMER,))
                assert cur.fetchone() == expected
        finally:
            pdb.close()


def _hold_shard_1(pdb, seconds: float, outcome: dict[str, object]) -> threading.Thread:
    """Another thread, sharing ``pdb``, runs a statement on shard 1 for ``seconds``."""

    def run() -> None:
        try:
            with pdb.cursor() as cur:
                cur.execute(SLEEP_ON_SHARD_1, (seconds, CUSTOMER))
                outcome["rows"] = cur.fetchall()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    assert wait_until(lambda: pdb.shard_set.fanout._gates[1].turn is not None, 2.0)
    return thread


def test_a_routed_statement_waits_for_another_threads_statement_on_its_shard(placed, ref):
    placed.autocommit = True
    outcome: dict[str, object] = {}
    other = _hold_shard_1(placed, 0.6, outcome)
    start = time.monotonic()
    with placed.cursor() as cur:
        cur.execute(ON_SHARD_1, (CUSTOMER,))
        assert tuple(cur.fetchone()) == _expected(ref)
    waited = time.monotonic() - start
    other.join(10)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["rows"][0][1] > 0
    assert waited > 0.3  # its turn came after the other thread's statement


def test_a_deadline_passed_waiting_for_another_thread_cancels_nothing_of_its(placed):
    placed.autocommit = True
    outcome: dict[str, object] = {}
    other = _hold_shard_1(placed, 1.5, outcome)
    with placed.cursor(statement_deadline=0.3) as cur:
        with pytest.raises(psycopg2.OperationalError, match="held the shard's connection") as info:
            cur.execute(ON_SHARD_1, (CUSTOMER,))
        assert str(info.value).startswith("shard 1 ")
    other.join(10)
    assert "error" not in outcome, outcome.get("error")  # the other thread's statement was not cancelled
    assert outcome["rows"][0][1] > 0


def test_ctrl_c_waiting_for_another_threads_statement_leaves_it_alone(placed):
    placed.autocommit = True
    outcome: dict[str, object] = {}
    other = _hold_shard_1(placed, 1.5, outcome)
    with placed.cursor() as cur:
        _interrupt_after(0.3)
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            cur.execute(ON_SHARD_1, (CUSTOMER,))
        assert time.monotonic() - start < 0.3 + 0.5
    other.join(10)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["rows"][0][1] > 0


def test_a_terminated_backend_is_replaced_before_a_routed_statement(placed, ref, sample):
    placed.autocommit = True
    with placed.cursor() as cur:
        cur.execute(ON_SHARD_1, (CUSTOMER,))
        cur.fetchall()
        pid = placed.connections[1].info.backend_pid
        with psycopg2.connect(sample.shard_dsns[1]) as killer, killer.cursor() as kill:
            kill.execute("SELECT pg_terminate_backend(%s)", (pid,))
        killer.close()
        assert wait_until(lambda: active(sample.shard_dsns[1], "%") >= 0 and _gone(sample, pid))
        cur.execute(ON_SHARD_1, (CUSTOMER,))
        assert tuple(cur.fetchone()) == _expected(ref)
    assert placed.connections[1].info.backend_pid != pid


def _gone(sample, pid: int) -> bool:
    with psycopg2.connect(sample.shard_dsns[1]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        gone = cur.fetchone()[0] == 0
    conn.close()
    return gone


def test_an_error_on_the_routed_shard_names_it_and_fails_the_transaction(placed, sample):
    with placed.cursor() as cur:
        with pytest.raises(psycopg2.errors.DivisionByZero) as info:
            cur.execute("SELECT 1 / (count(*) - count(*)) FROM orders WHERE customer_id = %s", (CUSTOMER,))
        assert str(info.value).startswith(_prefix(1, sample.shard_dsns[1]))
        assert info.value.pgcode == "22012"
        with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
            cur.execute("SELECT count(*) FROM orders WHERE customer_id = 3")  # another shard
    placed.rollback()
    with placed.cursor() as cur:
        cur.execute(ON_SHARD_1, (CUSTOMER,))
        assert cur.fetchone()[0] > 0


def test_a_routed_write_in_a_transaction_commits_and_rolls_back_as_one_database(placed, sample):
    with placed.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS one_shard_probe (n int)")  # every shard, not routed
    placed.commit()
    with placed.cursor() as cur:
        cur.execute("UPDATE orders SET note = note WHERE customer_id = %s", (CUSTOMER,))
        updated = cur.rowcount
        assert updated > 0 and cur.statusmessage == f"UPDATE {updated}"
        assert placed.shard_set.written == {1}
    placed.rollback()
    assert placed.shard_set.written == frozenset()


def test_the_same_statement_with_values_of_another_shape_is_planned_for_them(placed, ref):
    placed.autocommit = True
    with placed.cursor() as cur, ref.cursor() as want:
        for params in [(CUSTOMER,), (2,), {"c": CUSTOMER}, [CUSTOMER], ((CUSTOMER, 2),)]:
            sql = (
                "SELECT count(*) FROM orders WHERE customer_id = %(c)s" if isinstance(params, dict) else None
            )
            sql = sql or (
                "SELECT count(*) FROM orders WHERE customer_id IN %s"
                if isinstance(params[0], tuple)
                else ON_SHARD_1.replace(", sum(id)", "")
            )
            cur.execute(sql, params)
            want.execute(sql, params)
            assert cur.fetchall() == want.fetchall(), params


def test_a_constant_select_asks_no_shard_about_its_catalog(pdb, monkeypatch):
    """``SELECT 1`` (a pool's ping) names nothing the catalog resolves: it runs on one shard, its
    catalog unchecked; a statement naming a table or a function is checked as before."""
    from parallel_connection.shards import ShardSet

    checks = []
    real = ShardSet.check_facts

    def counted(self, facts, indexes=None):
        checks.append(indexes)
        return real(self, facts, indexes)

    monkeypatch.setattr(ShardSet, "check_facts", counted)
    pdb.autocommit = True
    cur = pdb.cursor()
    for sql, want in (("SELECT 1", [(1,)]), ("SELECT 'x' AS two, NULL AS none", [("x", None)])):
        cur.execute(sql)
        assert cur.fetchall() == want
        assert sum(c.query is not None for c in cur.shard_cursors) == 1
    assert checks == []
    cur.execute("SELECT lower('X')")
    assert cur.fetchall() == [("x",)]
    cur.execute("SELECT count(*) FROM orders")
    assert len(checks) == 2
