"""The feed-hub workload: per feed, a sorted set of entry ids scored by timestamp.

    python benchmarks/hub_bench.py [--feeds 20000] [--rounds 5]

Each round, for every feed: take 20 candidate entry ids (about half already known), find the
new ones (surpdb: zmissing from the mapping; Redis: ZMSCORE), add them and trim the set to its
newest 50 (surpdb: one zadd(max_len=50); Redis: ZADD + ZREMRANGEBYRANK, pipelined 200 feeds at a
time). Prints rounds/s and memory per member for both, from one run. redis-server is started
on loopback by this script (Debian package redis-server).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from servers import free_port, redis_args, running

import surpdb

PER_FEED = 50
CANDIDATES = 20


def candidates(feed: int, rnd: int) -> dict[str, float]:
    """20 ids for a feed in a round: the newest 10 of the previous round, 10 new ones."""
    base = rnd * 10
    return {
        f"f{feed}:e{base - 10 + k}": float(base - 10 + k)
        for k in range(CANDIDATES)
        if base - 10 + k >= 0
    }


def bench_surpdb(feeds: int, rounds: int) -> dict[str, float]:
    d = tempfile.mkdtemp(prefix="hub-surpdb-")
    try:
        with surpdb.Server(d, size="1GiB"):
            c = surpdb.connect(d)
            # Fill: every feed starts with 50 entries.
            for f in range(feeds):
                c.zadd(f"feed:{f}", {f"f{f}:e{k - 50}": float(k - 50) for k in range(PER_FEED)})
            base = c.stats()
            t0 = time.perf_counter()
            added = 0
            for r in range(1, rounds + 1):
                for f in range(feeds):
                    cand = candidates(f, r)
                    key = f"feed:{f}"
                    new = c.zmissing(key, list(cand))
                    if new:
                        added += c.zadd(key, {m: cand[m] for m in new}, max_len=PER_FEED)
            elapsed = time.perf_counter() - t0
            st = c.stats()
            members = feeds * PER_FEED
            assert all(
                c.zcard(f"feed:{f}") == PER_FEED for f in range(0, feeds, max(feeds // 50, 1))
            )
            return {
                "rounds_s": rounds / elapsed,
                "feed_checks_s": rounds * feeds / elapsed,
                "added": added,
                "bytes_per_member": st["bytes"] / members,
                "used_per_member": (st["bytes_used"] - base["bytes_used"] + base["bytes"])
                / members,
            }
    finally:
        shutil.rmtree(d, ignore_errors=True)


def bench_redis(feeds: int, rounds: int) -> dict[str, float]:
    import redis

    port = free_port()
    with running(redis_args(port, "--appendonly", "no"), port):
        r = redis.Redis(port=port)
        before = r.info("memory")["used_memory"]
        batch = 200
        for start in range(0, feeds, batch):
            pipe = r.pipeline(transaction=False)
            for f in range(start, min(start + batch, feeds)):
                pipe.zadd(f"feed:{f}", {f"f{f}:e{k - 50}": float(k - 50) for k in range(PER_FEED)})
            pipe.execute()
        used = r.info("memory")["used_memory"] - before
        t0 = time.perf_counter()
        added = 0
        for rnd in range(1, rounds + 1):
            for start in range(0, feeds, batch):
                fs = range(start, min(start + batch, feeds))
                cands = {f: candidates(f, rnd) for f in fs}
                pipe = r.pipeline(transaction=False)
                for f in fs:
                    pipe.zmscore(f"feed:{f}", list(cands[f]))
                scores = pipe.execute()
                pipe = r.pipeline(transaction=False)
                for f, sc in zip(fs, scores, strict=True):
                    new = {
                        m: s
                        for (m, s), have in zip(cands[f].items(), sc, strict=True)
                        if have is None
                    }
                    if new:
                        pipe.zadd(f"feed:{f}", new)
                        pipe.zremrangebyrank(f"feed:{f}", 0, -PER_FEED - 1)
                        added += len(new)
                pipe.execute()
        elapsed = time.perf_counter() - t0
        return {
            "rounds_s": rounds / elapsed,
            "feed_checks_s": rounds * feeds / elapsed,
            "added": added,
            "bytes_per_member": used / (feeds * PER_FEED),
            "used_per_member": used / (feeds * PER_FEED),
        }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--feeds", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    rows = {"surpdb": bench_surpdb(a.feeds, a.rounds)}
    try:
        rows["redis (pipelined)"] = bench_redis(a.feeds, a.rounds)
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"skipped redis: {type(e).__name__}: {e}")
    print(
        f"{a.feeds} feeds x {PER_FEED} entries, {CANDIDATES} candidates per feed per round, "
        f"{a.rounds} rounds; {os.cpu_count()} cores"
    )
    print(f"{'system':<20}{'rounds/s':>10}{'feeds/s':>12}{'B/member':>10}{'B/member used':>15}")
    for name, r in rows.items():
        print(
            f"{name:<20}{r['rounds_s']:>10.2f}{r['feed_checks_s']:>12.0f}"
            f"{r['bytes_per_member']:>10.1f}{r['used_per_member']:>15.1f}"
        )
    if len(rows) == 2:
        s, r = rows["surpdb"], rows["redis (pipelined)"]
        assert s["added"] == r["added"], (s["added"], r["added"])
        print(
            f"surpdb: {s['rounds_s'] / r['rounds_s']:.1f}x the rounds/s, "
            f"{r['bytes_per_member'] / s['bytes_per_member']:.1f}x less memory per member"
        )


if __name__ == "__main__":
    main()
