"""The cache API of DESIGN.md against a real daemon."""

from __future__ import annotations

import collections
import datetime
import decimal
import math
import pickle

import pytest

import surpdb

EXACT_VALUES = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**63) - 1,
    2**200,
    -(3**150),
    0.0,
    -0.0,
    1.5,
    math.inf,
    -math.inf,
    "",
    "ascii",
    "ünïcödé ✓ 🐍",
    "x" * 100_000,
    b"",
    b"\x00\xff" * 1000,
    [],
    [1, "two", 3.0, None],
    (),
    (1,),
    (1, (2, (3, ()))),
    {},
    {"a": 1, "b": [1, 2, {"c": (3, 4)}]},
    {1: "int key", (1, 2): "tuple key", None: "none key", b"k": "bytes key"},
    [[[[[]]]]],
]


@pytest.mark.parametrize("value", EXACT_VALUES, ids=lambda v: repr(v)[:40])
def test_native_values_round_trip_exactly(client: surpdb.Client, value: object) -> None:
    client.set("k", value)
    got = client.get("k")
    assert got == value
    assert type(got) is type(value)
    if isinstance(value, float):
        assert math.copysign(1, got) == math.copysign(1, value)  # -0.0 stays -0.0
    if isinstance(value, (list, tuple, dict)):
        assert repr(got) == repr(value)  # nested types and key order too


def test_nan_round_trips(client: surpdb.Client) -> None:
    client.set("nan", math.nan)
    assert math.isnan(client.get("nan"))


