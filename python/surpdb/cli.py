"""The ``surpdb`` command: serve, stats, top, check, dump, load, resize, train, demo."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO

from . import _native
from .errors import Error
from .server import Server, default_dir

_SETTINGS = [
    ("size", "segment size, e.g. 256MiB (an existing segment grows to it, never shrinks)"),
    ("max_size", "largest size a new segment may grow to while serving (default 4 x size)"),
    ("max_value", "largest encoded value, e.g. 1MiB"),
    ("policy", "eviction policy: allkeys-lru or noeviction"),
    ("max_clients", "client processes attached at once"),
    ("queue_bytes", "request queue per client, e.g. 4MiB"),
    ("durability", "os, periodic or sync"),
    ("flush_interval_ms", "msync interval for periodic durability"),
    ("group", "group owning the files (clients must be members)"),
    ("log_level", "error, warn, info or debug"),
    ("records_size", "the most the records file grows to (default 64GiB), e.g. 1GiB"),
    ("codec", "record codec of trained models: fast or compact"),
    ("train_after", "train the record codec at this many records, a small model at 1/8; 0: never"),
    ("upstream", "tiered mode: redis://host:port/db (rediss:// for TLS, unix:///path) in front of"),
    ("upstream_prefix", "tiered mode: the upstream key space every host shares, e.g. app:"),
    ("upstream_timeout_ms", "tiered mode: upstream answer timeout and staleness bound (500)"),
    ("upstream_user", "tiered mode: the upstream ACL user"),
    ("upstream_password_file", "tiered mode: a file holding the upstream password"),
    ("upstream_ca_file", "tiered mode, rediss://: PEM certificate authorities to trust"),
    ("pickle", "false: refuse values that hold a pickle (loading one runs code)"),
]


def _serve(a: argparse.Namespace) -> int:
    options = [("dir", a.dir)] if a.dir else []
    for name, _ in _SETTINGS:
        value = getattr(a, name)
        if value is not None:
            options.append(("eviction_policy" if name == "policy" else name, str(value)))
    _native.serve(config=a.config, options=options, ready_fd=a.ready_fd, parent_fd=a.parent_fd)
    return 0


# Counters only go up; everything else is a gauge.
_COUNTERS = {
    "hits", "misses", "sets", "deletes", "incrs", "touches", "clears", "evictions",
    "expirations", "relocations", "requests", "errors", "full_errors", "reclaim_waits",
    "corrupt_reads", "quarantined", "client_dropped_errors", "ring_queue_waits",
    "upstream_round_trips", "upstream_read_throughs", "upstream_invalidations",
    "upstream_stale_drops", "upstream_reconnects", "upstream_errors", "upstream_replays",
}  # fmt: skip


_NS_COUNTERS = {"sets", "evictions", "clears"}


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus(
    stats: dict[str, int | str], path: str, namespaces: dict[str, dict[str, int]] | None = None
) -> str:
    """Prometheus text exposition (for node_exporter's textfile collector); each namespace's
    counts as surpdb_namespace_* with a namespace label ("" is the default one)."""
    label = _esc(path)
    lines = []
    for k, v in stats.items():
        if isinstance(v, str):
            lines.append(f"# TYPE surpdb_{k}_info gauge")
            lines.append(f'surpdb_{k}_info{{dir="{label}",{k}="{v}"}} 1')
            continue
        name = f"surpdb_{k}_total" if k in _COUNTERS else f"surpdb_{k}"
        lines.append(f"# TYPE {name} {'counter' if k in _COUNTERS else 'gauge'}")
        lines.append(f'{name}{{dir="{label}"}} {v}')
    fields = sorted({f for counts in (namespaces or {}).values() for f in counts})
    for f in fields:
        counter = f in _NS_COUNTERS
        name = f"surpdb_namespace_{f}_total" if counter else f"surpdb_namespace_{f}"
        lines.append(f"# TYPE {name} {'counter' if counter else 'gauge'}")
        for ns, counts in (namespaces or {}).items():
            lines.append(f'{name}{{dir="{label}",namespace="{_esc(ns)}"}} {counts[f]}')
    return "\n".join(lines) + "\n"


def _stats(a: argparse.Namespace) -> int:
    c = _native.Client(a.dir, 1.0)
    st, spaces = c.stats(), c.namespaces()
    if a.json:
        print(json.dumps({**st, "namespaces": spaces}, indent=2, sort_keys=True))
    elif a.prometheus:
        sys.stdout.write(prometheus(st, a.dir, spaces))
    else:
        width = max(len(k) for k in st)
        for k, v in st.items():
            print(f"{k:<{width}}  {v}")
        for ns, counts in spaces.items():
            print(
                f"namespace {ns or '(default)'}: "
                + ", ".join(f"{k} {v}" for k, v in counts.items())
            )
    return 0


def systemd_unit(user: str = "surpdb", group: str = "surpdb", config: str | None = None) -> str:
    """The shipped unit file, with ExecStart pointing at this Python and package."""
    from importlib.resources import files

    exec_start = f"{sys.executable} -m surpdb serve /var/lib/surpdb"
    if config:
        exec_start += f" --config {config}"
    exec_start += f" --group {group}"
    text = files("surpdb").joinpath("systemd/surpdb.service").read_text()
    return text.format(exec_start=exec_start, user=user, group=group)


def _systemd_unit(a: argparse.Namespace) -> int:
    sys.stdout.write(systemd_unit(a.user, a.group, a.config))
    return 0


def _top(a: argparse.Namespace) -> int:
    from . import top

    if a.interval <= 0:
        raise Error(f"--interval must be positive, not {a.interval}")
    if a.count is not None and a.count < 1:
        raise Error(f"--count must be at least 1, not {a.count}")
    return top.run(a.dir, a.interval, 1 if a.once else a.count)


def _check(a: argparse.Namespace) -> int:
    r = _native.check(a.dir)
    if a.json:
        print(json.dumps(r, indent=2, sort_keys=True))
    else:
        state = (
            "cleanly stopped"
            if r["clean_stop"]
            else f"in use or not cleanly stopped (daemon pid {r['daemon_pid']})"
        )
        print(
            f"{a.dir}: {r['items']} items, {r['live_bytes']} live bytes; "
            f"{r['log_records']} records in the log; {state}"
        )
        for p in r["problems"]:
            print(f"problem: {p}")
        more = r["problem_count"] - len(r["problems"])
        if more:
            print(f"... and {more} more problems")
        print("ok" if r["ok"] else f"{r['problem_count']} problems")
    return 0 if r["ok"] else 1


def _json_exact(v: object) -> bool:
    """Whether v survives a JSON round trip as exactly the same Python value and types."""
    if v is None or isinstance(v, bool | str):
        return True
    if type(v) is int:
        return True
    if type(v) is float:
        return v == v and v not in (float("inf"), float("-inf"))
    if type(v) is list:
        return all(_json_exact(x) for x in v)
    if type(v) is dict:
        return all(type(k) is str and _json_exact(x) for k, x in v.items())
    return False


class _Progress:
    """One progress line on stderr, redrawn in place (``\\r``) at most 10 times a second:
    what is done, the rate and, with a known total (or a ``fraction`` callback), the
    percentage. Silent unless stderr is a terminal (and ``enabled``), so piped and scripted
    runs print exactly what they did."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "items",
        fraction: Callable[[], float] | None = None,
        enabled: bool = True,
    ) -> None:
        self.what, self.total, self.unit, self.fraction = what, total, unit, fraction
        self.on = enabled and sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.width = self.done = 0
        if self.on:
            self._draw()

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def update(self, done: int) -> None:
        self.done = done
        if self.on and time.monotonic() - self.last >= 0.1:
            self._draw()

    def close(self) -> None:
        """Draw the final state, then erase the line for what is printed next."""
        if self.on:
            self._draw()
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
            self.on = False

    def _draw(self) -> None:
        now = time.monotonic()
        self.last = now
        text = f"{self.what}: {self.done}"
        if self.total is not None:
            text += f" of {self.total}"
        text += f" {self.unit}"
        frac = self.fraction() if self.fraction else self.done / self.total if self.total else None
        if frac is not None:
            text += f"  {min(100.0, 100 * frac):.0f}%"
        elapsed = now - self.start
        if elapsed > 0:
            text += f"  {self.done / elapsed:.0f} {self.unit}/s"
        text += f"  {elapsed:.1f}s"
        pad = " " * max(0, self.width - len(text))
        self.width = len(text)
        sys.stderr.write("\r" + text + pad)
        sys.stderr.flush()


