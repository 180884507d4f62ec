"""surpdb top (a live view of the stats) and the progress lines of dump, load and train."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import surpdb
from surpdb import top

BARS = "▁▂▃▄▅▆▇█"

# Each step: one set, three gets of the key just set (hits), one get of an absent key (a
# miss): 4 gets per set and a hit ratio of exactly 75%, in any interval of many steps.
WRITER = """
import os, sys, surpdb
c = surpdb.connect(sys.argv[1])
n = 0
while not os.path.exists(sys.argv[2]):
    for _ in range(50):
        k = f"w{n % 500}"
        c.set(k, n)
        assert c.get(k) == n and c.get(k) == n and c.get(k) == n
        assert c.get("absent") is None
        n += 1
print(n)
"""

# `surpdb top` as a terminal runs it: Ctrl-C raises KeyboardInterrupt (a child started in
# the background by a shell without job control would otherwise inherit SIGINT ignored).
TOP_INTERRUPTIBLE = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from surpdb.cli import main; sys.exit(main(['top', *sys.argv[1:]]))"
)


def run_top(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "surpdb", "top", *args], capture_output=True, text=True, timeout=60
    )


def frames(text: str) -> list[str]:
    """The plain-text frames of top's output (each starts with its header line)."""
    return [f for f in re.split(r"(?m)^(?=surpdb top  )", text) if f.strip()]


def rate(frame: str, name: str) -> float:
    """A number shown after ``name`` in a frame: 12.5, 12.5k, 1.25M."""
    m = re.search(rf"(?m)(?:^|\s){re.escape(name)}\s+([\d.]+)([kM]?)%?(?=\s|$)", frame)
    assert m, f"no {name!r} in:\n{frame}"
    return float(m.group(1)) * {"": 1, "k": 1e3, "M": 1e6}[m.group(2)]


def spark(frame: str, label: str) -> str:
    """The sparkline of the line starting with ``label`` (its bar characters)."""
    m = re.search(rf"(?m)^{re.escape(label)}\s*([{BARS} ]+?)\s+(?:max|0-)", frame)
    assert m, f"no {label!r} sparkline in:\n{frame}"
    return m.group(1).strip()


def wait_until(cond: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or cond}")
        time.sleep(0.02)


class Reader:
    """Collects what a file descriptor (a pipe or a pty master) delivers, in a thread."""

    def __init__(self, fd: int) -> None:
        self.fd, self.chunks, self.lock = fd, [b""], threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                b = os.read(self.fd, 65536)
            except OSError:  # EIO: the pty's other side is closed
                return
            if not b:
                return
            with self.lock:
                self.chunks.append(b)

    def text(self) -> str:
        with self.lock:
            return b"".join(self.chunks).decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            m = re.search(pattern, self.text())
            if m:
                found.append(m)
            return m is not None

        wait_until(seen, timeout, f"{pattern!r} in top's output:\n{self.text()[-3000:]}")
        return found[0]

    def close(self) -> None:
        self.thread.join(timeout=10)


@contextlib.contextmanager
def started(
    argv: list[str], terminal: bool = False, stderr_too: bool = False
) -> Iterator[tuple[subprocess.Popen[bytes], Reader]]:
    """``python ARGV`` with stdout (and with ``stderr_too`` stderr; else stderr is a pipe)
    into a pipe or a terminal that a :class:`Reader` collects. On the way out the process is
    killed if it still runs, and reaped, and every descriptor is closed."""
    master, slave = pty.openpty() if terminal else os.pipe()
    try:
        p = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave if stderr_too else subprocess.PIPE,
        )
    finally:
        os.close(slave)
    reader = Reader(master)
    try:
        with p:
            try:
                yield p, reader
            finally:
                if p.poll() is None:
                    p.kill()
                p.wait(timeout=30)
    finally:
        reader.close()
        os.close(master)


# -- the pure functions ---------------------------------------------------------------------


def test_rates_are_per_second_by_kind() -> None:
    prev = {"hits": 100, "misses": 20, "sets": 50, "deletes": 4, "incrs": 0, "requests": 54}
    cur = {"hits": 300, "misses": 120, "sets": 150, "deletes": 8, "incrs": 10, "requests": 168}
    r = top.rates(prev, cur, 2.0)
    assert r["hits"] == 100 and r["misses"] == 50 and r["gets"] == 150
    assert r["sets"] == 50 and r["deletes"] == 2 and r["incrs"] == 5 and r["requests"] == 57
    assert r["ops"] == 150 + 50 + 2 + 5
    assert r["evictions"] == 0 and r["errors"] == 0  # absent counters: no change
    assert all(v == 0 for v in top.rates(prev, cur, 0.0).values())


