"""Run every benchmark module (``benchmarks/bench_*.py``), or the ones named.

    python -m benchmarks            # all
    python -m benchmarks core merge # bench_core.py and bench_merge.py

Each module has ``run(env: BenchEnv) -> None``; the servers are started once
for the whole run and stopped at the end.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

from parallel_connection.local import LocalCluster

from .common import BenchEnv


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(
        m.name[len("bench_") :] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_")
    )
    chosen = argv or names
    unknown = set(chosen) - set(names)
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(sorted(unknown))}; have: {', '.join(names)}", file=sys.stderr
        )
        return 2
    with LocalCluster(3, reference=True) as cluster:
        env = BenchEnv(cluster)
        for name in chosen:
            print(f"== {name}", flush=True)
            importlib.import_module(f"benchmarks.bench_{name}").run(env)
    missed = [r for r in env.results if r.met is False]
    print(f"\n{len(env.results)} figures, {len(missed)} target(s) missed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
