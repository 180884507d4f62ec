"""The WSGI entry point (gunicorn deploysite.wsgi:application)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deploysite.settings")

from django.conf import settings  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()

if settings.CACHE == "surpdb":
    # Attach now: under gunicorn --preload this happens in the master, and the workers it
    # forks inherit the client (the pre-fork pattern surpdb supports). Other backends would
    # share one socket between the workers, so they connect in each worker, as usual.
    cache.get("deploy:preload")
