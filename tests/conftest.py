"""Real PostgreSQL servers for the whole suite: 3 shards and 1 reference server.

Set PARALLEL_CONNECTION_TEST_DSNS to ``shard0;shard1;shard2;reference`` (the
last DSN is the reference server) to use servers of your own instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg2
import pytest

import parallel_connection
from parallel_connection.local import LocalCluster
from parallel_connection.sample import load_sample

SAMPLE_ORDERS = 3000


@dataclass
class Servers:
    shard_dsns: list[str]
    reference_dsn: str
    cluster: LocalCluster | None


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    given = os.environ.get("PARALLEL_CONNECTION_TEST_DSNS")
    if given:
        dsns = [d.strip() for d in given.split(";") if d.strip()]
        if len(dsns) < 2:
            raise pytest.UsageError("PARALLEL_CONNECTION_TEST_DSNS needs shard DSNs and a reference DSN")
        yield Servers(dsns[:-1], dsns[-1], None)
        return
    # A run stopped with SIGTERM (a CI timeout, `timeout`) still stops its servers.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with LocalCluster(3, reference=True) as cluster:
        assert cluster.reference_dsn is not None
        yield Servers(cluster.shard_dsns, cluster.reference_dsn, cluster)


@pytest.fixture(scope="session")
def sample(servers: Servers) -> Servers:
    """The sample schema, loaded once per session (tests must not change it)."""
    load_sample(servers.shard_dsns, servers.reference_dsn, orders=SAMPLE_ORDERS)
    return servers


@pytest.fixture
def pdb(sample: Servers) -> Iterator[parallel_connection.ParallelConnection]:
    conn = parallel_connection.connect(sample.shard_dsns)
    yield conn
    if not conn._closed:
        conn.close()


@pytest.fixture(scope="module")
def reference_engine(sample: Servers) -> Iterator[Any]:
    """A plain psycopg2 SQLAlchemy engine on the reference database, to compare an engine with."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        "postgresql+psycopg2://", creator=lambda: psycopg2.connect(sample.reference_dsn)
    )
    yield engine
    engine.dispose()


@pytest.fixture
def ref(sample: Servers) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(sample.reference_dsn)
    yield conn
    conn.close()


def active(dsn: str, pattern: str) -> int:
    """How many backends on ``dsn`` are running a statement like ``pattern``."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE %s AND pid <> pg_backend_pid()",
                (pattern,),
            )
            return cur.fetchone()[0]
    finally:
        conn.close()


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def port_of(dsn: str) -> int:
    """The port a DSN names."""
    return int(psycopg2.extensions.parse_dsn(dsn)["port"])


def first_rows(dsns: list[str], sql: str, params: object = None) -> list[tuple[Any, ...] | None]:
    """The first row ``sql`` returns on each server, each on a plain connection of its own."""
    rows = []
    for dsn in dsns:
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                rows.append(cur.fetchone())
        finally:
            conn.close()
    return rows


def run_on_all(dsns: list[str], sql: str, params: object = None) -> None:
    """Run one statement on each server, autocommit (for test set-up)."""
    for dsn in dsns:
        conn = psycopg2.connect(dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
        finally:
            conn.close()


@contextlib.contextmanager
def connected(
    servers: Servers, placement: object
) -> Iterator[tuple[parallel_connection.ParallelConnection, Any, list[Any]]]:
    """A ParallelConnection with ``placement``, the reference database, and each shard's own
    (autocommit) connection; all closed at the end."""
    pdb = parallel_connection.connect(servers.shard_dsns, placement=placement)
    ref = psycopg2.connect(servers.reference_dsn)
    shards = [psycopg2.connect(dsn) for dsn in servers.shard_dsns]
    for conn in shards:
        conn.autocommit = True
    try:
        yield pdb, ref, shards
    finally:
        pdb.close()
        ref.close()
        for conn in shards:
            conn.close()


@pytest.fixture(scope="module")
def conns(sample):
    """The merge tests' table on every server: (shard connections, reference connection)."""
    from mergetools import create

    create([*sample.shard_dsns, sample.reference_dsn])
    shards = [psycopg2.connect(d) for d in sample.shard_dsns]
    reference = psycopg2.connect(sample.reference_dsn)
    yield shards, reference
    for conn in [*shards, reference]:
        conn.close()
