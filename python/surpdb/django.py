"""Django cache backend.

    CACHES = {
        "default": {
            "BACKEND": "surpdb.django.SurpdbCache",
            "LOCATION": "/var/lib/surpdb",          # the daemon's data directory
            "TIMEOUT": 300,                         # Django's default expiry, seconds
            "OPTIONS": {
                "IGNORE_EXCEPTIONS": False,         # True: a dead daemon is a miss + warning
                "CLIENT_TIMEOUT": 5.0,              # seconds to wait for the daemon's ack
            },
        }
    }

Reads are served from the shared mapping in the calling process; writes are acknowledged by
the daemon. Every alias pointing at one LOCATION shares one store (keys are kept apart by
KEY_PREFIX, VERSION and KEY_FUNCTION, as with memcached), and ``clear()`` empties all of it.
MAX_ENTRIES and CULL_FREQUENCY are not used: the daemon evicts by segment size.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

from . import connect, default_dir
from ._native import Client
from .errors import Error, KeyTooLong, ValueTooLarge

__all__ = ["SurpdbCache"]

log = logging.getLogger("surpdb.django")

_clients: dict[tuple[str, float], Client] = {}
_clients_lock = threading.Lock()

T = TypeVar("T")


def _client_for(location: str, timeout: float) -> Client:
    """One client per process and location: it holds a request queue in the daemon's ring,
    and Django creates a backend instance per thread. A client survives fork()."""
    key = (location, timeout)
    c = _clients.get(key)
    if c is None:
        with _clients_lock:
            c = _clients.get(key)
            if c is None:
                c = connect(location, timeout=timeout)
                _clients[key] = c
    return c


class SurpdbCache(BaseCache):
    """A Django cache backed by a surpd daemon on this host."""

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        options = params.get("OPTIONS") or {}
        self._location = location or default_dir()
        self._ignore_exceptions = bool(options.get("IGNORE_EXCEPTIONS", False))
        self._log_ignored = bool(options.get("LOG_IGNORED_EXCEPTIONS", True))
        self._client_timeout = float(options.get("CLIENT_TIMEOUT", 5.0))
        unknown = set(options) - {
            "IGNORE_EXCEPTIONS",
            "LOG_IGNORED_EXCEPTIONS",
            "CLIENT_TIMEOUT",
            "MAX_ENTRIES",
            "CULL_FREQUENCY",
        }
        if unknown:
            raise ValueError(f"unknown surpdb cache OPTIONS: {', '.join(sorted(unknown))}")

    @property
    def _client(self) -> Client:
        return _client_for(self._location, self._client_timeout)

    def _call(self, what: str, fn: Callable[[], T], fallback: T) -> T:
        """Run a store operation; with IGNORE_EXCEPTIONS, a store failure (daemon down, queue
        or segment full, ...) becomes `fallback` and a logged warning. Bad input (a key or
        value too large) is always raised."""
        try:
            return fn()
        except (ValueTooLarge, KeyTooLong):
            raise
        except Error as e:
            if not self._ignore_exceptions:
                raise
            if self._log_ignored:
                log.warning("surpdb cache %s on %s failed, ignored: %s", what, self._location, e)
            return fallback

    def get_backend_timeout(self, timeout: float | None | object = DEFAULT_TIMEOUT) -> float | None:
        """Seconds until expiry (None: never; 0: do not store)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        return max(0.0, float(timeout))  # type: ignore[arg-type]

    # -- reads: from the mapping, no IPC

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        k = self.make_and_validate_key(key, version=version)
        return self._call("get", lambda: self._client.get(k, default), default)

    def has_key(self, key: Any, version: int | None = None) -> bool:
        k = self.make_and_validate_key(key, version=version)
        return self._call("has_key", lambda: self._client.has_key(k), False)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        made = {self.make_and_validate_key(key, version=version): key for key in keys}
        got = self._call("get_many", lambda: self._client.get_many(list(made)), {})
        return {made[k]: v for k, v in got.items()}

    # -- writes: acknowledged by the daemon

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        k = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:  # Django: a zero or negative timeout means "do not cache"
            self._call("set", lambda: self._client.delete(k), False)
            return
        self._call("set", lambda: self._client.set(k, value, ttl=ttl), False)

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        k = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            # Stored and expired at once: it "succeeds" only if the key is absent.
            return self._call("add", lambda: not self._client.has_key(k), False)
        return bool(self._call("add", lambda: self._client.add(k, value, ttl=ttl), False))

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        k = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            return bool(self._call("touch", lambda: self._client.delete(k), False))
        return bool(self._call("touch", lambda: self._client.touch(k, ttl=ttl), False))

    def delete(self, key: Any, version: int | None = None) -> bool:
        k = self.make_and_validate_key(key, version=version)
        return bool(self._call("delete", lambda: self._client.delete(k), False))

    def set_many(
        self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        made = {self.make_and_validate_key(key, version=version): key for key in data}
        if not made:
            return []
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            self._call("set_many", lambda: self._client.delete_many(list(made)), 0)
            return []
        mapping = {k: data[orig] for k, orig in made.items()}
        failed = self._call("set_many", lambda: self._client.set_many(mapping, ttl=ttl), list(made))
        return [made[k] for k in failed]

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        made = [self.make_and_validate_key(key, version=version) for key in keys]
        if made:
            self._call("delete_many", lambda: self._client.delete_many(made), 0)

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        k = self.make_and_validate_key(key, version=version)
        try:
            return self._call("incr", lambda: self._client.incr(k, delta, default=None), None)  # type: ignore[return-value]
        except KeyError:
            raise ValueError(f"Key '{k}' not found") from None

    def decr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return self.incr(key, -delta, version=version)

    def clear(self) -> None:
        self._call("clear", self._client.clear, None)

    def close(self, **kwargs: Any) -> None:
        """Nothing to close: the client is shared by the process and kept for its lifetime."""
