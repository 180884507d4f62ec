"""Anchors' servers for the benchmarks: memcached and redis-server on loopback, started and
stopped by the benchmark itself (Debian packages memcached and redis-server)."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


def scratch_dir(prefix: str, parent: str | None = None) -> str:
    """A new directory for a benchmark's data, removed when the benchmark exits (data files
    are allocated in full, so leftovers would fill the disk run after run)."""
    d = tempfile.mkdtemp(prefix=prefix, dir=parent)
    atexit.register(shutil.rmtree, d, True)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def memcached_args(port: int, megabytes: int = 256) -> list[str]:
    exe = shutil.which("memcached")
    if not exe:
        raise RuntimeError("memcached not installed (apt-get install memcached)")
    args = [exe, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", str(megabytes)]
    if os.geteuid() == 0:
        args += ["-u", "root"]  # memcached refuses to run as root without naming a user
    return args


def redis_args(port: int, *extra: str) -> list[str]:
    exe = shutil.which("redis-server")
    if not exe:
        raise RuntimeError("redis-server not installed (apt-get install redis-server)")
    return [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *extra]


@contextmanager
def running(args: list[str], port: int) -> Iterator[None]:
    """Run a server process until the block ends; ready once its port accepts connections."""
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield
    finally:
        p.terminate()
        p.wait(timeout=10)
