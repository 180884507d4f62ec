"""Three kinds of cache use: a page kept by the per-site middleware, a session counter in the
cache session backend, and low-level get_many / set_many / get_or_set / incr."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache

MAX_ITEMS = 1000
_renders = itertools.count(1)


def page(request: HttpRequest) -> HttpResponse:
    """Rendered once per CACHE_MIDDLEWARE_SECONDS; the middleware serves the stored copy, so
    the pid, render number and time in the body stay put while X-Worker changes."""
    body = (
        "<!doctype html><title>cached page</title>"
        f"<p>rendered by pid {os.getpid()}, render {next(_renders)}, at {time.time_ns()}</p>"
    )
    return HttpResponse(body)


@never_cache
def health(request: HttpRequest) -> HttpResponse:
    """For readiness polls: touches no cache of its own."""
    return HttpResponse("ok")


@never_cache
def session(request: HttpRequest) -> JsonResponse:
    """Adds one to a counter in the session (read, then written back by the middleware)."""
    n = request.session.get("n", 0) + 1
    request.session["n"] = n
    return JsonResponse({"n": n, "pid": os.getpid()})


def _items(n: int) -> tuple[list[str], dict[str, Any]]:
    keys = [f"item:{i}" for i in range(min(n, MAX_ITEMS))]
    fresh = {k: {"id": i, "name": f"item {i}", "by": os.getpid()} for i, k in enumerate(keys)}
    return keys, fresh


@never_cache
def lowlevel(request: HttpRequest, n: int) -> JsonResponse:
    """n items read with get_many (the missing ones made and stored with set_many), a value
    from get_or_set and a shared hit counter; `by` says which pids stored the items."""
    keys, fresh = _items(n)
    got = cache.get_many(keys)
    missing = {k: v for k, v in fresh.items() if k not in got}
    if missing:
        cache.set_many(missing)
        got.update(missing)
    made = cache.get_or_set("lowlevel:made", lambda: {"pid": os.getpid()})
    assert made is not None
    cache.get_or_set("lowlevel:hits", 0)
    hits = cache.incr("lowlevel:hits")
    return JsonResponse(
        {
            "n": len(keys),
            "names": [got[k]["name"] for k in keys[:3]],
            "by": sorted({got[k]["by"] for k in keys}),
            "made": made["pid"],
            "hits": hits,
            "pid": os.getpid(),
        }
    )


@never_cache
async def alowlevel(request: HttpRequest, n: int) -> JsonResponse:
    """The same with the async methods (native in surpdb, sync_to_async in most others)."""
    keys, fresh = _items(n)
    got = await cache.aget_many(keys)
    missing = {k: v for k, v in fresh.items() if k not in got}
    if missing:
        await cache.aset_many(missing)
        got.update(missing)
    made = await cache.aget_or_set("lowlevel:made", lambda: {"pid": os.getpid()})
    assert made is not None
    await cache.aget_or_set("lowlevel:hits", 0)
    hits = await cache.aincr("lowlevel:hits")
    return JsonResponse(
        {
            "n": len(keys),
            "names": [got[k]["name"] for k in keys[:3]],
            "by": sorted({got[k]["by"] for k in keys}),
            "made": made["pid"],
            "hits": hits,
            "pid": os.getpid(),
        }
    )
