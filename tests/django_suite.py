"""Run Django's own BaseCacheTests against surpdb.django.SurpdbCache.

    python tests/django_suite.py [--json counts.json]

Django's tests/cache/ is not in the wheel: this fetches the source distribution of the
installed Django version from PyPI (cached under ~/.cache/surpdb/), extracts tests/cache/ as
the importable package ``cache``, starts a surpd daemon, and runs the mixin with Django's
settings helper, excluding the "cull" aliases exactly as Django's Redis tests do (eviction is
the daemon's, by segment size; MAX_ENTRIES is not used), so those tests skip themselves.
Nothing from Django's source is stored in this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import unittest
from pathlib import Path


def django_tests_dir() -> Path:
    import django

    version = django.__version__
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "surpdb"
    dest = root / f"django-{version}-tests"
    if (dest / "cache" / "tests.py").exists():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"django=={version}",
                "-d",
                tmp,
            ],
            check=True,
            timeout=600,
        )
        (sdist,) = Path(tmp).glob("*.tar.gz")
        prefix = f"{sdist.name[: -len('.tar.gz')]}/tests/cache/"
        staging = Path(tmp) / "out"
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if m.name.lower().startswith(prefix.lower())]
            for m in members:
                m.name = "cache/" + m.name[len(prefix) :]
            tf.extractall(staging, members=members, filter="data")
        staging.rename(dest)
    return dest


def run(location: str) -> dict[str, object]:
    sys.path.insert(0, str(django_tests_dir()))
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="surpdb-django-suite",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "cache"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CACHES={"default": {"BACKEND": "surpdb.django.SurpdbCache", "LOCATION": location}},
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()
    from cache.tests import BaseCacheTests, caches_setting_for_tests
    from django.test import TestCase, override_settings
    from django.test.runner import DiscoverRunner
    from django.test.utils import setup_test_environment, teardown_test_environment

    @override_settings(
        CACHES=caches_setting_for_tests(
            BACKEND="surpdb.django.SurpdbCache",
            LOCATION=location,
        )
    )
    class SurpdbCacheTests(BaseCacheTests, TestCase):
        pass

    setup_test_environment()
    runner = DiscoverRunner(verbosity=0, interactive=False)
    old = runner.setup_databases()
    try:
        suite = unittest.TestLoader().loadTestsFromTestCase(SurpdbCacheTests)
        result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    finally:
        runner.teardown_databases(old)
        teardown_test_environment()
    return {
        "django": django.__version__,
        "run": result.testsRun,
        "failures": [t.id() for t, _ in result.failures],
        "errors": [t.id() for t, _ in result.errors],
        "skipped": {t.id().rsplit(".", 1)[-1]: why for t, why in result.skipped},
        "passed": result.testsRun - len(result.failures) - len(result.errors) - len(result.skipped),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write the counts here")
    a = ap.parse_args()
    import surpdb

    with tempfile.TemporaryDirectory() as d, surpdb.Server(d, size="64MiB"):
        counts = run(d)
    print(json.dumps(counts, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(counts))
    return 0 if not counts["failures"] and not counts["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