def _read_fraction(f: IO[str]) -> Callable[[], float] | None:
    """For a plain file: the part read so far (by the file offset, a read-ahead ahead)."""
    fd = f.fileno()
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or not st.st_size:
        return None
    return lambda: os.lseek(fd, 0, os.SEEK_CUR) / st.st_size


def _dump(a: argparse.Namespace) -> int:
    """JSON lines: each cache item as {"key": str | {"b64": ...}, "value": json} or
    {"value_b64": native}, "ttl", and "ns" for a key of a namespace other than the default
    one; then each record as {"rid": id, "record": json} or {"record_b64": native}."""
    base = _native.Client(a.dir, 5.0)
    out = open(a.file, "w") if a.file and a.file != "-" else sys.stdout  # noqa: SIM115
    n = records = 0
    st = base.stats()
    total = st["items"]
    if isinstance(total, int) and isinstance(st.get("records"), int):
        total += int(st["records"])
    # (Not when the dump itself goes to the same terminal.)
    progress = _Progress(
        "dump", total if isinstance(total, int) else None, enabled=not out.isatty()
    )
    try:
        for ns in base.namespaces():
            c = base.namespace(ns) if ns else base
            cursor = 0
            while True:
                cursor, items = c._scan(cursor, 1000)
                n += _dump_items(items, ns, out)
                progress.update(n)
                if cursor == 0:
                    break
        cursor = 0
        while True:
            cursor, ids = base.record_ids(cursor, 1000)
            records += _dump_records(base, ids, out)
            progress.update(n + records)
            if cursor == 0:
                break
    finally:
        progress.close()
        if out is not sys.stdout:
            out.close()
    also = f" and {records} records" if records else ""
    print(f"dumped {n} items{also}", file=sys.stderr)
    return 0


