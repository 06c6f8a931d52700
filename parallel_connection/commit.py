"""Atomic commit over several shards: two-phase commit, its decision kept on a shard, and recovery.

A transaction that wrote on two or more shards commits so (presumed abort):

1. **Prepare.** Every written shard but one runs ``PREPARE TRANSACTION``, in
   parallel. At the same time the remaining one, the *decision shard* (the
   first written shard), inserts the transaction's global id into the
   decision table, ``parallel_connection_commits``, in its still open
   transaction. Shards that were only read commit (nothing to lose).
2. **Decide.** The decision shard commits, one-phase. That commit *is* the
   decision: durable, and atomic with that shard's own writes, so a commit
   needs no coordinator log, no extra server and one PREPARE less. Any failure
   before it rolls back everywhere (no row, no commit).
3. **Finish.** ``COMMIT PREPARED`` on the prepared shards, in parallel. A
   shard lost here leaves its part prepared, the transaction committed by
   decision: :func:`recover` commits it when the shard is back.

Every shard's part has its own gid, a psycopg2 :class:`~psycopg2.extensions.Xid`
(``FORMAT_ID``, the global id ``pc_<uuid>``, the shard's index), so one server
holding several shards never sees a gid twice and ``tpc_recover`` parses them.

:func:`recover` resolves what a crashed client or a lost shard left prepared:
a part whose global id has a committed decision row on some shard is
committed, any other is rolled back. Before rolling back it writes an *abort
marker* row for that id on every shard, so a committer still deciding cannot
commit it afterwards: the committer's decision insert meets the marker's
primary key and fails (its transaction rolls back everywhere), and a marker
insert meeting the committer's row waits for it and reads ``committed``. So
recovery is safe while other clients commit; its grace period (parts
younger than ``grace`` seconds are left alone) only spares in-flight commits
a needless rollback. Spent decision rows are deleted by the next commit
decided on the same shard (in the statement that inserts its own row) and by
:func:`recover`; abort markers are kept for ``MARKER_LIFETIME``.

psycopg2's ``tpc_begin`` must precede the transaction, which a connection
that reads before it writes cannot promise: so PREPARE TRANSACTION is sent
as SQL, and psycopg2's idea of the transaction is reset afterwards. The
second phase and recovery use psycopg2's ``tpc_commit`` and ``tpc_rollback``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from .errors import ShardInfo, redact

T = TypeVar("T")


class ShardSet(Protocol):
    """What the commit needs of the shards: their connections, names, secrets and fan-out."""

    connections: list[Any]
    infos: list[ShardInfo]
    secrets: set[str]

    def __len__(self) -> int: ...
    def run(self, fn: Callable[[int], T], indexes: Sequence[int] | None = None) -> list[T]: ...
    def error(self, exc: BaseException, index: int) -> BaseException: ...


__all__ = [
    "BUSY_WAIT",
    "FORMAT_ID",
    "GRACE",
    "MARKER_LIFETIME",
    "PREFIX",
    "TABLE",
    "DecisionLog",
    "Recovery",
    "Resolved",
    "recover",
    "stage_reached",
    "two_phase_commit",
]

FORMAT_ID = 0x7063
"""The XA format id of this library's prepared transactions ("pc")."""

PREFIX = "pc_"
"""How the global id of every transaction this library prepares begins."""

TABLE = "parallel_connection_commits"
"""The decision table: one row per decided transaction (in the schema ``decision_schema`` names)."""

GRACE = 60.0
"""Seconds a prepared part is left to its own client before :func:`recover` resolves it."""

MARKER_LIFETIME = "1 day"
"""How long :func:`recover` keeps an abort marker (a PostgreSQL interval)."""

_NO_TRANSACTION = "there is no transaction in progress"
_UNDEFINED_OBJECT = "42704"
"""``COMMIT PREPARED`` of a gid that no longer exists (someone resolved it already)."""
_BUSY = "55000"
"""``COMMIT PREPARED`` of a gid another session is finishing right now."""
BUSY_WAIT = 5.0
"""Seconds to wait for a part another session is finishing to be gone."""
_PERMISSION = {"42501", "3F000"}
"""Insufficient privilege, no such schema: the decision table cannot be made or written."""


def stage_reached(stage: str) -> None:
    """Called by :func:`two_phase_commit` after ``"prepared"`` and ``"decided"``: a hook for fault tests."""


