"""One wheel for every supported CPython: `maturin build --release` makes a cp311-abi3
manylinux wheel, and that same file installs and serves on 3.11, 3.12 and 3.13 (those the
machine has, through pyenv) with no Rust toolchain on PATH: the daemon runs inside the
Python process (`surpdb serve`), so the wheel is all a host needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("cargo") is None, reason="building a wheel needs cargo"),
]

SCRIPT = """
import sys, tempfile
import surpdb
with tempfile.TemporaryDirectory() as d, surpdb.Server(d, size="32MiB") as srv:
    c = surpdb.connect(d)
    c.set("who", {"python": list(sys.version_info[:2])})
    assert c.get("who") == {"python": list(sys.version_info[:2])}
    assert c.incr("n", 5, default=0) == 5
    print("ok", sys.version_info[0], sys.version_info[1])
"""


def interpreters() -> list[str]:
    """This interpreter, and pyenv's 3.11 / 3.12 / 3.13 when the machine has them."""
    found = {sys.version_info[:2]: sys.executable}
    pyenv = shutil.which("pyenv")
    if pyenv:
        for v in ("3.11.7", "3.12.1", "3.13.0"):
            r = subprocess.run([pyenv, "prefix", v], capture_output=True, text=True, timeout=60)
            exe = Path(r.stdout.strip(), "bin", "python3")
            if r.returncode != 0 or not exe.exists():
                continue
            out = subprocess.run(
                [str(exe), "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            major, minor = map(int, out.stdout.split())
            found.setdefault((major, minor), str(exe))
    return [found[k] for k in sorted(found)]


def test_one_abi3_wheel_installs_and_serves_on_every_python(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "maturin", "build", "--release", "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    name = wheels[0].name
    assert "-cp311-abi3-manylinux" in name, name
    # No Rust toolchain where the wheel is installed and run.
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if not Path(p, "cargo").exists()
    )
    assert shutil.which("cargo", path=path) is None
    seen = []
    for exe in interpreters():
        venv = tmp_path / f"venv-{len(seen)}"
        subprocess.run([exe, "-m", "venv", str(venv)], check=True, timeout=120)
        py = venv / "bin" / "python"
        env = {**os.environ, "PATH": path, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        env.pop("PYENV_VERSION", None)
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "--no-index", str(wheels[0])],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        r = subprocess.run(
            [str(py), "-c", SCRIPT],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr
        seen.append(r.stdout.split()[1:])
    assert ["3", f"{sys.version_info[1]}"] in seen
    print("\nthe one wheel served on Python", ", ".join(".".join(v) for v in seen))
