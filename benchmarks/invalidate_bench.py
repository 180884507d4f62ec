"""Invalidating many keys at once: surpdb's delete_prefix and tags against a scan and delete
(surpdb's own delete_pattern, and django-redis's delete_pattern on redis-server: SCAN MATCH
then DEL in batches), and what tags and a pending prefix deletion cost a read.

    python benchmarks/invalidate_bench.py [--keys 100000] [--skip-redis]

Each store holds `--keys` keys under one prefix (all carrying one tag for surpdb's tag run)
beside as many others. Times are of one call that removes them, then of a read of a removed
key; redis-server is started on loopback by this script (Debian package redis-server).
Default paths only: a daemon with its defaults, `surpdb.connect(path)`, redis-py's defaults.
"""

from __future__ import annotations

import argparse
import statistics
import time

from servers import free_port, redis_args, running, scratch_dir

import surpdb


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def get_ns(c: surpdb.Client, keys: list[str], rounds: int = 5) -> float:
    """Median ns per get over `rounds` passes of `keys`."""
    runs = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for k in keys:
            c.get(k)
        runs.append((time.perf_counter_ns() - t0) / len(keys))
    return statistics.median(runs)


def bench_surpdb(n: int) -> list[tuple[str, str]]:
    rows = []
    size = f"{max(256, n * 2 * 300 // (1 << 20) * 2)}MiB"
    d = scratch_dir("invalidate-surpdb-")
    with surpdb.Server(d, size=size):
        c = surpdb.connect(d)

        def fill(tags: list[str] | None = None) -> None:
            c.clear()
            for i in range(0, n, 1000):
                c.set_many({f"user:42:{j}": j for j in range(i, min(i + 1000, n))}, tags=tags)
                c.set_many({f"other:{j}": j for j in range(i, min(i + 1000, n))})

        probe = [f"other:{j}" for j in range(0, n, max(1, n // 10_000))]
        fill()
        plain = get_ns(c, probe)
        t = timed(lambda: c.delete_prefix("user:42:"))
        assert c.get("user:42:7") is None
        pending = get_ns(c, probe)
        rows.append(("surpdb delete_prefix", f"{t * 1e3:.3f} ms"))
        rows.append(("get, no prefix deletion pending", f"{plain:.0f} ns"))
        rows.append(("get, one prefix deletion pending", f"{pending:.0f} ns"))
        fill()
        t = timed(lambda: c.delete_many(c.keys("user:42:")))
        rows.append(("surpdb keys(prefix) + delete_many (a scan)", f"{t * 1e3:.1f} ms"))
        fill(tags=["user:42"])
        tagged = get_ns(c, [f"user:42:{j}" for j in range(0, n, max(1, n // 10_000))])
        t = timed(lambda: c.invalidate_tags(["user:42"]))
        assert c.get("user:42:7") is None
        rows.append(("surpdb invalidate_tags", f"{t * 1e3:.3f} ms"))
        rows.append(("get of a value with one tag", f"{tagged:.0f} ns"))
        # A 16th deletion while 15 wait: the whole index swept at once.
        fill()
        for i in range(15):
            c.delete_prefix(f"none{i}:")
        t = timed(lambda: c.delete_prefix("user:42:"))
        slots = c.stats()["index_slots"]
        rows.append((f"16th pending delete_prefix ({slots:,} slots swept)", f"{t * 1e3:.1f} ms"))
    return rows


def bench_redis(n: int) -> list[tuple[str, str]]:
    import redis

    port = free_port()
    with running(redis_args(port), port):
        r = redis.Redis(port=port)
        for i in range(0, n, 1000):
            p = r.pipeline(transaction=False)
            for j in range(i, min(i + 1000, n)):
                p.set(f"user:42:{j}", j)
                p.set(f"other:{j}", j)
            p.execute()

        def delete_pattern() -> None:
            # django-redis's delete_pattern: SCAN MATCH, DEL in batches.
            batch = []
            for k in r.scan_iter(match="user:42:*", count=1000):
                batch.append(k)
                if len(batch) >= 1000:
                    r.delete(*batch)
                    batch.clear()
            if batch:
                r.delete(*batch)

        t = timed(delete_pattern)
        assert r.get("user:42:7") is None
        return [("redis SCAN MATCH + DEL (django-redis delete_pattern)", f"{t * 1e3:.1f} ms")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--skip-redis", action="store_true")
    a = ap.parse_args()
    rows = bench_surpdb(a.keys)
    if not a.skip_redis:
        rows += bench_redis(a.keys)
    print(f"## Invalidating {a.keys:,} keys (beside {a.keys:,} others)\n")
    print("| what | time |")
    print("|---|---:|")
    for what, t in rows:
        print(f"| {what} | {t} |")


if __name__ == "__main__":
    main()
