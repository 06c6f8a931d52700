"""Run the command line as a user would: a subprocess, optionally on a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from parallel_connection.cli import DSNS_VARIABLE

MODULE = [sys.executable, "-m", "parallel_connection"]
SCRIPT = Path(sys.executable).parent / "parallel-connection"


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cli_env(dsns: Sequence[str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a fresh shell: the shards in PARALLEL_CONNECTION_DSNS, nothing else of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARALLEL_CONNECTION", "PG"))}
    if dsns is not None:
        env[DSNS_VARIABLE] = "\n".join(dsns)
    env.update(extra)
    return env


def run(
    args: Sequence[str],
    *,
    dsns: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    argv0: Sequence[str] = MODULE,
    timeout: float = 120,
) -> Ran:
    """Run ``parallel-connection ARGS`` with stdout and stderr captured."""
    result = subprocess.run(
        [*argv0, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env if env is not None else cli_env(dsns),
        timeout=timeout,
    )
    return Ran(result.returncode, result.stdout, result.stderr)


def run_on_terminal(
    args: Sequence[str], *, env: dict[str, str], argv0: Sequence[str] = MODULE, timeout: float = 120
) -> Ran:
    """Like :func:`run`, with stdout on a pseudo-terminal (as in an interactive shell)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*argv0, *args], stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.PIPE, env=env
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    returncode = proc.wait(timeout=timeout)
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    stdout = b"".join(chunks).decode().replace("\r\n", "\n")
    return Ran(returncode, stdout, stderr)