def test_a_counter_that_goes_down_is_a_reset_never_a_negative_rate() -> None:
    prev = {"hits": 10_000, "misses": 500, "sets": 9000, "evictions": 70}
    cur = {"hits": 12, "misses": 3, "sets": 9100, "evictions": 2}  # a new segment, or a fold
    r = top.rates(prev, cur, 1.0)
    assert min(r.values()) >= 0
    assert r["hits"] == r["misses"] == r["gets"] == r["evictions"] == 0
    assert r["sets"] == 100  # the others still count
    assert top.hit_ratio(prev, cur) is None
    # The next interval measures from the value after the reset.
    hist: list[top.Point] = []
    top.advance(hist, {**prev, "daemon_pid": 7}, None, 10.0)
    top.advance(hist, {**cur, "daemon_pid": 7}, None, 11.0)
    p = top.advance(hist, {**cur, "hits": 42, "daemon_pid": 7}, None, 11.5)
    assert p.rates["hits"] == 60 and p.hit_ratio == 1.0
    assert all(v >= 0 for q in hist for v in q.rates.values())


def test_hit_ratio_is_over_the_interval_not_since_the_start() -> None:
    prev = {"hits": 900, "misses": 100}  # 90% since the store began
    assert top.hit_ratio(prev, {"hits": 910, "misses": 110}) == 0.5
    assert top.hit_ratio(prev, {"hits": 930, "misses": 100}) == 1.0
    assert top.hit_ratio(prev, prev) is None  # no reads: no ratio (not 0%)


def test_sparkline_bounds() -> None:
    assert top.sparkline([0, 5, 10], 3) == "▁▅█"
    assert top.sparkline([1], 4) == "   █"  # newest on the right, padded to the width
    assert top.sparkline([], 5) == " " * 5 and top.sparkline([1, 2], 0) == ""
    assert top.sparkline([-5, 0.5, 5, None], 4, 0.0, 1.0) == "▁▅█ "  # clamped; None: gap
    assert top.sparkline([0, 0, 0], 3) == "▁▁▁"  # flat at zero: no division by zero
    s = top.sparkline(list(range(100)), 60)
    assert len(s) == 60 and s[-1] == "█" and s[0] != "▁"  # the newest 60 of 100
    assert s == "".join(sorted(s))  # increasing values, non-decreasing bars
    for width in (1, 7, 60):
        assert len(top.sparkline([3.0, None, 1e9, -1.0], width)) == width


def test_advance_and_render_report_a_stop_and_a_restart() -> None:
    base = {"hits": 0, "misses": 0, "sets": 0, "bytes": 1 << 20, "heap_capacity": 4 << 20}
    hist: list[top.Point] = []
    top.advance(hist, {**base, "daemon_pid": 100}, None, 0.0)
    p = top.advance(
        hist, {**base, "sets": 500, "hits": 3, "misses": 1, "daemon_pid": 100}, None, 1.0
    )
    assert p.event is None and p.rates["sets"] == 500 and p.hit_ratio == 0.75
    frame = top.render(hist, 100, path="/x")
    assert frame.startswith("surpdb top  ") and frame.splitlines()[0].endswith("pid 100  /x")
    assert "sets 500 " in frame and "hit ratio 75.0%" in frame and "(25.0%)" in frame
    assert "\x1b" not in frame and "!!" not in frame
    p = top.advance(hist, {**base, "daemon_pid": 0}, "stopped", 2.0)
    assert p.event is None
    frame = top.render(hist, 100)
    assert "!! daemon not running: stopped" in frame and "daemon pid" not in frame
    assert "sets 0.0" in frame  # a counter lower than before: 0, not negative
    top.advance(hist, None, "Unavailable: no segment", 3.0)
    assert "!! daemon not running: Unavailable: no segment" in top.render(hist, 100)
    p = top.advance(hist, {**base, "daemon_pid": 200}, None, 4.0)
    assert p.event == "daemon restarted (pid 100 -> 200)"
    frame = top.render(hist, 100)
    assert "!! daemon restarted (pid 100 -> 200)" in frame and "not running" not in frame
    assert top.advance(hist, {**base, "daemon_pid": 200}, None, 5.0).event is None
    assert "!! daemon restarted" in top.render(hist, 100)  # still shown for a while
    assert all(len(line) <= 60 for line in top.render(hist, 60).splitlines())


