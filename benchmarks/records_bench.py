"""Record store: bytes per record, read latency and load rate, beside Redis, memcached,
py-lmdb and msgpack, in one run.

    python benchmarks/records_bench.py [--links ../shared/data/links-dev.jsonl.xz]
        [--limit N] [--compact] [--skip-servers] [--json out.json] [--default]

--default also measures the path a user gets: default settings, no train() call, the records
inserted in batches of 10,000 in the order of the file (and again shuffled); the daemon trains
by itself (at train_after, 2,000 records, at 4x growth steps up to 128k records, then at
every tenfold growth, and when records start compressing worse than its model did).

Load rates: one client inserting every record, then two client processes inserting half
each (the first and the second half, in batches of 10,000) into a fresh store; clients
compress records themselves and the daemon checks and stores them. record ns is the median
of random reads, p99 of single timed calls.

Without --links (or if the file is missing) it uses generated link records. surpdb's figure is
all-in: stats()["bytes_used"] (headers, tables, models, records) of a fresh store after
train(sample) and insert_many of every record, checked against the files' allocated blocks.
Redis and memcached are started by this script on loopback (Debian packages). Not part of
the test run: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import random
import statistics
import sys
import time

from servers import scratch_dir

import surpdb

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_LINKS = os.path.join(HERE, "..", "..", "shared", "data", "links-dev.jsonl.xz")


def load_records(path: str | None, limit: int) -> tuple[list[dict], str]:
    if path and os.path.exists(path):
        out = []
        with lzma.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                out.append(json.loads(line))
                if len(out) >= limit:
                    break
        return out, os.path.basename(path)
    rng = random.Random(42)
    words = "fast small cache record store python rust shared memory link the of a for".split()
    out = []
    for i in range(min(limit, 200_000)):
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz-") for _ in range(rng.randint(4, 14)))
        ver = f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}"
        if i % 5:
            rec = {
                "url": f"https://pypi.org/project/{name}/{ver}/",
                "title": " ".join(rng.choice(words) for _ in range(rng.randint(0, 10))),
                "source": "pypi",
                "published": 1_500_000_000 + rng.randint(0, 100) * 2_592_000,
            }
        else:
            rec = {
                "url": f"https://www.npmjs.com/package/{name}/v/{ver}",
                "title": " ".join(rng.choice(words) for _ in range(rng.randint(0, 8))),
                "source": "npm",
                "downloads": int(rng.paretovariate(0.8) * 100),
            }
        out.append(rec)
    return out, "generated"


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def median_ns_per_call(fn, ids: list, batch: int = 100, batches: int = 300) -> float:
    """Median over batches of the mean ns per call (a per-call timer costs more than a call)."""
    rng = random.Random(7)
    runs = []
    for _ in range(batches):
        sample = [ids[rng.randrange(len(ids))] for _ in range(batch)]
        t0 = time.perf_counter_ns()
        for x in sample:
            fn(x)
        runs.append((time.perf_counter_ns() - t0) / batch)
    return statistics.median(runs)


def p99_ns_per_call(fn, ids: list, calls: int = 20_000) -> float:
    """99th percentile of single calls (each timed alone: includes about 50 ns of timer)."""
    rng = random.Random(9)
    times = []
    for _ in range(calls):
        x = ids[rng.randrange(len(ids))]
        t0 = time.perf_counter_ns()
        fn(x)
        times.append(time.perf_counter_ns() - t0)
    times.sort()
    return times[len(times) * 99 // 100]


def _load_part(d: str, part: list[dict], barrier) -> None:
    c = surpdb.connect(d)
    barrier.wait()
    for i in range(0, len(part), 10_000):
        c.insert_many(part[i : i + 10_000])


def load_two_clients(records: list[dict], sample: list[dict] | None, compact: bool) -> float:
    """Records per second from two client processes, each inserting half of the records (in
    batches of 10,000) into a fresh store trained on the same sample (no sample: the default
    path, the daemon training by itself)."""
    import multiprocessing

    d = scratch_dir("surpdb-records-two-")
    n = len(records)
    settings = {"train_after": 0} if sample is not None else {}
    with surpdb.Server(d, size="20MiB", records_size="8GiB", **settings):
        if sample is not None:
            surpdb.connect(d).train(sample, compact=compact)
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(3)
        parts = (records[: n // 2], records[n // 2 :])
        procs = [ctx.Process(target=_load_part, args=(d, p, barrier)) for p in parts]
        for p in procs:
            p.start()
        barrier.wait()
        t0 = time.perf_counter()
        for p in procs:
            p.join()
        elapsed = time.perf_counter() - t0
        if any(p.exitcode != 0 for p in procs):
            raise SystemExit("a loading client failed")
        if surpdb.connect(d).stats()["records"] != n:
            raise SystemExit("two clients did not store every record")
    return n / elapsed


def bench_surpdb(records: list[dict], compact: bool, out: dict) -> None:
    d = scratch_dir("surpdb-records-")
    n = len(records)
    with surpdb.Server(d, size="20MiB", records_size="8GiB", train_after=0):
        c = surpdb.connect(d)
        rng = random.Random(1)
        sample = rng.sample(records, min(100_000, n))
        t0 = time.perf_counter()
        model_bytes = c.train(sample, compact=compact)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids = []
        for i in range(0, n, 50_000):
            ids += c.insert_many(records[i : i + 50_000])
        load_s = time.perf_counter() - t0
        st = c.stats()
        files = [os.path.join(d, f) for f in ("data.surp", "records.surp")]
        alloc = sum(allocated(f) for f in files)
        # Exactness on a sample, then read latency.
        for i in rng.sample(range(n), min(20_000, n)):
            if c.record(ids[i]) != records[i]:
                raise SystemExit(f"record {i} came back different")
        rec_ns = median_ns_per_call(c.record, ids)
        rec_p99 = p99_ns_per_call(c.record, ids)
        lazy_ns = median_ns_per_call(lambda r: c.record(r, lazy=True)["url"], ids)
        name = "surpdb compact" if compact else "surpdb"
        encoded_by_clients = st["records_encoded_by_clients"]
        out[name] = {
            "bytes_per_record": st["bytes_used"] / n,
            "allocated_per_record": alloc / n,
            "records_bytes_per_record": st["records_bytes"] / n,
            "model_bytes": model_bytes,
            "train_s": train_s,
            "load_per_s": n / load_s,
            "record_ns": rec_ns,
            "record_p99_ns": rec_p99,
            "lazy_field_ns": lazy_ns,
            "encoded_by_clients": encoded_by_clients,
        }
    out[name]["load_2_per_s"] = load_two_clients(records, sample, compact)


def bench_surpdb_default(records: list[dict], name: str, out: dict) -> None:
    """The default path: no train() call, default settings, batches of 10,000 as given."""
    d = scratch_dir("surpdb-records-default-")
    n = len(records)
    with surpdb.Server(d, size="20MiB", records_size="8GiB"):
        c = surpdb.connect(d)
        t0 = time.perf_counter()
        ids = []
        for i in range(0, n, 10_000):
            ids += c.insert_many(records[i : i + 10_000])
        load_s = time.perf_counter() - t0
        st = c.stats()
        rng = random.Random(3)
        for i in rng.sample(range(n), min(20_000, n)):
            if c.record(ids[i]) != records[i]:
                raise SystemExit(f"record {i} came back different")
        rec_ns = median_ns_per_call(c.record, ids)
        out[name] = {
            "bytes_per_record": st["bytes_used"] / n,
            "records_bytes_per_record": st["records_bytes"] / n,
            "load_per_s": n / load_s,
            "record_ns": rec_ns,
            "record_p99_ns": p99_ns_per_call(c.record, ids),
            "models": st["record_models"],
            "recent_bpr": st["record_recent_bpr_milli"] / 1000,
        }
    out[name]["load_2_per_s"] = load_two_clients(records, None, False)


def bench_msgpack_lmdb(records: list[dict], out: dict) -> None:
    try:
        import lmdb
        import msgpack
    except ImportError:
        out["msgpack"] = {"skipped": "pip install msgpack lmdb"}
        return
    packed = [msgpack.packb(r) for r in records]
    n = len(records)
    out["msgpack alone"] = {
        "bytes_per_record": sum(map(len, packed)) / n,
        "record_ns": median_ns_per_call(msgpack.unpackb, packed),
    }
    d = scratch_dir("lmdb-records-")
    env = lmdb.open(d, map_size=8 << 30, sync=False, metasync=False)
    t0 = time.perf_counter()
    with env.begin(write=True) as txn:
        for i, p in enumerate(packed):
            txn.put(i.to_bytes(8, "big"), p, append=True)
    load_s = time.perf_counter() - t0
    info, stat = env.info(), env.stat()
    used = (info["last_pgno"] + 1) * stat["psize"]
    keys = [i.to_bytes(8, "big") for i in range(n)]
    with env.begin() as txn:
        get = txn.get
        ns = median_ns_per_call(lambda k: msgpack.unpackb(get(k)), keys)
        p99 = p99_ns_per_call(lambda k: msgpack.unpackb(get(k)), keys)
    out["py-lmdb + msgpack"] = {
        "bytes_per_record": used / n,
        "allocated_per_record": allocated(os.path.join(d, "data.mdb")) / n,
        "load_per_s": n / load_s,
        "record_ns": ns,
        "record_p99_ns": p99,
    }
    env.close()


def bench_servers(records: list[dict], out: dict) -> None:
    sys.path.insert(0, HERE)
    from servers import free_port, memcached_args, redis_args, running

    try:
        import msgpack
        import redis
        from pymemcache.client.base import Client as Memcache
    except ImportError:
        out["redis"] = {"skipped": "pip install redis pymemcache msgpack"}
        return
    n = len(records)
    for layout in ("HASH", "msgpack string"):
        port = free_port()
        try:
            with running(redis_args(port), port):
                r = redis.Redis(port=port)
                base = r.info("memory")["used_memory"]
                t0 = time.perf_counter()
                pipe = r.pipeline(transaction=False)
                for i, rec in enumerate(records):
                    if layout == "HASH":
                        pipe.hset(f"r:{i}", mapping={k: str(v) for k, v in rec.items()})
                    else:
                        pipe.set(f"r:{i}", msgpack.packb(rec))
                    if i % 5000 == 4999:
                        pipe.execute()
                pipe.execute()
                load_s = time.perf_counter() - t0
                used = r.info("memory")["used_memory"] - base
                keys = [f"r:{i}" for i in range(n)]
                if layout == "HASH":
                    ns = median_ns_per_call(r.hgetall, keys, batches=50)
                else:
                    ns = median_ns_per_call(
                        lambda k, r=r: msgpack.unpackb(r.get(k)), keys, batches=50
                    )
                out[f"Redis {layout}"] = {
                    "bytes_per_record": used / n,
                    "load_per_s": n / load_s,
                    "record_ns": ns,
                }
        except RuntimeError as e:
            out[f"Redis {layout}"] = {"skipped": str(e)}
    port = free_port()
    try:
        with running(memcached_args(port, megabytes=2048), port):
            m = Memcache(("127.0.0.1", port))
            base = int(m.stats()[b"bytes"])
            t0 = time.perf_counter()
            for i in range(0, n, 1000):
                m.set_many(
                    {f"r:{j}": msgpack.packb(records[j]) for j in range(i, min(n, i + 1000))},
                    noreply=False,
                )
            load_s = time.perf_counter() - t0
            st = m.stats()
            used = int(st[b"bytes"]) - base
            keys = [f"r:{i}" for i in range(n)]
            ns = median_ns_per_call(lambda k: msgpack.unpackb(m.get(k)), keys, batches=50)
            out["memcached msgpack"] = {
                "bytes_per_record": used / n,
                "load_per_s": n / load_s,
                "record_ns": ns,
            }
    except RuntimeError as e:
        out["memcached msgpack"] = {"skipped": str(e)}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--links", default=DEFAULT_LINKS)
    ap.add_argument("--limit", type=int, default=10**9)
    ap.add_argument("--compact", action="store_true", help="also measure the compact codec")
    ap.add_argument("--skip-servers", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--dump", default=None, help="write the records for examples/codec_eval.rs")
    ap.add_argument("--default", action="store_true", help="also the path a user gets")
    a = ap.parse_args()
    records, source = load_records(a.links, a.limit)
    if a.dump:
        from surpdb import _native

        with open(a.dump, "wb") as f:
            for r in records:
                b = _native.encode_value(r)
                f.write(len(b).to_bytes(4, "little") + b)
        print(f"wrote {len(records)} records to {a.dump}")
        return
    js = sum(len(json.dumps(r)) for r in records) / len(records)
    print(f"{len(records)} records from {source}; JSON {js:.0f} B each")
    out: dict[str, dict] = {}
    bench_surpdb(records, False, out)
    if a.default:
        bench_surpdb_default(records, "surpdb default, file order", out)
        shuffled = records[:]
        random.Random(11).shuffle(shuffled)
        bench_surpdb_default(shuffled, "surpdb default, shuffled", out)
    if a.compact:
        bench_surpdb(records, True, out)
    bench_msgpack_lmdb(records, out)
    if not a.skip_servers:
        bench_servers(records, out)
    ref = out["surpdb"]
    print(
        f"\n{'store':<22}{'B/record':>10}{'x surpdb':>10}{'alloc B':>10}"
        f"{'record ns':>11}{'p99 ns':>9}{'load/s':>9}{'2 clients':>11}"
    )
    for name, r in out.items():
        if "skipped" in r:
            print(f"{name:<22}  skipped: {r['skipped']}")
            continue
        ratio = r["bytes_per_record"] / ref["bytes_per_record"]
        alloc = f"{r['allocated_per_record']:.1f}" if "allocated_per_record" in r else "-"
        load = f"{r['load_per_s'] / 1e3:.0f}k" if "load_per_s" in r else "-"
        load2 = f"{r['load_2_per_s'] / 1e3:.0f}k" if "load_2_per_s" in r else "-"
        p99 = f"{r['record_p99_ns']:.0f}" if "record_p99_ns" in r else "-"
        print(
            f"{name:<22}{r['bytes_per_record']:>10.1f}{ratio:>10.2f}{alloc:>10}"
            f"{r['record_ns']:>11.0f}{p99:>9}{load:>9}{load2:>11}"
        )
    for name in ("surpdb default, file order", "surpdb default, shuffled"):
        if name in out:
            r = out[name]
            print(f"{name}: {r['models']} models trained by the daemon; the last records "
                  f"stored took {r['recent_bpr']:.1f} B each")  # fmt: skip
    for name in ("surpdb", "surpdb compact"):
        if name in out:
            r = out[name]
            print(
                f"{name}: model {r['model_bytes']} bytes trained in {r['train_s']:.2f} s; "
                f"lazy record + one field {r['lazy_field_ns']:.0f} ns; "
                f"{r['encoded_by_clients']} records stored as the client compressed them"
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"source": source, "records": len(records), "results": out}, f, indent=2)


if __name__ == "__main__":
    main()
