"""The ``surpdb`` command: serve, stats, demo."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from . import _native
from .errors import Error
from .server import Server, default_dir


def _serve(a: argparse.Namespace) -> int:
    _native.serve(
        a.dir,
        size=a.size,
        max_value=a.max_value,
        policy=a.policy,
        max_clients=a.max_clients,
        durability=a.durability,
        ready_fd=a.ready_fd,
    )
    return 0


def _stats(a: argparse.Namespace) -> int:
    st = _native.Client(a.dir, 1.0).stats()
    if a.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in st)
        for k, v in st.items():
            print(f"{k:<{width}}  {v}")
    return 0


_DEMO_READER = """
import sys, surpdb
c = surpdb.connect(sys.argv[1])
print("reader pid", __import__("os").getpid(), "got", c.get("demo:greeting"))
"""


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
        st = c.stats()
        print("stats:", {k: st[k] for k in ("items", "bytes", "hits", "misses", "sets")})
        del c
    print("surpd stopped cleanly; the data stays in", path)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="surpdb", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the daemon in the foreground (what systemd runs)")
    s.add_argument("dir", nargs="?", default=None, help="data directory (default: %(default)s)")
    s.add_argument("--size", default=None, help="size of a new segment, e.g. 256MiB")
    s.add_argument("--max-value", default=None, help="largest encoded value, e.g. 1MiB")
    s.add_argument("--policy", default=None, choices=["allkeys-lru", "noeviction"])
    s.add_argument("--max-clients", type=int, default=None, help="processes attached at once")
    s.add_argument("--durability", default=None, choices=["os", "periodic"])
    s.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=_serve)

    s = sub.add_parser("stats", help="print counters and gauges of a store")
    s.add_argument("dir", nargs="?", default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_stats)

    s = sub.add_parser("demo", help="start a daemon, write and read from two processes, stop")
    s.add_argument("dir", nargs="?", default=None)
    s.add_argument("--size", default="64MiB")
    s.set_defaults(func=_demo)

    a = p.parse_args(argv)
    if getattr(a, "dir", None) is None:
        a.dir = default_dir()
    try:
        return a.func(a)
    except Error as e:
        print(f"surpdb: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
