"""Routing: point lookups that pin the shard key go to one shard, on 8 shards of their own.

Routed vs sent to every shard vs raw psycopg2 straight to the key's shard, from 8 threads;
then the per-statement overhead of a one-shard lookup, single thread; then the one-shard path
on the run's 3 shards: a routed primary-key lookup and ``SELECT 1`` on a one-shard connection,
each against raw psycopg2 on the same server, interleaved.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg2

import parallel_connection
from parallel_connection.local import LocalCluster
from parallel_connection.placement import Placement

from .common import BenchEnv, best_of, report, run_on_each

SHARDS = 8
THREADS = 8
ROWS = 200_000
SEED = 20240501
RUN_SECONDS = 2.0
ROUNDS = 3
SINGLE_STATEMENTS = 1000
SINGLE_ROUNDS = 9
LOOKUP = "SELECT id, payload, amount FROM bench_items WHERE id = %s"
ROUTED = Placement(sharded={"bench_items": ("id", "modulo")})
EVERYWHERE = Placement(sharded={}, unknown="sharded")

_LOAD = """
DROP TABLE IF EXISTS bench_items;
CREATE TABLE bench_items (id bigint PRIMARY KEY, payload text, amount numeric);
INSERT INTO bench_items
SELECT g, 'item ' || g, ((g * 37) %% 100000) / 100.0
FROM generate_series(1::bigint, %(rows)s) AS g
WHERE g %% %(shards)s = %(shard)s;
"""

Lookup = Callable[[int], Any]


def run(env: BenchEnv) -> None:
    with LocalCluster(SHARDS) as cluster:
        dsns = cluster.shard_dsns
        _load(dsns)
        threaded_lookups(env, dsns)
        statement_overhead(env, dsns)
    one_shard_path(env)


def _load(dsns: Sequence[str]) -> None:
    def load(shard: int) -> None:
        conn = psycopg2.connect(dsns[shard])
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(_LOAD, {"rows": ROWS, "shards": len(dsns), "shard": shard})
                cur.execute("VACUUM ANALYZE bench_items")
        finally:
            conn.close()

    with ThreadPoolExecutor(len(dsns)) as pool:
        list(pool.map(load, range(len(dsns))))


def _ids(stream: int, count: int, *, shard: int | None = None) -> list[int]:
    """Random keys from a fixed seed (``shard``: only keys that shard holds)."""
    rng = random.Random(SEED + stream)
    if shard is None:
        return [rng.randint(1, ROWS) for _ in range(count)]
    top = (ROWS - shard) // SHARDS
    return [rng.randint(0 if shard else 1, top) * SHARDS + shard for _ in range(count)]


def _library(dsns: Sequence[str], placement: Placement) -> Any:
    pdb = parallel_connection.connect(dsns, placement=placement)
    pdb.autocommit = True
    return pdb


def _library_lookup(pdb: Any) -> Lookup:
    cur = pdb.cursor()

    def lookup(key: int) -> Any:
        cur.execute(LOOKUP, (key,))
        return cur.fetchone()

    return lookup


def _raw(dsns: Sequence[str]) -> list[Any]:
    conns = [psycopg2.connect(d) for d in dsns]
    for conn in conns:
        conn.autocommit = True
    return conns


def _raw_lookup(conns: Sequence[Any]) -> Lookup:
    """psycopg2 straight to the shard holding the key (modulo, like the placement)."""
    cursors = [c.cursor() for c in conns]
    n = len(cursors)

    def lookup(key: int) -> Any:
        cur = cursors[key % n]
        cur.execute(LOOKUP, (key,))
        return cur.fetchone()

    return lookup


def _check_routed(pdb: Any, raw: Lookup, keys: Sequence[int]) -> None:
    """The routed lookup answers like the raw one, from the key's shard alone."""
    for key in keys:
        with pdb.cursor() as cur:
            cur.execute(LOOKUP, (key,))
            row = cur.fetchone()
            used = [i for i, c in enumerate(cur.shard_cursors) if c.query is not None]
        assert row == raw(key), (key, row)
        assert used == [key % SHARDS], f"key {key} ran on shards {used}, not only on {key % SHARDS}"


