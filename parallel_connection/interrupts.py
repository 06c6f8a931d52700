"""Ctrl-C for a shard call the main thread runs itself.

While psycopg2 waits for a server it holds no GIL and Python runs no signal
handler: Ctrl-C would be seen only once the statement ended. For the span
of one call, :func:`call` has the interpreter also write each signal to a
socket (``set_wakeup_fd``) that a listener thread reads: on SIGINT it tells
the call to stop at once (its statement cancelled, its connection cut if
that is not enough). SIGINT's handler meanwhile only takes note, so the
KeyboardInterrupt comes once the call has returned and given back what it
held, never half-way through that.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import select
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["MAIN_THREAD", "UNGUARDED", "call"]

T = TypeVar("T")

UNGUARDED: Any = object()
"""What :func:`call` returns, without calling, when it cannot see Ctrl-C during the call: SIGINT
has a handler of the program's own, or another listener (an event loop) has the wakeup fd."""

_SIGINT = int(signal.SIGINT)
_signal: Any = importlib.import_module("_signal")
"""The C module: ``signal.signal`` and ``signal.getsignal`` make an enum of what they return,
through a ValueError for a function, which costs more than the rest of a call."""


class _Listener:
    """The socket the interpreter writes signals to during a call, and the thread that reads it."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._fd = self._writer.fileno()
        self._lock = threading.Lock()
        self._stop: Callable[[], None] | None = None
        self._heard = False
        self._handler = self._handle  # one bound method, so that getsignal() tells it
        threading.Thread(target=self._listen, name="parallel_connection-interrupts", daemon=True).start()

    def call(self, fn: Callable[[], T], stop: Callable[[], None]) -> T:
        previous = _signal.getsignal(_SIGINT)
        if previous is not _signal.default_int_handler:
            if previous is self._handler or previous in (signal.SIG_IGN, signal.SIG_DFL):
                return fn()  # a call within a call (the outer one listens); Ctrl-C ignored, or fatal
            return UNGUARDED  # type: ignore[no-any-return]  # the program's own handler decides
        self._stop, self._heard = stop, False
        _signal.signal(_SIGINT, self._handler)
        try:
            other = _signal.set_wakeup_fd(self._fd, warn_on_full_buffer=False)
        except BaseException:
            _signal.signal(_SIGINT, previous)
            raise
        if other not in (-1, self._fd):  # another listener (an event loop) has the signals
            _signal.set_wakeup_fd(other)
            self._stop = None
            _signal.signal(_SIGINT, previous)
            return UNGUARDED  # type: ignore[no-any-return]
        try:
            return fn()
        finally:
            try:
                _signal.set_wakeup_fd(-1)  # a signal still pending is handled here, by _handle
                with self._lock:
                    self._stop = None
                    if self._heard:
                        self._drain()  # what the listener has not read yet belongs to this call
            finally:
                _signal.signal(_SIGINT, previous)
            if self._heard:
                raise KeyboardInterrupt from None  # in place of what the stopped call raised

    def _handle(self, signum: int, frame: object) -> None:
        """SIGINT's handler during a call (run by the main thread once psycopg2 returns)."""
        self._heard = True

    def _listen(self) -> None:
        while True:
            select.select([self._reader], [], [])
            with self._lock:
                if _SIGINT in self._drain() and self._stop is not None:
                    with contextlib.suppress(Exception):
                        self._stop()

    def _drain(self) -> bytes:
        data = b""
        while True:
            try:
                chunk = self._reader.recv(512)
            except BlockingIOError:
                return data
            if not chunk:
                return data
            data += chunk


_listener: _Listener | None = None
_making = threading.Lock()

MAIN_THREAD = threading.main_thread().ident
"""The main thread's ident: the only thread Python runs signal handlers on."""


def _forget() -> None:
    global _listener, _making, MAIN_THREAD
    _listener, _making = None, threading.Lock()  # a forked child has no listener thread: it makes its own
    MAIN_THREAD = threading.main_thread().ident


os.register_at_fork(after_in_child=_forget)


def call(fn: Callable[[], T], stop: Callable[[], None]) -> T:
    """``fn()`` on the main thread, ``stop()`` called from another thread as soon as Ctrl-C is
    pressed (it must not block); the KeyboardInterrupt is raised once ``fn`` has returned or failed.
    :data:`UNGUARDED`, without calling ``fn``, when Ctrl-C cannot be seen that way."""
    global _listener
    listener = _listener
    if listener is None:
        with _making:
            if _listener is None:
                _listener = _Listener()
            listener = _listener
    return listener.call(fn, stop)
