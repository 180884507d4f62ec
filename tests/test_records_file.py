"""The records file grows a chunk at a time up to records_size; its records are listed
(record_ids), dumped and loaded; a version 1 file keeps its size and moves by dump and load."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import surpdb
from surpdb import _native

CHUNK = 4 << 20
HERE = Path(__file__).with_name("golden")


def _blobs(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(2000) for _ in range(n)]


def _fill(c: surpdb.Client, n: int, seed: int = 1) -> tuple[list[int], list[dict[str, object]]]:
    """n incompressible ~2 KB records (about 2,000 fill a 4 MiB chunk)."""
    recs: list[dict[str, object]] = [{"i": i, "b": b} for i, b in enumerate(_blobs(n, seed))]
    ids: list[int] = []
    for at in range(0, n, 500):
        ids += c.insert_many(recs[at : at + 500])
    return ids, recs


def _reader(path: str, ready: object, go: object, ids: object, out: object) -> None:
    c = surpdb.connect(path)
    c.record(c.insert({"early": True}))  # maps the records file while it is one chunk
    ready.set()  # type: ignore[attr-defined]
    assert go.wait(60)  # type: ignore[attr-defined]
    got = [c.record(r)["i"] for r in ids.get(timeout=60)]  # type: ignore[attr-defined]
    out.put(got)  # type: ignore[attr-defined]


def test_the_file_grows_as_records_come_and_an_early_reader_sees_them(store_dir: str) -> None:
    path = Path(store_dir) / "records.surp"
    with surpdb.Server(store_dir, size="32MiB", records_size="256MiB", train_after=0):
        c = surpdb.connect(store_dir)
        st = c.stats()
        start = path.stat().st_size
        assert st["records_file_version"] == _native.RECORDS_VERSION
        assert st["records_file_bytes"] == start, "no chunk before the first record"
        assert st["records_max_bytes"] == 256 << 20
        ctx = multiprocessing.get_context("spawn")
        ready, go, q, out = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=_reader, args=(store_dir, ready, go, q, out))
        p.start()
        try:
            assert ready.wait(60)
            ids, recs = _fill(c, 7000)  # ~14 MB: four chunks
            grown = path.stat().st_size
            assert grown == c.stats()["records_file_bytes"] == start + 4 * CHUNK
            q.put(ids)
            go.set()
            assert out.get(timeout=60) == list(range(7000))
            p.join(30)
            assert p.exitcode == 0
        finally:
            p.kill()
        assert [c.record(r) for r in ids[::97]] == recs[::97]
    # The disk holds what the records use, not the limit.
    assert os.stat(path).st_blocks * 512 < 32 << 20
    assert _native.check(store_dir)["ok"]


def test_the_chunk_table_takes_blocks_as_chunks_are_added(store_dir: str) -> None:
    """Found: the chunk table (16,384 entries, 512 KiB) was allocated whole at creation and
    counted in bytes_used, 0.9 B per record of a 560,000-record store."""
    path = Path(store_dir) / "records.surp"
    with surpdb.Server(store_dir, size="32MiB", train_after=0):
        c = surpdb.connect(store_dir)
        st = c.stats()
        assert st["bytes_used"] - st["cache_bytes_used"] < 64 << 10, st
        empty = os.stat(path).st_blocks * 512
        assert empty <= (1 << 20) + (64 << 10), empty  # the header and the log's first step
        rid = c.insert({"a": 1})
        st = c.stats()
        assert st["bytes_used"] - st["cache_bytes_used"] < 64 << 10, st
        one = os.stat(path).st_blocks * 512
        assert CHUNK <= one - empty <= CHUNK + (64 << 10), (empty, one)
    # A restart allocates what it uses, and the record is there.
    with surpdb.Server(store_dir, size="32MiB", train_after=0):
        assert surpdb.connect(store_dir).record(rid) == {"a": 1}
    # (st_blocks also counts the filesystem's extent blocks: a page or two.)
    assert os.stat(path).st_blocks * 512 <= one + (64 << 10)
    assert _native.check(store_dir)["ok"]


def test_a_full_file_names_its_limit_keeps_what_it_took_and_grows_after_a_raise(
    store_dir: str, tmp_path: Path
) -> None:
    # 16 MiB: the header, chunk table and table log take the first 4 MiB, so 3 chunks.
    conf = tmp_path / "surpd.toml"
    conf.write_text('size = "32MiB"\nrecords_size = "16MiB"\ntrain_after = 0\n')
    blob = _blobs(1)[0]
    with surpdb.Server(store_dir, size=None, config=conf) as srv:
        c = surpdb.connect(store_dir)
        ids: list[int] = []
        with pytest.raises(surpdb.SegmentFull, match=r"3 chunks .* limit of 16777216 bytes"):
            for i in range(10_000):  # 3 chunks hold about 6,200
                ids.append(c.insert({"i": i, "b": blob}))
        assert 6000 < len(ids) < 6500
        assert c.stats()["records_file_bytes"] == 16 << 20
        with pytest.raises(surpdb.SegmentFull):
            c.insert({"b": blob})
        # A raised limit applies at a reload (SIGHUP re-reads the config file).
        conf.write_text('size = "32MiB"\nrecords_size = "24MiB"\ntrain_after = 0\n')
        srv.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while c.stats()["records_max_bytes"] != 24 << 20:
            assert time.monotonic() < deadline, "the reload never applied"
        more = [c.insert({"i": i, "b": blob}) for i in range(3000)]
        assert c.stats()["records_file_bytes"] == 24 << 20
        assert all(c.record(r)["i"] == i for i, r in enumerate(ids) if i % 50 == 0)
        assert c.record(more[-1])["i"] == 2999
    # And at a restart.
    with surpdb.Server(store_dir, size="32MiB", records_size="32MiB", train_after=0):
        c = surpdb.connect(store_dir)
        assert c.stats()["records_max_bytes"] == 32 << 20
        with pytest.raises(surpdb.SegmentFull, match="limit of 33554432 bytes"):
            for i in range(10_000):  # what chunk 4 has left and two more
                c.insert({"i": i, "b": blob})
        assert 4000 < i < 6500  # what chunk 4 had left, then two more
        assert c.stats()["records_file_bytes"] == 32 << 20
        assert c.record(more[0])["i"] == 0
    assert _native.check(store_dir)["ok"]


def test_record_ids_lists_each_live_record_once_in_pages(client: surpdb.Client) -> None:
    ids, _ = _fill(client, 5000)
    removed = set(ids[::3])
    for r in removed:
        assert client.remove(r)
    seen: list[int] = []
    cursor = 0
    for _ in range(10_000):
        cursor, page = client.record_ids(cursor, 7)
        assert len(page) <= 7
        seen += page
        if cursor == 0:
            break
    assert cursor == 0
    assert seen == [r for r in ids if r not in removed]  # storage order, each once
    assert client.record_ids(0, 1_000_000)[1] == seen
    with pytest.raises(ValueError, match="count 0 is out of range"):
        client.record_ids(0, 0)
    with pytest.raises(ValueError, match="out of range"):
        client.record_ids(0, 1_000_001)


def test_a_forged_cursor_never_lists_a_record_that_is_not_one(client: surpdb.Client) -> None:
    # A cursor resumes only at a record whose header and check hold; any other number
    # goes on at the next chunk. Before: parsing from the middle of a record would list
    # made-up ids that read back as garbage.
    ids, _ = _fill(client, 3000)
    live = set(ids)
    rng = random.Random(7)
    for _ in range(100):  # each forged cursor passes a 20-bit check with odds 2^-20
        r = rng.choice(ids)
        forged = [
            rng.getrandbits(64),
            r + 1 + (rng.randrange(1, 4000) << 28),  # inside the record, same generation
            (r | 0xFFFFF) + 1,
            r + 2,
        ]
        for cursor in forged:
            _, page = client.record_ids(cursor, 50)
            assert set(page) <= live, cursor


def _churn(path: str, n: int) -> None:
    c = surpdb.connect(path)
    for i in range(n):
        rid = c.insert({"churn": i, "b": b"x" * 3000})
        if i % 2:
            c.remove(rid)


def test_a_scan_beside_a_writer_lists_every_record_live_throughout(
    server: surpdb.Server,
) -> None:
    c = surpdb.connect(server.path)
    ids, _ = _fill(c, 3000)
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_churn, args=(server.path, 6000))
    p.start()
    try:
        seen: list[int] = []
        for _ in range(5):
            cursor = 0
            seen = []
            while True:
                cursor, page = c.record_ids(cursor, 100)
                seen += page
                if cursor == 0:
                    break
            kept = [r for r in seen if r in set(ids)]
            assert kept == ids, "a record live for the whole scan is listed once, in order"
            assert len(seen) == len(set(seen))
        p.join(60)
        assert p.exitcode == 0
    finally:
        p.kill()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "surpdb", *args], capture_output=True, text=True, timeout=120
    )


def test_dump_and_load_move_records_and_map_their_ids(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    recs: list[object] = [
        {"url": f"https://example.org/{i}", "title": f"page {i}"} for i in range(3000)
    ]
    recs += [{"b": b"\x00bytes", "t": (1, 2)}, [1.5, None, "x"], {"n": 2**80}]
    with surpdb.Server(a, size="32MiB"):
        c = surpdb.connect(a)
        ids = c.insert_many(recs)
        c.set("item", {"kept": True})
        for r in ids[:100]:
            c.remove(r)
        r = _cli("dump", str(a), "-o", str(tmp_path / "dump.jsonl"))
        assert r.returncode == 0, r.stderr
        assert "dumped 1 items and 2903 records" in r.stderr
    lines = [json.loads(x) for x in (tmp_path / "dump.jsonl").read_text().splitlines()]
    assert sum("record_b64" in x for x in lines) == 1  # bytes and a tuple; 2**80 is JSON
    with surpdb.Server(b, size="32MiB"):
        r = _cli("load", str(b), str(tmp_path / "dump.jsonl"), "--id-map", str(tmp_path / "m"))
        assert r.returncode == 0, r.stderr
        assert "loaded 1 items and 2903 records" in r.stderr
        pairs = [json.loads(x) for x in (tmp_path / "m").read_text().splitlines()]
        c = surpdb.connect(b)
        assert c.get("item") == {"kept": True}
        want = dict(zip(ids, recs, strict=True))
        assert sorted(p["old"] for p in pairs) == sorted(ids[100:])
        for p in pairs:
            assert c.record(p["new"]) == want[p["old"]]
        assert c.stats()["records"] == 2903


def test_bad_record_lines_in_a_dump_are_refused_with_their_line(tmp_path: Path) -> None:
    d = tmp_path / "d"
    (tmp_path / "bad.jsonl").write_text('{"rid": 1, "record": {"a": 1}}\n{"rid": "x"}\n')
    with surpdb.Server(d, size="32MiB"):
        r = _cli("load", str(d), str(tmp_path / "bad.jsonl"))
        assert r.returncode != 0
        assert "bad.jsonl:2: bad dump line" in r.stderr
        c = surpdb.connect(d)
        assert c.stats()["records"] == 1, "what came before the bad line is stored"


def test_a_load_into_a_full_file_names_the_line_and_maps_what_it_stored(tmp_path: Path) -> None:
    # Before: the records inserted before the failure were not written to the id map, and
    # the error named the line that completed the batch.
    rng = random.Random(3)
    dump = tmp_path / "dump.jsonl"
    with open(dump, "w") as f:
        for i in range(8000):
            text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(2000))
            f.write(json.dumps({"rid": 1000 + i, "record": {"i": i, "t": text}}) + "\n")
    d = tmp_path / "d"
    with surpdb.Server(d, size="32MiB", records_size="16MiB", train_after=0):
        r = _cli("load", str(d), str(dump), "--id-map", str(tmp_path / "m"))
        assert r.returncode != 0
        m = re.search(r"dump.jsonl:(\d+): record not stored: SegmentFull", r.stderr)
        assert m, r.stderr
        pairs = [json.loads(x) for x in (tmp_path / "m").read_text().splitlines()]
        c = surpdb.connect(d)
        assert len(pairs) == c.stats()["records"] == int(m.group(1)) - 1
        for p in pairs[::250]:
            assert c.record(p["new"])["i"] == p["old"] - 1000


def test_a_version_1_file_keeps_its_size_and_moves_by_dump_and_load(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    with gzip.open(HERE / "records-v1.surp.gz") as src, open(old / "records.surp", "wb") as dst:
        shutil.copyfileobj(src, dst)
    meta = json.loads((HERE / "records-v1.json").read_text())
    live = [r for r in meta["ids"] if r != meta["removed"]]
    args = {"size": "1MiB", "max_value": "16KiB"}
    with surpdb.Server(old, records_size="1GiB", **args) as srv:
        c = surpdb.connect(old)
        st = c.stats()
        assert st["records_file_version"] == _native.RECORDS_FIXED_VERSION
        assert st["records_max_bytes"] == st["records_file_bytes"] == 16 << 20
        assert "keeps its size" in srv.log
        blob = _blobs(1)[0]
        with pytest.raises(surpdb.SegmentFull, match="version 1 records file keeps .* dump"):
            for i in range(20_000):
                c.insert({"i": i, "b": blob})
        assert _cli("dump", str(old), "-o", str(tmp_path / "d.jsonl")).returncode == 0
        before = {r: c.record(r) for r in live}
    with surpdb.Server(new, **args):
        r = _cli("load", str(new), str(tmp_path / "d.jsonl"), "--id-map", str(tmp_path / "m"))
        assert r.returncode == 0, r.stderr
        c = surpdb.connect(new)
        assert c.stats()["records_file_version"] == _native.RECORDS_VERSION
        lines = (tmp_path / "m").read_text().splitlines()
        pairs = {p["old"]: p["new"] for p in map(json.loads, lines)}
        assert all(c.record(pairs[r]) == want for r, want in before.items())


def test_a_chunk_count_ahead_of_the_file_is_extended_when_the_daemon_starts(
    store_dir: str,
) -> None:
    # After a machine crash the header page may reach the disk before the file's new
    # length; and a reader may load the header between a growth's two steps. Before: the
    # file was refused as corrupt ("bad records header") and the daemon would not start.
    with surpdb.Server(store_dir, size="32MiB", train_after=0):
        c = surpdb.connect(store_dir)
        ids, recs = _fill(c, 3000)  # two chunks
    path = Path(store_dir) / "records.surp"
    length = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(24)  # nchunks
        n = int.from_bytes(f.read(8), "little")
        f.seek(24)
        f.write((n + 2).to_bytes(8, "little"))
        f.seek(16)  # size, for stats only
        f.write((12345).to_bytes(8, "little"))
    reader = surpdb.connect(store_dir)  # a reader opens it as it is: two chunks readable
    assert reader.record(ids[-1]) == recs[-1]
    with surpdb.Server(store_dir, size="32MiB", train_after=0) as srv:
        assert f"counts {n + 2} chunks" in srv.log and "extended" in srv.log
        assert path.stat().st_size == length + 2 * CHUNK
        c = surpdb.connect(store_dir)
        assert [c.record(r) for r in ids[::100]] == recs[::100]
        more, _ = _fill(c, 3000, seed=2)
        assert c.record(more[-1])["i"] == 2999
    assert _native.check(store_dir)["ok"]
