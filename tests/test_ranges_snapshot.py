"""snapshot=True: every range of a shard reads one exported snapshot while writes go on."""

from __future__ import annotations

import threading

import psycopg2
import pytest
from conftest import run_on_all

SUM = "SELECT count(*) AS n FROM ranges_snap, pg_sleep(0.01) WHERE id BETWEEN %(start)s AND %(end)s"


@pytest.fixture
def snap_table(sample):
    run_on_all(
        sample.shard_dsns,
        "DROP TABLE IF EXISTS ranges_snap;"
        "CREATE TABLE ranges_snap (id bigint PRIMARY KEY);"
        "INSERT INTO ranges_snap SELECT g * 2 FROM generate_series(1, 2000) AS g;",
    )
    yield sample.shard_dsns
    run_on_all(sample.shard_dsns, "DROP TABLE IF EXISTS ranges_snap")


class Inserter:
    """Inserts odd ids (inside the scanned ranges) on every shard once started, until stopped."""

    def __init__(self, dsns: list[str]) -> None:
        self.conns = [psycopg2.connect(d) for d in dsns]
        for conn in self.conns:
            conn.autocommit = True
        self.go = threading.Event()
        self.stop = threading.Event()
        self.inserted = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.go.wait()
        next_id = 3999  # from the top down, so that ranges still to run would see them
        while not self.stop.is_set() and next_id > 0:
            for conn in self.conns:
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO ranges_snap VALUES (%s)", (next_id,))
            self.inserted += len(self.conns)
            next_id -= 2

    def close(self) -> None:
        self.stop.set()
        self.go.set()
        self.thread.join()
        for conn in self.conns:
            conn.close()


@pytest.mark.parametrize("snapshot", [True, False])
def test_snapshot_totals_ignore_concurrent_inserts(pdb, snap_table, snapshot):
    inserter = Inserter(snap_table)
    try:
        report = pdb.scan_ranges(
            "ranges_snap",
            "id",
            SUM,
            rows_per_range=100,
            max_parallelism=3,
            snapshot=snapshot,
            progress=lambda p: inserter.go.set(),
        )
    finally:
        inserter.close()
    assert inserter.inserted > 30, "writes went on during the scan"
    if snapshot:
        assert report.totals()["n"] == 3 * 2000
    else:
        assert report.totals()["n"] > 3 * 2000, "without a snapshot later ranges see the inserts"
