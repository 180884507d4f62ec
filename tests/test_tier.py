"""Tiered mode: two data directories stand for two hosts, each with its own surpd in front of
one real redis-server (Debian's package, started here on loopback). Every check reads real
shared memory on both sides; waits for an invalidation are bounded polls on the condition
itself, never sleeps."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

import surpdb

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs redis-server (apt install redis-server)"
)

PREFIX = "app:"
TIMEOUT_MS = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    def __init__(self, tmp: str) -> None:
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while self.cli("PING") != "PONG":
            assert time.monotonic() < deadline, "redis-server did not start"

    def cli(self, *args: str) -> str:
        r = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, timeout=10
        )
        return r.stdout.decode().strip()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


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


def test_ops_without_an_upstream_equivalent_say_so(hosts) -> None:  # type: ignore[no-untyped-def]
    a, _ = hosts
    with pytest.raises(surpdb.NotSupported, match="append"):
        a.append("l", 1)
    with pytest.raises(surpdb.NotSupported, match="zadd"):
        a.zadd("z", {"m": 1.0})


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