@dataclass
class DecisionLog:
    """What one ShardSet knows about its decision tables."""

    schema: str = "public"
    tables: set[int] = field(default_factory=set)
    """Shards where the decision table is known to exist."""
    spent: dict[int, list[str]] = field(default_factory=dict)
    """Per decision shard: rows of finished commits, deleted by the next commit decided there."""

    def table(self) -> sql.Composable:
        return sql.Identifier(self.schema, TABLE)


# -- commit ---------------------------------------------------------------------------


def two_phase_commit(shards: ShardSet, written: Sequence[int], log: DecisionLog) -> None:
    """Commit the current transaction, which wrote on ``written`` (two or more shards), atomically."""
    decider, others = written[0], list(written[1:])
    gtrid = f"{PREFIX}{uuid.uuid4().hex}"
    xids = {i: shards.connections[i].xid(FORMAT_ID, gtrid, str(i)) for i in others}
    _prepare_all(shards, decider, xids, log, gtrid)
    stage_reached("prepared")
    _decide(shards, decider, xids)
    log.tables.add(decider)
    log.spent[decider] = []
    stage_reached("decided")
    _finish(shards, decider, xids)
    log.spent[decider].append(gtrid)


def _prepare_all(shards: ShardSet, decider: int, xids: dict[int, Any], log: DecisionLog, gtrid: str) -> None:
    """Phase one, at once on every shard: prepare the parts, record the decision, commit what was read."""
    conns = shards.connections
    read_only = [i for i in range(len(shards)) if i != decider and i not in xids]

    def phase_one(i: int) -> Exception | None:
        if i == decider:
            return _attempt(_record_decision, conns[i], log, i, gtrid)
        if i in xids:
            return _attempt(_prepare, conns[i], xids[i])
        return _attempt(conns[i].commit)

    order = [decider, *xids, *read_only]
    try:
        outcomes = dict(zip(order, shards.run(phase_one, order), strict=True))
    except BaseException:
        # Ctrl-C while preparing: nothing is decided; what got prepared has no decision row.
        _roll_back(shards, xids, [decider, *read_only])
        raise
    failures = [(i, exc) for i, exc in outcomes.items() if exc is not None]
    if not failures:
        return
    left = _roll_back(shards, {i: x for i, x in xids.items() if outcomes[i] is None}, [decider, *read_only])
    # A shard lost while preparing may have prepared its part.
    left += [i for i in xids if outcomes[i] is not None and conns[i].closed]
    index, exc = failures[0]
    if index == decider:
        stage = "recording the decision"
    elif index in xids:
        stage = "at PREPARE TRANSACTION"
    else:
        stage = "committing a shard it only read"
    raise _before_decision(shards, index, exc, sorted(left), stage)


def _finish(shards: ShardSet, decider: int, xids: dict[int, Any]) -> None:
    """Phase two: COMMIT PREPARED each part, at once."""
    indexes = list(xids)
    outcomes = shards.run(lambda i: _attempt(_commit_prepared, shards.connections[i], xids[i]), indexes)
    lost = [(i, exc) for i, exc in zip(indexes, outcomes, strict=True) if exc is not None]
    if lost:
        raise _after_decision(shards, decider, lost)


def _record_decision(conn: Any, log: DecisionLog, index: int, gtrid: str) -> None:
    """Insert the decision row in the decision shard's open transaction (and drop spent rows)."""
    table = log.table()
    statements: list[sql.Composable] = []
    if index not in log.tables:
        statements.append(_create(table))
    insert = "WITH spent AS (DELETE FROM {t} WHERE gid = ANY(%s)) INSERT INTO {t} (gid) VALUES (%s)"
    statements.append(sql.SQL(insert).format(t=table))
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("; ").join(statements), (log.spent.get(index, []), gtrid))
    except psycopg2.Error as exc:
        if exc.pgcode in _PERMISSION:
            raise _with_hint(exc, _table_hint(log.schema)) from None
        if isinstance(exc, psycopg2.errors.UniqueViolation) and exc.diag.constraint_name == f"{TABLE}_pkey":
            raise _with_hint(
                exc, "recover() rolled this transaction back while it was being prepared"
            ) from None
        raise
    _drop_notice(conn, "already exists, skipping")


def _create(table: sql.Composable) -> sql.Composable:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (gid text PRIMARY KEY, committed boolean NOT NULL DEFAULT true, "
        "decided timestamptz NOT NULL DEFAULT now())"
    ).format(table)


