"""Expiry: an expired item is never returned, and expirations are counted."""

from __future__ import annotations

import time

import surpdb


def wait_until(pred, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_items_expire(client: surpdb.Client) -> None:
    client.set("short", "v", ttl=0.3)
    client.set("long", "v", ttl=3600)
    client.set("never", "v")
    assert client.get("short") == "v"
    # The TTL itself is what is tested here: time has to pass.
    time.sleep(0.35)
    assert client.get("short") is None
    assert not client.has_key("short")
    assert client.get_many(["short", "long", "never"]) == {"long": "v", "never": "v"}
    # The daemon's sweep unlinks it and counts it.
    assert wait_until(lambda: client.stats()["expirations"] >= 1)
    assert client.stats()["items"] == 2


def test_add_over_an_expired_item(client: surpdb.Client) -> None:
    client.set("k", 1, ttl=0.05)
    time.sleep(0.06)
    assert client.add("k", 2) is True
    assert client.get("k") == 2


def test_touch_changes_expiry(client: surpdb.Client) -> None:
    client.set("k", 1, ttl=0.2)
    assert client.touch("k", ttl=3600) is True
    client.set("gone", 1, ttl=3600)
    assert client.touch("gone", ttl=0.05) is True
    assert client.touch("absent", ttl=10) is False
    time.sleep(0.25)
    assert client.get("k") == 1
    assert client.get("gone") is None
    assert client.touch("k") is True  # None: never expire
    assert client.stats()["touches"] == 3


def test_incr_keeps_the_ttl(client: surpdb.Client) -> None:
    client.set("n", 1, ttl=0.2)
    assert client.incr("n") == 2
    time.sleep(0.25)
    assert client.get("n") is None


def test_delete_of_an_expired_item_reports_absent(client: surpdb.Client) -> None:
    client.set("k", 1, ttl=0.05)
    time.sleep(0.06)
    assert client.delete("k") is False
