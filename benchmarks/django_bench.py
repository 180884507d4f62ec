"""The Django backend's own cost: cache.get/get_many/set on surpdb beside LocMemCache, and the
async methods beside Django's default for them (`sync_to_async` of the sync method), in one run.

    python benchmarks/django_bench.py

Prints µs per call (the median of 7 runs) as a markdown table. Starts its own surpd.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import django
from django.conf import settings

settings.configure(SECRET_KEY="bench", USE_TZ=True)
django.setup()

from asgiref.sync import sync_to_async  # noqa: E402
from django.core.cache.backends.locmem import LocMemCache  # noqa: E402
from servers import scratch_dir  # noqa: E402

import surpdb  # noqa: E402
from surpdb.django import SurpdbCache  # noqa: E402

VALUE = {"user": 42, "name": "someone", "roles": ["a", "b"]}


def per_call(fn: Callable[[], Any], n: int, reps: int = 7) -> float:
    out = []
    for _ in range(reps):
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        out.append((time.perf_counter_ns() - start) / n / 1000)
    return statistics.median(out)


def per_await(fn: Callable[[], Awaitable[Any]], n: int, reps: int = 7) -> float:
    async def go() -> float:
        out = []
        for _ in range(reps):
            start = time.perf_counter_ns()
            for _ in range(n):
                await fn()
            out.append((time.perf_counter_ns() - start) / n / 1000)
        return statistics.median(out)

    return asyncio.run(go())


def main() -> None:
    d = scratch_dir("surp-django-")
    with surpdb.Server(d, size="64MiB"):
        s = SurpdbCache(d, {"OPTIONS": {}, "TIMEOUT": 300})
        loc = LocMemCache("bench", {"TIMEOUT": 300})
        keys = [f"k{i}" for i in range(100)]
        for c in (s, loc):
            c.set("session", VALUE)
            c.set_many(dict.fromkeys(keys, VALUE))
        rows = [
            ("cache.get", per_call(lambda: s.get("session"), 50_000),
             per_call(lambda: loc.get("session"), 50_000)),
            ("cache.get_many(100 keys)", per_call(lambda: s.get_many(keys), 1000),
             per_call(lambda: loc.get_many(keys), 1000)),
            ("cache.set", per_call(lambda: s.set("w", VALUE), 5000),
             per_call(lambda: loc.set("w", VALUE), 5000)),
        ]  # fmt: skip
        sget, sset = sync_to_async(s.get), sync_to_async(s.set)
        arows = [
            ("await cache.aget", per_await(lambda: s.aget("session"), 20_000),
             per_await(lambda: sget("session"), 2000), per_call(lambda: s.get("session"), 50_000)),
            ("await cache.aset", per_await(lambda: s.aset("w", VALUE), 5000),
             per_await(lambda: sset("w", VALUE), 2000), per_call(lambda: s.set("w", VALUE), 5000)),
        ]  # fmt: skip
    print("| call | surpdb, µs | LocMemCache, µs | ratio |")
    print("|---|---:|---:|---:|")
    for name, a, b in rows:
        print(f"| `{name}` | {a:.2f} | {b:.2f} | {a / b:.2f} |")
    print()
    print("| call | surpdb native, µs | sync_to_async(sync), µs | the sync call, µs |")
    print("|---|---:|---:|---:|")
    for name, a, b, c in arows:
        print(f"| `{name}` | {a:.2f} | {b:.1f} | {c:.2f} |")


if __name__ == "__main__":
    main()
