"""delete_prefix: every key of a namespace starting with a prefix goes at once (one request,
O(1) whatever their number) for every process, stays gone across a restart, and its space is
reclaimed by the sweep; more deletions than the table holds at once still all hold."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import pytest

import surpdb


def _reader(path: str, ready: Any, stop: Any, out: Any) -> None:
    """Read deleted keys until told to stop; report any that came back."""
    c = surpdb.connect(path)
    back, reads = [], 0

    def one_pass() -> None:
        nonlocal reads
        for i in range(0, 5000, 7):
            if c.get(f"gone:{i}") is not None:
                back.append(i)
            reads += 1

    one_pass()  # at least one whole pass, then the churn starts
    ready.set()
    while not stop.is_set():
        one_pass()
    out.put((back, reads))


def test_a_deleted_prefix_stays_gone_for_every_reader_while_entries_churn(
    server: surpdb.Server, client: surpdb.Client
) -> None:
    for i in range(5000):
        client.set(f"gone:{i}", i)
        client.set(f"kept:{i}", i)
    deletes = client.stats()["deletes"]
    client.delete_prefix("gone:")
    assert client.stats()["deletes"] == deletes + 1  # one request for 5,000 keys
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    ready = [ctx.Event() for _ in range(2)]
    readers = [ctx.Process(target=_reader, args=(server.path, r, stop, out)) for r in ready]
    for p in readers:
        p.start()
    # Both read before the churn starts (each has attached and set its event).
    assert all(r.wait(30) for r in ready)
    # Meanwhile: many more deletions than the table holds (it fills, is swept whole, and
    # its entries are freed and reused), and writes and deletes that shift index entries.
    for n in range(60):
        for j in range(50):
            client.set(f"churn:{n}:{j}", j)
        client.delete_prefix(f"churn:{n}:")
        client.delete_many([f"kept:{(n * 83 + j) % 5000}" for j in range(20)])
        for j in range(20):
            client.set(f"kept:{(n * 83 + j) % 5000}", -1)
    stop.set()
    got = [out.get(timeout=60) for _ in readers]
    for p in readers:
        p.join(timeout=30)
    assert all(back == [] for back, _ in got), got
    assert all(reads > 0 for _, reads in got)
    assert client.get("gone:1") is None and client.keys("gone:") == []
    assert client.keys("churn:") == []
    assert len(client.keys("kept:")) == 5000
    # The sweep unlinks what the deletions left (bounded wait for the count to show it).
    deadline = time.monotonic() + 30
    while client.stats()["items"] > 5000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.stats()["items"] == 5000


def test_prefixes_are_per_namespace_and_bytes_prefixes_stay_in_theirs(
    server: surpdb.Server, client: surpdb.Client
) -> None:
    ns = client.namespace("other")
    ns.set("user:1", "theirs")
    client.set("user:1", "mine")
    client.set(b"\xff\x05bin", "escaped")  # stored behind the default namespace's escape
    client.set(b"\xffraw", "raw")
    client.delete_prefix("user:")
    assert (client.get("user:1"), ns.get("user:1")) == (None, "theirs")
    client.delete_prefix(b"\xff")  # the default namespace's \xff keys, no namespaced key
    assert client.get(b"\xff\x05bin") is None and client.get(b"\xffraw") is None
    assert ns.get("user:1") == "theirs"
    ns.delete_prefix("user")
    assert ns.get("user:1") is None
    # A key set again after the deletion is there.
    client.set("user:1", "again")
    assert client.get("user:1") == "again"


def test_updates_and_adds_see_deleted_keys_as_absent(client: surpdb.Client) -> None:
    client.set("p:n", 5)
    client.set("p:l", [1])
    client.delete_prefix("p:")
    assert client.incr("p:n") == 1
    assert client.add("p:l", "new") is True
    assert client.delete("p:x") is False
    assert client.touch("p:l") is True and client.get("p:l") == "new"


def test_bad_prefixes_are_refused(client: surpdb.Client) -> None:
    with pytest.raises(ValueError, match="needs a prefix"):
        client.delete_prefix("")
    with pytest.raises(surpdb.KeyTooLong):
        client.delete_prefix("x" * 5000)
    with pytest.raises(TypeError):
        client.delete_prefix(5)  # type: ignore[arg-type]


def test_a_deletion_holds_across_a_daemon_kill(tmp_path: Path) -> None:
    d = tmp_path / "s"
    srv = surpdb.Server(d, size="32MiB")
    c = surpdb.connect(d)
    for i in range(1000):
        c.set(f"a:{i}", i)
        c.set(f"b:{i}", i)
    c.delete_prefix("a:")
    srv.kill()  # SIGKILL: no clean stop
    with surpdb.Server(d, size="32MiB"):
        c = surpdb.connect(d)
        assert c.get("a:1") is None and c.get("b:1") == 1
        assert c.keys("a:") == [] and len(c.keys("b:")) == 1000


def test_django_delete_prefix_and_delete_pattern(server: surpdb.Server) -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(SECRET_KEY="surpdb-tests", USE_TZ=True)
        django.setup()
    from surpdb.django import SurpdbCache

    a = SurpdbCache(server.path, {"KEY_PREFIX": "a"})
    b = SurpdbCache(server.path, {"KEY_PREFIX": "b"})
    custom = SurpdbCache(server.path, {"KEY_FUNCTION": lambda k, p, v: f"c|{k}"})
    for i in range(100):
        a.set(f"user:42:{i}", i)
        b.set(f"user:42:{i}", i)
        custom.set(f"user:*{i}", i)
    a.set("user:4", "kept")
    a.delete_prefix("user:42:")
    assert a.get_many([f"user:42:{i}" for i in range(100)]) == {}
    assert a.get("user:4") == "kept" and b.get("user:42:7") == 7
    custom.delete_prefix("user:*1")  # a scan: the prefix's * is a character, not a glob
    assert custom.get("user:*1") is None and custom.get("user:*10") is None
    assert custom.get("user:*2") == 2
    assert b.delete_pattern("user:42:1*") == 11
    with pytest.raises(ValueError):
        a.delete_prefix("")
