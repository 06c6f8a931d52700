"""The package's metadata as built, and the error a user gets when no psycopg2 is installed."""

from __future__ import annotations

import email.message
import email.parser
import importlib.util
import re
import shutil
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> email.message.Message:
    """METADATA as setuptools builds it (PEP 517's metadata hook) from a copy of the tree: no network."""
    tree = tmp_path_factory.mktemp("tree")
    for name in ("setup.cfg", "pyproject.toml", "README.rst", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(
        ROOT / "parallel_connection",
        tree / "parallel_connection",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    out = tmp_path_factory.mktemp("metadata")
    hook = (
        f"from setuptools import build_meta; print(build_meta.prepare_metadata_for_build_wheel({str(out)!r}))"
    )
    built = subprocess.run(
        [sys.executable, "-c", hook], cwd=tree, capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stderr
    dist_info = built.stdout.strip().splitlines()[-1]
    return email.parser.Parser().parsestr((out / dist_info / "METADATA").read_text())


def requirements(metadata: email.message.Message) -> dict[str | None, list[str]]:
    """Requires-Dist by extra (``None``: the base requirements), the extra marker taken off."""
    by_extra: dict[str | None, list[str]] = defaultdict(list)
    for requirement in metadata.get_all("Requires-Dist") or []:
        spec, _, marker = requirement.partition(";")
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        by_extra[extra.group(1) if extra else None].append(spec.strip())
    return by_extra


def names(specs: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", spec, maxsplit=1)[0].lower() for spec in specs}


def test_no_driver_is_a_base_requirement(metadata):
    base = names(requirements(metadata)[None])
    assert "pglast" in base
    assert not base & {"psycopg2", "psycopg2-binary"}


def test_binary_and_source_extras_name_one_driver_each(metadata):
    by_extra = requirements(metadata)
    assert by_extra["binary"] == ["psycopg2-binary>=2.9.5"]
    assert by_extra["source"] == ["psycopg2>=2.9.5"]


def test_test_extra_brings_the_binary_driver_so_make_works_on_a_fresh_machine(metadata):
    test = names(requirements(metadata)["test"])
    assert "psycopg2-binary" in test
    assert "psycopg2" not in test


def test_classifiers_name_the_supported_pythons_and_the_license(metadata):
    classifiers = metadata.get_all("Classifier") or []
    versions = {
        c.rsplit(" ", 1)[1]
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert versions == {"3.10", "3.11", "3.12", "3.13"}
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    assert metadata["Requires-Python"] == ">=3.10"
    assert "License :: OSI Approved :: MIT License" in classifiers
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_classified_pythons_are_the_ones_the_pythons_script_and_make_test_cover(metadata):
    spec = importlib.util.spec_from_file_location("pythons_script", ROOT / "scripts" / "pythons.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up
    try:
        spec.loader.exec_module(script)
    finally:
        del sys.modules[spec.name]
    classifiers = metadata.get_all("Classifier") or []
    versions = {
        c.rsplit(" ", 1)[1]
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert versions - {t.version for t in script.TARGETS} == {"3.11"}  # make test's own
    assert [t.version for t in script.TARGETS if t.floors] == ["3.10"]  # the oldest gets the floors


HIDE = """
import sys

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "psycopg2" or name.startswith("psycopg2."):
            raise {error}
        return None

sys.meta_path.insert(0, Hide())
import parallel_connection
"""


def import_without_psycopg2(error: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(HIDE.format(error=error))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_without_psycopg2_says_what_to_install():
    ran = import_without_psycopg2('ModuleNotFoundError(f"No module named {name!r}", name=name)')
    assert ran.returncode != 0
    last = ran.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: parallel_connection needs psycopg2: ")
    assert "pip install 'parallel_connection[binary]'" in last
    assert "'parallel_connection[source]'" in last
    assert "pg_config" in last


def test_a_psycopg2_that_fails_to_load_keeps_its_own_error():
    ran = import_without_psycopg2('ImportError("libpq.so.5: cannot open shared object file", name=name)')
    assert ran.returncode != 0
    assert "libpq.so.5: cannot open shared object file" in ran.stderr
    assert "parallel_connection[binary]" not in ran.stderr
