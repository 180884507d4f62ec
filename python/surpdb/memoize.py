"""``@memoize``: a function's results cached in surpdb, computed once across every process of
the host (a stampede lease), for plain and ``async`` functions alike."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from ._native import Client, encode_value
from .errors import KeyTooLong, NotSupported, Timeout

F = TypeVar("F", bound=Callable[..., Any])

_MISSING = object()


def _client(client_or_path: Client | str | os.PathLike[str]) -> Callable[[], Client]:
    if isinstance(client_or_path, Client):
        return lambda: client_or_path
    from . import connect

    path = os.fspath(client_or_path)
    made: dict[int, Client] = {}

    def get() -> Client:
        # One client per process (made on first use: a decorated module imported before a
        # fork makes its client in each worker).
        pid = os.getpid()
        c = made.get(pid)
        if c is None:
            c = made[pid] = connect(path)
        return c

    return get


async def aget_or_set(
    c: Client,
    k: str | bytes,
    compute: Callable[[], Awaitable[Any]],
    ttl: float | None,
    lease: bool = True,
    lease_timeout: float = 30.0,
    stale_ttl: float | None = None,
    early: float = 0.0,
    tags: Iterable[str | bytes] | None = None,
) -> Any:
    """``Client.get_or_set`` for a coroutine: the lease is waited for on the loop (never
    blocking it), with this call's own token (another coroutine of this process is another
    caller). Without a lease, or on a tiered daemon (which keeps none: the upstream is the
    key's home), it computes and stores with ``add`` (the first value stored wins).
    ``stale_ttl``, ``early`` and ``tags`` as in ``Client.get_or_set``: the tags' tokens are
    read before the computation is awaited, so an ``invalidate_tags`` meanwhile leaves the
    value it stores stale, never current."""
    if tags is not None and not isinstance(tags, str | bytes):
        tags = list(tags)  # read once per path below; one name is refused by the binding
    window = _refresh_window(ttl, stale_ttl, early)
    if ttl is not None and stale_ttl:
        ttl += stale_ttl
    got, left = c.get_with_ttl(k, _MISSING)
    if got is not _MISSING:
        if lease and window and left is not None and left <= window:
            return await _arefresh(c, k, got, compute, ttl, lease_timeout, tags)
        return got

    async def unleased() -> Any:
        head = c._tag_head(tags)
        value = await compute()
        c._set_with_head(k, value, head, ttl, add=True)
        return value

    if not lease:
        return await unleased()
    token = int.from_bytes(os.urandom(8), "little")
    pause = 0.0002
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lease_timeout
    while True:
        try:
            state = c.try_lease(k, token, lease_timeout)
        except NotSupported:
            return await unleased()
        if state == 1:
            # Ours: anything failing before the value is stored gives it back.
            try:
                head = c._tag_head(tags)
                value = await compute()
                c._set_with_head(k, value, head, ttl)
            except BaseException:
                c.unlease(k, token)
                raise
            return value
        got = c.get(k, _MISSING)
        if got is not _MISSING:
            return got
        if state == 2:
            if loop.time() >= deadline:
                raise Timeout(f"another process computed {k!r} for too long")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)


_REFRESH_SUFFIX = "\x00~refresh"  # the binding's companion key for a refresh lease


def _refresh_window(ttl: float | None, stale_ttl: float | None, early: float) -> float:
    """Seconds before the stored expiry in which one caller refreshes (checked as the
    binding checks them)."""
    if stale_ttl is not None and not 0 <= stale_ttl <= 1e10:
        raise ValueError(f"stale_ttl must be seconds from 0 to 1e10 or None, got {stale_ttl}")
    if not 0 <= early <= 1e10:
        raise ValueError(f"early must be seconds from 0 to 1e10, got {early}")
    window = (stale_ttl or 0.0) + early
    if window and ttl is None:
        raise ValueError("stale_ttl and early need a ttl: a value without one never goes stale")
    if early and ttl is not None and early >= ttl:
        raise ValueError(f"early ({early} s) must be less than ttl ({ttl} s)")
    return window


async def _arefresh(
    c: Client,
    k: str | bytes,
    current: Any,
    compute: Callable[[], Awaitable[Any]],
    ttl: float | None,
    lease_timeout: float,
    tags: Any = None,
) -> Any:
    """One caller recomputes a value in its refresh window; the others return it as it is."""
    rk: str | bytes = k + _REFRESH_SUFFIX if isinstance(k, str) else k + _REFRESH_SUFFIX.encode()
    token = int.from_bytes(os.urandom(8), "little")
    try:
        if c.try_lease(rk, token, lease_timeout) != 1:
            return current
    except (NotSupported, KeyTooLong):  # tiered (no leases), or no room for the suffix
        return current
    try:
        head = c._tag_head(tags)
        value = await compute()
        c._set_with_head(k, value, head, ttl)
    finally:
        c.unlease(rk, token)
    return value


def memoize(
    client_or_path: Client | str | os.PathLike[str],
    ttl: float | None = None,
    key: Callable[..., str] | None = None,
    lease: bool = True,
    lease_timeout: float = 30.0,
    stale_ttl: float | None = None,
    early: float = 0.0,
    tags: Iterable[str | bytes] | Callable[..., Iterable[str | bytes]] | None = None,
) -> Callable[[F], F]:
    """Cache ``fn(*args, **kwargs)`` under a key made from the function's module, name and
    arguments (the surpdb encoding of ``(args, kwargs)``, hashed: stable across processes
    and restarts), or ``key(*args, **kwargs)``. With ``lease`` (the default), a result missing
    from the cache is computed once across all processes; the others wait for it. The
    decorated function gains ``.invalidate(*args, **kwargs)`` and ``.key(*args, **kwargs)``.
    With ``stale_ttl`` or ``early``, one caller recomputes a result near or past its
    ``ttl`` while the others get it as it is (see ``Client.get_or_set``). ``tags`` (a list
    of names, or a function of the call's arguments that returns one) tags each result:
    ``invalidate_tags`` with any of them makes it a miss."""
    _refresh_window(ttl, stale_ttl, early)  # bad arguments fail at decoration
    client = _client(client_or_path)

    def decorate(fn: F) -> F:
        name = f"{fn.__module__}.{fn.__qualname__}"

        def make_key(*args: Any, **kwargs: Any) -> str:
            if key is not None:
                return key(*args, **kwargs)
            digest = hashlib.blake2b(
                encode_value((args, sorted(kwargs.items()))), digest_size=16
            ).hexdigest()
            return f"memoize:{name}:{digest}"

        def tags_of(*args: Any, **kwargs: Any) -> Any:
            t = tags(*args, **kwargs) if callable(tags) else tags
            return t if t is None or isinstance(t, str | bytes) else list(t)

        def invalidate(*args: Any, **kwargs: Any) -> bool:
            return bool(client().delete(make_key(*args, **kwargs)))

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                c, k = client(), make_key(*args, **kwargs)
                compute = lambda: fn(*args, **kwargs)  # noqa: E731
                t = tags_of(*args, **kwargs)
                return await aget_or_set(
                    c, k, compute, ttl, lease, lease_timeout, stale_ttl, early, tags=t
                )

            awrapper.invalidate = invalidate  # type: ignore[attr-defined]
            awrapper.key = make_key  # type: ignore[attr-defined]
            return awrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            k = make_key(*args, **kwargs)
            compute = functools.partial(fn, *args, **kwargs)
            return client().get_or_set(
                k,
                compute,
                ttl=ttl,
                lease=lease,
                lease_timeout=lease_timeout,
                stale_ttl=stale_ttl,
                early=early,
                tags=tags_of(*args, **kwargs),
            )

        wrapper.invalidate = invalidate  # type: ignore[attr-defined]
        wrapper.key = make_key  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
