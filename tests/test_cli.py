"""The surpdb command line."""

from __future__ import annotations

import json
import subprocess
import sys

import surpdb


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "surpdb", *args], capture_output=True, text=True, timeout=60
    )


def test_stats_human_and_json(client: surpdb.Client) -> None:
    client.set("a", 1)
    client.get("a")
    r = run("stats", client.path)
    assert r.returncode == 0, r.stderr
    rows = dict(line.split(None, 1) for line in r.stdout.splitlines())
    assert rows["items"] == "1" and rows["hits"] == "1"
    r = run("stats", client.path, "--json")
    st = json.loads(r.stdout)
    assert st["items"] == 1 and st["sets"] == 1 and st["daemon_pid"] > 0


def test_stats_of_a_directory_without_a_store(tmp_path: object) -> None:
    r = run("stats", str(tmp_path))
    assert r.returncode == 1
    assert "Unavailable" in r.stderr and "no surpdb segment" in r.stderr


def test_serve_refuses_bad_options(tmp_path: object) -> None:
    r = run("serve", str(tmp_path), "--size", "12 parsecs")
    assert r.returncode == 1 and "ConfigError" in r.stderr and "parsecs" in r.stderr
