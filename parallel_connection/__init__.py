"""parallel_connection: one DB-API 2.0 connection over several PostgreSQL shards."""

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
from .ranges.spec import InShard

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