def _dump_records(c: _native.Client, ids: list[int], out: IO[str]) -> int:
    import base64

    n = 0
    for rid in ids:
        try:
            raw = c._record_raw(rid)
        except KeyError:
            continue  # removed since it was listed
        value = _native.decode_value_bytes(raw)
        rec: dict[str, object] = {"rid": rid}
        if _json_exact(value):
            rec["record"] = value
        else:
            rec["record_b64"] = base64.b64encode(raw).decode()
        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
        n += 1
    return n


def _dump_items(items: list[tuple[bytes, bytes, int]], ns: str, out: IO[str]) -> int:
    import base64
    import time

    now_ms = time.time() * 1000
    for key, encoded, expires_ms in items:
        try:
            k: object = key.decode()
        except UnicodeDecodeError:
            k = {"b64": base64.b64encode(key).decode()}
        rec: dict[str, object] = {"key": k}
        if ns:
            rec["ns"] = ns
        value = _native.decode_value_bytes(encoded)
        # A tagged value (tag byte 0x10) keeps its tags: its stored bytes go as they are.
        if encoded[:1] != b"\x10" and _json_exact(value):
            rec["value"] = value
        else:
            rec["value_b64"] = base64.b64encode(encoded).decode()
        if expires_ms:
            rec["ttl"] = max(0.001, (expires_ms - now_ms) / 1000)
        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return len(items)