def _throughput(lookups: Sequence[Lookup], keys: Sequence[Sequence[int]]) -> float:
    """Statements per second, ``lookups[t]`` running on thread ``t`` for about RUN_SECONDS."""
    start = threading.Barrier(len(lookups) + 1)
    stop = threading.Event()
    counts = [0] * len(lookups)
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        lookup, mine = lookups[slot], keys[slot]
        start.wait()
        n = 0
        try:
            while not stop.is_set():
                lookup(mine[n % len(mine)])
                n += 1
        except BaseException as exc:
            errors.append(exc)
        counts[slot] = n

    threads = [threading.Thread(target=work, args=(t,)) for t in range(len(lookups))]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(RUN_SECONDS)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def threaded_lookups(env: BenchEnv, dsns: Sequence[str]) -> None:
    keys = [_ids(t, 20_000) for t in range(THREADS)]
    opened: list[Any] = []
    raw_conns: list[Any] = []
    try:
        routed = [_library(dsns, ROUTED) for _ in range(THREADS)]
        opened += routed
        everywhere = [_library(dsns, EVERYWHERE) for _ in range(THREADS)]
        opened += everywhere
        raw = [_raw(dsns) for _ in range(THREADS)]
        raw_conns += [c for conns in raw for c in conns]
        variants = {
            "routed": [_library_lookup(p) for p in routed],
            "everywhere": [_library_lookup(p) for p in everywhere],
            "raw": [_raw_lookup(c) for c in raw],
        }
        _check_routed(routed[0], variants["raw"][0], keys[0][:50])
        for name, lookups in variants.items():  # warm up: plan caches, catalog facts, shard caches
            for lookup, mine in zip(lookups, keys, strict=True):
                for key in mine[:20]:
                    assert lookup(key)[0] == key, (name, key)
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(ROUNDS):
            for name, lookups in variants.items():
                rates[name].append(_throughput(lookups, keys))
    finally:
        for pdb in opened:
            pdb.close()
        for conn in raw_conns:
            conn.close()
    best = {name: max(r) for name, r in rates.items()}
    tag = f"{THREADS} threads x {SHARDS} shards"
    report(env, f"{tag}: routed / sent to every shard", best["routed"] / best["everywhere"], at_least=4)
    report(
        env, f"{tag}: routed / raw psycopg2 on the key's shard", best["routed"] / best["raw"], at_least=0.8
    )
    report(env, f"{tag}: routed, lookups per second", best["routed"], unit="/s")
    report(env, f"{tag}: sent to every shard, lookups per second", best["everywhere"], unit="/s")
    report(env, f"{tag}: raw psycopg2, lookups per second", best["raw"], unit="/s")


def _repeat(statement: Callable[[Any], Any], args: Sequence[Any]) -> Callable[[], None]:
    def many() -> None:
        for arg in args:
            statement(arg)

    return many


