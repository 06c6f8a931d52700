"""scan_ranges: plan the ranges of every shard, run them on a late-binding queue, report.

With pools, everything a scan runs is on connections it borrows (see
:mod:`.lender`), so scans at once on one connection keep out of each other's
way and out of the user's own transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future
from dataclasses import dataclass
from os import PathLike
from typing import Any

import psycopg2
import psycopg2.extensions

from ..cancel import broken
from ..errors import NotSupportedError, shard_error
from ..shards import Connected
from ..workers import Workers, wait
from .attempt import Outcome, run_range, run_with_retries
from .checkpoint import Checkpoint, job_key
from .early import MIN_SAMPLE, EarlyStop
from .ledger import Ledger, ledger_of
from .lender import Lender, in_use_by_a_scan, pool_slots
from .plan import ShardPlan, check_target, plan_shard
from .progress import Progress
from .remote import RemoteJob, run_remote
from .report import RangeFailure, RangeResult, ScanReport
from .schedule import RangeQueue
from .spec import IdRange, InShard, ScanOptions, Target, Work
from .split import Span

__all__ = ["Scan"]

POLL = 0.2
"""Seconds between checks of the running ranges (keeps Ctrl-C responsive)."""
REMOTE_GRACE = 2.0
"""Seconds to wait, after Ctrl-C, for ranges running on an executor to report."""
LOCAL_GRACE = 1.0
"""Seconds Ctrl-C waits for cancelled local ranges, before cutting their connections."""


@dataclass(frozen=True)
class Prepared:
    """One shard, ready to run: its ranges, the snapshot they read, the ranges an earlier run finished."""

    plan: ShardPlan
    snapshot: str | None = None
    finished: dict[Span, tuple[Any, int]] | None = None


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
        self.pools = pdb.pools
        pools = self.pools
        self.slots = (
            [pool_slots(p, c) for p, c in zip(pools, self.own, strict=True)]
            if pools is not None
            else [0] * len(self.own)
        )
        self.ledger: Ledger | None = None
        if isinstance(options.checkpoint, InShard):
            self.ledger = ledger_of(options.checkpoint, self._job_key())
        self._check_setup()

    def _job_key(self) -> str:
        return job_key(self.target, self.options.where, self.options.params, self.work.identity())

    # -- set-up ---------------------------------------------------------------

    def _check_setup(self) -> None:
        opts = self.options
        if opts.executor is not None:
            if self.pdb.dsns is None:
                raise psycopg2.InterfaceError(
                    "executor= needs the shards' DSNs, so workers can connect: "
                    "open the connection with parallel_connection.connect(dsns)"
                )
            default = sum(self.slots) if self.pools is not None else 2 * len(self.own)
            self.parallelism = opts.max_parallelism or max(1, default)
            self.caps = [c or self.parallelism for c in self.slots]
        else:
            if opts.snapshot and (self.pools is None or 0 in self.slots):
                raise NotSupportedError(
                    "snapshot=True needs a free pooled connection per shard besides the connection's own "
                    "(use parallel_connection.connect(dsns, maxconn=2 or more))"
                )
            # A snapshot held on a pooled connection keeps that one from the ranges.
            held_back = [1 if opts.snapshot and c >= 2 else 0 for c in self.slots]
            self.caps = [max(1, c - h) for c, h in zip(self.slots, held_back, strict=True)]
            self.parallelism = min(opts.max_parallelism or sum(self.caps), sum(self.caps))
        for shard, conn in zip(self.shards, self.own, strict=True):
            if conn.closed:
                raise psycopg2.InterfaceError(f"{shard}: connection already closed")
            busy = conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE
            if busy and not in_use_by_a_scan(conn):
                raise psycopg2.ProgrammingError(
                    f"{shard}: a transaction is open; commit or roll back before scan_ranges "
                    "(ranges commit as they finish)"
                )

    # -- the run ----------------------------------------------------------------

    def run(self, ranges: list[IdRange] | None = None) -> ScanReport:
        """Plan (unless ``ranges`` are given), run every range not already done, report."""
        began = time.monotonic()
        stop = threading.Event()
        local = self.options.executor is None
        lender = Lender(
            self.own,
            self.pools,
            self.slots,
            self.caps if local else [1] * len(self.own),
            self.parallelism if local else len(self.own),
            timeout=self.options.pool_timeout,
            stop=stop,
            turns=self.pdb.shard_set.fanout,
        )
        try:
            prepared = self._prepare(lender, stop, ranges)
            report = self._execute(prepared, lender, stop)
        finally:
            lender.close()
        report.elapsed = time.monotonic() - began
        report._rerun = self._rerun
        return report

    def _rerun(self, ranges: list[IdRange]) -> ScanReport:
        options = dataclasses.replace(self.options, smoke_test=False)
        return Scan(self.pdb, self.target, self.work, options).run(ranges)

    def _prepare(self, lender: Lender, stop: threading.Event, ranges: list[IdRange] | None) -> list[Prepared]:
        """Plan every shard (and export its snapshot), on borrowed connections, all shards at once."""
        snapshot = self.options.snapshot
        exporters: list[Any] = [None] * len(self.own)
        if snapshot:
            for i in range(len(self.own)):  # in shard order: see Lender.exporter
                try:
                    exporters[i] = lender.exporter(i, local=self.options.executor is None)
                except Exception as exc:
                    raise shard_error(exc, self.shards[i], self.secrets) from None

        def prepare(i: int) -> Prepared:
            if snapshot:
                return self._prepare_shard(i, exporters[i], ranges)
            conn = lender.borrow(i)
            try:
                return self._prepare_shard(i, conn, ranges)
            finally:
                lender.give_back(i, conn, broken(conn))

        prepared = self._on_each_shard(prepare, lender, stop)
        nulls = sum(p.plan.null_id_rows for p in prepared)
        if nulls:
            warnings.warn(
                f"{nulls} rows of {self.target.name} have a NULL {self.target.column}: they are in no "
                "range (report.null_id_rows)",
                stacklevel=5,
            )
        return prepared

    def _prepare_shard(self, i: int, conn: Any, ranges: list[IdRange] | None) -> Prepared:
        opts = self.options

        def plan(cur: Any, split: bool = True) -> ShardPlan:
            if ranges is None:
                return plan_shard(cur, self.target, opts, split=split)
            check_target(cur, self.target)
            return ShardPlan([(r.start, r.end) for r in ranges if r.shard.index == i], 0)

        if conn.autocommit:
            conn.autocommit = False
        try:
            if self.ledger is not None:
                # Its tables are written in transactions of their own, before any snapshot.
                records = self.ledger.prepare(conn, plan, pin=ranges is None)
                exported = _export_snapshot(conn) if opts.snapshot else None
                return Prepared(records.plan, exported, records.finished)
            if opts.snapshot:
                exported = _export_snapshot(conn)
                with conn.cursor() as cur:
                    return Prepared(plan(cur), exported)  # the bounds as of the snapshot
            with conn.cursor() as cur:
                planned = plan(cur)
            conn.rollback()
            return Prepared(planned)
        except BaseException:
            if not conn.closed:
                with contextlib.suppress(Exception):
                    conn.rollback()
            raise

    def _on_each_shard(
        self, fn: Callable[[int], Prepared], lender: Lender, stop: threading.Event
    ) -> list[Prepared]:
        """``[fn(i) for i in shards]`` at once; the first failure (lowest shard) cancels the rest."""
        pool = Workers(len(self.own), "parallel_connection-plan")
        futures = [pool.submit(fn, i) for i in range(len(self.own))]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = [(i, f) for i, f in enumerate(futures) if f.done() and f.exception() is not None]
            if failed:
                stop.set()
                lender.cancel_running()
                wait(futures, timeout=LOCAL_GRACE)
                i, future = failed[0]
                error = future.exception()
                assert error is not None
                raise shard_error(error, self.shards[i], self.secrets) from None
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            stop.set()
            lender.cancel_running()
            with contextlib.suppress(KeyboardInterrupt):
                wait(futures, timeout=LOCAL_GRACE)
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _execute(self, prepared: list[Prepared], lender: Lender, stop: threading.Event) -> ScanReport:
        opts = self.options
        plans = [p.plan for p in prepared]
        snapshots = [p.snapshot for p in prepared]
        report = ScanReport(null_id_rows=sum(p.null_id_rows for p in plans), smoke_test=opts.smoke_test)
        planned = [IdRange(self.shards[i], a, b) for i, p in enumerate(plans) for a, b in p.spans]
        checkpoint = None
        if isinstance(opts.checkpoint, (str, PathLike)):
            checkpoint = Checkpoint(opts.checkpoint, self._job_key())
        todo = []
        for r in planned:
            finished = prepared[r.shard.index].finished
            if finished is not None:
                done = finished.get((r.start, r.end))
            else:
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
            self._loop(todo, snapshots, report, checkpoint, progress, lender, stop)
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
        lender: Lender,
        stop: threading.Event,
    ) -> None:
        queue = RangeQueue(todo, self.caps)
        running: dict[Future[Outcome], IdRange] = {}
        local = self.options.executor is None
        pool: Workers | None = None
        if local:
            pool = Workers(self.parallelism, "parallel_connection-ranges")
            submit = self._local_submitter(pool, lender, snapshots, stop)
        else:
            lender.release_idle()  # the planning connections: workers connect themselves
            submit = self._remote_submitter(snapshots)
        for shard in range(len(self.own)):
            if queue.done_with(shard):
                lender.retire(shard)

        check = self.options.check_first
        early = EarlyStop(
            max(MIN_SAMPLE, queue.shards_with_work()), rule=self.options.stop_early, gate=check is not None
        )
        refused: BaseException | None = None

        def settle(future: Future[Outcome], r: IdRange) -> RangeResult | RangeFailure | None:
            queue.finish(r)
            try:
                outcome = future.result()
            except Exception as exc:
                outcome = Outcome(error=exc, attempts=1)
            recorded = self._record(outcome, r, report, checkpoint, progress, stop.is_set())
            if recorded is not None:
                failure = recorded if isinstance(recorded, RangeFailure) else None
                early.settled(failure, outcome.error)
            if queue.done_with(r.shard.index):
                lender.retire(r.shard.index)  # others may be waiting for its connections
            return recorded

        try:
            while True:
                limit = 1 if early.serial else self.parallelism
                while not stop.is_set() and not early.holding and len(running) < limit:
                    r = queue.take()
                    if r is None:
                        break
                    running[submit(r)] = r
                if not running:
                    if early.holding and len(queue):
                        report.stopped_early = early.reason(len(queue))
                    break
                done, _ = wait(running, timeout=POLL, return_when=FIRST_COMPLETED)
                for future in done:
                    recorded = settle(future, running.pop(future))
                    if check is not None and isinstance(recorded, RangeResult):
                        # Alone: the gate let no other range start (serial until a success).
                        try:
                            check(recorded)
                        except BaseException as exc:
                            refused = exc
                        check = None
                if refused is not None:
                    break
        except KeyboardInterrupt:
            stop.set()
            report.interrupted = True
            if local:
                lender.cancel_running()
            for future in running:
                future.cancel()
            grace = LOCAL_GRACE if local else REMOTE_GRACE
            with contextlib.suppress(KeyboardInterrupt):
                wait(running, timeout=grace)
                if local and not all(f.done() for f in running):
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
            left = queue.drain()
            report.not_run = len(left)
            report.pending.extend(left)
            if pool is not None:
                pool.shutdown(wait=not report.interrupted, cancel_futures=True)
        if refused is not None:
            raise refused  # check_first's own exception, as it raised it

    def _local_submitter(
        self, pool: Workers, lender: Lender, snapshots: list[str | None], stop: threading.Event
    ) -> Callable[[IdRange], Future[Outcome]]:
        opts = self.options

        def job(r: IdRange) -> Outcome:
            s = r.shard.index
            return run_with_retries(
                lambda: lender.borrow(s),
                lambda conn, discard: lender.give_back(s, conn, discard),
                lambda conn: run_range(conn, self.work, r, opts.params, snapshots[s], self.ledger),
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
                dsns[s],
                kwargs,
                self.work,
                r,
                opts.params,
                snapshots[s],
                opts.retries,
                opts.retry_backoff,
                self.ledger,
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
    ) -> RangeResult | RangeFailure | None:
        """Put the range in the report (and the checkpoint); what it became, or None if it is pending."""
        if outcome.ok:
            result = RangeResult(
                r.shard,
                r.start,
                r.end,
                outcome.value,
                outcome.rows,
                outcome.attempts,
                outcome.seconds,
                outcome.resumed,
            )
            report.results.append(result)
            if checkpoint is not None:
                checkpoint.record(r, outcome.value, outcome.rows)
            progress.update(True, outcome.rows)
            return result
        if outcome.cancelled or (stopping and _was_cancelled(outcome.error)):
            report.pending.append(r)
            return None
        assert outcome.error is not None
        error = shard_error(outcome.error, r.shard, self.secrets)
        failure = RangeFailure(r.shard, r.start, r.end, error, outcome.attempts)
        report.failed.append(failure)
        progress.update(False, 0)
        return failure


def _export_snapshot(conn: Any) -> str:
    """Open a repeatable-read transaction on ``conn`` and export its snapshot (the transaction stays open)."""
    if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        conn.rollback()
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SELECT pg_export_snapshot()")
        row = cur.fetchone()
        assert row is not None  # the function returns one row
        snapshot: str = row[0]
        return snapshot


def _was_cancelled(error: BaseException | None) -> bool:
    return isinstance(error, psycopg2.Error) and error.pgcode == "57014"
