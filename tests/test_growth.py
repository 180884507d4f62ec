"""A segment that grows while serving (issue 14): `resize()` / `surpdb resize`, a bigger size
on SIGHUP or at a restart; readers and writers in other processes carry on across it, and
see the new space without reconnecting."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys

import pytest

import surpdb
from surpdb import _native

VALUE = random.Random(18).randbytes(10_000)  # incompressible: fills the heap as it is


def _fill(c: surpdb.Client, start: int) -> int:
    """Store VALUE under k<start>, k<start+1>... until the segment is full (noeviction)."""
    i = start
    while True:
        try:
            c.set(f"k{i}", VALUE)
        except surpdb.SegmentFull:
            return i
        i += 1


def test_resize_grows_a_full_segment_in_place(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="8MiB", max_value="64KiB", policy="noeviction"):
        c = surpdb.connect(store_dir)
        assert c.stats()["max_size"] == 32 << 20  # four times the size by default
        n = _fill(c, 0)
        assert c.resize("16MiB") == 16 << 20
        m = _fill(c, n)
        assert m > 1.8 * n, (n, m)
        assert c.resize(32 << 20) == 32 << 20
        k = _fill(c, m)
        assert k > 1.8 * m, (m, k)
        assert all(c.get(f"k{i}") == VALUE for i in range(k))
        st = c.stats()
        assert st["capacity"] == 32 << 20 and st["heap_capacity"] > 31 << 20
        with pytest.raises(ValueError, match="beyond this segment's max_size"):
            c.resize("64MiB")
        with pytest.raises(ValueError, match="does not shrink"):
            c.resize("8MiB")
    assert _native.check(store_dir)["ok"]


def _reader(path: str, n: int, stop: mp.Event, ready: mp.Queue, q: mp.Queue) -> None:  # type: ignore[type-arg]
    c = surpdb.connect(path)  # attached before the growth: never reconnects
    reads = wrong = 0
    i = 0
    while not stop.is_set() or reads < 200:
        v = c.get(f"k{i % n}")
        wrong += v is not None and v != VALUE
        reads += 1
        i += 7
        if reads == 100:
            ready.put("reader")
    q.put((reads, wrong, c.stats()["capacity"]))


def _writer(path: str, w: int, stop: mp.Event, ready: mp.Queue, q: mp.Queue) -> None:
    c = surpdb.connect(path, timeout=30)
    i = 0
    while not stop.is_set() or i < 100:
        assert c.set(f"w{w}:{i % 300}", (w, i)) is True
        i += 1
        if i == 100:
            ready.put("writer")
    q.put((w, i))


def test_growth_under_concurrent_readers_and_writers(store_dir: str) -> None:
    ctx = mp.get_context("spawn")
    with surpdb.Server(store_dir, size="8MiB", max_value="64KiB", policy="noeviction"):
        c = surpdb.connect(store_dir)
        # Fill about 60% of each size, leaving the writers (2 x 300 small keys, overwritten
        # over and over) room to keep going under noeviction.
        n = 0
        for i in range(int(0.6 * (8 << 20) / len(VALUE))):
            c.set(f"k{i}", VALUE)
            n += 1
        stop, ready, q = ctx.Event(), ctx.Queue(), ctx.Queue()
        procs = [ctx.Process(target=_reader, args=(store_dir, n, stop, ready, q)) for _ in "ab"]
        procs += [ctx.Process(target=_writer, args=(store_dir, w, stop, ready, q)) for w in (0, 1)]
        for p in procs:
            p.start()
        try:
            for _ in procs:  # all four at work before the first growth
                ready.get(timeout=60)
            for mib in (12, 20, 32):
                assert c.resize(f"{mib}MiB") == mib << 20
                # The new space, filled while the others work: past what the old size held.
                while n < 0.6 * (mib << 20) / len(VALUE):
                    c.set(f"k{n}", VALUE)
                    n += 1
        finally:
            stop.set()
            for p in procs:
                p.join(timeout=60)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        results = [q.get(timeout=10) for _ in procs]
        readers = [r for r in results if len(r) == 3]
        assert all(wrong == 0 and reads > 100 for reads, wrong, _ in readers), readers
        assert all(cap == 32 << 20 for _, _, cap in readers), "readers saw the new size"
        assert n * len(VALUE) > 16 << 20
        assert all(c.get(f"k{i}") == VALUE for i in range(n))
        for w, i in (r for r in results if len(r) == 2):
            assert c.get(f"w{w}:{(i - 1) % 300}") == (w, i - 1)
    assert _native.check(store_dir)["ok"]


def test_a_bigger_size_on_sighup_or_at_restart_grows_the_segment(store_dir: str) -> None:
    conf = os.path.join(os.path.dirname(store_dir), "surpdb.toml")

    def write_conf(size: str) -> None:
        with open(conf, "w") as f:
            f.write(f'dir = "{store_dir}"\nsize = "{size}"\nmax_value = "64KiB"\n')

    write_conf("8MiB")
    srv = surpdb.Server(store_dir, size=None, config=conf)
    try:
        c = surpdb.connect(store_dir)
        c.set("a", 1)
        write_conf("16MiB")
        srv.signal(signal.SIGHUP)
        # The daemon handles the signal before it applies our next request, and reloads
        # right after the loop pass that applied it: two round trips order it.
        c.flush()
        c.flush()
        assert c.stats()["capacity"] == 16 << 20
        srv.stop()
        # A restart asking for more grows it too (and one asking for less keeps its size).
        srv = surpdb.Server(store_dir, size="24MiB", max_value="64KiB")
        assert c.stats()["capacity"] == 24 << 20
        srv.stop()
        srv = surpdb.Server(store_dir, size="8MiB", max_value="64KiB")
        assert c.stats()["capacity"] == 24 << 20 and c.get("a") == 1
        assert "does not shrink" in srv.log
    finally:
        srv.stop()


def test_surpdb_resize_command(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="8MiB", max_value="64KiB"):
        r = subprocess.run(
            [sys.executable, "-m", "surpdb", "resize", store_dir, "16MiB"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert "8388608 -> 16777216 bytes" in r.stdout
        assert surpdb.connect(store_dir).stats()["capacity"] == 16 << 20