def _alternate(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """The best time of each fn over ``rounds``, the fns taking turns."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(best_of(fn, 1))
    return {name: min(t) for name, t in times.items()}


def statement_overhead(env: BenchEnv, dsns: Sequence[str]) -> None:
    shard = 3
    keys = _ids(100, SINGLE_STATEMENTS, shard=shard)
    pdb = _library(dsns, ROUTED)
    conn = _raw([dsns[shard]])[0]
    try:
        lib_lookup = _library_lookup(pdb)
        raw_cur = conn.cursor()

        def raw_lookup(key: int) -> Any:
            raw_cur.execute(LOOKUP, (key,))
            return raw_cur.fetchone()

        def fresh_cursor_lookup(key: int) -> Any:
            with pdb.cursor() as cur:
                cur.execute(LOOKUP, (key,))
                return cur.fetchone()

        lib_cur = pdb.cursor()

        def lib_select1(_: int) -> Any:
            lib_cur.execute("SELECT 1")
            return lib_cur.fetchone()

        def raw_select1(_: int) -> Any:
            raw_cur.execute("SELECT 1")
            return raw_cur.fetchone()

        _check_routed(pdb, raw_lookup, keys[:20])
        for fn in (lib_lookup, raw_lookup, fresh_cursor_lookup, lib_select1, raw_select1):
            for key in keys[:50]:
                fn(key)
        with _one_cpu([conn, pdb.shard_set.connections[shard]]):
            times = _alternate(
                {
                    "lib": _repeat(lib_lookup, keys),
                    "raw": _repeat(raw_lookup, keys),
                    "fresh": _repeat(fresh_cursor_lookup, keys),
                    "lib1": _repeat(lib_select1, keys),
                    "raw1": _repeat(raw_select1, keys),
                },
                SINGLE_ROUNDS,
            )
    finally:
        pdb.close()
        conn.close()
    each = {name: t / SINGLE_STATEMENTS * 1e6 for name, t in times.items()}
    tag = "1-shard point lookup, 1 thread"
    report(env, f"{tag}: library / raw psycopg2 time", each["lib"] / each["raw"], at_most=1.3)
    report(env, f"{tag}: library, us per statement", each["lib"], unit="us")
    report(env, f"{tag}: raw psycopg2, us per statement", each["raw"], unit="us")
    report(env, f"{tag}: new cursor each time / raw", each["fresh"] / each["raw"])
    report(env, "SELECT 1, 1 thread: library / raw psycopg2 time", each["lib1"] / each["raw1"])


POINT_ROWS = 30_000
POINT_BLOCK = 200
"""Statements per timed block; the library's and psycopg2's blocks take turns."""
POINT_ROUNDS = 31
POINT_LOOKUP = "SELECT id, payload, amount FROM bench_point WHERE id = %s"
POINT_PLACEMENT = Placement(sharded={"bench_point": ("id", "modulo")})
_POINT_LOAD = """
DROP TABLE IF EXISTS bench_point;
CREATE TABLE bench_point (id bigint PRIMARY KEY, payload text, amount numeric);
INSERT INTO bench_point
SELECT g, 'item ' || g, ((g * 37) %% 100000) / 100.0
FROM generate_series(1::bigint, %(rows)s) AS g
WHERE g %% %(shards)s = %(shard)s;
"""


@contextlib.contextmanager
def _one_cpu(conns: Sequence[Any]) -> Iterator[bool]:
    """This thread and the backends of ``conns`` on one CPU while the block runs (True when they are).

    A virtual machine charges each wake-up across CPUs: on this one a round trip costs about 30 us
    when the backend runs on the client's CPU and about 100 us when it runs on the other, so two
    connections compared unpinned measure where the scheduler put their backends. Pinned, the
    ratio is what each side costs (as on hardware, where a wake-up across CPUs costs a few us).
    """
    pids = []
    for conn in conns:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pids.append(cur.fetchone()[0])
    was = {pid: os.sched_getaffinity(pid) for pid in [0, *pids]}
    cpu = {min(was[0])}
    pinned = True
    try:
        try:
            for pid in was:
                os.sched_setaffinity(pid, cpu)
        except OSError:  # another user's processes: measured where they run
            pinned = False
        yield pinned
    finally:
        for pid, cpus in was.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, cpus)


def _blocks(fns: dict[str, Callable[[int], Any]], keys: Sequence[int], rounds: int) -> dict[str, list[float]]:
    """Microseconds per statement of each fn, one block of ``keys`` per round, the fns taking turns."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for key in keys:
                fn(key)
            times[name].append((time.perf_counter() - start) / len(keys) * 1e6)
    return times


def _report_pair(env: BenchEnv, tag: str, lib: list[float], raw: list[float], at_most: float | None) -> None:
    """The best blocks' ratio (the target), the spread of the rounds' own ratios, and the times."""
    ratios = sorted(x / y for x, y in zip(lib, raw, strict=True))
    report(env, f"{tag}: library / raw psycopg2 time, best blocks", min(lib) / min(raw), at_most=at_most)
    report(env, f"{tag}: same, median of rounds", statistics.median(ratios))
    report(env, f"{tag}: same, 10th percentile of rounds", ratios[len(ratios) // 10])
    report(env, f"{tag}: same, 90th percentile of rounds", ratios[(9 * len(ratios)) // 10])
    report(env, f"{tag}: library, us per statement (best block)", min(lib), unit="us")
    report(env, f"{tag}: raw psycopg2, us per statement (best block)", min(raw), unit="us")


def one_shard_path(env: BenchEnv) -> None:
    """What a statement one shard answers costs over psycopg2 on that shard, single thread, on the
    caller's thread: a routed primary-key lookup on a 3-shard connection, ``SELECT 1`` on a one-shard
    connection."""
    dsns = env.shard_dsns
    for shard, dsn in enumerate(dsns):
        conn = psycopg2.connect(dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(_POINT_LOAD, {"rows": POINT_ROWS, "shards": len(dsns), "shard": shard})
                cur.execute("VACUUM ANALYZE bench_point")
        finally:
            conn.close()
    shard = 1
    keys = [
        k * len(dsns) + shard
        for k in random.Random(SEED).sample(range(1, POINT_ROWS // len(dsns)), POINT_BLOCK)
    ]
    routed = parallel_connection.connect(dsns, placement=POINT_PLACEMENT)
    routed.autocommit = True
    single = parallel_connection.connect(dsns[:1])
    single.autocommit = True
    raw, raw_single = _raw([dsns[shard], dsns[0]])
    try:
        lib_cur, raw_cur = routed.cursor(), raw.cursor()
        single_cur, raw_single_cur = single.cursor(), raw_single.cursor()

        def lib_lookup(key: int) -> Any:
            lib_cur.execute(POINT_LOOKUP, (key,))
            return lib_cur.fetchone()

        def raw_lookup(key: int) -> Any:
            raw_cur.execute(POINT_LOOKUP, (key,))
            return raw_cur.fetchone()

        def lib_select1(_: int) -> Any:
            single_cur.execute("SELECT 1")
            return single_cur.fetchone()

        def raw_select1(_: int) -> Any:
            raw_single_cur.execute("SELECT 1")
            return raw_single_cur.fetchone()

        for key in keys:  # warm up; the routed lookup answers as the shard does, from that shard alone
            assert lib_lookup(key) == raw_lookup(key), key
            assert lib_select1(key) == raw_select1(key) == (1,)
        used = [i for i, c in enumerate(lib_cur.shard_cursors) if c.query is not None]
        assert used == [shard], f"the lookup ran on shards {used}, not only on {shard}"
        backends = [raw, raw_single, routed.shard_set.connections[shard], single.shard_set.connections[0]]
        with _one_cpu(backends) as pinned:
            lookups = _blocks({"lib": lib_lookup, "raw": raw_lookup}, keys, POINT_ROUNDS)
            selects = _blocks({"lib": lib_select1, "raw": raw_select1}, keys, POINT_ROUNDS)
        print(f"   client thread and servers' backends on one CPU: {pinned}", flush=True)
    finally:
        routed.close()
        single.close()
        raw.close()
        raw_single.close()
        run_on_each(dsns, "DROP TABLE IF EXISTS bench_point")
    _report_pair(env, "routed pk lookup, 3-shard connection", lookups["lib"], lookups["raw"], 1.3)
    _report_pair(env, "SELECT 1, 1-shard connection", selects["lib"], selects["raw"], None)
