"""``surpdb top``: a live view of a store's traffic, memory and daemon, refreshed each interval.

Everything the view shows comes from ``Client.stats()``, which reads the shared mappings and
sends nothing to the daemon, so it works (and says so) while the daemon is stopped. The
arithmetic is in pure functions (:func:`rates`, :func:`hit_ratio`, :func:`sparkline`,
:func:`advance`, :func:`render`); :func:`run` samples, renders and writes the frames.

On a terminal each frame redraws the screen in place (plain ANSI escapes, no curses); on
anything else (a pipe, a file) or with a frame count, frames are plain text one after another.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from . import _native

__all__ = [
    "HISTORY",
    "RATE_KEYS",
    "Point",
    "advance",
    "hit_ratio",
    "poll",
    "rates",
    "render",
    "run",
    "sparkline",
]

Stats = Mapping[str, int | str]

#: Counters shown as per-second rates.
RATE_KEYS = (
    "hits", "misses", "sets", "deletes", "incrs", "requests", "evictions", "expirations",
    "errors", "full_errors",
)  # fmt: skip

#: Samples kept for the sparklines.
HISTORY = 60

_BARS = "▁▂▃▄▅▆▇█"

# Terminal control: cursor home, erase to the end of the line / of the screen, cursor off/on.
_HOME, _EOL, _EOS = "\x1b[H", "\x1b[K", "\x1b[J"
_CLEAR, _HIDE, _SHOW = "\x1b[2J", "\x1b[?25l", "\x1b[?25h"


def rates(prev: Stats, cur: Stats, dt: float) -> dict[str, float]:
    """Per-second rates of the :data:`RATE_KEYS` counters between two samples ``dt`` seconds
    apart, plus ``gets`` (hits + misses) and ``ops`` (gets + sets + deletes + incrs).

    A counter that went down was reset (a new segment) or read mid-update (a client process
    that exits folds its read counters into the totals, and a sample can see neither): its
    rate for that interval is 0, and the next interval measures from the new value. Rates are
    therefore never negative. With ``dt <= 0`` every rate is 0.
    """
    out: dict[str, float] = {}
    for k in RATE_KEYS:
        a, b = prev.get(k, 0), cur.get(k, 0)
        if not isinstance(a, int) or not isinstance(b, int) or dt <= 0 or b < a:
            out[k] = 0.0
        else:
            out[k] = (b - a) / dt
    out["gets"] = out["hits"] + out["misses"]
    out["ops"] = out["gets"] + out["sets"] + out["deletes"] + out["incrs"]
    return out


def hit_ratio(prev: Stats, cur: Stats) -> float | None:
    """Hits / (hits + misses) of the reads between two samples (not since the store began);
    None when there were none (or a counter went down: see :func:`rates`)."""
    deltas = []
    for k in ("hits", "misses"):
        a, b = prev.get(k, 0), cur.get(k, 0)
        if not isinstance(a, int) or not isinstance(b, int) or b < a:
            return None
        deltas.append(b - a)
    hits, misses = deltas
    return hits / (hits + misses) if hits + misses else None


def sparkline(
    values: Sequence[float | None], width: int, lo: float | None = None, hi: float | None = None
) -> str:
    """The last ``width`` values as exactly ``width`` block characters (▁ for ``lo`` up to █
    for ``hi``), newest on the right, left-padded with spaces; a None value (no data) is a
    space. ``lo`` defaults to 0 (or the smallest value if negative) and ``hi`` to the largest
    value; values outside [lo, hi] are clamped, and a flat series is drawn as ▁."""
    if width <= 0:
        return ""
    tail = list(values)[-width:]
    known = [v for v in tail if v is not None]
    if lo is None:
        lo = min([0.0, *known])
    if hi is None:
        hi = max([lo, *known])
    span = hi - lo
    chars = []
    for v in tail:
        if v is None:
            chars.append(" ")
        elif span <= 0:
            chars.append(_BARS[0])
        else:
            f = min(1.0, max(0.0, (v - lo) / span))
            chars.append(_BARS[round(f * (len(_BARS) - 1))])
    return " " * (width - len(tail)) + "".join(chars)


@dataclass
class Point:
    """One sample and what it means against the samples before it."""

    #: ``time.monotonic()`` and ``time.time()`` when it was taken.
    t: float
    wall: float
    #: ``stats()``, or None when they could not be read.
    stats: Stats | None
    #: Why the daemon is not serving (None: it is): the read error, or a stopped/gone daemon.
    down: str | None = None
    #: Per-second rates since the previous sample that had stats (empty for the first).
    rates: dict[str, float] = field(default_factory=dict)
    hit_ratio: float | None = None
    #: The last daemon pid seen serving, up to and including this sample.
    pid: int = 0
    #: Something that happened at this sample, e.g. "daemon restarted (pid 10 -> 12)".
    event: str | None = None


def advance(
    history: deque[Point] | list[Point],
    stats: Stats | None,
    down: str | None,
    t: float,
    wall: float | None = None,
) -> Point:
    """Append the sample taken at monotonic time ``t`` to ``history`` and return its
    :class:`Point`: rates and hit ratio against the latest earlier sample that had stats,
    and a "daemon restarted" event when a different daemon pid serves than the last one
    seen serving (a stop and a start between two samples included)."""
    prev = next((p for p in reversed(history) if p.stats is not None), None)
    last_pid = history[-1].pid if history else 0
    p = Point(t=t, wall=time.time() if wall is None else wall, stats=stats, down=down)
    p.pid = last_pid
    if stats is not None:
        if prev is not None and prev.stats is not None:
            p.rates = rates(prev.stats, stats, t - prev.t)
            p.hit_ratio = hit_ratio(prev.stats, stats)
        pid = stats.get("daemon_pid", 0)
        if down is None and isinstance(pid, int) and pid:
            if last_pid and pid != last_pid:
                p.event = f"daemon restarted (pid {last_pid} -> {pid})"
            p.pid = pid
    history.append(p)
    return p


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process (the systemd unit's): it exists
        return True
    return True


def poll(
    client: _native.Client | None, path: str
) -> tuple[_native.Client | None, Stats | None, str | None]:
    """Read the stats of the store at ``path`` through ``client`` (attaching one when None).

    Returns ``(client, stats, down)``: ``down`` is None while a live daemon serves, else why
    not (the error, a stopped daemon, a daemon pid that is gone); ``client`` is None when it
    should be attached afresh next time (after an error, or while the daemon is not serving,
    so that a daemon restarted on a new segment or ring is seen)."""
    try:
        c = client if client is not None else _native.Client(path, 1.0)
        st = c.stats()
    except Exception as e:  # every failure is shown in the frame, never a traceback
        return None, None, f"{type(e).__name__}: {e}"
    pid = st.get("daemon_pid", 0)
    if not isinstance(pid, int) or pid <= 0:
        return None, st, "stopped (the segment names no daemon)"
    if not _alive(pid):
        return None, st, f"daemon pid {pid} is gone (crashed or killed)"
    return c, st, None


def _num(x: float) -> str:
    """A rate in at most 7 characters: 12.3, 1234, 12.3k, 1.23M."""
    if x < 100:
        return f"{x:.1f}"
    if x < 10_000:
        return f"{x:.0f}"
    if x < 10_000_000:
        return f"{x / 1000:.1f}k"
    return f"{x / 1_000_000:.2f}M"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _int(st: Stats | None, k: str) -> int:
    v = (st or {}).get(k, 0)
    return v if isinstance(v, int) else 0


def render(
    history: Sequence[Point] | deque[Point],
    width: int = 80,
    *,
    path: str = "",
    interval: float | None = None,
    cut: bool = True,
) -> str:
    """One frame of text (no escape codes, no trailing newline) from the newest point of
    ``history``, with sparklines of up to the last :data:`HISTORY` points, sized for
    ``width`` columns. With ``cut``, longer lines are cut at ``width``, except the "!!"
    lines (daemon not running, restarted), which are wrapped."""
    if not history:
        return f"surpdb top  {path}: no samples yet"
    p = history[-1]
    st = p.stats
    clock = time.strftime("%H:%M:%S", time.localtime(p.wall))
    head = f"surpdb top  {clock}"
    if interval:
        head += f"  every {interval:g}s"
    if p.down is None and st is not None:
        head += f"  daemon pid {_int(st, 'daemon_pid')}"
    lines = [f"{head}  {path}" if path else head]
    if p.down is not None:
        lines.append(f"!! daemon not running: {p.down}")
    events = [(q.wall, q.event) for q in history if q.event]
    if events:
        when, what = events[-1]
        lines.append(f"!! {what} at {time.strftime('%H:%M:%S', time.localtime(when))}")
    r = p.rates
    if not r:
        lines.append("ops/s     -  (waiting for a second sample)")
    else:
        lines.append(
            f"ops/s {_num(r['ops']):>9}  gets {_num(r['gets'])}  sets {_num(r['sets'])}  "
            f"deletes {_num(r['deletes'])}  incrs {_num(r['incrs'])}  "
            f"requests {_num(r['requests'])}"
        )
        ratio = "-" if p.hit_ratio is None else f"{100 * p.hit_ratio:.1f}%"
        lines.append(
            f"hit ratio {ratio:>5}  hits/s {_num(r['hits'])}  misses/s {_num(r['misses'])}"
        )
    if st is not None:
        cap, live, used = _int(st, "heap_capacity"), _int(st, "bytes"), _int(st, "heap_used")
        pct = f" ({100 * live / cap:.1f}%)" if cap else ""
        lines.append(
            f"memory    live {_size(live)} / {_size(cap)}{pct}  heap in use {_size(used)}  "
            f"items {_int(st, 'items')} / {_int(st, 'max_items')}"
        )
    if r:
        lines.append(
            f"evictions/s {_num(r['evictions'])}  expirations/s {_num(r['expirations'])}  "
            f"errors/s {_num(r['errors'])} (full {_num(r['full_errors'])})"
        )
    if st is not None:
        lines.append(
            f"clients   {_int(st, 'clients')} (this one included)  "
            f"queue {_size(_int(st, 'ring_pending_bytes'))} pending"
        )
    pts = list(history)[-HISTORY:]
    spark_w = max(8, min(HISTORY, width - 30))
    ops: list[float | None] = [q.rates["ops"] if q.rates else None for q in pts]
    peak = max([v for v in ops if v is not None], default=0.0)
    lines.append(f"ops/s     {sparkline(ops, spark_w)}  max {_num(peak)}")
    hr: list[float | None] = [q.hit_ratio for q in pts]
    lines.append(f"hit ratio {sparkline(hr, spark_w, 0.0, 1.0)}  0-100%")
    mem: list[float | None] = [_int(q.stats, "bytes") if q.stats else None for q in pts]
    cap = max([_int(q.stats, "heap_capacity") for q in pts if q.stats], default=0)
    lines.append(f"memory    {sparkline(mem, spark_w, 0.0, float(cap))}  0-{_size(cap)} live")
    if not cut:
        return "\n".join(lines)
    out: list[str] = []
    for line in lines:
        if line.startswith("!!") and width > 20:  # the news is wrapped, never cut off
            out.extend(textwrap.wrap(line, width, subsequent_indent="   "))
        else:
            out.append(line[:width] if width > 0 else line)
    return "\n".join(out)


def _draw(out: TextIO, history: deque[Point], path: str, interval: float, ansi: bool) -> None:
    width = shutil.get_terminal_size().columns if ansi else 100
    text = render(history, width, path=path, interval=interval, cut=ansi)
    if ansi:  # home, each line erased to its end, then the rest of the screen
        out.write(_HOME + text.replace("\n", _EOL + "\n") + _EOL + "\n" + _EOS)
    else:
        out.write(text + "\n\n")
    out.flush()


def run(
    path: str,
    interval: float = 1.0,
    count: int | None = None,
    out: TextIO | None = None,
    ansi: bool | None = None,
) -> int:
    """Sample ``path`` every ``interval`` seconds and write a frame after each sample (the
    first after one interval, so that every frame has rates), ``count`` frames or until
    Ctrl-C; returns 0 either way. ``ansi`` (default: ``out`` is a terminal and no ``count``)
    redraws in place with the cursor hidden, and restores it on the way out."""
    out = sys.stdout if out is None else out
    if ansi is None:
        ansi = count is None and out.isatty()
    interval = max(0.05, interval)
    history: deque[Point] = deque(maxlen=HISTORY + 1)
    client: _native.Client | None = None
    frames = 0
    try:
        if ansi:
            out.write(_HIDE + _CLEAR)
            out.flush()
        client, st, down = poll(client, path)
        advance(history, st, down, time.monotonic())
        if ansi:  # something on the screen at once; counted frames all have rates
            _draw(out, history, path, interval, ansi)
        due = time.monotonic()
        while count is None or frames < count:
            due += interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:  # late (suspended, slow terminal): start the schedule from now
                due = time.monotonic()
            client, st, down = poll(client, path)
            p = advance(history, st, down, time.monotonic())
            if p.event:  # a new daemon: attach afresh (it may have made a new ring)
                client = None
            _draw(out, history, path, interval, ansi)
            frames += 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # The reader went away (| head): nothing more to say, and nothing at exit either.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        return 0
    finally:
        if ansi:  # the cursor back, below the last frame (and the ^C the terminal echoed)
            try:
                out.write(_SHOW + "\n")
                out.flush()
            except OSError:
                pass
    return 0