def _table_hint(schema: str) -> str:
    return (
        f"two-phase commit keeps its decisions in {schema}.{TABLE}: let this user create it there "
        "(or create it once as one who may), name a schema it may write with "
        "connect(..., decision_schema=...), or connect(..., two_phase=False) to commit each shard on its own"
    )


def _prepare(conn: Any, xid: psycopg2.extensions.Xid) -> None:
    """PREPARE TRANSACTION this shard's part, as SQL (psycopg2's tpc_begin came too late)."""
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(str(xid))))
    finally:
        _reset(conn)


def _reset(conn: Any) -> None:
    """The server ended the transaction (PREPARE, or its failure, did): tell psycopg2."""
    if not conn.closed and conn.status != psycopg2.extensions.STATUS_READY:
        conn.rollback()
        _drop_notice(conn, _NO_TRANSACTION)


def _decide(shards: ShardSet, decider: int, xids: dict[int, Any]) -> None:
    """Commit the decision shard: from here on the transaction is committed."""
    conn = shards.connections[decider]
    (exc,) = shards.run(lambda i: _attempt(conn.commit), [decider])
    if exc is None:
        return
    if conn.closed or not isinstance(exc, psycopg2.Error) or exc.pgcode is None:
        raise psycopg2.OperationalError(
            f"the commit's outcome is unknown: {shards.infos[decider]}, which decides it, failed while "
            f"committing ({redact(_first_line(exc), shards.secrets)}); the other written shards' parts stay "
            "prepared until pdb.recover() or `parallel-connection recover` commits them (if it committed) "
            "or rolls them back"
        )
    left = _roll_back(shards, xids, [])
    raise _before_decision(shards, decider, exc, left, "at the deciding COMMIT")


def _attempt(fn: Any, *args: Any) -> Exception | None:
    """``fn(*args)``'s exception, or None: one shard's outcome, which must not cancel the others'."""
    try:
        fn(*args)
    except Exception as exc:
        return exc
    return None


def _commit_prepared(conn: Any, xid: Any) -> None:
    # If someone else finished it first, that was a recover() that found the decision: it committed.
    _finish_part(conn, xid, commit=True)


def _finish_part(conn: Any, xid: Any, *, commit: bool) -> bool:
    """COMMIT PREPARED or ROLLBACK PREPARED one part; False if someone else finished it first.

    A part another session is finishing right now is "busy": wait for it to be gone.
    """
    deadline = time.monotonic() + BUSY_WAIT
    while True:
        try:
            if commit:
                conn.tpc_commit(xid)
            else:
                conn.tpc_rollback(xid)
            return True
        except psycopg2.Error as exc:
            if conn.closed:
                raise
            if exc.pgcode == _UNDEFINED_OBJECT:
                return False
            if exc.pgcode != _BUSY or time.monotonic() > deadline:
                raise
        _end(conn, commit=False)
        time.sleep(0.02)


def _roll_back(shards: ShardSet, prepared: dict[int, Any], open_: Sequence[int]) -> list[int]:
    """Roll back what the failed commit left: prepared parts and open transactions (best effort).

    Returns the shards whose prepared part is still there (recover() rolls it back).
    """

    def undo(i: int) -> bool:
        conn = shards.connections[i]
        if conn.closed:
            return i in prepared
        try:
            _reset(conn)
            if i in prepared:
                _finish_part(conn, prepared[i], commit=False)
        except psycopg2.Error:
            return i in prepared
        return False

    indexes = sorted(set(prepared) | set(open_))
    try:
        left = shards.run(undo, indexes)
    except BaseException:
        return sorted(prepared)
    return [i for i, stuck in zip(indexes, left, strict=True) if stuck]


def _before_decision(
    shards: ShardSet, index: int, exc: BaseException, left: Sequence[int], stage: str
) -> BaseException:
    """The error of a commit that failed before its decision (at ``stage``): nothing was committed."""
    error = exc if getattr(exc, "shard", None) is not None else shards.error(exc, index)
    if not isinstance(error, psycopg2.Error):
        return error
    hint = f"{stage}, in two-phase commit: the transaction was rolled back on every shard"
    if left:
        names = ", ".join(str(shards.infos[i]) for i in left)
        hint = (
            f"{stage}, in two-phase commit: nothing was committed, but the part prepared on {names} "
            "could not be rolled back now: pdb.recover() or `parallel-connection recover` rolls it back"
        )
    if error.pgcode == "0A000":
        hint += "; connect(..., two_phase=False) commits each shard on its own instead"
    return _with_hint(error, hint)


