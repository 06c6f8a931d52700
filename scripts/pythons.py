"""Test the package on every Python its classifiers name, besides the one ``make test`` uses.

For each Python below: a throwaway virtualenv under ``.venv-pythons/``, the wheel built from a
copy of this tree installed into it with its test needs, then a subset of the suite on real
servers (the tests of that copy, against the installed wheel, not the source tree):

* 3.10 installs the dependency floors exactly: every ``>=`` of ``install_requires`` and of the
  ``binary`` extra, pinned to ``==``, so the floors in setup.cfg are the ones proven to work;
* 3.12 first installs the package without a driver (``import parallel_connection`` must fail
  and say what to install), then the ``source`` extra: psycopg2 built from source against
  this machine's libpq (needs pg_config and the libpq headers), and no psycopg2-binary;
* 3.13 installs the newest releases with the ``binary`` extra.

``make test`` covers its own Python (3.11 here); a classified Python that none of these
covers is a failure, and so is a missing interpreter. Standard library only: any Python 3.10+
runs it (``make pythons``). The virtualenvs are removed after a pass and kept after a failure.
"""

from __future__ import annotations

import concurrent.futures
import configparser
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".venv-pythons"
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"  # make test's virtualenv

# The parser (pglast), psycopg2, merges, writes, range jobs (tqdm bars), the coordinator stage,
# two-phase commit, the README's examples (placement TOML: tomli on 3.10), the packaging checks,
# columnar results (pyarrow and the ADBC driver).
TESTS = [
    "tests/test_plan.py",
    "tests/test_connection.py",
    "tests/test_merge.py",
    "tests/test_writes.py",
    "tests/test_ranges.py",
    "tests/test_coordinator.py",
    "tests/test_two_phase.py",
    "tests/test_readme.py",
    "tests/test_packaging.py",
    "tests/test_arrow.py",
]
DRIVER_DISTS = ("psycopg2", "psycopg2-binary")
INSTALL_TIMEOUT = 900
TEST_TIMEOUT = 900


@dataclass(frozen=True)
class Target:
    version: str
    driver: str  # the extra that brings psycopg2: "binary" or "source"
    floors: bool = False

    def describe(self) -> str:
        return f"{self.driver} driver" + (
            ", the dependency floors" if self.floors else ", the newest releases"
        )


TARGETS = [
    Target("3.10", "binary", floors=True),
    Target("3.12", "source"),
    Target("3.13", "binary"),
]


class Failed(Exception):
    pass


def say(text: str) -> None:
    print(f"pythons: {text}", flush=True)


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "setup.cfg")
    return config


def lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


def classified_versions(config: configparser.ConfigParser) -> set[str]:
    found = (
        re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c)
        for c in lines(config["metadata"]["classifiers"])
    )
    return {m.group(1) for m in found if m}


_FLOOR = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][^\s,;]*)\s*(;.*)?")


def floor_pins(config: configparser.ConfigParser) -> list[str]:
    """``name==floor; marker`` for every requirement of install_requires and of the binary extra."""
    requirements = lines(config["options"]["install_requires"]) + lines(
        config["options.extras_require"]["binary"]
    )
    pins = []
    for requirement in requirements:
        match = _FLOOR.fullmatch(requirement)
        if not match:
            raise Failed(f"setup.cfg: {requirement!r} has no plain '>=' floor to test")
        name, floor, marker = match.groups()
        pins.append(f"{name}=={floor}{marker or ''}")
    return pins


def test_requirements(config: configparser.ConfigParser) -> list[str]:
    """The test extra without the binary driver (the source venv must not get psycopg2-binary)."""
    return [r for r in lines(config["options.extras_require"]["test"]) if not r.startswith(DRIVER_DISTS)]


def find_python(version: str) -> str:
    candidates = sorted(
        glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")),
        key=lambda p: [int(x) for x in re.findall(r"\d+", Path(p).parent.parent.name)],
        reverse=True,
    )
    on_path = shutil.which(f"python{version}")
    for candidate in [*candidates, *([on_path] if on_path else [])]:
        ran = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if ran.returncode == 0 and ran.stdout.strip() == version:
            return candidate
    raise Failed(
        f"no Python {version}: looked for ~/.pyenv/versions/{version}.*/bin/python and python{version} "
        f"on PATH. setup.cfg classifies the package for Python {version}, so it must be tested there: "
        f"install it (e.g. `pyenv install {version}`)"
    )


