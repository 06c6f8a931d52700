"""Ctrl-C always ends: every shard call stops, the interrupt reaches the caller, the script can exit."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psycopg2
import pytest
from conftest import active, wait_until

from parallel_connection.fanout import CANCEL_GRACE

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_ctrl_c_during_a_streaming_fetch_stops_every_shards_fetch(pdb, sample):
    cur = pdb.cursor("interrupted_stream")
    cur.itersize = 5
    # Merged in id order, so the stream waits on one shard's fetch at a time. The first rows are
    # quick; the later ones take 1 s each (read by an index scan as they are fetched).
    cur.execute("SELECT id, CASE WHEN id > 40 THEN pg_sleep(1.0) END FROM orders ORDER BY id")
    first = [row[0] for row in cur.fetchmany(12)]
    assert len(first) == 12 and first == sorted(first)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        cur.fetchall()
    assert time.monotonic() - start < 0.3 + CANCEL_GRACE + 0.3
    for dsn in sample.shard_dsns:
        assert wait_until(lambda d=dsn: active(d, "FETCH FORWARD%") == 0, 0.3), dsn
    with pytest.raises(psycopg2.OperationalError, match="interrupted"):
        cur.fetchone()
    pdb.rollback()
    with pdb.cursor() as again:
        again.execute("SELECT count(*) FROM orders")
        assert again.fetchone()[0] > 0


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading
    import parallel_connection
    from parallel_connection.proxy import TcpProxy

    mode, dsns = sys.argv[1], sys.argv[2:]
    proxy = TcpProxy.for_dsn(dsns[1])
    dsns[1] = proxy.dsn(dsns[1])
    if mode == "connect":
        proxy.black_hole = True
    else:
        pdb = parallel_connection.connect(dsns)
    if mode == "scan":  # black-holed once its ranges run
        threading.Timer(0.5, setattr, (proxy, "black_hole", True)).start()
    else:
        proxy.black_hole = True
    threading.Timer(1.0 if mode == "scan" else 0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        if mode == "connect":
            parallel_connection.connect(dsns)
        elif mode == "scan":
            work = "SELECT count(*), pg_sleep(0.05) FROM orders WHERE id BETWEEN %(start)s AND %(end)s"
            report = pdb.scan_ranges("orders", "id", work, rows_per_range=20)
            print("interrupted" if report.interrupted else "finished", flush=True)
        else:
            with pdb.cursor() as cur:
                cur.execute("SELECT count(*) FROM orders")
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    # The script ends here, a shard call still waiting on the black hole.
    """
)


@pytest.mark.parametrize("mode", ["connect", "execute", "scan"])
def test_a_script_interrupted_while_a_shard_is_black_holed_exits(sample, mode, tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(SCRIPT)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script), mode, *sample.shard_dsns],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    took = time.monotonic() - start
    assert "interrupted" in done.stdout, done.stderr
    assert done.returncode == 0, done.stderr
    assert took < 1.0 + 2 * CANCEL_GRACE + 4  # start-up, the interrupt, the graces, the exit


def test_ctrl_c_is_seen_when_a_native_librarys_thread_takes_the_signal(sample):
    # polars' threads do not block SIGINT: the kernel may hand it to one of them, and a main thread
    # asleep until its shards answer would see it only when they do (here after 30 s).
    script = textwrap.dedent(
        f"""
        import os, signal, sys, threading, time
        import polars.testing  # starts polars' native threads
        import parallel_connection
        pdb = parallel_connection.connect({sample.shard_dsns!r})
        cur = pdb.cursor(merge="union")
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        try:
            cur.execute("SELECT pg_sleep(30)")
        except KeyboardInterrupt:
            print(f"interrupted after {{time.monotonic() - start:.1f}} s")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    seconds = float(done.stdout.split()[2])
    assert seconds < 0.5 + CANCEL_GRACE + 0.5, done.stdout