# -- surpdb top against a real daemon ---------------------------------------------------------


def test_top_shows_the_traffic_of_another_process(
    server: surpdb.Server, client: surpdb.Client, tmp_path: Path
) -> None:
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, client.path, str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        # The writer is under way before top takes its first sample, and runs past its last.
        wait_until(lambda: int(client.stats()["sets"]) >= 500, what="the writer's first sets")
        r = run_top(client.path, "--count", "3", "--interval", "0.2")
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0
    n = int(out)
    st = client.stats()
    assert (st["sets"], st["hits"], st["misses"]) == (n, 3 * n, n)

    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "\x1b" not in r.stdout  # not a terminal: no escape codes
    fs = frames(r.stdout)
    assert len(fs) == 3, r.stdout
    for f in fs:
        assert f"daemon pid {st['daemon_pid']}" in f and "!!" not in f
        sets, gets = rate(f, "sets"), rate(f, "gets")
        assert sets > 0, f
        assert 3.5 * sets <= gets <= 4.5 * sets, f  # 4 gets per set
        assert rate(f, "ops/s") == pytest.approx(sets + gets, rel=0.01, abs=0.2)
        assert rate(f, "deletes") == 0 and rate(f, "incrs") == 0 and rate(f, "errors/s") == 0
        assert rate(f, "hit ratio") == pytest.approx(75.0, abs=2.0), f
        assert "items 500 / " in f, f  # the writer's 500 keys
        assert re.search(r"clients\s+3 ", f), f  # the writer, this test's client, top
    last = fs[-1]
    # Three intervals (the first sample only starts the clock).
    ops = spark(last, "ops/s")
    assert len(ops) == 3 and set(ops) <= set(BARS) and "█" in ops, last
    assert spark(last, "hit ratio") == "▆▆▆", last  # 75% of the 0-100% scale
    assert spark(last, "memory") == "▁▁▁▁", last  # a few KiB of 30 MiB, 4 samples


def test_top_keeps_going_when_the_daemon_stops(
    server: surpdb.Server, client: surpdb.Client
) -> None:
    client.set("k", 1)
    argv = ["-m", "surpdb", "top", client.path, "--count", "25", "--interval", "0.2"]
    with started(argv) as (p, reader):
        reader.wait_for(r"surpdb top .*daemon pid \d+.*\n(?s:.*)\n\n")  # a whole frame
        server.stop()
        assert p.wait(timeout=60) == 0
        err = p.stderr.read() if p.stderr else b""
    assert err == b"", err  # no traceback
    fs = frames(reader.text())
    assert len(fs) == 25
    assert "not running" not in fs[0] and "daemon pid" in fs[0]
    assert "!! daemon not running: stopped" in fs[-1] and "daemon pid" not in fs[-1]
    assert "items 1 / " in fs[-1]  # the segment's gauges are still read
    assert all(rate(f, "sets") >= 0 for f in fs)  # (a negative number would not parse)
    assert rate(fs[-1], "ops/s") == 0


def test_top_reports_a_restart_and_exits_0_on_ctrl_c(store_dir: str) -> None:
    srv = surpdb.Server(store_dir, size="32MiB")
    try:
        with started(["-c", TOP_INTERRUPTIBLE, store_dir, "--interval", "0.1"]) as (p, reader):
            old = srv.pid
            reader.wait_for(rf"daemon pid {old}\b")
            srv.kill()  # SIGKILL: the segment still names the dead daemon
            reader.wait_for(rf"!! daemon not running: daemon pid {old} is gone")
            srv = surpdb.Server(store_dir, size="32MiB")
            reader.wait_for(rf"!! daemon restarted \(pid {old} -> {srv.pid}\)")
            reader.wait_for(rf"(?s)restarted.*daemon pid {srv.pid}\b")
            p.send_signal(signal.SIGINT)
            assert p.wait(timeout=30) == 0
            err = p.stderr.read() if p.stderr else b""
    finally:
        srv.stop()
    assert err == b"", err  # no traceback, no KeyboardInterrupt
    assert "\x1b" not in reader.text()


def test_top_on_a_terminal_redraws_in_place_and_restores_the_cursor(
    server: surpdb.Server,
) -> None:
    argv = ["-c", TOP_INTERRUPTIBLE, server.path, "--interval", "0.1"]
    with started(argv, terminal=True) as (p, reader):
        # The first draw (at once, no rates yet), then frames with rates, each from home.
        reader.wait_for(r"waiting for a second sample")
        reader.wait_for(r"(?s)(ops/s\s+[\d.]+[kM]?\s+gets.*){2}")
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 0
        err = p.stderr.read() if p.stderr else b""
    assert err == b"", err
    out = reader.text()
    assert out.startswith("\x1b[?25l\x1b[2J")  # cursor hidden, screen cleared
    assert out.rstrip().endswith("\x1b[?25h")  # and the cursor back on the way out
    assert "\x1b[K" in out  # each line erased to its end
    assert out.count("\x1b[H") >= 3 and "\x1b[?25h" not in out[:-10]


def test_top_of_a_directory_without_a_store(tmp_path: Path) -> None:
    r = run_top(str(tmp_path), "--once", "--interval", "0.05")
    assert r.returncode == 0 and r.stderr == ""
    (f,) = frames(r.stdout)
    assert "!! daemon not running: Unavailable: no surpdb segment" in f


def test_top_refuses_a_bad_interval(tmp_path: Path) -> None:
    r = run_top(str(tmp_path), "--interval", "0")
    assert r.returncode == 1 and "--interval must be positive" in r.stderr


# -- progress lines of dump, load and train ---------------------------------------------------


def run_on_pty(*args: str) -> tuple[int, str]:
    """``surpdb ARGS`` on a terminal; its exit status and what the terminal showed."""
    with started(["-m", "surpdb", *args], terminal=True, stderr_too=True) as (p, reader):
        code = p.wait(timeout=60)
    return code, reader.text()


def test_dump_and_load_show_progress_on_a_terminal_only(
    client: surpdb.Client, tmp_path: Path
) -> None:
    client.set_many({f"k{i}": {"i": i, "pad": "x" * 50} for i in range(3000)})
    path, dump = client.path, str(tmp_path / "dump.jsonl")

    code, shown = run_on_pty("dump", path, "-o", dump)
    assert code == 0, shown
    assert re.search(r"\rdump: \d+ of 3000 items", shown), repr(shown)
    assert re.search(r"\rdump: 3000 of 3000 items  100%  \d+ items/s", shown), repr(shown)
    assert "dumped 3000 items" in shown
    assert len(Path(dump).read_text().splitlines()) == 3000

    client.clear()
    code, shown = run_on_pty("load", path, dump)
    assert code == 0, shown
    assert re.search(r"\rload: 0 items  0%", shown), repr(shown)
    assert re.search(r"\rload: 3000 items  100%  \d+ items/s", shown), repr(shown)
    assert "loaded 3000 items" in shown
    assert client.get("k2999") == {"i": 2999, "pad": "x" * 50}

    # Not a terminal: stderr says what was done and nothing else.
    r = subprocess.run(
        [sys.executable, "-m", "surpdb", "dump", path, "-o", dump],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stderr == "dumped 3000 items\n"
    r = subprocess.run(
        [sys.executable, "-m", "surpdb", "load", path, dump],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stderr == "loaded 3000 items\n"


def test_train_shows_the_sample_read_on_a_terminal(client: surpdb.Client, tmp_path: Path) -> None:
    sample = tmp_path / "sample.jsonl"
    sample.write_text(
        "".join(json.dumps({"url": f"https://e.com/{i}", "n": i}) + "\n" for i in range(500))
    )
    code, shown = run_on_pty("train", client.path, "--sample", str(sample), "--limit", "300")
    assert code == 0, shown
    assert re.search(r"\rtrain: reading the sample: 300 of 300 records  100%", shown), repr(shown)
    assert "trained model" in shown


def test_progress_is_throttled(monkeypatch: pytest.MonkeyPatch) -> None:
    from surpdb import cli

    class Tty:
        def __init__(self) -> None:
            self.written: deque[str] = deque()

        def isatty(self) -> bool:
            return True

        def write(self, s: str) -> int:
            self.written.append(s)
            return len(s)

        def flush(self) -> None:
            pass

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    clock = [100.0]
    monkeypatch.setattr(cli, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    with cli._Progress("dump", 1000) as p:
        for i in range(1, 1001):
            clock[0] += 0.001  # 1 s in all, 1000 updates
            p.update(i)
    draws = [s for s in tty.written if s.startswith("\r") and s.strip()]
    assert 9 <= len(draws) <= 13, draws  # the first, ~10 a second, the last
    assert draws[-1].startswith("\rdump: 1000 of 1000 items  100%  1000 items/s")
    assert tty.written[-1].strip() == ""  # erased for the summary line
