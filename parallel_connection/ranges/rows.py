"""A scan report as rows to print: the reduced totals as one row, or every range's own rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .report import SUMMABLE, RangeFailure, ScanIncomplete, ScanReport

__all__ = ["RANGE_COLUMNS", "each_range", "failure_line", "reduced", "summary_line"]

RANGE_COLUMNS = ("shard", "start", "end")
ROWCOUNT = "rowcount"
"""The one field of a range whose statement returned no rows (an UPDATE): how many it changed."""


def reduced(report: ScanReport) -> tuple[list[str], tuple[Any, ...]]:
    """The report's totals as column names and one row (statements without rows: their rowcounts summed).

    Raises ``ScanIncomplete`` when ranges failed or did not run (or for a smoke
    test), and ``TypeError`` when a field cannot be summed.
    """
    if report.results and all(_is_rowcount(r.value) for r in report.results):
        if not report.ok:
            raise ScanIncomplete(f"{report.summary()}: the totals would miss ranges")
        totals: dict[str, Any] = {ROWCOUNT: sum(r.value for r in report.results)}
    else:
        _check_summable(report)
        totals = report.totals()
    columns = list(totals)
    return columns, tuple(totals[c] for c in columns)


def each_range(report: ScanReport) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
    """Every finished range's rows, each led by the range's shard index, start and end."""
    fields: dict[str, None] = {}
    for result in report.results:
        for row in _rows(result.value):
            fields.update(dict.fromkeys(row))
    clash = [f for f in fields if f in RANGE_COLUMNS]
    if clash:
        raise ValueError(f"the work's columns {clash} clash with the range columns: rename them with AS")
    names = list(fields)

    def rows() -> Iterator[tuple[Any, ...]]:
        for result in report.results:
            for row in _rows(result.value):
                yield (result.shard.index, result.start, result.end, *(row.get(n) for n in names))

    return [*RANGE_COLUMNS, *names], rows()


def summary_line(report: ScanReport, shards: int) -> str:
    """Ranges, shards, done (resumed), failed, not run, rows, NULL-id rows and time, in one line."""
    total = len(report.results) + len(report.failed) + len(report.pending)
    resumed = sum(r.resumed for r in report.results)
    done = f"{len(report.results)} done" + (f" ({resumed} from the checkpoint)" if resumed else "")
    parts = [f"{total} ranges on {shards} shards", done, f"{len(report.failed)} failed"]
    if report.pending:
        parts.append(f"{len(report.pending)} not run")
    parts.append(f"{report.rows} rows returned or changed")
    parts.append(f"{report.null_id_rows} rows with a NULL id not scanned")
    head = "smoke test (first range of each shard)" if report.smoke_test else "scan"
    return f"{head}: {', '.join(parts)} ({report.elapsed:.1f} s)"


def failure_line(failure: RangeFailure) -> str:
    """One failed range: shard, ids, attempts and the first line of its error (which names the shard)."""
    lines = [line.strip() for line in str(failure.error).splitlines() if line.strip()]
    message = lines[0] if lines else type(failure.error).__name__
    prefix = f"{failure.shard}: "
    message = message.removeprefix(prefix)
    tries = f" after {failure.attempts} attempts" if failure.attempts > 1 else ""
    return f"{failure.shard} ids {failure.start}-{failure.end}{tries}: {message}"


def _check_summable(report: ScanReport) -> None:
    for result in report.results:
        for row in _rows(result.value):
            for key, value in row.items():
                if value is not None and not isinstance(value, SUMMABLE):
                    raise TypeError(
                        f"field {key!r} holds {type(value).__name__} values ({value!r}), which cannot be "
                        "summed: return numbers only"
                    )


def _is_rowcount(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rows(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    if _is_rowcount(value):
        return [{ROWCOUNT: value}]
    raise TypeError(f"a range returned {type(value).__name__}, not rows")