def _load(a: argparse.Namespace) -> int:
    """Store a dump's items (keys keep their names) and records (inserted in the dump's
    order, under new ids: ids are offsets; ``--id-map`` writes old -> new)."""
    import base64

    base = _native.Client(a.dir, 30.0)
    spaces: dict[str, _native.Client] = {"": base}
    n = records = 0
    batch: list[tuple[int, int, object]] = []  # (line, old id, record)
    id_map = open(a.id_map, "w") if a.id_map else None  # noqa: SIM115

    def insert_batch() -> None:
        """Insert the records waiting; on a failure, map what was stored and name the
        line of the first record that was not."""
        nonlocal records
        if not batch:
            return
        try:
            new_ids: list[int | None] = list(base.insert_many([r for _, _, r in batch]))
            failure = None
        except Exception as e:  # noqa: BLE001 (re-raised below, with its line)
            stored = getattr(e, "ids", None)
            new_ids = list(stored) if stored is not None else [None] * len(batch)
            failure = e
        for (_, old, _), new in zip(batch, new_ids):  # noqa: B905 (ids may be short)
            if new is not None:
                records += 1
                if id_map is not None:
                    id_map.write(json.dumps({"old": old, "new": new}) + "\n")
        if failure is not None:
            gaps = (ln for (ln, _, _), new in zip(batch, new_ids) if new is None)  # noqa: B905
            line = next(gaps, batch[0][0])
            batch.clear()
            raise Error(
                f"{a.file}:{line}: record not stored: "
                f"{type(failure).__name__}: {failure}; everything before this line was "
                "stored (a second load stores those records again)"
            ) from failure
        batch.clear()

    try:
        with open(a.file) as f, _Progress("load", fraction=_read_fraction(f)) as progress:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if "rid" in rec:
                        if "record_b64" in rec:
                            value = _native.decode_value_bytes(base64.b64decode(rec["record_b64"]))
                        else:
                            value = rec["record"]
                        batch.append((lineno, int(rec["rid"]), value))
                        if len(batch) >= 1000:
                            insert_batch()
                        progress.update(n + records + len(batch))
                        continue
                    ns = rec.get("ns") or ""
                    c = spaces.get(ns) or spaces.setdefault(ns, base.namespace(ns))
                    k = rec["key"]
                    key = base64.b64decode(k["b64"]) if isinstance(k, dict) else k
                    ttl = rec.get("ttl")
                    if "value_b64" in rec:
                        c._set_raw(key, base64.b64decode(rec["value_b64"]), ttl)
                    else:
                        c.set(key, rec["value"], ttl=ttl, wait=False)
                except (KeyError, ValueError, TypeError) as e:
                    # What came before this line is stored, records included, then the load
                    # stops here.
                    insert_batch()
                    raise Error(
                        f"{a.file}:{lineno}: bad dump line: {e}; everything before it was stored"
                    ) from e
                n += 1
                progress.update(n + records)
            insert_batch()
    finally:
        if id_map is not None:
            id_map.close()
    base.flush()
    also = f" and {records} records" if records else ""
    print(f"loaded {n} items{also}", file=sys.stderr)
    if records and id_map is None:
        print(
            "records have new ids (ids are offsets in the records file); "
            "pass --id-map FILE to write each old id and its new one",
            file=sys.stderr,
        )
    return 0


_DEMO_READER = """
import sys, surpdb
c = surpdb.connect(sys.argv[1])
print("reader pid", __import__("os").getpid(), "got", c.get("demo:greeting"))
"""


def _resize(a: argparse.Namespace) -> int:
    import surpdb

    c = surpdb.connect(a.dir)
    before = c.stats()["capacity"]
    after = c.resize(a.size)
    st = c.stats()
    print(
        f"{a.dir}: {before} -> {after} bytes (max_size {st['max_size']}); the heap takes the "
        "new space at the end of its current lap of writes"
    )
    return 0


def _train(a: argparse.Namespace) -> int:
    import surpdb

    c = surpdb.connect(a.dir)
    sample = None
    if a.sample:
        sample = _read_sample(a.sample, a.limit)
    n = c.train(sample, compact=a.compact)
    st = c.stats()
    print(
        f"trained model {st.get('record_models')} ({n} bytes) from "
        + (f"{a.sample}" if a.sample else f"{st.get('records')} stored records")
        + "; new records use it, stored ones keep theirs"
    )
    return 0


def _read_sample(path: str, limit: int) -> list[object]:
    """JSON lines (optionally .xz / .gz compressed), at most ``limit`` records."""
    import gzip
    import lzma

    opener = lzma.open if path.endswith(".xz") else gzip.open if path.endswith(".gz") else open
    out: list[object] = []
    with (
        opener(path, "rt", encoding="utf-8") as f,  # type: ignore[operator]
        _Progress("train: reading the sample", limit, "records") as progress,
    ):
        for line in f:
            if line.strip():
                out.append(json.loads(line))
                progress.update(len(out))
                if len(out) >= limit:
                    break
    return out


