"""The Django cache backend: Django's own BaseCacheTests, plus what they do not cover."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

import surpdb

django = pytest.importorskip("django")


@pytest.fixture(scope="module", autouse=True)
def django_settings() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(SECRET_KEY="surpdb-tests", USE_TZ=True)
        django.setup()


def backend(location: str, **options: object):  # type: ignore[no-untyped-def]
    from surpdb.django import SurpdbCache

    return SurpdbCache(location, {"OPTIONS": options, "TIMEOUT": 300})


def test_djangos_own_cache_suite(tmp_path: Path) -> None:
    out = tmp_path / "counts.json"
    r = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("django_suite.py")), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    counts = json.loads(out.read_text())
    assert counts["failures"] == [] and counts["errors"] == []
    # Every test of Django's suite runs and passes, its culling ones (MAX_ENTRIES,
    # CULL_FREQUENCY 0) included: nothing is skipped.
    assert counts["run"] >= 50 and counts["passed"] == counts["run"], counts["skipped"]


def test_values_and_timeouts(server: surpdb.Server) -> None:
    c = backend(server.path)
    c.set("k", {"a": (1, 2)})
    assert c.get("k") == {"a": (1, 2)}
    c.set("k", "v", timeout=0)
    assert c.get("k") is None
    c.set("forever", 1, timeout=None)
    assert c.get("forever") == 1
    assert c.get_or_set("gos", lambda: 42) == 42
    assert c.incr("forever", 5) == 6
    with pytest.raises(ValueError, match="not found"):
        c.incr("absent")


def test_versions_and_prefixes_do_not_collide(server: surpdb.Server) -> None:
    from surpdb.django import SurpdbCache

    a = SurpdbCache(server.path, {"KEY_PREFIX": "a"})
    b = SurpdbCache(server.path, {"KEY_PREFIX": "b"})
    a.set("k", 1)
    b.set("k", 2)
    a.set("k", 3, version=2)
    assert (a.get("k"), b.get("k"), a.get("k", version=2)) == (1, 2, 3)


def test_async_methods(server: surpdb.Server) -> None:
    c = backend(server.path)

    async def go() -> None:
        await c.aset("k", [1, 2])
        assert await c.aget("k") == [1, 2]
        assert await c.aadd("k", 0) is False
        assert await c.aadd("n", 0) is True
        assert await c.aincr("n") == 1
        assert await c.aget_many(["k", "n"]) == {"k": [1, 2], "n": 1}
        assert await c.adelete("k") is True
        await c.aclear()

    asyncio.run(go())


def _probe(location: str):  # type: ignore[no-untyped-def]
    """The backend, recording the thread each sync method runs on."""
    import threading

    from surpdb.django import SurpdbCache

    class Probe(SurpdbCache):
        threads: dict[str, set[str]] = {}

        def _seen(self, what: str) -> None:
            self.threads.setdefault(what, set()).add(threading.current_thread().name)

        def get(self, *a, **k):  # type: ignore[no-untyped-def]
            self._seen("get")
            return super().get(*a, **k)

        def get_many(self, *a, **k):  # type: ignore[no-untyped-def]
            self._seen("get_many")
            return super().get_many(*a, **k)

        def set(self, *a, **k):  # type: ignore[no-untyped-def]
            self._seen("set")
            return super().set(*a, **k)

        def incr(self, *a, **k):  # type: ignore[no-untyped-def]
            self._seen("incr")
            return super().incr(*a, **k)

    return Probe(location, {"OPTIONS": {}, "TIMEOUT": 300})


def test_async_reads_stay_on_the_loop_and_writes_share_one_ack_thread(
    server: surpdb.Server,
) -> None:
    import threading

    c = _probe(server.path)

    async def go() -> list[object]:
        # 200 writes of one key at once: queued in the order they were made (the last one
        # wins), their acknowledgements polled on the loop.
        await asyncio.gather(*(c.aset("k", i) for i in range(200)))
        await c.aset("n", 0)
        counts = await asyncio.gather(*(c.aincr("n") for _ in range(50)))
        return [await c.aget("k"), await c.aget_many(["k"]), await c.ahas_key("k"), counts]

    got = asyncio.run(go())
    assert got[:3] == [199, {"k": 199}, True]
    assert sorted(got[3]) == list(range(1, 51)), "every increment applied once"
    loop_thread = threading.current_thread().name
    assert c.threads["get"] == {loop_thread}, "a read is a memory load: no thread hop"
    assert c.threads["get_many"] == {loop_thread}
    assert "set" not in c.threads, "aset queues on the loop and polls: no thread at all"
    assert len(c.threads["incr"]) == 1 and loop_thread not in c.threads["incr"], "one ack thread"


def _async_child(path: str, q: mp.Queue) -> None:  # type: ignore[type-arg]
    c = backend(path)
    asyncio.run(c.aset("child", os.getpid()))
    q.put(c.get("child"))


def test_async_writes_work_in_a_forked_child(server: surpdb.Server) -> None:
    c = backend(server.path)
    asyncio.run(c.aset("parent", 1))  # the parent's ack thread exists before the fork
    q: mp.Queue = mp.get_context("fork").Queue()  # type: ignore[type-arg]
    p = mp.get_context("fork").Process(target=_async_child, args=(server.path, q))
    p.start()
    got = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0 and got == p.pid
    assert asyncio.run(c.aget("parent")) == 1


def test_remembered_keys_keep_equal_keys_of_other_types_apart(server: surpdb.Server) -> None:
    c = backend(server.path)
    c.set(1, "int")
    c.set(True, "bool")
    c.set(1.0, "float")  # Django's key is f"{prefix}:{version}:{key}": three keys
    assert [c.get(1), c.get(True), c.get(1.0)] == ["int", "bool", "float"]
    c.set("k", "v1")
    c.set("k", "v2", version=2)
    assert (c.get("k"), c.get("k", version=2)) == ("v1", "v2")


def test_dead_daemon_raises_unavailable_by_default(store_dir: str) -> None:
    srv = surpdb.Server(store_dir, size="32MiB")
    c = backend(store_dir, CLIENT_TIMEOUT=0.3)
    c.set("k", 1)
    srv.kill()
    assert c.get("k") == 1  # reads come from the mapping
    with pytest.raises(surpdb.Unavailable):
        c.set("k", 2)


def test_ignore_exceptions_turns_failures_into_misses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = backend(str(tmp_path / "never-started"), IGNORE_EXCEPTIONS=True)
    with caplog.at_level(logging.WARNING, logger="surpdb.django"):
        assert c.get("k", "dflt") == "dflt"
        assert c.set("k", 1) is None
        assert c.add("k", 1) is False
        assert c.get_many(["a"]) == {}
        assert c.set_many({"a": 1}) == ["a"]
    assert "no surpdb segment" in caplog.text


def test_ignore_exceptions_still_raises_on_bad_input(server: surpdb.Server) -> None:
    c = backend(server.path, IGNORE_EXCEPTIONS=True)
    with pytest.raises(surpdb.ValueTooLarge):
        c.set("k", b"x" * (2 << 20))


def test_unknown_option_is_refused(server: surpdb.Server) -> None:
    with pytest.raises(ValueError, match="BOGUS"):
        backend(server.path, BOGUS=1)


def _worker(location: str, n: int) -> None:
    from django.conf import settings

    settings.configure(
        SECRET_KEY="x",
        CACHES={"default": {"BACKEND": "surpdb.django.SurpdbCache", "LOCATION": location}},
    )
    import django as dj

    dj.setup()
    from django.core.cache import cache

    for i in range(n):
        cache.incr("hits") if cache.add("hits", 1) is False else None
        cache.set(f"w{os.getpid()}:{i}", i)


def test_worker_processes_share_the_cache(server: surpdb.Server) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(server.path, 300)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    c = backend(server.path)
    assert c.get("hits") == 600
    for p in procs:
        assert c.get(f"w{p.pid}:299") == 299


def test_an_alias_with_a_namespace_survives_another_alias_clear(server: surpdb.Server) -> None:
    pages = backend(server.path)
    sessions = backend(server.path, NAMESPACE="sessions")
    pages.set("k", "page")
    sessions.set("k", "session")
    assert pages.get("k") == "page" and sessions.get("k") == "session"
    pages.clear()  # what a cache.clear() in a deploy script does
    assert pages.get("k") is None and sessions.get("k") == "session"
    sessions.clear()
    assert sessions.get("k") is None


def test_max_entries_culls_per_namespace_as_django_does(server: surpdb.Server) -> None:
    small = backend(server.path, NAMESPACE="small", MAX_ENTRIES=30, CULL_FREQUENCY=3)
    other = backend(server.path)
    for i in range(100):
        other.set(f"o{i}", i)
    for i in range(1, 50):
        small.set(f"cull{i}", "value", 1000)
    assert sum(small.has_key(f"cull{i}") for i in range(1, 50)) == 29
    assert all(other.get(f"o{i}") == i for i in range(100)), "culling stays in its namespace"
    zero = backend(server.path, NAMESPACE="zero", MAX_ENTRIES=30, CULL_FREQUENCY=0)
    for i in range(1, 50):
        zero.set(f"cull{i}", "value", 1000)
    assert sum(zero.has_key(f"cull{i}") for i in range(1, 50)) == 19
    # Without MAX_ENTRIES, Django's default of 300 is not applied: memory alone evicts.
    for i in range(400):
        other.set(f"many{i}", i)
    assert other.get("many0") == 0


def test_get_or_set_computes_once_across_threads(server: surpdb.Server) -> None:
    import threading
    import time

    calls = []
    got = []

    def slow() -> str:
        calls.append(1)
        time.sleep(0.2)  # the work the other threads would otherwise repeat
        return "computed"

    def worker() -> None:
        got.append(backend(server.path).get_or_set("k", slow, 60))  # one backend per thread

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert got == ["computed"] * 6 and len(calls) == 1
    c = backend(server.path)
    assert c.get_or_set("k", lambda: "other") == "computed"
    assert c.get_or_set("zero", lambda: "not kept", timeout=0) == "not kept"
    assert c.get("zero") is None


def test_aget_or_set_waits_for_a_lease_on_the_loop(server: surpdb.Server) -> None:
    """Django 6.1's aget_or_set: while another caller holds the lease, coroutines wait on the
    loop (a coroutine of the same loop stores the value meanwhile: a blocked loop never
    would), and none computes; a failing default gives the lease back."""
    c = backend(server.path)
    k = c._key("k", None)
    client = surpdb.connect(server.path)
    assert client.try_lease(k, 1, 60) == 1  # another caller's lease
    calls = []

    def compute() -> str:
        calls.append(1)
        return "computed here"

    async def holder_finishes() -> None:
        await asyncio.sleep(0)
        client.set(k, "from the holder")

    async def main() -> list[object]:
        waiting = [c.aget_or_set("k", compute, 60) for _ in range(5)]
        return await asyncio.gather(*waiting, holder_finishes())

    got = asyncio.run(asyncio.wait_for(main(), 20))
    assert got[:5] == ["from the holder"] * 5 and calls == []

    def boom() -> str:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        asyncio.run(c.aget_or_set("other", boom, 60))
    assert asyncio.run(c.aget_or_set("other", lambda: 7, 60)) == 7, "the lease was given back"
    assert asyncio.run(c.aget_or_set("zero", lambda: 8, 0)) == 8 and c.get("zero") is None
