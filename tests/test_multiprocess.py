"""Several processes write and read at once; every read is a value that was written, per-key
reads never go back in time, and every key ends with its last acknowledged value."""

from __future__ import annotations

import multiprocessing as mp
import random

import surpdb

WRITERS = 4
READERS = 2
KEYS = 64
ROUNDS = 3000


def writer(path: str, wid: int, q: mp.Queue) -> None:  # type: ignore[type-arg]
    c = surpdb.connect(path)
    rng = random.Random(wid)
    last: dict[str, object] = {}
    for seq in range(1, ROUNDS + 1):
        k = rng.randrange(KEYS)
        key = f"w{wid}:{k}"
        if rng.random() < 0.1:
            c.delete(key)
            last[key] = None
        else:
            value = (wid, k, seq, "x" * rng.randrange(0, 300))
            if rng.random() < 0.3:
                c.wait(c.set(key, value, wait=False))
            else:
                assert c.set(key, value) is True
            last[key] = value
    q.put(last)


def reader(path: str, rid: int, stop: mp.Event, q: mp.Queue) -> None:  # type: ignore[type-arg]
    c = surpdb.connect(path)
    rng = random.Random(1000 + rid)
    seen: dict[str, int] = {}
    reads = bad = 0
    while not stop.is_set() or reads < 1000:
        wid, k = rng.randrange(WRITERS), rng.randrange(KEYS)
        key = f"w{wid}:{k}"
        if rng.random() < 0.2:
            got = c.get_many([key]).get(key)
        else:
            got = c.get(key)
        reads += 1
        if got is None:
            continue
        if not (isinstance(got, tuple) and got[0] == wid and got[1] == k and len(got) == 4):
            bad += 1
            continue
        if got[2] < seen.get(key, 0):
            bad += 1  # went back in time
        seen[key] = got[2]
    q.put((reads, bad))


def test_writers_and_readers_against_a_model(server: surpdb.Server) -> None:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    rq: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    stop = ctx.Event()
    readers = [ctx.Process(target=reader, args=(server.path, r, stop, rq)) for r in range(READERS)]
    writers = [ctx.Process(target=writer, args=(server.path, w, q)) for w in range(WRITERS)]
    for p in readers + writers:
        p.start()
    model: dict[str, object] = {}
    for _ in writers:
        model.update(q.get(timeout=120))
    stop.set()
    results = [rq.get(timeout=120) for _ in readers]
    for p in readers + writers:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert all(bad == 0 for _, bad in results), results
    assert sum(reads for reads, _ in results) >= 2000
    c = surpdb.connect(server.path)
    got = c.get_many(list(model))
    for key, value in model.items():
        assert got.get(key) == value, key
    assert c.stats()["items"] == sum(v is not None for v in model.values())


def incrementer(path: str, n: int) -> None:
    c = surpdb.connect(path)
    for _ in range(n):
        c.incr("counter")


def test_concurrent_incr_is_atomic(server: surpdb.Server) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=incrementer, args=(server.path, 2000)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert surpdb.connect(server.path).get("counter") == 8000


def adder(path: str, q: mp.Queue) -> None:  # type: ignore[type-arg]
    c = surpdb.connect(path)
    q.put(sum(bool(c.add(f"lock{i}", 1)) for i in range(500)))


def test_concurrent_add_has_one_winner_per_key(server: surpdb.Server) -> None:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=adder, args=(server.path, q)) for _ in range(4)]
    for p in procs:
        p.start()
    wins = sum(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert wins == 500
