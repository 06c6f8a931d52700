"""docker-compose.yml: well formed, its init scripts rendered from the sample, and they load.

There is no Docker engine here, so each init script runs with ``psql`` (as
the postgres image's entrypoint runs it) on a scratch database of a
throwaway server.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import psycopg2
import pytest
import yaml
from conftest import run_on_all

from parallel_connection.cli import parse_dsn_lines
from parallel_connection.errors import describe_dsn
from parallel_connection.local import find_bindir
from parallel_connection.sample import CUSTOMERS, init_sql

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SHARDS = 3
ORDERS = 100_000  # the count `make docker-init` renders


def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_has_three_postgres_15_shards_with_healthchecks():
    found = services()
    assert sorted(found) == [f"shard{k}" for k in range(SHARDS)]
    for service in found.values():
        assert service["image"] == "postgres:15"
        assert service["environment"]["POSTGRES_PASSWORD"]
        check = " ".join(service["healthcheck"]["test"])
        assert "pg_isready" in check and "-h 127.0.0.1" in check


def test_compose_ports_are_distinct_and_local():
    ports = [service["ports"] for service in services().values()]
    assert all(len(p) == 1 and p[0].startswith("127.0.0.1:") and p[0].endswith(":5432") for p in ports)
    assert len({p[0] for p in ports}) == SHARDS


def test_each_shard_mounts_its_own_committed_init_script():
    for k, (name, service) in enumerate(sorted(services().items())):
        (volume,) = service["volumes"]
        source, target, *_ = volume.split(":")
        assert source == f"./docker/shard{k}.sql", name
        assert target.startswith("/docker-entrypoint-initdb.d/")
        assert (ROOT / source).is_file()


def test_committed_init_scripts_are_the_rendered_sample():
    for k in range(SHARDS):
        committed = (ROOT / "docker" / f"shard{k}.sql").read_text()
        assert committed == init_sql(k, SHARDS, orders=ORDERS), f"docker/shard{k}.sql: run `make docker-init`"


def test_dsn_file_points_at_the_compose_shards():
    dsns = parse_dsn_lines((ROOT / "docker" / "dsns.txt").read_text())
    for dsn, (name, service) in zip(dsns, sorted(services().items()), strict=True):
        params = describe_dsn(dsn)
        host, port, _ = service["ports"][0].split(":")
        assert (params["host"], params["port"]) == (host, port), name
        assert params["dbname"] == service["environment"]["POSTGRES_DB"]
        assert params["user"] == service["environment"]["POSTGRES_USER"]
        assert "password" not in dsn


@pytest.fixture
def scratch_dsns(servers) -> list[str]:
    """One empty database per init script, on a throwaway server; dropped afterwards."""
    names = [f"docker_init_{k}" for k in range(SHARDS)]
    admin = servers.shard_dsns[0]
    for name in names:
        run_on_all([admin], f"DROP DATABASE IF EXISTS {name}")
        run_on_all([admin], f"CREATE DATABASE {name}")
    yield [f"{admin} dbname={name}" for name in names]
    for name in names:
        run_on_all([admin], f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_init_scripts_load_each_shards_rows_with_psql(scratch_dsns):
    psql = find_bindir() / "psql"
    if not psql.exists():
        psql = Path(shutil.which("psql") or "psql")
    total = 0
    for k, dsn in enumerate(scratch_dsns):
        script = ROOT / "docker" / f"shard{k}.sql"
        done = subprocess.run(
            [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", str(script)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                misplaced_sql = "count(*) FILTER (WHERE customer_id %% %s <> %s)"
                cur.execute(f"SELECT count(*), {misplaced_sql} FROM orders", (SHARDS, k))
                rows, misplaced = cur.fetchone()
                cur.execute("SELECT count(*) FROM customers")
                (customers,) = cur.fetchone()
        finally:
            conn.close()
        assert rows > 0 and misplaced == 0
        assert customers == CUSTOMERS
        total += rows
    assert total == ORDERS


def test_readme_shows_the_compose_password_and_ports():
    readme = (ROOT / "README.rst").read_text()
    found = services()
    (password,) = {s["environment"]["POSTGRES_PASSWORD"] for s in found.values()}
    ports = sorted(int(s["ports"][0].split(":")[1]) for s in found.values())
    assert f"PGPASSWORD={password}" in readme
    assert f"ports {ports[0]}-{ports[-1]}" in readme
    assert "--dsn-file docker/dsns.txt" in readme
