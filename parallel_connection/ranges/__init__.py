"""Range jobs over every shard: split an integer id column into ranges, run a job per range, reduce."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from os import PathLike
from typing import Any

from ..pool import DEFAULT_TIMEOUT, PoolTimeout
from ..shards import Connected
from .attempt import is_transient
from .progress import ScanProgress
from .remote import close_worker_connections
from .report import RangeFailure, RangeResult, ScanIncomplete, ScanReport
from .scan import Scan
from .spec import IdRange, InShard, ScanOptions, Target, Work
from .split import split_at, split_width

__all__ = [
    "IdRange",
    "InShard",
    "PoolTimeout",
    "RangeFailure",
    "RangeResult",
    "ScanIncomplete",
    "ScanProgress",
    "ScanReport",
    "close_worker_connections",
    "is_transient",
    "scan_ranges",
    "split_at",
    "split_width",
]


def scan_ranges(
    pdb: Connected,
    table: str | Sequence[str],
    id_column: str,
    work: str | Callable[[Any, IdRange], Any],
    *,
    rows_per_range: int = 25_000,
    split: str = "width",
    where: str | None = None,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    max_parallelism: int | None = None,
    retries: int = 3,
    retry_backoff: float = 0.1,
    progress: bool | Callable[[ScanProgress], None] | None = None,
    checkpoint: str | PathLike[str] | InShard | None = None,
    snapshot: bool = False,
    executor: Executor | None = None,
    smoke_test: bool = False,
    pool_timeout: float = DEFAULT_TIMEOUT,
    stop_early: bool = True,
    check_first: Callable[[RangeResult], None] | None = None,
) -> ScanReport:
    """Split ``table.id_column`` into ranges on every shard and run ``work`` once per range.

    See :meth:`parallel_connection.ParallelConnection.scan_ranges`. ``stop_early``
    (default True): when the first ranges to finish all fail for good with
    the same error (three, or one per shard, for an error of the statement;
    three times as many for others), start no more ranges and say so in
    ``report.stopped_early`` (see :mod:`.early`). ``check_first``: called with
    the first finished range's result before any other range starts (ranges
    run one at a time until one succeeds); whatever it raises ends the scan
    and propagates.
    """
    options = ScanOptions(
        rows_per_range=rows_per_range,
        split=split,
        where=where,
        params=params,
        max_parallelism=max_parallelism,
        retries=retries,
        retry_backoff=retry_backoff,
        progress=progress,
        checkpoint=checkpoint,
        snapshot=snapshot,
        executor=executor,
        smoke_test=smoke_test,
        pool_timeout=pool_timeout,
        stop_early=stop_early,
        check_first=check_first,
    )
    options.check()
    return Scan(pdb, Target.parse(table, id_column), Work.of(work), options).run()