def test_dict_key_order_is_kept(client: surpdb.Client) -> None:
    d = {k: i for i, k in enumerate("zyxwvuts")}
    client.set("d", d)
    assert list(client.get("d")) == list(d)


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime(2012, 3, 4, 5, 6, 7),
        decimal.Decimal("1.10"),
        collections.OrderedDict(a=1),
        collections.defaultdict(int, a=1),
        {1, 2, 3},
        frozenset({"a"}),
        1 + 2j,
        bytearray(b"ba"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_other_objects_are_pickled_and_keep_their_type(
    client: surpdb.Client, value: object
) -> None:
    client.set("k", value)
    got = client.get("k")
    assert got == value and type(got) is type(value)


def test_subclasses_of_native_types_keep_their_type(client: surpdb.Client) -> None:
    class Tagged(str):
        pass

    globals()["Tagged"] = Tagged  # picklable by reference
    Tagged.__qualname__ = "Tagged"
    client.set("s", Tagged("x"))
    assert type(client.get("s")) is Tagged
    client.set("b", [True, 1])
    assert [type(x) for x in client.get("b")] == [bool, int]


def test_unpicklable_value_raises_and_stores_nothing(client: surpdb.Client) -> None:
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        client.set("k", lambda: 1)
    assert client.get("k") is None


def test_lone_surrogates_survive(client: surpdb.Client) -> None:
    client.set("k", "a\udc80b")
    assert client.get("k") == "a\udc80b"


def test_str_and_bytes_keys_name_the_same_key(client: surpdb.Client) -> None:
    client.set("ключ", 1)
    assert client.get("ключ".encode()) == 1
    client.set(b"\xff\x00", 2)
    assert client.get(b"\xff\x00") == 2


def test_get_default_and_miss(client: surpdb.Client) -> None:
    assert client.get("missing") is None
    assert client.get("missing", 42) == 42
    client.set("present", None)
    assert client.get("present", 42) is None  # a stored None is a hit


def test_set_replaces(client: surpdb.Client) -> None:
    for i in range(100):
        client.set("k", i)
        assert client.get("k") == i
    assert client.stats()["items"] == 1


def test_add(client: surpdb.Client) -> None:
    assert client.add("k", 1) is True
    assert client.add("k", 2) is False
    assert client.get("k") == 1


def test_delete(client: surpdb.Client) -> None:
    client.set("k", 1)
    assert client.delete("k") is True
    assert client.delete("k") is False
    assert client.get("k") is None
    assert "k" not in client


def test_many(client: surpdb.Client) -> None:
    data = {f"k{i}": i for i in range(500)}
    assert client.set_many(data) == []
    got = client.get_many([*data, "absent"])
    assert got == data
    assert client.delete_many(["k1", "k2", "absent"]) == 2
    assert client.get_many(["k1", "k3"]) == {"k3": 3}


def test_get_many_keeps_the_callers_key_objects(client: surpdb.Client) -> None:
    client.set("a", 1)
    client.set(b"b", 2)
    assert client.get_many(["a", b"b"]) == {"a": 1, b"b": 2}


def test_incr_decr(client: surpdb.Client) -> None:
    assert client.incr("n") == 1
    assert client.incr("n", 10) == 11
    assert client.decr("n", 3) == 8
    assert client.get("n") == 8
    assert client.decr("neg", 5) == -5
    assert client.incr("start", 1, default=100) == 101
    with pytest.raises(KeyError):
        client.incr("absent", default=None)
    assert client.get("absent") is None


def test_incr_goes_past_64_bits(client: surpdb.Client) -> None:
    client.set("big", 2**63 - 1)
    assert client.incr("big") == 2**63
    assert client.get("big") == 2**63
    assert client.decr("big", 2) == 2**63 - 2


def test_incr_of_non_integer_raises_type_error_naming_the_type(client: surpdb.Client) -> None:
    client.set("s", "text")
    with pytest.raises(TypeError, match="str"):
        client.incr("s")
    assert client.get("s") == "text"
    client.set("b", True)
    with pytest.raises(TypeError, match="bool"):
        client.incr("b")


def test_incr_overflow_beyond_128_bits(client: surpdb.Client) -> None:
    client.set("huge", 2**127 - 1)
    with pytest.raises(OverflowError):
        client.incr("huge")
    assert client.get("huge") == 2**127 - 1


def test_has_key_and_contains(client: surpdb.Client) -> None:
    assert not client.has_key("k")
    client.set("k", 0)
    assert client.has_key("k") and "k" in client


def test_clear(client: surpdb.Client) -> None:
    client.set_many({f"k{i}": i for i in range(100)})
    client.clear()
    assert client.get_many([f"k{i}" for i in range(100)]) == {}
    assert client.stats()["items"] == 0
    client.set("after", 1)
    assert client.get("after") == 1


def test_view_is_zero_copy_and_read_only(client: surpdb.Client) -> None:
    payload = bytes(range(256)) * 40
    client.set("blob", payload)
    with client.view("blob") as m:
        assert m.readonly
        assert bytes(m) == payload
        assert m.nbytes == len(payload)
        with pytest.raises(TypeError):
            m[0] = 1
    assert client.view("missing") is None


def test_view_of_a_non_bytes_value_is_a_type_error(client: surpdb.Client) -> None:
    client.set("s", "str")
    with pytest.raises(TypeError, match="str"):
        client.view("s")


def test_view_keeps_old_bytes_after_overwrite(client: surpdb.Client) -> None:
    client.set("blob", b"old" * 1000)
    m = client.view("blob")
    client.set("blob", b"new" * 1000)
    client.delete("blob")
    assert bytes(m) == b"old" * 1000  # published records are immutable
    m.release()


def test_fire_and_forget_then_wait(client: surpdb.Client) -> None:
    tickets = [client.set(f"k{i}", i, wait=False) for i in range(1000)]
    assert all(isinstance(t, int) for t in tickets)
    assert tickets == sorted(tickets)
    assert client.wait(tickets[-1]) is True
    assert client.wait(tickets[0]) is True
    assert client.get("k999") == 999
    t = client.add("k1", "x", wait=False)
    assert client.wait(t) is False
    t = client.delete("k2", wait=False)
    assert client.wait(t) is True


def test_fire_and_forget_beyond_the_result_ring(client: surpdb.Client) -> None:
    # More requests in flight than the per-client result ring holds (4096): results are
    # kept client-side, none is lost.
    tickets = [client.set(f"k{i % 50}", i, wait=False) for i in range(10_000)]
    assert [client.wait(t) for t in tickets[::997]] == [True] * len(tickets[::997])
    client.flush()
    assert client.get("k49") == 9999


def test_flush_waits_for_queued_writes(client: surpdb.Client) -> None:
    for i in range(100):
        client.set("k", i, wait=False)
    client.flush()
    assert client.get("k") == 99


def test_stats_count_operations(client: surpdb.Client) -> None:
    before = client.stats()
    client.set("a", 1)
    client.get("a")
    client.get("b")
    client.delete("a")
    st = client.stats()
    assert st["sets"] - before["sets"] == 1
    assert st["hits"] - before["hits"] == 1
    assert st["misses"] - before["misses"] == 1
    assert st["deletes"] - before["deletes"] == 1
    assert st["daemon_pid"] > 0
    assert st["eviction_policy"] == "allkeys-lru"
    for k in ("items", "bytes", "bytes_used", "capacity", "evictions", "expirations"):
        assert k in st


def test_two_clients_see_each_others_writes(server: surpdb.Server) -> None:
    a = surpdb.connect(server.path)
    b = surpdb.connect(server.path)
    a.set("k", "from a")
    assert b.get("k") == "from a"
    b.delete("k")
    assert a.get("k") is None


def test_dict_keys_decode_exactly_through_the_key_cache(client: surpdb.Client) -> None:
    # Decoded dict keys are cached (256 slots by a hash of their bytes): thousands of distinct
    # keys force collisions; each must still come back as exactly its own str.
    keys = [f"k{i}" for i in range(3000)] + ["é" * 20, "x" * 40, "y" * 41, "", "ключ", "a\x00b"]
    for round_ in range(2):
        for i in range(0, len(keys), 50):
            d = {k: (i, round_) for k in keys[i : i + 50]}
            d[b"bytes-key"] = 1
            d[7] = "int key"
            client.set("d", d)
            back = client.get("d")
            assert back == d
            assert list(back) == list(d)
            assert all(type(k) is str for k in back if not isinstance(k, (bytes, int)))


def test_poll_answers_a_queued_write_and_never_blocks(server: surpdb.Server) -> None:
    import signal
    import time

    c = surpdb.connect(server.path)
    server.signal(signal.SIGSTOP)  # the daemon cannot answer: poll must not wait for it
    try:
        t = c.set("polled", 1, wait=False)
        start = time.monotonic()
        assert [c.poll(t) for _ in range(1000)] == [None] * 1000
        assert time.monotonic() - start < 5, "1000 polls of an unanswered ticket"
    finally:
        server.signal(signal.SIGCONT)
    deadline = time.monotonic() + 30
    r = c.poll(t)
    while r is None:  # bounded: the daemon runs again
        assert time.monotonic() < deadline
        r = c.poll(t)
    assert r is True and c.get("polled") == 1
    with pytest.raises(surpdb.Error, match="already collected"):
        c.poll(t)
    t2 = c.add("polled", 2, wait=False)
    assert c.wait(t2) is False  # poll and wait shape a ticket alike
