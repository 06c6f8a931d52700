"""Progress of a scan: a tqdm bar on a terminal, or the numbers for a callback."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Progress", "ScanProgress"]


@dataclass(frozen=True)
class ScanProgress:
    """The numbers after each finished range."""

    done: int
    failed: int
    total: int
    rows: int
    elapsed: float
    rate: float
    eta: float | None


class Progress:
    """Counts finished ranges and shows them (bar: ``True``; callback; ``None``: bar if stderr is a tty)."""

    def __init__(self, total: int, show: bool | Callable[[ScanProgress], None] | None, *, skipped: int = 0):
        self.total = total
        self.done = skipped
        self.failed = 0
        self.rows = 0
        self._skipped = skipped
        self._began = time.monotonic()
        self._callback = show if callable(show) and not isinstance(show, bool) else None
        self._bar: Any = None
        if show is True or (show is None and sys.stderr.isatty()):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=skipped, unit="range", desc="ranges", dynamic_ncols=True)

    def update(self, ok: bool, rows: int) -> None:
        if ok:
            self.done += 1
            self.rows += rows
        else:
            self.failed += 1
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(rows=self.rows, failed=self.failed, refresh=False)
        if self._callback is not None:
            self._callback(self.snapshot())

    def snapshot(self) -> ScanProgress:
        elapsed = time.monotonic() - self._began
        finished = self.done + self.failed - self._skipped
        rate = finished / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done - self.failed
        eta = left / rate if rate > 0 else None
        return ScanProgress(self.done, self.failed, self.total, self.rows, elapsed, rate, eta)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
