"""A real redis-server (Debian's package) on a loopback port, for the tiered-mode tests and
benchmarks: started, stopped, killed, paused and restarted by the test itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    """redis-server on 127.0.0.1:`port`, data in `dir`. `durable`: append-only file with an
    fsync per write, so a SIGKILL loses nothing it acknowledged. `tls`: (cert, key, ca)
    paths to serve TLS on the port instead of plain TCP."""

    def __init__(
        self, dir: str, durable: bool = False, tls: tuple[str, str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.dir = dir
        self.durable = durable
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--dir", self.dir]
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.tls:
            cert, key, ca = self.tls
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert]
            args += ["--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.cli("PING") != "PONG":
            assert self.proc.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.01)

    def cli(self, *args: str) -> str:
        cmd = ["redis-cli", "-p", str(self.port)]
        if self.tls:
            cmd += ["--tls", "--cacert", self.tls[2]]
        r = subprocess.run([*cmd, *args], capture_output=True, timeout=10)
        return r.stdout.decode(errors="replace").strip()

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """SIGKILL (what a crash leaves)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
