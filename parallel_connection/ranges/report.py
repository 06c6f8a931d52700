"""The report of a scan: each range's value or error, and the sums of dict-shaped values."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..display import WIDTH, error_line, html_table, short, short_repr
from ..errors import ShardInfo
from .spec import IdRange

__all__ = ["RangeFailure", "RangeResult", "ScanIncomplete", "ScanReport"]

SUMMABLE = (numbers.Number, timedelta)
SHOWN = 5
"""Ranges a report's repr lists (failed ones first); its HTML table lists twice as many."""
HEADER = ("shard", "ids", "status", "rows", "attempts", "value or error")


class ScanIncomplete(RuntimeError):
    """Totals were asked of a scan that has failed or unfinished ranges."""


@dataclass(frozen=True)
class RangeResult:
    """A finished range and what its work returned."""

    shard: ShardInfo
    start: int
    end: int
    value: Any
    rows: int = 0
    attempts: int = 1
    seconds: float = 0.0
    resumed: bool = False

    @property
    def id_range(self) -> IdRange:
        return IdRange(self.shard, self.start, self.end)

    def _line(self) -> str:
        done = "resumed" if self.resumed else "finished"
        return f"{self.id_range}: {done}, {self.rows} rows, value {short_repr(self.value)}"

    def _row(self) -> tuple[Any, ...]:
        status = "resumed" if self.resumed else "finished"
        return (self.shard, _ids(self), status, self.rows, self.attempts, short_repr(self.value))

    def __repr__(self) -> str:
        resumed = ", resumed" if self.resumed else ""
        return (
            f"RangeResult({self.id_range}, rows={self.rows}, attempts={self.attempts}{resumed}, "
            f"value={short_repr(self.value)})"
        )

    def _repr_html_(self) -> str:
        return html_table(f"RangeResult: {self.id_range}", HEADER, [self._row()])


@dataclass(frozen=True)
class RangeFailure:
    """A range that failed for good, with the error (naming its shard) that ended it."""

    shard: ShardInfo
    start: int
    end: int
    error: BaseException
    attempts: int = 1

    @property
    def id_range(self) -> IdRange:
        return IdRange(self.shard, self.start, self.end)

    def _error(self) -> str:
        return short(f"{type(self.error).__name__}: {error_line(self.error)}", 2 * WIDTH)

    def _line(self) -> str:
        tries = "attempt" if self.attempts == 1 else "attempts"
        return f"{self.id_range}: failed after {self.attempts} {tries}: {self._error()}"

    def _row(self) -> tuple[Any, ...]:
        return (self.shard, _ids(self), "failed", "", self.attempts, self._error())

    def __repr__(self) -> str:
        return f"RangeFailure({self.id_range}, attempts={self.attempts}, error={self._error()})"

    def _repr_html_(self) -> str:
        return html_table(f"RangeFailure: {self.id_range}", HEADER, [self._row()])


