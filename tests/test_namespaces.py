"""Namespaces: keys apart, clear() of one alone and at once, quotas, counts, the same
namespace from several processes, a full table, restarts, dump and load."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

import pytest

import surpdb
from surpdb import _native


def test_keys_of_namespaces_are_apart_and_clear_empties_one_alone(
    client: surpdb.Client,
) -> None:
    a, b = client.namespace("a"), client.namespace("b")
    for c, v in ((client, "default"), (a, "in a"), (b, "in b")):
        c.set("k", v)
        c.set_many({f"m{i}": (v, i) for i in range(100)})
    assert (client.get("k"), a.get("k"), b.get("k")) == ("default", "in a", "in b")
    assert a.namespace_name == "a" and client.namespace_name == ""
    assert a.namespace_stats()["items"] == 101
    a.clear()
    assert a.get("k") is None and a.get_many([f"m{i}" for i in range(100)]) == {}
    assert a.namespace_stats()["items"] == 0 and a.namespace_stats()["clears"] == 1
    assert client.get("k") == "default" and b.get("k") == "in b"
    assert b.get("m99") == ("in b", 99) and client.get("m0") == ("default", 0)
    # Written after the clear: there.
    a.set("k", "again")
    assert a.get("k") == "again" and a.namespace_stats()["items"] == 1
    # The default namespace's clear leaves the others.
    client.clear()
    assert client.get("k") is None and a.get("k") == "again" and b.get("k") == "in b"
    # A clear is one store; the sweep reclaims the index entries it left.
    t0 = time.monotonic()
    while client.stats()["items"] != 102:  # a's 1 and b's 101
        assert time.monotonic() - t0 < 10, client.stats()["items"]
    stats = client.namespaces()
    assert stats[""]["items"] == 0 and stats["a"]["items"] == 1 and stats["b"]["items"] == 101


def test_every_operation_stays_in_its_namespace(client: surpdb.Client) -> None:
    s = client.namespace("ops")
    client.set("n", 100)
    assert s.incr("n", 5, default=0) == 5 and client.get("n") == 100
    assert s.add("n", 1) is False and client.add("fresh", 1) is True and s.get("fresh") is None
    assert s.append("l", 1) == 1 and client.get("l") is None
    s.merge("d", {"x": 1})
    assert s.get("d") == {"x": 1} and client.get("d") is None
    assert s.zadd("z", {"m": 1.0}) == 1 and client.zcard("z") == 0
    v, ver = s.gets("n")
    assert s.cas("n", 6, ver) is True and s.get("n") == 6
    assert s.touch("n", ttl=60) is True and client.touch("n", ttl=60) is True
    s.set(b"raw", b"bytes")
    with s.view(b"raw") as m:
        assert bytes(m) == b"bytes"
    assert s.delete("n") is True and client.get("n") == 100
    assert "n" not in s and "n" in client
    keys = sorted(k for k, _, _ in s._scan(0, 1000)[1])
    assert keys == [b"d", b"l", b"raw", b"z"]


def test_quotas_evict_a_namespace_s_oldest_entries(client: surpdb.Client) -> None:
    capped = client.namespace("capped", max_items=10)
    other = client.namespace("other")
    for i in range(100):
        other.set(f"o{i}", i)
        capped.set(f"c{i}", i)
    assert [capped.get(f"c{i}") for i in range(88, 100)] == [None, None, *range(90, 100)]
    st = capped.namespace_stats()
    assert (st["items"], st["max_items"], st["evictions"]) == (10, 10, 90)
    assert all(other.get(f"o{i}") == i for i in range(100)), "another namespace is untouched"
    # A bytes quota: each entry is ~60 bytes.
    small = client.namespace("small", max_bytes=1000)
    for i in range(100):
        small.set(f"s{i}", b"x" * 10)
    st = small.namespace_stats()
    assert 0 < st["bytes"] <= 1000 and st["items"] < 100 and small.get("s99") == b"x" * 10
    # Quotas can change: a lower one takes effect at once.
    capped = client.namespace("capped", max_items=3)
    assert capped.namespace_stats()["items"] == 3
    assert [capped.get(f"c{i}") for i in range(96, 100)] == [None, 97, 98, 99]


def test_cull_removes_the_oldest(client: surpdb.Client) -> None:
    s = client.namespace("cull")
    for i in range(30):
        s.set(f"k{i}", i)
    s.set("k0", "rewritten")  # now the newest
    assert s.cull(10) == 10
    assert s.get("k0") == "rewritten"
    assert [s.get(f"k{i}") for i in range(1, 12)] == [None] * 10 + [11]
    assert s.namespace_stats()["items"] == 20
    assert s.cull(1000) == 20 and s.namespace_stats()["items"] == 0


def _writer(path: str, name: str, n: int) -> None:
    c = surpdb.connect(path, namespace=name)
    for i in range(n):
        c.set(f"k{i}", (name, i))


def test_a_namespace_is_the_same_from_every_process(server: surpdb.Server) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(server.path, f"p{i}", 200)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    c = surpdb.connect(server.path)
    for i in range(3):
        ns = surpdb.connect(server.path, namespace=f"p{i}")
        assert ns.get("k199") == (f"p{i}", 199) and ns.namespace_stats()["items"] == 200
    # One process clears a namespace; another sees it empty at once.
    surpdb.connect(server.path, namespace="p1").clear()
    assert c.namespace("p1").get("k0") is None and c.namespace("p0").get("k0") == ("p0", 0)


def test_the_table_holds_31_namespaces_then_says_so(client: surpdb.Client) -> None:
    names = [f"ns{i}" for i in range(31)]
    for n in names:
        client.namespace(n).set("x", n)
    with pytest.raises(surpdb.SegmentFull, match="31 namespaces"):
        client.namespace("one-too-many")
    assert client.namespace("ns7").get("x") == "ns7", "an open name still opens"
    for bad in ("", "has space", "x" * 25, "tab\t"):
        with pytest.raises(ValueError, match="namespace name"):
            client.namespace(bad)


def test_keys_up_to_the_limit_and_bytes_keys_that_look_namespaced(
    client: surpdb.Client,
) -> None:
    s = client.namespace("long")
    s.set("k" * (_native.MAX_KEY_LEN - 2), 1)
    with pytest.raises(surpdb.KeyTooLong):
        s.set("k" * (_native.MAX_KEY_LEN - 1), 1)
    # A default-namespace bytes key that starts like a namespaced one is its own key.
    client.set(b"\xff\x01x", "looks like namespace 1")
    client.set(b"\xff\x00y", "looks escaped")
    assert client.get(b"\xff\x01x") == "looks like namespace 1"
    assert client.get(b"\xff\x00y") == "looks escaped"
    assert s.get("x") is None and client.namespace("long").get(b"x") is None
    got = sorted(k for k, _, _ in client._scan(0, 1000)[1])
    assert got == [b"\xff\x00y", b"\xff\x01x"]


def test_namespaces_survive_a_sigkill_with_their_counts(store_dir: str) -> None:
    srv = surpdb.Server(store_dir, size="32MiB")
    c = surpdb.connect(store_dir)
    s = c.namespace("kept", max_items=50)
    for i in range(80):
        s.set(f"k{i}", i)
    c.namespace("wiped").set("w", 1)
    c.namespace("wiped").clear()
    srv.kill()
    srv = surpdb.Server(store_dir, size="32MiB")
    try:
        c = surpdb.connect(store_dir)
        s = c.namespace("kept")
        assert s.get("k79") == 79 and s.get("k29") is None
        st = s.namespace_stats()
        assert (st["items"], st["max_items"]) == (50, 50)
        assert c.namespace("wiped").get("w") is None
        assert c.namespace("wiped").namespace_stats()["items"] == 0
    finally:
        srv.stop()
    r = _native.check(store_dir)
    assert r["ok"], r["problems"]


def test_dump_and_load_keep_namespaces(tmp_path: os.PathLike[str]) -> None:
    src, dst = os.path.join(tmp_path, "src"), os.path.join(tmp_path, "dst")
    dump = os.path.join(tmp_path, "dump.jsonl")
    with surpdb.Server(src, size="32MiB"):
        c = surpdb.connect(src)
        c.set("k", "default")
        c.namespace("s").set("k", {"in": "s"})
        c.namespace("t").set(b"\x00bin", b"\xff")
        run = [sys.executable, "-m", "surpdb"]
        subprocess.run([*run, "dump", src, "-o", dump], check=True, timeout=60, capture_output=True)
    with open(dump) as f:
        lines = [json.loads(x) for x in f]
    assert {line.get("ns", "") for line in lines} == {"", "s", "t"}
    with surpdb.Server(dst, size="32MiB"):
        subprocess.run([*run, "load", dst, dump], check=True, timeout=60, capture_output=True)
        c = surpdb.connect(dst)
        assert c.get("k") == "default" and c.namespace("s").get("k") == {"in": "s"}
        assert c.namespace("t").get(b"\x00bin") == b"\xff"


def test_prometheus_has_a_line_per_namespace(client: surpdb.Client) -> None:
    from surpdb.cli import prometheus

    client.namespace("web").set("a", 1)
    text = prometheus(client.stats(), client.path, client.namespaces())
    assert 'surpdb_namespace_items{dir="' in text
    assert 'namespace="web"} 1' in text and 'namespace=""}' in text
    assert "# TYPE surpdb_namespace_sets_total counter" in text
