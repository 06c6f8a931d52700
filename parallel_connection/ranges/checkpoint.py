"""An append-only JSON-lines file of finished ranges, so a rerun skips them.

Each line names the job (a fingerprint of table, column, filter and work),
the shard and the range, and holds the range's value (pickled: treat the file
like code and load only your own). A torn last line, from a crash mid-write,
is ignored. A line is written after its range commits, so a crash in between
runs that range again on the rerun: the work must be idempotent (or use
:class:`~parallel_connection.ranges.ledger.InShard`, exactly once).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import threading
import time
import warnings
from os import PathLike
from typing import Any

from .spec import IdRange

__all__ = ["Checkpoint", "job_key"]


def job_key(*parts: object) -> str:
    """A fingerprint of what a scan computes (the same job gives the same key)."""
    return hashlib.sha256(json.dumps([repr(p) for p in parts]).encode()).hexdigest()[:24]


def _range_key(id_range: IdRange) -> tuple[str, int, int]:
    return (str(id_range.shard), id_range.start, id_range.end)


class Checkpoint:
    """Finished ranges of one job, read from and appended to ``path``."""

    def __init__(self, path: str | PathLike[str], job: str) -> None:
        self.path = os.fspath(path)
        self.job = job
        self._lock = threading.Lock()
        self._done: dict[tuple[str, int, int], tuple[Any, int]] = {}
        self._warned = False
        self._load()

    def finished(self, id_range: IdRange) -> tuple[Any, int] | None:
        """``(value, rows)`` if an earlier run finished ``id_range`` of this job."""
        return self._done.get(_range_key(id_range))

    def record(self, id_range: IdRange, value: Any, rows: int) -> None:
        """Append one finished range and flush it to disk."""
        try:
            blob = base64.b64encode(pickle.dumps(value)).decode()
        except Exception as exc:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"checkpoint: a range's value cannot be pickled ({exc}); such ranges will run again",
                    stacklevel=2,
                )
            return
        line = json.dumps(
            {
                "job": self.job,
                "shard": str(id_range.shard),
                "start": id_range.start,
                "end": id_range.end,
                "rows": rows,
                "value": blob,
                "at": time.time(),
            }
        )
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._done[_range_key(id_range)] = (value, rows)

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    if entry["job"] != self.job:
                        continue
                    value = pickle.loads(base64.b64decode(entry["value"]))
                except (ValueError, KeyError, pickle.UnpicklingError, EOFError):
                    continue
                self._done[(entry["shard"], entry["start"], entry["end"])] = (value, entry.get("rows", 0))
