"""Every Python and console code block in README.rst runs, in order, against throwaway shards.

In a console block, each ``$ parallel-connection ...`` line runs (its stdout
on a terminal, as in the reader's shell) and every output line the block
shows must appear in what it printed: ``...`` inside a line stands for any
text, and a line of just ``...`` for lines left out. A shown error line
(``parallel-connection: SQL error: ...``) means the command must fail with
that class's exit code; otherwise it must succeed. ``$ export
NAME="$(parallel-connection ...)"`` sets NAME for the lines that follow.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runner import SCRIPT, cli_env, run, run_on_terminal

from parallel_connection import cli

README = Path(__file__).resolve().parent.parent / "README.rst"

_BLOCK = re.compile(r"^\.\. code-block:: (\w+)\n\n((?:(?:[ \t]+.*)?\n)+)", re.MULTILINE)


def readme_blocks(language: str) -> list[tuple[int, str]]:
    """(line number, code) of every ``code-block`` of ``language`` in README.rst."""
    text = README.read_text()
    blocks = []
    for match in _BLOCK.finditer(text):
        if match.group(1) == language:
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((line, textwrap.dedent(match.group(2)).strip("\n") + "\n"))
    return blocks


def test_readme_has_python_examples():
    assert len(readme_blocks("python")) >= 3


def test_readme_python_blocks_run(sample):
    namespace: dict[str, object] = {"dsns": list(sample.shard_dsns)}
    for line, code in readme_blocks("python"):
        try:
            exec(compile(code, f"README.rst:{line}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"README.rst code block at line {line} failed: {exc!r}")


# -- console blocks ----------------------------------------------------------------

_PROMPT = "$ "
_EXPORT = re.compile(r'^export (\w+)="\$\((parallel-connection .*)\)"$')
_ERROR = re.compile(r"^parallel-connection: ([^:]+): ")


def console_commands(block: str) -> Iterator[tuple[str, list[str]]]:
    """(command, the output lines shown under it) for each ``$`` line of a console block."""
    command: str | None = None
    shown: list[str] = []
    for line in block.splitlines():
        if line.startswith(_PROMPT):
            if command is not None:
                yield command, shown
            command, shown = line[len(_PROMPT) :], []
        elif line.strip() and line.strip() != "...":
            shown.append(line.rstrip())
    if command is not None:
        yield command, shown


def line_matches(shown: str, printed: str) -> bool:
    """Whether a printed line is the shown one, ``...`` standing for any text."""
    pattern = ".*".join(re.escape(part) for part in shown.split("..."))
    return re.fullmatch(pattern, printed.rstrip()) is not None


def expected_exit(shown: list[str]) -> int:
    labels = {label: code for code, label in cli._LABELS.items()}
    for line in shown:
        match = _ERROR.match(line)
        if match and match.group(1) in labels:
            return labels[match.group(1)]
    return 0


def test_readme_has_console_examples():
    commands = [c for _, block in readme_blocks("console") for c, _ in console_commands(block)]
    assert any(c.startswith("parallel-connection query") for c in commands)
    assert any(c.startswith("parallel-connection shards up") for c in commands)


@pytest.fixture
def shards_dir() -> Iterator[Path]:
    """Where the README's ``shards up`` puts its servers; they are stopped afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="parallel_connection_readme_"))
    folder.chmod(0o755)  # reachable by the postgres user when the tests run as root
    yield folder / "shards"
    run(["shards", "down", "--dir", str(folder / "shards")], env=cli_env())
    shutil.rmtree(folder, ignore_errors=True)


def test_readme_console_blocks_run(sample, shards_dir):
    env = cli_env(sample.shard_dsns, PARALLEL_CONNECTION_SHARDS_DIR=str(shards_dir))
    for line, block in readme_blocks("console"):
        for command, shown in console_commands(block):
            where = f"README.rst:{line}: $ {command}"
            export = _EXPORT.match(command)
            if export:
                ran = run(shlex.split(export.group(2))[1:], env=env, argv0=[str(SCRIPT)])
                assert ran.returncode == 0, f"{where}\n{ran.stderr}"
                env[export.group(1)] = ran.stdout.rstrip("\n")
                continue
            argv = shlex.split(command)
            assert argv[0] == "parallel-connection", f"{where}: only parallel-connection lines can run"
            ran = run_on_terminal(argv[1:], env=env, argv0=[str(SCRIPT)])
            printed = ran.stdout.splitlines() + ran.stderr.splitlines()
            assert ran.returncode == expected_exit(shown), f"{where}\n{ran.stdout}{ran.stderr}"
            for want in shown:
                assert any(line_matches(want, got) for got in printed), (
                    f"{where}\nshown:   {want}\nprinted:\n" + "\n".join(printed)
                )
