"""Large values stored compressed (zstd): what a client of any setting reads back, what the
daemon does with them (updates, pickle refusal), and compressed bytes it must refuse."""

from __future__ import annotations

import os

import pytest

import surpdb
from surpdb import _native

COMPRESSED = 0x0F


def page(n: int = 2000) -> str:
    """A rendered-page-like str: repetitive markup, varying text."""
    rows = (f'<tr class="row"><td>{i}</td><td>item {i * 7919 % 1000}</td></tr>' for i in range(n))
    return "<html><body><table>" + "".join(rows) + "</table></body></html>"


def stored_bytes(c: surpdb.Client, key: str, value: object) -> int:
    """The bytes the store's live data grew by when `value` was set under a new `key`."""
    before = c.stats()["bytes"]
    c.set(key, value)
    return int(c.stats()["bytes"]) - int(before)


def test_a_large_value_is_stored_compressed_and_reads_back(server: surpdb.Server) -> None:
    c = surpdb.connect(server.path)
    plain = surpdb.connect(server.path, compress_min=0)
    html = page()
    raw = len(_native.encode_value(html))
    assert raw > 80_000
    compressed = stored_bytes(c, "page", html)
    assert compressed < raw / 4, (compressed, raw)
    assert stored_bytes(plain, "page-plain", html) >= raw, "compress_min=0 stores it as it is"
    # Every client reads it, whatever its own setting; so do get_many and get_with_ttl.
    assert c.get("page") == html and plain.get("page") == html
    assert plain.get_many(["page", "page-plain"]) == {"page": html, "page-plain": html}
    assert plain.get_with_ttl("page") == (html, None)
    # Below compress_min, incompressible, or an int: stored as it is.
    noise = os.urandom(50_000)
    assert stored_bytes(c, "noise", noise) >= len(noise) and c.get("noise") == noise
    small = "x" * 4000
    assert stored_bytes(c, "small", small) >= 4000


def test_views_updates_and_other_types_of_compressed_values(client: surpdb.Client) -> None:
    c = client
    blob = b"abc" * 30_000
    c.set("blob", blob)
    with c.view("blob") as m:  # a copy of the decompressed bytes
        assert bytes(m) == blob
    c.set("html", page())
    with pytest.raises(TypeError):
        c.view("html")
    with pytest.raises(TypeError):
        c.incr("html")
    # The daemon updates a compressed list or dict as the value it stands for.
    c.set("log", [{"line": i, "text": "same text again"} for i in range(2000)])
    assert c.append("log", "last") == 2001
    assert c.get("log")[-1] == "last" and c.get("log")[0] == {"line": 0, "text": "same text again"}
    c.set("doc", {f"field{i}": "value " * 10 for i in range(500)})
    c.merge("doc", {"field0": "new", "extra": 1})
    doc = c.get("doc")
    assert doc["field0"] == "new" and doc["extra"] == 1 and len(doc) == 501
    version = c.gets("doc")[1]
    assert c.cas("doc", {"k": "v" * 10_000}, version) and c.get("doc") == {"k": "v" * 10_000}
    c.set("tuple", tuple(range(5000)))
    assert c.get("tuple") == tuple(range(5000))


def test_pickles_inside_compressed_values_are_still_refused(store_dir: str) -> None:
    pickled = [{1, 2, 3}] * 3000  # sets are pickled: a large, compressible pickle-holding list
    with surpdb.Server(store_dir, size="32MiB", pickle="false"):
        c = surpdb.connect(store_dir)
        with pytest.raises(surpdb.UnsafeValue):
            c.set("k", pickled)
        assert "k" not in c
    with surpdb.Server(store_dir, size="32MiB"):
        surpdb.connect(store_dir).set("k", pickled)
        with pytest.raises(surpdb.UnsafeValue):
            surpdb.connect(store_dir, pickle=False).get("k")


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def compressed(declared: int, frame: bytes) -> bytes:
    """A COMPRESSED value: tag, declared length, zstd frame."""
    return bytes([COMPRESSED]) + varint(declared) + frame


def raw_frame(data: bytes) -> bytes:
    """A zstd frame holding `data` (under 256 bytes) in one raw block, built by hand: magic,
    a single-segment header with a 1-byte content size, a last raw block."""
    assert len(data) < 256
    block = (1 | len(data) << 3).to_bytes(3, "little")
    return b"\x28\xb5\x2f\xfd" + bytes([0x20, len(data)]) + block + data


def test_bad_compressed_values_are_refused(client: surpdb.Client) -> None:
    big = b"payload " * 5000
    client.set("real", big)
    stored = {k: v for k, v, _ in client._scan(0, 100)[1]}[b"real"]
    assert stored[0] == COMPRESSED, "the client stored it compressed"
    inner = _native.encode_value(big)
    assert stored[1 : 1 + len(varint(len(inner)))] == varint(len(inner))
    zframe = stored[1 + len(varint(len(inner))) :]
    n = len(inner)
    client._set_raw("ok", compressed(n, zframe))
    assert client.get("ok") == big, "a well-formed one is accepted"
    small = _native.encode_value("hand-made frame")
    client._set_raw("hand", compressed(len(small), raw_frame(small)))
    assert client.get("hand") == "hand-made frame", "so is any valid zstd frame"
    twice = compressed(len(small), raw_frame(small))
    bad = {
        "declares less than it holds": compressed(n - 1, zframe),
        "declares more than it holds": compressed(n + 1, zframe),
        "over max_value (a bomb's claim)": compressed(client.max_value + 1, zframe),
        "declares 200 MB": compressed(200 << 20, zframe),
        "not a frame": compressed(n, b"\x00" * 40),
        "truncated frame": compressed(n, zframe[: len(zframe) // 2]),
        "compressed twice": compressed(len(twice), raw_frame(twice)),
        "not a value inside": compressed(3, raw_frame(b"\xee\xee\xee")),
        "only the tag": bytes([COMPRESSED]),
        "inside a list": bytes([0x08, 1]) + stored,
    }
    for what, v in bad.items():
        with pytest.raises((ValueError, surpdb.Error)):
            client._set_raw("bad", v)
        assert "bad" not in client, what
    # The decoder tools use (dump) refuses them too, with a typed error, never a crash.
    for v in bad.values():
        with pytest.raises(surpdb.Error):
            _native.decode_value_bytes(v)
