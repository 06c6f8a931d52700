"""The ``parallel-connection`` command line, thin over the library.

``query`` prints a statement's merged rows; ``scan`` runs a job per id range
and prints the reduced report; ``placement`` checks the data against a
placement or proposes one; ``recover`` resolves what failed two-phase
commits left prepared; ``shards`` starts, lists and stops throwaway local
shards. Every failure is one line on stderr and an exit
code of its own (see :class:`Exit`), never a traceback or a password.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import os
import re
import shlex
import signal
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import psycopg2

from . import __version__
from .commit import GRACE
from .connection import ParallelConnection, connect
from .errors import NotSupportedError, dsn_secrets, redact
from .formats import FORMATS, write_rows
from .local import SHARDS_DIR_VARIABLE, LocalCluster, default_base_dir
from .placement import Placement
from .ranges import RangeFailure, RangeResult, ScanReport
from .ranges.rows import each_range, failure_line, reduced, summary_line
from .shards import DEFAULT_MOVED_ROWS

__all__ = ["DSNS_VARIABLE", "Exit", "main", "parse_dsn_lines"]

PROG = "parallel-connection"
DSNS_VARIABLE = "PARALLEL_CONNECTION_DSNS"

_GLUED = re.compile(r";\s*(?:host|hostaddr|port|dbname|user|service)\s*=|;\s*postgres(?:ql)?://", re.I)
"""Two DSNs joined by ``;`` (another tool's separator): libpq would read them as one."""


class Exit(enum.IntEnum):
    """The command line's exit codes, one per class of failure.

    0 success; 1 any other error; 2 usage; 3 bad DSN; 4 cannot connect to a
    shard; 5 SQL error; 6 not supported across shards; 7 a shard failed while
    the statement ran; 8 local shards could not be started, found or stopped;
    9 ``scan``: some ranges still failed after retries; 10 ``placement
    check``: the data does not follow the placement; 130 interrupted
    (Ctrl-C, SIGTERM); 141 stdout closed early.
    """

    OK = 0
    ERROR = 1
    USAGE = 2
    BAD_DSN = 3
    UNREACHABLE = 4
    SQL_ERROR = 5
    NOT_SUPPORTED = 6
    SHARD_FAILED = 7
    LOCAL_SHARDS = 8
    RANGES_FAILED = 9
    PLACEMENT_PROBLEMS = 10
    INTERRUPTED = 130
    BROKEN_PIPE = 141


_LABELS = {
    Exit.ERROR: "error",
    Exit.USAGE: "usage",
    Exit.BAD_DSN: "bad DSN",
    Exit.UNREACHABLE: "cannot connect",
    Exit.SQL_ERROR: "SQL error",
    Exit.NOT_SUPPORTED: "not supported across shards",
    Exit.SHARD_FAILED: "shard failed",
    Exit.LOCAL_SHARDS: "local shards",
    Exit.RANGES_FAILED: "ranges failed",
    Exit.PLACEMENT_PROBLEMS: "placement problems",
}


class Failure(Exception):
    """A failure to report as one line on stderr, exiting with ``code``."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- entry point ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    secrets = _env_secrets()
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        if not getattr(args, "takes_placement", False):
            for given, flag in ((args.placement, "--placement"), (args.global_replicated, "--replicated")):
                if given:
                    raise Failure(Exit.USAGE, f"{flag} is for query, scan and placement check")
        return int(args.command(args, secrets))
    except Failure as exc:
        _say(f"{_LABELS[exc.code]}: {exc}", secrets)
        return exc.code
    except psycopg2.Error as exc:
        code = _classify(exc)
        _say(f"{_LABELS[code]}: {_one_line(exc)}", secrets)
        return code
    except KeyboardInterrupt:
        _say("interrupted: the shards' statements were cancelled", secrets)
        return Exit.INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return Exit.BROKEN_PIPE
    except Exception as exc:  # a bug: still one line, never a password
        _say(f"{_LABELS[Exit.ERROR]}: {type(exc).__name__}: {_one_line(exc)}", secrets)
        return Exit.ERROR


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="One connection over several PostgreSQL shards, from the shell.",
        epilog=(
            f"Shards come from repeated --dsn, --dsn-file, or ${DSNS_VARIABLE} "
            "(one DSN per line). Passwords come from libpq's usual places "
            "(PGPASSFILE, ~/.pgpass, PGPASSWORD)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--placement", metavar="FILE", help=f"for query, scan and placement check: {PLACEMENT_HELP}"
    )
    parser.add_argument(
        "--replicated",
        action="append",
        default=[],
        dest="global_replicated",
        metavar="TABLE",
        help=f"for query, scan and placement check: {REPLICATED_HELP}",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_query(commands)
    _add_scan(commands)
    _add_placement(commands)
    _add_recover(commands)
    _add_shards(commands)
    return parser


# -- query ----------------------------------------------------------------------


def _add_query(commands: Any) -> None:
    query = commands.add_parser(
        "query",
        parents=[_connection_options(), _placement_option()],
        help="run one statement on every shard and print the merged rows",
        description=(
            "Run SQL on every shard at once and print the rows one database holding "
            "every shard's rows would give (or refuse, with exit code 6). Rows go to "
            "stdout; errors and the status of statements without rows go to stderr."
        ),
    )
    query.add_argument("sql", metavar="SQL", help="the statement; - reads it from stdin")
    query.add_argument(
        "--format",
        choices=FORMATS,
        help="output format (default: table on a terminal, csv otherwise)",
    )
    query.add_argument(
        "--union",
        action="store_true",
        help="return the plain union of the shards' rows (for statements you know are shard-local)",
    )
    query.add_argument(
        "--shard-column",
        metavar="NAME",
        help="with --union: add a first column NAME holding each row's shard index",
    )
    query.add_argument(
        "--stream",
        action="store_true",
        help="fetch the rows in batches through server-side cursors: memory stays bounded "
        "(SELECT and VALUES only; csv and json write as rows arrive)",
    )
    query.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value for %%(NAME)s in SQL (repeatable; then write a literal %% as %%%%)",
    )
    query.add_argument(
        "--null", default="", metavar="TEXT", help="how table and csv show NULL (default: empty)"
    )
    query.add_argument("--no-header", action="store_true", help="leave out the header (table and csv)")
    query.add_argument(
        "--moved-rows",
        type=_not_negative,
        default=DEFAULT_MOVED_ROWS,
        metavar="N",
        help="the most rows a statement may move to the coordinator for the parts the shards cannot "
        f"finish alone (default: {DEFAULT_MOVED_ROWS})",
    )
    query.set_defaults(command=run_query)


def _connection_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("shards")
    group.add_argument(
        "--dsn",
        action="append",
        default=[],
        help="a shard's libpq connection string; repeat once per shard, in shard order",
    )
    group.add_argument(
        "--dsn-file",
        metavar="PATH",
        help="a file with one DSN per line (blank lines and lines starting with # are skipped)",
    )
    group.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up on a shard that does not answer (default: 10)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="statement_timeout on every shard (default: none)",
    )
    return options


PLACEMENT_HELP = "a placement TOML file: which tables are sharded (key, function) and which are copied"
REPLICATED_HELP = (
    "a table copied whole to every shard (repeatable; instead of --placement: every other table "
    "is read as sharded)"
)


def _placement_option(text: str = PLACEMENT_HELP) -> argparse.ArgumentParser:
    """``--placement FILE`` and ``--replicated TABLE`` after the command; before it (global) works too."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("where rows live")
    # SUPPRESS: a sub-command's default must not overwrite the global option's value.
    group.add_argument("--placement", metavar="FILE", default=argparse.SUPPRESS, help=text)
    group.add_argument("--replicated", action="append", default=[], metavar="TABLE", help=REPLICATED_HELP)
    options.set_defaults(takes_placement=True)
    return options


def run_query(args: argparse.Namespace, secrets: set[str]) -> Exit:
    """``parallel-connection query``."""
    if args.shard_column is not None and not args.union:
        raise Failure(Exit.USAGE, "--shard-column needs --union: merged rows come from no single shard")
    if args.sql == "-" and args.dsn_file == "-":
        raise Failure(Exit.USAGE, "only one of SQL and --dsn-file can be read from stdin")
    dsns = read_dsns(args.dsn, args.dsn_file)
    for dsn in dsns:
        secrets |= dsn_secrets(dsn)
    sql = sys.stdin.read() if args.sql == "-" else args.sql
    params = _params(args.param)
    fmt = args.format or ("table" if sys.stdout.isatty() else "csv")
    placement = _load_placement(args, len(dsns))
    pdb = _connect(dsns, args.connect_timeout, args.timeout, placement=placement, moved_rows=args.moved_rows)
    try:
        pdb.autocommit = not args.stream  # server-side cursors live in a transaction
        name = "parallel_connection_cli" if args.stream else None
        with pdb.cursor(name, merge="union" if args.union else "auto") as cur:
            cur.execute(sql, params)
            if cur.description is None:
                print(cur.statusmessage or "OK", file=sys.stderr)
                return Exit.OK
            columns = [col.name for col in cur.description]
            rows: Iterable[Sequence[Any]] = cur
            if args.shard_column is not None:
                columns.insert(0, args.shard_column)
                rows = ((index, *row) for index, row in cur.shard_rows())
            if fmt == "json" and len(set(columns)) < len(columns):
                raise Failure(
                    Exit.USAGE,
                    "JSON objects need distinct column names: name the columns with AS",
                )
            write_rows(fmt, columns, rows, sys.stdout, null=args.null, header=not args.no_header)
            sys.stdout.flush()
        if args.stream:
            pdb.commit()
    finally:
        _close(pdb)
    return Exit.OK


# -- scan -----------------------------------------------------------------------

SCAN_PER_SHARD = 2
"""Ranges running at once on each shard unless --max-parallelism says otherwise."""


def _add_scan(commands: Any) -> None:
    scan = commands.add_parser(
        "scan",
        parents=[_connection_options(), _placement_option()],
        help="run a job once per id range on every shard and print the reduced report",
        description=(
            "Cut TABLE.ID_COLUMN (an indexed integer column) into ranges on every shard and "
            "run WORK once per range, each range in a transaction of its own. WORK is SQL "
            "using %(start)s and %(end)s (both included; write a literal % as %%). "
            "stdout gets the ranges' rows summed field by field as one row (or, for a WORK "
            "without rows such as an UPDATE, the rowcount), stderr a summary line. Ranges "
            "that still fail after retries are listed on stderr, exit code 9."
        ),
    )
    scan.add_argument("table", metavar="TABLE", help="the table, as name or schema.name")
    scan.add_argument("id_column", metavar="ID_COLUMN", help="its integer id column")
    scan.add_argument("work", metavar="WORK", help="the SQL run on each range; - reads it from stdin")
    scan.add_argument(
        "--rows-per-range", type=_positive, default=25_000, metavar="N", help="range size (default: 25000)"
    )
    scan.add_argument(
        "--split",
        choices=("width", "rows"),
        default="width",
        help="width: N ids per range (default); rows: about N rows per range, however sparse the ids",
    )
    scan.add_argument(
        "--where", metavar="SQL", help="a filter for the ids to cover (trusted SQL; may use %%(NAME)s)"
    )
    scan.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value for %%(NAME)s in WORK and --where (repeatable)",
    )
    scan.add_argument(
        "--max-parallelism",
        type=_positive,
        metavar="N",
        help=f"ranges running at once over all shards (default: {SCAN_PER_SHARD} per shard)",
    )
    scan.add_argument(
        "--retries",
        type=_not_negative,
        default=3,
        metavar="N",
        help="retries of a range after a transient failure (lost connection, deadlock...; default: 3)",
    )
    scan.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="record finished ranges in PATH; running the same scan again skips them",
    )
    scan.add_argument(
        "--snapshot",
        action="store_true",
        help="every range of a shard reads one snapshot, so totals hold still while writes go on",
    )
    scan.add_argument(
        "--smoke-test", action="store_true", help="run only the first range of each shard, then stop"
    )
    scan.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: only when stderr is a terminal)",
    )
    scan.add_argument(
        "--each",
        action="store_true",
        help="print every range's rows, led by shard, start and end columns, instead of their sums",
    )
    scan.add_argument(
        "--format",
        choices=FORMATS,
        help="output format (default: table on a terminal, csv otherwise)",
    )
    scan.add_argument(
        "--null", default="", metavar="TEXT", help="how table and csv show NULL (default: empty)"
    )
    scan.add_argument("--no-header", action="store_true", help="leave out the header (table and csv)")
    scan.set_defaults(command=run_scan)