def run(argv: list[str], log: Path, *, cwd: Path | None = None, timeout: float = INSTALL_TIMEOUT) -> None:
    """Run a step with its output in ``log``; on failure show the log's tail and stop."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        try:
            ran = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failed(f"{' '.join(argv)} took longer than {timeout:.0f} s; see {log}") from None
    if ran.returncode != 0:
        tail = log.read_text().splitlines()[-40:]
        raise Failed(f"{' '.join(argv)} exited {ran.returncode}; the end of {log}:\n" + "\n".join(tail))


def output(python: Path, code: str, *, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


def run_tests(python: Path, src: Path, cwd: Path) -> None:
    """The suite's subset, in the foreground; SIGTERM (not SIGKILL) on a timeout, so its servers stop."""
    argv = [str(python), "-m", "pytest", "-c", str(src / "pyproject.toml"), "--rootdir", str(src)]
    argv += ["-p", "no:cacheprovider", "-q", *(str(src / t) for t in TESTS)]
    tests = subprocess.Popen(argv, cwd=cwd)
    try:
        code = tests.wait(timeout=TEST_TIMEOUT)
    except subprocess.TimeoutExpired:
        tests.send_signal(signal.SIGTERM)
        try:
            tests.wait(timeout=60)
        except subprocess.TimeoutExpired:
            tests.kill()
            tests.wait()
        raise Failed(f"the tests took longer than {TEST_TIMEOUT} s") from None
    except BaseException:
        tests.send_signal(signal.SIGTERM)
        tests.wait(timeout=60)
        raise
    if code != 0:
        raise Failed(f"the tests failed (pytest exited {code})")


def installed_versions(python: Path, names: list[str], cwd: Path) -> dict[str, str | None]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return None\n"
        f"print(json.dumps({{n: v(n) for n in {names!r}}}))"
    )
    ran = output(python, code, cwd=cwd)
    if ran.returncode != 0:
        raise Failed(f"could not read installed versions: {ran.stderr}")
    return dict(json.loads(ran.stdout))


def check_floors(target: Target, python: Path, pins: list[str], cwd: Path) -> str:
    wanted = {}
    for pin in pins:
        requirement, _, marker = pin.partition(";")
        name, version = requirement.split("==")
        if marker:
            below = re.fullmatch(r"""\s*python_version\s*<\s*["'](\d+)\.(\d+)["']\s*""", marker)
            if not below:
                raise Failed(f"setup.cfg: cannot tell where the marker of {pin!r} applies")
            if python_version(python) >= (int(below.group(1)), int(below.group(2))):
                continue
        wanted[name] = version
    got = installed_versions(python, list(wanted), cwd)
    wrong = {n: (v, got[n]) for n, v in wanted.items() if not same_version(got[n], v)}
    if wrong:
        raise Failed(f"not the floors: {wrong} (wanted, installed)")
    return f"{target.version}: floors installed: " + ", ".join(f"{n}=={got[n]}" for n in wanted)


def same_version(installed: str | None, wanted: str) -> bool:
    """Whether two release numbers are the same one (4.60 is 4.60.0)."""

    def key(v: str) -> list[int]:
        parts = [int(x) for x in v.split(".")]
        while parts and parts[-1] == 0:
            parts.pop()
        return parts

    return installed is not None and key(installed) == key(wanted)


def python_version(python: Path) -> tuple[int, int]:
    ran = output(python, "import sys; print('%d %d' % sys.version_info[:2])", cwd=Path.cwd())
    major, minor = ran.stdout.split()
    return int(major), int(minor)


def check_no_driver_message(target: Target, python: Path, cwd: Path) -> str:
    ran = output(python, "import parallel_connection", cwd=cwd)
    if ran.returncode == 0 or "pip install 'parallel_connection[binary]'" not in ran.stderr:
        raise Failed(
            f"without psycopg2, import parallel_connection did not say what to install:\n{ran.stderr}"
        )
    return f"{target.version}: without a driver: " + ran.stderr.strip().splitlines()[-1]


def check_source_driver(target: Target, python: Path, cwd: Path) -> str:
    got = installed_versions(python, list(DRIVER_DISTS), cwd)
    if got["psycopg2"] is None or got["psycopg2-binary"] is not None:
        raise Failed(f"the source extra should install psycopg2 and not psycopg2-binary; installed: {got}")
    said = subprocess.run(["pg_config", "--version"], capture_output=True, text=True).stdout
    version = re.match(r"PostgreSQL (\d+)\.(\d+)", said)  # "PostgreSQL 15.18 (Debian 15.18-0+deb12u1)"
    if not version:
        raise Failed(f"pg_config --version said {said!r}: no PostgreSQL version")
    libpq = f"{version.group(1)}.{version.group(2)}"
    expected = int(version.group(1)) * 10000 + int(version.group(2))
    ran = output(python, "import psycopg2; print(psycopg2.__libpq_version__, psycopg2.__file__)", cwd=cwd)
    if ran.returncode != 0:
        raise Failed(f"psycopg2 built from source does not import:\n{ran.stderr}")
    built_with, where = ran.stdout.split()
    if int(built_with) != expected:
        raise Failed(f"psycopg2 was built with libpq {built_with}, not this machine's {libpq} ({expected})")
    return f"{target.version}: psycopg2 {got['psycopg2']} built from source against libpq {libpq}: {where}"


