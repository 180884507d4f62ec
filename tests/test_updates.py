"""Server-side atomic updates (append, merge, gets/cas) and sorted sets."""

from __future__ import annotations

import multiprocessing as mp
import random
import time

import pytest

import surpdb

# ------------------------------------------------------------------ append / merge / cas


def test_append(client: surpdb.Client) -> None:
    assert client.append("l", 1) == 1
    assert client.append("l", "two") == 2
    assert client.append("l", (3,)) == 3
    assert client.get("l") == [1, "two", (3,)]
    assert client.append("l", 4, max_len=2) == 2
    assert client.get("l") == [(3,), 4]
    client.set("existing", [0])
    assert client.append("existing", 1) == 2 and client.get("existing") == [0, 1]
    with pytest.raises(ValueError, match="max_len"):
        client.append("l", 5, max_len=0)


def test_append_keeps_the_ttl(client: surpdb.Client) -> None:
    client.set("l", [], ttl=0.2)
    client.append("l", 1)
    time.sleep(0.25)
    assert client.get("l") is None


@pytest.mark.parametrize("stored", ["text", 5, {"a": 1}, (1, 2), b"raw"])
def test_append_to_a_non_list_is_a_type_error_and_changes_nothing(
    client: surpdb.Client, stored: object
) -> None:
    client.set("k", stored)
    name = type(stored).__name__
    article = "an" if name[0] in "aeiou" else "a"
    with pytest.raises(TypeError, match=f'append to key "k": it holds {article} {name}'):
        client.append("k", 1)
    assert client.get("k") == stored


def test_merge(client: surpdb.Client) -> None:
    client.merge("d", {"a": 1})
    client.merge("d", {"b": 2, "a": 10})
    assert client.get("d") == {"a": 10, "b": 2}
    assert list(client.get("d")) == ["a", "b"]  # in place, new keys at the end
    client.set("n", {"s": [{"x": 1}], "cfg": {"a": 1, "b": {"c": 1}}})
    client.merge("n", {"cfg": {"b": {"d": 2}, "e": 3}}, deep=True)
    assert client.get("n") == {"s": [{"x": 1}], "cfg": {"a": 1, "b": {"c": 1, "d": 2}, "e": 3}}
    client.merge("n", {"cfg": {"only": 1}})  # shallow: replaces
    assert client.get("n")["cfg"] == {"only": 1}
    client.set("l", [1])
    with pytest.raises(TypeError, match="merge into .* list"):
        client.merge("l", {"a": 1})
    assert client.get("l") == [1]
    with pytest.raises(TypeError):
        client.merge("d", [("a", 1)])  # type: ignore[arg-type]


def test_gets_and_cas(client: surpdb.Client) -> None:
    assert client.gets("k") == (None, 0)
    assert client.gets("k", "dflt") == ("dflt", 0)
    assert client.cas("k", "first", 0) is True  # 0: only if absent
    assert client.cas("k", "again", 0) is False
    value, v1 = client.gets("k")
    assert value == "first" and v1 > 0
    assert client.cas("k", "second", v1) is True
    assert client.cas("k", "stale", v1) is False
    assert client.get("k") == "second"
    versions = [client.gets("k")[1]]
    for write in (
        lambda: client.set("k", 1),
        lambda: client.incr("k"),
        lambda: client.touch("k", 10),
        lambda: client.set("k", [1]),
        lambda: client.append("k", 2),
    ):
        write()
        versions.append(client.gets("k")[1])
    assert versions == sorted(set(versions)), "every write changes the version"


def appender(path: str, wid: int, n: int) -> None:
    c = surpdb.connect(path)
    for i in range(n):
        c.append("shared", (wid, i))


def test_concurrent_appends_keep_every_item(server: surpdb.Server) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=appender, args=(server.path, w, 400)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    items = surpdb.connect(server.path).get("shared")
    assert len(items) == 1600 and set(items) == {(w, i) for w in range(4) for i in range(400)}
    for w in range(4):
        assert [i for ww, i in items if ww == w] == list(range(400))  # each writer in order


def cas_incrementer(path: str, n: int, q: mp.Queue) -> None:  # type: ignore[type-arg]
    c = surpdb.connect(path)
    retries = 0
    for _ in range(n):
        while True:
            value, version = c.gets("total")
            if c.cas("total", (value or 0) + 1, version):
                break
            retries += 1
    q.put(retries)


