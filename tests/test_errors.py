"""Every bad input gets a typed exception with the numbers in it, never a crash."""

from __future__ import annotations

import os

import pytest

import surpdb
from surpdb import _native


def test_exception_tree() -> None:
    for name in [
        "Unavailable",
        "ValueTooLarge",
        "KeyTooLong",
        "SegmentFull",
        "QueueFull",
        "Timeout",
        "CorruptSegment",
        "IncompatibleSegment",
        "DaemonRunning",
        "ConfigError",
        "NotSupported",
        "UnsafeValue",
    ]:
        assert issubclass(getattr(surpdb, name), surpdb.Error)
    assert issubclass(surpdb.UnsafeValue, TypeError)
    assert issubclass(surpdb.Timeout, TimeoutError)
    assert issubclass(surpdb.ValueTooLarge, ValueError)
    assert issubclass(surpdb.KeyTooLong, ValueError)


@pytest.mark.parametrize("key", [1, 1.5, None, ["k"], ("k",), bytearray(b"k"), object()])
def test_key_of_wrong_type(client: surpdb.Client, key: object) -> None:
    with pytest.raises(TypeError, match="key must be str or bytes"):
        client.set(key, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be str or bytes"):
        client.get(key)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.delete(key)  # type: ignore[arg-type]


def test_key_too_long_names_both_lengths(client: surpdb.Client) -> None:
    client.set("k" * _native.MAX_KEY_LEN, 1)
    assert client.get("k" * _native.MAX_KEY_LEN) == 1
    with pytest.raises(surpdb.KeyTooLong, match=r"4097 bytes.*4096"):
        client.set("k" * (_native.MAX_KEY_LEN + 1), 1)
    # A read of an over-long key is simply a miss (it can never have been stored).
    assert client.get("k" * (_native.MAX_KEY_LEN + 1)) is None


def test_value_too_large_names_both_sizes(client: surpdb.Client) -> None:
    limit = client.max_value
    assert limit == 1 << 20
    big = b"x" * limit
    with pytest.raises(surpdb.ValueTooLarge) as e:
        client.set("k", big)
    assert str(limit + 4) in str(e.value) and str(limit) in str(e.value)
    client.set("k", b"x" * (limit - 4))  # tag + 3-byte length: exactly the limit
    assert len(client.get("k")) == limit - 4
    with pytest.raises(surpdb.ValueTooLarge):
        client.set_many({"a": 1, "b": big})


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
def test_bad_ttl(client: surpdb.Client, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        client.set("k", 1, ttl=ttl)
    assert client.get("k") is None


def test_wrong_argument_types(client: surpdb.Client) -> None:
    with pytest.raises(TypeError):
        client.set("k", 1, ttl="10")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.incr("k", "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.get_many(5)  # type: ignore[arg-type]
    with pytest.raises((TypeError, AttributeError)):
        client.set_many(["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        client.incr("k", 2**64)


def test_bad_tickets(client: surpdb.Client) -> None:
    with pytest.raises(surpdb.Error, match="ticket 0"):
        client.wait(0)
    with pytest.raises(surpdb.Error, match="not issued"):
        client.wait(10**9)
    t = client.set("k", 1, wait=False)
    assert client.wait(t) is True
    with pytest.raises(surpdb.Error, match="already collected"):
        client.wait(t)
    with pytest.raises(OverflowError):
        client.wait(-1)


def test_connect_without_a_daemon(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(surpdb.Unavailable, match="no surpdb segment"):
        surpdb.connect(tmp_path)


def test_bad_timeout(server: surpdb.Server) -> None:
    with pytest.raises(ValueError, match="timeout"):
        surpdb.connect(server.path, timeout=0)


def test_second_daemon_on_a_directory_is_refused(server: surpdb.Server) -> None:
    with pytest.raises(surpdb.Error, match=rf"another surpd \(pid {server.pid}\)"):
        surpdb.Server(server.path, size="32MiB")
    # The first one still serves.
    c = surpdb.connect(server.path)
    c.set("k", 1)
    assert c.get("k") == 1


def test_bad_settings_are_refused(store_dir: str) -> None:
    with pytest.raises(surpdb.Error, match="bad size"):
        surpdb.Server(store_dir, size="lots")
    with pytest.raises(surpdb.Error, match="too small"):
        surpdb.Server(store_dir, size="1MiB")
    with pytest.raises(surpdb.Error, match="policy"):
        surpdb.Server(store_dir, size="32MiB", policy="random")


def test_incompatible_segment_is_refused(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="32MiB"):
        pass
    data = os.path.join(store_dir, "data.surp")
    with open(data, "r+b") as f:
        f.seek(8)
        f.write((99).to_bytes(4, "little"))  # format version
    with pytest.raises(surpdb.IncompatibleSegment, match="format version 99"):
        surpdb.connect(store_dir)
    with pytest.raises(surpdb.Error, match="format version 99"):
        surpdb.Server(store_dir, size="32MiB")


def test_garbage_file_is_not_a_segment(store_dir: str) -> None:
    os.makedirs(store_dir)
    with open(os.path.join(store_dir, "data.surp"), "wb") as f:
        f.write(os.urandom(100_000))
    with pytest.raises(surpdb.IncompatibleSegment, match="not a surpdb segment"):
        surpdb.Server(store_dir, size="32MiB")


def test_truncated_segment_is_refused(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="32MiB"):
        pass
    data = os.path.join(store_dir, "data.surp")
    os.truncate(data, 1 << 20)
    with pytest.raises(surpdb.CorruptSegment, match="size"):
        surpdb.connect(store_dir)