def build_wheel(python: str, src: Path, dist: Path, log: Path) -> Path:
    ignore = shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", ".hypothesis"
    )
    shutil.copytree(ROOT, src, ignore=ignore)
    run([python, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), str(src)], log)
    (wheel,) = dist.glob("parallel_connection-*.whl")
    return wheel


def prepare(
    target: Target, interpreter: str, wheel: Path, config: configparser.ConfigParser
) -> tuple[Path, list[str]]:
    """The target's virtualenv with the wheel and its test needs: its python, and what was checked."""
    venv = WORK / f"py{target.version}"
    log = WORK / f"py{target.version}.log"
    cwd = WORK  # not the tree: nothing imports the source
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    run([interpreter, "-m", "venv", str(venv)], log)
    run([*pip, "--upgrade", "pip"], log)
    if target.driver == "source":
        if shutil.which("pg_config") is None:
            raise Failed(
                "the source extra needs pg_config and the libpq headers (Debian: apt-get install libpq-dev)"
            )
        run([*pip, str(wheel)], log)
        notes = [check_no_driver_message(target, python, cwd)]
        run([*pip, f"{wheel}[source]", *test_requirements(config)], log)
        notes.append(check_source_driver(target, python, cwd))
    elif target.floors:
        pins = floor_pins(config)
        constraints = WORK / "floors.txt"
        constraints.write_text("\n".join(pins) + "\n")
        run([*pip, "--constraint", str(constraints), f"{wheel}[binary,test]"], log)
        notes = [check_floors(target, python, pins, cwd)]
    else:
        run([*pip, f"{wheel}[binary,test]"], log)
        got = installed_versions(python, ["psycopg2-binary", "pglast", "tqdm"], cwd)
        notes = [f"{target.version}: newest releases: " + ", ".join(f"{n}=={v}" for n, v in got.items())]
    return python, notes


def main() -> int:
    began = time.monotonic()
    config = setup_cfg()
    classified = classified_versions(config)
    main_version = "{}.{}".format(*python_version(MAIN_PYTHON)) if MAIN_PYTHON.exists() else None
    covered = {t.version for t in TARGETS} | ({main_version} if main_version else set())
    try:
        if classified != covered:
            raise Failed(
                f"setup.cfg classifies Pythons {sorted(classified)}, but this script and make test "
                f"({MAIN_PYTHON}: {main_version or 'missing, run make test first'}) test {sorted(covered)}"
            )
        interpreters = {t.version: find_python(t.version) for t in TARGETS}
        shutil.rmtree(WORK, ignore_errors=True)
        WORK.mkdir()
        src = WORK / "src"
        wheel = build_wheel(interpreters[TARGETS[0].version], src, WORK / "dist", WORK / "build.log")
        say(f"built {wheel.name}; installing into a virtualenv for each of {', '.join(interpreters)}")
        for target in TARGETS:
            say(f"{target.version}: {interpreters[target.version]}, {target.describe()}")
        # The installs (mostly downloads) run side by side; the tests, one Python at a time.
        failed = []
        with concurrent.futures.ThreadPoolExecutor(len(TARGETS)) as pool:
            ready = {t: pool.submit(prepare, t, interpreters[t.version], wheel, config) for t in TARGETS}
            for target in TARGETS:
                try:
                    python, notes = ready[target].result()
                    for note in notes:
                        say(note)
                    started = time.monotonic()
                    say(f"{target.version}: testing ({target.describe()})")
                    run_tests(python, src, WORK)
                    say(f"{target.version}: passed in {time.monotonic() - started:.0f} s")
                except Failed as failure:
                    say(f"{target.version}: FAILED: {failure}")
                    failed.append(target.version)
        if failed:
            raise Failed(f"Python {', '.join(failed)}; virtualenvs and logs kept in {WORK}")
    except Failed as failure:
        say(f"FAILED: {failure}")
        return 1
    shutil.rmtree(WORK, ignore_errors=True)
    took = time.monotonic() - began
    say(f"Pythons {', '.join(sorted(covered))} pass ({main_version} by make test), in {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
