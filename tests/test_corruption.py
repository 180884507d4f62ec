"""A damaged segment never crashes a Python process: reads return a value that was written,
a miss, or a typed error."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import surpdb

READER = r"""
import sys, surpdb
path, n = sys.argv[1], int(sys.argv[2])
bad = misses = hits = 0
try:
    c = surpdb.connect(path, timeout=0.2)
except surpdb.Error as e:
    print("refused", type(e).__name__); sys.exit(0)
for i in range(n):
    for call in ("get", "view", "zcard", "get_many"):
        try:
            if call == "get":
                v = c.get(f"k{i}")
            elif call == "view":
                m = c.view(f"b{i}")
                v = None if m is None else bytes(m)
                if m is not None: m.release()
            elif call == "zcard":
                v = c.zcard(f"z{i}")
            else:
                v = c.get_many([f"k{i}", f"b{i}"]).get(f"k{i}")
        except (surpdb.Error, TypeError) as e:
            continue
        if v is None or v == 0:
            misses += 1
        elif call in ("get", "get_many") and v == {"i": i, "s": "x" * (i % 50)}:
            hits += 1
        elif call == "view" and v == bytes([i % 256]) * 100:
            hits += 1
        elif call == "zcard" and v == 3:
            hits += 1
        else:
            bad += 1
            print("BAD", call, i, repr(v)[:80])
print("ok", hits, misses, bad)
sys.exit(1 if bad else 0)
"""


def test_flipped_bytes_never_crash_a_reader(tmp_path: Path) -> None:
    store = tmp_path / "store"
    n = 300
    with surpdb.Server(store, size="32MiB"):
        c = surpdb.connect(store)
        for i in range(n):
            c.set(f"k{i}", {"i": i, "s": "x" * (i % 50)})
            c.set(f"b{i}", bytes([i % 256]) * 100)
            c.zadd(f"z{i}", {"a": 1, "b": 2, "c": i})
        st = c.stats()
    heap_off = st["capacity"] - st["heap_capacity"]
    regions = [
        (0, 4096),  # header
        (4096, heap_off),  # index: garbage slots point anywhere
        (heap_off, heap_off + st["heap_used"]),  # the records
        (heap_off, heap_off + st["heap_used"]),
    ]
    rng = random.Random(1234)
    outcomes = []
    for round_ in range(12):
        damaged = tmp_path / f"damaged{round_}"
        shutil.copytree(store, damaged)
        with open(damaged / "data.surp", "r+b") as f:
            lo, hi = regions[round_ % len(regions)]
            for _ in range(rng.choice([1, 20, 500, 5000])):
                f.seek(rng.randrange(lo, hi))
                f.write(bytes([rng.randrange(256)]))
        r = subprocess.run(
            [sys.executable, "-c", READER, str(damaged), str(n)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, (round_, r.returncode, r.stdout[-2000:], r.stderr[-2000:])
        outcomes.append(r.stdout.split()[0])
        shutil.rmtree(damaged)
    assert outcomes.count("ok") >= 6  # damage outside the header leaves it valid: reads ran


def test_a_corrupt_record_is_a_miss_counted_logged_and_quarantined(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with surpdb.Server(store, size="8MiB", max_value="64KiB"):
        c = surpdb.connect(store)
        c.set("victim", "v" * 200)
        c.set("neighbour", "n" * 200)
        st = c.stats()
    heap_off = st["capacity"] - st["heap_capacity"]
    with open(store / "data.surp", "r+b") as f:
        f.seek(heap_off + 100)  # inside the first record's value
        f.write(b"\x00\x01\x02")
    with surpdb.Server(store, size="8MiB", max_value="64KiB") as srv:
        c = surpdb.connect(store)
        assert c.get("victim") is None  # never served
        assert c.get("neighbour") == "n" * 200  # the rest is
        assert c.stats()["corrupt_reads"] >= 1
        for i in range(30_000):  # wrap the heap: the cleaner meets the bad record
            c.set(f"churn{i}", "x" * 500, wait=False)
        c.flush()
        st = c.stats()
        assert st["quarantined"] == 1
        assert "quarantined a record" in srv.log
        report = surpdb._native.check(store)
        assert report["ok"], report["problems"]
