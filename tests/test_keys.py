"""Key iteration: keys(prefix) and scan(cursor, match, count), each key present for the whole
scan returned exactly once while another process deletes and adds keys; Django's
iter_keys, keys and delete_pattern."""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from typing import Any

import pytest

import surpdb


def test_keys_and_scan_with_prefix_match_and_namespaces(client: surpdb.Client) -> None:
    client.set_many({f"user:{i}": i for i in range(50)})
    client.set_many({f"item:{i}": i for i in range(30)})
    client.set(b"\xff\xfebin", 1)
    client.namespace("other").set("user:999", 1)
    assert sorted(client.keys("user:")) == sorted(f"user:{i}" for i in range(50))
    assert len(client.keys()) == 81 and b"\xff\xfebin" in client.keys()
    assert client.namespace("other").keys() == ["user:999"]
    got, cursor = [], 0
    while True:
        cursor, keys = client.scan(cursor, match="item:[12]?", count=100)
        got += keys
        if cursor == 0:
            break
    assert sorted(got) == sorted(f"item:{i}" for i in range(10, 30))
    client.set("gone", 1, ttl=0.001)
    time.sleep(0.01)  # let the one-millisecond TTL pass
    assert "gone" not in client.keys() and "gone" not in client.scan(0, "gone")[1]
    assert client.scan(0, match="nothing*")[1] == []


def _churn(path: str, stop: Any, seed: int, n: int) -> None:
    """Delete and add keys in a loop (deletes shift entries back in the index)."""
    c = surpdb.connect(path)
    rnd = random.Random(seed)
    while not stop.is_set():
        i = rnd.randrange(n)
        if rnd.random() < 0.5:
            c.delete(f"churn:{i}")
        else:
            c.set(f"churn:{i}", i)


@pytest.mark.slow
def test_every_key_present_for_the_whole_scan_is_returned_once(store_dir: str) -> None:
    # A dense index (two thirds full: long probe runs, so deletes shift many entries back)
    # and two processes deleting and adding keys all through the scans.
    with surpdb.Server(store_dir, size="4MiB", max_value="4KiB"):
        c = surpdb.connect(store_dir)
        slots = c.stats()["index_slots"]
        stable = {f"stable:{i}" for i in range(slots // 4)}
        c.set_many(dict.fromkeys(stable, 1))
        c.set_many({f"churn:{i}": i for i in range(slots * 5 // 12)})
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        procs = [
            ctx.Process(target=_churn, args=(store_dir, stop, s, slots * 5 // 12)) for s in range(2)
        ]
        for p in procs:
            p.start()
        try:
            # Scans while the writers are at it: they have started, and for 3 seconds.
            t0 = time.monotonic()
            deletes = c.stats()["deletes"]
            while c.stats()["deletes"] < deletes + 100:
                assert time.monotonic() - t0 < 60, "the writers did not start"
                time.sleep(0.01)
            scans, t0 = 0, time.monotonic()
            while time.monotonic() - t0 < 3 or scans < 3:
                scans += 1
                seen: list[str] = []
                cursor = 0
                while True:
                    cursor, keys = c.scan(cursor, match="stable:*", count=64)
                    seen += keys
                    if cursor == 0:
                        break
                assert len(seen) == len(set(seen)), f"a key returned twice (scan {scans})"
                missing = len(stable - set(seen))
                assert set(seen) == stable, f"scan {scans}: {missing} missing"
            assert c.stats()["deletes"] > deletes + 1000, "deletes ran all through the scans"
        finally:
            stop.set()
            for p in procs:
                p.join(timeout=30)


def test_django_iter_keys_keys_and_delete_pattern(server: surpdb.Server) -> None:
    pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure(SECRET_KEY="surpdb-tests", USE_TZ=True)
    from surpdb.django import SurpdbCache

    cache = SurpdbCache(server.path, {"OPTIONS": {}, "KEY_PREFIX": "site"})
    other = SurpdbCache(server.path, {"OPTIONS": {}, "KEY_PREFIX": "else"})
    cache.set_many({f"foo_{i}": i for i in range(20)} | {"bar": 1})
    other.set("foo_99", 1)
    assert sorted(cache.keys("foo_*")) == sorted(f"foo_{i}" for i in range(20))
    assert list(cache.iter_keys("bar")) == ["bar"]
    assert cache.delete_pattern("foo_1*") == 11
    assert sorted(cache.keys("foo_*")) == sorted(f"foo_{i}" for i in (0, *range(2, 10)))
    assert other.keys("*") == ["foo_99"], "another KEY_PREFIX is not touched"
