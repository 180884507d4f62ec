"""Tiered mode against its staleness bound: two hosts (two data directories, two daemons) in
front of one real redis-server, writer and reader processes on both, every read checked
against the history of acknowledged writes, with and without faults (redis SIGKILLed and
restarted, redis SIGSTOPped, FLUSHALL from a third client, a daemon SIGKILLed mid-write).

The rule each read is held to: a read that starts at time t returns, for its key, a value no
older than the newest write acknowledged before t - BOUND (BOUND = upstream_timeout plus a
little for the clocks), or raises Unavailable. Writers write increasing integers, one
writer per key, so "no older" is ">=". Times are CLOCK_MONOTONIC, shared by every process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from upstream_server import Redis

import surpdb

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.slow,
]

PREFIX = "hist:"
TIMEOUT_MS = 500
BOUND = TIMEOUT_MS / 1000 + 0.05
KEYS_PER_HOST = 4


def _host(path: str, url: str) -> surpdb.Server:
    return surpdb.Server(
        path, size="32MiB", upstream=url, upstream_prefix=PREFIX, upstream_timeout_ms=TIMEOUT_MS
    )


def _connected(c: surpdb.Client, timeout: float = 10.0) -> None:
    t0 = time.monotonic()
    while c.stats()["upstream_connected"] != 1:
        assert time.monotonic() - t0 < timeout, "no upstream connection"
        time.sleep(0.005)


def writer(path: str, keys: list[str], stop: Any, out: Any, seed: int) -> None:
    """Write increasing ints to `keys` (random order) until `stop`; report per key the
    acknowledged (value, ack time) pairs and the highest value attempted."""
    import random

    rnd = random.Random(seed)
    c = surpdb.connect(path, timeout=2.0)
    acked: dict[str, list[tuple[int, float]]] = {k: [] for k in keys}
    tried = dict.fromkeys(keys, 0)
    n = 0
    while not stop.is_set():
        k = rnd.choice(keys)
        n += 1
        tried[k] = n
        try:
            c.set(k, n)
        except (surpdb.Unavailable, surpdb.Timeout):
            continue  # outcome unknown: may or may not be upstream
        acked[k].append((n, time.monotonic()))
    out.put(("writer", acked, tried))


def reader(path: str, keys: list[str], stop: Any, out: Any, seed: int, ready: Any = None) -> None:
    """Read random keys until `stop`; report per key the runs of equal values read:
    (value, start of the run's first read, start of its last). Unavailable reads are
    counted."""
    import random

    rnd = random.Random(seed)
    c = surpdb.connect(path, timeout=2.0)
    runs: dict[str, list[tuple[Any, float, float]]] = {k: [] for k in keys}
    unavailable = reads = 0
    while not stop.is_set():
        k = rnd.choice(keys)
        t = time.monotonic()
        try:
            v = c.get(k)
        except (surpdb.Unavailable, surpdb.Timeout):
            unavailable += 1
            continue
        reads += 1
        if ready is not None and reads == 1:
            ready.set()
        r = runs[k]
        if r and r[-1][0] == v:
            r[-1] = (v, r[-1][1], t)
        else:
            r.append((v, t, t))
    out.put(("reader", runs, (reads, unavailable)))


@dataclass
class History:
    acked: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    tried: dict[str, int] = field(default_factory=dict)
    runs: list[dict[str, list[tuple[Any, float, float]]]] = field(default_factory=list)
    reads: int = 0
    unavailable: int = 0
    # FLUSHALL from a third client: (sent, answered).
    flushes: list[tuple[float, float]] = field(default_factory=list)

    def check(self) -> list[str]:
        """Every violation of the rule (see the module doc). A run of equal values is held
        to it at its last read, the strictest."""
        bad = []
        for runs in self.runs:
            for k, rs in runs.items():
                acks = self.acked.get(k, [])
                for v, _, t in rs:
                    due = [(n, ta) for n, ta in acks if ta <= t - BOUND]
                    newest, acked_at = max(due, default=(None, None))
                    if v is None:
                        # Absent: nothing due yet, or a FLUSHALL sent before this read that
                        # may have run after the newest due write.
                        ok = newest is None or any(
                            fs <= t and fe >= acked_at for fs, fe in self.flushes
                        )
                    else:
                        ok = (newest is None or v >= newest) and v <= self.tried.get(k, 0)
                    if not ok:
                        bad.append(f"{k}: read {v!r} at {t:.3f}, {newest} acked by t-bound")
        return bad


@pytest.fixture
def cluster(tmp_path: os.PathLike[str]) -> Iterator[tuple[Redis, list[surpdb.Server], str]]:
    d = os.fspath(tmp_path)
    r = Redis(d, durable=True)
    hosts = [_host(os.path.join(d, "a"), r.url), _host(os.path.join(d, "b"), r.url)]
    try:
        for h in hosts:
            _connected(surpdb.connect(h.path))
        yield r, hosts, d
    finally:
        for h in hosts:
            h.stop()
        r.stop()


def _run(hosts: list[surpdb.Server], faults: Any) -> History:
    """Writers and readers on both hosts while `faults()` runs; their merged history."""
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    keys = [[f"h{i}k{j}" for j in range(KEYS_PER_HOST)] for i in range(len(hosts))]
    every = [k for ks in keys for k in ks]
    procs = []
    for i, h in enumerate(hosts):
        procs.append(ctx.Process(target=writer, args=(h.path, keys[i], stop, out, i)))
        procs.append(ctx.Process(target=reader, args=(h.path, every, stop, out, 10 + i)))
    for p in procs:
        p.start()
    hist = History()
    try:
        faults(hist)
    finally:
        stop.set()
        for _ in procs:
            kind, a, b = out.get(timeout=60)
            if kind == "writer":
                hist.acked.update(a)
                hist.tried.update(b)
            else:
                hist.runs.append(a)
                hist.reads += b[0]
                hist.unavailable += b[1]
        for p in procs:
            p.join(timeout=30)
    return hist


def _settle(seconds: float) -> None:
    """Let the writers and readers run for `seconds` (they are what is tested meanwhile)."""
    time.sleep(seconds)


def _assert_upstream_has_every_acked_write(r: Redis, hist: History) -> None:
    for k, acks in hist.acked.items():
        if not acks:
            continue
        got = r.cli("GET", PREFIX + k)
        newest = acks[-1][0]
        assert got and newest <= int(got) <= hist.tried[k], f"{k}: upstream {got!r}, acked {newest}"


def test_invalidation_delay_over_10000_writes(cluster) -> None:  # type: ignore[no-untyped-def]
    """Host A writes one key 10,000 times; a process on host B reads it in a loop and notes
    when each value first shows. Delay = first seen on B - acknowledged on A."""
    r, hosts, _ = cluster
    ctx = mp.get_context("spawn")
    stop, out, ready = ctx.Event(), ctx.Queue(), ctx.Event()
    p = ctx.Process(target=reader, args=(hosts[1].path, ["delay"], stop, out, 1, ready))
    p.start()
    a = surpdb.connect(hosts[0].path)
    assert ready.wait(60), "the reader did not start"
    acks = []
    try:
        for i in range(1, 10_001):
            a.set("delay", i)
            acks.append((i, time.monotonic()))
        # The last value reaches B (bounded wait), then the reader stops.
        b = surpdb.connect(hosts[1].path)
        t0 = time.monotonic()
        while b.get("delay") != 10_000:
            assert time.monotonic() - t0 < BOUND + 1
    finally:
        stop.set()
        _, runs, _ = out.get(timeout=60)
        p.join(timeout=30)
    # Delay of write i: the first read on B that returned i or later, minus i's ack.
    first_seen = [(v, t_first) for v, t_first, _ in runs["delay"] if isinstance(v, int)]
    delays, j = [], 0
    for i, ta in acks:
        while j < len(first_seen) and first_seen[j][0] < i:
            j += 1
        if j < len(first_seen):
            delays.append(max(0.0, first_seen[j][1] - ta))
    hist = History(acked={"delay": acks}, tried={"delay": 10_000}, runs=[runs])
    assert hist.check() == []
    delays.sort()
    p50 = statistics.median(delays)
    p99 = delays[int(len(delays) * 0.99)]
    print(
        f"\ninvalidation delay over {len(acks)} writes ({len(delays)} measured): "
        f"p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, max {delays[-1] * 1e3:.2f} ms"
    )
    assert len(delays) >= 9_000


def test_reads_on_both_hosts_keep_the_bound_while_both_write(cluster) -> None:  # type: ignore[no-untyped-def]
    r, hosts, _ = cluster
    hist = _run(hosts, lambda h: _settle(3.0))
    assert hist.check() == []
    assert hist.reads > 1000 and sum(len(a) for a in hist.acked.values()) > 200
    _assert_upstream_has_every_acked_write(r, hist)


def test_faults_never_serve_past_the_bound_or_lose_an_acknowledged_write(cluster) -> None:  # type: ignore[no-untyped-def]
    r, hosts, d = cluster

    def faults(hist: History) -> None:
        _settle(1.0)
        # redis SIGKILLed (append-only file, fsync always) and restarted on its port.
        r.stop()
        _settle(1.0)
        r.start()
        _settle(1.5)
        # redis hung for 2 s (a stopped process: the connection stays open, nothing answers).
        r.pause()
        try:
            _settle(2.0)
        finally:
            r.resume()
        _settle(1.5)
        # FLUSHALL from a third client.
        sent = time.monotonic()
        r.cli("FLUSHALL")
        hist.flushes.append((sent, time.monotonic()))
        _settle(1.0)
        # Host A's daemon SIGKILLed while its writer writes, then restarted.
        hosts[0].kill()
        _settle(0.3)
        hosts[0] = _host(os.path.join(d, "a"), r.url)
        _settle(2.0)

    hist = _run(hosts, faults)
    assert hist.check() == []
    assert hist.unavailable > 0, "the outages were seen as Unavailable, not served"
    assert hist.reads > 1000
    # FLUSHALL removed what was acknowledged before it; everything acknowledged after it is
    # upstream.
    after = max(fe for _, fe in hist.flushes)
    for k, acks in hist.acked.items():
        later = [n for n, t in acks if t > after]
        if later:
            got = r.cli("GET", PREFIX + k)
            assert got and later[-1] <= int(got) <= hist.tried[k], f"{k}: {got!r} vs {later[-1]}"
