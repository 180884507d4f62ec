"""The speed suite: surpdb beside every cache a Python user could pick instead, in one run.

    python benchmarks/speed.py [--links ../shared/data/links-dev.jsonl.xz] [--json out.json]
                               [--quick] [--max-keys 10000000]

Anchors: dict.get (the floor), py-lmdb (one long read txn, and one txn per get/put, no fsync),
Django's LocMemCache, diskcache, pymemcache on memcached and redis-py on redis-server (both
started on loopback by this script from the Debian packages). Sections:

1. latency (ns per call): get 100 B hot; get 100 B random among 100k keys; get a Link dict
   (beside pickle.loads of the same record alone); get_many(100); acknowledged set;
   fire-and-forget set (beside msgpack.packb plus a shared-memory slice assignment); a 90/10
   read/write mix. Median = median over 30 passes of each pass's mean over 1,000 calls
   (a per-call timer costs more than a dict.get); p99 = 99th percentile of 3,000 single
   timed calls minus the timer's own cost.
2. bulk load (records/s): insert_many of Link records beside each anchor's fastest bulk path.
3. processes: random-get throughput with 1 and 2 reader processes; acknowledged-set latency
   with 2 writer processes (each op timed).
4. cost curves (surpdb, py-lmdb beside it): random get at 1k, 100k and 10M keys; acknowledged
   set into a segment 10% and 90% full; re-attach time after SIGKILL against segment size.

Then the issue's targets as ratios, met or missed. Not part of the test run: the machines are
noisy, so nothing here is asserted. Without --links (or if it is missing) Link records are
generated.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pickle
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from records_bench import DEFAULT_LINKS, load_records
from restart_bench import surpdb_restart
from servers import free_port, memcached_args, redis_args, running

import surpdb

VALUE = b"v" * 100
NKEYS = 100_000
PASS = 1_000  # calls per timed pass
pc = time.perf_counter_ns


def key(i: int) -> str:
    return f"key:{i:08d}"


def timer_cost() -> float:
    return statistics.median(-(pc() - pc()) for _ in range(20_000))


TIMER = 0.0


def measure(fn: Callable[[Any], object], args: list, passes: int = 30) -> dict[str, float]:
    """Median of per-pass mean ns per call, and p99 of single timed calls."""
    means = []
    for _ in range(passes):
        t0 = pc()
        for a in args:
            fn(a)
        means.append((pc() - t0) / len(args))
    singles = []
    for _ in range(3):
        for a in args:
            t0 = pc()
            fn(a)
            singles.append(pc() - t0 - TIMER)
    singles.sort()
    return {"median": statistics.median(means), "p99": singles[int(len(singles) * 0.99)]}


def measure_batched(run: Callable[[list], object], args: list, passes: int = 30) -> dict:
    """For fire-and-forget writes: `run(args)` issues them all and flushes; ns per call."""
    means = []
    for _ in range(passes):
        t0 = pc()
        run(args)
        means.append((pc() - t0) / len(args))
    return {"median": statistics.median(means)}


# ------------------------------------------------------------------ stores


class Store:
    """One system, opened in this process. `spec` reopens it in another process."""

    name = ""
    spec: tuple | None = None  # None: in-process only (no reader/writer processes)
    get: Callable
    set: Callable
    get_many: Callable | None = None
    ff: Callable[[list], object] | None = None  # fire-and-forget sets of (key, value)

    def k(self, k: str) -> Any:
        return k

    def put_link(self, k: str, rec: dict) -> None:
        self.set(self.k(k), rec)

    def get_link(self) -> Callable[[Any], object]:
        return self.get

    def bulk(self, records: list[dict]) -> None:
        for i, r in enumerate(records):
            self.set(self.k(f"rec:{i}"), r)

    def close(self) -> None:
        pass


class Dict(Store):
    name = "dict"

    def __init__(self) -> None:
        d: dict = {}
        self.d, self.get, self.set = d, d.get, d.__setitem__
        self.get_many = lambda ks: {k: d.get(k) for k in ks}


class Surpdb(Store):
    name = "surpdb"

    def __init__(self, path: str) -> None:
        self.spec = ("surpdb", path)
        c = self.c = surpdb.connect(path)
        self.get, self.set, self.get_many = c.get, c.set, c.get_many
        s = c.set

        def ff(pairs: list) -> None:
            for k, v in pairs:
                s(k, v, wait=False)
            c.flush()

        self.ff = ff

    def bulk(self, records: list[dict]) -> None:
        for i in range(0, len(records), 50_000):
            self.c.insert_many(records[i : i + 50_000])


class Lmdb(Store):
    def __init__(self, path: str, per_op_txn: bool) -> None:
        import lmdb

        self.name = "py-lmdb (txn per op)" if per_op_txn else "py-lmdb (long txn)"
        self.spec = ("lmdb", path, per_op_txn)
        env = self.env = lmdb.open(path, map_size=32 << 30, sync=False, metasync=False)
        if per_op_txn:

            def get(k: bytes) -> Any:
                with env.begin() as t:
                    return t.get(k)

            self.get = get
        else:
            self.txn = env.begin()
            self.get = self.txn.get

        def put(k: bytes, v: bytes) -> None:
            with env.begin(write=True) as t:
                t.put(k, v)

        self.set = put
        g = self.get
        self.get_many = lambda ks: [g(k) for k in ks]

    def renew(self) -> None:
        """A long read txn sees the snapshot it began with: renew after writes."""
        if hasattr(self, "txn"):
            self.txn.abort()
            self.txn = self.env.begin()
            self.get = self.txn.get
            g = self.get
            self.get_many = lambda ks: [g(k) for k in ks]

    def k(self, k: str) -> bytes:
        return k.encode()

    def put_link(self, k: str, rec: dict) -> None:
        self.set(self.k(k), pickle.dumps(rec))
        self.renew()

    def get_link(self) -> Callable[[Any], object]:
        g, loads = self.get, pickle.loads
        return lambda k: loads(g(k))

    def bulk(self, records: list[dict]) -> None:
        with self.env.begin(write=True) as t:
            for i, r in enumerate(records):
                t.put(f"rec:{i}".encode(), pickle.dumps(r))

    def close(self) -> None:
        if hasattr(self, "txn"):
            self.txn.abort()
        self.env.close()


class LocMem(Store):
    name = "Django LocMemCache"

    def __init__(self) -> None:
        import django
        from django.conf import settings

        if not settings.configured:
            settings.configure(
                CACHES={
                    "default": {
                        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                        "OPTIONS": {"MAX_ENTRIES": 10**7},
                        "TIMEOUT": None,
                    }
                }
            )
            django.setup()
        from django.core.cache import cache

        self.cache = cache
        self.get, self.set, self.get_many = cache.get, cache.set, cache.get_many


class DiskCache(Store):
    name = "diskcache"

    def __init__(self, path: str) -> None:
        import diskcache

        self.spec = ("diskcache", path)
        self.c = diskcache.Cache(path, size_limit=8 << 30)
        self.get, self.set = self.c.get, self.c.set
        g = self.get
        self.get_many = lambda ks: {k: g(k) for k in ks}

    def bulk(self, records: list[dict]) -> None:
        with self.c.transact():
            for i, r in enumerate(records):
                self.c.set(f"rec:{i}", r)

    def close(self) -> None:
        self.c.close()


class Memcached(Store):
    name = "pymemcache+memcached"

    def __init__(self, port: int) -> None:
        from pymemcache.client.base import Client
        from pymemcache.serde import pickle_serde

        self.spec = ("memcached", port)
        c = self.c = Client(("127.0.0.1", port), serde=pickle_serde, no_delay=True)
        self.get, self.set, self.get_many = c.get, c.set, c.get_many

        def ff(pairs: list) -> None:
            for k, v in pairs:
                c.set(k, v, noreply=True)
            c.get("sync")  # a round trip: every noreply set before it has been applied

        self.ff = ff

    def bulk(self, records: list[dict]) -> None:
        for s in range(0, len(records), 1000):
            self.c.set_many({f"rec:{i}": records[i] for i in range(s, min(s + 1000, len(records)))})

    def close(self) -> None:
        self.c.close()


class Redis(Store):
    name = "redis-py+redis"

    def __init__(self, port: int) -> None:
        import redis

        self.spec = ("redis", port)
        c = self.c = redis.Redis(port=port)
        self.get, self.set = c.get, c.set
        self.get_many = c.mget

        def ff(pairs: list) -> None:
            p = c.pipeline(transaction=False)
            for k, v in pairs:
                p.set(k, v)
            p.execute()

        self.ff = ff

    def put_link(self, k: str, rec: dict) -> None:
        self.set(k, pickle.dumps(rec))

    def get_link(self) -> Callable[[Any], object]:
        g, loads = self.get, pickle.loads
        return lambda k: loads(g(k))

    def bulk(self, records: list[dict]) -> None:
        for s in range(0, len(records), 1000):
            p = self.c.pipeline(transaction=False)
            for i in range(s, min(s + 1000, len(records))):
                p.set(f"rec:{i}", pickle.dumps(records[i]))
            p.execute()

    def close(self) -> None:
        self.c.close()


def open_store(spec: tuple) -> Store:
    kind = spec[0]
    if kind == "surpdb":
        return Surpdb(spec[1])
    if kind == "lmdb":
        return Lmdb(spec[1], spec[2])
    if kind == "diskcache":
        return DiskCache(spec[1])
    if kind == "memcached":
        return Memcached(spec[1])
    if kind == "redis":
        return Redis(spec[1])
    raise ValueError(kind)


def fill(s: Store, n: int) -> None:
    if isinstance(s, Surpdb):
        for i in range(0, n, 10_000):
            s.c.set_many({key(j): VALUE for j in range(i, min(i + 10_000, n))})
    elif isinstance(s, Lmdb):
        with s.env.begin(write=True) as t:
            for j in range(n):
                t.put(key(j).encode(), VALUE)
        s.renew()
    elif isinstance(s, Redis):
        for i in range(0, n, 10_000):
            s.c.mset({key(j): VALUE for j in range(i, min(i + 10_000, n))})
    elif isinstance(s, Memcached):
        for i in range(0, n, 1000):
            s.c.set_many({key(j): VALUE for j in range(i, min(i + 1000, n))})
    elif isinstance(s, DiskCache):
        with s.c.transact():
            for j in range(n):
                s.c.set(key(j), VALUE)
    else:
        for j in range(n):
            s.set(key(j), VALUE)


# ------------------------------------------------------------------ workloads


def latency(s: Store, link: dict, quick: bool) -> dict[str, dict[str, float]]:
    rng = random.Random(5)
    passes = 5 if quick else 30
    k = s.k
    hot = [k(key(7))] * PASS
    rand = [k(key(rng.randrange(NKEYS))) for _ in range(PASS)]
    out = {}
    out["get 100 B hot"] = measure(s.get, hot, passes)
    out["get 100 B random (100k keys)"] = measure(s.get, rand, passes)
    s.put_link("link", link)
    out["get Link dict"] = measure(s.get_link(), [k("link")] * PASS, passes)
    if s.get_many is not None:
        many = [[k(key(rng.randrange(NKEYS))) for _ in range(100)] for _ in range(100)]
        out["get_many(100)"] = measure(s.get_many, many, passes)
    st = s.set
    wargs = [k(key(rng.randrange(NKEYS))) for _ in range(PASS)]
    out["set acked"] = measure(lambda x: st(x, VALUE), wargs, max(3, passes // 3))
    if s.ff is not None:
        out["set fire-and-forget"] = measure_batched(s.ff, [(x, VALUE) for x in wargs], passes)
    mix = [(i % 10 == 9, k(key(rng.randrange(NKEYS)))) for i in range(PASS)]
    g = s.get

    def mixed(a: tuple) -> None:
        if a[0]:
            st(a[1], VALUE)
        else:
            g(a[1])

    out["90/10 get/set mix"] = measure(mixed, mix, max(3, passes // 3))
    if isinstance(s, Lmdb):
        s.renew()
    return out


def references(link: dict, quick: bool) -> dict[str, dict[str, float]]:
    """The floors the targets name: pickle.loads of a record, packb + shm slice assignment."""
    from multiprocessing import shared_memory

    import msgpack

    passes = 5 if quick else 30
    blob = pickle.dumps(link)
    out = {"pickle.loads(Link)": measure(pickle.loads, [blob] * PASS, passes)}
    shm = shared_memory.SharedMemory(create=True, size=1 << 16)
    try:
        buf, packb = shm.buf, msgpack.packb

        def put(v: bytes) -> None:
            b = packb(v)
            buf[64 : 64 + len(b)] = b

        out["msgpack.packb + shm slice"] = measure(put, [VALUE] * PASS, passes)
    finally:
        shm.close()
        shm.unlink()
    return out


def reader_proc(spec: tuple, ops: int, barrier: Any, q: Any) -> None:
    s = open_store(spec)
    rng = random.Random(os.getpid())
    keys = [s.k(key(rng.randrange(NKEYS))) for _ in range(ops)]
    g = s.get
    barrier.wait()
    t0 = time.monotonic_ns()
    for x in keys:
        g(x)
    q.put((t0, time.monotonic_ns(), ops))
    s.close()


def writer_proc(spec: tuple, ops: int, barrier: Any, q: Any) -> None:
    s = open_store(spec)
    rng = random.Random(os.getpid())
    keys = [s.k(key(rng.randrange(NKEYS))) for _ in range(ops)]
    st = s.set
    lat = []
    barrier.wait()
    for x in keys:
        t0 = pc()
        st(x, VALUE)
        lat.append(pc() - t0)
    q.put(lat)
    s.close()


def processes(s: Store, quick: bool) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    out = {}
    rops = 50_000 if quick else 300_000
    if s.name.startswith(("redis", "pymemcache", "diskcache")):
        rops //= 10
    for n in (1, 2):
        b, q = ctx.Barrier(n), ctx.Queue()
        ps = [ctx.Process(target=reader_proc, args=(s.spec, rops, b, q)) for _ in range(n)]
        for p in ps:
            p.start()
        res = [q.get(timeout=600) for _ in ps]
        for p in ps:
            p.join(timeout=60)
        span = max(r[1] for r in res) - min(r[0] for r in res)
        out[f"{n} reader ops/s"] = sum(r[2] for r in res) / span * 1e9
    wops = 2_000 if quick else 10_000
    b, q = ctx.Barrier(2), ctx.Queue()
    ps = [ctx.Process(target=writer_proc, args=(s.spec, wops, b, q)) for _ in range(2)]
    for p in ps:
        p.start()
    lat = sorted(x for _ in ps for x in q.get(timeout=600))
    for p in ps:
        p.join(timeout=60)
    out["2 writers set median ns"] = statistics.median(lat)
    out["2 writers set p99 ns"] = lat[int(len(lat) * 0.99)]
    return out


def bulk_rate(s: Store, records: list[dict]) -> float:
    t0 = time.perf_counter()
    s.bulk(records)
    return len(records) / (time.perf_counter() - t0)


def set_many_rate(s: Surpdb, records: list[dict]) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(records), 10_000):
        s.c.set_many({f"rec:{j}": records[j] for j in range(i, min(i + 10_000, len(records)))})
    return len(records) / (time.perf_counter() - t0)


# ------------------------------------------------------------------ cost curves


def curve_get(sizes: list[int], quick: bool) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for n in sizes:
        rng = random.Random(n)
        args = [key(rng.randrange(n)) for _ in range(PASS)]
        d = tempfile.mkdtemp(prefix="speed-curve-", dir="/var/tmp")
        try:
            size = f"{max(64, n * 300 >> 20)}MiB"
            with surpdb.Server(os.path.join(d, "s"), size=size):
                s = Surpdb(os.path.join(d, "s"))
                t0 = time.perf_counter()
                fill(s, n)
                load = n / (time.perf_counter() - t0)
                r = measure(s.get, args, 5 if quick else 20)
                r["set_many load/s"] = load
                out.setdefault("surpdb", {})[f"{n} keys"] = r
            lm = Lmdb(os.path.join(d, "l"), False)
            t0 = time.perf_counter()
            fill(lm, n)
            load = n / (time.perf_counter() - t0)
            r = measure(lm.get, [a.encode() for a in args], 5 if quick else 20)
            r["load/s"] = load
            out.setdefault("py-lmdb (long txn)", {})[f"{n} keys"] = r
            lm.close()
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return out


def curve_fill(quick: bool) -> dict[str, dict[str, float]]:
    """Acknowledged sets of new keys into a segment 10% and then 90% full."""
    out = {}
    d = tempfile.mkdtemp(prefix="speed-fill-")
    try:
        with surpdb.Server(d, size="64MiB"):
            s = Surpdb(d)
            c, size = s.c, 64 << 20
            i = 0
            for target in (0.10, 0.90):
                while c.stats()["bytes_used"] < target * size and i < size // 50:
                    c.set_many({key(j): VALUE for j in range(i, i + 2000)})
                    i += 2000
                used = c.stats()["bytes_used"] / size
                fresh = [f"new:{target}:{j}" for j in range(PASS)]
                r = measure(lambda x: c.set(x, VALUE), fresh, 1 if quick else 3)
                r["fill"] = used
                out[f"{int(target * 100)}% full"] = r
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return out


# ------------------------------------------------------------------ report


def fmt_ns(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.1f}us" if v >= 10_000 else f"{v:.0f}"


def print_latency(lat: dict[str, dict[str, dict[str, float]]], refs: dict) -> None:
    ops = [
        "get 100 B hot",
        "get 100 B random (100k keys)",
        "get Link dict",
        "get_many(100)",
        "set acked",
        "set fire-and-forget",
        "90/10 get/set mix",
    ]
    base = lat.get("surpdb", {})
    print("\n## Latency, ns per call: median / p99 (x = that system's median / surpdb's)\n")
    names = list(lat)
    print(f"| {'operation':<30}|" + "|".join(f" {n:<26}" for n in names) + "|")
    print("|" + "-" * 31 + "|" + "|".join("-" * 27 for _ in names) + "|")
    for op in ops:
        cells = []
        for n in names:
            r = lat[n].get(op)
            if r is None:
                cells.append(f" {'-':<26}")
                continue
            txt = fmt_ns(r["median"]) + (f" / {fmt_ns(r['p99'])}" if "p99" in r else "")
            if n != "surpdb" and op in base:
                txt += f" ({r['median'] / base[op]['median']:.2f}x)"
            cells.append(f" {txt:<26}")
        print(f"| {op:<30}|" + "|".join(cells) + "|")
    for name, r in refs.items():
        print(f"reference: {name}: {fmt_ns(r['median'])} / {fmt_ns(r['p99'])}")


def targets(res: dict) -> list[tuple[str, float, str, bool]]:
    lat, refs, bulk, procs = res["latency"], res["references"], res["bulk"], res["processes"]
    rows = []

    def ratio(name: str, a: float | None, b: float | None, op: str, limit: float) -> None:
        if a is None or b is None:
            return
        r = a / b
        ok = r <= limit if op == "<=" else r >= limit
        rows.append((name, r, f"{op} {limit}", ok))

    def med(sys_: str, op: str) -> float | None:
        return lat.get(sys_, {}).get(op, {}).get("median")

    lt = "py-lmdb (long txn)"
    ratio("get 100 B hot / py-lmdb long txn", med("surpdb", "get 100 B hot"),
          med(lt, "get 100 B hot"), "<=", 0.5)  # fmt: skip
    ratio("get random 100k / py-lmdb long txn", med("surpdb", "get 100 B random (100k keys)"),
          med(lt, "get 100 B random (100k keys)"), "<=", 0.6)  # fmt: skip
    ratio("get Link dict / pickle.loads", med("surpdb", "get Link dict"),
          refs.get("pickle.loads(Link)", {}).get("median"), "<=", 0.6)  # fmt: skip
    ratio("set acked / py-lmdb txn per put", med("surpdb", "set acked"),
          med("py-lmdb (txn per op)", "set acked"), "<=", 0.5)  # fmt: skip
    ratio("set acked / redis-py set", med("surpdb", "set acked"),
          med("redis-py+redis", "set acked"), "<=", 0.05)  # fmt: skip
    ratio("fire-and-forget / packb + shm slice", med("surpdb", "set fire-and-forget"),
          refs.get("msgpack.packb + shm slice", {}).get("median"), "<=", 1.2)  # fmt: skip
    ratio("insert_many / py-lmdb bulk", bulk.get("surpdb"), bulk.get(lt), ">=", 4.0)
    ratio("set_many / py-lmdb bulk", bulk.get("surpdb set_many (cache)"), bulk.get(lt), ">=", 4.0)
    sp = procs.get("surpdb", {})
    ratio("2 readers / 1 reader", sp.get("2 reader ops/s"), sp.get("1 reader ops/s"), ">=", 1.8)
    if "2 writers set p99 ns" in sp:
        p99 = sp["2 writers set p99 ns"]
        rows.append(("2 writers acked set p99 (us)", p99 / 1000, "<= 20", p99 <= 20_000))
    return rows


def main() -> None:
    global TIMER
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--links", default=DEFAULT_LINKS)
    ap.add_argument("--json", help="also write every figure here")
    ap.add_argument("--quick", action="store_true", help="a smoke run: fewer passes, small curve")
    ap.add_argument("--max-keys", type=int, default=10_000_000, help="largest get-curve point")
    ap.add_argument("--only", help="comma-separated sections: latency,bulk,processes,curves")
    a = ap.parse_args()
    sections = set((a.only or "latency,bulk,processes,curves").split(","))
    TIMER = timer_cost()
    records, source = load_records(a.links, 20_000 if a.quick else 100_000)
    link = records[0]
    py = f"{platform.python_implementation()} {platform.python_version()}"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {py}"
    res: dict[str, Any] = {"machine": machine, "records": source, "timer_ns": TIMER}
    res.update(latency={}, references={}, bulk={}, processes={}, skipped={})
    print(f"machine: {machine}; Link records: {source}; timer cost {TIMER:.0f} ns")
    tmp = tempfile.mkdtemp(prefix="speed-")
    try:
        with ExitStack() as stack:
            stack.enter_context(surpdb.Server(os.path.join(tmp, "surpdb"), size="1GiB"))
            stores: list[Callable[[], Store]] = [
                lambda: Surpdb(os.path.join(tmp, "surpdb")),
                Dict,
                lambda: Lmdb(os.path.join(tmp, "lmdb"), False),
                lambda: Lmdb(os.path.join(tmp, "lmdb"), True),
                LocMem,
                lambda: DiskCache(os.path.join(tmp, "diskcache")),
            ]
            try:
                mport = free_port()
                stack.enter_context(running(memcached_args(mport, 2048), mport))
                stores.append(lambda: Memcached(mport))
            except Exception as e:  # noqa: BLE001 - report and go on with the others
                res["skipped"]["memcached"] = f"{type(e).__name__}: {e}"
            try:
                rport = free_port()
                stack.enter_context(running(redis_args(rport, "--appendonly", "no"), rport))
                stores.append(lambda: Redis(rport))
            except Exception as e:  # noqa: BLE001
                res["skipped"]["redis"] = f"{type(e).__name__}: {e}"
            filled: set[tuple] = set()
            for make in stores:
                try:
                    s = make()
                except Exception as e:  # noqa: BLE001
                    res["skipped"][getattr(make, "__name__", "?")] = f"{type(e).__name__}: {e}"
                    continue
                print(f"... {s.name}", flush=True)
                if s.spec is None or s.spec[:2] not in filled:
                    fill(s, NKEYS)
                    if s.spec is not None:
                        filled.add(s.spec[:2])
                if "latency" in sections:
                    res["latency"][s.name] = latency(s, link, a.quick)
                if "processes" in sections and s.spec is not None:
                    res["processes"][s.name] = processes(s, a.quick)
                if "bulk" in sections and "txn per op" not in s.name:
                    if isinstance(s, Surpdb):
                        s.c.train(records[: min(len(records), 20_000)])
                        res["bulk"]["surpdb set_many (cache)"] = set_many_rate(s, records)
                    res["bulk"][s.name] = bulk_rate(s, records)
                s.close()
            if "latency" in sections:
                res["references"] = references(link, a.quick)
        if "curves" in sections:
            sizes = [1_000, 100_000] if a.quick else [1_000, 100_000, a.max_keys]
            print("... cost curves", flush=True)
            res["curve_get"] = curve_get(sizes, a.quick)
            res["curve_fill"] = curve_fill(a.quick)
            counts = [100_000] if a.quick else [100_000, 1_000_000, 4_000_000]
            res["curve_reattach"] = {f"{n} items": surpdb_restart(n) for n in counts}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(res)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


def report(res: dict) -> None:
    if res["latency"]:
        print_latency(res["latency"], res["references"])
    if res["bulk"]:
        print(f"\n## Bulk load of {res['records']} Link records, records/s\n")
        base = res["bulk"].get("surpdb")
        for n, v in res["bulk"].items():
            x = f" (surpdb insert_many / this = {base / v:.2f})" if base and n != "surpdb" else ""
            print(f"- {n}: {v / 1000:.0f}k/s{x}")
    if res["processes"]:
        print("\n## Processes: random get throughput, and acked sets from 2 writer processes\n")
        print("| system | 1 reader ops/s | 2 readers ops/s | 2/1 | 2 writers set median / p99 |")
        print("|---|---:|---:|---:|---:|")
        for n, r in res["processes"].items():
            one, two = r["1 reader ops/s"], r["2 reader ops/s"]
            w = f"{fmt_ns(r['2 writers set median ns'])} / {fmt_ns(r['2 writers set p99 ns'])}"
            print(f"| {n} | {one / 1000:.0f}k | {two / 1000:.0f}k | {two / one:.2f} | {w} |")
    if "curve_get" in res:
        print("\n## Cost curves\n")
        for sys_, pts in res["curve_get"].items():
            for n, r in pts.items():
                load = r.get("set_many load/s", r.get("load/s", 0))
                print(f"- {sys_} random get at {n}: {fmt_ns(r['median'])} / p99 "
                      f"{fmt_ns(r['p99'])} (loaded at {load / 1000:.0f}k/s)")  # fmt: skip
        for n, r in res["curve_fill"].items():
            print(f"- surpdb acked set of new keys, segment {n} ({r['fill']:.0%} by bytes_used): "
                  f"{fmt_ns(r['median'])} / p99 {fmt_ns(r['p99'])}")  # fmt: skip
        for n, r in res["curve_reattach"].items():
            print(f"- surpdb re-attach after SIGKILL, {r['segment_mib']:.0f} MiB segment, {n}: "
                  f"attach {r['attach_ms']:.1f} ms, "
                  f"first read {r['first_read_ms']:.0f} ms (incl. process start)")  # fmt: skip
    rows = targets(res)
    if rows:
        print("\n## Targets (issue 8)\n")
        for name, r, lim, ok in rows:
            print(f"- {name}: {r:.2f} (target {lim}): {'met' if ok else 'MISSED'}")
    for n, why in res["skipped"].items():
        print(f"skipped {n}: {why}")


if __name__ == "__main__":
    sys.exit(main())
