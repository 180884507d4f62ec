"""A full segment evicts (approximately LRU) by default, or refuses under noeviction."""

from __future__ import annotations

import os

import pytest

import surpdb


def test_writes_beyond_capacity_evict_and_count(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="8MiB", max_value="64KiB") as srv:
        c = surpdb.connect(srv.path)
        value = os.urandom(1000)
        n = 30_000  # ~30 MB through an 8 MiB segment
        for i in range(n):
            c.set(f"k{i}", value, wait=(i % 1000 == 999))
        c.flush()
        st = c.stats()
        assert st["evictions"] > 0
        assert st["items"] + st["evictions"] == n
        # The segment's own bytes in use (bytes_used adds the records file's few KiB).
        assert st["cache_bytes_used"] <= st["capacity"]
        # The newest keys are present and intact; the oldest are gone.
        assert all(c.get(f"k{i}") == value for i in range(n - 100, n))
        assert c.get("k0") is None


def test_recently_read_keys_survive_eviction(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="8MiB", max_value="64KiB") as srv:
        c = surpdb.connect(srv.path)
        value = b"v" * 1000
        hot = [f"hot{i}" for i in range(200)]
        c.set_many({k: value for k in hot})
        for i in range(40_000):
            c.set(f"cold{i}", value, wait=False)
            if i % 500 == 0:
                c.flush()
                for k in hot:
                    c.get(k)
        c.flush()
        assert c.stats()["evictions"] > 20_000
        survivors = sum(c.get(k) == value for k in hot)
        assert survivors >= 190, survivors
        cold_survivors = sum(c.get(f"cold{i}") is not None for i in range(0, 2000))
        assert cold_survivors == 0


def test_large_values_replace_many_small_ones(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="8MiB", max_value="256KiB") as srv:
        c = surpdb.connect(srv.path)
        for i in range(20_000):
            c.set(f"s{i}", i, wait=False)
        c.flush()
        big = os.urandom(200_000)
        for i in range(100):
            c.set(f"big{i}", big)
            assert c.get(f"big{i}") == big


def test_noeviction_raises_segment_full_and_keeps_everything(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="8MiB", max_value="64KiB", policy="noeviction") as srv:
        c = surpdb.connect(srv.path)
        value = os.urandom(1000)
        stored = []
        with pytest.raises(surpdb.SegmentFull, match="k"):
            for i in range(100_000):
                c.set(f"k{i}", value)
                stored.append(i)
        assert len(stored) > 4000
        assert all(c.get(f"k{i}") == value for i in stored)
        st = c.stats()
        assert st["evictions"] == 0 and st["full_errors"] >= 1
        assert st["eviction_policy"] == "noeviction"
        # Deleting makes room again: the cleaner reclaims dead space behind live records.
        assert c.delete_many([f"k{i}" for i in stored[: len(stored) // 2]]) == len(stored) // 2
        for i in range(len(stored) // 4):
            c.set(f"again{i}", value)
        assert all(c.get(f"k{i}") == value for i in stored[len(stored) // 2 :])


def test_a_refused_large_value_leaves_room_for_small_ones(store_dir: str) -> None:
    # Found: the cleaner's reserve (twice the largest record) was raised before a large value
    # was refused and never lowered, so one refused 60 KB set in a nearly full noeviction
    # store made every later write, however small, fail too.
    with surpdb.Server(store_dir, size="8MiB", max_value="64KiB", policy="noeviction") as srv:
        c = surpdb.connect(srv.path)
        filler = os.urandom(1000)
        with pytest.raises(surpdb.SegmentFull):
            for i in range(100_000):
                c.set(f"fill{i}", filler)
        c.delete_many([f"fill{i}" for i in range(20)])
        reserve = c.stats()["cleaner_reserve"]
        with pytest.raises(surpdb.SegmentFull):
            c.set("large", os.urandom(60_000))
        assert c.stats()["cleaner_reserve"] == reserve
        for i in range(10):
            c.set(f"small{i}", b"x" * 100)
        assert c.get("small9") == b"x" * 100


def test_noeviction_fire_and_forget_failures_reach_wait(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="8MiB", max_value="64KiB", policy="noeviction") as srv:
        c = surpdb.connect(srv.path)
        tickets = [c.set(f"k{i}", b"x" * 1000, wait=False) for i in range(20_000)]
        outcomes = []
        for t in tickets:
            try:
                outcomes.append(c.wait(t))
            except surpdb.SegmentFull:
                outcomes.append("full")
        assert outcomes.count(True) > 4000
        assert outcomes.count("full") > 0
        assert outcomes.count(True) + outcomes.count("full") == len(tickets)


def test_index_full_evicts_small_items(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="4MiB", max_value="16KiB") as srv:
        c = surpdb.connect(srv.path)
        st = c.stats()
        n = st["max_items"] * 2
        for i in range(n):
            c.set(i.to_bytes(4, "little"), 0, wait=False)
        c.flush()
        st = c.stats()
        assert st["items"] <= st["max_items"]
        assert st["evictions"] >= n - st["max_items"]
        assert c.get((n - 1).to_bytes(4, "little")) == 0
