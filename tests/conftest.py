"""Fixtures: a real surpd daemon per test, on a fresh directory."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

import surpdb


def pytest_configure(config: pytest.Config) -> None:
    # Refuse a debug build of the extension: timings and crash behaviour would mislead.
    import surpdb._native as native

    if "debug" in os.path.basename(native.__file__):  # pragma: no cover
        pytest.exit("surpdb._native is a debug build; reinstall with pip install .", 2)


@pytest.fixture
def store_dir(tmp_path: os.PathLike[str]) -> str:
    return os.fspath(tmp_path / "store")


@pytest.fixture
def server(store_dir: str) -> Iterator[surpdb.Server]:
    srv = surpdb.Server(store_dir, size="32MiB")
    try:
        yield srv
    finally:
        srv.stop()
        if "panicked" in srv.log:
            sys.stderr.write(srv.log)
            pytest.fail("surpd panicked")


@pytest.fixture
def client(server: surpdb.Server) -> surpdb.Client:
    return surpdb.connect(server.path)
