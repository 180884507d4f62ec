"""The surpdb exception tree. It mirrors the core crate's error enum (daemon/src/error.rs)."""

from __future__ import annotations

__all__ = [
    "Error",
    "Unavailable",
    "ValueTooLarge",
    "KeyTooLong",
    "SegmentFull",
    "QueueFull",
    "Timeout",
    "CorruptSegment",
    "IncompatibleSegment",
    "DaemonRunning",
    "ConfigError",
    "NotSupported",
    "UnsafeValue",
]


class Error(Exception):
    """Base class of every surpdb error."""


class Unavailable(Error):
    """No daemon answered in time (not started, dead, or wedged). A write that raised this
    stays queued and is applied if the daemon comes back."""


class ValueTooLarge(Error, ValueError):
    """The encoded value exceeds the segment's max_value (both sizes are in the message)."""


class KeyTooLong(Error, ValueError):
    """The key exceeds the longest key allowed (4096 bytes)."""


class SegmentFull(Error):
    """No space for a write under ``noeviction`` (or space pinned by long-held views)."""


class QueueFull(Error):
    """This process's request queue stayed full until the timeout."""


class Timeout(Error, TimeoutError):
    """A wait ran out of time."""


class CorruptSegment(Error):
    """Bytes in the shared segment failed validation."""


class IncompatibleSegment(Error):
    """The segment was written by another format version or layout."""


class DaemonRunning(Error):
    """Another surpd already serves this data directory."""


class ConfigError(Error, ValueError):
    """A bad setting."""


class NotSupported(Error):
    """Tiered mode (an ``upstream`` is configured): the operation has no upstream
    equivalent (cas, a deep merge, leases); the message names it. Nothing changed."""


class UnsafeValue(Error, TypeError):
    """A value that would be (or was) pickled, refused by a client connected with
    ``pickle=False`` or by a store served with ``pickle = false``: loading a pickle runs code,
    so such a client never stores or loads one. The message names the type."""
