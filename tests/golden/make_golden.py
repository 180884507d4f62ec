"""Write the golden segment image for the current format version.

    python tests/golden/make_golden.py

Commit the result (format-vN.surp.gz). An image, once committed, is never regenerated: it
pins what version N means. A new format version adds a new image; the old ones must then be
refused with IncompatibleSegment (tests/test_golden.py)."""

from __future__ import annotations

import gzip
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
        with open(d / "s" / "data.surp", "rb") as src, gzip.open(dest, "wb", 9) as out:
            shutil.copyfileobj(src, out)
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    out = Path(__file__).with_name(f"format-v{_native.FORMAT_VERSION}.surp.gz")
    if out.exists():
        raise SystemExit(f"{out} exists: golden images are never regenerated")
    write(out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