def _demo(a: argparse.Namespace) -> int:
    import surpdb

    path = a.dir
    print(f"starting surpd on {path} ...")
    with Server(path, size=a.size) as srv:
        print(f"surpd running, pid {srv.pid}")
        c = surpdb.connect(path)
        value = {"hello": "world", "numbers": [1, 2, 3], "pid": os.getpid()}
        c.set("demo:greeting", value, ttl=3600)
        print("writer pid", os.getpid(), "set demo:greeting =", value)
        print("same process reads", c.get("demo:greeting"))
        subprocess.run([sys.executable, "-c", _DEMO_READER, path], check=True)
        hits = c.incr("demo:counter")
        print("demo:counter is now", hits)
        link = {"url": "https://pypi.org/project/surpdb/", "title": "records", "source": "pypi"}
        rid = c.insert(link)
        print("record store: insert ->", rid, "record(rid) ->", c.record(rid))
        st = c.stats()
        print("stats:", {k: st[k] for k in ("items", "bytes", "hits", "misses", "sets")})
        del c
    print("surpd stopped cleanly; the data stays in", path)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="surpdb", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the daemon in the foreground (what systemd runs)")
    s.add_argument("dir", nargs="?", default=None, help="data directory")
    s.add_argument("--config", default=None, help="TOML file (flags beat SURPDB_* beat it)")
    for name, doc in _SETTINGS:
        s.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=doc)
    s.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    s.add_argument("--parent-fd", type=int, default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=_serve)

    s = sub.add_parser("stats", help="print counters and gauges of a store")
    s.add_argument("dir", nargs="?", default=None)
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--prometheus", action="store_true", help="text exposition format")
    s.set_defaults(func=_stats)

    s = sub.add_parser("top", help="live view: ops/s, hit ratio, memory, clients (Ctrl-C quits)")
    s.add_argument("dir", nargs="?", default=None, help="data directory")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between frames (1.0)")
    n = s.add_mutually_exclusive_group()
    n.add_argument("--count", type=int, default=None, help="stop after N frames (plain text)")
    n.add_argument("--once", action="store_true", help="one frame (plain text), like --count 1")
    s.set_defaults(func=_top)

    s = sub.add_parser("check", help="verify a segment without changing it (exit 1 on problems)")
    s.add_argument("dir", nargs="?", default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_check)

    s = sub.add_parser("dump", help="write every item and record as JSON lines (backup, migration)")
    s.add_argument("dir", nargs="?", default=None)
    s.add_argument("-o", "--file", default="-", help="output file (default: stdout)")
    s.set_defaults(func=_dump)

    s = sub.add_parser(
        "load", help="store the items and records of a dump (through the running daemon)"
    )
    s.add_argument("dir")
    s.add_argument("file")
    s.add_argument(
        "--id-map", default=None, help="write {old, new} JSON lines: each record's new id"
    )
    s.set_defaults(func=_load)

    s = sub.add_parser("resize", help="grow a running store's segment (up to its max_size)")
    s.add_argument("dir", nargs="?", default=None)
    s.add_argument("size", help="new size, e.g. 1GiB (a segment does not shrink)")
    s.set_defaults(func=_resize)

    s = sub.add_parser("train", help="train the record codec (from stored records or a sample)")
    s.add_argument("dir", nargs="?", default=None)
    s.add_argument("--sample", default=None, help="JSON lines file of sample records (.xz/.gz ok)")
    s.add_argument("--limit", type=int, default=100_000, help="most sample records to read")
    s.add_argument("--compact", action="store_true", help="smaller records, slower decoding")
    s.set_defaults(func=_train)

    s = sub.add_parser("systemd-unit", help="print the systemd unit for this installation")
    s.add_argument("--user", default="surpdb")
    s.add_argument("--group", default="surpdb")
    s.add_argument("--config", default=None, help="config file for ExecStart")
    s.set_defaults(func=_systemd_unit)

    s = sub.add_parser("demo", help="start a daemon, write and read from two processes, stop")
    s.add_argument("dir", nargs="?", default=None)
    s.add_argument("--size", default="64MiB")
    s.set_defaults(func=_demo)

    a = p.parse_args(argv)
    # serve leaves the directory to the config file / SURPDB_DIR when not given.
    if a.cmd != "serve" and getattr(a, "dir", None) is None:
        a.dir = default_dir()
    if a.cmd == "serve" and a.dir is None and a.config is None and "SURPDB_DIR" not in os.environ:
        a.dir = default_dir()
    try:
        return a.func(a)
    except Error as e:
        print(f"surpdb: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        # Permissions, a full disk: the message names the file and the numbers.
        print(f"surpdb: OSError: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