@dataclass
class ScanReport:
    """What a scan did. ``totals()`` sums dict-shaped values; ``rerun()`` retries what did not finish."""

    results: list[RangeResult] = field(default_factory=list)
    failed: list[RangeFailure] = field(default_factory=list)
    pending: list[IdRange] = field(default_factory=list)
    null_id_rows: int = 0
    interrupted: bool = False
    smoke_test: bool = False
    elapsed: float = 0.0
    stopped_early: str | None = None
    """Why the scan started no more ranges (its first ranges all failed the same way), else None."""
    not_run: int = 0
    """Ranges never started (an early stop, Ctrl-C); they are in ``pending``, and ``rerun()`` runs them."""
    _rerun: Callable[[list[IdRange]], ScanReport] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when every planned range finished (and this was not just a smoke test)."""
        return (
            not self.failed
            and not self.pending
            and not self.interrupted
            and not self.smoke_test
            and self.stopped_early is None
        )

    @property
    def rows(self) -> int:
        """Rows the ranges' statements returned or changed, summed."""
        return sum(r.rows for r in self.results)

    def values(self) -> Iterator[Any]:
        """Each finished range's value, in shard and id order."""
        return (r.value for r in self.results)

    def totals(self, *, partial: bool = False) -> dict[str, Any]:
        """Field-by-field sums of every dict a range returned (a dict, or each dict of a list).

        Fields must be numbers (or timedeltas); NULLs (None) are skipped, as SQL's ``sum`` does. Raises
        :class:`ScanIncomplete` if a range failed or did not run, unless
        ``partial=True``.
        """
        if not partial and (self.failed or self.pending or self.interrupted or self.smoke_test):
            raise ScanIncomplete(f"{self.summary()}: the totals would miss ranges (pass partial=True)")
        sums: dict[str, Any] = {}
        for result in self.results:
            for row in _dicts(result):
                for key, value in row.items():
                    if value is None:
                        sums.setdefault(key, None)
                        continue
                    try:
                        if not isinstance(value, SUMMABLE):
                            raise TypeError
                        sums[key] = value if sums.get(key) is None else sums[key] + value
                    except TypeError:
                        raise TypeError(
                            f"field {key!r} cannot be summed: {type(sums.get(key)).__name__} "
                            f"+ {type(value).__name__}"
                        ) from None
        return sums

    def rerun(self) -> ScanReport:
        """Run the failed and unfinished ranges again; the new report also holds these results."""
        if self._rerun is None:
            raise RuntimeError("this report cannot be rerun")
        again = self._rerun([f.id_range for f in self.failed] + list(self.pending))
        again.results = sorted(self.results + again.results, key=_order)
        again.null_id_rows = self.null_id_rows
        return again

    def summary(self) -> str:
        """One line: ranges finished, failed and not run, rows, NULL ids."""
        parts = [f"{len(self.results)} ranges finished", f"{len(self.failed)} failed"]
        if self.pending:
            parts.append(f"{len(self.pending)} not run")
        parts.append(f"{self.rows} rows")
        if self.null_id_rows:
            parts.append(f"{self.null_id_rows} rows with a NULL id (in no range)")
        if self.interrupted:
            parts.append("interrupted")
        if self.smoke_test:
            parts.append("smoke test")
        if self.stopped_early is not None:
            parts.append(f"stopped early: {self.stopped_early}")
        return ", ".join(parts)

    def __str__(self) -> str:
        return self.summary()

    def _shown(self, count: int) -> tuple[list[RangeResult | RangeFailure | IdRange], int]:
        """The first ``count`` ranges to show (failed, then not run, then finished) and how many are left."""
        total = len(self.failed) + len(self.pending) + len(self.results)
        shown: list[RangeResult | RangeFailure | IdRange] = [*self.failed[:count]]
        shown += self.pending[: count - len(shown)]
        shown += self.results[: count - len(shown)]
        return shown, total - len(shown)

    def __repr__(self) -> str:
        shown, more = self._shown(SHOWN)
        lines = [f"ScanReport({short(self.summary(), 3 * WIDTH)}"]
        lines += [f"  {short(_line(r), 2 * WIDTH)}" for r in shown]
        if more:
            lines.append(f"  ... and {more} more ranges")
        return "\n".join(lines) + ")"

    def _repr_html_(self) -> str:
        shown, more = self._shown(2 * SHOWN)
        rows = [
            r._row() if not isinstance(r, IdRange) else (r.shard, _ids(r), "not run", "", "", "")
            for r in shown
        ]
        return html_table(
            "ScanReport: " + ("ok" if self.ok else "not ok"),
            HEADER,
            rows,
            notes=[self.summary()],
            more=f"... and {more} more ranges" if more else None,
        )


def _line(r: RangeResult | RangeFailure | IdRange) -> str:
    return f"{r}: not run" if isinstance(r, IdRange) else r._line()


def _ids(r: RangeResult | RangeFailure | IdRange) -> str:
    return f"{r.start}..{r.end}"


def _order(result: RangeResult) -> tuple[int, int]:
    return (result.shard.index, result.start)


def _dicts(result: RangeResult) -> list[dict[str, Any]]:
    value = result.value
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    raise TypeError(
        f"totals() sums dicts, but the range {result.id_range} returned {type(value).__name__}; "
        "return a dict (or SQL rows), or use report.values()"
    )
