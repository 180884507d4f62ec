"""surpdb: a shared-memory cache and record store for Python on one host.

One daemon (``surpd``) owns every write; any number of processes read values straight out of
a shared mapping, with no socket, no syscall and no copy beyond building the Python object.

    import surpdb
    with surpdb.Server("/tmp/surp") as srv:
        c = surpdb.connect("/tmp/surp")
        c.set("greeting", {"hello": "world"}, ttl=60)
        c.get("greeting")
        rid = c.insert({"url": "https://pypi.org/project/surpdb/", "title": "records"})
        c.record(rid)
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from . import errors
from ._native import Client, Record
from .errors import (
    ConfigError,
    CorruptSegment,
    DaemonRunning,
    Error,
    IncompatibleSegment,
    KeyTooLong,
    NotSupported,
    QueueFull,
    SegmentFull,
    Timeout,
    Unavailable,
    UnsafeValue,
    ValueTooLarge,
)
from .memoize import aget_or_set, memoize
from .server import Server, default_dir

Mapping.register(Record)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ConfigError",
    "CorruptSegment",
    "DaemonRunning",
    "Error",
    "IncompatibleSegment",
    "KeyTooLong",
    "NotSupported",
    "QueueFull",
    "Record",
    "SegmentFull",
    "Server",
    "Timeout",
    "Unavailable",
    "UnsafeValue",
    "ValueTooLarge",
    "aget_or_set",
    "connect",
    "default_dir",
    "errors",
    "memoize",
]


def connect(
    path: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 5.0,
    namespace: str | None = None,
    pickle: bool = True,
    compress_min: int = 4096,
) -> Client:
    """Attach to the store served from ``path`` (default: ``default_dir()``).

    Reads work even while the daemon is down; writes wait up to ``timeout`` seconds for the
    daemon's acknowledgement, then raise :class:`Unavailable`. With ``namespace``, the
    client's keys, ``clear()`` and counts are that namespace's alone (made on first use;
    ``Client.namespace`` also sets quotas). With ``pickle=False``, a value the encoding would
    pickle is refused (``UnsafeValue``) and so is loading one: a process that can write to
    the store can then never make this one run code. A value of at least ``compress_min``
    bytes encoded (0: never) is stored compressed with zstd when that saves a tenth of it;
    every client reads it whatever its own setting.
    """
    where = os.fspath(path) if path is not None else default_dir()
    c = Client(where, timeout, pickle, compress_min)
    return c.namespace(namespace) if namespace else c
