"""Stampede leases: get_or_set computes a missing value once across processes; a holder that
dies hands the lease on at once; memoize for plain and async functions; Django's get_or_set."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import time
from typing import Any

import pytest

import surpdb


def _caller(path: str, results: Any, i: int) -> None:
    c = surpdb.connect(path)

    def slow() -> str:
        c.incr("calls")
        time.sleep(0.3)  # the work the others would otherwise all repeat
        return "computed"

    results.put((i, c.get_or_set("hot", slow, ttl=60)))


@pytest.mark.slow
def test_eight_processes_compute_a_missing_value_once(server: surpdb.Server) -> None:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_caller, args=(server.path, results, i)) for i in range(8)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sorted(v for _, v in got) == ["computed"] * 8
    assert surpdb.connect(server.path).get("calls") == 1


def _first_blocks(path: str, results: Any) -> None:
    c = surpdb.connect(path)

    def compute() -> str:
        if c.incr("calls") == 1:
            c.set("holder", os.getpid())
            time.sleep(120)  # killed here
        return f"by {os.getpid()}"

    results.put(c.get_or_set("k", compute, lease_timeout=60))


@pytest.mark.slow
def test_a_holder_killed_mid_compute_hands_the_lease_on_at_once(server: surpdb.Server) -> None:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_first_blocks, args=(server.path, results)) for _ in range(4)]
    for p in procs:
        p.start()
    c = surpdb.connect(server.path)
    t0 = time.monotonic()
    while c.get("holder") is None:
        assert time.monotonic() - t0 < 30, "no process took the lease"
        time.sleep(0.005)
    holder = c.get("holder")
    killed = time.monotonic()
    os.kill(holder, signal.SIGKILL)
    got = [results.get(timeout=30) for _ in range(3)]
    handed_on = time.monotonic() - killed
    for p in procs:
        p.join(timeout=30)
    # The three others all get the one value a second holder computed, long before the
    # 60 s lease could have run out.
    assert len(set(got)) == 1 and got[0] != f"by {holder}"
    assert c.get("calls") == 2
    assert handed_on < 10, handed_on


def test_a_failed_computation_gives_the_lease_back(client: surpdb.Client) -> None:
    def boom() -> None:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        client.get_or_set("k", boom)
    assert client.get_or_set("k", lambda: "second try") == "second try"
    assert client.get_or_set("k", boom) == "second try", "a hit calls nothing"
    # Not callable: stored as it is (add semantics), no lease.
    assert client.get_or_set("plain", 5) == 5 and client.get("plain") == 5


def test_a_value_that_cannot_be_stored_gives_the_lease_back(store_dir: str) -> None:
    # The computation succeeds but its set fails (a full noeviction store): the lease is given
    # back, not left to hold every other caller off for lease_timeout.
    with surpdb.Server(store_dir, size="8MiB", max_value="64KiB", policy="noeviction") as srv:
        c = surpdb.connect(srv.path)
        filler = os.urandom(1000)
        with pytest.raises(surpdb.SegmentFull):
            for i in range(100_000):
                c.set(f"fill{i}", filler)
        for i in range(20):  # the oldest: room for lease records, not for the value
            c.delete(f"fill{i}")
        with pytest.raises(surpdb.SegmentFull):
            c.get_or_set("k", lambda: os.urandom(60_000), lease_timeout=60)
        assert c.try_lease("k", 99) == 1, "the lease was given back"
        assert c.unlease("k", 99) is True


def test_a_lease_reads_as_a_miss_and_runs_out(client: surpdb.Client) -> None:
    assert client.try_lease("k", 7, lease_timeout=0.2) == 1
    assert client.try_lease("k", 8) == 2, "another caller of this process waits too"
    assert client.get("k") is None and "k" not in client
    assert client._scan(0, 100)[1] == [], "a lease is not a value: dump leaves it out"
    with pytest.raises(TypeError, match="holds its get_or_set lease"):  # not an int yet
        client.incr("k")
    assert client.try_lease("k", 7) == 1, "the holder asking again renews it"
    assert client.unlease("k", 8) is False, "only the holder gives it back"
    assert client.unlease("k", 7) is True and client.unlease("k", 7) is False
    assert client.try_lease("k", 7, lease_timeout=0.05) == 1
    t0 = time.monotonic()
    # Another process's try while it is held: held (2); once it runs out: granted.
    other = surpdb.connect(client.path)
    assert other._boxno != client._boxno
    while other.try_lease("k", 9, lease_timeout=1) != 1:
        assert time.monotonic() - t0 < 5
    client.set("k", "value")
    assert client.try_lease("k", 7) == 0 and client.get("k") == "value"
    with pytest.raises(ValueError):
        client.try_lease("k", 7, lease_timeout=0)


def _memo_worker(helpers_dir: str, results: Any) -> None:
    import sys

    sys.path.insert(0, helpers_dir)
    from memo_helpers import square

    results.put(square(7))


def test_memoize_plain_and_async_across_processes(server: surpdb.Server, tmp_path: Any) -> None:
    calls = []

    @surpdb.memoize(server.path, ttl=60)
    def add(a: int, b: int = 1) -> int:
        calls.append((a, b))
        return a + b

    assert add(1) == 2 and add(1) == 2 and add(1, b=5) == 6 and add(1, 5) == 6
    assert calls == [(1, 1), (1, 5), (1, 5)], "positional and keyword calls are other keys"
    assert add.invalidate(1) is True and add(1) == 2 and calls[-1] == (1, 1)
    assert add.key(1) != add.key(2) and add.key(1).startswith("memoize:")

    acalls = []

    @surpdb.memoize(surpdb.connect(server.path))
    async def fetch(x: str) -> dict[str, str]:
        acalls.append(x)
        await asyncio.sleep(0)
        return {"x": x}

    async def many() -> list[dict[str, str]]:
        return list(await asyncio.gather(*(fetch("a") for _ in range(20))))

    assert asyncio.run(many()) == [{"x": "a"}] * 20
    assert acalls == ["a"], "20 concurrent awaits on one loop computed once"
    # Another process with the same function and arguments finds the same key.
    helpers = tmp_path / "memo_helpers.py"
    helpers.write_text(
        "import os, surpdb\n"
        f"@surpdb.memoize({server.path!r})\n"
        "def square(x):\n"
        "    return (x * x, os.getpid())\n"
    )
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_memo_worker, args=(str(tmp_path), results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert got[0] == got[1] and got[0][0] == 49, "one process computed, the other read it"


def _stale_caller(path: str, computing: Any, release: Any, results: Any) -> None:
    c = surpdb.connect(path)

    def refresh() -> str:
        c.incr("refreshes")
        computing.set()
        assert release.wait(30), "the test releases the refresh once the others answered"
        return "v2"

    results.put(c.get_or_set("k", refresh, ttl=0.2, stale_ttl=60))


def _wait_until_stale(c: surpdb.Client, key: str, window: float) -> None:
    deadline = time.monotonic() + 10
    while (left := c.get_with_ttl(key)[1]) is None or left > window:
        assert time.monotonic() < deadline, f"{key} never reached its refresh window: {left}"


@pytest.mark.slow
def test_a_stale_value_is_served_while_one_process_refreshes(server: surpdb.Server) -> None:
    c = surpdb.connect(server.path)
    assert c.get_or_set("k", lambda: "v1", ttl=0.2, stale_ttl=60) == "v1"
    _wait_until_stale(c, "k", 60)
    ctx = mp.get_context("spawn")
    computing, release, results = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_stale_caller, args=(server.path, computing, release, results))
        for _ in range(6)
    ]
    for p in procs:
        p.start()
    # Five callers answer while the sixth is still computing: a caller that waited for the
    # refresh would never answer (the refresh is released only after them).
    early = [results.get(timeout=60) for _ in range(5)]
    assert early == ["v1"] * 5 and computing.is_set()
    release.set()
    assert results.get(timeout=60) == "v2"
    for p in procs:
        p.join(timeout=30)
    assert c.get("refreshes") == 1 and c.get("k") == "v2"
    assert c.get_with_ttl("k")[1] > 59, "the refreshed value is kept ttl + stale_ttl again"


def test_early_refresh_and_the_companion_lease(client: surpdb.Client) -> None:
    c = client
    assert c.get_or_set("e", lambda: 1, ttl=60, early=59.9) == 1
    assert c.get_or_set("e", lambda: 2, ttl=60, early=1) == 1, "fresh, not yet in its window"
    _wait_until_stale(c, "e", 59.9)
    # Another caller holds the refresh lease (the binding's companion key): the value as it is.
    assert c.try_lease("e\x00~refresh", 99) == 1
    assert c.get_or_set("e", lambda: 2, ttl=60, early=59.9) == 1

    async def acompute() -> int:
        return 2

    assert asyncio.run(surpdb.aget_or_set(c, "e", acompute, 60, early=59.9)) == 1
    assert c.unlease("e\x00~refresh", 99) is True

    def boom() -> int:
        raise RuntimeError("refresh failed")

    with pytest.raises(RuntimeError):
        c.get_or_set("e", boom, ttl=60, early=59.9)
    assert c.get("e") == 1, "a failed refresh leaves the value"
    assert c.get_or_set("e", lambda: 3, ttl=60, early=59.9) == 3, "and the lease was given back"
    assert c.get_with_ttl("e")[1] > 59
    _wait_until_stale(c, "e", 59.9)
    assert asyncio.run(surpdb.aget_or_set(c, "e", acompute, 60, early=59.9)) == 2
    assert c.get_with_ttl("missing", "d") == ("d", None)
    c.set("forever", 5)
    assert c.get_with_ttl("forever") == (5, None)
    assert c.get_or_set("forever", lambda: 6, ttl=1, stale_ttl=5) == 5, "no expiry: never stale"


def test_stale_and_early_arguments_are_checked(client: surpdb.Client) -> None:
    for kwargs in (
        {"stale_ttl": 5},  # no ttl
        {"ttl": 10, "early": 10},
        {"ttl": 10, "early": -1},
        {"ttl": 10, "stale_ttl": -1},
        {"ttl": 10, "stale_ttl": float("nan")},
    ):
        with pytest.raises(ValueError):
            client.get_or_set("k", lambda: 1, **kwargs)
        with pytest.raises(ValueError):
            surpdb.memoize(client, **kwargs)  # type: ignore[arg-type]
    assert "k" not in client
