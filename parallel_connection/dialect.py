"""SQLAlchemy 2 dialect ``postgresql+parallel_connection``: an Engine over every shard.

The shards are several servers, so one URL host cannot name them; each is a
``shard`` query parameter instead (a libpq DSN or ``postgresql://`` URI,
URL-encoded), in shard order, with the placement as a TOML file::

    postgresql+parallel_connection:///?shard=<dsn>&shard=<dsn>&placement=/etc/placement.toml

Not psycopg2's ``?host=a&host=b``: there several hosts are alternatives for
one database (libpq's failover), and shards may differ in database, user and
options, which a whole DSN each keeps. The shards' order is the query's.
A password inside a shard DSN would show wherever the URL is printed: give
it as the URL's password (masked, used for every shard), in ``~/.pgpass``, or
through ``connect_args``.

``connect_args`` takes the same as Python objects (``dsns=[...]``,
``placement=Placement(...)``) and any other keyword of
:func:`parallel_connection.connect`; the URL's other query parameters are
those keywords too (``statement_deadline=5``, ``maxconn=8``), or else libpq
parameters for every shard (``sslmode=require``). A user name and password in
the URL apply to every shard. Each pooled "DB-API connection" is one
:class:`~parallel_connection.ParallelConnection`: SQL compiles as for
PostgreSQL, runs through the library, and comes back as one database's
answer (or is refused).
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Callable, Sequence
from typing import Any, cast

import psycopg2
import psycopg2.extras
from sqlalchemy import exc as sa_exc
from sqlalchemy import util
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2, PGExecutionContext_psycopg2
from sqlalchemy.engine import reflection
from sqlalchemy.engine.interfaces import ConnectArgsType, DBAPIConnection, DBAPICursor
from sqlalchemy.engine.url import URL

import parallel_connection

from .commit import TABLE as DECISION_TABLE
from .connection import ParallelConnection
from .errors import NotSupportedError
from .placement import Placement

__all__ = ["ParallelDialect"]

_EXTRAS: Any = psycopg2.extras
"""psycopg2's extras (their types are partial)."""

logger = logging.getLogger("sqlalchemy.dialects.postgresql")

_FLOATS = ("statement_timeout", "connect_timeout", "statement_deadline")
_INTS = ("minconn", "maxconn", "max_workers", "moved_rows")
_BOOLS = ("two_phase",)
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _many(value: str | Sequence[str]) -> list[str]:
    """A query parameter given once (a string) or repeated (a tuple), as a list."""
    return [value] if isinstance(value, str) else list(value)


def _one(name: str, value: str | Sequence[str]) -> str:
    values = _many(value)
    if len(values) != 1:
        raise sa_exc.ArgumentError(f"the URL gives {name!r} {len(values)} times; give it once")
    return values[0]


def _typed(name: str, text: str) -> Any:
    """A URL query value as the type connect() takes it."""
    try:
        if name in _FLOATS:
            return float(text)
        if name in _INTS:
            return int(text)
    except ValueError:
        raise sa_exc.ArgumentError(f"the URL's {name}={text!r} is not a number") from None
    if name in _BOOLS:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise sa_exc.ArgumentError(f"the URL's {name}={text!r} is not true or false")
    return text


class _Driver(types.ModuleType):
    """:mod:`parallel_connection` as the dialect's DB-API module, with psycopg2's ``__version__``:
    SQLAlchemy 2.0's psycopg2 dialect reads the features it may use from that version."""

    def __getattr__(self, name: str) -> Any:
        return getattr(parallel_connection, name)


_DBAPI = _Driver("parallel_connection")
_DBAPI.__version__ = psycopg2.__version__  # type: ignore[attr-defined]


class ParallelExecutionContext(PGExecutionContext_psycopg2):
    """psycopg2's execution context, for a connection whose notices and refusals are the library's."""

    def _log_notices(self, cursor: DBAPICursor) -> None:
        # The connection's notices list is assembled from every shard's on each read, so
        # psycopg2's way of clearing it would clear a copy: each shard's list is emptied instead.
        pdb = getattr(cursor, "connection", None)
        if not isinstance(pdb, ParallelConnection):
            return
        for notice in pdb.notices:
            logger.info(notice.rstrip())
        for conn in pdb.connections:
            conn.notices[:] = []

    def handle_dbapi_exception(self, e: BaseException) -> None:
        # On one database an error aborts the transaction, and a COMMIT after it rolls back.
        # The library refuses before anything runs, leaving the transaction open; SQLAlchemy's
        # users (pandas' to_sql among them) may commit after an error, so the refusal fails the
        # transaction here: the work before it is never committed half done.
        if isinstance(e, NotSupportedError):
            pdb = self.root_connection.connection.dbapi_connection
            if isinstance(pdb, ParallelConnection):
                pdb.shard_set.fail(e)
        super().handle_dbapi_exception(e)  # type: ignore[no-untyped-call]


