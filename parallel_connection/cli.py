"""The ``parallel-connection`` command line, thin over the library.

``query`` prints a statement's merged rows; ``shards`` starts, lists and
stops throwaway local shards. Every failure is one line on stderr and an exit
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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import psycopg2

from . import __version__
from .connection import ParallelConnection, connect
from .errors import NotSupportedError, dsn_secrets, redact
from .formats import FORMATS, write_rows
from .local import SHARDS_DIR_VARIABLE, LocalCluster, default_base_dir

__all__ = ["DSNS_VARIABLE", "Exit", "main", "parse_dsn_lines"]

PROG = "parallel-connection"
DSNS_VARIABLE = "PARALLEL_CONNECTION_DSNS"

_GLUED = re.compile(r";\s*(?:host|hostaddr|port|dbname|user|service)\s*=|;\s*postgres(?:ql)?://", re.I)
"""Two DSNs joined by ``;`` (another tool's separator): libpq would read them as one."""


class Exit(enum.IntEnum):
    """The command line's exit codes, one per class of failure."""

    OK = 0
    ERROR = 1
    USAGE = 2
    BAD_DSN = 3
    UNREACHABLE = 4
    SQL_ERROR = 5
    NOT_SUPPORTED = 6
    SHARD_FAILED = 7
    LOCAL_SHARDS = 8
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
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_query(commands)
    _add_shards(commands)
    return parser


# -- query ----------------------------------------------------------------------


def _add_query(commands: Any) -> None:
    query = commands.add_parser(
        "query",
        parents=[_connection_options()],
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
    pdb = _connect(dsns, args.connect_timeout, args.timeout)
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


def _connect(dsns: list[str], connect_timeout: float, timeout: float | None) -> ParallelConnection:
    try:
        return connect(dsns, minconn=1, maxconn=1, connect_timeout=connect_timeout, statement_timeout=timeout)
    except psycopg2.ProgrammingError as exc:
        raise Failure(Exit.BAD_DSN, _one_line(exc)) from None
    except psycopg2.Error as exc:
        raise Failure(Exit.UNREACHABLE, _one_line(exc)) from None


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
    up = actions.add_parser("up", parents=[where], help="start the shards and load the sample schema")
    up.add_argument("--shards", type=_positive, default=3, metavar="N", help="how many (default: 3)")
    up.add_argument(
        "--orders",
        type=_positive,
        default=100_000,
        metavar="N",
        help="sample orders, spread over the shards by customer_id (default: 100000)",
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


def run_shards_up(args: argparse.Namespace, secrets: set[str]) -> Exit:
    """``parallel-connection shards up``: start the servers, load the sample, print the DSNs."""
    from .sample import load_sample

    base = args.dir or default_base_dir()
    if (base / "cluster.json").exists():
        raise Failure(Exit.LOCAL_SHARDS, f"shards are already up in {base}; run `{PROG} shards down` first")
    if base.exists() and any(base.iterdir()):
        raise Failure(Exit.LOCAL_SHARDS, f"{base} is not empty: choose another --dir")
    cluster = LocalCluster(args.shards, base_dir=base)
    _say(f"starting {args.shards} shards in {base} ...")
    try:
        cluster.start()
        _say(f"loading the sample schema ({args.orders} orders) ...")
        load_sample(cluster.shard_dsns, orders=args.orders)
    except BaseException as exc:
        cluster.remove()
        if isinstance(exc, (RuntimeError, OSError, psycopg2.Error)):
            raise Failure(Exit.LOCAL_SHARDS, _one_line(exc)) from None
        raise
    _print_lines(cluster.shard_dsns)
    where = f" --dir {shlex.quote(str(args.dir))}" if args.dir else ""
    _say(
        f'ready: export {DSNS_VARIABLE}="$({PROG} shards dsns{where})"; '
        f"stop them with `{PROG} shards down{where}`"
    )
    return Exit.OK


def run_shards_dsns(args: argparse.Namespace, secrets: set[str]) -> Exit:
    """``parallel-connection shards dsns``."""
    cluster = _attach(args.dir)
    if cluster is None:
        raise Failure(Exit.LOCAL_SHARDS, f"no shards are up in {args.dir or default_base_dir()}")
    if not cluster.running():
        raise Failure(
            Exit.LOCAL_SHARDS,
            f"the shards in {cluster.base_dir} are not running: `{PROG} shards down`, then `shards up`",
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
    _say(f"stopped {cluster.n_shards} shards and removed their data from {base}")
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


# -- output ---------------------------------------------------------------------


def _print_lines(lines: Iterable[str]) -> None:
    for line in lines:
        print(line)
    sys.stdout.flush()


def _say(message: str, secrets: Iterable[str] = ()) -> None:
    """One line on stderr, without any password."""
    line = " ".join(redact(message, secrets).split())
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def _env_secrets() -> set[str]:
    password = os.environ.get("PGPASSWORD")
    return {password} if password else set()


def _silence_stdout() -> None:
    """After a closed pipe, keep Python from complaining while it flushes stdout at exit."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt
