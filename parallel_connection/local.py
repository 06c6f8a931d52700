"""Throwaway local PostgreSQL servers, started from the machine's own binaries.

Used by the test suite, ``make demo`` and ``parallel-connection shards``. Each
server lives in a folder of its own, listens on 127.0.0.1 only and is meant to
be thrown away: durability settings are off.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

__all__ = [
    "SHARDS_DIR_VARIABLE",
    "LocalCluster",
    "LocalServer",
    "default_base_dir",
    "find_bindir",
    "port_is_free",
]

SHARDS_DIR_VARIABLE = "PARALLEL_CONNECTION_SHARDS_DIR"
"""The environment variable naming the folder ``parallel-connection shards`` uses by default."""

PASSWORD_GROUP = "pc_password_login"
"""Roles in this group must log in with a password (scram); all others are trusted."""

_HBA = f"""\
local all all trust
host all +{PASSWORD_GROUP} 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
"""

_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
    "max_wal_size": "1GB",
    "log_min_messages": "warning",
    "logging_collector": "off",
    # Two-phase commit (a transaction that wrote on several shards) needs slots for prepared transactions.
    "max_prepared_transactions": "20",
}


def find_bindir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl`` (PG_BINDIR, pg_config, or Debian's layout)."""
    candidates = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(os.environ["PG_BINDIR"])
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).parent))
    for folder in candidates:
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL "
        "(Debian: apt-get install postgresql) or set PG_BINDIR"
    )


