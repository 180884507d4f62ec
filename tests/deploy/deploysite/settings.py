"""Settings: the cache backend is chosen by SURPDB_DEPLOY_CACHE and SURPDB_DEPLOY_LOCATION.

The per-site cache middleware wraps every view, sessions live in the cache, and there is no
database (no app needs one).
"""

from __future__ import annotations

import os
from typing import Any

CACHE = os.environ.get("SURPDB_DEPLOY_CACHE", "surpdb")
LOCATION = os.environ.get("SURPDB_DEPLOY_LOCATION", "")

_BACKENDS: dict[str, dict[str, Any]] = {
    "surpdb": {
        "BACKEND": "surpdb.django.SurpdbCache",
        "LOCATION": LOCATION,
        "OPTIONS": {
            "IGNORE_EXCEPTIONS": False,
            "CLIENT_TIMEOUT": float(os.environ.get("SURPDB_DEPLOY_CLIENT_TIMEOUT", "10")),
        },
    },
    "locmem": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": LOCATION or "deploy",
    },
    "memcached": {
        "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
        "LOCATION": LOCATION,
    },
    "redis": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": LOCATION,
    },
    "diskcache": {
        "BACKEND": "diskcache.DjangoCache",
        "LOCATION": LOCATION,
    },
}
if CACHE not in _BACKENDS:
    raise ValueError(f"SURPDB_DEPLOY_CACHE={CACHE!r}: expected one of {', '.join(_BACKENDS)}")

CACHES = {"default": {**_BACKENDS[CACHE], "TIMEOUT": 300}}

SECRET_KEY = "surpdb-deploy-test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "deploysite.urls"
WSGI_APPLICATION = "deploysite.wsgi.application"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, Any] = {}

MIDDLEWARE = [
    "deploysite.middleware.worker_header",  # outermost: also marks pages served from cache
    "django.middleware.cache.UpdateCacheMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.cache.FetchFromCacheMiddleware",
]
CACHE_MIDDLEWARE_SECONDS = 60
CACHE_MIDDLEWARE_KEY_PREFIX = "deploy"

SESSION_ENGINE = "django.contrib.sessions.backends.cache"

# Errors go to stderr (the server's log), so a failing request shows its traceback.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "WARNING"}},
}
