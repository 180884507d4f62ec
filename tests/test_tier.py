"""Tiered mode: two data directories stand for two hosts, each with its own surpd in front of
one real redis-server (Debian's package, started here on loopback). Every check reads real
shared memory on both sides; waits for an invalidation are bounded polls on the condition
itself, never sleeps."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from upstream_server import Redis

import surpdb

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs redis-server (apt install redis-server)"
)

PREFIX = "app:"
TIMEOUT_MS = 500


@pytest.fixture
def redis(tmp_path: os.PathLike[str]) -> Iterator[Redis]:
    r = Redis(os.fspath(tmp_path))
    yield r
    r.stop()


def host(tmp_path: os.PathLike[str], name: str, redis: Redis) -> surpdb.Server:
    return surpdb.Server(
        os.path.join(os.fspath(tmp_path), name),
        size="32MiB",
        upstream=redis.url,
        upstream_prefix=PREFIX,
        upstream_timeout_ms=TIMEOUT_MS,
    )


@pytest.fixture
def hosts(
    tmp_path: os.PathLike[str], redis: Redis
) -> Iterator[tuple[surpdb.Client, surpdb.Client]]:
    a, b = host(tmp_path, "a", redis), host(tmp_path, "b", redis)
    try:
        ca, cb = surpdb.connect(a.path), surpdb.connect(b.path)
        wait_for(
            lambda: ca.stats()["upstream_connected"] == 1 and cb.stats()["upstream_connected"] == 1
        )
        yield ca, cb
    finally:
        a.stop()
        b.stop()


def wait_for(cond, timeout: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    """Poll `cond` until true; the seconds it took. Fails after `timeout`."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not met in time"
    return time.monotonic() - t0


def refused(c: surpdb.Client, key: str) -> bool:
    """Whether reading `key` raises Unavailable (no provably current copy to serve)."""
    try:
        c.get(key)
    except surpdb.Unavailable:
        return True
    return False


def test_a_write_on_one_host_is_read_on_the_other_and_then_served_locally(hosts) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    a.set("greeting", {"hello": ["world", 1, 2.5]})
    assert b.get("greeting") == {"hello": ["world", 1, 2.5]}
    through = b.stats()["upstream_read_throughs"]
    for _ in range(100):
        assert b.get("greeting") == {"hello": ["world", 1, 2.5]}
    assert b.stats()["upstream_read_throughs"] == through, "repeat reads must be local hits"
    # A key absent upstream is cached as absent too.
    assert b.get("nothing") is None
    through = b.stats()["upstream_read_throughs"]
    assert b.get("nothing", 7) == 7
    assert b.stats()["upstream_read_throughs"] == through


def test_an_overwrite_invalidates_the_other_hosts_copy_within_the_bound(hosts) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    delays = []
    for i in range(200):
        a.set("k", i)
        assert a.get("k") == i, "read-your-writes on the writing host"
        delays.append(wait_for(lambda i=i: b.get("k") == i, timeout=TIMEOUT_MS / 1000 + 1))
    delays.sort()
    assert delays[-1] < TIMEOUT_MS / 1000 + 0.5, delays[-5:]
    assert b.stats()["upstream_invalidations"] > 0


