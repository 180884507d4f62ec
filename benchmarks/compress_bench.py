"""Large-value compression: zlib, LZMA (liblzma), zstd and zstd with a trained dictionary,
side by side on real cache values (HTML pages and JSON documents), in one run.

    python benchmarks/compress_bench.py [--links ../shared/data/links-dev.jsonl.xz]
        [--max-mb 8] [--slow-mb 5] [--repeats 3] [--json out.json]

Corpora (each a list of values as a site would cache them):

- Django admin HTML: pages rendered in-process by Django's test client (admin, auth,
  contenttypes, sessions, messages; sqlite in memory; 200 users with varied names, 20 groups,
  600 admin log entries): index, user changelists (pages, orderings, searches, filters),
  change forms, history, password and delete pages, groups, add forms, the log.
- Docs HTML: pydoc's HTMLDoc page of each importable public stdlib module (and the
  submodules of some packages), rendered here: no download.
- JSON: the links file's records, in file order, grouped into API-response-like documents of
  1, 5, 20, 50 and 200 records in turn (json.dumps(list).encode()); generated records if the
  file is missing (the table says so). 1 and 5 are there so that values under 4 KiB exist.

Each corpus is capped at --max-mb. HTML pages are put in a fixed pseudo-random order (seed
42), JSON stays in file order; the first half of the values trains the zstd dictionaries and
every codec is measured on the second half only (never on the values a dictionary saw).

Codecs, one value per call, single thread: zlib level 6 (the reference), LZMA via the stdlib's
lzma (liblzma) in FORMAT_RAW with an LZMA2 filter chain (no xz container: its per-value
overhead is printed beside), presets 1, 6 and 9|PRESET_EXTREME, the dictionary size set to the
value's size rounded up to a power of two (at least 4 KiB, at most the preset's) as a cache
that knows its value lengths would; zstd through the `zstandard` package (it wraps libzstd,
as the Rust `zstd` crate does) at levels 1, 3, 6, 12, 19; zstd with a dictionary trained by
zstandard.train_dictionary on the corpus's first half (16 and 64 KiB, levels 3 and 6,
digested once as the Rust crate's EncoderDictionary does) and with one 64 KiB dictionary
trained on all corpora's first halves together (what one daemon-wide dictionary would give);
lz4 (block format) when the `lz4` package is installed.

Speeds are MB of raw value per second of wall time over the measured values (10^6 bytes),
the median of --repeats passes (a pass over a size bucket that takes under 30 ms is run
again until it has, and its mean taken: one scheduler tick is not a measurement); the
slowest codecs (lzma 6 and 9e, zstd 19) are timed on a stratified subset of at most
--slow-mb (every k-th value by size: the table marks them), sizes always from every value.
Needs `zstandard` (pip install zstandard; `lz4` optional). Not part of the test run: nothing
here is asserted beyond round-trips.

Last, surpdb itself on its default path (a daemon started here, connect() as a user gets
it: compress_min 4096, zstd-3) against compress_min=0: the bytes the store's live data grew
by for each whole corpus stored as str, and the median get (decompression and str creation
included). --surpdb-only prints just that table; --no-surpdb skips it.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import random
import shutil
import statistics
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_LINKS = os.path.join(HERE, "..", "..", "shared", "data", "links-dev.jsonl.xz")

KIB = 1024
BUCKETS: list[tuple[int, int, str]] = [
    (0, KIB, "<1K"),
    (KIB, 4 * KIB, "1-4K"),
    (4 * KIB, 16 * KIB, "4-16K"),
    (16 * KIB, 64 * KIB, "16-64K"),
    (64 * KIB, 1 << 62, "≥64K"),
]
JSON_GROUPS = (1, 5, 20, 50, 200)
DEC_FLOOR = 500.0  # MB/s: the decompress speed a cache read should not fall under
COMP_FLOORS = (50.0, 200.0)  # MB/s: compress speeds a cache write should not fall under


def bucket_of(n: int) -> int:
    for i, (lo, hi, _) in enumerate(BUCKETS):
        if lo <= n < hi:
            return i
    return len(BUCKETS) - 1


# ---------------------------------------------------------------------------------------------
# Corpora


def django_admin_pages(max_bytes: int, seed: int) -> list[bytes]:
    """Real Django admin pages, rendered by the test client against an in-memory sqlite."""
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="compress-bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
            "django.middleware.clickjacking.XFrameOptionsMiddleware",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        USE_TZ=True,
        STATIC_URL="/static/",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()
    from datetime import UTC, datetime, timedelta

    from django.contrib import admin
    from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
    from django.contrib.auth.models import Group, Permission, User
    from django.contrib.contenttypes.models import ContentType
    from django.core.management import call_command
    from django.test import Client
    from django.urls import path

    class LogEntryAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
        list_display = ("action_time", "user", "content_type", "object_repr", "action_flag")
        list_filter = ("action_flag", "content_type")
        search_fields = ("object_repr", "change_message")
        date_hierarchy = "action_time"

    admin.site.register(LogEntry, LogEntryAdmin)
    global urlpatterns
    urlpatterns = [path("admin/", admin.site.urls)]
    call_command("migrate", verbosity=0, interactive=False)

    rng = random.Random(seed)
    first = (
        "Olivia Liam Emma Noah Amelia Oliver Sophia Elijah Chloé José Zoë Łukasz Søren Ana "
        "Mateo Yuki Hiroshi Priya Arjun Fatima Omar Ingrid Björn Aoife Siobhán Nguyễn Wei "
        "Mei Ivan Olga Dmitri Lucía Álvaro Jean-Luc Anaïs Kwame Ama Thabo Zanele Ravi"
    ).split()
    last = (
        "Smith Johnson García Müller Dubois Rossi Kowalski Nakamura Chen Wang Kim Singh "
        "Patel Okafor Mensah Andersson Johansson Nielsen O'Brien Fernández López Silva Costa "
        "Novak Horváth Papadopoulos Yılmaz Ivanova Schmidt Vandenberg DeLuca Haddad"
    ).split()
    domains = ["example.com", "mail.example.org", "corp.example.net", "uni.example.edu"]
    now = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    root = User.objects.create_superuser("admin", "admin@example.com", "pw")
    perms = list(Permission.objects.all())
    group_names = (
        "Editors Reviewers Support Support-EU Support-US Billing Marketing Sales Ops "
        "Security Auditors Interns Contractors Moderators Authors Translators Designers "
        "Developers Managers Partners"
    ).split()
    groups = [Group.objects.create(name=n) for n in group_names]
    for g in groups:
        g.permissions.set(rng.sample(perms, rng.randint(2, min(16, len(perms)))))
    users = []
    for i in range(200):
        fn, ln = rng.choice(first), rng.choice(last)
        u = User.objects.create_user(
            f"{fn.lower()}.{ln.lower().replace(' ', '')}{i}",
            f"{fn.lower()}.{ln.lower().replace(' ', '').replace(chr(39), '')}@"
            f"{rng.choice(domains)}",
            "pw",
            first_name=fn,
            last_name=ln,
            is_staff=rng.random() < 0.3,
            is_active=rng.random() < 0.9,
        )
        u.date_joined = now - timedelta(days=rng.randint(0, 2000), seconds=rng.randint(0, 86399))
        u.last_login = u.date_joined + timedelta(days=rng.randint(0, 300))
        u.save()
        u.groups.set(rng.sample(groups, rng.randint(0, 3)))
        if rng.random() < 0.2:
            u.user_permissions.set(rng.sample(perms, rng.randint(1, 5)))
        users.append(u)
    ct_user = ContentType.objects.get_for_model(User)
    ct_group = ContentType.objects.get_for_model(Group)
    fields = ["First name", "Last name", "Email address", "Groups", "Staff status", "Active"]
    entries = []
    for i in range(600):
        is_user = rng.random() < 0.8
        obj: Any = rng.choice(users) if is_user else rng.choice(groups)
        flag = rng.choice([ADDITION, CHANGE, CHANGE, CHANGE, DELETION])
        msg: list[dict[str, Any]] = (
            [{"added": {}}]
            if flag == ADDITION
            else [{"changed": {"fields": rng.sample(fields, rng.randint(1, 3))}}]
            if flag == CHANGE
            else []
        )
        entries.append(
            LogEntry(
                action_time=now - timedelta(minutes=7 * i + rng.randint(0, 6)),
                user=root if rng.random() < 0.5 else rng.choice(users[:20]),
                content_type=ct_user if is_user else ct_group,
                object_id=str(obj.pk),
                object_repr=str(obj)[:200],
                action_flag=flag,
                change_message=json.dumps(msg),
            )
        )
    LogEntry.objects.bulk_create(entries)

    urls = [
        "/admin/",
        "/admin/auth/",
        "/admin/auth/user/",
        "/admin/auth/group/",
        "/admin/auth/user/add/",
        "/admin/auth/group/add/",
        "/admin/password_change/",
        "/admin/admin/",
        "/admin/admin/logentry/",
    ]
    for o in ["", "1", "-1", "2", "-2", "3", "4.1", "-5"]:
        for p in (1, 2, 3):
            urls.append(f"/admin/auth/user/?o={o}&p={p}" if o else f"/admin/auth/user/?p={p}")
    terms = sorted({rng.choice(first) for _ in range(12)} | {rng.choice(last) for _ in range(12)})
    urls += [f"/admin/auth/user/?q={t}" for t in terms + ["example.org", "a", "son", "ov"]]
    for f in ("is_staff__exact", "is_superuser__exact", "is_active__exact"):
        urls += [f"/admin/auth/user/?{f}=0", f"/admin/auth/user/?{f}=1"]
    urls += [f"/admin/auth/user/?groups__id__exact={g.pk}" for g in groups]
    urls += [f"/admin/auth/user/{u.pk}/change/" for u in users]
    urls += [f"/admin/auth/user/{u.pk}/history/" for u in users[:60]]
    urls += [f"/admin/auth/user/{u.pk}/password/" for u in users[:30]]
    urls += [f"/admin/auth/user/{u.pk}/delete/" for u in users[:20]]
    urls += [f"/admin/auth/group/{g.pk}/change/" for g in groups]
    urls += [f"/admin/auth/group/{g.pk}/history/" for g in groups[:10]]
    urls += [f"/admin/auth/group/{g.pk}/delete/" for g in groups[:5]]
    urls += [f"/admin/auth/group/?q={n[:4]}" for n in group_names[:6]]
    urls += [f"/admin/admin/logentry/?p={p}" for p in range(1, 7)]
    urls += [f"/admin/admin/logentry/?action_flag__exact={f}" for f in (1, 2, 3)]
    urls += [f"/admin/admin/logentry/?q={t}" for t in terms[:8]]
    urls += [f"/admin/admin/logentry/{e.pk}/change/" for e in LogEntry.objects.all()[:20]]
    rng.shuffle(urls)

    client = Client()
    assert client.login(username="admin", password="pw")
    anon = Client()
    out = [anon.get("/admin/login/").content]
    total = len(out[0])
    for url in urls:
        r = client.get(url)
        if r.status_code != 200:
            continue
        out.append(bytes(r.content))
        total += len(out[-1])
        if total >= max_bytes:
            break
    return out


PYDOC_SKIP = {
    "antigravity",  # opens a web browser on import
    "this",  # prints on import
    "idlelib",
    "turtledemo",
    "turtle",
    "tkinter",
    "ensurepip",
    "venv",
}
PYDOC_PACKAGES = [
    "asyncio",
    "collections",
    "concurrent.futures",
    "ctypes",
    "dbm",
    "email",
    "encodings",
    "html",
    "http",
    "importlib",
    "json",
    "logging",
    "multiprocessing",
    "sqlite3",
    "unittest",
    "urllib",
    "wsgiref",
    "xml.dom",
    "xml.etree",
    "xml.sax",
    "xmlrpc",
]


def pydoc_pages(max_bytes: int, seed: int) -> list[bytes]:
    """pydoc's HTML page of stdlib modules (what `python -m pydoc -w` writes)."""
    import importlib
    import pkgutil
    import pydoc

    names = [
        n for n in sorted(sys.stdlib_module_names) if not n.startswith("_") and n not in PYDOC_SKIP
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for pkg in PYDOC_PACKAGES:
            try:
                mod = importlib.import_module(pkg)
            except Exception:  # noqa: BLE001 - a module this Python lacks
                continue
            subs = [m.name for m in pkgutil.iter_modules(getattr(mod, "__path__", []))]
            if pkg == "encodings":
                subs = subs[:: max(1, len(subs) // 25)]
            names += [f"{pkg}.{s}" for s in subs if not s.startswith("_")]
        random.Random(seed).shuffle(names)
        out: list[bytes] = []
        total = 0
        for name in names:
            try:
                mod = importlib.import_module(name)
                page = pydoc.html.page(pydoc.describe(mod), pydoc.html.document(mod, name))
            except (Exception, SystemExit):  # noqa: BLE001 - platform-only or broken module
                continue
            out.append(page.encode("utf-8", "surrogateescape"))
            total += len(out[-1])
            if total >= max_bytes:
                break
    return out


def json_documents(path: str | None, max_bytes: int) -> tuple[list[bytes], str]:
    """API-response-like JSON documents of consecutive records, in file order."""
    out: list[bytes] = []
    total = 0
    gi = 0
    batch: list[dict[str, Any]] = []

    def records() -> Any:
        if path and os.path.exists(path):
            with lzma.open(path, "rt", encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line)
            return
        rng = random.Random(42)
        words = "fast small cache record store python rust shared memory link of a for".split()
        i = 0
        while True:
            name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz-") for _ in range(8))
            yield {
                "url": f"https://pypi.org/project/{name}/{rng.randint(0, 9)}.{rng.randint(0, 30)}/",
                "title": " ".join(rng.choice(words) for _ in range(rng.randint(0, 10))),
                "source": "pypi",
                "author": f"{name.title()} <{name}@example.org>",
                "version": f"{rng.randint(0, 9)}.{rng.randint(0, 30)}",
                "size": rng.randint(100, 10**7),
                "id": i,
            }
            i += 1

    for rec in records():
        batch.append(rec)
        if len(batch) == JSON_GROUPS[gi % len(JSON_GROUPS)]:
            out.append(json.dumps(batch).encode())
            total += len(out[-1])
            batch = []
            gi += 1
            if total >= max_bytes:
                break
    src = os.path.basename(path) if path and os.path.exists(path) else "GENERATED records"
    return out, src


# ---------------------------------------------------------------------------------------------
# Codecs


@dataclass
class Codec:
    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes, int], bytes]
    slow: bool = False
    note: str = ""


def lzma_filters(preset: int, n: int) -> list[dict[str, Any]]:
    """LZMA2 at `preset`, its dictionary no larger than the value needs (a cache knows n)."""
    preset_dict = 1 << 20 if (preset & 0x1F) <= 1 else 8 << 20 if (preset & 0x1F) <= 6 else 64 << 20
    dict_size = min(preset_dict, max(4096, 1 << (max(n, 1) - 1).bit_length()))
    return [{"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": dict_size}]


def lzma_codec(name: str, preset: int, slow: bool) -> Codec:
    raw = lzma.FORMAT_RAW

    def comp(v: bytes) -> bytes:
        return lzma.compress(v, format=raw, filters=lzma_filters(preset, len(v)))

    def dec(c: bytes, n: int) -> bytes:
        return lzma.decompress(c, format=raw, filters=lzma_filters(preset, n))

    return Codec(name, comp, dec, slow)


def zstd_codec(name: str, level: int, zdict: Any = None, slow: bool = False) -> Codec:
    import zstandard

    if zdict is not None:
        # A private copy digested once for this level (the Rust crate's EncoderDictionary).
        zdict = zstandard.ZstdCompressionDict(zdict.as_bytes())
        zdict.precompute_compress(level=level)
        cctx = zstandard.ZstdCompressor(level=level, dict_data=zdict)
        dctx = zstandard.ZstdDecompressor(dict_data=zdict)
    else:
        cctx = zstandard.ZstdCompressor(level=level)
        dctx = zstandard.ZstdDecompressor()
    c, d = cctx.compress, dctx.decompress
    return Codec(name, c, lambda b, n: d(b), slow)


def base_codecs() -> tuple[list[Codec], list[str]]:
    notes = []
    codecs = [Codec("zlib-6", lambda v: zlib.compress(v, 6), lambda c, n: zlib.decompress(c))]
    try:
        import lz4.block

        lz4c, lz4d = lz4.block.compress, lz4.block.decompress
        codecs.append(Codec("lz4", lambda v: lz4c(v), lambda c, n: lz4d(c)))
    except ImportError:
        notes.append("lz4 skipped: the `lz4` package is not installed")
    codecs += [
        lzma_codec("lzma-1", 1, False),
        lzma_codec("lzma-6", 6, True),
        lzma_codec("lzma-9e", 9 | lzma.PRESET_EXTREME, True),
    ]
    for lvl in (1, 3, 6, 12, 19):
        codecs.append(zstd_codec(f"zstd-{lvl}", lvl, slow=lvl >= 19))
    return codecs, notes


def train(samples: list[Any], size: int) -> Any:
    import zstandard

    return zstandard.train_dictionary(size, samples, threads=1)


# ---------------------------------------------------------------------------------------------
# Measurement


@dataclass
class Result:
    codec: str
    raw: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    comp: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    count: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    # values whose compressed size is at most (1 - min_saving) of their raw size
    saving_ok: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    # seconds per bucket: the median of the repeats (the total is the median of the sums)
    ctime: list[float] = field(default_factory=lambda: [0.0] * len(BUCKETS))
    dtime: list[float] = field(default_factory=lambda: [0.0] * len(BUCKETS))
    ctotal: float = 0.0
    dtotal: float = 0.0
    timed_raw: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    median_us: float = 0.0
    subset: str = ""

    def ratio(self, b: int | None = None) -> float:
        if b is None:
            return sum(self.comp) / max(1, sum(self.raw))
        return self.comp[b] / self.raw[b] if self.raw[b] else float("nan")

    def cspeed(self, b: int | None = None) -> float:
        raw, t = (
            (sum(self.timed_raw), self.ctotal) if b is None else (self.timed_raw[b], self.ctime[b])
        )
        return raw / t / 1e6 if t > 0 else float("nan")

    def dspeed(self, b: int | None = None) -> float:
        raw, t = (
            (sum(self.timed_raw), self.dtotal) if b is None else (self.timed_raw[b], self.dtime[b])
        )
        return raw / t / 1e6 if t > 0 else float("nan")


def stratified(values: list[bytes], max_bytes: int) -> list[bytes]:
    """Every k-th value by size: the same size mix as `values`, at most max_bytes."""
    total = sum(map(len, values))
    if total <= max_bytes:
        return values
    k = -(-total // max_bytes)
    by_size = sorted(values, key=len)
    return by_size[k // 2 :: k]


MIN_PASS_S = 0.03  # a timed pass over a size bucket is repeated until it lasts this long


def timed_passes(
    fn: Callable[..., bytes], groups: list[list[tuple[Any, ...]]], repeats: int
) -> tuple[list[list[bytes]], list[float], float]:
    """Calls fn(*args) for every args of every group, `repeats` times; the first pass's outputs,
    the median seconds per group and the median total. A pass over a group is run again until
    it has lasted MIN_PASS_S (its time is the mean), so that a fast codec's few-millisecond
    pass is not one scheduler tick."""
    per: list[list[float]] = [[] for _ in groups]
    totals = []
    outs: list[list[bytes]] = []
    for r in range(repeats):
        tot = 0.0
        for gi, g in enumerate(groups):
            if not g:
                per[gi].append(0.0)
                if r == 0:
                    outs.append([])
                continue
            n = 0
            t0 = time.perf_counter()
            while True:
                res = [fn(*a) for a in g]
                n += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= MIN_PASS_S:
                    break
            dt = elapsed / n
            per[gi].append(dt)
            tot += dt
            if r == 0:
                outs.append(res)
        totals.append(tot)
    return outs, [statistics.median(p) for p in per], statistics.median(totals)


def per_call_us(fn: Callable[..., bytes], args: tuple[Any, ...]) -> float:
    """µs for one call (a cache read of this value): the median of 5 batches of >= 20 ms."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn(*args)
        if time.perf_counter() - t0 >= 0.02:
            break
        n *= 2
    batches = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(*args)
        batches.append((time.perf_counter() - t0) / n)
    return statistics.median(batches) * 1e6


def measure(
    codec: Codec,
    values: list[bytes],
    repeats: int,
    slow_bytes: int,
    median_value: bytes,
    min_saving: float,
) -> Result:
    res = Result(codec.name)
    timed = stratified(values, slow_bytes) if codec.slow else values
    if len(timed) < len(values):
        res.subset = f"{len(timed)}/{len(values)} values"
        for v in values:  # sizes from every measured value, one untimed call each
            b = bucket_of(len(v))
            c = codec.compress(v)
            if codec.decompress(c, len(v)) != v:
                raise AssertionError(f"{codec.name}: round trip failed")
            res.raw[b] += len(v)
            res.comp[b] += len(c)
            res.count[b] += 1
            res.saving_ok[b] += len(c) <= (1 - min_saving) * len(v)
    groups: list[list[tuple[Any, ...]]] = [[] for _ in BUCKETS]
    for v in timed:
        groups[bucket_of(len(v))].append((v,))
        res.timed_raw[bucket_of(len(v))] += len(v)
    outs, res.ctime, res.ctotal = timed_passes(codec.compress, groups, repeats)
    dgroups = [
        [(c, len(a[0])) for c, a in zip(o, g, strict=True)]
        for o, g in zip(outs, groups, strict=True)
    ]
    douts, res.dtime, res.dtotal = timed_passes(codec.decompress, dgroups, repeats)
    for b, (g, o, d) in enumerate(zip(groups, outs, douts, strict=True)):
        for a, c, back in zip(g, o, d, strict=True):
            if back != a[0]:
                raise AssertionError(f"{codec.name}: round trip failed")
            if not res.subset:  # sizes from the timed pass: it covered every value
                res.raw[b] += len(a[0])
                res.comp[b] += len(c)
                res.count[b] += 1
                res.saving_ok[b] += len(c) <= (1 - min_saving) * len(a[0])
    mc = codec.compress(median_value)
    res.median_us = per_call_us(codec.decompress, (mc, len(median_value)))
    return res


# ---------------------------------------------------------------------------------------------
# Report


def fmt_ratio(r: float) -> str:
    return "-" if r != r else f"{r:.3f}"


def print_corpus(
    title: str, src: str, values: list[bytes], train_n: int, results: list[Result], extra: str
) -> None:
    measured = values[train_n:]
    sizes = sorted(map(len, measured))
    med = sizes[len(sizes) // 2]
    print(f"### {title}")
    print()
    print(
        f"Source: {src}. {len(values)} values, {sum(map(len, values)) / 1e6:.2f} MB; dictionaries "
        f"trained on the first {train_n} ({sum(map(len, values[:train_n])) / 1e6:.2f} MB), "
        f"measured on the other {len(measured)} ({sum(sizes) / 1e6:.2f} MB); value sizes "
        f"{sizes[0]:,}-{sizes[-1]:,} B, median {med:,} B. {extra}"
    )
    print()
    print(
        "| codec | compressed/raw | x smaller | compress MB/s | decompress MB/s "
        f"| µs to decompress the median value ({med:,} B) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        mark = f" † ({r.subset})" if r.subset else ""
        print(
            f"| {r.codec}{mark} | {r.ratio():.3f} | {1 / r.ratio():.2f} | {r.cspeed():.1f} "
            f"| {r.dspeed():.0f} | {r.median_us:.1f} |"
        )
    print()
    counts = results[0].count
    raws = results[0].raw
    heads = [f"{BUCKETS[b][2]} ({counts[b]}, {raws[b] / 1e6:.2f} MB)" for b in range(len(BUCKETS))]
    print("Compressed/raw by value size (bucket: values, raw MB):")
    print()
    print("| codec | " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * len(BUCKETS))
    for r in results:
        print(
            f"| {r.codec} | "
            + " | ".join(fmt_ratio(r.ratio(b)) for b in range(len(BUCKETS)))
            + " |"
        )
    print()
    print("Compress / decompress MB/s by value size:")
    print()
    print("| codec | " + " | ".join(BUCKETS[b][2] for b in range(len(BUCKETS))) + " |")
    print("|---|" + "---:|" * len(BUCKETS))
    for r in results:
        cells = [
            f"{r.cspeed(b):.0f} / {r.dspeed(b):.0f}" if r.timed_raw[b] else "-"
            for b in range(len(BUCKETS))
        ]
        print(f"| {r.codec} | " + " | ".join(cells) + " |")
    print()


def pct(gain: float) -> str:
    return f"{abs(gain) * 100:.1f}% {'smaller' if gain >= 0 else 'larger'}"


def sum_ratio(r: Result, buckets: range) -> float:
    raw = sum(r.raw[b] for b in buckets)
    return sum(r.comp[b] for b in buckets) / raw if raw else float("nan")


def conclusions(corpora: dict[str, list[Result]], min_saving: float) -> list[str]:
    lines = []
    names = [r.codec for r in next(iter(corpora.values()))]
    by = {c: {k: next(r for r in rs if r.codec == c) for k, rs in corpora.items()} for c in names}
    mean_ratio = {c: statistics.mean(r.ratio() for r in by[c].values()) for c in names}
    fast = [c for c in names if all(r.dspeed() >= DEC_FLOOR for r in by[c].values())]

    def desc(c: str) -> str:
        rs = by[c].values()
        return (
            f"{c} (mean compressed/raw {mean_ratio[c]:.3f}; decompress "
            f"{min(r.dspeed() for r in rs):.0f}-{max(r.dspeed() for r in rs):.0f} MB/s, compress "
            f"{min(r.cspeed() for r in rs):.0f}-{max(r.cspeed() for r in rs):.0f} MB/s)"
        )

    for k, rs in corpora.items():
        ok = [r for r in rs if r.dspeed() >= DEC_FLOOR]
        best_any = min(rs, key=lambda r: r.ratio())
        if ok:
            best = min(ok, key=lambda r: r.ratio())
            lines.append(
                f"- {k}: smallest with decompress >= {DEC_FLOOR:.0f} MB/s: {best.codec} "
                f"({best.ratio():.3f}, {best.dspeed():.0f} MB/s); smallest of all: "
                f"{best_any.codec} ({best_any.ratio():.3f}, {best_any.dspeed():.0f} MB/s)."
            )
    if fast:
        best_c = min(fast, key=lambda c: mean_ratio[c])
        lines.append(
            f"- Over all corpora, smallest with decompress >= {DEC_FLOOR:.0f} MB/s: {desc(best_c)}."
        )
    for floor in COMP_FLOORS:
        fast_w = [c for c in fast if all(r.cspeed() >= floor for r in by[c].values())]
        if fast_w:
            best_w = min(fast_w, key=lambda c: mean_ratio[c])
            lines.append(
                f"- ... and also compress >= {floor:.0f} MB/s (the write path): {desc(best_w)}."
            )
    for lz in ("lzma-6", "lzma-9e"):
        if lz in by and "zstd-19" in by and "zstd-3" in by:
            gain19 = 1 - mean_ratio[lz] / mean_ratio["zstd-19"]
            gain3 = 1 - mean_ratio[lz] / mean_ratio["zstd-3"]
            dz = statistics.mean(by["zstd-3"][k].dspeed() / by[lz][k].dspeed() for k in corpora)
            lines.append(
                f"- {lz} is {pct(gain19)} than zstd-19 and {pct(gain3)} than zstd-3 (mean "
                f"compressed/raw over the corpora), and decompresses {dz:.1f}x slower than zstd-3 "
                f"({', '.join(f'{by[lz][k].dspeed():.0f}' for k in corpora)} MB/s)."
            )
    big, small = range(2, len(BUCKETS)), range(0, 2)
    pairs = [
        ("zstd-3+dict16K", "zstd-3"),
        ("zstd-3+dict64K", "zstd-3"),
        ("zstd-6+dict64K", "zstd-6"),
        ("zstd-6+dict64K", "zstd-3+dict64K"),
        ("zstd-3+dict64K", "zstd-3+dict16K"),
        ("zstd-3+dict64K(all)", "zstd-3"),
        ("zstd-19", "zstd-3"),
        ("lzma-9e", "zstd-3"),
    ]
    lines.append("- Bytes saved by the first codec against the second, values >= 4 KiB | < 4 KiB:")
    for name, ref in pairs:
        if name not in by or ref not in by:
            continue
        parts = []
        for k in corpora:
            base, dr = by[ref][k], by[name][k]
            gb = 1 - sum_ratio(dr, big) / sum_ratio(base, big)
            gs = 1 - sum_ratio(dr, small) / sum_ratio(base, small)
            sm = "(no values)" if gs != gs else f"{gs * 100:.0f}%"
            parts.append(f"{k} {gb * 100:.1f}% | {sm}")
        lines.append(f"  - {name} vs {ref}: " + "; ".join(parts) + ".")
    # compress_min: from which value size does (nearly) every value save min_saving?
    for c in ("zstd-3", "zstd-3+dict64K"):
        if c not in by:
            continue
        cells = []
        first_ok = None
        for b in range(len(BUCKETS)):
            rs = [r for r in by[c].values() if r.count[b]]
            if not rs:
                continue
            share = min(r.saving_ok[b] / r.count[b] for r in rs)
            worst = max(r.ratio(b) for r in rs)
            cells.append(f"{BUCKETS[b][2]}: {share * 100:.0f}% (worst ratio {worst:.2f})")
            if first_ok is None and share >= 0.9:
                first_ok = b
            elif share < 0.9:
                first_ok = None
        lines.append(
            f"- {c}: share of values saving >= {min_saving * 100:.0f}%, lowest over the corpora, "
            f"per size: {'; '.join(cells)}."
        )
        if first_ok is not None:
            lines.append(
                f"  - with {c}, >= 90% of the values of every corpus save >= "
                f"{min_saving * 100:.0f}% from {BUCKETS[first_ok][0]:,} B up "
                f"(the smallest compress_min these corpora support)."
            )
    return lines


def surpdb_default_path(corpora: dict[str, tuple[str, list[bytes]]]) -> list[str]:
    """What surpdb itself does with each corpus on its default path (connect() as a user
    gets it: compress_min 4096, zstd-3, no dictionary) against compress_min=0: bytes the
    store's live data grew by, and the median time of a get (decompression included), as a
    site stores these values (str)."""
    import tempfile

    import surpdb

    lines = [
        "## surpdb, default path (compress_min 4096, zstd-3) vs compress_min=0",
        "",
        "| corpus | values | raw MB | stored MB, default | stored MB, off | x smaller "
        "| get median µs, default | get median µs, off |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (_, vals) in corpora.items():
        texts = [v.decode("utf-8", "replace") for v in vals]
        raw = sum(len(v) for v in vals)
        d = tempfile.mkdtemp()
        with surpdb.Server(d, size=max(64 << 20, 4 * raw), max_value="2MiB"):
            row: dict[str, tuple[float, float]] = {}
            for label, cmin in (("default", 4096), ("off", 0)):
                c = surpdb.connect(d, compress_min=cmin)
                c.clear()
                before = int(c.stats()["bytes"])
                for i, t in enumerate(texts):
                    c.set(f"v{i}", t)
                stored = int(c.stats()["bytes"]) - before
                times = []
                for _ in range(3):
                    for i in range(len(texts)):
                        t0 = time.perf_counter_ns()
                        c.get(f"v{i}")
                        times.append(time.perf_counter_ns() - t0)
                row[label] = (stored / 1e6, statistics.median(times) / 1e3)
        shutil.rmtree(d, ignore_errors=True)
        (sd, gd), (so, go) = row["default"], row["off"]
        lines.append(
            f"| {name} | {len(vals)} | {raw / 1e6:.2f} | {sd:.2f} | {so:.2f} | {so / sd:.2f} "
            f"| {gd:.1f} | {go:.1f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--links", default=DEFAULT_LINKS, help="links-dev.jsonl.xz (else generated)")
    ap.add_argument("--max-mb", type=float, default=8.0, help="cap per corpus (MB)")
    ap.add_argument("--slow-mb", type=float, default=5.0, help="timed subset of slow codecs (MB)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-saving", type=float, default=0.2, help="for the compress_min line")
    ap.add_argument("--corpora", default="django,pydoc,json")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--no-surpdb", action="store_true", help="skip surpdb's own default path")
    ap.add_argument("--surpdb-only", action="store_true", help="only surpdb's default path")
    a = ap.parse_args()
    try:
        import zstandard
    except ImportError:
        sys.exit("needs the zstandard package: pip install zstandard")

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    max_bytes = int(a.max_mb * 1e6)
    corpora: dict[str, tuple[str, list[bytes]]] = {}
    for name in a.corpora.split(","):
        t0 = time.perf_counter()
        if name == "django":
            import django

            vals = django_admin_pages(max_bytes, a.seed)
            corpora["Django admin HTML"] = (f"Django {django.__version__} admin, test client", vals)
        elif name == "pydoc":
            vals = pydoc_pages(max_bytes, a.seed)
            corpora["Docs HTML"] = (f"pydoc HTMLDoc, Python {sys.version.split()[0]} stdlib", vals)
        elif name == "json":
            vals, src = json_documents(a.links, max_bytes)
            corpora["JSON"] = (f"{src}, groups of {'/'.join(map(str, JSON_GROUPS))} records", vals)
        else:
            sys.exit(f"unknown corpus {name}")
        print(
            f"# built {name}: {len(vals)} values, {sum(map(len, vals)) / 1e6:.2f} MB, "
            f"{time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )

    if a.surpdb_only:
        print("\n".join(surpdb_default_path(corpora)))
        return
    halves = {k: (len(v) // 2) for k, (_, v) in corpora.items()}
    t0 = time.perf_counter()
    dicts: dict[str, dict[int, Any]] = {}
    for k, (_, vals) in corpora.items():
        dicts[k] = {size: train(vals[: halves[k]], size * KIB) for size in (16, 64)}
    everything = [v for k, (_, vals) in corpora.items() for v in vals[: halves[k]]]
    shared = train(everything, 64 * KIB) if len(corpora) > 1 else None
    print(f"# trained dictionaries: {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    base, notes = base_codecs()
    results: dict[str, list[Result]] = {}
    for k, (_, vals) in corpora.items():
        codecs = list(base)
        for size in (16, 64):
            for lvl in (3, 6):
                codecs.append(zstd_codec(f"zstd-{lvl}+dict{size}K", lvl, dicts[k][size]))
        if shared is not None:
            codecs.append(zstd_codec("zstd-3+dict64K(all)", 3, shared))
        measured = vals[halves[k] :]
        med = sorted(measured, key=len)[len(measured) // 2]
        results[k] = []
        for c in codecs:
            t0 = time.perf_counter()
            results[k].append(
                measure(c, measured, a.repeats, int(a.slow_mb * 1e6), med, a.min_saving)
            )
            print(f"# {k} {c.name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    # Container overhead of xz and .lzma against the raw LZMA2 stream, per value.
    sample = [v for _, vals in corpora.values() for v in vals[-40:]]
    raw1 = [len(lzma_codec("", 1, False).compress(v)) for v in sample]
    xz = statistics.mean(
        len(lzma.compress(v, preset=1)) - r for v, r in zip(sample, raw1, strict=True)
    )
    alone = statistics.mean(
        len(lzma.compress(v, format=lzma.FORMAT_ALONE, preset=1)) - r
        for v, r in zip(sample, raw1, strict=True)
    )

    print(
        f"## Compression of cache values: zstd {'.'.join(map(str, zstandard.ZSTD_VERSION))} "
        f"(python-zstandard {zstandard.__version__}), liblzma via Python {sys.version.split()[0]} "
        f"lzma, zlib {zlib.ZLIB_RUNTIME_VERSION}"
    )
    print()
    print(
        f"One value per call, single thread, MB = 10^6 bytes of raw value, median of {a.repeats} "
        f"passes. † = timed on a stratified subset (sizes from all values). LZMA is FORMAT_RAW "
        f"(an LZMA2 filter chain, no container); the xz container would add {xz:.0f} B per value "
        f"and FORMAT_ALONE (.lzma, LZMA1) {alone:+.0f} B (mean over {len(sample)} values, "
        f"preset 1). zstd frames carry the content size and the dictionary id; no checksum. "
        f"Load average (1 min) {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the "
        f"end, on {os.cpu_count()} CPUs."
    )
    for n in notes:
        print(f"{n}.")
    print()
    for k, (src, vals) in corpora.items():
        extra = "" if "GENERATED" not in src else "NOT THE REAL FILE: generated records."
        print_corpus(k, src, vals, halves[k], results[k], extra)
    if not a.no_surpdb:
        for line in surpdb_default_path(corpora):
            print(line)
        print()
    print("## Conclusion (computed from the tables above)")
    print()
    for line in conclusions(results, a.min_saving):
        print(line)
    print()
    print(f"# total {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {
                    k: [{**r.__dict__, "ratio_total": r.ratio()} for r in rs]
                    for k, rs in results.items()
                },
                f,
                indent=1,
            )


urlpatterns: list[object] = []

if __name__ == "__main__":
    main()