def _after_decision(
    shards: ShardSet, decider: int, lost: Sequence[tuple[int, BaseException]]
) -> BaseException:
    """The error of a commit decided but not finished on every shard: committed, recover() finishes it."""
    names = ", ".join(str(shards.infos[i]) for i, _ in lost)
    error = psycopg2.OperationalError(
        f"the transaction is committed (decided on {shards.infos[decider]}), but {names} did not "
        f"confirm its part ({redact(_first_line(lost[0][1]), shards.secrets)}): it stays prepared, "
        "holding its locks, until pdb.recover() or `parallel-connection recover` commits it once the "
        "shard is back"
    )
    error.shard = shards.infos[lost[0][0]]  # type: ignore[attr-defined]
    return error


# -- recovery ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """One prepared part :func:`recover` resolved."""

    shard: ShardInfo
    transaction: str
    """The global id, the same on every shard the transaction wrote (``pc_...``)."""
    gid: str
    """The part's gid on this shard, as ``pg_prepared_xacts`` shows it."""
    action: str
    """``"committed"`` or ``"rolled back"``."""

    def __str__(self) -> str:
        return f"{self.shard}: {self.transaction}: {self.action}"


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover` did, and what it left to clients that may still be committing."""

    resolved: list[Resolved]
    waiting: int
    """Prepared parts younger than the grace period, left alone."""


@dataclass(frozen=True)
class _Part:
    shard: int
    xid: Any
    gid: str
    old: bool


def recover(shards: ShardSet, *, grace: float = GRACE, schema: str = "public") -> Recovery:
    """Commit or roll back the prepared parts this library left on the shards.

    A part whose transaction has a committed decision row on some shard is
    committed, any other rolled back once it is older than ``grace`` seconds.
    Needs every shard, and no transaction in progress.
    """
    idle = psycopg2.extensions.TRANSACTION_STATUS_IDLE
    busy = [i for i, c in enumerate(shards.connections) if c.get_transaction_status() != idle]
    if busy:
        raise psycopg2.ProgrammingError(
            f"recover() runs outside a transaction: {shards.infos[busy[0]]} is in one "
            "(commit or roll back first)"
        )
    log = DecisionLog(schema)
    # Decisions first, then the prepared parts: a decision row read before its parts are found
    # missing is spent (its parts were prepared before it was written).
    decisions = shards.run(lambda i: _read_decisions(shards.connections[i], log))
    listed = shards.run(lambda i: _read_prepared(shards.connections[i], i, grace))
    parts = [part for on_shard in listed for part in on_shard]
    by_transaction: dict[str, list[_Part]] = {}
    for part in parts:
        by_transaction.setdefault(part.xid.gtrid, []).append(part)
    decided: dict[str, bool] = {}
    for rows in decisions:
        for gtrid, (committed, _) in rows.items():
            decided[gtrid] = decided.get(gtrid, False) or committed
    ready = {g: ps for g, ps in by_transaction.items() if all(p.old for p in ps)}
    waiting = sum(len(ps) for g, ps in by_transaction.items() if g not in ready)
    undecided = sorted(g for g in ready if g not in decided)
    if undecided:
        committed_on = shards.run(lambda i: _fence(shards.connections[i], log, undecided))
        for gtrid in undecided:
            decided[gtrid] = any(gtrid in committed for committed in committed_on)
    plan: dict[int, list[tuple[_Part, bool]]] = {i: [] for i in range(len(shards))}
    for gtrid, ps in ready.items():
        for part in ps:
            plan[part.shard].append((part, decided[gtrid]))
    done = shards.run(lambda i: _resolve(shards.connections[i], plan[i]))
    resolved = [
        Resolved(shards.infos[part.shard], part.xid.gtrid, part.gid, "committed" if commit else "rolled back")
        for on_shard in done
        for part, commit in on_shard
    ]
    finished = {g for g in ready if decided[g]}
    _clean(shards, log, decisions, set(by_transaction), finished)
    return Recovery(resolved, waiting)


def _read_decisions(conn: Any, log: DecisionLog) -> dict[str, tuple[bool, bool]]:
    """This shard's decision rows: global id -> (committed, an abort marker past its lifetime)."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (log.table().as_string(conn),))
            row = cur.fetchone()
            if not row or not row[0]:
                return {}
            cur.execute(
                sql.SQL("SELECT gid, committed, decided < now() - %s::interval FROM {}").format(log.table()),
                (MARKER_LIFETIME,),
            )
            return {gid: (committed, expired) for gid, committed, expired in cur.fetchall()}
    finally:
        _end(conn, commit=False)


def _read_prepared(conn: Any, index: int, grace: float) -> list[_Part]:
    """This library's prepared parts in this shard's database.

    Read from ``pg_prepared_xacts`` rather than with ``tpc_recover()``, which
    lists every database's and cannot tell their age by the server's clock.
    """
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT gid, prepared <= now() - make_interval(secs => %s) FROM pg_prepared_xacts "
                "WHERE database = current_database()",
                (grace,),
            )
            rows = cur.fetchall()
    finally:
        _end(conn, commit=False)
    found = []
    for gid, old in rows:
        xid = cast(Any, psycopg2.extensions.Xid).from_string(gid)
        if xid.format_id == FORMAT_ID and str(xid.gtrid).startswith(PREFIX):
            found.append(_Part(index, xid, gid, bool(old)))
    return found


def _fence(conn: Any, log: DecisionLog, gtrids: list[str]) -> set[str]:
    """Write abort markers for these undecided transactions; those already committed here, returned.

    A committer's uncommitted decision row makes this wait for its commit or rollback.
    """
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "{create}; INSERT INTO {t} AS d (gid, committed) SELECT unnest(%s::text[]), false "
                    "ON CONFLICT (gid) DO UPDATE SET committed = d.committed RETURNING gid, committed"
                ).format(create=_create(log.table()), t=log.table()),
                (gtrids,),
            )
            committed = {gid for gid, yes in cur.fetchall() if yes}
        _drop_notice(conn, "already exists, skipping")
    except psycopg2.Error as exc:
        _end(conn, commit=False)
        if exc.pgcode in _PERMISSION:
            hint = _table_hint(log.schema) + " (recover() writes abort markers there)"
            raise _with_hint(exc, hint) from None
        raise
    _end(conn, commit=True)
    return committed


def _resolve(conn: Any, plan: list[tuple[_Part, bool]]) -> list[tuple[_Part, bool]]:
    """COMMIT PREPARED or ROLLBACK PREPARED each part; those someone else resolved first are skipped."""
    return [(part, commit) for part, commit in plan if _finish_part(conn, part.xid, commit=commit)]


def _clean(
    shards: ShardSet,
    log: DecisionLog,
    decisions: list[dict[str, tuple[bool, bool]]],
    still_prepared: set[str],
    finished: set[str],
) -> None:
    """Delete decision rows no part needs any more, and abort markers past their lifetime."""

    def spent(rows: dict[str, tuple[bool, bool]]) -> list[str]:
        return sorted(
            g
            for g, (committed, expired) in rows.items()
            if g in finished or (g not in still_prepared and (committed or expired))
        )

    def clean(i: int) -> None:
        gone = spent(decisions[i])
        if not gone:
            return
        conn = shards.connections[i]
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DELETE FROM {} WHERE gid = ANY(%s)").format(log.table()), (gone,))
        except BaseException:
            _end(conn, commit=False)
            raise
        _end(conn, commit=True)

    shards.run(clean)


# -- helpers ---------------------------------------------------------------------------------


def _end(conn: Any, *, commit: bool) -> None:
    """End the transaction psycopg2 opened for recovery's statements (none in autocommit)."""
    if conn.closed or conn.autocommit:
        return
    if commit:
        conn.commit()
    else:
        conn.rollback()


def _drop_notice(conn: Any, text: str) -> None:
    """Forget the last notice containing ``text``: the library's doing, not the user's."""
    notices = conn.notices
    for k in range(len(notices) - 1, max(-1, len(notices) - 4), -1):
        if text in notices[k]:
            del notices[k]
            return


def _with_hint(exc: psycopg2.Error, hint: str) -> psycopg2.Error:
    """``exc`` as the same class (pgcode and pgerror kept), ``hint`` after its message's first line."""
    first, *rest = str(exc).rstrip().split("\n", 1)
    new = type(exc)("\n".join([f"{first} ({hint})", *rest]))
    new.__setstate__({"pgcode": exc.pgcode, "pgerror": exc.pgerror})  # type: ignore[no-untyped-call]
    shard = getattr(exc, "shard", None)
    if shard is not None:
        new.shard = shard  # type: ignore[attr-defined]
    new.__suppress_context__ = True
    return new


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