def test_counters_are_upstream_integers_shared_by_every_host(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    a.set("n", 10)
    assert a.incr("n", 5) == 15
    assert b.incr("n", 1) == 16
    assert redis.cli("GET", PREFIX + "n") == "16"
    wait_for(lambda: a.get("n") == 16)
    assert b.incr("fresh") == 1  # from the default 0, as Redis INCR
    with pytest.raises(KeyError):
        b.incr("missing", default=None)
    a.set("s", "text")
    with pytest.raises(TypeError):
        b.incr("s")


def test_add_delete_touch_and_ttl_go_through_the_upstream(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    assert a.add("once", 1) is True
    assert b.add("once", 2) is False
    assert b.get("once") == 1
    a.set("t", "v", ttl=60)
    assert 0 < int(redis.cli("PTTL", PREFIX + "t")) <= 60_000
    assert a.touch("t", ttl=None) is True
    assert redis.cli("PTTL", PREFIX + "t") == "-1"
    assert b.delete("t") is True
    assert redis.cli("EXISTS", PREFIX + "t") == "0"
    wait_for(lambda: a.get("t") is None)
    assert a.delete("t") is False


def test_a_large_value_stays_compressed_upstream(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    html = "".join(f"<li>entry {i}</li>" for i in range(5000))
    a.set("page", html)
    assert b.get("page") == html
    assert int(redis.cli("STRLEN", PREFIX + "page")) < len(html) / 4, "compressed in Redis too"
    a.set("big", {f"f{i}": "v" * 20 for i in range(1000)})
    assert b.get("big")["f999"] == "v" * 20


def test_a_key_written_by_redis_cli_is_seen_by_both_hosts(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    assert a.get("plain") is None and b.get("plain") is None
    redis.cli("SET", PREFIX + "plain", "hello")
    wait_for(lambda: a.get("plain") == "hello" and b.get("plain") == "hello")
    redis.cli("SET", PREFIX + "plain", "42")
    wait_for(lambda: a.get("plain") == 42 and b.get("plain") == 42)


def test_flushall_from_a_third_client_drops_every_local_copy(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    a.set_many({f"k{i}": i for i in range(50)})
    assert b.get_many([f"k{i}" for i in range(50)]) == {f"k{i}": i for i in range(50)}
    redis.cli("FLUSHALL")
    wait_for(lambda: b.get("k3") is None and a.get("k7") is None)


def test_delete_prefix_deletes_upstream_and_every_hosts_copy(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    a.set_many({f"p:{i}": i for i in range(30)} | {f"q:{i}": i for i in range(30)})
    assert b.get("p:3") == 3 and b.get("q:3") == 3  # b holds copies
    a.delete_prefix("p:")
    assert a.get("p:4") is None  # the deleting host at once
    wait_for(lambda: b.get("p:3") is None)
    assert redis.cli("KEYS", PREFIX + "p:*").strip() == ""
    assert b.get("q:3") == 3 and a.get("q:29") == 29


def test_ops_without_an_upstream_equivalent_say_so(hosts) -> None:  # type: ignore[no-untyped-def]
    a, _ = hosts
    v, ver = a.gets("c")
    with pytest.raises(surpdb.NotSupported, match="cas"):
        a.cas("c", 1, ver)
    with pytest.raises(surpdb.NotSupported, match="merge"):
        a.merge("d", {"x": {"y": 1}}, deep=True)
    # Tags live in one host's segment: another host could not see an invalidation.
    with pytest.raises(surpdb.NotSupported, match="tags"):
        a.set("t", 1, tags=["user:1"])
    assert a.get("t") is None


def test_get_or_set_and_memoize_compute_without_a_lease(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    # The upstream is the key's home: no lease is taken (the daemon refuses LEASE), and the
    # first value stored upstream is the one every host reads. Before, both raised NotSupported.
    a, b = hosts
    with pytest.raises(surpdb.NotSupported):
        a.try_lease("k", 1)
    assert a.get_or_set("k", lambda: "from a", ttl=60) == "from a"
    assert b.get_or_set("k", lambda: "from b", ttl=60) == "from a", "a hit computes nothing"
    assert redis.cli("EXISTS", PREFIX + "k") == "1"
    # stale_ttl without leases: the value is served until ttl + stale_ttl, not recomputed.
    assert a.get_or_set("s", lambda: 1, ttl=0.1, stale_ttl=60) == 1
    deadline = time.monotonic() + 10
    while (left := b.get_with_ttl("s")[1]) is None or left > 60:
        assert time.monotonic() < deadline, left
    assert b.get_or_set("s", lambda: 2, ttl=0.1, stale_ttl=60) == 1

    calls = []

    @surpdb.memoize(a, ttl=60)
    async def fetch(x: int) -> int:
        calls.append(x)
        return x * 2

    assert asyncio.run(fetch(4)) == 8 and asyncio.run(fetch(4)) == 8
    assert calls == [4]


def test_sorted_sets_lists_and_hashes_are_redis_types_shared_by_every_host(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    assert a.zadd("board", {"ann": 3.0, "bob": 1.5, b"\xffraw": -1.0}) == 3
    assert redis.cli("TYPE", PREFIX + "board") == "zset"
    assert b.zrange("board", 0, -1, withscores=True) == [
        (b"\xffraw", -1.0),
        ("bob", 1.5),
        ("ann", 3.0),
    ]
    assert b.zadd("board", {"cy": 9.0, "bob": 2.0}, max_len=3) == 1
    assert redis.cli("ZCARD", PREFIX + "board") == "3"
    wait_for(lambda: a.zrange("board", 0, -1) == ["bob", "ann", "cy"])
    assert a.zscore("board", "cy") == 9.0 and a.zrank("board", "ann") == 1
    assert b.zrem("board", ["bob", "nobody"]) == 1
    wait_for(lambda: a.zcard("board") == 2)
    # A sorted set another program writes reads too.
    redis.cli("ZADD", PREFIX + "ext", "1", "x", "2", "y")
    assert b.zrange("ext", 0, -1, withscores=True) == [("x", 1.0), ("y", 2.0)]
    # Lists: items keep their types on every host, trimmed to the newest max_len.
    assert a.append("log", {"n": 1}) == 1 and a.append("log", 2) == 2
    assert b.append("log", "three", max_len=2) == 2
    assert redis.cli("LLEN", PREFIX + "log") == "2"
    wait_for(lambda: a.get("log") == [2, "three"])
    # Hashes: a shallow merge.
    a.merge("prof", {"name": "Ada", 7: [1, 2]})
    b.merge("prof", {"lang": "en"})
    assert (
        redis.cli("TYPE", PREFIX + "prof") == "hash" and redis.cli("HLEN", PREFIX + "prof") == "3"
    )
    wait_for(lambda: a.get("prof") == {"name": "Ada", 7: [1, 2], "lang": "en"})
    # Wrong types are refused upstream as locally.
    a.set("plain", "text")
    with pytest.raises(TypeError):
        b.zadd("plain", {"m": 1.0})
    assert b.get("plain") == "text"
    # A type surpdb has no value for reads as an error naming it, not as a miss.
    redis.cli("SADD", PREFIX + "aset", "m")
    with pytest.raises(TypeError):
        b.get("aset")


def test_upstream_down_means_unavailable_never_a_stale_read_or_a_local_only_write(  # type: ignore[no-untyped-def]
    hosts, redis
) -> None:
    a, b = hosts
    a.set("k", "before")
    assert b.get("k") == "before"
    redis.stop()
    with pytest.raises(surpdb.Unavailable):
        a.set("k", "during")

    # Local copies stop being served once the lease runs out (at most upstream_timeout).
    wait_for(lambda: refused(b, "k"), timeout=TIMEOUT_MS / 1000 + 5)
    redis.start()
    wait_for(lambda: a.stats()["upstream_connected"] == 1, timeout=10)
    # The restarted (empty) upstream is the truth: the old copy is gone everywhere.
    wait_for(lambda: not refused(b, "k") and b.get("k") is None, timeout=10)
    a.set("k", "after")
    wait_for(lambda: b.get("k") == "after")


def test_a_hung_upstream_stops_local_copies_then_they_come_back(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    a.set("k", 1)
    assert b.get("k") == 1
    assert redis.proc is not None
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: refused(b, "k"), timeout=TIMEOUT_MS / 1000 + 5)
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    wait_for(lambda: b.stats()["upstream_connected"] == 1, timeout=10)
    assert wait_for(lambda: b.get("k") == 1, timeout=10) < 10


def test_a_restarted_daemon_serves_nothing_it_cannot_prove_current(tmp_path, redis) -> None:  # type: ignore[no-untyped-def]
    a = host(tmp_path, "a", redis)
    c = surpdb.connect(a.path)
    wait_for(lambda: c.stats()["upstream_connected"] == 1)
    c.set("k", "v1")
    assert c.get("k") == "v1"
    a.kill()
    # While it is down, another writer changes the key upstream.
    redis.cli("SET", PREFIX + "k", "v2")
    a = host(tmp_path, "a", redis)
    try:
        c = surpdb.connect(a.path)
        assert c.get("k") == "v2"
    finally:
        a.stop()


def test_a_set_many_is_pipelined_not_a_round_trip_per_key(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    before = a.stats()["upstream_round_trips"]
    a.set_many({f"p{i}": i for i in range(2000)})
    trips = a.stats()["upstream_round_trips"] - before
    # Every key reached the upstream, in far fewer round trips than keys (a box has up to 64
    # requests in flight, sent together).
    assert redis.cli("GET", PREFIX + "p1999") == "1999"
    assert int(redis.cli("DBSIZE")) >= 2000
    assert trips < 400, trips
    assert b.get_many([f"p{i}" for i in range(0, 2000, 7)]) == {
        f"p{i}": i for i in range(0, 2000, 7)
    }
    assert a.delete_many([f"p{i}" for i in range(1000)]) == 1000
    assert redis.cli("EXISTS", PREFIX + "p999") == "0"


def test_pipelined_writes_and_a_local_op_keep_their_order(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    a, _ = hosts
    tickets = [a.set("order", i, wait=False) for i in range(300)]
    rid = a.insert({"local": "record"}, wait=False)  # stays local: waits for those before it
    tickets += [a.set("order", 300 + i, wait=False) for i in range(100)]
    for t in tickets:
        assert a.wait(t) is True
    assert a.record(a.wait(rid)) == {"local": "record"}
    assert redis.cli("GET", PREFIX + "order") == "399"
    assert a.get("order") == 399
    # An op with no upstream equivalent behind writes in flight is refused in its turn.
    t1 = a.set("x", 1, wait=False)
    with pytest.raises(surpdb.NotSupported):
        a.cas("x", 2, 1)
    assert a.wait(t1) is True


def test_incr_past_2_to_the_53_keeps_every_digit(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    a.set("big", 2**62)
    assert a.incr("big", 1) == 2**62 + 1
    assert redis.cli("GET", PREFIX + "big") == str(2**62 + 1)
    wait_for(lambda: b.get("big") == 2**62 + 1)
    with pytest.raises(OverflowError):
        a.incr("big", 2**62)
    assert redis.cli("GET", PREFIX + "big") == str(2**62 + 1), "a failed incr changes nothing"
    with pytest.raises(KeyError):
        a.incr("never", default=None)
    assert redis.cli("EXISTS", PREFIX + "never") == "0"


def test_django_ignore_exceptions_turns_an_unavailable_upstream_into_misses(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure(SECRET_KEY="surpdb-tests", USE_TZ=True)
    from surpdb.django import SurpdbCache

    a, _ = hosts
    quiet = SurpdbCache(
        a.path, {"OPTIONS": {"IGNORE_EXCEPTIONS": True, "LOG_IGNORED_EXCEPTIONS": False}}
    )
    loud = SurpdbCache(a.path, {"OPTIONS": {}})
    quiet.set("dj", "v")
    assert quiet.get("dj") == "v"
    redis.stop()
    wait_for(lambda: refused(a, ":1:dj"), timeout=TIMEOUT_MS / 1000 + 5)
    assert quiet.get("dj", "fallback") == "fallback"
    quiet.set("dj", "lost")  # no exception: ignored, as django-redis does
    assert quiet.get_many(["dj"]) == {}
    with pytest.raises(surpdb.Unavailable):
        loud.get("dj")
    with pytest.raises(surpdb.Unavailable):
        loud.set("dj", "x")
    redis.start()
    wait_for(lambda: not refused(a, ":1:dj"), timeout=10)
    assert quiet.get("dj") is None, "the write that raised was never applied"


def _tls_files(d: str) -> tuple[str, str, str]:
    """A private CA and a server certificate for 127.0.0.1 it signed (openssl)."""
    ca, cakey = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
    cert, key, csr = (os.path.join(d, n) for n in ("srv.pem", "srv.key", "srv.csr"))
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")

    def run(*a: str) -> None:
        subprocess.run(["openssl", *a], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", cakey, "-out", ca,
        "-days", "2", "-subj", "/CN=surpdb test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", cakey, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext)  # fmt: skip
    return cert, key, ca


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_rediss_with_a_private_ca(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = os.fspath(tmp_path)
    cert, key, ca = _tls_files(d)
    r = Redis(d, tls=(cert, key, ca))
    try:
        common = dict(size="32MiB", upstream=r.url, upstream_prefix=PREFIX)
        a = surpdb.Server(os.path.join(d, "a"), upstream_ca_file=ca, **common)
        # The system's roots do not include the private CA: no connection, writes refused.
        b = surpdb.Server(os.path.join(d, "b"), **common)
        try:
            ca_, cb = surpdb.connect(a.path), surpdb.connect(b.path)
            wait_for(lambda: ca_.stats()["upstream_connected"] == 1)
            ca_.set("secure", {"tls": True})
            assert r.cli("EXISTS", PREFIX + "secure") == "1"
            assert ca_.get("secure") == {"tls": True}
            with pytest.raises(surpdb.Unavailable):
                cb.set("secure", 1)
            assert cb.stats()["upstream_connected"] == 0
        finally:
            a.stop()
            b.stop()
        assert "cannot connect" in b.log
    finally:
        r.stop()


def test_a_key_written_elsewhere_faster_than_a_round_trip_still_reads(hosts) -> None:  # type: ignore[no-untyped-def]
    """Each read-through's copy is invalidated at once by the next write; the reader takes
    the value its read-through fetched (current when the upstream read it) instead of
    giving up after three tries."""
    import threading

    a, b = hosts
    a.set("hot", 0)
    stop = threading.Event()
    writing = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            a.set("hot", i)
            writing.set()

    t = threading.Thread(target=write)
    t.start()
    try:
        # A local hit takes a microsecond and keeps the GIL, so 500 reads can all finish
        # before the writer thread runs once (CI saw that): start reading after its first
        # acknowledged write, and read on while it writes.
        assert writing.wait(timeout=30)
        last = -1
        reads = 0
        deadline = time.monotonic() + 30
        while reads < 500 or (last <= 1 and time.monotonic() < deadline):
            v = b.get("hot")  # never Unavailable
            assert isinstance(v, int) and v >= last
            last = v
            reads += 1
    finally:
        stop.set()
        t.join(timeout=10)
    assert last > 1, "the reader never saw a write made after it started reading"


def test_view_reads_through_in_tiered_mode(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    a.set("blob", b"\x00\x01payload")
    with b.view("blob") as m:
        assert bytes(m) == b"\x00\x01payload"
    assert b.view("nothing") is None
    a.set("text", "not bytes")
    with pytest.raises(TypeError):
        b.view("text")


def test_namespaces_map_to_the_same_upstream_keys_on_every_host(hosts, redis) -> None:  # type: ignore[no-untyped-def]
    a, b = hosts
    # Opened in another order on each host: ids differ, names travel.
    b.namespace("other")
    sa, sb = a.namespace("sessions"), b.namespace("sessions")
    sa.set("k", "session value")
    a.set("k", "default value")
    assert sb.get("k") == "session value" and b.get("k") == "default value"
    assert "ns:sessions" in redis.cli("KEYS", PREFIX + "*")  # by name upstream
    sa.set("k", "changed")
    wait_for(lambda: sb.get("k") == "changed")
    # A namespace's clear is upstream too, and leaves the other keys.
    sa.clear()
    wait_for(lambda: sb.get("k") is None)
    assert b.get("k") == "default value" and a.get("k") == "default value"
    sa.set("k2", 1)
    a.clear()  # the default namespace: every key but the namespaces'
    wait_for(lambda: b.get("k") is None)
    assert sb.get("k2") == 1
    with pytest.raises(surpdb.NotSupported, match="cull"):
        sa.cull(1)
