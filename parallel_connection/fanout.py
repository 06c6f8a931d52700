"""Run one call per shard at once on the connection's thread pool.

Each call takes its shard's :class:`~parallel_connection.turns.Gate` first,
so threads sharing the connection take turns on each shard connection (as
psycopg2 has them do) while their calls on other shards run at once. The
first failure cancels the statement's own calls still running on the other
shards, never another thread's, and is raised as soon as they stop (or
after a short grace period, so no caller waits for a shard that is no
longer needed). Ctrl-C and a passed deadline do the same. A call on one
shard alone runs on the caller's own thread: no pool, no future.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future
from typing import Any, Generic, TypeVar

import psycopg2

from . import deadline, interrupts
from .errors import ShardInfo, shard_error
from .turns import Gate, Turn, Waited, holding
from .workers import Workers, wait

__all__ = ["CANCEL_GRACE", "FanOut", "Pending"]

T = TypeVar("T")

CANCEL_GRACE = 1.0
"""Seconds to wait for cancelled shards to stop before raising anyway."""
OVERDUE = 2 * deadline.CUT_GRACE + CANCEL_GRACE
"""Seconds past a deadline after which a call that still has not returned is abandoned."""


class _Call:
    """One fan-out's state: the turns its calls hold, and whether to give up."""

    def __init__(self, indexes: Sequence[int]) -> None:
        self.lock = threading.Lock()
        self.indexes = list(indexes)
        self.turns: dict[int, Turn] = {}
        self.aborted = False
        self.tickets: list[deadline.Ticket] = []
        """Ctrl-C's: the watchdog cancels the calls, and cuts them after the grace."""


class Pending(Generic[T]):
    """One shard's call started in the background (a streaming fetch, a COPY): its future, and its stop."""

    def __init__(self, fanout: FanOut, state: _Call, future: Future[T]) -> None:
        self._fanout = fanout
        self._state = state
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> T:
        wait([self.future])  # awake: Ctrl-C is seen while it waits
        return self.future.result()

    def cancel(self) -> None:
        """Cancel the call's statement (or keep it from starting); wait up to the grace for it to stop."""
        self._fanout.cancel_pending([self])

    def sever(self) -> None:
        """Cut the connection under the call's statement, which ignored its cancel."""
        with self._state.lock:
            turns = list(self._state.turns.values())
        for turn in turns:
            turn.sever()


