"""Run the deploy project under gunicorn or uvicorn and drive it over loopback: shared by
tests/test_deploy.py and benchmarks/deploy_bench.py.

Servers run in their own process group, so stopping one also stops its workers.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

DEPLOY = Path(__file__).resolve().parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def cookie(self, name: str) -> str | None:
        """The value a Set-Cookie header gives `name`, if any."""
        jar: SimpleCookie = SimpleCookie()
        jar.load(self.headers.get("set-cookie", ""))
        morsel = jar.get(name)
        return morsel.value if morsel is not None else None

    @property
    def worker(self) -> int:
        return int(self.headers["x-worker"])


def get(port: int, path: str, cookie: str | None = None, timeout: float = 30.0) -> Reply:
    """One GET on a new connection (gunicorn's sync workers close it after each response)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        r = conn.getresponse()
        body = r.read()
        # Several Set-Cookie headers are joined with ", " here; SimpleCookie parses that.
        headers = {k.lower(): ", ".join(r.headers.get_all(k) or []) for k in r.headers}
        return Reply(r.status, headers, body)
    finally:
        conn.close()


@cache
def _gunicorn_has_control_socket() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    return "--no-control-socket" in out


def gunicorn_args(port: int, workers: int = 4) -> list[str]:
    """Sync pre-fork workers; --preload imports the app (and attaches to surpdb) in the master
    before it forks the workers."""
    args = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--preload"]
    args += ["--bind", f"{HOST}:{port}", "--chdir", str(DEPLOY), "--timeout", "60"]
    args += ["--graceful-timeout", "5"]
    if _gunicorn_has_control_socket():
        # gunicorn >= 24 listens on ~/.gunicorn/gunicorn.ctl: one path for every instance.
        args.append("--no-control-socket")
    return [*args, "deploysite.wsgi:application"]


def uvicorn_args(port: int, workers: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "--workers", str(workers),
        "--host", HOST, "--port", str(port), "--app-dir", str(DEPLOY),
        "--lifespan", "off", "--no-access-log", "--log-level", "warning",
        "--timeout-graceful-shutdown", "5", "deploysite.asgi:application",
    ]  # fmt: skip


def project_env(cache_name: str, location: str = "", **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(DEPLOY), env.get("PYTHONPATH")]))
    env["DJANGO_SETTINGS_MODULE"] = "deploysite.settings"
    env["SURPDB_DEPLOY_CACHE"] = cache_name
    env["SURPDB_DEPLOY_LOCATION"] = location
    env.update(extra)
    return env


@dataclass
class Site:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str, cookie: str | None = None, timeout: float = 30.0) -> Reply:
        return get(self.port, path, cookie, timeout)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"


def stop_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM to the server's process group, SIGKILL if it has not exited within `grace`,
    then SIGKILL to the group again for any worker left behind."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=grace)


@contextmanager
def serving(
    args: list[str], port: int, env: dict[str, str], log_path: Path, ready_timeout: float = 60.0
) -> Iterator[Site]:
    """Start a server (listening on `port`) in its own process group; ready once /health/
    answers 200. Stopped with its workers when the block ends."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args,
            cwd=DEPLOY,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    site = Site(port, proc, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{site.log[-4000:]}")
            try:
                if site.get("/health/", timeout=5).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {ready_timeout}s:\n{site.log[-4000:]}")
            time.sleep(0.05)
        yield site
    finally:
        stop_group(proc)


# -- wrk


def wrk_path() -> str | None:
    return shutil.which("wrk")


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    latency_ms: dict[str, float]  # "50%", "75%", "90%", "99%" (with --latency)
    socket_errors: dict[str, int]  # connect, read, write, timeout
    non_2xx_3xx: int
    text: str = field(repr=False)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(text: str) -> WrkResult:
    """wrk 4's report; the Socket errors and Non-2xx lines appear only when non-zero."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", text)
    if m is None:
        raise ValueError(f"no request count in wrk's output:\n{text}")
    requests, seconds = int(m[1]), float(m[2]) * _UNITS_MS[m[3]] / 1000
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    latency = {
        p: float(v) * _UNITS_MS[u]
        for p, v, u in re.findall(r"^\s+(\d+%)\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    }
    errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if se:
        errors = dict(zip(errors, map(int, se.groups()), strict=True))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests=requests,
        seconds=seconds,
        rps=float(rps[1]) if rps else requests / seconds,
        latency_ms=latency,
        socket_errors=errors,
        non_2xx_3xx=int(bad[1]) if bad else 0,
        text=text,
    )


def rotate_script(paths: list[str]) -> str:
    """A wrk Lua script whose requests go round `paths` (headers from -H on each)."""
    quoted = ", ".join(f'"{p}"' for p in paths)
    return f"""
local paths = {{{quoted}}}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format(nil, paths[i])
end
"""


def run_wrk(
    url: str,
    seconds: int = 3,
    connections: int = 16,
    threads: int = 2,
    headers: dict[str, str] | None = None,
    script: Path | None = None,
) -> WrkResult:
    exe = wrk_path()
    if exe is None:
        raise RuntimeError("wrk not installed (apt-get install wrk)")
    args = [exe, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    args += ["--timeout", "10s"]
    for k, v in (headers or {}).items():
        args += ["-H", f"{k}: {v}"]
    if script is not None:
        args += ["-s", str(script)]
    r = subprocess.run([*args, url], capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed ({r.returncode}): {r.stderr}{r.stdout}")
    return parse_wrk(r.stdout)
