"""The shipped _native.pyi matches the built extension (mypy's stubtest)."""

from __future__ import annotations

import subprocess
import sys


def test_stubs_match_the_extension() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "surpdb._native"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
