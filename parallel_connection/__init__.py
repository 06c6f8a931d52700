"""parallel_connection: one DB-API 2.0 connection over several PostgreSQL shards."""

try:  # the driver comes from an extra, so say which one when it is missing
    import psycopg2  # noqa: F401
except ModuleNotFoundError as exc:
    if exc.name != "psycopg2":
        raise
    raise ImportError(
        "parallel_connection needs psycopg2: pip install 'parallel_connection[binary]' (prebuilt wheels), "
        "or 'parallel_connection[source]' (builds psycopg2 from source: needs pg_config and the libpq "
        "headers, e.g. Debian's libpq-dev)"
    ) from None

from psycopg2 import (
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    DatabaseError,
    DataError,
    Date,
    DateFromTicks,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    ProgrammingError,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
    Warning,
)

from .connection import ParallelConnection, connect
from .cursor import ParallelCursor
from .errors import NotSupportedError, ShardInfo
from .placement import Custom, Hash, Modulo, Placement, Ranges
from .pool import PoolTimeout
from .psycopg2_scopes import install as _install_psycopg2_scopes
from .ranges.spec import InShard

_install_psycopg2_scopes()  # psycopg2's register_type(x, pdb) and friends act on every shard

apilevel = "2.0"
threadsafety = 2
paramstyle = "pyformat"

__version__ = "0.1.0"

__all__ = [
    "BINARY",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "Binary",
    "Custom",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "Hash",
    "InShard",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "Modulo",
    "NotSupportedError",
    "OperationalError",
    "ParallelConnection",
    "ParallelCursor",
    "Placement",
    "PoolTimeout",
    "ProgrammingError",
    "Ranges",
    "ShardInfo",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]
