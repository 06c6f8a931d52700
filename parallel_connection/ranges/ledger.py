"""The in-shard checkpoint: finished ranges kept in a table on each shard, written in the range's transaction.

A range's record is inserted just before its COMMIT, so the work and the
record commit together or not at all: a job killed at any moment and run
again never applies a range twice and never skips one. The first run of a
job also stores its ranges (its plan) on each shard, and every later run of
the job uses exactly those, so two runs at once collide on the records'
primary key: the second run's range rolls back, and is reported as done.
Values are pickled: read only tables that your own jobs wrote.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.sql as sql

from .plan import ShardPlan
from .spec import PLANS_SUFFIX, IdRange, InShard
from .split import Span

__all__ = ["Ledger", "ShardRecords", "ledger_of"]


@dataclass(frozen=True)
class ShardRecords:
    """What a shard's tables say about one job: its plan (if stored) and its finished ranges."""

    plan: ShardPlan
    finished: dict[Span, tuple[Any, int]]


@dataclass(frozen=True)
class Ledger:
    """One job's records in one schema's tables (picklable: executor jobs carry it)."""

    job: str
    table: str
    schema: str

    @property
    def ranges_sql(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def plans_sql(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table + PLANS_SUFFIX)

    # -- before the ranges --------------------------------------------------------------

    def prepare(self, conn: Any, plan: Callable[[Any, bool], ShardPlan], *, pin: bool = True) -> ShardRecords:
        """Create the tables if need be, fix the job's ranges, and read the finished ones (committed).

        ``plan(cursor, split)`` plans the shard (``split=False``: bounds only, the
        ranges being known). With ``pin``, the first run's ranges are stored and
        every later run's plan is replaced by them.
        """
        if conn.autocommit:
            conn.autocommit = False
        try:
            with conn.cursor() as cur:
                self._ensure(cur)
                conn.commit()
                stored = self._stored_plan(cur) if pin else None
                planned = plan(cur, stored is None)
                if pin and (stored is not None or planned.spans):  # an empty shard fixes nothing yet
                    if stored is None:
                        stored = self._store_plan(cur, planned.spans)
                        conn.commit()
                        if stored is None:  # another run stored it first: use theirs
                            stored = self._stored_plan(cur)
                    assert stored is not None
                    planned = ShardPlan(stored, planned.null_id_rows, planned.lo, planned.hi)
                finished = self._finished(cur)
            conn.commit()
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
        return ShardRecords(planned, finished)

    def _ensure(self, cur: Any) -> None:
        cur.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
            (self.ranges_sql.as_string(cur), self.plans_sql.as_string(cur)),
        )
        (exists,) = cur.fetchone()
        if exists:
            return
        # Two first runs at once: CREATE TABLE IF NOT EXISTS alone can still collide.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.ranges_sql.as_string(cur),))
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {ranges} ("
                "job text NOT NULL, range_start bigint NOT NULL, range_end bigint NOT NULL, "
                "rows bigint NOT NULL, value bytea, "
                "finished_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
                "PRIMARY KEY (job, range_start, range_end)); "
                "CREATE TABLE IF NOT EXISTS {plans} ("
                "job text PRIMARY KEY, starts bigint[] NOT NULL, ends bigint[] NOT NULL, "
                "planned_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ).format(ranges=self.ranges_sql, plans=self.plans_sql)
        )

    def _stored_plan(self, cur: Any) -> list[Span] | None:
        cur.execute(sql.SQL("SELECT starts, ends FROM {} WHERE job = %s").format(self.plans_sql), (self.job,))
        row = cur.fetchone()
        return None if row is None else list(zip(row[0], row[1], strict=True))

    def _store_plan(self, cur: Any, spans: list[Span]) -> list[Span] | None:
        """Store ``spans`` as the job's plan; None if another run stored one first."""
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (job, starts, ends) VALUES (%s, %s::bigint[], %s::bigint[]) "
                "ON CONFLICT (job) DO NOTHING"
            ).format(self.plans_sql),
            (self.job, [s for s, _ in spans], [e for _, e in spans]),
        )
        return spans if cur.rowcount == 1 else None

    def _finished(self, cur: Any) -> dict[Span, tuple[Any, int]]:
        cur.execute(
            sql.SQL("SELECT range_start, range_end, rows, value FROM {} WHERE job = %s").format(
                self.ranges_sql
            ),
            (self.job,),
        )
        return {(start, end): (_load(value), rows) for start, end, rows, value in cur.fetchall()}

    # -- in each range's transaction ------------------------------------------------------

    def record(self, cur: Any, id_range: IdRange, value: Any, rows: int) -> None:
        """Insert the range's record, in the range's transaction (just before its COMMIT).

        Another run's record of the same range makes this fail (unique_violation,
        after waiting for that run's commit), which rolls the range's work back.
        """
        try:
            blob = pickle.dumps(value)
        except Exception as exc:
            raise TypeError(
                f"checkpoint=InShard(): the range's value cannot be pickled ({exc}); "
                "return plain values (numbers, strings, dicts, lists)"
            ) from None
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (job, range_start, range_end, rows, value) VALUES (%s, %s, %s, %s, %s)"
            ).format(self.ranges_sql),
            (self.job, id_range.start, id_range.end, rows, psycopg2.Binary(blob)),
        )

    def lookup(self, conn: Any, id_range: IdRange) -> tuple[Any, int] | None:
        """``(value, rows)`` if a run finished ``id_range`` of this job (read in a transaction of its own)."""
        if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            conn.rollback()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL(
                        "SELECT rows, value FROM {} WHERE job = %s AND range_start = %s AND range_end = %s"
                    ).format(self.ranges_sql),
                    (self.job, id_range.start, id_range.end),
                )
                row = cur.fetchone()
        finally:
            conn.rollback()
        return None if row is None else (_load(row[1]), row[0])


def _load(value: Any) -> Any:
    if value is None:
        return None
    try:
        return pickle.loads(bytes(value))
    except Exception as exc:
        warnings.warn(
            f"checkpoint=InShard(): a finished range's value cannot be read back ({exc}); "
            "it is reported as None (the range is not run again)",
            stacklevel=2,
        )
        return None


def ledger_of(spec: InShard, fingerprint: str) -> Ledger:
    """The ledger ``checkpoint=spec`` keeps for the job ``fingerprint`` names (unless it names one)."""
    return Ledger(spec.job or fingerprint, spec.table, spec.schema)
