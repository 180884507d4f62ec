"""Tags: set(..., tags=[...]) and invalidate_tags, O(1) whatever the number of values, across
processes; values stay tagged through updates, dump and load; invalidated values' space is
reclaimed, not evicted."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import surpdb


def _writer(path: str, start: int, n: int, done: Any) -> None:
    c = surpdb.connect(path)
    for i in range(start, start + n):
        c.set(f"user:{i % 2}:item:{i}", {"i": i}, tags=[f"user:{i % 2}", "items"])
    done.put(start)


def _invalidator(path: str, tags: list[str], done: Any) -> None:
    done.put(surpdb.connect(path).invalidate_tags(tags))


def test_values_set_by_several_processes_go_with_one_request(
    server: surpdb.Server, client: surpdb.Client
) -> None:
    ctx = mp.get_context("spawn")
    done = ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(server.path, s, 1500, done)) for s in (0, 1500)]
    for p in writers:
        p.start()
    assert sorted(done.get(timeout=60) for _ in writers) == [0, 1500]
    for p in writers:
        p.join(timeout=30)
    assert client.get("user:0:item:10") == {"i": 10}
    assert client.get("user:1:item:11") == {"i": 11}
    deletes = client.stats()["deletes"]
    # Another process invalidates user:0: one delete, whatever the 1,500 values it had.
    inv = ctx.Process(target=_invalidator, args=(server.path, ["user:0"], done))
    inv.start()
    assert done.get(timeout=30) == 1
    inv.join(timeout=30)
    assert client.stats()["deletes"] == deletes + 1
    assert all(client.get(f"user:0:item:{i}") is None for i in range(0, 3000, 2))
    assert all(client.get(f"user:1:item:{i}") == {"i": i} for i in range(1, 3000, 2))
    # get_many reads each through the same check.
    got = client.get_many([f"user:{i % 2}:item:{i}" for i in range(20)])
    assert sorted(got) == sorted(f"user:1:item:{i}" for i in range(1, 20, 2))
    # Listed keys are the live ones, never the tag keys.
    keys = client.keys()
    assert len(keys) == 1500 and all(k.startswith("user:1:") for k in keys)
    # A new set with the tag makes it current again for that value only.
    client.set("user:0:item:0", "again", tags=["user:0"])
    assert client.get("user:0:item:0") == "again" and client.get("user:0:item:2") is None
    assert client.invalidate_tags(["items"]) == 1
    assert client.get("user:1:item:1") is None and client.get("user:0:item:0") == "again"
    assert client.invalidate_tags(["items", "never-used"]) == 0


def test_an_invalidation_during_a_computation_leaves_its_value_out(
    server: surpdb.Server, client: surpdb.Client
) -> None:
    """The tags' tokens are read before the value is computed: a value computed from data
    an invalidation has since replaced is stored already stale, never served."""
    other = surpdb.connect(server.path)
    client.set("seed", 1, tags=["t"])

    def compute() -> str:
        other.invalidate_tags(["t"])  # the data behind the value changed meanwhile
        return "from old data"

    assert client.get_or_set("k", compute, ttl=60, tags=["t"]) == "from old data"
    assert client.get("k") is None and client.get("seed") is None
    assert client.get_or_set("k", lambda: "fresh", ttl=60, tags=["t"]) == "fresh"
    assert client.get("k") == "fresh"


def test_updates_keep_a_values_tags(client: surpdb.Client) -> None:
    client.set("n", 1, tags=["t"])
    client.set("l", [1], tags=["t"])
    client.set("d", {"a": 1}, tags=["t"])
    client.set("z", None, tags=["t"])
    client.delete("z")
    client.zadd("z", {"m": 1.0})  # a new key: no tags
    client.set("page", "x" * 50_000, tags=["t"])  # stored compressed inside its tags
    assert client.incr("n", 2) == 3
    assert client.append("l", 2) == 2
    client.merge("d", {"b": 2})
    assert client.touch("page", ttl=60)
    assert (client.get("n"), client.get("l"), client.get("d")) == (3, [1, 2], {"a": 1, "b": 2})
    assert client.get("page") == "x" * 50_000
    assert client.invalidate_tags(["t"]) == 1
    for k in ("n", "l", "d", "page"):
        assert client.get(k) is None, k
        assert k not in client
    assert client.zcard("z") == 1
    # A cas replaces the value with its own tags (none: it is untagged).
    client.set("c", "v1", tags=["t2"])
    _, ver = client.gets("c")
    assert client.cas("c", "v2", ver, tags=["t3"]) is True
    client.invalidate_tags(["t2"])
    assert client.get("c") == "v2"
    client.invalidate_tags(["t3"])
    assert client.get("c") is None
    # Gone for updates too: an incr starts again from the default, an add succeeds.
    assert client.incr("n", 5) == 5
    assert client.add("l", "new") is True
    with pytest.raises(KeyError):
        client.incr("d", 1, default=None)


def test_a_value_whose_tag_key_is_gone_is_a_miss_never_stale(client: surpdb.Client) -> None:
    """A tag key evicted under pressure (or deleted by hand) makes its values misses."""
    client.set("a", "v", tags=["t", "u"])
    assert client.get("a") == "v"
    assert client.delete("\0~tag\0u") is True
    assert client.get("a") is None


def test_bytes_views_and_ttls_of_tagged_values(client: surpdb.Client) -> None:
    client.set("b", b"payload", ttl=100, tags=[b"raw-tag", "t"])
    with client.view("b") as m:
        assert bytes(m) == b"payload"
    v, ttl = client.get_with_ttl("b")
    assert v == b"payload" and 99 < ttl <= 100
    client.invalidate_tags([b"raw-tag"])
    assert client.view("b") is None and client.get_with_ttl("b", "d") == ("d", None)


def test_tags_are_per_namespace(server: surpdb.Server) -> None:
    a = surpdb.connect(server.path).namespace("a")
    b = surpdb.connect(server.path).namespace("b")
    a.set("k", 1, tags=["t"])
    b.set("k", 2, tags=["t"])
    assert a.invalidate_tags(["t"]) == 1
    assert (a.get("k"), b.get("k")) == (None, 2)


def test_bad_tags_get_clear_errors(client: surpdb.Client) -> None:
    with pytest.raises(TypeError, match="list of tag names"):
        client.set("k", 1, tags="user:1")
    with pytest.raises(TypeError, match="str or bytes, not int"):
        client.set("k", 1, tags=[1])
    with pytest.raises(ValueError, match="empty"):
        client.set("k", 1, tags=[""])
    with pytest.raises(ValueError, match="40 tags; a value may carry at most 32"):
        client.set("k", 1, tags=[f"t{i}" for i in range(40)])
    with pytest.raises(surpdb.KeyTooLong):
        client.set("k", 1, tags=["x" * 5000])
    # Each refused before anything was stored.
    assert client.get("k") is None
    # Garbage where the tag header goes is refused by the client and by the daemon.
    for bad in (b"\x10\x00\x00", b"\x10\x01\x05abc", b"\x10\x21" + b"\x01a" + b"\0" * 8 + b"\0"):
        with pytest.raises(ValueError):
            client._set_raw("k", bad)
    assert client.get("k") is None


def test_dump_and_load_keep_tags(tmp_path: Path, server: surpdb.Server) -> None:
    c = surpdb.connect(server.path)
    c.set("a", "A", tags=["t"])
    c.set("b", "B", tags=["u"])
    out = tmp_path / "dump.jsonl"
    run = [sys.executable, "-m", "surpdb"]
    subprocess.run([*run, "dump", server.path, "-o", str(out)], check=True, timeout=60)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 4  # two values and their two tag keys
    with surpdb.Server(tmp_path / "copy", size="32MiB") as other:
        subprocess.run([*run, "load", other.path, str(out)], check=True, timeout=60)
        c2 = surpdb.connect(other.path)
        assert (c2.get("a"), c2.get("b")) == ("A", "B")
        assert c2.invalidate_tags(["t"]) == 1
        assert (c2.get("a"), c2.get("b")) == (None, "B")


def test_invalidated_values_are_reclaimed_not_evicted(tmp_path: Path) -> None:
    """16 MiB of tagged values in a 32 MiB store, invalidated, then 16 MiB more: the
    cleaner drops the invalidated ones (counted as expirations), it evicts nothing."""
    with surpdb.Server(tmp_path / "s", size="32MiB") as srv:
        c = surpdb.connect(srv.path, compress_min=0)
        blob = "x" * 8000
        for i in range(2000):
            c.set(f"old{i}", blob, tags=["old"])
        assert c.invalidate_tags(["old"]) == 1
        for i in range(2000):
            c.set(f"new{i}", blob)
        st = c.stats()
        assert st["evictions"] == 0, st
        assert st["expirations"] > 0, st
        assert all(c.get(f"new{i}") == blob for i in range(0, 2000, 97))
        # The rest is unlinked by the idle sweep (a lap of the index takes well under a
        # second; bounded wait for the count to show it).
        deadline = time.monotonic() + 30
        while c.stats()["items"] > 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.stats()["items"] == 2000


def test_django_set_get_or_set_and_invalidate_tags(server: surpdb.Server) -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(SECRET_KEY="surpdb-tests", USE_TZ=True)
        django.setup()
    from surpdb.django import SurpdbCache

    a = SurpdbCache(server.path, {"KEY_PREFIX": "a"})
    b = SurpdbCache(server.path, {"KEY_PREFIX": "b"})
    a.set("profile", {"name": "Ada"}, tags=["user:42"])
    a.set_many({"p1": 1, "p2": 2}, tags=["user:42", "posts"])
    assert a.add("new", "n", tags=["user:42"]) is True
    assert a.get_or_set("feed", lambda: ["x"], tags=["user:42"]) == ["x"]
    b.set("profile", "b's", tags=["user:42"])  # another KEY_PREFIX: its own tag
    assert a.invalidate_tags(["user:42"]) == 1
    assert a.get_many(["profile", "p1", "p2", "new", "feed"]) == {}
    assert b.get("profile") == "b's"
    asyncio.run(a.aset("k", 1, tags=["t"]))
    assert a.get("k") == 1
    assert asyncio.run(a.ainvalidate_tags(["t"])) == 1
    assert a.get("k") is None


def test_namespaced_tags_survive_dump_and_load_into_other_namespace_ids(
    tmp_path: Path, server: surpdb.Server
) -> None:
    # Found in review: tag keys were kept in their stored form, whose namespace id is the
    # store's own; a load that gave the namespace another id lost every tagged value.
    ns = surpdb.connect(server.path).namespace("pages")
    ns.set("p", "page", tags=["t"])
    out = tmp_path / "dump.jsonl"
    run = [sys.executable, "-m", "surpdb"]
    subprocess.run([*run, "dump", server.path, "-o", str(out)], check=True, timeout=60)
    with surpdb.Server(tmp_path / "copy", size="32MiB") as other:
        c2 = surpdb.connect(other.path)
        c2.namespace("first")  # takes id 1: "pages" gets another id than it had
        subprocess.run([*run, "load", other.path, str(out)], check=True, timeout=60)
        pages = c2.namespace("pages")
        assert pages.get("p") == "page"
        assert pages.invalidate_tags(["t"]) == 1 and pages.get("p") is None


def test_a_prefix_deletion_of_tag_keys_invalidates_their_values(client: surpdb.Client) -> None:
    # Found in review: a tag key removed by delete_prefix still counted as current until
    # the sweep unlinked it.
    client.set("a", 1, tags=["t"])
    client.delete_prefix("\0~tag\0")
    assert client.get("a") is None
    client.set("b", 2, tags=["t"])  # a new token for the tag
    assert (client.get("a"), client.get("b")) == (None, 2)


def test_a_namespace_quota_evicts_values_not_their_tags(client: surpdb.Client) -> None:
    # Found in review: tag keys, written once, are a namespace's oldest entries, so its
    # quota evicted them first and every value of the tag with them.
    ns = client.namespace("q", max_items=3)
    for k in ("a", "b", "c"):
        ns.set(k, k, tags=["t"])
    assert (ns.get("b"), ns.get("c")) == ("b", "c")
    assert ns.get("a") is None  # the oldest value made room


def test_aget_or_set_and_memoize_take_tags(server: surpdb.Server, client: surpdb.Client) -> None:
    """Before: only the sync get_or_set took tags; surpdb.aget_or_set and @memoize stored
    untagged values that an invalidation never reached."""
    other = surpdb.connect(server.path)
    calls: list[int] = []

    async def compute_stale() -> str:
        other.invalidate_tags(["t"])  # the data changed while this computed
        return "from old data"

    async def run() -> None:
        got = await surpdb.aget_or_set(client, "k", compute_stale, 60, tags=["t"])
        assert got == "from old data"
        assert client.get("k") is None, "read before the await: stored already stale"

        async def fresh() -> str:
            return "fresh"

        assert await surpdb.aget_or_set(client, "k", fresh, 60, tags=["t"]) == "fresh"
        assert client.get("k") == "fresh"
        assert other.invalidate_tags(["t"]) == 1
        assert client.get("k") is None
        # Without a lease (computes, then add): tagged as well.
        await surpdb.aget_or_set(client, "n", fresh, 60, lease=False, tags=["t"])
        assert other.invalidate_tags(["t"]) == 1 and client.get("n") is None

    asyncio.run(run())

    @surpdb.memoize(client, ttl=60, tags=lambda uid: [f"user:{uid}"])
    def profile(uid: int) -> dict[str, int]:
        calls.append(uid)
        return {"uid": uid, "n": len(calls)}

    @surpdb.memoize(client, ttl=60, tags=["feeds"])
    async def feed(uid: int) -> list[int]:
        calls.append(-uid)
        return [uid]

    assert profile(1) == profile(1) == {"uid": 1, "n": 1}
    assert profile(2)["n"] == 2
    assert other.invalidate_tags(["user:1"]) == 1
    assert profile(1)["n"] == 3 and profile(2)["n"] == 2  # only user 1 recomputed
    assert asyncio.run(feed(5)) == asyncio.run(feed(5)) == [5]
    assert calls.count(-5) == 1
    assert other.invalidate_tags(["feeds"]) == 1
    assert asyncio.run(feed(5)) == [5] and calls.count(-5) == 2
    with pytest.raises(TypeError, match="not one name"):
        asyncio.run(surpdb.aget_or_set(client, "x", compute_stale, 60, tags="t"))
    with pytest.raises(ValueError, match="not a tag header"):
        client._set_with_head("x", 1, b"\x10garbage")


def test_django_aget_or_set_takes_tags(server: surpdb.Server) -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(SECRET_KEY="surpdb-tests", USE_TZ=True)
        django.setup()
    from surpdb.django import SurpdbCache

    cache = SurpdbCache(server.path, {"KEY_PREFIX": "a"})
    assert asyncio.run(cache.aget_or_set("feed", lambda: ["x"], tags=["user:7"])) == ["x"]
    assert cache.get("feed") == ["x"]
    assert cache.invalidate_tags(["user:7"]) == 1
    assert cache.get("feed") is None
