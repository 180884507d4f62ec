"""Write the golden images for the current format versions: the data segment
(format-vN.surp.gz) and the records file (records-vN.surp.gz, with the ids and records it
holds in records-vN.json).

    python tests/golden/make_golden.py

Commit the result (format-vN.surp.gz). An image, once committed, is never regenerated: it
pins what version N means. A new format version adds a new image; the old ones must then be
refused with IncompatibleSegment, or, for the versions a daemon upgrades in place
(FORMATS_UPGRADABLE), open and read back after the upgrade (tests/test_golden.py).
upgrade-v1-binkeys.surp.gz was written by a version-1 build: bytes keys that start like a
namespaced key of version 2, which the upgrade re-keys."""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path

import surpdb
from surpdb import _native

# Every value type, within a 64-byte max_value.
GOLDEN: dict[object, object] = {
    "none": None,
    "bools": [True, False],
    "ints": (0, -1, 2**62, 2**64),
    "float": -1.5,
    "str": "ünïcödé",
    "bytes": b"\x00\x01\xfe\xff",
    "dict": {"a": 1, 2: "b", None: (3,)},
    b"\xffraw-key": "binary key",
}

# Version 2: namespaces. What each namespace holds after `write` (the "gone" one was cleared
# after its keys were written; "capped" keeps its newest 2 of 4 by its max_items quota).
NAMESPACES: dict[str, dict[object, object]] = {
    "sessions": {"none": "shadows the default namespace's key", "s1": {"user": 42}},
    "gone": {},
    "capped": {"c2": 2, "c3": 3},
}
# A bytes key of the default namespace that is stored escaped.
ESCAPED = {b"\xff\x05bin": "escaped"}


def write(dest: Path) -> None:
    d = Path(tempfile.mkdtemp())
    try:
        with surpdb.Server(d / "s", size="1MiB", max_value="64"):
            c = surpdb.connect(d / "s")
            for k, v in GOLDEN.items():
                c.set(k, v)
            c.set("far-ttl", "kept", ttl=100 * 365 * 86400)
            c.zadd("zset", {"x": 1.0, b"y": 2.5})
            c.append("list", 1)
            c.incr("counter", 41)
            if _native.FORMAT_VERSION >= 2:
                s = c.namespace("sessions")
                for k, v in NAMESPACES["sessions"].items():
                    s.set(k, v)
                g = c.namespace("gone")
                g.set("g1", "cleared")
                g.clear()
                cap = c.namespace("capped", max_items=2)
                for i in range(4):
                    cap.set(f"c{i}", i)
                for k, v in ESCAPED.items():
                    c.set(k, v)
            if _native.FORMAT_VERSION >= 3:
                c.set("pre:a", 1)
                c.set("pre:b", 2)
                c.delete_prefix("pre:")
                c.set("pre:c", 3)  # after the deletion: kept
        with open(d / "s" / "data.surp", "rb") as src, gzip.open(dest, "wb", 9) as out:
            shutil.copyfileobj(src, out)
    finally:
        shutil.rmtree(d)


def golden_records() -> list[object]:
    """Records of every field type, some alike (for the model), some not. Never change them:
    records-v1.surp.gz holds exactly these."""
    out: list[object] = []
    for i in range(300):
        out.append(
            {
                "url": f"https://pypi.org/project/pkg{i % 37}/",
                "title": f"Package number {i}",
                "source": ["pypi", "debian", "npm"][i % 3],
                "n": i - 150,
                "score": i / 7,
                "tags": ["a", "b"] if i % 2 else [],
                "raw": bytes([i % 256]),
                "none": None,
            }
        )
    out += [{"ünï": "cödé"}, {"nested": {"x": [1, 2, {"y": True}]}}, {}]
    return out


def write_records(dest: Path, ids_file: Path) -> None:
    """A records file holding records stored before and after a trained model, one removed."""
    d = Path(tempfile.mkdtemp())
    try:
        recs = golden_records()
        with surpdb.Server(d / "s", size="1MiB", max_value="16KiB", records_size="16MiB"):
            c = surpdb.connect(d / "s")
            plain = c.insert_many(recs[:150])  # before any model: the plain encoding
            c.train()
            coded = c.insert_many(recs[150:])  # with the trained model
            assert c.remove(plain[0])
        ids_file.write_text(json.dumps({"ids": plain + coded, "removed": plain[0]}))
        with open(d / "s" / "records.surp", "rb") as src, gzip.open(dest, "wb", 9) as out:
            shutil.copyfileobj(src, out)
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    here = Path(__file__).parent
    out = here / f"format-v{_native.FORMAT_VERSION}.surp.gz"
    if not out.exists():  # golden images are never regenerated
        write(out)
        print(f"wrote {out} ({out.stat().st_size} bytes)")
    rec = here / f"records-v{_native.RECORDS_VERSION}.surp.gz"
    if not rec.exists():
        write_records(rec, rec.with_name(f"records-v{_native.RECORDS_VERSION}.json"))
        print(f"wrote {rec} ({rec.stat().st_size} bytes)")
