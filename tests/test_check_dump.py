"""surpdb check, dump and load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import surpdb


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "surpdb", *args], capture_output=True, text=True, timeout=120
    )


def fill(c: surpdb.Client) -> dict[object, object]:
    data: dict[object, object] = {
        "plain": "text",
        "num": 42,
        "nested": {"a": [1, 2.5, None, True]},
        "tuple": (1, 2),
        "bytes": b"\x00\xff",
        b"\xffbinary-key": "v",
        "big": 2**100,
        "float-inf": float("inf"),
        "int-keys": {1: "a"},
    }
    for k, v in data.items():
        c.set(k, v)
    c.zadd("zs", {"m": 1.5})
    data["zs"] = {"m": 1.5}
    c.set("ttl", "soon", ttl=3600)
    data["ttl"] = "soon"
    return data


def test_check_a_healthy_store(server: surpdb.Server, client: surpdb.Client) -> None:
    fill(client)
    for i in range(2000):
        client.set(f"k{i}", i, wait=False)
    client.delete_many([f"k{i}" for i in range(0, 2000, 3)])
    client.flush()
    r = run("check", server.path, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and report["problem_count"] == 0
    assert report["items"] == client.stats()["items"]
    r = run("check", server.path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok")


def test_check_reports_damage(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with surpdb.Server(store, size="32MiB"):
        c = surpdb.connect(store)
        for i in range(500):
            c.set(f"k{i}", "v" * 100)
        st = c.stats()
    heap_off = st["capacity"] - st["heap_capacity"]
    with open(store / "data.surp", "r+b") as f:
        for off in range(heap_off + 200, heap_off + 40_000, 997):
            f.seek(off)
            f.write(b"\xee")
    r = run("check", str(store))
    assert r.returncode == 1
    assert "fails validation" in r.stdout and "problems" in r.stdout


def test_dump_and_load_round_trip(
    tmp_path: Path, server: surpdb.Server, client: surpdb.Client
) -> None:
    data = fill(client)
    out = tmp_path / "dump.jsonl"
    r = run("dump", server.path, "-o", str(out))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(data)
    by_key = {json.dumps(rec["key"]): rec for rec in lines}
    assert by_key['"plain"']["value"] == "text"  # readable JSON where exact
    assert "value_b64" in by_key['"tuple"']  # native encoding where JSON would change it
    assert 3500 < by_key['"ttl"']["ttl"] <= 3600
    with surpdb.Server(tmp_path / "copy", size="32MiB") as other:
        r = run("load", other.path, str(out))
        assert r.returncode == 0, r.stderr
        c2 = surpdb.connect(other.path)
        for k, v in data.items():
            got = c2.get(k)
            assert got == v and type(got) is type(v), k
        assert c2.stats()["items"] == len(data)


def test_load_reports_a_bad_line(tmp_path: Path, server: surpdb.Server) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "a", "value": 1}\n{"nokey": 1}\n')
    r = run("load", server.path, str(bad))
    assert r.returncode == 1 and "bad.jsonl:2" in r.stderr
