"""A client created before fork() works in the children (the gunicorn pre-fork pattern)."""

from __future__ import annotations

import multiprocessing as mp
import os

import surpdb

_client: surpdb.Client | None = None


def _work(i: int) -> int:
    assert _client is not None
    _client.set(f"pool{i}", os.getpid())
    assert _client.get("parent") == "hello"
    return _client.incr("pool-counter")


def test_children_of_a_fork_use_the_parents_client(client: surpdb.Client) -> None:
    client.set("parent", "hello")
    client.set("parent-bytes", b"pb")
    pids = []
    for i in range(3):
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                assert client.get("parent") == "hello"
                client.set(f"child{i}", os.getpid())
                for _ in range(100):
                    client.incr("counter")
                m = client.view("parent-bytes")
                assert m is not None and bytes(m) == b"pb"
                m.release()
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert client.get("counter") == 300
    for i, pid in enumerate(pids):
        assert client.get(f"child{i}") == pid
    # The parent's own client still works, and its slot was not taken by a child.
    client.set("parent", "still")
    assert client.get("parent") == "still"


def test_prefork_pool(client: surpdb.Client) -> None:
    global _client
    _client = client
    client.set("parent", "hello")
    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map(_work, range(20))
    assert sorted(results) == list(range(1, 21))
    assert all(isinstance(client.get(f"pool{i}"), int) for i in range(20))


def test_child_slots_are_reaped_after_exit(client: surpdb.Client) -> None:
    import time

    before = client.stats()["clients"]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            client.set("x", 1)  # claims a slot in the child
            code = 0
        finally:
            os._exit(code)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + 10
    while client.stats()["clients"] > before and time.monotonic() < deadline:
        client.flush()  # gives the daemon a request; reaping runs every 200 ms
    assert client.stats()["clients"] == before
