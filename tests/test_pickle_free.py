"""A pickle-free client (connect(pickle=False)) and a pickle-free store (pickle = false):
a value that needs pickle is refused both ways, with the type named, and nothing else is."""

from __future__ import annotations

import datetime
import os
from collections import OrderedDict

import pytest

import surpdb

NATIVE = {"n": None, "b": True, "i": 2**70, "f": 1.5, "s": "ü", "y": b"\x00", "l": [1, (2, 3)]}


def test_a_pickle_free_client_refuses_to_store_or_load_a_pickle(server: surpdb.Server) -> None:
    safe = surpdb.connect(server.path, pickle=False)
    other = surpdb.connect(server.path)
    safe.set("native", NATIVE)
    assert safe.get("native") == NATIVE
    for bad, name in (
        ({1, 2}, "set"),
        ([1, {"deep": datetime.date(2026, 1, 1)}], "date"),
        (OrderedDict(a=1), "OrderedDict"),
        ("\ud800", "str with lone surrogates"),
    ):
        with pytest.raises(surpdb.UnsafeValue, match=name) as e:
            safe.set("k", bad)
        assert isinstance(e.value, TypeError)
        assert safe.get("k") is None, "nothing was stored"
    with pytest.raises(surpdb.UnsafeValue):
        safe.set_many({"a": 1, "b": {3}})
    with pytest.raises(surpdb.UnsafeValue):
        safe.append("lst", {1})
    with pytest.raises(surpdb.UnsafeValue):
        safe.insert({"when": datetime.date(2026, 1, 1)})
    # The batch paths too (before, insert_many and train encoded without the check).
    before = safe.stats()["records"]
    with pytest.raises(surpdb.UnsafeValue, match="set"):
        safe.insert_many([{"ok": 1}, {"tags": {1, 2}}])
    assert safe.stats()["records"] == before, "nothing of the batch was stored"
    with pytest.raises(surpdb.UnsafeValue, match="date"):
        safe.train([{"when": datetime.date(2026, 1, 1)}] * 10)
    # A pickle someone else stored: this client will not load it (nor run its code).
    other.set("pickled", {"x": {1, 2}})
    with pytest.raises(surpdb.UnsafeValue, match="pickle"):
        safe.get("pickled")
    with pytest.raises(surpdb.UnsafeValue):
        safe.get_many(["native", "pickled"])
    rid = other.insert({"when": datetime.date(2026, 1, 1)})
    with pytest.raises(surpdb.UnsafeValue):
        safe.record(rid)
    with pytest.raises(surpdb.UnsafeValue):
        safe.record(rid, lazy=True)
    assert other.get("pickled") == {"x": {1, 2}}, "a pickle=True client still reads it"
    assert safe.namespace("n").get("k") is None
    with pytest.raises(surpdb.UnsafeValue):
        safe.namespace("n").set("k", {1})


def test_a_store_served_with_pickle_false_refuses_every_client(
    tmp_path: os.PathLike[str],
) -> None:
    d = os.path.join(tmp_path, "store")
    with surpdb.Server(d, size="32MiB", pickle="false"):
        c = surpdb.connect(d)  # a client that would pickle
        c.set("ok", NATIVE)
        with pytest.raises(surpdb.UnsafeValue, match="refuses pickles"):
            c.set("k", {1, 2})
        with pytest.raises(surpdb.UnsafeValue):
            c.add("k", [datetime.date(2026, 1, 1)])
        with pytest.raises(surpdb.UnsafeValue):
            c.insert({"when": datetime.date(2026, 1, 1)})
        v, ver = c.gets("ok")
        with pytest.raises(surpdb.UnsafeValue):
            c.cas("ok", {1}, ver)
        assert c.get("ok") == NATIVE and c.get("k") is None


def test_django_option_pickle_false(server: surpdb.Server) -> None:
    pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure(SECRET_KEY="surpdb-tests", USE_TZ=True)
    from surpdb.django import SurpdbCache

    strict = SurpdbCache(server.path, {"OPTIONS": {"PICKLE": False, "IGNORE_EXCEPTIONS": True}})
    strict.set("k", {"fine": [1, 2]})
    assert strict.get("k") == {"fine": [1, 2]}
    with pytest.raises(surpdb.UnsafeValue):  # bad input is raised, not ignored
        strict.set("k", {1, 2})
