"""A linkrdr-style Django page benchmark: a view renders 100 cached links for a user.

    python benchmarks/linkrdr_bench.py [--links PATH/links-dev.jsonl.xz] [--users 200]

For each cache backend (surpdb, LocMemCache, FileBasedCache, PyMemcacheCache on memcached,
RedisCache on redis-server, diskcache's DjangoCache) the same small Django project serves
/u/<id>/ through Django's test client: the view reads the user's link list and the 100 link
records with get_many, computes and set_many's the missing ones (cold), and renders them with
a template. Reported: median ms per page cold (empty cache) and warm (all hits), in one
process; and pages/s with 2 worker processes sharing the cache (LocMemCache cannot share: each
worker fills its own). memcached and redis-server are started on loopback by this script.
Links come from the corpus file when given (real URLs and titles), else are generated.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from servers import free_port, memcached_args, redis_args, wait_port

PER_PAGE = 100

TEMPLATE = """<html><body><h1>Links for user {{ user }}</h1><ol>
{% for l in links %}<li><a href="{{ l.url }}">{{ l.title }}</a> <small>{{ l.host }} ·
{{ l.score }}</small></li>
{% endfor %}</ol></body></html>"""


def load_links(path: str | None, n: int) -> list[dict[str, object]]:
    if path and os.path.exists(path):
        out = []
        with lzma.open(path, "rt") as f:
            for line in f:
                rec = json.loads(line)
                out.append(
                    {"url": rec.get("url", ""), "title": rec.get("title") or rec.get("url", "")}
                )
                if len(out) >= n:
                    break
        return out
    return [
        {"url": f"https://example{i % 97}.org/pkg/{i}/", "title": f"Package {i}: a library"}
        for i in range(n)
    ]


def backend_settings(name: str, tmp: str, ports: dict[str, int]) -> dict[str, object]:
    if name == "surpdb":
        return {"BACKEND": "surpdb.django.SurpdbCache", "LOCATION": os.path.join(tmp, "surp")}
    if name == "locmem":
        return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    if name == "filebased":
        return {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": os.path.join(tmp, "filecache"),
            "OPTIONS": {"MAX_ENTRIES": 1_000_000},
        }
    if name == "memcached":
        return {
            "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
            "LOCATION": f"127.0.0.1:{ports['memcached']}",
        }
    if name == "redis":
        return {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{ports['redis']}",
        }
    if name == "diskcache":
        return {"BACKEND": "diskcache.DjangoCache", "LOCATION": os.path.join(tmp, "diskcache")}
    raise ValueError(name)


def worker(a: argparse.Namespace) -> None:
    """One process: configure Django for a backend, serve pages, print timings as JSON."""
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        CACHES={"default": json.loads(a.cache)},
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
    )
    django.setup()
    from django.test import Client

    global urlpatterns, _LINKS
    _LINKS = load_links(a.links, a.nlinks)
    from django.urls import path

    urlpatterns = [path("u/<int:user>/", page_view)]
    client = Client()
    users = list(range(a.first_user, a.first_user + a.users))

    def one_pass() -> list[float]:
        times = []
        for u in users:
            t0 = time.perf_counter()
            r = client.get(f"/u/{u}/")
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200 and r.content.count(b"<li>") == PER_PAGE
        return times

    if a.clear:
        from django.core.cache import cache

        cache.clear()
    t_start = time.perf_counter()
    cold = one_pass()
    warm = one_pass()
    warm2 = one_pass()
    elapsed = time.perf_counter() - t_start
    print(
        json.dumps(
            {
                "cold_ms": statistics.median(cold) * 1e3,
                "warm_ms": statistics.median(warm + warm2) * 1e3,
                "pages": 3 * len(users),
                "seconds": elapsed,
            }
        )
    )


_LINKS: list[dict[str, object]] = []
urlpatterns: list[object] = []


def compute_link(i: int) -> dict[str, object]:
    """The 'expensive' part a cache saves: normalise a stored link for display."""
    from urllib.parse import urlsplit

    src = _LINKS[i % len(_LINKS)]
    url = str(src["url"])
    parts = urlsplit(url)
    title = " ".join(str(src["title"]).split())[:200]
    score = sum(map(ord, title)) % 1000 / 10
    return {"id": i, "url": url, "title": title, "host": parts.hostname or "", "score": score}


def page_view(request, user: int):  # type: ignore[no-untyped-def]
    from django.core.cache import cache
    from django.http import HttpResponse
    from django.template import engines

    ids = cache.get(f"user:{user}:links")
    if ids is None:
        ids = [(user * 7919 + k * 104729) % max(len(_LINKS), 1) for k in range(PER_PAGE)]
        cache.set(f"user:{user}:links", ids, 3600)
    keys = [f"link:{i}" for i in ids]
    found = cache.get_many(keys)
    missing = {k: compute_link(i) for k, i in zip(keys, ids, strict=True) if k not in found}
    if missing:
        cache.set_many(missing, 3600)
        found.update(missing)
    tpl = engines["django"].from_string(TEMPLATE)
    return HttpResponse(tpl.render({"user": user, "links": [found[k] for k in keys]}))


def run_workers(
    a: argparse.Namespace, cache: dict[str, object], nproc: int
) -> list[dict[str, float]]:
    per = a.users // nproc
    procs = []
    for w in range(nproc):
        args = [
            sys.executable,
            __file__,
            "--worker",
            "--cache",
            json.dumps(cache),
            "--users",
            str(per),
            "--first-user",
            str(w * per),
            "--nlinks",
            str(a.nlinks),
        ]
        if a.links:
            args += ["--links", a.links]
        if w == 0:
            args.append("--clear")
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"worker failed with {p.returncode}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--links", default=None, help="links-dev.jsonl.xz (else generated links)")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--nlinks", type=int, default=20_000)
    ap.add_argument("--backends", default="surpdb,locmem,filebased,memcached,redis,diskcache")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--first-user", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--clear", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return

    import surpdb

    tmp = tempfile.mkdtemp(prefix="linkrdr-bench-")
    servers: list[subprocess.Popen[bytes]] = []
    ports: dict[str, int] = {}
    rows: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    srv = None
    try:
        for name in a.backends.split(","):
            try:
                if name == "surpdb" and srv is None:
                    srv = surpdb.Server(os.path.join(tmp, "surp"), size="256MiB")
                if name == "memcached" and "memcached" not in ports:
                    ports["memcached"] = free_port()
                    cmd = memcached_args(ports["memcached"], 512)
                    servers.append(subprocess.Popen(cmd, stderr=subprocess.DEVNULL))
                    wait_port(ports["memcached"])
                if name == "redis" and "redis" not in ports:
                    ports["redis"] = free_port()
                    cmd = redis_args(ports["redis"], "--appendonly", "no")
                    servers.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
                    wait_port(ports["redis"])
                cache = backend_settings(name, tmp, ports)
                one = run_workers(a, cache, 1)[0]
                two = run_workers(a, cache, 2)
                rows[name] = {
                    "cold_ms": one["cold_ms"],
                    "warm_ms": one["warm_ms"],
                    "pages_s_1": one["pages"] / one["seconds"],
                    "pages_s_2": sum(w["pages"] for w in two) / max(w["seconds"] for w in two),
                }
            except Exception as e:  # noqa: BLE001 - report the anchor as skipped
                skipped[name] = f"{type(e).__name__}: {e}"
    finally:
        for s in servers:
            s.terminate()
            s.wait(timeout=10)
        if srv is not None:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    base = rows.get("surpdb")
    print(f"{a.users} users x {PER_PAGE} links; Django test client; median ms per page")
    print(
        f"{'backend':<12}{'cold ms':>10}{'warm ms':>10}{'warm x':>9}"
        f"{'pages/s 1p':>12}{'pages/s 2p':>12}"
    )
    for name, r in rows.items():
        ratio = f"{r['warm_ms'] / base['warm_ms']:.2f}" if base else "-"
        print(
            f"{name:<12}{r['cold_ms']:>10.2f}{r['warm_ms']:>10.2f}{ratio:>9}"
            f"{r['pages_s_1']:>12.0f}{r['pages_s_2']:>12.0f}"
        )
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")


if __name__ == "__main__":
    main()