def default_base_dir() -> Path:
    """Where ``parallel-connection shards`` keeps its servers unless told otherwise.

    ``$PARALLEL_CONNECTION_SHARDS_DIR``, else a per-user folder in the
    temporary directory (throwaway data, and reachable by the ``postgres``
    user when the servers are started by root).
    """
    given = os.environ.get(SHARDS_DIR_VARIABLE)
    if given:
        return Path(given)
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.geteuid())
    return Path(tempfile.gettempdir()) / f"parallel_connection-{user}" / "shards"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now (bound as PostgreSQL binds: SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class LocalServer:
    """One throwaway server: where its data lives and how to reach it."""

    name: str
    port: int
    datadir: str
    host: str = "127.0.0.1"
    user: str = "postgres"
    dbname: str = "postgres"

    @property
    def dsn(self) -> str:
        return psycopg2.extensions.make_dsn(
            host=self.host, port=self.port, user=self.user, dbname=self.dbname
        )


class LocalCluster:
    """Start ``shards`` throwaway servers (plus an optional reference server).

    Use as a context manager, or call :meth:`start` and :meth:`stop`. With
    ``base_dir`` the servers live there and can be found again with
    :meth:`attach`; without it they live in a temporary folder that
    :meth:`stop` removes. ``settings`` are ``postgresql.conf`` lines
    (name -> value as written there) that override the defaults, e.g.
    ``{"max_prepared_transactions": "0"}``.
    """

    def __init__(
        self,
        shards: int = 3,
        *,
        reference: bool = False,
        base_dir: str | os.PathLike[str] | None = None,
        dbname: str = "postgres",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.n_shards = shards
        self.settings = {**_SETTINGS, **(settings or {})}
        self.with_reference = reference
        self.dbname = dbname
        self._owns_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else None
        self.servers: list[LocalServer] = []
        self._bindir: Path | None = None

    # -- public -------------------------------------------------------------

    @property
    def shard_dsns(self) -> list[str]:
        return [s.dsn for s in self.servers[: self.n_shards]]

    @property
    def reference_dsn(self) -> str | None:
        return self.servers[self.n_shards].dsn if self.with_reference else None

    def start(self) -> LocalCluster:
        """Create and start every server; on any failure stop what was started."""
        self._bindir = find_bindir()
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="parallel_connection_"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.base_dir, "postgres", "postgres")
            self._check_reachable(self.base_dir)
        names = [f"shard{i}" for i in range(self.n_shards)]
        if self.with_reference:
            names.append("reference")
        try:
            template = self.base_dir / "template"
            self._initdb(template)
            self.servers = [
                LocalServer(name, _free_port(), str(self.base_dir / name), dbname=self.dbname)
                for name in names
            ]
            for server in self.servers:
                self._run_as_owner(["cp", "-a", str(template), server.datadir])
            self._run_as_owner(["rm", "-rf", str(template)])
            # Saved before they start: a process killed while they start leaves servers attach() finds.
            self._save_state()
            with ThreadPoolExecutor(len(self.servers)) as pool:
                list(pool.map(self._start_server, self.servers))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every server (immediately) and, for a temporary folder, remove it."""
        if self._bindir is None:
            self._bindir = find_bindir()
        with ThreadPoolExecutor(max(1, len(self.servers))) as pool:
            list(pool.map(self._stop_server, self.servers))
        if self.base_dir is not None and self.base_dir.exists():
            if self._owns_dir:
                shutil.rmtree(self.base_dir, ignore_errors=True)
            else:
                (self.base_dir / "cluster.json").unlink(missing_ok=True)

    def remove(self) -> None:
        """Stop every server and delete what :meth:`start` created (and ``base_dir`` if left empty)."""
        self.stop()
        if self.base_dir is None or not self.base_dir.exists():
            return
        for name in [Path(s.datadir).name for s in self.servers] + ["template"]:
            shutil.rmtree(self.base_dir / name, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.base_dir.rmdir()

    def running(self) -> bool:
        """True when every server is running (``pg_ctl status``)."""
        return bool(self.servers) and all(self.states())

    def states(self) -> list[bool]:
        """Whether each server is running, as ``pg_ctl status`` says (a stale ``postmaster.pid``,
        left by a server that was killed, names no live process: not running)."""
        if self._bindir is None:
            self._bindir = find_bindir()
        status = [str(self._bindir / "pg_ctl"), "status", "-D"]
        return [
            subprocess.run(self._as_owner([*status, s.datadir]), capture_output=True).returncode == 0
            for s in self.servers
        ]

    def start_stopped(self) -> list[int]:
        """Start again, on its own port, each server that is not running; return their indexes.

        PostgreSQL itself sees to a stale ``postmaster.pid`` (and recovers the
        data of a server that was killed). Raises RuntimeError naming the
        server when its folder is gone or another process holds its port.
        """
        stopped = [i for i, up in enumerate(self.states()) if not up]
        for i in stopped:
            server = self.servers[i]
            if not Path(server.datadir, "PG_VERSION").exists():
                raise RuntimeError(f"{server.name}: its data folder {server.datadir} is gone")
            if not port_is_free(server.port, server.host):
                raise RuntimeError(
                    f"{server.name} cannot start again on its port {server.port}: another process "
                    f"listens on {server.host}:{server.port}"
                )
        for i in stopped:
            self.start_server(i)
        return stopped

    def stop_server(self, index: int, mode: str = "immediate") -> None:
        """Stop one server (for fault tests); ``start_server`` brings it back."""
        self._pg_ctl(["stop", "-m", mode, "-D", self.servers[index].datadir])

    def start_server(self, index: int) -> None:
        self._start_server(self.servers[index], create_db=False)

    @classmethod
    def attach(cls, base_dir: str | os.PathLike[str]) -> LocalCluster:
        """The cluster that ``start`` left running in ``base_dir``."""
        state = json.loads((Path(base_dir) / "cluster.json").read_text())
        cluster = cls(state["shards"], reference=state["reference"], base_dir=base_dir)
        cluster.servers = [LocalServer(**s) for s in state["servers"]]
        cluster._bindir = find_bindir()
        return cluster

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ------------------------------------------------------------

    def _save_state(self) -> None:
        assert self.base_dir is not None
        state = {
            "shards": self.n_shards,
            "reference": self.with_reference,
            "servers": [asdict(s) for s in self.servers],
        }
        (self.base_dir / "cluster.json").write_text(json.dumps(state, indent=2))

    def _check_reachable(self, folder: Path) -> None:
        """Servers started by root run as ``postgres``, which must reach ``folder``."""
        if subprocess.run(self._as_owner(["test", "-w", str(folder)]), capture_output=True).returncode:
            raise RuntimeError(
                f"the postgres user cannot write to {folder} (servers started by root run as "
                "postgres): choose a folder it can reach, e.g. under /tmp"
            )

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def _run_as_owner(self, argv: list[str], *, input: str | None = None) -> subprocess.CompletedProcess[str]:
        full = self._as_owner(argv)
        result = subprocess.run(full, capture_output=True, text=True, input=input)
        if result.returncode != 0:
            output = result.stderr.strip() or result.stdout.strip()
            raise RuntimeError(f"{Path(argv[0]).name} {argv[1]} failed: {output}")
        return result

    def _pg_ctl(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        assert self._bindir is not None
        return self._run_as_owner([str(self._bindir / "pg_ctl"), *args])

    def _initdb(self, datadir: Path) -> None:
        assert self._bindir is not None
        self._run_as_owner(
            [
                str(self._bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        conf = "".join(f"{k} = {v}\n" for k, v in self.settings.items())
        self._run_as_owner(["sh", "-c", 'cat >> "$1"', "sh", str(datadir / "postgresql.conf")], input=conf)
        self._run_as_owner(["sh", "-c", 'cat > "$1"', "sh", str(datadir / "pg_hba.conf")], input=_HBA)

    def _start_server(self, server: LocalServer, create_db: bool = True) -> None:
        log = Path(server.datadir) / "server.log"
        try:
            self._pg_ctl(
                ["start", "-w", "-t", "60", "-D", server.datadir, "-l", str(log), "-o", f"-p {server.port}"]
            )
        except RuntimeError as exc:
            said = " ".join(str(exc).split())  # pg_ctl's lines, as one
            raise RuntimeError(f"{server.name} (port {server.port}): {said}{_last_error(log)}") from None
        if create_db and server.dbname != "postgres":
            self._psql(server, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(server.dbname)))
        self._psql(
            server,
            f"DO $$ BEGIN CREATE ROLE {PASSWORD_GROUP} NOLOGIN; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        )

    def _psql(self, server: LocalServer, statement: str | sql.Composable) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(
                    host=server.host, port=server.port, user=server.user, dbname="postgres"
                )
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def _stop_server(self, server: LocalServer) -> None:
        if Path(server.datadir, "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self._pg_ctl(["stop", "-m", "immediate", "-w", "-D", server.datadir])


def _last_error(log: Path) -> str:
    """The server log's last FATAL or ERROR line, as ``; log: ...`` (or nothing)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        for level in ("FATAL:", "PANIC:", "ERROR:"):
            if level in line:
                return f"; log: {line[line.index(level) :].strip()}"
    return ""
