"""Golden segment images pin the format: the current version's image opens and reads back
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


def unpack(image: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    with gzip.open(image) as src, open(dest / "data.surp", "wb") as out:
        shutil.copyfileobj(src, out)
    return dest


def test_there_is_an_image_of_the_current_format() -> None:
    assert HERE / f"format-v{_native.FORMAT_VERSION}.surp.gz" in IMAGES


@pytest.mark.parametrize("image", IMAGES, ids=lambda p: p.name)
def test_golden_image_opens_or_is_refused(image: Path, tmp_path: Path) -> None:
    from golden.make_golden import GOLDEN

    store = unpack(image, tmp_path / "store")
    version = int(image.name.split("-v")[1].split(".")[0])
    if version != _native.FORMAT_VERSION:
        with pytest.raises(surpdb.IncompatibleSegment):
            surpdb.Server(store, size="1MiB", max_value="64")
        return
    r = _native.check(store)
    assert r["ok"], r["problems"]
    with surpdb.Server(store, size="1MiB", max_value="64"):
        c = surpdb.connect(store)
        for k, v in GOLDEN.items():
            got = c.get(k)
            assert got == v and type(got) is type(v), k
        assert c.get("far-ttl") == "kept"
        assert c.zrange("zset", 0, -1, withscores=True) == [("x", 1.0), (b"y", 2.5)]
        assert c.get("list") == [1] and c.get("counter") == 41
        c.set("new", "after attach")
        assert c.get("new") == "after attach"


def test_an_image_with_another_version_number_is_refused(tmp_path: Path) -> None:
    image = HERE / f"format-v{_native.FORMAT_VERSION}.surp.gz"
    store = unpack(image, tmp_path / "store")
    with open(store / "data.surp", "r+b") as f:
        f.seek(8)
        f.write((_native.FORMAT_VERSION + 1).to_bytes(4, "little"))
    with pytest.raises(surpdb.IncompatibleSegment, match=f"version {_native.FORMAT_VERSION + 1}"):
        surpdb.Server(store, size="1MiB", max_value="64")
