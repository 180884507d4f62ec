"""Ways to lose data, wedge or crash surpdb, each found by attacking it (issue 13), each a test
that failed before its fix: a second daemon behind a deleted lock file, a full filesystem,
client words overwritten by another group member, a forked child releasing its parent's view,
a restart with other ring settings, client slots running out, pipelines past 100,000 items, a
value the daemon builds that no reader could decode, training that blocked every writer, and
the small ones (a huge timeout, a huge int, a forged ``retired`` word, garbage in a free box).
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import surpdb
from surpdb import _native

# Ring file layout (daemon/src/layout.rs): RingHeader, then BoxCtl x nboxes.
RING_BOXES_OFF = 32
RING_DATA_OFF = 48
RING_BOX_BYTES = 24
RING_RETIRED = 136
BOX_OWNER, BOX_ACTIVE, BOX_VIEW_EPOCH = 0, 4, 24
BOX_TAIL, BOX_HEAD, BOX_DONE, BOX_POISONED = 64, 128, 136, 152


class RingFile:
    """The request ring as any member of the service group can map it (read-write)."""

    def __init__(self, path: str) -> None:
        self._f = open(os.path.join(path, "ring.surp"), "r+b")  # noqa: SIM115
        self.m = mmap.mmap(self._f.fileno(), 0)

    def u64(self, off: int) -> int:
        return int(struct.unpack_from("<Q", self.m, off)[0])

    def put_u64(self, off: int, v: int) -> None:
        struct.pack_into("<Q", self.m, off, v)

    def u32(self, off: int) -> int:
        return int(struct.unpack_from("<I", self.m, off)[0])

    def put_u32(self, off: int, v: int) -> None:
        struct.pack_into("<I", self.m, off, v)

    def box(self, b: int) -> int:
        return self.u64(RING_BOXES_OFF) + 256 * b

    def nboxes(self) -> int:
        return self.u32(16)

    def close(self) -> None:
        self.m.close()
        self._f.close()


# ---------------------------------------------------------------- the data-loss items


def test_a_second_daemon_is_refused_even_after_the_lock_file_is_deleted(store_dir: str) -> None:
    srv = surpdb.Server(store_dir, size="32MiB")
    try:
        c = surpdb.connect(store_dir)
        c.set("k", "v")
        os.remove(os.path.join(store_dir, "surpd.lock"))  # a cleanup script, say
        with pytest.raises(surpdb.DaemonRunning, match="lock on the data segment"):
            surpdb.Server(store_dir, size="32MiB")
        assert c.set("k2", "v2") is True and c.get("k") == "v"
    finally:
        srv.stop()
    assert _native.check(store_dir)["ok"]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 20 MiB tmpfs (root only, as CI runs)."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_segment_larger_than_the_filesystem_is_refused_at_start(small_fs: Path) -> None:
    # Before: the sparse file was created, the daemon died of SIGBUS storing into it, and
    # again on every restart. Now its blocks are allocated up front.
    d = str(small_fs / "store")
    for _ in range(2):
        with pytest.raises(OSError, match=r"cannot allocate .* bytes free"):
            surpdb.Server(d, size="64MiB")


def test_a_full_filesystem_during_insert_many_is_an_error_not_a_crash(small_fs: Path) -> None:
    d = str(small_fs / "store")
    srv = surpdb.Server(
        d, size="4MiB", max_value="64KiB", records_size="1GiB", train_after=0, max_clients=8
    )
    try:
        c = surpdb.connect(d)
        first = c.insert_many([{"n": i, "pad": "x" * 200} for i in range(100)])
        # ~20 MiB of records cannot fit beside the 4 MiB segment on a 20 MiB filesystem.
        records = [{"n": i, "pad": "y" * 2000} for i in range(10_000)]
        with pytest.raises(OSError, match="is full") as e:
            c.insert_many(records)
        assert e.value.errno == 28
        stored = [i for i in e.value.ids if i is not None]  # type: ignore[attr-defined]
        assert 0 < len(stored) < len(records)
        assert srv.running(), "the daemon survives the full disk"
        assert c.record(first[7]) == {"n": 7, "pad": "x" * 200}
        assert c.record(stored[-1])["pad"] == "y" * 2000
        assert c.set("still", "writes") is True
    finally:
        code = srv.stop()
    assert code == 0, srv.log
    # Restarting on the full filesystem works, and everything acknowledged is there.
    with surpdb.Server(
        d, size="4MiB", max_value="64KiB", records_size="1GiB", train_after=0, max_clients=8
    ):
        c = surpdb.connect(d)
        assert c.record(stored[0])["n"] == 0 and c.get("still") == "writes"
    assert _native.check(d)["ok"]


# ---------------------------------------------------------------- wedges and wrong answers


def test_a_forged_done_word_cannot_hang_a_client(server: surpdb.Server) -> None:
    # Before: `done = 2**62` in a victim's box kept it spinning in set() for 30 s at 100% CPU
    # with a 2 s timeout. Now it waits for the daemon's real answer, within its timeout.
    c = surpdb.connect(server.path, timeout=2)
    ring = RingFile(server.path)
    try:
        b = c._boxno
        assert b is not None
        ring.put_u64(ring.box(b) + BOX_DONE, 2**62)
        t0 = time.monotonic()
        assert c.set("k", 1) is True
        assert time.monotonic() - t0 < 2.5
        assert c.get("k") == 1
    finally:
        ring.close()


def test_a_poisoned_box_is_left_for_a_fresh_one(server: surpdb.Server) -> None:
    # Before: once the daemon poisoned a box (a malformed request in it), every later request
    # of that process failed until it restarted. Now the client moves to a fresh box.
    c = surpdb.connect(server.path, timeout=2)
    c.set("before", 1)
    ring = RingFile(server.path)
    try:
        b = c._boxno
        assert b is not None
        box, data = ring.box(b), ring.u64(RING_DATA_OFF) + b * ring.u64(RING_BOX_BYTES)
        head = ring.u64(box + BOX_HEAD)
        at = data + head % ring.u64(RING_BOX_BYTES)
        ring.m[at : at + 64] = b"\xee" * 64
        ring.put_u64(box + BOX_TAIL, head + 64)  # another process publishes garbage
        c2 = surpdb.connect(server.path)
        c2.flush()  # the daemon has passed over the box
        assert ring.u32(box + BOX_POISONED) == 1
        assert c.set("after", 2) is True
        assert c._boxno != b
        assert c.get("before") == 1 and c.get("after") == 2
    finally:
        ring.close()


def test_a_forked_child_cannot_unpin_its_parents_view(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="32MiB") as srv:
        c = surpdb.connect(srv.path)
        c.set("blob", b"x" * 1000)
        m = c.view("blob")
        assert m is not None
        ring = RingFile(srv.path)
        try:
            b = c._boxno
            assert b is not None
            pinned = ring.u64(ring.box(b) + BOX_VIEW_EPOCH)
            assert pinned != 0
            pid = os.fork()
            if pid == 0:  # the child: drop the inherited view, and exit
                code = 0
                try:
                    del m
                    import gc

                    gc.collect()
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert status == 0
            assert ring.u64(ring.box(b) + BOX_VIEW_EPOCH) == pinned, "the child unpinned it"
            # Churn through the whole heap: the parent's view must not change under it.
            for i in range(400):
                c.set(f"churn{i % 7}", b"y" * 60_000)
            assert bytes(m) == b"x" * 1000
            m.release()
            assert ring.u64(ring.box(b) + BOX_VIEW_EPOCH) == 0
        finally:
            ring.close()


def test_queued_writes_survive_a_restart_with_other_ring_settings(store_dir: str) -> None:
    # Before: the daemon replaced the ring and dropped what was queued in it, and clients got
    # "the daemon replaced the request ring; reconnect" forever. Now the old ring's queue is
    # applied and clients move to the new ring by themselves.
    srv = surpdb.Server(store_dir, size="32MiB", max_clients=8)
    c = surpdb.connect(store_dir, timeout=30)
    c.set("a", 0)
    srv.stop()
    tickets = [c.set(f"q{i}", i, wait=False) for i in range(50)]  # queued, no daemon
    srv = surpdb.Server(store_dir, size="32MiB", max_clients=16)
    try:
        assert all(c.wait(t) is True for t in tickets)
        assert [c.get(f"q{i}") for i in range(50)] == list(range(50))
        assert c.set("after", 1) is True  # moved to the new ring transparently
        assert c.incr("n") == 1
        assert c.stats()["ring_clients_max"] == 16
        assert surpdb.connect(store_dir).get("after") == 1
    finally:
        srv.stop()
    assert _native.check(store_dir)["ok"]


def test_connect_in_a_loop_never_runs_out_of_slots(store_dir: str) -> None:
    # Before: boxes were freed only by the daemon's 200 ms reaper; the 63rd of 64 failed.
    with surpdb.Server(store_dir, size="32MiB", max_clients=4):
        for i in range(300):
            c = surpdb.connect(store_dir)
            assert c.set("k", i) is True
            del c
        assert surpdb.connect(store_dir).get("k") == 299


def _short_reader(path: str, q: mp.SimpleQueue) -> None:  # type: ignore[type-arg]
    c = surpdb.connect(path)
    q.put(c.get("k"))


def _killed_reader(path: str, q: mp.SimpleQueue) -> None:  # type: ignore[type-arg]
    c = surpdb.connect(path)
    q.put(c.get("k"))
    os.kill(os.getpid(), 9)  # dies holding its box


def test_short_lived_readers_with_the_daemon_down_never_run_out(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="32MiB", max_clients=4):
        surpdb.connect(store_dir).set("k", "v")
    ctx = mp.get_context("fork")
    for target in (_short_reader, _killed_reader):
        for _ in range(10):  # 20 processes for 4 boxes, no daemon to reap them
            q = ctx.SimpleQueue()  # put() returns once sent: the killed one sends first
            p = ctx.Process(target=target, args=(store_dir, q))
            p.start()
            p.join(timeout=30)
            assert not q.empty() and q.get() == "v"


def _holder(path: str, ready: mp.Event, stop: mp.Event) -> None:  # type: ignore[type-arg]
    c = surpdb.connect(path)
    c.set(f"h{os.getpid()}", 1)
    ready.set()
    stop.wait(60)
    del c


def test_a_client_without_a_free_box_still_reads_and_writes_once_one_frees(
    store_dir: str,
) -> None:
    ctx = mp.get_context("spawn")
    with surpdb.Server(store_dir, size="32MiB", max_clients=2):
        first = surpdb.connect(store_dir)
        first.set("k", {"v": 1})
        first.set("blob", b"z" * 500)
        del first
        stops, procs = [], []
        for _ in range(2):
            ready, stop = ctx.Event(), ctx.Event()
            p = ctx.Process(target=_holder, args=(store_dir, ready, stop))
            p.start()
            assert ready.wait(60)
            stops.append(stop)
            procs.append(p)
        c = surpdb.connect(store_dir, timeout=2)
        assert c._boxno is None
        assert c.get("k") == {"v": 1} and c.has_key("k")
        assert c.get_many(["k", "nope"]) == {"k": {"v": 1}}
        with c.view("blob") as m:  # nothing can pin without a box: a view of a copy
            assert m is not None and bytes(m) == b"z" * 500
        with pytest.raises(surpdb.Unavailable, match="all 2 client slots"):
            c.set("x", 1)
        stops[0].set()
        procs[0].join(60)
        assert c.set("x", 1) is True  # claims the freed box
        assert c._boxno is not None and c.get("x") == 1
        stops[1].set()
        procs[1].join(60)


def test_pipelines_of_any_size_complete(store_dir: str) -> None:
    # Before: 150,000 items raised "dropped after 100000 newer uncollected results" after
    # applying them all, and insert_many's ids were lost.
    n = 150_000
    with surpdb.Server(store_dir, size="64MiB", train_after=0):
        c = surpdb.connect(store_dir)
        assert c.set_many({f"k{i}": i for i in range(n)}) == []
        assert c.get("k0") == 0 and c.get(f"k{n - 1}") == n - 1
        assert c.delete_many([f"k{i}" for i in range(n)]) == n
        ids = c.insert_many([{"i": i} for i in range(n)])
        assert len(ids) == n and c.record(ids[-1]) == {"i": n - 1}
        assert c.train([{"i": i, "s": str(i)} for i in range(n)]) > 0


def test_an_append_that_would_nest_too_deep_is_refused(client: surpdb.Client) -> None:
    # Before: a 200-deep item appended to a list stored a 201-deep value that get() and
    # dump could not decode.
    deep: object = 1
    for _ in range(200):
        deep = [deep]
    client.set("l", [])
    with pytest.raises(ValueError, match="nested deeper than 200"):
        client.append("l", deep)
    assert client.get("l") == []
    client.append("l", 5)
    assert client.get("l") == [5]


def test_training_does_not_block_other_writers(store_dir: str) -> None:
    # Before: a 20 MB sample took 30 s in the apply loop; another client's set() waited 29 s
    # and a 5 s timeout raised Unavailable. Now training runs in a background thread.
    sample = [
        {"url": f"https://example.org/{i}/page", "title": f"word {i} " * (i % 40)}
        for i in range(120_000)
    ]
    with surpdb.Server(store_dir, size="32MiB", train_after=0):
        trainer = surpdb.connect(store_dir)
        writer = surpdb.connect(store_dir, timeout=0.5)
        done = threading.Event()
        result: list[int] = []

        def train() -> None:
            result.append(trainer.train(sample))
            done.set()

        t = threading.Thread(target=train)
        t.start()
        writes = 0
        while not done.is_set() and writes < 200_000:
            assert writer.set("w", writes) is True  # within the 0.5 s timeout, each one
            writes += 1
        t.join(timeout=300)
        assert result and result[0] > 0
        assert writes > 10, "writes went on while the model trained"
        rid = trainer.insert(sample[3])
        assert trainer.record(rid) == sample[3]
        assert trainer.stats()["record_models"] == 1


# ---------------------------------------------------------------- smaller ones


def test_a_huge_timeout_is_a_value_error(server: surpdb.Server) -> None:
    for t in (1e300, float("inf"), float("nan"), 0, -1):
        with pytest.raises(ValueError, match="timeout must be positive"):
            surpdb.connect(server.path, timeout=t)
    assert surpdb.connect(server.path, timeout=365 * 86400).get("x") is None


def test_incr_of_a_huge_int_names_the_range(client: surpdb.Client) -> None:
    client.set("big", 2**200)
    with pytest.raises(TypeError, match=r"an int of about \d+ bits, outside the 128-bit range"):
        client.incr("big")
    assert client.get("big") == 2**200


def test_a_forged_retired_word_does_not_stop_writers(server: surpdb.Server) -> None:
    # Before: any group member could set it and make every writer "reconnect" until a
    # restart. A ring is retired only when the daemon installed another file.
    c = surpdb.connect(server.path, timeout=2)
    ring = RingFile(server.path)
    try:
        ring.put_u32(RING_RETIRED, 1)
        for i in range(20):
            assert c.set("k", i) is True
        assert c.get("k") == 19
    finally:
        ring.close()


def test_garbage_in_free_boxes_does_not_break_the_next_client(server: surpdb.Server) -> None:
    ring = RingFile(server.path)
    try:
        for b in range(ring.nboxes()):
            box = ring.box(b)
            if ring.u32(box + BOX_OWNER) == 0:
                ring.put_u64(box + BOX_TAIL, 0xDEADBEEF)
                ring.put_u64(box + BOX_HEAD, 0x12345)
                ring.put_u64(box + BOX_DONE, 99)
        c = surpdb.connect(server.path, timeout=2)
        assert c.set("k", 1) is True and c.incr("n") == 1
    finally:
        ring.close()


def _exited(pid: int) -> bool:
    """Gone, or a zombie no one has reaped (its parent died; init may be slow to)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_daemon_whose_starter_dies_stops_cleanly(tmp_path: Path) -> None:
    # Found: a surpdb.Server daemon outlived a parent that died without stop() (a test
    # runner killed, a script's SIGKILL), serving an orphaned store until someone killed it.
    path = str(tmp_path / "store")
    script = (
        "import os, surpdb\n"
        f"srv = surpdb.Server({path!r}, size='32MiB')\n"
        f"surpdb.connect({path!r}).set('k', 'kept')\n"
        "print(srv.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr
    daemon = int(p.stdout.split()[0])
    deadline = time.monotonic() + 30
    while not _exited(daemon):
        assert time.monotonic() < deadline, "the daemon outlived the process that started it"
        time.sleep(0.01)
    assert _native.check(path)["clean_stop"], "it stopped as on SIGTERM, not by a crash"
    with surpdb.Server(path, size="32MiB"):
        assert surpdb.connect(path).get("k") == "kept"
