"""Django cache backend.

    CACHES = {
        "default": {
            "BACKEND": "surpdb.django.SurpdbCache",
            "LOCATION": "/var/lib/surpdb",          # the daemon's data directory
            "TIMEOUT": 300,                         # Django's default expiry, seconds
            "OPTIONS": {
                "NAMESPACE": "pages",               # optional: this alias's own key space
                "PICKLE": True,                     # False: refuse values that need pickle
                "COMPRESS_MIN": 4096,               # zstd for values this large (0: never)
                "IGNORE_EXCEPTIONS": False,         # True: a dead daemon is a miss + warning
                "CLIENT_TIMEOUT": 5.0,              # seconds to wait for the daemon's ack
                # "MAX_ENTRIES": 1000, "CULL_FREQUENCY": 3,   # optional, Django's culling
            },
        }
    }

Reads are served from the shared mapping in the calling process; writes are acknowledged by
the daemon. The async methods do the same without a thread per call: a read completes on the
event loop (it is a memory load); aset, aadd and adelete queue the write and poll for its
acknowledgement between turns of the loop (a slow one is waited for on the process's one ack
thread); the other writes run on that ack thread. The loop never blocks.

Aliases pointing at one LOCATION share one store. Without NAMESPACE they share its default
namespace (keys kept apart by KEY_PREFIX, VERSION and KEY_FUNCTION, as with memcached), and
``clear()`` empties that namespace: every such alias. An alias with NAMESPACE owns that
namespace: its ``clear()`` empties it alone, at once (give the session cache one, so that a
``cache.clear()`` elsewhere does not log everyone out).

MAX_ENTRIES and CULL_FREQUENCY work as in Django's own backends when MAX_ENTRIES is given:
a write into a namespace holding MAX_ENTRIES entries first removes its oldest
1/CULL_FREQUENCY of them (all of them for 0). Without it, the daemon evicts by memory alone,
as with memcached and Redis (Django's default of 300 entries is not applied).

Beyond Django's API, as django-redis users have it: ``keys``, ``iter_keys`` and
``delete_pattern`` (a scan), and in O(1): ``delete_prefix(prefix)``, and tags:
``set(key, value, tags=[...])`` (also ``add``, ``set_many``, ``get_or_set``, ``aset``,
``aadd``) then ``invalidate_tags([...])``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache, memcache_key_warnings

from . import connect, default_dir
from ._native import Client
from .errors import Error, KeyTooLong, UnsafeValue, ValueTooLarge
from .memoize import aget_or_set

__all__ = ["SurpdbCache"]

log = logging.getLogger("surpdb.django")

_clients: dict[tuple[str, float, str, bool], Client] = {}
_clients_lock = threading.Lock()

T = TypeVar("T")

# Made and validated keys kept per backend instance (Django makes an instance per thread).
_KEY_CACHE_MAX = 4096

_waiter: tuple[int, ThreadPoolExecutor] | None = None


def _ack_thread() -> ThreadPoolExecutor:
    """The process's one thread that waits for write acknowledgements on behalf of async
    callers (a new one after fork: threads do not survive it)."""
    global _waiter
    w = _waiter
    if w is None or w[0] != os.getpid():
        with _clients_lock:
            w = _waiter
            if w is None or w[0] != os.getpid():
                w = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="surpdb-ack"))
                _waiter = w
    return w[1]


def _client_for(
    location: str,
    timeout: float,
    namespace: str = "",
    pickle: bool = True,
    compress_min: int = 4096,
) -> Client:
    """One client per process and location: it holds a request queue in the daemon's ring,
    and Django creates a backend instance per thread (a namespace's client shares the
    location's queue). A client survives fork()."""
    key = (location, timeout, namespace, pickle, compress_min)
    c = _clients.get(key)
    if c is None:
        base = _client_for(location, timeout, "", pickle, compress_min) if namespace else None
        with _clients_lock:
            c = _clients.get(key)
            if c is None:
                if base is not None:
                    c = base.namespace(namespace)
                else:
                    c = connect(location, timeout=timeout, pickle=pickle, compress_min=compress_min)
                _clients[key] = c
    return c


def _value_of(default: Any) -> Any:
    """get_or_set's default: called if callable, as Django's own backends do."""
    return default() if callable(default) else default


class SurpdbCache(BaseCache):
    """A Django cache backed by a surpd daemon on this host."""

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        options = params.get("OPTIONS") or {}
        self._location = location or default_dir()
        self._ignore_exceptions = bool(options.get("IGNORE_EXCEPTIONS", False))
        self._log_ignored = bool(options.get("LOG_IGNORED_EXCEPTIONS", True))
        self._client_timeout = float(options.get("CLIENT_TIMEOUT", 5.0))
        self._namespace = str(options.get("NAMESPACE") or "")
        self._pickle = bool(options.get("PICKLE", True))
        self._compress_min = int(options.get("COMPRESS_MIN", 4096))
        if self._compress_min < 0:
            raise ValueError(f"COMPRESS_MIN must be 0 or more bytes, got {self._compress_min}")
        unknown = set(options) - {
            "IGNORE_EXCEPTIONS",
            "LOG_IGNORED_EXCEPTIONS",
            "CLIENT_TIMEOUT",
            "NAMESPACE",
            "PICKLE",
            "COMPRESS_MIN",
            "MAX_ENTRIES",
            "CULL_FREQUENCY",
        }
        if unknown:
            raise ValueError(f"unknown surpdb cache OPTIONS: {', '.join(sorted(unknown))}")
        # Culling only when asked for (BaseCache set Django's default of 300 entries).
        if "MAX_ENTRIES" not in options and "max_entries" not in params:
            self._max_entries = None  # type: ignore[assignment]
        self._made: dict[tuple[type, Any, int | None], str] = {}
        self._cached_client: Client | None = None

    @property
    def _client(self) -> Client:
        c = self._cached_client
        if c is None:
            c = _client_for(
                self._location,
                self._client_timeout,
                self._namespace,
                self._pickle,
                self._compress_min,
            )
            self._cached_client = c
        return c

    def _culled_set(
        self, k: str, value: Any, ttl: float | None, tags: Sequence[str] | None = None
    ) -> Any:
        self._cull()
        return self._client.set(k, value, ttl=ttl, tags=self._tags(tags))

    def _tags(self, tags: Sequence[str] | None) -> list[str] | None:
        """Tag names as stored: behind KEY_PREFIX and its length (so that prefix "a" with
        tag "b:c" and prefix "a:b" with tag "c" stay apart), so that caches sharing a
        namespace with other prefixes keep their tags apart."""
        if tags is None:
            return None
        if isinstance(tags, (str, bytes)):
            raise TypeError("tags must be a list of tag names, not one name")
        p = self.key_prefix
        return [f"{len(p)}:{p}:{t}" if p else str(t) for t in tags]

    def _cull(self) -> None:
        """Django's culling, as its own backends do it before a write: a namespace holding
        MAX_ENTRIES entries loses its oldest 1/CULL_FREQUENCY (all of them for 0)."""
        m = self._max_entries
        if m is None:
            return
        c = self._client
        n = c.namespace_items()
        if n >= m:
            if self._cull_frequency == 0:
                c.clear()
            elif n // self._cull_frequency > 0:
                c.cull(n // self._cull_frequency)

    def _key(self, key: Any, version: int | None) -> str:
        """make_and_validate_key, remembered: Django's key function, prefix and version are
        fixed per instance, so a key made once is the same key next time. A key that draws a
        key warning is not remembered, so it warns on every call as Django's own do."""
        # The type is part of it: 1, 1.0 and True are equal dict keys but make other keys.
        ck = (key.__class__, key, version)
        try:
            return self._made[ck]
        except KeyError:
            pass
        except TypeError:  # an unhashable key: Django's key function decides
            return self.make_and_validate_key(key, version=version)
        k = self.make_and_validate_key(key, version=version)
        if next(iter(memcache_key_warnings(k)), None) is None:
            if len(self._made) >= _KEY_CACHE_MAX:
                self._made.clear()
            self._made[ck] = k
        return k

    def _ignored(self, what: str, e: Error, fallback: T) -> T:
        if not self._ignore_exceptions:
            raise e
        if self._log_ignored:
            log.warning("surpdb cache %s on %s failed, ignored: %s", what, self._location, e)
        return fallback

    def _call(self, what: str, fn: Callable[[], T], fallback: T) -> T:
        """Run a store operation; with IGNORE_EXCEPTIONS, a store failure (daemon down, queue
        or segment full, ...) becomes `fallback` and a logged warning. Bad input (a key or
        value too large) is always raised."""
        try:
            return fn()
        except (ValueTooLarge, KeyTooLong, UnsafeValue):
            raise
        except Error as e:
            return self._ignored(what, e, fallback)

    def get_backend_timeout(self, timeout: float | None | object = DEFAULT_TIMEOUT) -> float | None:
        """Seconds until expiry (None: never; 0: do not store)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        return max(0.0, float(timeout))  # type: ignore[arg-type]

    # -- reads: from the mapping, no IPC

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        k = self._key(key, version)
        try:
            return self._client.get(k, default)
        except (ValueTooLarge, KeyTooLong, UnsafeValue):
            raise
        except Error as e:
            return self._ignored("get", e, default)

    def has_key(self, key: Any, version: int | None = None) -> bool:
        k = self._key(key, version)
        return self._call("has_key", lambda: self._client.has_key(k), False)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        made = {self._key(key, version): key for key in keys}
        got = self._call("get_many", lambda: self._client.get_many(list(made)), {})
        return {made[k]: v for k, v in got.items()}

    # -- async: reads on the loop, writes acknowledged on the process's waiter thread

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return self.get(key, default, version)

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        return self.get_many(keys, version)

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        return self.has_key(key, version)

    async def _acked(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_ack_thread(), functools.partial(fn, *args))

    async def _answer(self, ticket: int) -> Any:
        """A queued write's answer: polled between turns of the loop (the daemon answers in
        microseconds), then, if it is slow, waited for on the ack thread."""
        c = self._client
        for _ in range(64):
            r = c.poll(ticket)
            if r is not None:
                return r
            await asyncio.sleep(0)
        return await asyncio.get_running_loop().run_in_executor(_ack_thread(), c.wait, ticket)

    async def _aqueued(self, what: str, op: Callable[[], int], fallback: Any) -> Any:
        try:
            return await self._answer(op())
        except (ValueTooLarge, KeyTooLong, UnsafeValue):
            raise
        except Error as e:
            return self._ignored(what, e, fallback)

    async def aset(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        tags: Sequence[str] | None = None,
    ) -> None:
        k = self._key(key, version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0 or self._max_entries is not None or tags:
            return await self._acked(self.set, key, value, timeout, version, tags)
        await self._aqueued("set", lambda: self._client.set(k, value, ttl=ttl, wait=False), None)

    async def aadd(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        tags: Sequence[str] | None = None,
    ) -> bool:
        k = self._key(key, version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0 or self._max_entries is not None or tags:
            return await self._acked(self.add, key, value, timeout, version, tags)
        add = lambda: self._client.add(k, value, ttl=ttl, wait=False)  # noqa: E731
        return bool(await self._aqueued("add", add, False))

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return await self._acked(self.touch, key, timeout, version)

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        k = self._key(key, version)
        delete = lambda: self._client.delete(k, wait=False)  # noqa: E731
        return bool(await self._aqueued("delete", delete, False))

    async def aset_many(
        self,
        data: dict[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        tags: Sequence[str] | None = None,
    ) -> list[Any]:
        return await self._acked(self.set_many, data, timeout, version, tags)

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        return await self._acked(self.delete_many, list(keys), version)

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return await self._acked(self.incr, key, delta, version)

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return await self._acked(self.decr, key, delta, version)

    async def aclear(self) -> None:
        return await self._acked(self.clear)

    # -- writes: acknowledged by the daemon

    def set(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        tags: Sequence[str] | None = None,
    ) -> None:
        """Django's set; ``tags``: ``invalidate_tags`` with any of them removes the value."""
        k = self._key(key, version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:  # Django: a zero or negative timeout means "do not cache"
            self._call("set", lambda: self._client.delete(k), False)
            return
        self._call("set", lambda: self._culled_set(k, value, ttl, tags), False)

    def add(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        tags: Sequence[str] | None = None,
    ) -> bool:
        k = self._key(key, version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            # Stored and expired at once: it "succeeds" only if the key is absent.
            return self._call("add", lambda: not self._client.has_key(k), False)
        t = self._tags(tags)
        add = lambda: (self._cull(), self._client.add(k, value, ttl=ttl, tags=t))[1]  # noqa: E731
        return bool(self._call("add", add, False))

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        k = self._key(key, version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            return bool(self._call("touch", lambda: self._client.delete(k), False))
        return bool(self._call("touch", lambda: self._client.touch(k, ttl=ttl), False))

    def delete(self, key: Any, version: int | None = None) -> bool:
        k = self._key(key, version)
        return bool(self._call("delete", lambda: self._client.delete(k), False))

    def set_many(
        self,
        data: dict[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        tags: Sequence[str] | None = None,
    ) -> list[Any]:
        made = {self._key(key, version): key for key in data}
        if not made:
            return []
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            self._call("set_many", lambda: self._client.delete_many(list(made)), 0)
            return []
        mapping = {k: data[orig] for k, orig in made.items()}
        if self._max_entries is not None:
            # One write at a time, each culling first (as Django's set_many does).
            failed = [
                made[k]
                for k, v in mapping.items()
                if not self._call(
                    "set", functools.partial(self._culled_set, k, v, ttl, tags), False
                )
            ]
            return failed
        t = self._tags(tags)
        set_many = lambda: self._client.set_many(mapping, ttl=ttl, tags=t)  # noqa: E731
        failed = self._call("set_many", set_many, list(made))
        return [made[k] for k in failed]

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        made = [self._key(key, version) for key in keys]
        if made:
            self._call("delete_many", lambda: self._client.delete_many(made), 0)

    def invalidate_tags(self, tags: Sequence[str]) -> int:
        """Remove every value set with any of ``tags``, in O(1) whatever their number (each
        tag's key is deleted; values stored with it read as misses from then on). How many
        of the tags were in use."""
        # Raised even with IGNORE_EXCEPTIONS: a failed invalidation left silent would serve
        # stale values.
        return int(self._client.invalidate_tags(self._tags(tags) or []))

    async def ainvalidate_tags(self, tags: Sequence[str]) -> int:
        return await self._acked(self.invalidate_tags, tags)

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        k = self._key(key, version)
        try:
            return self._call("incr", lambda: self._client.incr(k, delta, default=None), None)  # type: ignore[return-value]
        except KeyError:
            raise ValueError(f"Key '{k}' not found") from None

    def decr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return self.incr(key, -delta, version=version)

    # -- key iteration, as django-redis users have it

    def _pattern(self, search: str, version: int | None) -> str:
        return self.make_key(search, version=version)

    def _unmake(self, key: str, version: int | None) -> str:
        """The key as the caller wrote it, when Django's default key function made it."""
        from django.core.cache.backends.base import default_key_func

        if self.key_func is default_key_func:
            head = f"{self.key_prefix}:{version if version is not None else self.version}:"
            if key.startswith(head):
                return key[len(head) :]
        return key

    def iter_keys(
        self, search: str = "*", itersize: int | None = None, version: int | None = None
    ) -> Iterator[str]:
        """The keys matching a glob (`*`, `?`, `[...]`), as the caller wrote them: a scan
        (every key present for the whole of it once), `itersize` index slots at a time."""
        pattern = self._pattern(search, version)
        cursor = 0
        while True:
            cursor, keys = self._client.scan(cursor, pattern, itersize or 1000)
            for k in keys:
                yield self._unmake(k, version) if isinstance(k, str) else k
            if cursor == 0:
                return

    def keys(self, search: str = "*", version: int | None = None) -> list[str]:
        return list(self.iter_keys(search, version=version))

    def delete_pattern(
        self, pattern: str, itersize: int | None = None, version: int | None = None
    ) -> int:
        """Delete every key matching a glob; how many (django-redis's ``delete_pattern``).
        A scan and deletes; for keys sharing a prefix, ``delete_prefix`` is O(1)."""
        made = self._pattern(pattern, version)
        n, cursor = 0, 0
        while True:
            cursor, keys = self._client.scan(cursor, made, itersize or 1000)
            if keys:
                n += self._client.delete_many(keys)
            if cursor == 0:
                return n

    def delete_prefix(self, prefix: str, version: int | None = None) -> None:
        """Delete every key starting with ``prefix`` (as the caller writes keys) in O(1),
        whatever their number: readers miss them at once, the daemon reclaims their space
        as it sweeps. With a KEY_FUNCTION other than Django's default, a prefix of keys is
        not a prefix of the keys made from them: a scan deletes them instead."""
        from django.core.cache.backends.base import default_key_func

        if not prefix:
            raise ValueError("delete_prefix needs a prefix; clear() empties the cache")
        if self.key_func is not default_key_func:
            escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
            self.delete_pattern(escaped + "*", version=version)
            return
        # Raised even with IGNORE_EXCEPTIONS, as invalidate_tags.
        self._client.delete_prefix(self.make_key(prefix, version=version))

    def get_or_set(
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        tags: Sequence[str] | None = None,
    ) -> Any:
        """Django's get_or_set, with a stampede lease: on a miss, one caller across every
        process of the host computes a callable default; the others wait for its value.
        ``tags`` as for ``set`` (read before the default is computed: an invalidation
        meanwhile leaves the computed value out)."""
        k = self._key(key, version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:  # do not cache: Django's own backends compute and return it
            return _value_of(default)
        try:
            self._cull()
            return self._client.get_or_set(k, default, ttl=ttl, tags=self._tags(tags))
        except (ValueTooLarge, KeyTooLong, UnsafeValue):
            raise
        except Error as e:
            value = _value_of(default)
            return self._ignored("get_or_set", e, value)

    async def aget_or_set(
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        tags: Sequence[str] | None = None,
    ) -> Any:
        """``get_or_set`` for async views: the lease is waited for on the loop, never
        blocking it. A callable ``default`` is called on the loop, as Django's own does.
        ``tags`` as for ``get_or_set``."""
        k = self._key(key, version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            return _value_of(default)

        async def compute() -> Any:
            return _value_of(default)

        try:
            if self._max_entries is not None:
                await self._acked(self._cull)
            return await aget_or_set(self._client, k, compute, ttl, tags=self._tags(tags))
        except (ValueTooLarge, KeyTooLong, UnsafeValue):
            raise
        except Error as e:
            value = _value_of(default)
            return self._ignored("get_or_set", e, value)

    def clear(self) -> None:
        self._call("clear", self._client.clear, None)

    def close(self, **kwargs: Any) -> None:
        """Nothing to close: the client is shared by the process and kept for its lifetime."""