class FanOut:
    """A thread pool that runs a callable once per shard, shard failures decorated."""

    def __init__(
        self,
        shards: Sequence[ShardInfo],
        connections: Sequence[Any],
        secrets: set[str],
        max_workers: int | None = None,
    ) -> None:
        self.shards = list(shards)
        self._connections = connections if isinstance(connections, list) else list(connections)
        """The caller's list when it gives one: a connection replaced in it is used from the next call."""
        self._secrets = secrets
        self._gates = [Gate() for _ in connections]
        self._watchdog = deadline.Watchdog()
        self._lock = threading.Lock()
        self._stuck: dict[int, Turn] = {}
        self._pool = Workers(max_workers or max(4, 2 * len(shards)))

    def start(self, index: int, fn: Callable[[], T], *, watch: bool = True) -> Pending[T]:
        """Run ``fn`` on shard ``index``'s connection in the background, in its turn; the current
        deadline counts again from now (``watch=False``: it bounds only the wait for the turn)."""
        state = _Call([index])
        future: Future[T] = self._submit(
            contextvars.copy_context().run,
            self._call,
            state,
            lambda _: fn(),
            index,
            deadline.renewed(),
            watch,
        )
        return Pending(self, state, future)

    def error(self, exc: BaseException, index: int) -> BaseException:
        """``exc`` raised on shard ``index``, as the caller should see it."""
        return shard_error(exc, self.shards[index], self._secrets)

    def run(self, fn: Callable[[int], T], indexes: Sequence[int] | None = None) -> list[T]:
        """``[fn(i) for i in indexes]``, run at once; the first failure wins."""
        indexes = list(range(len(self.shards))) if indexes is None else list(indexes)
        if self._stuck and self.stuck() & set(indexes):
            # A statement that ignored its cancel holds the connection: nothing
            # else could run on it, so cut it and let the caller see it broken.
            self.release_stuck()
        state = _Call(indexes)
        limit = deadline.current()
        if len(indexes) == 1:
            return [self._run_one(state, fn, indexes[0], limit)]
        futures = {
            self._submit(contextvars.copy_context().run, self._call, state, fn, i, limit): i for i in indexes
        }
        pending: set[Future[T]] = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=_patience(limit), return_when=FIRST_EXCEPTION)
                if not done:
                    self._abort(state, pending)
                    raise self.error(_abandoned(limit), min(futures[f] for f in pending))
                if any(f.cancelled() for f in done):  # closed by another thread meanwhile
                    self._abort(state, pending)
                    raise psycopg2.InterfaceError("connection already closed")
                failed = sorted((futures[f], f) for f in done if f.exception() is not None)
                if failed:
                    index, future = failed[0]
                    self._abort(state, pending)
                    raise self.error(future.exception(), index)  # type: ignore[arg-type]
        except KeyboardInterrupt:
            self._abort(state, pending)
            raise
        return [f.result() for f in futures]

    def _run_one(
        self, state: _Call, fn: Callable[[int], T], index: int, limit: deadline.Deadline | None
    ) -> T:
        """One shard: the call runs on the caller's thread (no other shard to cancel if it fails, no
        thread to hand it to). On the main thread, Ctrl-C stops it at once (:mod:`interrupts`)."""
        try:
            if threading.get_ident() != interrupts.MAIN_THREAD:
                return self._call(state, fn, index, limit)
            result: T = interrupts.call(
                lambda: self._call(state, fn, index, limit), lambda: self._interrupt(state)
            )
        except Exception as exc:
            raise self.error(exc, index) from None
        finally:
            for ticket in state.tickets:
                self._watchdog.release(ticket)
        if result is interrupts.UNGUARDED:
            return self._run_pooled(state, fn, index, limit)
        return result

    def _run_pooled(
        self, state: _Call, fn: Callable[[int], T], index: int, limit: deadline.Deadline | None
    ) -> T:
        """One shard's call on the pool, the main thread waiting awake (Ctrl-C seen as it waits)."""
        future = self._submit(contextvars.copy_context().run, self._call, state, fn, index, limit)
        try:
            done, _ = wait([future], timeout=_patience(limit))
        except KeyboardInterrupt:
            self._abort(state, set() if future.done() else {future})
            raise
        if not done:
            self._abort(state, {future})
            raise self.error(_abandoned(limit), index)
        if future.cancelled():
            raise psycopg2.InterfaceError("connection already closed")
        try:
            result: T = future.result()
        except Exception as exc:
            raise self.error(exc, index) from None
        return result

    def _interrupt(self, state: _Call) -> None:
        """Ctrl-C during a call the main thread runs itself: a call waiting for its turn gives up, a
        running one is cancelled now and its connection cut if it has not stopped after the grace."""
        with state.lock:
            state.aborted = True
            turns = list(state.turns.values())
        for index in state.indexes:
            self._gates[index].wake()
        now = deadline.Deadline(0.0, time.monotonic())
        state.tickets.extend(self._watchdog.watch(turn, now) for turn in turns)

    @contextlib.contextmanager
    def hold(self, indexes: Sequence[int]) -> Iterator[object]:
        """Keep these shards' connections for the calls of one block (see :func:`turns.holding`),
        waiting for them no longer than the current deadline."""
        limit = deadline.current()
        ordered = sorted(set(indexes))
        try:
            with holding([self._gates[i] for i in ordered], None if limit is None else limit.at) as token:
                yield token
        except Waited:
            raise self.error(deadline.waited_error(limit), ordered[0]) from None

    @contextlib.contextmanager
    def attend(self, index: int, *, wait: bool = False) -> Iterator[bool]:
        """Hold shard ``index``'s connection for the block if nobody else has it now (True); False
        (and the block runs without it) when another statement has it. With ``wait``, wait for it
        as a call does, up to the current deadline."""
        gate = self._gates[index]
        limit = deadline.current()
        me = gate.enter(lambda: not wait, None if limit is None or not wait else limit.at)
        try:
            yield me is not None
        finally:
            if me is not None:
                gate.leave(me)

    def take(
        self,
        index: int,
        *,
        owner: object | None = None,
        until: float | None = None,
        give_up: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Take shard ``index``'s gate for ``owner`` (default: the :meth:`hold` block or thread of the
        caller) until :meth:`give_back`; False if ``until`` passed or ``give_up()`` first."""
        return self._gates[index].enter(give_up, until, owner) is not None

    def give_back(self, index: int, owner: object) -> None:
        """End what :meth:`take` took for ``owner`` (a :meth:`hold` block's token, or the lender's)."""
        self._gates[index].release(owner)

    def cancel_pending(self, calls: Sequence[Pending[Any]]) -> None:
        """Cancel these background calls at once; wait up to the grace for them to stop."""
        self._abort([c._state for c in calls], {c.future for c in calls if not c.future.done()})

    def cancel_all(self, indexes: Sequence[int], timeout: float = CANCEL_GRACE) -> None:
        """Cancel the statement each of these shards is running now, whoever runs it; wait at most
        ``timeout`` seconds for the requests to be delivered."""
        turns = [turn for i in indexes if (turn := self._gates[i].turn) is not None]
        for turn in turns:
            turn.cancel()
        end = time.monotonic() + timeout
        for turn in turns:
            turn.wait_delivered(max(0.0, end - time.monotonic()))

    def release_stuck(self, timeout: float = CANCEL_GRACE) -> None:
        """Cut the connections of shards still stuck in an abandoned statement, and let them end."""
        with self._lock:
            stuck = list(self._stuck.values())
        for turn in stuck:
            turn.sever()
        self.wait_unstuck(timeout)

    def stuck(self) -> set[int]:
        """Shards whose statement was abandoned after a cancel and is still running."""
        with self._lock:
            return set(self._stuck)

    def wait_unstuck(self, timeout: float) -> set[int]:
        """Wait up to ``timeout`` for abandoned statements to end; the shards still stuck."""
        end = time.monotonic() + timeout
        while (stuck := self.stuck()) and time.monotonic() < end:
            time.sleep(0.02)
        return stuck

    def _submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        try:
            return self._pool.submit(fn, *args)
        except RuntimeError:  # closed by another thread meanwhile
            raise psycopg2.InterfaceError("connection already closed") from None

    def close(self) -> None:
        self._watchdog.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _call(
        self,
        state: _Call,
        fn: Callable[[int], T],
        index: int,
        limit: deadline.Deadline | None,
        watch: bool = True,
    ) -> T:
        gate = self._gates[index]
        me = gate.enter(lambda: state.aborted, None if limit is None else limit.at)
        if me is None:
            if state.aborted:
                raise _Skipped()
            raise deadline.waited_error(limit)
        outer = False
        try:
            turn = Turn(index, self._connections[index])
            with state.lock:
                if state.aborted:
                    raise _Skipped()
                state.turns[index] = turn
            outer = gate.turn is None
            if outer:
                gate.turn = turn
            ticket = None
            try:
                if limit is not None and watch:
                    ticket = self._watchdog.watch(turn, limit)
                return fn(index)
            except Exception:
                if ticket is not None and ticket.expired:
                    raise deadline.expired_error(ticket) from None
                raise
            finally:
                if ticket is not None:
                    self._watchdog.release(ticket)
                with state.lock:
                    state.turns.pop(index, None)
                turn.end()
                if self._stuck:  # only _abort() adds to it, before the turn was popped above
                    with self._lock:
                        if self._stuck.get(index) is turn:
                            del self._stuck[index]
        finally:
            if outer:
                gate.turn = None
            gate.leave(me)

    def _abort(self, state: _Call | Sequence[_Call], pending: set[Future[Any]]) -> None:
        """Stop these calls: those waiting for their turn give up, those running are cancelled; those
        still running after the grace are stuck (the next call on their shard cuts them)."""
        start = time.monotonic()
        states = [state] if isinstance(state, _Call) else list(state)
        turns: list[Turn] = []
        for one in states:
            with one.lock:
                one.aborted = True
                turns.extend(one.turns.values())
            for index in one.indexes:
                self._gates[index].wake()
        for turn in turns:
            turn.cancel()
        if pending:
            wait(pending, timeout=max(0.0, CANCEL_GRACE - (time.monotonic() - start)))
        for one in states:
            with one.lock, self._lock:
                self._stuck.update(one.turns)


def _patience(limit: deadline.Deadline | None) -> float | None:
    """How long to wait for calls before abandoning them (None: as long as they take)."""
    return None if limit is None else max(0.0, limit.at + OVERDUE - time.monotonic())


def _abandoned(limit: deadline.Deadline | None) -> psycopg2.OperationalError:
    seconds = f"{limit.seconds:g}" if limit is not None else "?"
    return psycopg2.OperationalError(
        f"no answer within the statement deadline of {seconds} s, even after its connection was cut; "
        "the call was abandoned"
    )


class _Skipped(Exception):
    """A shard's call that never started because another shard had failed."""