def test_concurrent_gets_cas_increments_are_exact(server: surpdb.Server) -> None:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=cas_incrementer, args=(server.path, 300, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for _ in procs:
        q.get(timeout=120)  # each process's retries (how contended it was; any count is fine)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert surpdb.connect(server.path).get("total") == 1200


# ------------------------------------------------------------------ sorted sets


def model_sorted(model: dict[str | bytes, float]) -> list[tuple[str | bytes, float]]:
    def key(item: tuple[str | bytes, float]) -> tuple[float, bytes]:
        m, s = item
        return (s, m.encode() if isinstance(m, str) else m)

    return sorted(model.items(), key=key)


def test_sorted_set_against_a_model(client: surpdb.Client) -> None:
    rng = random.Random(7)
    model: dict[str | bytes, float] = {}
    members: list[str | bytes] = [f"m{i}" for i in range(40)] + [f"é{i}".encode() for i in range(5)]
    for step in range(400):
        op = rng.random()
        if op < 0.6:
            batch = {
                rng.choice(members): float(rng.choice([0, 1, 1, 2, 2.5, -3, 7]))
                for _ in range(rng.randrange(1, 6))
            }
            max_len = rng.choice([None, None, 10, 25])
            new = sum(m not in model for m in batch)
            model.update(batch)
            if max_len is not None and len(model) > max_len:
                for m, _ in model_sorted(model)[: len(model) - max_len]:
                    del model[m]
            assert client.zadd("z", batch, max_len=max_len) == new, step
        else:
            gone = [rng.choice(members) for _ in range(rng.randrange(1, 4))]
            present = {m for m in gone if m in model}
            for m in present:
                del model[m]
            assert client.zrem("z", gone) == len(present), step
        expect = model_sorted(model)
        assert client.zrange("z", 0, -1, withscores=True) == expect, step
        assert client.zcard("z") == len(model)
        if model:
            m = rng.choice(list(model))
            assert client.zscore("z", m) == model[m]
            assert client.zrank("z", m) == [x for x, _ in expect].index(m)
            assert client.zrank("z", m, desc=True) == len(expect) - 1 - client.zrank("z", m)
        probe = rng.sample(members, 8)
        assert client.zmissing("z", probe) == [m for m in probe if m not in model]
        a, b = rng.randrange(-12, 12), rng.randrange(-12, 12)
        n = len(expect)
        lo, hi = (a + n if a < 0 else a), (b + n if b < 0 else b)
        lo, hi = max(lo, 0), min(hi, n - 1)
        want = [m for m, _ in expect[lo : hi + 1]] if lo <= hi else []
        assert client.zrange("z", a, b) == want, (step, a, b)
        rev = [m for m, _ in reversed(expect)]
        assert client.zrange("z", a, b, desc=True) == (rev[lo : hi + 1] if lo <= hi else [])
        s_lo, s_hi = sorted([rng.choice([-3, 0, 1, 2, 7]), rng.choice([-3, 0, 1, 2.5, 7])])
        assert client.zrangebyscore("z", s_lo, s_hi) == [m for m, s in expect if s_lo <= s <= s_hi]
        assert client.zrangebyscore("z", s_lo, s_hi, desc=True) == [
            m for m, s in reversed(expect) if s_lo <= s <= s_hi
        ]
    assert client.get("z") == dict(model_sorted(model))


def test_sorted_set_trims_to_the_highest_scores(client: surpdb.Client) -> None:
    for i in range(100):
        client.zadd("feed", {f"entry{i}": float(i)}, max_len=50)
    assert client.zcard("feed") == 50
    assert client.zrange("feed", 0, 0) == ["entry50"]
    assert client.zrange("feed", -1, -1) == ["entry99"]
    assert client.zmissing("feed", ["entry10", "entry60", "entry200"]) == ["entry10", "entry200"]


def test_sorted_set_ties_order_by_member(client: surpdb.Client) -> None:
    client.zadd("t", {"b": 1, "a": 1, "c": 0, b"a\x00": 1})
    assert client.zrange("t", 0, -1) == ["c", "a", b"a\x00", "b"]


def test_sorted_set_errors(client: surpdb.Client) -> None:
    client.set("s", "text")
    for call in (
        lambda: client.zadd("s", {"a": 1}),
        lambda: client.zrem("s", ["a"]),
        lambda: client.zcard("s"),
        lambda: client.zrange("s", 0, -1),
        lambda: client.zscore("s", "a"),
        lambda: client.zmissing("s", ["a"]),
    ):
        with pytest.raises(TypeError, match='"s".*str'):
            call()
    assert client.get("s") == "text"
    with pytest.raises(ValueError, match="NaN"):
        client.zadd("z", {"a": float("nan")})
    with pytest.raises(TypeError, match="str or bytes"):
        client.zadd("z", {1: 1.0})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        client.zadd("z", {"a": "high"})  # type: ignore[dict-item]
    assert client.zcard("z") == 0 and client.zrange("z", 0, -1) == []
    assert client.zscore("absent", "a") is None and client.zrank("absent", "a") is None
    assert client.zrem("absent", ["a"]) == 0
