"""Every Python code block in README.rst runs, in order, against the throwaway shards."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

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
