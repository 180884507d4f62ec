"""Pages/s of the Django project in tests/deploy under gunicorn (4 pre-fork sync workers) with
surpdb beside Django's LocMemCache, PyMemcacheCache and RedisCache and diskcache's
DjangoCache, driven by wrk on loopback, in one run; uvicorn rows for surpdb and redis.

    python benchmarks/deploy_bench.py [--seconds 3] [--connections 16] [--no-asgi]

For each backend: its server (surpd, memcached, redis-server; started here on loopback), the
project, then wrk for a few seconds per URL: /page/ (served by the per-site cache
middleware), /session/ (load and save of one session in the cache session backend, the same
cookie on every request), /lowlevel/20/ (get_many of 20 items, two get_or_set and an incr)
and /alowlevel/20/ (the same with the async methods). Prints one markdown table of
requests/s and wrk's p99 latency. Needs Debian's wrk, memcached and redis-server.

LocMemCache is per process: each worker has its own page cache and sessions (a session made
on one worker is unknown to the others, which start a new one), so its row is an upper bound
on "no shared cache", not a working deployment.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import django
import gunicorn
import uvicorn
from servers import free_port, memcached_args, redis_args, running

import surpdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from deploy.harness import (  # noqa: E402
    WrkResult,
    get,
    gunicorn_args,
    project_env,
    rotate_script,
    run_wrk,
    serving,
    uvicorn_args,
    wrk_path,
)

URLS = ["/page/", "/session/", "/lowlevel/20/", "/alowlevel/20/"]
BACKENDS = ["surpdb", "locmem", "memcached", "redis", "diskcache"]
LABEL = {
    "surpdb": "surpdb",
    "locmem": "LocMemCache",
    "memcached": "PyMemcacheCache",
    "redis": "RedisCache",
    "diskcache": "diskcache.DjangoCache",
}
ASGI_BACKENDS = ["surpdb", "redis"]


@contextmanager
def backend(name: str, scratch: Path) -> Iterator[str]:
    """Start what the backend needs; yields its LOCATION."""
    if name == "surpdb":
        with surpdb.Server(scratch / "surpdb", size="256MiB") as srv:
            yield srv.path
    elif name == "memcached":
        port = free_port()
        with running(memcached_args(port), port):
            yield f"127.0.0.1:{port}"
    elif name == "redis":
        port = free_port()
        with running(redis_args(port, "--appendonly", "no"), port):
            yield f"redis://127.0.0.1:{port}/0"
    elif name == "diskcache":
        yield str(scratch / "diskcache")
    else:
        yield ""


def measure(
    name: str, server: str, scratch: Path, seconds: int, connections: int
) -> dict[str, WrkResult]:
    out: dict[str, WrkResult] = {}
    with ExitStack() as stack:
        location = stack.enter_context(backend(name, scratch))
        port = free_port()
        args = gunicorn_args(port, workers=4) if server == "gunicorn" else uvicorn_args(port, 2)
        site = stack.enter_context(
            serving(args, port, project_env(name, location), scratch / f"{name}-{server}.log")
        )
        r = get(site.port, "/session/")
        cookie = f"sessionid={r.cookie('sessionid')}"
        for url in URLS:
            assert get(site.port, url, cookie).status == 200, site.log[-4000:]
        # Warm up: every worker booted, imported its views and filled what it keeps per
        # process (LocMemCache's page cache, connection pools) before the timed runs.
        script = scratch / "warm.lua"
        script.write_text(rotate_script(URLS))
        warm = {"Cookie": cookie}
        run_wrk(site.url("/"), seconds=2, connections=connections, headers=warm, script=script)
        for url in URLS:
            res = run_wrk(
                site.url(url), seconds=seconds, connections=connections, headers={"Cookie": cookie}
            )
            out[url] = res
            print(f"  {LABEL[name]:>22} {server:8} {url:15} {res.rps:9.0f} req/s", file=sys.stderr)
        if "Traceback" in site.log:
            print(site.log[-4000:], file=sys.stderr)
    return out


def cell(r: WrkResult) -> str:
    errors = r.non_2xx_3xx + sum(r.socket_errors.values())
    p99 = r.latency_ms.get("99%")
    text = f"{r.rps:,.0f} ({p99:.1f} ms)" if p99 is not None else f"{r.rps:,.0f}"
    return text + (f" **{errors} errors**" if errors else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=3, help="wrk's duration per URL")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="runs of everything; best kept")
    ap.add_argument("--no-asgi", action="store_true", help="skip the uvicorn rows")
    a = ap.parse_args()
    if wrk_path() is None:
        sys.exit("wrk not installed (apt-get install wrk)")
    runs = [("gunicorn", b) for b in BACKENDS]
    if not a.no_asgi:
        runs += [("uvicorn", b) for b in ASGI_BACKENDS]
    best: dict[tuple[str, str], dict[str, WrkResult]] = {}
    with tempfile.TemporaryDirectory(prefix="surp-deploy-") as tmp:
        # Rounds go through every backend in turn, so a burst of other load on the machine
        # hits one round of each rather than all of one backend's runs.
        for i in range(a.rounds):
            for server, name in runs:
                scratch = Path(tmp) / f"{i}-{server}-{name}"
                scratch.mkdir()
                got = measure(name, server, scratch, a.seconds, a.connections)
                kept = best.setdefault((server, name), got)
                for url, res in got.items():
                    if res.rps > kept[url].rps:
                        kept[url] = res

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"Django {django.get_version()}, gunicorn {gunicorn.__version__}, "
        f"uvicorn {uvicorn.__version__}; wrk -t2 -c{a.connections} -d{a.seconds}s per URL "
        "on loopback, same machine"
    )
    print(f"cells: requests/s (wrk's p99 latency), the best of {a.rounds} round(s)")
    print()
    print("| server | backend | " + " | ".join(f"`{u}`" for u in URLS) + " |")
    print("|---|---|" + "---:|" * len(URLS))
    for (server, name), res in best.items():
        workers = "4 sync workers" if server == "gunicorn" else "2 workers"
        cells = " | ".join(cell(res[u]) for u in URLS)
        print(f"| {server} ({workers}) | {LABEL[name]} | {cells} |")


if __name__ == "__main__":
    main()
