"""The README's examples run, and CI runs the README's test command."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_python_examples_run() -> None:
    examples = blocks("python")
    assert examples
    for code in examples:
        r = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr


def test_ci_runs_the_readme_test_command() -> None:
    commands = [line.strip() for b in blocks("sh") for line in b.splitlines()]
    test_cmd = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci


def test_demo_runs(tmp_path: pathlib.Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "surpdb", "demo", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "got {'hello': 'world'" in r.stdout
    assert "stopped cleanly" in r.stdout
