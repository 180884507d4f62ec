"""Golden segment images pin the format: the current version's image opens and reads back
exactly; the one older version a daemon upgrades in place opens, is upgraded and reads back
exactly; images of other versions are refused with IncompatibleSegment, never misread."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

import surpdb
from surpdb import _native

HERE = Path(__file__).with_name("golden")
IMAGES = sorted(HERE.glob("format-v*.surp.gz"))


def unpack(image: Path, dest: Path, name: str = "data.surp") -> Path:
    """A data directory holding the image as its file `name`."""
    dest.mkdir(parents=True)
    with gzip.open(image) as src, open(dest / name, "wb") as out:
        shutil.copyfileobj(src, out)
    return dest


def test_there_is_an_image_of_the_current_format() -> None:
    assert HERE / f"format-v{_native.FORMAT_VERSION}.surp.gz" in IMAGES


@pytest.mark.parametrize("image", IMAGES, ids=lambda p: p.name)
def test_golden_image_opens_or_is_refused(image: Path, tmp_path: Path) -> None:
    from golden.make_golden import ESCAPED, GOLDEN, NAMESPACES

    store = unpack(image, tmp_path / "store")
    version = int(image.name.split("-v")[1].split(".")[0])
    if version != _native.FORMAT_VERSION and version not in _native.FORMATS_UPGRADABLE:
        with pytest.raises(surpdb.IncompatibleSegment):
            surpdb.Server(store, size="1MiB", max_value="64")
        return
    r = _native.check(store)
    assert r["ok"], r["problems"]
    with surpdb.Server(store, size="1MiB", max_value="64") as srv:
        c = surpdb.connect(store)
        for k, v in GOLDEN.items():
            got = c.get(k)
            assert got == v and type(got) is type(v), k
        assert c.get("far-ttl") == "kept"
        assert c.zrange("zset", 0, -1, withscores=True) == [("x", 1.0), (b"y", 2.5)]
        assert c.get("list") == [1] and c.get("counter") == 41
        if version >= 2:
            for ns, held in NAMESPACES.items():
                n = c.namespace(ns)
                for k, v in held.items():
                    assert n.get(k) == v, (ns, k)
                assert n.namespace_stats()["items"] == len(held), ns
            assert c.namespace("gone").get("g1") is None
            assert c.namespace("capped").get("c0") is None
            assert c.namespace("capped").namespace_stats()["max_items"] == 2
            for k, v in ESCAPED.items():
                assert c.get(k) == v
        if version >= 3:
            assert (c.get("pre:a"), c.get("pre:b"), c.get("pre:c")) == (None, None, 3)
        c.set("new", "after attach")
        assert c.get("new") == "after attach"
        assert c.stats()["format_version"] == _native.FORMAT_VERSION
        s = c.namespace("after")
        s.set("new", "in a namespace")
        assert s.get("new") == "in a namespace" and c.get("new") == "after attach"
        if version != _native.FORMAT_VERSION:
            assert f"upgraded the segment from format {version}" in srv.log
    r = _native.check(store)
    assert r["ok"], r["problems"]


def test_an_upgrade_re_keys_bytes_keys_that_start_like_namespaced_ones(tmp_path: Path) -> None:
    # Written by a version-1 build (no namespaces): raw bytes keys "\xff" + a byte below
    # 0x20, which version 2 reads as namespaced unless stored escaped.
    store = unpack(HERE / "upgrade-v1-binkeys.surp.gz", tmp_path / "store")
    with surpdb.Server(store, size="1MiB", max_value="64") as srv:
        c = surpdb.connect(store)
        assert c.get(b"\xff\x05bin") == "was raw, reads as namespace 5 unless escaped"
        assert c.get(b"\xff\x00zero") == "starts like an escaped key"
        assert c.get(b"\xff\x1fedge") == 31
        assert c.get(b"\xff\x20space") == "needs no escape"
        assert c.get("plain") == "text key"
        assert "bytes_keys_escaped=3" in srv.log
        assert c.stats()["items"] == 5
        # Namespaces opened now do not see them.
        for i in range(1, 8):
            assert c.namespace(f"n{i}")._scan(0, 100) == (0, [])
        assert sorted(k for k, _, _ in c._scan(0, 100)[1]) == sorted(
            [b"\xff\x05bin", b"\xff\x00zero", b"\xff\x1fedge", b"\xff\x20space", b"plain"]
        )
    r = _native.check(store)
    assert r["ok"], r["problems"]


def test_an_image_with_another_version_number_is_refused(tmp_path: Path) -> None:
    image = HERE / f"format-v{_native.FORMAT_VERSION}.surp.gz"
    store = unpack(image, tmp_path / "store")
    with open(store / "data.surp", "r+b") as f:
        f.seek(8)
        f.write((_native.FORMAT_VERSION + 1).to_bytes(4, "little"))
    with pytest.raises(surpdb.IncompatibleSegment, match=f"version {_native.FORMAT_VERSION + 1}"):
        surpdb.Server(store, size="1MiB", max_value="64")


RECORD_IMAGES = sorted(HERE.glob("records-v*.surp.gz"))


def test_there_is_a_records_image_of_the_current_format() -> None:
    assert HERE / f"records-v{_native.RECORDS_VERSION}.surp.gz" in RECORD_IMAGES


@pytest.mark.parametrize("image", RECORD_IMAGES, ids=lambda p: p.name)
def test_golden_records_image_reads_back_every_record(image: Path, tmp_path: Path) -> None:
    import json

    from golden.make_golden import golden_records

    store = unpack(image, tmp_path / "store", "records.surp")
    meta = json.loads(image.with_name(image.name.replace(".surp.gz", ".json")).read_text())
    version = int(image.name.split("-v")[1].split(".")[0])
    args = {"size": "1MiB", "max_value": "16KiB", "records_size": "16MiB"}
    # Version 1 files (a chunk table for the size they were made with) are served as they
    # are, without growing.
    if version not in (_native.RECORDS_VERSION, _native.RECORDS_FIXED_VERSION):
        with pytest.raises(surpdb.IncompatibleSegment):
            surpdb.Server(store, **args)
        return
    with surpdb.Server(store, **args):
        c = surpdb.connect(store)
        for rid, want in zip(meta["ids"], golden_records(), strict=True):
            if rid == meta["removed"]:
                with pytest.raises(KeyError):
                    c.record(rid)
            else:
                assert c.record(rid) == want, rid
        assert c.record(c.insert({"new": 1})) == {"new": 1}
        # A model trained now (token text, model order 4) beside the image's (order-3 byte
        # text): records of both read back, before and after a restart.
        models = c.stats()["record_models"]
        c.train(golden_records() * 3)
        assert c.stats()["record_models"] == models + 1
        fresh = c.insert_many(golden_records())
    with surpdb.Server(store, **args):
        c = surpdb.connect(store)
        assert [c.record(r) for r in fresh] == golden_records()
        for rid, want in zip(meta["ids"], golden_records(), strict=True):
            if rid != meta["removed"]:
                assert c.record(rid) == want, rid
    assert _native.check(store)["ok"]


def test_a_records_file_with_another_version_is_refused(tmp_path: Path) -> None:
    image = HERE / f"records-v{_native.RECORDS_VERSION}.surp.gz"
    store = unpack(image, tmp_path / "store", "records.surp")
    with open(store / "records.surp", "r+b") as f:
        f.seek(8)
        f.write((_native.RECORDS_VERSION + 1).to_bytes(4, "little"))
    with pytest.raises(surpdb.IncompatibleSegment):
        surpdb.Server(store, size="1MiB", max_value="16KiB", records_size="16MiB")


def test_a_ring_of_another_version_is_replaced_and_the_segment_kept(tmp_path: Path) -> None:
    # Each file has its own version: a ring format this build does not know is replaced by a
    # fresh ring at the next start; the data segment beside it is not refused.
    store = tmp_path / "store"
    with surpdb.Server(store, size="1MiB", max_value="64"):
        surpdb.connect(store).set("kept", "across a ring replacement")
    with open(store / "ring.surp", "r+b") as f:
        f.seek(8)
        f.write((_native.RING_VERSION + 97).to_bytes(4, "little"))
    with surpdb.Server(store, size="1MiB", max_value="64") as srv:
        c = surpdb.connect(store)
        assert c.get("kept") == "across a ring replacement"
        c.set("new", 1)
        assert c.get("new") == 1
        assert "replacing unusable request ring" in srv.log
        with open(store / "ring.surp", "rb") as f:
            f.seek(8)
            assert int.from_bytes(f.read(4), "little") == _native.RING_VERSION
