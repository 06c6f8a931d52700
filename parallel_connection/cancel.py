"""Shard connections that stop answering: cancel their statement, cut them, tell them broken.

psycopg2's ``connection.cancel()`` holds the GIL while libpq sends the cancel
request, so a shard that does not answer (a network black hole) freezes every
thread. Here the same libpq that psycopg2 loaded is called through ctypes,
which releases the GIL for the call.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import select
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg2
import psycopg2._psycopg
import psycopg2.extensions

__all__ = ["Watch", "broken", "cancel", "cancel_all", "cancel_quietly", "lost", "sever", "suspect"]


@functools.cache
def _libpq() -> ctypes.CDLL | None:
    """psycopg2's own libpq (symbols resolve through its extension module), or None."""
    try:
        lib = ctypes.CDLL(psycopg2._psycopg.__file__)
        lib.PQgetCancel.restype = ctypes.c_void_p
    except (OSError, AttributeError):
        return None
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


def sever(conn: Any) -> None:
    """Cut ``conn``'s socket, so a thread stuck waiting on a silent server returns at once."""
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
    except (OSError, psycopg2.Error):
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def broken(conn: Any) -> bool:
    """True when ``conn`` can no longer be used (closed, or its server gone)."""
    return bool(conn.closed) or (
        conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN
    )


def suspect(conns: Sequence[Any]) -> list[int]:
    """The indexes of the connections among ``conns`` that are closed or have something to read,
    found without reading it (one ``select``): safe on connections other threads are using, where
    something to read is usually their statement's answer; :func:`lost` tells, once they are idle."""
    found, fds = _descriptors(conns)
    try:
        readable = select.select(list(fds), [], [], 0)[0] if fds else []
    except (OSError, ValueError):
        readable = list(fds)
    if not found and not readable:
        return []
    return sorted(found + [fds[fd] for fd in readable])


class Watch:
    """:func:`suspect` for one list of connections, looked at often: their sockets in one ``poll``
    object kept between looks (made again when a socket changed). Safe from several threads."""

    def __init__(self) -> None:
        self._conns: list[Any] = []
        self._fds: list[int] = []
        self._poll = select.poll()
        self._lock = threading.Lock()

    def suspects(self, conns: Sequence[Any]) -> list[int]:
        for conn in conns:
            if conn.closed:
                return suspect(conns)
        if not self._lock.acquire(blocking=False):  # another thread is looking: look on our own
            return suspect(conns)
        try:
            if conns != self._conns:  # (the same connection objects keep their sockets)
                self._watch(conns)
            quiet = not self._poll.poll(0)
        except (OSError, psycopg2.Error):
            quiet = False
        finally:
            self._lock.release()
        return [] if quiet else suspect(conns)

    def _watch(self, conns: Sequence[Any]) -> None:
        fds = [conn.fileno() for conn in conns]
        for fd in self._fds:
            with contextlib.suppress(KeyError):
                self._poll.unregister(fd)
        for fd in fds:
            self._poll.register(fd, select.POLLIN | select.POLLPRI)
        self._conns, self._fds = list(conns), fds


def _descriptors(conns: Sequence[Any]) -> tuple[list[int], dict[int, int]]:
    """The indexes of the closed connections, and the socket of each other one (socket -> index)."""
    found = []
    fds = {}
    for i, conn in enumerate(conns):
        if conn.closed:
            found.append(i)
            continue
        try:
            fds[conn.fileno()] = i
        except psycopg2.Error:
            found.append(i)
    return found, fds


def lost(conns: Sequence[Any]) -> list[int]:
    """The indexes of the idle connections among ``conns`` that are broken or whose server hung up.

    An idle connection's socket has nothing to read unless the server sent
    something unasked: a notification, or its goodbye (a FATAL message, then
    the end of the stream). What arrived is read, as psycopg2 would before its
    next statement, and a connection that reached the end is closed, so
    ``closed`` tells. One ``select`` looks at them all. Call it only on
    connections no other thread is using.
    """
    found, fds = _descriptors(conns)
    try:
        readable = select.select(list(fds), [], [], 0)[0] if fds else []
    except (OSError, ValueError):
        readable = list(fds)
    for fd in readable:
        conn = conns[fds[fd]]
        heard = len(conn.notices)
        with contextlib.suppress(psycopg2.Error):
            # The goodbye comes in two reads: the server's message, then the end of the stream,
            # which may come a moment later (the server is still exiting).
            for _ in range(3):
                said = conn.notices[heard:]
                wait = GOODBYE if any(n.startswith("FATAL:") for n in said) else 0.0
                if not select.select([fd], [], [], wait)[0]:
                    break
                conn.poll()
        if conn.closed:
            found.append(fds[fd])
    return sorted(found)


GOODBYE = 1.0
"""Seconds to wait for the end of the stream after an idle connection's server said FATAL."""


def cancel_all(conns: Iterable[Any], timeout: float) -> None:
    """Cancel every connection's statement at once; wait at most ``timeout`` seconds for the requests.

    Each request has a thread of its own, so a cancel never queues behind the
    work it is meant to stop, and a server that does not answer holds up
    nobody for longer than ``timeout``.
    """
    threads = [threading.Thread(target=cancel_quietly, args=(conn,), daemon=True) for conn in conns]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def cancel_quietly(conn: Any) -> None:
    """:func:`cancel`, its failure ignored (the statement then ends on its own, or is cut)."""
    with contextlib.suppress(Exception):
        if not conn.closed:
            cancel(conn)
