"""Reader pins: a live view holds its record; a dead reader never pins space for long."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import pytest

import surpdb


def hold_view(path: str, ready: mp.Event) -> None:  # type: ignore[type-arg]
    c = surpdb.connect(path)
    m = c.view("pinned")
    assert m is not None and bytes(m[:3]) == b"abc"
    ready.set()
    signal.pause()  # killed here, view still held


def churn(c: surpdb.Client, n: int, size: int = 2000) -> None:
    value = os.urandom(size)
    for i in range(n):
        c.set(f"churn{i}", value, wait=False)
    c.flush()


def test_a_killed_reader_holding_a_view_does_not_pin_space(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="8MiB", max_value="64KiB") as srv:
        c = surpdb.connect(srv.path)
        c.set("pinned", b"abc" * 100)
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        p = ctx.Process(target=hold_view, args=(srv.path, ready))
        p.start()
        assert ready.wait(60)
        os.kill(p.pid, signal.SIGKILL)
        p.join(timeout=30)
        # Far more than the segment holds: needs reclamation past the dead reader's pin.
        tickets = [c.set(f"churn{i}", os.urandom(2000), wait=False) for i in range(20_000)]
        outcomes = [c.wait(t) for t in tickets]
        assert all(outcomes)
        assert c.stats()["evictions"] > 10_000


def test_a_live_view_keeps_its_bytes_and_blocks_reuse_until_released(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="8MiB", max_value="64KiB") as srv:
        c = surpdb.connect(srv.path)
        c.set("pinned", b"abc" * 100)
        m = c.view("pinned")
        assert m is not None
        c.delete("pinned")
        with pytest.raises(surpdb.SegmentFull, match=f"pid {os.getpid()}|full"):
            for i in range(20_000):
                c.set(f"churn{i}", os.urandom(2000))
        assert bytes(m) == b"abc" * 100  # never overwritten while pinned
        m.release()
        del m
        churn(c, 20_000)  # space flows again
        assert c.stats()["evictions"] > 5_000