class ParallelDialect(PGDialect_psycopg2):
    """PostgreSQL's psycopg2 dialect, with :mod:`parallel_connection` as its DB-API module."""

    driver = "parallel_connection"
    supports_statement_cache = True
    execution_ctx_cls = ParallelExecutionContext

    @classmethod
    def import_dbapi(cls) -> Any:
        return _DBAPI

    def retrieve_dbapi_version(self, dbapi: Any) -> util.VersionInfo:
        # The psycopg2 behind the library is what the dialect's version checks are about.
        version: util.VersionInfo = util.parse_version_string(psycopg2.__version__)  # type: ignore[attr-defined]
        return version

    def create_connect_args(self, url: URL) -> ConnectArgsType:
        if url.host or url.port or url.database:
            raise sa_exc.ArgumentError(
                "postgresql+parallel_connection URLs name no host, port or database: the shards "
                "are several servers, each given as shard=<url-encoded DSN> in the query "
                "(postgresql+parallel_connection:///?shard=...&shard=...), or as "
                "connect_args={'dsns': [...]}"
            )
        options: dict[str, Any] = {}
        for name, value in url.query.items():
            if name == "shard":
                options["shard"] = _many(value)
            elif name == "replicated_tables":
                options[name] = _many(value)
            else:
                options[name] = _typed(name, _one(name, value))
        if url.username is not None:
            options["user"] = url.username
        if url.password is not None:
            options["password"] = url.password
        return [], options

    def connect(self, *cargs: Any, **cparams: Any) -> DBAPIConnection:
        """A :class:`ParallelConnection` over the URL's shards or ``connect_args``' ``dsns``."""
        shards = cparams.pop("shard", None)
        dsns = cparams.pop("dsns", None)
        if cargs or (shards is None) == (dsns is None):
            raise sa_exc.ArgumentError(
                "postgresql+parallel_connection needs its shards either in the URL "
                "(shard=<url-encoded DSN>, once per shard, in shard order) or as "
                "connect_args={'dsns': [...]}, not both"
                if shards is not None and dsns is not None
                else "postgresql+parallel_connection needs its shards: shard=<url-encoded DSN> in the "
                "URL, once per shard, in shard order, or connect_args={'dsns': [...]}"
            )
        placement = cparams.get("placement")
        if isinstance(placement, (str, os.PathLike)):
            cparams["placement"] = Placement.from_file(placement)
        pdb = parallel_connection.connect(shards if dsns is None else dsns, **cparams)
        return cast("DBAPIConnection", pdb)

    def on_connect(self) -> Callable[[Any], None] | None:
        """Set up every shard connection as psycopg2's dialect sets up its one connection.

        Each setup is also kept for connections that later replace a broken one.
        """
        extras = _EXTRAS
        setups: list[Callable[[Any], None]] = [lambda conn: extras.register_uuid(None, conn)]
        if self.use_native_hstore:
            setups.append(_register_hstore)
        if self._json_deserializer:
            loads = self._json_deserializer
            setups.append(lambda conn: extras.register_default_json(conn, loads=loads))
            setups.append(lambda conn: extras.register_default_jsonb(conn, loads=loads))
        encoding = self.client_encoding

        def set_up(pdb: ParallelConnection) -> None:
            if encoding is not None:
                pdb.set_client_encoding(encoding)
            for setup in setups:
                for conn in pdb.connections:
                    setup(conn)
                pdb.shard_set.setups.append(setup)

        return set_up

    def _hstore_oids(self, dbapi_connection: Any) -> Any:
        # Whether hstore is there, read on the first shard; each shard registers its own OIDs.
        if isinstance(dbapi_connection, ParallelConnection):
            dbapi_connection = dbapi_connection.connections[0]
        oids = _EXTRAS.HstoreAdapter.get_oids(dbapi_connection)
        return oids[0:2] if oids is not None and oids[0] else None

    def set_isolation_level(self, dbapi_connection: Any, level: str) -> None:
        if level == "AUTOCOMMIT":
            dbapi_connection.autocommit = True
            return
        dbapi_connection.autocommit = False
        dbapi_connection.isolation_level = self._isolation_lookup[level]

    def do_ping(self, dbapi_connection: Any) -> bool:
        """``SELECT 1`` on every shard (a SELECT of no table would run on the first shard only)."""
        autocommit = dbapi_connection.autocommit
        if not autocommit:
            dbapi_connection.autocommit = True
        try:
            with dbapi_connection.cursor(merge="union") as cursor:
                cursor.execute(self._dialect_specific_select_one)
        finally:
            if not autocommit and not dbapi_connection.closed:
                dbapi_connection.autocommit = False
        return True

    def set_deferrable(self, connection: Any, value: bool) -> None:
        connection.set_session(deferrable=value)

    def get_deferrable(self, connection: Any) -> bool | None:
        deferrable: bool | None = connection.connections[0].deferrable
        return deferrable

    @reflection.cache
    def get_table_names(self, connection: Any, schema: str | None = None, **kw: Any) -> list[str]:
        """The tables, as one database holding every row would list them.

        The two-phase commit decisions table (``parallel_connection_commits``) is the
        library's own, kept on the shards that decided a commit: it is left out.
        """
        names: list[str] = super().get_table_names(connection, schema, **kw)  # type: ignore[no-untyped-call]
        return [name for name in names if name != DECISION_TABLE]

    def do_begin_twophase(self, connection: Any, xid: Any) -> None:
        raise NotSupportedError(
            "SQLAlchemy's two-phase transactions (begin_twophase) over parallel_connection: a "
            "transaction that writes on several shards already commits with two-phase commit; "
            "use begin()"
        )


def _register_hstore(conn: Any) -> None:
    """hstore for one shard connection, with that database's own OIDs (when it has hstore)."""
    oids = _EXTRAS.HstoreAdapter.get_oids(conn)
    if oids and oids[0]:
        _EXTRAS.register_hstore(conn, oid=oids[0], array_oid=oids[1])


dialect = ParallelDialect
