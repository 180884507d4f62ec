"""Cache operation latency: surpdb beside dict.get, py-lmdb, Django's LocMemCache, pymemcache on
memcached and redis-py on redis-server, in one run, as a table of ns/op with ratios.

    python benchmarks/bench_cache.py [--json out.json] [--quick]

memcached and redis-server are started by this script on loopback (Debian packages
memcached and redis-server); an anchor whose server or Python package is missing is reported
as skipped. Not part of the test run: machines are noisy, so nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from servers import free_port, memcached_args, redis_args, running

import surpdb

VALUE_100 = b"v" * 100
LINK = {
    "url": "https://pypi.org/project/surpdb/0.1.0/",
    "title": "surpdb: a shared-memory cache and record store",
    "source": "pypi",
    "score": 12.5,
    "tags": ["cache", "shm", "rust"],
}


def timeit(fn: Callable[[], object], n: int, repeat: int = 5) -> float:
    """Median over `repeat` runs of the mean ns per call of `fn` over `n` calls."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter_ns() - t0) / n)
    return statistics.median(runs)


def timeit_loop(loop: Callable[[int], object], n: int, repeat: int = 5) -> float:
    """Like timeit for a function that runs `n` operations itself (less loop overhead)."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        loop(n)
        runs.append((time.perf_counter_ns() - t0) / n)
    return statistics.median(runs)


def bench_surpdb(n: int, results: dict[str, dict[str, float]]) -> None:
    d = tempfile.mkdtemp(prefix="surpdb-bench-")
    try:
        with surpdb.Server(d, size="256MiB"):
            c = surpdb.connect(d)
            c.set("hot", VALUE_100)
            c.set("link", LINK)
            get = c.get
            r = results.setdefault("surpdb", {})
            r["get 100 B hit"] = timeit(lambda: get("hot"), n)
            r["get miss"] = timeit(lambda: get("absent"), n)
            r["get small dict"] = timeit(lambda: get("link"), n)
            s = c.set
            r["set acked"] = timeit(lambda: s("w", VALUE_100), n // 10)

            def ff(k: int) -> None:
                for _ in range(k):
                    s("w", VALUE_100, wait=False)
                c.flush()

            r["set fire-and-forget"] = timeit_loop(ff, n)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def bench_dict(n: int, results: dict[str, dict[str, float]]) -> None:
    d = {"hot": VALUE_100, "link": LINK}
    get = d.get
    r = results.setdefault("dict", {})
    r["get 100 B hit"] = timeit(lambda: get("hot"), n)
    r["get miss"] = timeit(lambda: get("absent"), n)
    r["get small dict"] = timeit(lambda: get("link"), n)

    def setter() -> None:
        d["w"] = VALUE_100

    r["set acked"] = timeit(setter, n)


def bench_lmdb(n: int, results: dict[str, dict[str, float]]) -> None:
    import lmdb
    import msgpack

    d = tempfile.mkdtemp(prefix="lmdb-bench-")
    try:
        env = lmdb.open(d, map_size=1 << 30, sync=False, metasync=False)
        with env.begin(write=True) as txn:
            txn.put(b"hot", VALUE_100)
            txn.put(b"link", msgpack.packb(LINK))
        r = results.setdefault("py-lmdb", {})
        with env.begin(buffers=False) as txn:
            get = txn.get
            r["get 100 B hit"] = timeit(lambda: get(b"hot"), n)
            r["get miss"] = timeit(lambda: get(b"absent"), n)
            unpack = msgpack.unpackb
            r["get small dict"] = timeit(lambda: unpack(get(b"link")), n)

        def put() -> None:
            with env.begin(write=True) as t:
                t.put(b"w", VALUE_100)

        r["set acked"] = timeit(put, n // 10)
        env.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def bench_locmem(n: int, results: dict[str, dict[str, float]]) -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        )
        django.setup()
    from django.core.cache import cache

    cache.set("hot", VALUE_100, None)
    cache.set("link", LINK, None)
    r = results.setdefault("Django LocMemCache", {})
    r["get 100 B hit"] = timeit(lambda: cache.get("hot"), n)
    r["get miss"] = timeit(lambda: cache.get("absent"), n)
    r["get small dict"] = timeit(lambda: cache.get("link"), n)
    r["set acked"] = timeit(lambda: cache.set("w", VALUE_100, None), n // 10)


def bench_memcached(n: int, results: dict[str, dict[str, float]]) -> None:
    from pymemcache.client.base import Client
    from pymemcache.serde import pickle_serde

    port = free_port()
    with running(memcached_args(port), port):
        c = Client(("127.0.0.1", port), serde=pickle_serde, no_delay=True)
        c.set("hot", VALUE_100)
        c.set("link", LINK)
        r = results.setdefault("pymemcache+memcached", {})
        n = max(n // 20, 1000)
        r["get 100 B hit"] = timeit(lambda: c.get("hot"), n)
        r["get miss"] = timeit(lambda: c.get("absent"), n)
        r["get small dict"] = timeit(lambda: c.get("link"), n)
        r["set acked"] = timeit(lambda: c.set("w", VALUE_100), n)
        r["set fire-and-forget"] = timeit(lambda: c.set("w", VALUE_100, noreply=True), n)


def bench_redis(n: int, results: dict[str, dict[str, float]]) -> None:
    import pickle

    import redis

    port = free_port()
    with running(redis_args(port, "--appendonly", "no"), port):
        c = redis.Redis(port=port)
        c.set("hot", VALUE_100)
        c.set("link", pickle.dumps(LINK))
        r = results.setdefault("redis-py+redis", {})
        n = max(n // 20, 1000)
        r["get 100 B hit"] = timeit(lambda: c.get("hot"), n)
        r["get miss"] = timeit(lambda: c.get("absent"), n)
        r["get small dict"] = timeit(lambda: pickle.loads(c.get("link")), n)
        r["set acked"] = timeit(lambda: c.set("w", VALUE_100), n)

        def pipelined(k: int) -> None:
            p = c.pipeline(transaction=False)
            for _ in range(k):
                p.set("w", VALUE_100)
            p.execute()

        r["set fire-and-forget"] = timeit_loop(pipelined, n)


OPS = ["get 100 B hit", "get miss", "get small dict", "set acked", "set fire-and-forget"]


def table(results: dict[str, dict[str, float]], errors: dict[str, str]) -> str:
    base = results.get("surpdb", {})
    names = list(results)
    lines = [
        "ns/op (median of 5 runs); x = that system's time / surpdb's (higher: surpdb faster)",
        "",
        f"{'operation':<22}" + "".join(f"{name:>24}" for name in names),
    ]
    for op in OPS:
        row = f"{op:<22}"
        for name in names:
            v = results[name].get(op)
            if v is None:
                row += f"{'-':>24}"
            elif name == "surpdb" or op not in base:
                row += f"{v:>24.0f}"
            else:
                row += f"{f'{v:.0f} ({v / base[op]:.2f}x)':>24}"
        lines.append(row)
    for name, err in errors.items():
        lines.append(f"skipped {name}: {err}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    a = ap.parse_args()
    n = 20_000 if a.quick else 200_000
    results: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    for name, fn in [
        ("surpdb", bench_surpdb),
        ("dict", bench_dict),
        ("py-lmdb", bench_lmdb),
        ("Django LocMemCache", bench_locmem),
        ("pymemcache+memcached", bench_memcached),
        ("redis-py+redis", bench_redis),
    ]:
        try:
            fn(n, results)
        except Exception as e:  # noqa: BLE001 - report and go on with the other anchors
            errors[name] = f"{type(e).__name__}: {e}"
    py = f"{platform.python_implementation()} {platform.python_version()}"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {py}"
    print(f"machine: {machine}")
    print(table(results, errors))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine, "results": results, "skipped": errors}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
