"""One call at a time on each shard connection, and cancels that reach only the call they were meant for.

psycopg2 runs one statement at a time on a connection; threads sharing it
queue inside psycopg2, where nobody can see whose statement is running. A
:class:`Gate` makes that queue ours: the call that holds a shard's gate is
the one whose statement runs there, and it has a :class:`Turn`. A cancel
(another shard failed, a deadline passed, Ctrl-C) goes through the turn: it
is sent only while that turn lasts, and the gate passes to the next call
only once the cancel request was delivered, so it cannot land on another
thread's statement.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .cancel import cancel_quietly, sever

__all__ = ["Gate", "Turn", "Waited", "holder", "holding"]

GIVE_UP_POLL = 0.1
"""Seconds between checks of a waiting call's reason to give up."""
CANCEL_DELIVERY = 1.0
"""Seconds a turn's end waits for its cancel request to be delivered before the gate moves on."""


class Turn:
    """One call's turn on one shard connection."""

    def __init__(self, index: int, conn: Any) -> None:
        self.index = index
        self.conn = conn
        self.cancelled = False
        self.severed = False
        self._lock = threading.Lock()
        self._over = False
        self._requests: list[threading.Thread] = []

    def cancel(self) -> None:
        """Ask the server to cancel this turn's statement (at once, in the background)."""
        with self._lock:
            if self._over:
                return
            self.cancelled = True
            request = threading.Thread(target=cancel_quietly, args=(self.conn,), daemon=True)
            self._requests.append(request)
            request.start()

    def sever(self) -> None:
        """Cut the connection under this turn's statement, which ignored its cancel."""
        with self._lock:
            if self._over:
                return
            self.severed = True
            sever(self.conn)

    def end(self) -> None:
        """The call returned: no cancel may start now, and those sent have been delivered (or given up)."""
        with self._lock:
            self._over = True
            sent = bool(self._requests)
        # A cut connection runs nothing more: a late cancel can only reach its dead backend.
        if sent and not self.severed:
            self.wait_delivered(CANCEL_DELIVERY)

    def wait_delivered(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the cancel requests sent so far."""
        with self._lock:
            requests = list(self._requests)
        deadline = time.monotonic() + timeout
        for request in requests:
            request.join(max(0.0, deadline - time.monotonic()))


_holder: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "parallel_connection_holder", default=None
)


def holder() -> object | None:
    """The token of the :func:`holding` block the caller is in (carried to the calls it starts)."""
    return _holder.get()


@contextlib.contextmanager
def holding(gates: Sequence[Gate], until: float | None = None) -> Iterator[object]:
    """Hold these gates for a block of several calls (a statement and its commit): calls made in
    the block, on any thread that carries its context, pass; everyone else's wait. Past ``until``
    (monotonic) before every gate was taken, :class:`Waited`."""
    token = object()
    reset = _holder.set(token)
    try:
        for gate in gates:
            if gate.enter(lambda: False, until) is None:
                raise Waited()
        yield token
    finally:
        for gate in gates:
            gate.release(token)
        _holder.reset(reset)


class Waited(Exception):
    """A gate was not free before the deadline (another statement of the connection held it)."""


class Gate:
    """Who holds one shard connection now: a thread, or a :func:`holding` block (re-entrant for it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        """Waited on in :meth:`enter`; taken as ``self._lock`` (the same lock, without the Python-level
        ``Condition.__enter__``) where nobody waits."""
        self._owner: object | None = None
        self._depth = 0
        self._waiting = 0
        """Calls waiting in :meth:`enter` (nobody to wake when there are none)."""
        self.turn: Turn | None = None
        """The turn of the call running on the connection now (the outermost one)."""

    def enter(
        self, give_up: Callable[[], bool], until: float | None, owner: object | None = None
    ) -> object | None:
        """Take the gate: the owner it was taken for (to :meth:`leave` with), or None if
        ``give_up()`` became true or ``until`` (monotonic) passed first.

        The owner is ``owner``, else the :func:`holding` block the caller is in, else its thread.
        """
        me = owner or _holder.get() or threading.get_ident()
        with self._lock:
            while self._owner is not None and self._owner != me:
                if give_up():
                    return None
                remaining = None if until is None else until - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                # Woken by leave() and wake(); the poll only bounds a give_up() nobody signals.
                self._waiting += 1
                try:
                    self._cond.wait(GIVE_UP_POLL if remaining is None else min(remaining, GIVE_UP_POLL))
                finally:
                    self._waiting -= 1
            self._owner = me
            self._depth += 1
            return me

    def leave(self, owner: object) -> None:
        """One :meth:`enter` of ``owner`` ends (a late leave of an owner already released does nothing)."""
        with self._lock:
            if self._owner != owner:
                return
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                if self._waiting:
                    self._cond.notify_all()

    def release(self, owner: object) -> None:
        """Every :meth:`enter` of ``owner`` ends (whatever was interrupted between them)."""
        with self._lock:
            if self._owner == owner:
                self._depth = 0
                self._owner = None
                if self._waiting:
                    self._cond.notify_all()

    def wake(self) -> None:
        """Wake the waiting calls so they can see that they should give up."""
        with self._lock:
            if self._waiting:
                self._cond.notify_all()
