"""SIGKILL the daemon at random moments while writers and readers run; nothing acknowledged
is lost, nothing is applied twice, and no read ever returns a value that was never written."""

from __future__ import annotations

import multiprocessing as mp
import random
import time

import surpdb

KILLS = 20


def writer(path: str, w: int, stop: mp.Event, q: mp.Queue) -> None:  # type: ignore[type-arg]
    # A long timeout: a wait spans the daemon's restart, it never gives up on a request.
    c = surpdb.connect(path, timeout=60)
    rng = random.Random(w)
    counter = appended = 0
    last: dict[str, object] = {}
    seq = 0
    while not stop.is_set() or seq < 300:
        seq += 1
        r = rng.random()
        if r < 0.3:
            counter = c.incr(f"w{w}:count")
        elif r < 0.5:
            assert c.append(f"w{w}:log", appended) == appended + 1
            appended += 1
        else:
            key = f"w{w}:k{rng.randrange(50)}"
            if rng.random() < 0.2:
                c.delete(key)
                last[key] = None
            else:
                value = (w, key, seq)
                assert c.set(key, value) is True
                last[key] = value
    q.put((w, counter, appended, last, seq))


def reader(path: str, stop: mp.Event, q: mp.Queue) -> None:  # type: ignore[type-arg]
    c = surpdb.connect(path)
    rng = random.Random(99)
    counters = [0, 0]
    reads = bad = 0
    while not stop.is_set():
        w = rng.randrange(2)
        n = c.get(f"w{w}:count")
        if n is not None:
            bad += n < counters[w]  # a counter never goes back
            counters[w] = max(counters[w], n)
        log = c.get(f"w{w}:log")
        if log is not None and log != list(range(len(log))):
            bad += 1  # appends are in order, none lost in the middle, none twice
        key = f"w{w}:k{rng.randrange(50)}"
        v = c.get(key)
        if v is not None and not (isinstance(v, tuple) and v[:2] == (w, key)):
            bad += 1
        reads += 3
    q.put((reads, bad))


def test_kill_loop_loses_nothing_acknowledged(store_dir: str) -> None:
    srv = surpdb.Server(store_dir, size="64MiB")
    ctx = mp.get_context("spawn")
    stop, wq, rq = ctx.Event(), ctx.Queue(), ctx.Queue()
    writers = [ctx.Process(target=writer, args=(store_dir, w, stop, wq)) for w in range(2)]
    rd = ctx.Process(target=reader, args=(store_dir, stop, rq))
    for p in [*writers, rd]:
        p.start()
    rng = random.Random(2012)
    kills = 0
    try:
        c = surpdb.connect(store_dir, timeout=60)
        deadline = time.monotonic() + 60
        while c.get("w0:count") is None and time.monotonic() < deadline:
            c.flush()  # writers are up once their first write is visible
        for _ in range(KILLS):
            # Random moments: this sleep picks when to kill; it synchronises nothing.
            time.sleep(rng.uniform(0.02, 0.25))
            srv.kill()
            kills += 1
            srv = surpdb.Server(store_dir, size="64MiB")
    finally:
        stop.set()
        results = [wq.get(timeout=180) for _ in writers]
        reads, bad = rq.get(timeout=180)
        for p in [*writers, rd]:
            p.join(timeout=60)
    try:
        assert kills == KILLS
        assert all(p.exitcode == 0 for p in [*writers, rd])
        c = surpdb.connect(store_dir)
        checked = 0
        for w, counter, appended, last, ops in results:
            assert c.get(f"w{w}:count") == counter  # every incr applied exactly once
            assert c.get(f"w{w}:log") == list(range(appended))
            for key, value in last.items():
                assert c.get(key) == value, key
            checked += ops
        assert bad == 0 and reads > 100
        st = c.stats()
        print(f"kills={kills} acknowledged_writes_checked={checked} lost=0 reads={reads}")
        assert st["generation"] == KILLS + 1
        assert checked >= 600
    finally:
        srv.stop()
