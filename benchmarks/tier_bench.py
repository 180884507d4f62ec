"""Tiered mode: one host's shared near cache in front of Redis, beside the clients that cache
per process in front of the same redis-server.

    python benchmarks/tier_bench.py [--keys 20000] [--readers 4] [--seconds 3] [--zipf 0.99]

A redis-server is started on loopback (Debian package) and filled with `--keys` values of
100-1,000 random bytes; then, per system, `--readers` processes read Zipf-distributed keys
for `--seconds` after one warm pass:

- surpdb tiered: a surpd with `upstream` set; every reader process maps the same segment;
- surpdb standalone: the same reads from a surpd without upstream (the local-hit floor);
- redis-py without a local cache (a socket round trip per get);
- redis-py with its client-side cache (RESP3, `cache_config`; redis-py refuses servers
  older than 7.4, so its version check is lowered for Debian's 7.0: marked in the table);
- valkey-glide (`valkey-glide-sync`) with its server-assisted client-side cache.

Printed per system: reads/s of all readers, hit latency (median of per-pass means, p99 of
single calls) in one reader while the others wait, the memory the cached copies take on the
host (surpdb: the live records of the host's one segment, headers and keys included; the
others: the bytes of the values their caches hold, summed over the readers, their per-entry
overhead left out), and the invalidation delay (a plain client overwrites a key; a
reader of the system notes when the new value shows: median and max over 200 writes).
Not part of the test run: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from servers import free_port, redis_args, running, scratch_dir

import surpdb

PREFIX = "tb:"
pc = time.perf_counter_ns


def zipf_sequence(n_keys: int, s: float, count: int, seed: int) -> list[int]:
    weights = [1.0 / (i + 1) ** s for i in range(n_keys)]
    cum, total = [], 0.0
    for w in weights:
        total += w
        cum.append(total)
    rnd = random.Random(seed)
    return [bisect.bisect_left(cum, rnd.random() * total) for _ in range(count)]


def open_reader(system: str, spec: dict[str, Any]) -> tuple[Callable[[str], Any], Any]:
    """A get function for `system` in this process, and the object that keeps it alive."""
    if system in ("surpdb tiered", "surpdb standalone"):
        c = surpdb.connect(spec["path"])
        return c.get, c
    if system.startswith("redis-py"):
        import redis

        kw: dict[str, Any] = {}
        if "cache" in system:
            import redis.connection
            from redis.cache import CacheConfig

            redis.connection.CacheProxyConnection.MIN_ALLOWED_VERSION = "7.0.0"
            kw = {"protocol": 3, "cache_config": CacheConfig(max_size=1_000_000)}
        r = redis.Redis(port=spec["port"], **kw)
        return (lambda k: r.get(PREFIX + k)), r
    if system.startswith("valkey-glide"):
        from glide_sync import (
            ClientSideCache,
            GlideClient,
            GlideClientConfiguration,
            NodeAddress,
        )

        csc = ClientSideCache.create(
            max_cache_kb=1 << 20, entry_ttl_ms=0, server_assisted=True, enable_metrics=False
        )
        g = GlideClient.create(
            GlideClientConfiguration(
                [NodeAddress("127.0.0.1", spec["port"])], client_side_cache=csc
            )
        )
        return (lambda k: g.get(PREFIX + k)), g
    raise ValueError(system)


def reader(system: str, spec: dict[str, Any], seq: list[int], seconds: float, out: Any,
           timed: bool, start: Any) -> None:  # fmt: skip
    get, keep = open_reader(system, spec)
    keys = [f"k{i}" for i in range(spec["keys"])]
    for k in keys:  # warm: every key read once, so the cache holds the working set
        get(k)
    entries = cached_entries(system, keep)
    lat: dict[str, float] = {}
    # Hit latency in one reader while the others wait (the machine has 2 cores).
    start.wait(timeout=600)
    if timed:
        hot = [keys[i] for i in seq[:1000]]
        means = []
        for _ in range(20):
            t0 = pc()
            for k in hot:
                get(k)
            means.append((pc() - t0) / len(hot))
        singles = []
        for k in hot * 3:
            t0 = pc()
            get(k)
            singles.append(pc() - t0)
        singles.sort()
        lat = {"median": statistics.median(means), "p99": singles[int(len(singles) * 0.99)]}
    start.wait(timeout=600)
    n, i, t_end = 0, 0, time.monotonic() + seconds
    while time.monotonic() < t_end:
        for _ in range(256):
            get(keys[seq[i]])
            i = (i + 1) % len(seq)
        n += 256
    out.put((n, entries, lat))
    del keep


def cached_entries(system: str, client: Any) -> int:
    """Values a per-process cache holds (0: none, or one shared segment for surpdb)."""
    if system.startswith("redis-py client-side"):
        return int(client.get_cache().size)
    if system.startswith("valkey-glide"):
        return int(client.get_cache_entry_count())
    return 0


def delay_probe(system: str, spec: dict[str, Any], out: Any, ready: Any) -> None:
    """Read key 'probe' until it shows each value 1..200 the writer sets; report delays."""
    get, keep = open_reader(system, spec)
    decode = (lambda v: int(v)) if not system.startswith("surpdb") else (lambda v: v)
    get("probe")
    ready.set()
    seen: list[tuple[int, float]] = []
    last = None
    t_end = time.monotonic() + 60
    while time.monotonic() < t_end:
        try:
            v = get("probe")
        except surpdb.Error:
            continue
        v = decode(v) if v is not None else None
        if v != last:
            seen.append((v, time.monotonic()))
            last = v
            if v == 200:
                break
    out.put(seen)
    del keep


def run_system(system: str, spec: dict[str, Any], a: argparse.Namespace, write: Callable) -> dict:
    ctx = mp.get_context("spawn")
    # Every reader warms and times its hits, then all read together.
    out, start = ctx.Queue(), ctx.Barrier(a.readers)
    procs = [
        ctx.Process(
            target=reader,
            args=(
                system,
                spec,
                zipf_sequence(a.keys, a.zipf, 200_000, i),
                a.seconds,
                out,
                i == 0,
                start,
            ),  # fmt: skip
        )
        for i in range(a.readers)
    ]
    for p in procs:
        p.start()
    results = []
    for _ in procs:
        results.append(out.get(timeout=600))
    for p in procs:
        p.join(timeout=60)
    reads = sum(r[0] for r in results) / a.seconds
    lat = next(r[2] for r in results if r[2])
    entries = sum(r[1] for r in results)
    # Invalidation delay: a plain client writes 1..200 to 'probe', 5 ms apart.
    ready = ctx.Event()
    q = ctx.Queue()
    p = ctx.Process(target=delay_probe, args=(system, spec, q, ready))
    p.start()
    ready.wait(60)
    acks = []
    for i in range(1, 201):
        write("probe", i)
        acks.append(time.monotonic())
        time.sleep(0.005)
    seen = q.get(timeout=120)
    p.join(timeout=30)
    delays = []
    for i, ta in enumerate(acks, start=1):
        t = next((t for v, t in seen if isinstance(v, int) and v >= i), None)
        if t is not None:
            delays.append(max(0.0, t - ta))
    return {"reads": reads, "lat": lat, "entries": entries, "delays": delays}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--zipf", type=float, default=0.99)
    ap.add_argument("--only", help="comma-separated system names")
    a = ap.parse_args()
    import redis

    port = free_port()
    tmp = scratch_dir("tier-bench-")
    rows: dict[str, dict] = {}
    with running(redis_args(port, "--appendonly", "no"), port):
        r = redis.Redis(port=port)
        rnd = random.Random(7)
        values = {f"k{i}": rnd.randbytes(rnd.randint(100, 1000)) for i in range(a.keys)}
        pipe = r.pipeline(transaction=False)
        for k, v in values.items():
            pipe.set(PREFIX + k, v)
        pipe.execute()
        data_bytes = sum(len(v) for v in values.values())
        url = f"redis://127.0.0.1:{port}/0"
        tiered = surpdb.Server(
            os.path.join(tmp, "tiered"), size="256MiB", upstream=url, upstream_prefix=PREFIX
        )
        plain = surpdb.Server(os.path.join(tmp, "plain"), size="256MiB")
        try:
            sc = surpdb.connect(plain.path)
            sc.set_many(values)
            tc = surpdb.connect(tiered.path)
            t0 = time.monotonic()
            while tc.stats()["upstream_connected"] != 1:
                assert time.monotonic() - t0 < 10
                time.sleep(0.01)
            systems: list[tuple[str, dict[str, Any], Callable]] = [
                ("surpdb tiered", {"path": tiered.path, "keys": a.keys},
                 lambda k, v: r.set(PREFIX + k, v)),
                ("surpdb standalone", {"path": plain.path, "keys": a.keys},
                 lambda k, v: sc.set(k, v)),
                ("redis-py, no local cache", {"port": port, "keys": a.keys},
                 lambda k, v: r.set(PREFIX + k, v)),
                ("redis-py client-side cache*", {"port": port, "keys": a.keys},
                 lambda k, v: r.set(PREFIX + k, v)),
                ("valkey-glide client-side cache", {"port": port, "keys": a.keys},
                 lambda k, v: r.set(PREFIX + k, v)),
            ]  # fmt: skip
            only = set(a.only.split(",")) if a.only else None
            for name, spec, write in systems:
                if only and not any(o in name for o in only):
                    continue
                try:
                    if name.startswith("valkey-glide"):
                        import glide_sync  # noqa: F401
                except ImportError:
                    print(f"... {name}: skipped (pip install valkey-glide-sync)", flush=True)
                    continue
                print(f"... {name}", flush=True)
                res = run_system(name, spec, a, write)
                # surpdb: the live records (headers, keys, values) of the host's one
                # segment; the others: the values their caches hold, summed over readers
                # (their per-entry overhead left out).
                if name.startswith("surpdb"):
                    res["mem"] = (tc if name == "surpdb tiered" else sc).stats()["bytes"]
                else:
                    res["mem"] = res["entries"] * data_bytes / a.keys
                rows[name] = res
        finally:
            tiered.stop()
            plain.stop()
    print()
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, CPython {platform.python_version()}, "
        f"redis-server 7 on loopback; {a.keys:,} keys ({data_bytes / 1e6:.1f} MB of values), "
        f"Zipf {a.zipf}, {a.readers} reader processes, {a.seconds:.0f} s each"
    )
    print()
    print("| system | reads/s | hit ns, median / p99 | vs surpdb tiered | cached copies, MB "
          "| invalidation delay ms, median / max |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    base = rows.get("surpdb tiered", {}).get("reads")
    for name, r in rows.items():
        ratio = f"{base / r['reads']:.1f}x fewer" if base and name != "surpdb tiered" else ""
        d = r["delays"]
        delay = f"{statistics.median(d) * 1e3:.2f} / {max(d) * 1e3:.2f}" if d else "never seen"
        print(
            f"| {name} | {r['reads']:,.0f} | {r['lat']['median']:,.0f} / {r['lat']['p99']:,.0f} "
            f"| {ratio} | {r['mem'] / 1e6:.1f} | {delay} |"
        )
    print()
    print("* redis-py's cache refuses redis-server < 7.4; its version check was lowered here.")
    t, s = rows.get("surpdb tiered"), rows.get("surpdb standalone")
    if t and s:
        print(f"tiered local hit vs standalone get: {t['lat']['median'] / s['lat']['median']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
