"""scan_ranges: plan the ranges of every shard, run them on a late-binding queue, report."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import psycopg2
import psycopg2.extensions

from ..errors import NotSupportedError, shard_error
from ..shards import Connected
from .attempt import Outcome, run_range, run_with_retries
from .checkpoint import Checkpoint, job_key
from .lender import Lender, pool_capacity
from .plan import ShardPlan, check_target, plan_shard
from .progress import Progress
from .remote import RemoteJob, run_remote
from .report import RangeFailure, RangeResult, ScanReport
from .schedule import RangeQueue
from .spec import IdRange, ScanOptions, Target, Work

__all__ = ["Scan"]

POLL = 0.2
"""Seconds between checks of the running ranges (keeps Ctrl-C responsive)."""
REMOTE_GRACE = 2.0
LOCAL_GRACE = 1.0
"""Seconds Ctrl-C waits for cancelled local ranges, before cutting their connections."""
"""Seconds to wait, after Ctrl-C, for ranges running on an executor to report."""


class Scan:
    """One scan_ranges call: planning, running and reporting, with everything it borrowed handed back."""

    def __init__(self, pdb: Connected, target: Target, work: Work, options: ScanOptions) -> None:
        self.pdb = pdb
        self.target = target
        self.work = work
        self.options = options
        self.shards = pdb.shards
        self.own: list[psycopg2.extensions.connection] = pdb.connections
        self.secrets = pdb.shard_set.secrets
        pools = pdb.pools
        self.pool_caps = [pool_capacity(p) for p in pools] if pools is not None else [0] * len(self.own)
        self._check_setup(pools)

    # -- set-up ---------------------------------------------------------------

    def _check_setup(self, pools: Sequence[Any] | None) -> None:
        opts = self.options
        if opts.executor is not None:
            if self.pdb.dsns is None:
                raise psycopg2.InterfaceError(
                    "executor= needs the shards' DSNs, so workers can connect: "
                    "open the connection with parallel_connection.connect(dsns)"
                )
            default = sum(self.pool_caps) if pools is not None else 2 * len(self.own)
            self.parallelism = opts.max_parallelism or max(1, default)
            self.caps = [c or self.parallelism for c in self.pool_caps]
        else:
            if opts.snapshot and (pools is None or 0 in self.pool_caps):
                raise NotSupportedError(
                    "snapshot=True needs a free pooled connection per shard besides the connection's own "
                    "(use parallel_connection.connect(dsns, maxconn=2 or more))"
                )
            self.caps = [max(1, c) for c in self.pool_caps]
            self.parallelism = min(opts.max_parallelism or sum(self.caps), sum(self.caps))
        for shard, conn in zip(self.shards, self.own, strict=True):
            if conn.closed:
                raise psycopg2.InterfaceError(f"{shard}: connection already closed")
            if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                raise psycopg2.ProgrammingError(
                    f"{shard}: a transaction is open; commit or roll back before scan_ranges "
                    "(ranges commit as they finish)"
                )

    # -- the run ----------------------------------------------------------------

    def run(self, ranges: list[IdRange] | None = None) -> ScanReport:
        """Plan (unless ``ranges`` are given), run every range not already done, report."""
        began = time.monotonic()
        saved = [c.autocommit for c in self.own]
        snapshots: list[str | None] = [None] * len(self.own)
        try:
            if self.options.snapshot:
                snapshots = self._fanout(self._export_snapshot)
            plans = self._plan(ranges)
            if not self.options.snapshot:
                self._fanout(lambda i: self.own[i].rollback())
            report = self._execute(plans, snapshots)
        finally:
            for conn, autocommit in zip(self.own, saved, strict=True):
                with contextlib.suppress(Exception):
                    if not conn.closed:
                        conn.rollback()
                        conn.autocommit = autocommit
        report.elapsed = time.monotonic() - began
        report._rerun = self._rerun
        return report

    def _rerun(self, ranges: list[IdRange]) -> ScanReport:
        options = dataclasses.replace(self.options, smoke_test=False)
        return Scan(self.pdb, self.target, self.work, options).run(ranges)

    def _fanout(self, fn: Callable[[int], Any]) -> list[Any]:
        return self.pdb.shard_set.run(fn)

    def _export_snapshot(self, i: int) -> str:
        conn = self.own[i]
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("SELECT pg_export_snapshot()")
            row = cur.fetchone()
            assert row is not None  # the function returns one row
            snapshot: str = row[0]
            return snapshot

    def _plan(self, ranges: list[IdRange] | None) -> list[ShardPlan]:
        def plan(i: int) -> ShardPlan:
            with self.own[i].cursor() as cur:
                if ranges is None:
                    return plan_shard(cur, self.target, self.options)
                check_target(cur, self.target)
                return ShardPlan([(r.start, r.end) for r in ranges if r.shard.index == i], 0)

        plans = self._fanout(plan)
        nulls = sum(p.null_id_rows for p in plans)
        if nulls:
            warnings.warn(
                f"{nulls} rows of {self.target.name} have a NULL {self.target.column}: they are in no "
                "range (report.null_id_rows)",
                stacklevel=5,
            )
        return plans

    def _execute(self, plans: list[ShardPlan], snapshots: list[str | None]) -> ScanReport:
        opts = self.options
        report = ScanReport(null_id_rows=sum(p.null_id_rows for p in plans), smoke_test=opts.smoke_test)
        planned = [IdRange(self.shards[i], a, b) for i, p in enumerate(plans) for a, b in p.spans]
        checkpoint = None
        if opts.checkpoint is not None:
            key = job_key(self.target, opts.where, opts.params, self.work.identity())
            checkpoint = Checkpoint(opts.checkpoint, key)
        todo = []
        for r in planned:
            done = checkpoint.finished(r) if checkpoint is not None else None
            if done is None:
                todo.append(r)
            else:
                report.results.append(RangeResult(r.shard, r.start, r.end, done[0], done[1], 0, 0.0, True))
        if opts.smoke_test:
            firsts: dict[int, IdRange] = {}
            for r in todo:
                firsts.setdefault(r.shard.index, r)
            todo = list(firsts.values())
        progress = Progress(len(todo) + len(report.results), opts.progress, skipped=len(report.results))
        try:
            self._loop(todo, snapshots, report, checkpoint, progress)
        finally:
            progress.close()
        report.results.sort(key=lambda r: (r.shard.index, r.start))
        report.failed.sort(key=lambda r: (r.shard.index, r.start))
        report.pending.sort(key=lambda r: (r.shard.index, r.start))
        return report

    def _loop(
        self,
        todo: list[IdRange],
        snapshots: list[str | None],
        report: ScanReport,
        checkpoint: Checkpoint | None,
        progress: Progress,
    ) -> None:
        queue = RangeQueue(todo, self.caps)
        stop = threading.Event()
        running: dict[Future[Outcome], IdRange] = {}
        lender: Lender | None = None
        pool: ThreadPoolExecutor | None = None
        if self.options.executor is None:
            lender = Lender(self.own, self.pdb.pools, self.pool_caps, self.parallelism)
            pool = ThreadPoolExecutor(self.parallelism, thread_name_prefix="parallel_connection-ranges")
            submit = self._local_submitter(pool, lender, snapshots, stop)
        else:
            submit = self._remote_submitter(snapshots)

        def settle(future: Future[Outcome], r: IdRange) -> None:
            queue.finish(r)
            try:
                outcome = future.result()
            except Exception as exc:
                outcome = Outcome(error=exc, attempts=1)
            self._record(outcome, r, report, checkpoint, progress, stop.is_set())

        try:
            while True:
                while not stop.is_set() and len(running) < self.parallelism:
                    r = queue.take()
                    if r is None:
                        break
                    running[submit(r)] = r
                if not running:
                    break
                done, _ = wait(running, timeout=POLL, return_when=FIRST_COMPLETED)
                for future in done:
                    settle(future, running.pop(future))
        except KeyboardInterrupt:
            stop.set()
            report.interrupted = True
            if lender is not None:
                lender.cancel_running()
            for future in running:
                future.cancel()
            grace = LOCAL_GRACE if lender is not None else REMOTE_GRACE
            with contextlib.suppress(KeyboardInterrupt):
                wait(running, timeout=grace)
                if lender is not None and not all(f.done() for f in running):
                    # Ranges that ignored their cancel: cut their connections.
                    lender.sever_running()
                    wait(running, timeout=grace)
            for future, r in list(running.items()):
                if future.done() and not future.cancelled():
                    settle(future, r)
                else:
                    report.pending.append(r)
            running.clear()
        finally:
            report.pending.extend(queue.drain())
            if pool is not None:
                pool.shutdown(wait=not report.interrupted, cancel_futures=True)
            if lender is not None:
                lender.close()

    def _local_submitter(
        self, pool: ThreadPoolExecutor, lender: Lender, snapshots: list[str | None], stop: threading.Event
    ) -> Callable[[IdRange], Future[Outcome]]:
        opts = self.options

        def job(r: IdRange) -> Outcome:
            s = r.shard.index
            return run_with_retries(
                lambda: lender.borrow(s),
                lambda conn, discard: lender.give_back(s, conn, discard),
                lambda conn: run_range(conn, self.work, r, opts.params, snapshots[s]),
                retries=opts.retries,
                backoff=opts.retry_backoff,
                stop=stop,
            )

        return lambda r: pool.submit(job, r)

    def _remote_submitter(self, snapshots: list[str | None]) -> Callable[[IdRange], Future[Outcome]]:
        opts = self.options
        dsns = self.pdb.dsns
        assert dsns is not None and opts.executor is not None
        kwargs = self.pdb.connect_kwargs
        executor = opts.executor

        def submit(r: IdRange) -> Future[Outcome]:
            s = r.shard.index
            job = RemoteJob(
                dsns[s], kwargs, self.work, r, opts.params, snapshots[s], opts.retries, opts.retry_backoff
            )
            return executor.submit(run_remote, job)

        return submit

    def _record(
        self,
        outcome: Outcome,
        r: IdRange,
        report: ScanReport,
        checkpoint: Checkpoint | None,
        progress: Progress,
        stopping: bool,
    ) -> None:
        if outcome.ok:
            result = RangeResult(
                r.shard, r.start, r.end, outcome.value, outcome.rows, outcome.attempts, outcome.seconds
            )
            report.results.append(result)
            if checkpoint is not None:
                checkpoint.record(r, outcome.value, outcome.rows)
            progress.update(True, outcome.rows)
        elif outcome.cancelled or (stopping and _was_cancelled(outcome.error)):
            report.pending.append(r)
        else:
            assert outcome.error is not None
            error = shard_error(outcome.error, r.shard, self.secrets)
            report.failed.append(RangeFailure(r.shard, r.start, r.end, error, outcome.attempts))
            progress.update(False, 0)


def _was_cancelled(error: BaseException | None) -> bool:
    return isinstance(error, psycopg2.Error) and error.pgcode == "57014"
