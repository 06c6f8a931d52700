"""Statement deadlines: a bound, kept by the client, on how long a shard may take to answer.

``with scope(seconds):`` covers one execute, fetch or commit; every shard
call started in it is watched by the connection's :class:`Watchdog`. Past
the deadline the call's statement is cancelled; past a short grace after
that its connection is cut, so the call returns even when the server (or a
proxy in front of it) still acknowledges TCP but answers nothing. TCP
keepalives cannot tell such a peer from a busy one.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg2
import psycopg2.errors

from .turns import Turn

__all__ = [
    "CUT_GRACE",
    "Deadline",
    "Ticket",
    "Watchdog",
    "checked_deadline",
    "current",
    "expired_error",
    "renewed",
    "scope",
    "waited_error",
]

CUT_GRACE = 1.0
"""Seconds between a deadline's cancel and the cut of a connection whose statement did not stop."""


@dataclass(frozen=True)
class Deadline:
    seconds: float
    at: float
    """When it passes (``time.monotonic()``)."""


_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "parallel_connection_deadline", default=None
)


@contextlib.contextmanager
def scope(seconds: float | None) -> Iterator[None]:
    """Bound the shard calls made in this block by ``seconds`` from now (None: no bound; an outer,
    earlier deadline stays)."""
    outer = _current.get()
    if seconds is None or (outer is not None and outer.at <= time.monotonic() + seconds):
        yield
        return
    token = _current.set(Deadline(seconds, time.monotonic() + seconds))
    try:
        yield
    finally:
        _current.reset(token)


def checked_deadline(seconds: float | None) -> float | None:
    """``seconds`` as a statement deadline, or a ProgrammingError saying what is accepted."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf:
        raise psycopg2.ProgrammingError(
            f"statement_deadline must be a positive number of seconds or None, not {seconds!r}"
        )
    return float(seconds)


def current() -> Deadline | None:
    """The deadline of the block the caller is in, if any."""
    return _current.get()


def renewed() -> Deadline | None:
    """The current bound counted again from now (for a streaming fetch started in the background)."""
    found = _current.get()
    return None if found is None else Deadline(found.seconds, time.monotonic() + found.seconds)


class Ticket:
    """One watched call."""

    def __init__(self, turn: Turn, deadline: Deadline) -> None:
        self.turn = turn
        self.deadline = deadline
        self.expired = False
        self.done = False


def expired_error(ticket: Ticket) -> psycopg2.Error:
    """What the caller of a call whose deadline passed sees (before the shard is named)."""
    seconds = f"{ticket.deadline.seconds:g}"
    if ticket.turn.severed:
        return psycopg2.OperationalError(
            f"no answer within the statement deadline of {seconds} s, nor {CUT_GRACE:g} s after the "
            "cancel: the connection was cut (the shard is stalled or unreachable)"
        )
    return canceled_error(ticket.deadline)


def canceled_error(limit: Deadline | None) -> psycopg2.Error:
    """The statement was cancelled at its deadline, as PostgreSQL says it (SQLSTATE 57014)."""
    seconds = f"{limit.seconds:g}" if limit is not None else "?"
    error = psycopg2.errors.QueryCanceled(
        f"canceling statement: the statement deadline of {seconds} s passed (statement_deadline)"
    )
    error.__setstate__({"pgcode": "57014", "pgerror": None})  # type: ignore[no-untyped-call]
    return error


def waited_error(limit: Deadline | None) -> psycopg2.OperationalError:
    """The deadline passed before a call's turn came: nothing ran, nothing was cut."""
    seconds = f"{limit.seconds:g}" if limit is not None else "?"
    return psycopg2.OperationalError(
        f"the statement deadline of {seconds} s passed while another statement of this connection "
        "held the shard's connection (nothing ran)"
    )


class Watchdog:
    """One thread per connection that cancels calls past their deadline, then cuts them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Ticket]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._released = 0

    def watch(self, turn: Turn, deadline: Deadline) -> Ticket:
        ticket = Ticket(turn, deadline)
        with self._cond:
            heapq.heappush(self._heap, (deadline.at, next(self._seq), ticket))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="parallel_connection-deadlines", daemon=True
                )
                self._thread.start()
            if self._heap[0][2] is ticket:  # a later one is already waited for
                self._cond.notify()
        return ticket

    def release(self, ticket: Ticket) -> None:
        with self._cond:
            ticket.done = True
            self._released += 1
            if self._released > 1024 and 2 * self._released > len(self._heap):
                # Finished calls wait in the heap until their deadline; drop them in bulk.
                self._heap = [entry for entry in self._heap if not entry[2].done]
                heapq.heapify(self._heap)
                self._released = 0

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                    self._released = max(0, self._released - 1)
                if not self._heap:
                    self._cond.wait()
                    continue
                due, _, ticket = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                if not ticket.expired:
                    ticket.expired = True
                    ticket.turn.cancel()
                    heapq.heappush(self._heap, (due + CUT_GRACE, next(self._seq), ticket))
                else:
                    ticket.turn.sever()
