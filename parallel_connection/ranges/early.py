"""Early stop: a scan whose first ranges all fail the same permanent way stops before starting the rest.

The rule: the first ranges to finish have all failed for good with the same
error (SQLSTATE or exception class, and the first line of the message with
its numbers blanked), an error not worth retrying (not a lost connection,
deadlock, serialization failure, pool timeout...). How many first ranges:

* ``small = max(3, shards with work)`` for an error of the statement itself,
  which no row can cause or cure (syntax, undefined table or column,
  permission, read-only transaction: SQLSTATE classes 42, 0A, 3D, 3F, 25, 28,
  or a client-side ProgrammingError);
* ``3 * small`` for any other error (a data error, a constraint, an
  exception raised by a callable work), which may be the rows of the first
  ranges only.

Once the rule holds, no new range starts; the ranges running finish, and if
one of them succeeds the scan goes on (any success disarms the rule for
good), else it stops. So a scan stops only when every range it started
failed, the first ones alike. (The scheduler starts every shard's first
range before any shard's second, so an error of one shard alone finds the
other shards' ranges running, and their success keeps the scan going.)

With ``check_first`` (the gate), ranges run one at a time until one
succeeds, the rule applying to them as to any scan; ``3 * small`` failures
in a row, whatever their errors, stop the scan too, as nothing could be
checked.
"""

from __future__ import annotations

import re

import psycopg2
import psycopg2.pool

from ..display import error_line
from ..pool import PoolTimeout
from .attempt import is_transient
from .report import RangeFailure

__all__ = ["MIN_SAMPLE", "EarlyStop", "Signature", "signature"]

MIN_SAMPLE = 3
"""The fewest first ranges that must all fail alike before a scan stops early."""
DATA_FACTOR = 3
"""How many times more first ranges an error that rows may cause needs."""
STATEMENT_CLASSES = ("42", "0A", "3D", "3F", "25", "28")
"""SQLSTATE classes of errors of the statement itself, whatever rows it reads."""

Signature = tuple[str, str]

_NUMBER = re.compile(r"\d+")


def signature(error: BaseException) -> Signature | None:
    """What makes two failures the same one, or None for a failure that says nothing about the job.

    None for errors worth retrying or waiting out: transient ones, pool
    timeouts, a lost connection. Range-specific details (ids, counts) are
    blanked from the message.
    """
    if isinstance(error, (PoolTimeout, psycopg2.pool.PoolError)) or is_transient(error):
        return None
    if isinstance(error, psycopg2.Error) and error.pgcode:
        kind = error.pgcode
    elif isinstance(error, psycopg2.ProgrammingError):
        kind = "client"  # refused by psycopg2 before it was sent (bad placeholders, say)
    else:
        kind = f"{type(error).__module__}.{type(error).__qualname__}"
    return kind, _NUMBER.sub("#", error_line(error))


def of_the_statement(sig: Signature) -> bool:
    """Whether the failure is the statement's own, whatever rows the range holds."""
    return sig[0] == "client" or sig[0][:2] in STATEMENT_CLASSES


class EarlyStop:
    """Watches the ranges of one scan finish, and says when to stop starting new ones.

    ``small``: the sample for a statement's error (see the module). ``rule``:
    ``stop_early=True``. ``gate``: ``check_first`` (one range at a time until
    one succeeds, ``3 * small`` failures at most).
    """

    def __init__(self, small: int, *, rule: bool, gate: bool) -> None:
        self.small = max(1, small)
        self.large = DATA_FACTOR * self.small
        self.rule = rule
        self.gate = gate
        self.succeeded = False
        self._failed: list[tuple[RangeFailure, Signature | None]] = []
        """Every range that finished, in order, while none had succeeded."""

    @property
    def serial(self) -> bool:
        """Whether ranges must run one at a time (the gate is shut: no range has succeeded yet)."""
        return self.gate and not self.succeeded

    def settled(self, failure: RangeFailure | None, error: BaseException | None) -> None:
        """A range finished: ``failure`` None if it succeeded; ``error`` the raw error (no shard named)."""
        if self.succeeded:
            return
        if failure is None:
            self.succeeded = True
            self._failed.clear()
            return
        self._failed.append((failure, signature(error) if error is not None else None))

    @property
    def holding(self) -> bool:
        """Whether no new range should start: the rule (or the gate) has seen enough failures."""
        if self.succeeded:
            return False
        if self.rule and self._alike() is not None:
            return True
        return self.gate and len(self._failed) >= self.large

    def _alike(self) -> Signature | None:
        """The signature of the first failures, if enough of them failed alike and for good."""
        if len(self._failed) < self.small:
            return None
        sig = self._failed[0][1]
        if sig is None:
            return None
        need = self.small if of_the_statement(sig) else self.large
        if len(self._failed) < need or any(s != sig for _, s in self._failed[:need]):
            return None
        return sig

    def reason(self, not_run: int) -> str:
        """The sentence for ``ScanReport.stopped_early``, once :attr:`holding` with nothing running."""
        sig = self._alike() if self.rule else None
        if sig is not None:
            same = [f for f, s in self._failed if s == sig]
            first_ranges = self.small if of_the_statement(sig) else self.large
            head = f"the first {first_ranges} ranges failed with the same error and none succeeded"
        else:
            same = [f for f, _ in self._failed]
            head = (
                f"check_first: the first {self.large} ranges failed and none succeeded, so none was checked"
            )
        first = same[0]
        error = first.error
        code = f" (SQLSTATE {error.pgcode})" if isinstance(error, psycopg2.Error) and error.pgcode else ""
        kind = "failed this way" if sig is not None else "failed"
        return (
            f"{head}: {type(error).__name__}{code}: {error_line(error)}; first on {first.id_range}; "
            f"{len(same)} ranges {kind}, {not_run} not started"
        )