def run_scan(args: argparse.Namespace, secrets: set[str]) -> Exit:
    """``parallel-connection scan``."""
    if args.work == "-" and args.dsn_file == "-":
        raise Failure(Exit.USAGE, "only one of WORK and --dsn-file can be read from stdin")
    dsns = read_dsns(args.dsn, args.dsn_file)
    for dsn in dsns:
        secrets |= dsn_secrets(dsn)
    work = sys.stdin.read() if args.work == "-" else args.work
    parallelism = args.max_parallelism or SCAN_PER_SHARD * len(dsns)
    per_shard = -(-parallelism // len(dsns))
    placement = _load_placement(args, len(dsns))
    pdb = _connect(dsns, args.connect_timeout, args.timeout, maxconn=per_shard + 1, placement=placement)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = pdb.scan_ranges(
                args.table,
                args.id_column,
                work,
                rows_per_range=args.rows_per_range,
                split=args.split,
                where=args.where,
                params=_params(args.param),
                max_parallelism=parallelism,
                retries=args.retries,
                progress=args.progress,
                checkpoint=args.checkpoint,
                snapshot=args.snapshot,
                smoke_test=args.smoke_test,
                check_first=_first_range_check(args),
            )
    finally:
        _close(pdb)
    for warning in caught:
        if "NULL" not in str(warning.message):  # the summary line counts NULL ids
            _say(f"warning: {warning.message}", secrets)
    if args.each or report.ok:
        _write_scan(args, report)
    _say(summary_line(report, len(dsns)), secrets)
    return _scan_outcome(args, report, secrets)


def _first_range_check(args: argparse.Namespace) -> Callable[[RangeResult], None]:
    """What ``scan_ranges`` runs on the first finished range: can its rows be printed as asked?

    Raising here ends the scan before any other range starts: a work whose
    rows cannot be summed says so after one range, not after all of them.
    """

    def check(first: RangeResult) -> None:
        try:
            _printable(args, ScanReport(results=[first]))
        except Failure as exc:
            raise Failure(
                exc.code,
                f"{exc}; checked on the first range ({first.shard} ids {first.start}-{first.end}): "
                "no other range ran",
            ) from None

    return check


def _printable(args: argparse.Namespace, report: ScanReport) -> tuple[list[str], Iterable[Sequence[Any]]]:
    """The columns and rows to print: each range's rows, or their sums; a usage Failure if impossible."""
    try:
        if args.each:
            columns, each = each_range(report)
            rows: Iterable[Sequence[Any]] = list(each)
        else:
            columns, rows = _one_row(report)
    except (TypeError, ValueError) as exc:
        hint = "" if args.each else " (or print each range's rows with --each)"
        raise Failure(Exit.USAGE, f"{exc}{hint}") from None
    return columns, rows


def _write_scan(args: argparse.Namespace, report: ScanReport) -> None:
    columns, rows = _printable(args, report)
    if not columns:
        return
    if args.format == "json" and len(set(columns)) < len(columns):
        raise Failure(Exit.USAGE, "JSON objects need distinct column names: name the columns with AS")
    fmt = args.format or ("table" if sys.stdout.isatty() else "csv")
    write_rows(fmt, columns, rows, sys.stdout, null=args.null, header=not args.no_header)
    sys.stdout.flush()


def _one_row(report: ScanReport) -> tuple[list[str], list[tuple[Any, ...]]]:
    columns, row = reduced(report)
    return columns, [row]


def _scan_outcome(args: argparse.Namespace, report: ScanReport, secrets: set[str]) -> Exit:
    kept = f"--checkpoint {shlex.quote(args.checkpoint)}" if args.checkpoint else None
    rerun = (
        f"run the same command again: {kept} skips the finished ranges"
        if kept
        else "add --checkpoint PATH to keep finished ranges, so that a rerun does only the rest"
    )
    if report.interrupted:
        finished = sum(not r.resumed for r in report.results)
        _say(f"interrupted: {finished} ranges finished before the stop; {rerun}", secrets)
        return Exit.INTERRUPTED
    label = _LABELS[Exit.RANGES_FAILED]
    if report.stopped_early is not None:
        _say_stopped_early(report, secrets)
        return Exit.RANGES_FAILED
    if report.failed:
        for failure in report.failed:
            _say(f"{label}: {failure_line(failure)}", secrets)
        _say(f"{label}: {len(report.failed)} ranges failed; {rerun}", secrets)
        return Exit.RANGES_FAILED
    return Exit.OK


def _say_stopped_early(report: ScanReport, secrets: set[str]) -> None:
    """A scan whose first ranges all failed: one line per distinct error, with the ranges not run."""
    label = _LABELS[Exit.RANGES_FAILED]
    alike: dict[str, list[RangeFailure]] = {}
    for failure in report.failed:
        alike.setdefault(_error_text(failure), []).append(failure)
    stopped = f"{report.not_run} ranges not run (the scan stopped early: its first ranges all failed)"
    if len(alike) == 1:
        (same,) = alike.values()
        count = f"{len(same)} ranges failed with the same error" if len(same) > 1 else "1 range failed"
        _say(f"{label}: {count}, {stopped}: {failure_line(same[0])}", secrets)
        return
    for same in alike.values():
        more = f" (and {len(same) - 1} more ranges alike)" if len(same) > 1 else ""
        _say(f"{label}: {failure_line(same[0])}{more}", secrets)
    _say(f"{label}: {len(report.failed)} ranges failed, {stopped}", secrets)


def _error_text(failure: RangeFailure) -> str:
    """A failed range's error message without its shard and ids (what makes two failures alike)."""
    return failure_line(failure).partition(": ")[2]


# -- where the shards come from --------------------------------------------------


def read_dsns(given: Sequence[str], path: str | None) -> list[str]:
    """The shards' DSNs from ``--dsn``, ``--dsn-file`` or ``$PARALLEL_CONNECTION_DSNS``."""
    if given and path:
        raise Failure(Exit.USAGE, "give --dsn or --dsn-file, not both")
    if given:
        dsns = [d.strip() for d in given if d.strip()]
    elif path:
        try:
            dsns = parse_dsn_lines(sys.stdin.read() if path == "-" else Path(path).read_text())
        except OSError as exc:
            raise Failure(Exit.USAGE, f"cannot read --dsn-file {path}: {exc.strerror}") from None
    else:
        dsns = parse_dsn_lines(os.environ.get(DSNS_VARIABLE, ""))
    for dsn in dsns:
        if _GLUED.search(dsn):
            raise Failure(
                Exit.USAGE,
                "a DSN looks like several joined with ';': give one DSN per line (or one --dsn each)",
            )
    if not dsns:
        raise Failure(
            Exit.USAGE,
            f"no shards: give --dsn once per shard, --dsn-file PATH, or set {DSNS_VARIABLE} "
            "(one DSN per line)",
        )
    return dsns


def parse_dsn_lines(text: str) -> list[str]:
    """One DSN per line; blank lines and lines starting with ``#`` are skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _params(pairs: Sequence[str]) -> dict[str, str] | None:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise Failure(Exit.USAGE, f"--param wants NAME=VALUE, not {pair!r}")
        params[name] = value
    return params or None


def _connect(
    dsns: list[str],
    connect_timeout: float,
    timeout: float | None,
    *,
    maxconn: int = 1,
    placement: Placement | None = None,
    decision_schema: str = "public",
    moved_rows: int = DEFAULT_MOVED_ROWS,
) -> ParallelConnection:
    try:
        return connect(
            dsns,
            minconn=1,
            maxconn=maxconn,
            connect_timeout=connect_timeout,
            statement_timeout=timeout,
            placement=placement,
            decision_schema=decision_schema,
            moved_rows=moved_rows,
        )
    except psycopg2.ProgrammingError as exc:
        raise Failure(Exit.BAD_DSN, _one_line(exc)) from None
    except psycopg2.Error as exc:
        raise Failure(Exit.UNREACHABLE, _one_line(exc)) from None


def _load_placement(args: argparse.Namespace, shards: int) -> Placement | None:
    """The placement of ``--placement FILE`` or ``--replicated TABLE``, checked against the number of
    shards (as ``connect(placement=...)`` or ``connect(replicated_tables=...)``); None without either."""
    path: str | None = args.placement
    copies = list(dict.fromkeys([*args.global_replicated, *args.replicated]))
    if path is not None and copies:
        raise Failure(
            Exit.USAGE,
            "give --placement FILE or --replicated TABLE, not both "
            "(name the copies in the file: copied = [...])",
        )
    if copies:
        try:
            return Placement.copies_only(copies)
        except ValueError as exc:
            raise Failure(Exit.USAGE, f"--replicated: {exc}") from None
    if path is None:
        return None
    try:
        placement = Placement.from_file(path)
        placement.check_shards(shards)
    except OSError as exc:
        raise Failure(Exit.USAGE, f"cannot read --placement {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise Failure(Exit.USAGE, f"--placement {path}: not UTF-8 text ({exc.reason})") from None
    except ValueError as exc:
        message = str(exc)
        if not message.startswith(f"{path}:"):
            message = f"{path}: {message}"
        raise Failure(Exit.USAGE, f"bad --placement {message}") from None
    return placement


def _classify(exc: psycopg2.Error) -> Exit:
    """The exit code for an error raised while a statement runs."""
    if isinstance(exc, NotSupportedError):
        return Exit.NOT_SUPPORTED
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.InternalError)):
        return Exit.SHARD_FAILED
    return Exit.SQL_ERROR


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = lines[0] if lines else type(exc).__name__
    pgerror = getattr(exc, "pgerror", None) or ""
    hints = [line[len("HINT:") :].strip() for line in pgerror.splitlines() if line.startswith("HINT:")]
    if hints:
        message += f" (hint: {hints[0]})"
    return message


def _close(pdb: ParallelConnection) -> None:
    with contextlib.suppress(psycopg2.Error):
        pdb.close()


# -- placement ------------------------------------------------------------------


def _add_placement(commands: Any) -> None:
    placement = commands.add_parser(
        "placement",
        help="check the data against a placement, or propose a placement from the data",
        description=(
            "A placement says which tables are sharded (on which key, by which function) and "
            "which are copied to every shard. `check` reads every table it names once per shard; "
            "`discover` reads every table once per shard and proposes the placement the data follows."
        ),
    )
    actions = placement.add_subparsers(title="actions", required=True, metavar="ACTION")
    progress = argparse.ArgumentParser(add_help=False)
    progress.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: only when stderr is a terminal)",
    )
    check = actions.add_parser(
        "check",
        parents=[_connection_options(), _placement_option("the placement TOML file to check"), progress],
        help="check that copies are identical and sharded rows sit where their key says",
        description=(
            "Print one line per table of the placement: ok, or each problem (a copy that differs, "
            "rows on the wrong shard, a table missing on a shard). Exit code 0 when all is ok, "
            "10 when problems were found."
        ),
    )
    check.set_defaults(command=run_placement_check)
    discover = actions.add_parser(
        "discover",
        parents=[_connection_options(), progress],
        help="propose a placement from the data, as TOML",
        description=(
            "Print (or write to --output) a placement TOML: tables identical on every shard are "
            "copies; a table whose every row sits on the shard its integer or text column maps it "
            "to (modulo or hash) is sharded on that column. Tables left out are listed, with the "
            "reason, in comments at the top."
        ),
    )
    discover.add_argument("--output", "-o", metavar="FILE", help="write the TOML to FILE instead of stdout")
    discover.add_argument(
        "--table",
        action="append",
        metavar="NAME",
        help="look only at this table (repeatable; default: every table outside the system schemas)",
    )
    discover.set_defaults(command=run_placement_discover)


def run_placement_check(args: argparse.Namespace, secrets: set[str]) -> Exit:
    """``parallel-connection placement check``."""
    dsns = read_dsns(args.dsn, args.dsn_file)
    for dsn in dsns:
        secrets |= dsn_secrets(dsn)
    placement = _load_placement(args, len(dsns))
    if placement is None:
        raise Failure(
            Exit.USAGE,
            f"placement check needs --placement FILE or --replicated TABLE "
            f"(`{PROG} placement discover` proposes a placement)",
        )
    pdb = _connect(dsns, args.connect_timeout, args.timeout, placement=placement)
    try:
        report = pdb.check_placement(progress=args.progress)
    finally:
        _close(pdb)
    _print_lines(redact(line, secrets) for line in report.lines())
    if report.ok:
        _say(report.headline(), secrets)
        return Exit.OK
    bad, total = sum(not table.ok for table in report.tables), len(report.tables)
    tables = "1 table" if total == 1 else f"{total} tables"
    _say(
        f"{_LABELS[Exit.PLACEMENT_PROBLEMS]}: {bad} of {tables} on {len(dsns)} shards "
        f"{'does' if bad == 1 else 'do'} not follow the placement (the lines above say where)",
        secrets,
    )
    return Exit.PLACEMENT_PROBLEMS


def run_placement_discover(args: argparse.Namespace, secrets: set[str]) -> Exit:
    """``parallel-connection placement discover``."""
    from .placement_check import discover_placement

    dsns = read_dsns(args.dsn, args.dsn_file)
    for dsn in dsns:
        secrets |= dsn_secrets(dsn)
    pdb = _connect(dsns, args.connect_timeout, args.timeout)
    try:
        try:
            discovery = discover_placement(pdb.shard_set, progress=args.progress, tables=args.table)
        except ValueError as exc:  # a --table that is not a table name
            raise Failure(Exit.USAGE, f"--table: {exc}") from None
    finally:
        _close(pdb)
    text = redact(discovery.to_toml(), secrets)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise Failure(Exit.USAGE, f"cannot write --output {args.output}: {exc.strerror}") from None
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    proposed, left_out = discovery.placement, len(discovery.undecided)
    listed = " (listed in the comments)" if left_out else ""
    where = f"; written to {args.output}" if args.output else ""
    _say(
        f"placement discover: {len(proposed.sharded)} sharded, {len(proposed.copied)} copied, "
        f"{left_out} left out{listed}{where}",
        secrets,
    )
    return Exit.OK


# -- recover --------------------------------------------------------------------


def _add_recover(commands: Any) -> None:
    recover = commands.add_parser(
        "recover",
        parents=[_connection_options()],
        help="commit or roll back what failed two-phase commits left prepared on the shards",
        description=(
            "A client that crashed while committing a transaction that wrote on several shards, "
            "or a shard lost between the decision and its own commit, leaves prepared transactions "
            "(holding their locks). Each is committed if its transaction's decision was recorded, "
            "rolled back otherwise, once older than --grace. Prints one line per resolved part on "
            "stdout and a summary on stderr."
        ),
    )
    recover.add_argument(
        "--grace",
        type=float,
        default=GRACE,
        metavar="SECONDS",
        help=f"leave prepared transactions younger than this to their clients (default: {GRACE:g})",
    )
    recover.add_argument(
        "--decision-schema",
        default="public",
        metavar="NAME",
        help="the schema of the decision table, as given to connect() (default: public)",
    )
    recover.set_defaults(command=run_recover)


def run_recover(args: argparse.Namespace, secrets: set[str]) -> Exit:
    """``parallel-connection recover``."""
    if args.grace < 0:
        raise Failure(Exit.USAGE, f"--grace must be 0 or more, not {args.grace:g}")
    dsns = read_dsns(args.dsn, args.dsn_file)
    for dsn in dsns:
        secrets |= dsn_secrets(dsn)
    pdb = _connect(dsns, args.connect_timeout, args.timeout, decision_schema=args.decision_schema)
    try:
        pdb.autocommit = True
        recovery = pdb.shard_set.recover(args.grace)
    finally:
        _close(pdb)
    _print_lines(redact(str(part), secrets) for part in recovery.resolved)
    resolved = len(recovery.resolved)
    committed = sum(part.action == "committed" for part in recovery.resolved)
    _say(
        f"recover: {len(dsns)} shards, {resolved} prepared transactions resolved ({committed} committed, "
        f"{resolved - committed} rolled back), {recovery.waiting} left to their clients "
        f"(younger than {args.grace:g} s)",
        secrets,
    )
    return Exit.OK


# -- shards ---------------------------------------------------------------------


def _add_shards(commands: Any) -> None:
    shards = commands.add_parser(
        "shards",
        help="throwaway local shards with the sample schema, for trying things out",
        description=(
            "Start, list and stop throwaway PostgreSQL servers on 127.0.0.1, from this "
            "machine's PostgreSQL binaries. They trust every local user and keep "
            "nothing you would miss: for trying things out only."
        ),
    )
    actions = shards.add_subparsers(title="actions", required=True, metavar="ACTION")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--dir",
        type=Path,
        help=f"where the servers live (default: ${SHARDS_DIR_VARIABLE}, else {default_base_dir()})",
    )
    up = actions.add_parser(
        "up",
        parents=[where],
        help="start the shards and load the sample schema (or start again the ones that stopped)",
        description=(
            "In a new folder: start the shards and load the sample schema. In a folder whose shards "
            "are up already: start again, on the same ports, the ones that are not running (their data "
            "kept), so DSNs printed before stay right."
        ),
    )
    up.add_argument(
        "--shards", type=_positive, metavar="N", help=f"how many (default: {SHARDS}; new folders only)"
    )
    up.add_argument(
        "--orders",
        type=_positive,
        metavar="N",
        help=f"sample orders, spread over the shards by customer_id (default: {ORDERS}; new folders only)",
    )
    up.set_defaults(command=run_shards_up)
    dsns = actions.add_parser("dsns", parents=[where], help="print the shards' DSNs, one per line")
    dsns.add_argument(
        "--export",
        action="store_true",
        help=f"print a shell command that sets {DSNS_VARIABLE} instead",
    )
    dsns.set_defaults(command=run_shards_dsns)
    down = actions.add_parser("down", parents=[where], help="stop the shards and delete their data")
    down.set_defaults(command=run_shards_down)


SHARDS = 3
ORDERS = 100_000
"""``shards up``'s defaults: shards, and sample orders spread over them."""


def run_shards_up(args: argparse.Namespace, secrets: set[str]) -> Exit:
    """``parallel-connection shards up``: start the servers, load the sample, print the DSNs."""
    from .sample import load_sample

    base = args.dir or default_base_dir()
    if (base / "cluster.json").exists():
        return _restart_shards(args, base)
    if base.exists() and any(base.iterdir()):
        raise Failure(Exit.LOCAL_SHARDS, f"{base} is not empty: choose another --dir")
    shards, orders = args.shards or SHARDS, args.orders or ORDERS
    cluster = LocalCluster(shards, base_dir=base)
    _say(f"starting {shards} shards in {base} ...")
    try:
        cluster.start()
        _say(f"loading the sample schema ({orders} orders) ...")
        load_sample(cluster.shard_dsns, orders=orders)
    except BaseException as exc:
        cluster.remove()
        if isinstance(exc, (RuntimeError, OSError, psycopg2.Error)):
            raise Failure(Exit.LOCAL_SHARDS, _one_line(exc)) from None
        raise
    _ready(args, cluster)
    return Exit.OK


def _restart_shards(args: argparse.Namespace, base: Path) -> Exit:
    """``shards up`` in a folder that has shards: each shard's state; the stopped ones started again."""
    cluster = _attach(base)
    assert cluster is not None
    again = f"`{PROG} shards down{_dir_option(args)}` first to start afresh"
    if args.shards is not None and args.shards != cluster.n_shards:
        raise Failure(
            Exit.LOCAL_SHARDS, f"{base} holds {cluster.n_shards} shards, not {args.shards}: {again}"
        )
    if args.orders is not None:
        raise Failure(Exit.LOCAL_SHARDS, f"the shards in {base} have their sample loaded already: {again}")
    states = cluster.states()
    try:
        started = cluster.start_stopped()
    except (RuntimeError, OSError) as exc:
        raise Failure(Exit.LOCAL_SHARDS, f"{_one_line(exc)} ({again}, on new ports)") from None
    for server, was_up in zip(cluster.servers, states, strict=True):
        where = f"{server.name} on {server.host}:{server.port}"
        _say(f"{where}: running" if was_up else f"{where}: was not running, started again")
    if not started:
        _say(f"shards are already up in {base}")
    _ready(args, cluster)
    return Exit.OK


def _ready(args: argparse.Namespace, cluster: LocalCluster) -> None:
    _print_lines(cluster.shard_dsns)
    where = _dir_option(args)
    _say(
        f'ready: export {DSNS_VARIABLE}="$({PROG} shards dsns{where})"; '
        f"stop them with `{PROG} shards down{where}`"
    )


def _dir_option(args: argparse.Namespace) -> str:
    return f" --dir {shlex.quote(str(args.dir))}" if args.dir else ""


def run_shards_dsns(args: argparse.Namespace, secrets: set[str]) -> Exit:
    """``parallel-connection shards dsns``."""
    cluster = _attach(args.dir)
    if cluster is None:
        raise Failure(Exit.LOCAL_SHARDS, f"no shards are up in {args.dir or default_base_dir()}")
    states = cluster.states()
    if not all(states):
        down = [
            f"{s.name} ({s.host}:{s.port})" for s, up in zip(cluster.servers, states, strict=True) if not up
        ]
        verb = "is" if len(down) == 1 else "are"
        raise Failure(
            Exit.LOCAL_SHARDS,
            f"{', '.join(down)} {verb} not running ({sum(states)} of {len(states)} are): "
            f"`{PROG} shards up{_dir_option(args)}` starts {'it' if len(down) == 1 else 'them'} again "
            "on the same port",
        )
    if args.export:
        _print_lines([f"export {DSNS_VARIABLE}={shlex.quote(chr(10).join(cluster.shard_dsns))}"])
    else:
        _print_lines(cluster.shard_dsns)
    return Exit.OK


def run_shards_down(args: argparse.Namespace, secrets: set[str]) -> Exit:
    """``parallel-connection shards down``: stop the servers and delete their data."""
    base = args.dir or default_base_dir()
    cluster = _attach(args.dir)
    if cluster is None:
        _say(f"no shards are up in {base}: nothing to do")
        return Exit.OK
    try:
        cluster.remove()
    except (RuntimeError, OSError) as exc:
        raise Failure(Exit.LOCAL_SHARDS, _one_line(exc)) from None
    servers = len(cluster.servers)
    what = f"{servers} shards" if servers == cluster.n_shards else f"{servers} servers"
    _say(f"stopped {what} and removed their data from {base}")
    return Exit.OK


def _attach(folder: Path | None) -> LocalCluster | None:
    base = folder or default_base_dir()
    if not (base / "cluster.json").exists():
        return None
    try:
        return LocalCluster.attach(base)
    except (RuntimeError, OSError, ValueError, KeyError, TypeError) as exc:
        raise Failure(Exit.LOCAL_SHARDS, f"cannot read {base / 'cluster.json'}: {exc}") from None


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _not_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {number}")
    return number


# -- output ---------------------------------------------------------------------


def _print_lines(lines: Iterable[str]) -> None:
    for line in lines:
        print(line)
    sys.stdout.flush()


def _say(message: str, secrets: Iterable[str] = ()) -> None:
    """One line on stderr, in the command line's words, without any password."""
    line = " ".join(cli_words(redact(message, secrets)).split())
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def _toml_table(match: re.Match[str]) -> str:
    name = match.group("name")
    key = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'
    return f'[sharded.{key}] with key = "COLUMN" in a --placement FILE'


_CLI_WORDS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r'cursor\(merge="union"\)'), "--union"),
    (
        re.compile(
            r"\(on each shard's own connection, pdb\.connections\[i\], a write touches that shard only\)"
        ),
        "(given only one shard's --dsn, a write touches that shard only)",
    ),
    (
        re.compile(r"(?:the shard's own|one shard's) connection(?: \(pdb\.connections\[i\]\))?"),
        "one shard alone (give only its --dsn)",
    ),
    (re.compile(r"Placement\(sharded=\{'(?P<name>[^']+)': (?:'key_column'|key)\}\)"), _toml_table),
    (
        re.compile(
            r"declare it in Placement\(sharded=\{\.\.\.\}\) or Placement\(copied=\[\.\.\.\]\) "
            r'\(or unknown="sharded" to read'
        ),
        "declare it in the --placement FILE (a [sharded.NAME] table with its key, or in copied = [...]) "
        '(or unknown = "sharded" there to read',
    ),
    (re.compile(r"connect\(\.\.\., moved_rows=N\) or pdb\.moved_rows = N"), "--moved-rows N"),
    (
        re.compile(r"can't execute COPY TO: use the copy_to\(\) method instead \(or copy_expert\(\)\)"),
        "query does not run COPY ... TO STDOUT: SELECT the rows instead (--format csv writes CSV)",
    ),
    (
        re.compile(r"can't execute COPY FROM: use the copy_from\(\) method instead \(or copy_expert\(\)\)"),
        "query does not run COPY ... FROM STDIN: load the rows with INSERT instead",
    ),
)
"""Python-worded hints of the library (and psycopg2) and how the command line says them."""


def cli_words(message: str) -> str:
    """``message`` with the library's Python-worded hints said as this command line's options."""
    for pattern, words in _CLI_WORDS:
        message = pattern.sub(words, message)
    return message


def _env_secrets() -> set[str]:
    password = os.environ.get("PGPASSWORD")
    return {password} if password else set()


def _silence_stdout() -> None:
    """After a closed pipe, keep Python from complaining while it flushes stdout at exit."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt
