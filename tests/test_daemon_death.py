"""The daemon dies: reads keep working, writes fail with Unavailable after the timeout, and a
queued write is applied when a new daemon attaches."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

import surpdb


def keep_reading(path: str, stop: mp.Event, q: mp.Queue) -> None:  # type: ignore[type-arg]
    c = surpdb.connect(path)
    n = bad = 0
    while not stop.is_set():
        for i in range(100):
            v = c.get(f"k{i}")
            n += 1
            if v != i:
                bad += 1
    q.put((n, bad))


def test_reads_survive_a_killed_daemon_and_writes_resume(store_dir: str) -> None:
    srv = surpdb.Server(store_dir, size="32MiB")
    c = surpdb.connect(store_dir, timeout=0.5)
    c.set_many({f"k{i}": i for i in range(100)})
    ctx = mp.get_context("spawn")
    stop, q = ctx.Event(), ctx.Queue()
    rd = ctx.Process(target=keep_reading, args=(store_dir, stop, q))
    rd.start()
    try:
        srv.kill()  # SIGKILL: no chance to clean up
        assert c.get("k5") == 5
        t0 = time.monotonic()
        with pytest.raises(surpdb.Unavailable, match="not running|no daemon") as e:
            c.set("during", 1)
        assert 0.4 < time.monotonic() - t0 < 5
        assert "stays queued" in str(e.value)
        ticket = c.set("queued", "applied later", wait=False)
        srv = surpdb.Server(store_dir, size="32MiB")
        assert c.wait(ticket) is True
        assert c.get("queued") == "applied later"
        assert c.get("during") == 1  # the timed-out write was not lost either
        c.set("after", 2)
        assert c.get("after") == 2
        assert c.get_many([f"k{i}" for i in range(100)]) == {f"k{i}": i for i in range(100)}
    finally:
        stop.set()
        n, bad = q.get(timeout=60)
        rd.join(timeout=30)
        srv.stop()
    assert rd.exitcode == 0
    assert bad == 0 and n > 100


def test_clean_stop_and_restart_keep_data(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="32MiB"):
        c = surpdb.connect(store_dir)
        c.set_many({f"k{i}": [i] * i for i in range(200)})
    # Daemon stopped: reads still work from the mapping.
    assert c.get("k7") == [7] * 7
    with surpdb.Server(store_dir, size="32MiB") as srv:
        c2 = surpdb.connect(store_dir)
        assert c2.get_many([f"k{i}" for i in range(200)]) == {f"k{i}": [i] * i for i in range(200)}
        st = c2.stats()
        assert st["items"] == 200 and st["generation"] == 2
        assert st["daemon_pid"] == srv.pid
        c2.set("new", 1)
        assert c.get("new") == 1  # the old client sees the new daemon's writes


def test_killed_daemon_restart_recounts(store_dir: str) -> None:
    srv = surpdb.Server(store_dir, size="32MiB")
    c = surpdb.connect(store_dir)
    for i in range(500):
        c.set(f"k{i}", i)
    c.delete_many([f"k{i}" for i in range(100)])
    srv.kill()
    with surpdb.Server(store_dir, size="32MiB") as srv2:
        assert "unclean" in srv2.log or "recovered" in srv2.log
        st = c.stats()
        assert st["items"] == 400
        assert c.get("k99") is None and c.get("k100") == 100


def test_full_queue_raises_queue_full_with_the_numbers(store_dir: str) -> None:
    srv = surpdb.Server(store_dir, size="32MiB", max_value="64KiB")
    c = surpdb.connect(store_dir, timeout=0.3)
    srv.kill()
    value = os.urandom(60_000)  # incompressible: stored (and queued) as it is
    queued = 0
    with pytest.raises(surpdb.QueueFull, match=r"bytes pending.*not running") as e:
        for _ in range(1000):
            c.set("k", value, wait=False)
            queued += 1
    assert queued >= 2  # the queue holds at least two of the largest requests
    assert "of " in str(e.value)
    # A new daemon applies everything that was queued, in order.
    with surpdb.Server(store_dir, size="32MiB", max_value="64KiB"):
        c.flush()
        assert c.get("k") == value
        assert c.stats()["sets"] == queued
        assert c.stats()["ring_queue_waits"] >= 1
