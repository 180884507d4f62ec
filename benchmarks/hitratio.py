"""Hits per MiB: the same request traces replayed into surpdb, Redis (allkeys-lru and
allkeys-lfu) and memcached in the same memory, beside libCacheSim's policies on the values
alone (no per-item overhead: the reference), side by side.

    python benchmarks/hitratio.py [--memory 32] [--requests 2000000] [--quick] [--json out.json]

Traces (deterministic; 200,000 keys, each with a fixed value size drawn from 100-1500 B):
Zipf 0.7, 0.9 and 1.1; Zipf 0.9 with a scan mixed in (one request in five reads the next key
of a range of 2 million keys never seen again); Zipf 0.9 whose popular keys shift four times.
Each request is cache-aside: get; on a miss, set. Requests go in chunks of 64 (the gets of a
chunk pipelined, then the sets of its misses), the same for every server; libCacheSim sees them
one by one. Prints the miss ratio of each system per trace and the items each holds at the
end. Starts redis-server and memcached on loopback itself (Debian packages).
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from servers import free_port, memcached_args, redis_args, running, scratch_dir

import surpdb

NKEYS = 200_000
CHUNK = 64


def zipf_cdf(n: int, s: float) -> list[float]:
    w = [1.0 / (i**s) for i in range(1, n + 1)]
    total = sum(w)
    acc, out = 0.0, []
    for x in w:
        acc += x / total
        out.append(acc)
    return out


def value_size(k: int) -> int:
    return 100 + (k * 2654435761 % 1401)


def trace(kind: str, n: int, seed: int = 2012) -> Iterator[int]:
    """Key ids; ids >= NKEYS are one-time scan keys."""
    rng = random.Random(seed)
    s = {"zipf0.7": 0.7, "zipf1.1": 1.1}.get(kind, 0.9)
    cdf = zipf_cdf(NKEYS, s)
    perm = list(range(NKEYS))
    rng.shuffle(perm)
    scan = NKEYS
    for i in range(n):
        if kind == "shifting" and i % (n // 4) == 0 and i:
            rng.shuffle(perm)  # the popular keys move
        if kind == "scan" and i % 5 == 4:
            scan += 1
            yield scan
            continue
        r = bisect.bisect_left(cdf, rng.random())
        yield perm[min(r, NKEYS - 1)]


def chunks(it: Iterator[int]) -> Iterator[list[int]]:
    buf: list[int] = []
    for x in it:
        buf.append(x)
        if len(buf) == CHUNK:
            yield buf
            buf = []
    if buf:
        yield buf


def key(k: int) -> str:
    return f"k{k}"


def payload(k: int) -> bytes:
    return b"v" * value_size(k)


def replay(
    get_many: Callable[[list[str]], set[str]],
    set_many: Callable[[dict[str, bytes]], None],
    ks: Iterator[int],
) -> tuple[int, int]:
    requests = misses = 0
    for c in chunks(ks):
        names = [key(k) for k in c]
        hit = get_many(names)
        missing: dict[str, bytes] = {}
        for k, name in zip(c, names, strict=True):
            requests += 1
            if name not in hit:
                misses += 1
                missing[name] = payload(k)
        if missing:
            set_many(missing)
    return requests, misses


def run_surpdb(memory: int, ks: Iterator[int]) -> tuple[float, int]:
    d = scratch_dir("surp-hit-")
    with surpdb.Server(d, size=f"{memory}MiB") as srv:  # the defaults, as a user has them
        c = surpdb.connect(srv.path)

        def gm(names: list[str]) -> set[str]:
            return set(c.get_many(names))

        req, miss = replay(gm, lambda m: c.set_many(m), ks)
        st = c.stats()
        return miss / req, st["items"]


def resp(sock: socket.socket, f: Any, n: int) -> list[bytes | None]:
    out: list[bytes | None] = []
    for _ in range(n):
        line = f.readline()
        if line.startswith(b"$-1"):
            out.append(None)
        elif line.startswith(b"$"):
            ln = int(line[1:])
            out.append(f.read(ln + 2)[:-2])
        elif line.startswith(b"*"):
            cnt = int(line[1:])
            out.extend(resp(sock, f, cnt))
        else:
            out.append(line.strip())
    return out


def run_redis(memory: int, policy: str, ks: Iterator[int]) -> tuple[float, int]:
    import redis

    port = free_port()
    args = redis_args(port, "--maxmemory", f"{memory}mb", "--maxmemory-policy", policy)
    with running(args, port):
        r = redis.Redis(port=port)

        def gm(names: list[str]) -> set[str]:
            vals = r.mget(names)
            return {n for n, v in zip(names, vals, strict=True) if v is not None}

        def sm(m: dict[str, bytes]) -> None:
            p = r.pipeline(transaction=False)
            for k, v in m.items():
                p.set(k, v)
            p.execute()

        req, miss = replay(gm, sm, ks)
        return miss / req, int(r.dbsize())


def run_memcached(memory: int, ks: Iterator[int]) -> tuple[float, int]:
    from pymemcache.client.base import Client

    port = free_port()
    with running(memcached_args(port, memory), port):
        m = Client(("127.0.0.1", port))

        def gm(names: list[str]) -> set[str]:
            return set(m.get_many(names))

        req, miss = replay(gm, lambda d: m.set_many(d, noreply=False), ks)
        items = int(m.stats()[b"curr_items"])
        return miss / req, items


def run_exact_lru(memory: int, ks: Iterator[int]) -> tuple[float, int]:
    """LRU holding the values alone, byte-exact: no per-item overhead at all."""
    cap = memory << 20
    lru: OrderedDict[int, int] = OrderedDict()
    used = req = miss = 0
    for k in ks:
        req += 1
        if k in lru:
            lru.move_to_end(k)
            continue
        miss += 1
        sz = value_size(k)
        lru[k] = sz
        used += sz
        while used > cap:
            _, s = lru.popitem(last=False)
            used -= s
    return miss / req, len(lru)


def run_libcachesim(memory: int, name: str, ks: Iterator[int]) -> tuple[float, int] | None:
    try:
        import libcachesim as lcs
    except ImportError:
        return None
    cache = getattr(lcs, name)(cache_size=memory << 20)
    req = lcs.Request()
    n = miss = 0
    for k in ks:
        req.obj_id = k
        req.obj_size = value_size(k)
        n += 1
        if not cache.get(req):
            miss += 1
    return miss / n, int(cache.get_n_obj())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--memory", type=int, default=32, help="MiB for every system")
    ap.add_argument("--requests", type=int, default=2_000_000)
    ap.add_argument("--quick", action="store_true", help="300k requests, two traces")
    ap.add_argument("--traces", default="zipf0.7,zipf0.9,zipf1.1,scan,shifting")
    ap.add_argument("--systems", default="surpdb,redis-lru,redis-lfu,memcached,lru,lcs")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.quick:
        a.requests, a.traces = 300_000, "zipf0.9,scan"
    systems = a.systems.split(",")
    results: dict[str, dict[str, tuple[float, int]]] = {}
    for t in a.traces.split(","):
        row: dict[str, tuple[float, int]] = {}

        def ks(t: str = t) -> Iterator[int]:
            return trace(t, a.requests)

        t0 = time.time()
        if "surpdb" in systems:
            row["surpdb"] = run_surpdb(a.memory, ks())
        if "redis-lru" in systems:
            row["Redis allkeys-lru"] = run_redis(a.memory, "allkeys-lru", ks())
        if "redis-lfu" in systems:
            row["Redis allkeys-lfu"] = run_redis(a.memory, "allkeys-lfu", ks())
        if "memcached" in systems:
            row["memcached"] = run_memcached(a.memory, ks())
        if "lru" in systems:
            row["LRU, values alone"] = run_exact_lru(a.memory, ks())
        if "lcs" in systems:
            for name, label in (
                ("S3FIFO", "S3-FIFO"),
                ("WTinyLFU", "W-TinyLFU"),
                ("Sieve", "Sieve"),
            ):
                r = run_libcachesim(a.memory, name, ks())
                if r is not None:
                    row[f"{label}, values alone (libCacheSim)"] = r
        results[t] = row
        print(f"# {t}: {time.time() - t0:.0f} s", file=sys.stderr)
    names = list(next(iter(results.values())).keys())
    print(
        f"\nMiss ratio, {a.memory} MiB, {a.requests:,} requests per trace (items held at the end)\n"
    )
    print("| system | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for n in names:
        cells = [f"{results[t][n][0] * 100:.1f}% ({results[t][n][1]:,})" for t in results]
        print(f"| {n} | " + " | ".join(cells) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {t: {n: list(v) for n, v in r.items()} for t, r in results.items()}, f, indent=1
            )


if __name__ == "__main__":
    main()
