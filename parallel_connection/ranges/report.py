"""The report of a scan: each range's value or error, and the sums of dict-shaped values."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..errors import ShardInfo
from .spec import IdRange

__all__ = ["RangeFailure", "RangeResult", "ScanIncomplete", "ScanReport"]

SUMMABLE = (numbers.Number, timedelta)


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
    _rerun: Callable[[list[IdRange]], ScanReport] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when every planned range finished (and this was not just a smoke test)."""
        return not self.failed and not self.pending and not self.interrupted and not self.smoke_test

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
        return ", ".join(parts)

    def __str__(self) -> str:
        return self.summary()


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
