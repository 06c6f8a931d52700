"""Cancel a shard's running statement without blocking the whole process.

psycopg2's ``connection.cancel()`` holds the GIL while libpq sends the cancel
request, so a shard that does not answer (a network black hole) freezes every
thread. Here the same libpq that psycopg2 loaded is called through ctypes,
which releases the GIL for the call.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import psycopg2

__all__ = ["cancel"]


@functools.cache
def _libpq() -> ctypes.CDLL | None:
    """The libpq psycopg2 is linked with, or None where it can't be found."""
    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split()[-1] for line in maps if "libpq" in line and "/" in line]
    except OSError:
        return None
    if not paths:
        return None
    try:
        lib = ctypes.CDLL(paths[0])
    except OSError:
        return None
    lib.PQgetCancel.restype = ctypes.c_void_p
    lib.PQgetCancel.argtypes = [ctypes.c_void_p]
    lib.PQcancel.restype = ctypes.c_int
    lib.PQcancel.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.PQfreeCancel.restype = None
    lib.PQfreeCancel.argtypes = [ctypes.c_void_p]
    return lib


def cancel(conn: Any) -> None:
    """Ask the server to cancel ``conn``'s running statement; other threads keep running."""
    lib = _libpq()
    pgconn = getattr(conn, "pgconn_ptr", None) if lib is not None else None
    if lib is None or not pgconn:
        conn.cancel()
        return
    handle = lib.PQgetCancel(pgconn)
    if not handle:
        raise psycopg2.OperationalError("could not prepare a cancel request")
    try:
        errbuf = ctypes.create_string_buffer(256)
        if not lib.PQcancel(handle, errbuf, len(errbuf)):
            raise psycopg2.OperationalError(errbuf.value.decode(errors="replace").strip())
    finally:
        lib.PQfreeCancel(handle)
