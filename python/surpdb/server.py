"""Start and stop a surpd daemon from Python (tests, scripts, development)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from types import TracebackType

from . import errors
from .errors import Error, Timeout

__all__ = ["Server", "default_dir"]


def default_dir() -> str:
    """The data directory used when none is given: $SURPDB_DIR, else /var/lib/surpdb when it
    is writable (the systemd unit's StateDirectory), else ~/.local/state/surpdb."""
    env = os.environ.get("SURPDB_DIR")
    if env:
        return env
    if os.access("/var/lib/surpdb", os.W_OK):
        return "/var/lib/surpdb"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "surpdb")


def _startup_error(code: int, log: str) -> Exception:
    """The typed exception the daemon reported (``surpdb: ClassName: message``) if any."""
    for line in reversed(log.splitlines()):
        if line.startswith("surpdb: "):
            name, _, msg = line[len("surpdb: ") :].partition(": ")
            if name == "OSError":
                return OSError(msg)
            cls = getattr(errors, name, None)
            if isinstance(cls, type) and issubclass(cls, Error):
                return cls(msg)
            return Error(line)
    return Error(f"surpd exited with status {code} before it was ready: {log.strip()}")


class Server:
    """A surpd daemon in a child process, serving ``path``.

    The constructor returns once the daemon has validated (or created) the segment and
    serves requests. ``stop()`` (or leaving the ``with`` block) sends SIGTERM: the daemon
    applies what is queued, flushes and marks the segment cleanly stopped.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        size: str | int | None = "256MiB",
        config: str | os.PathLike[str] | None = None,
        ready_timeout: float = 30.0,
        env: dict[str, str] | None = None,
        **settings: str | int,
    ) -> None:
        """Start ``surpdb serve`` on ``path``. ``settings`` are any of serve's options
        (``max_value``, ``policy``, ``max_clients``, ``queue_bytes``, ``durability``,
        ``flush_interval_ms``, ``group``, ``log_level``, ``records_size``, ``codec``,
        ``train_after``); ``env`` replaces the child's
        environment (e.g. to set NOTIFY_SOCKET)."""
        self.path = os.fspath(path) if path is not None else default_dir()
        args = [sys.executable, "-m", "surpdb", "serve", self.path]
        if size is not None:  # None: the config file's (or the default) size
            args += ["--size", str(size)]
        if config is not None:
            args += ["--config", os.fspath(config)]
        for name, value in settings.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        rfd, wfd = os.pipe()
        args += ["--ready-fd", str(wfd)]
        # The daemon stops once every holder of this pipe's write end has exited: this
        # process and children it forks (not exec'd ones: the descriptor is close-on-exec).
        # A parent that dies without stop() then leaves no daemon behind.
        parent_r, self._parent_w = os.pipe()
        args += ["--parent-fd", str(parent_r)]
        # The daemon's log goes to a file, not a pipe: nobody reads a pipe while it serves,
        # and a full pipe would block the daemon.
        self._log = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(
                args,
                pass_fds=(wfd, parent_r),
                stdin=subprocess.DEVNULL,
                stderr=self._log,
                env=env,
            )
        except BaseException:
            os.close(self._parent_w)
            raise
        finally:
            os.close(wfd)
            os.close(parent_r)
        try:
            self._wait_ready(rfd, ready_timeout)
        except BaseException:
            self.kill()
            raise
        finally:
            os.close(rfd)

    def _wait_ready(self, rfd: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        got = b""
        while b"READY=1" not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"surpd did not report ready within {timeout:.1f}s")
            r, _, _ = select.select([rfd], [], [], left)
            if not r:
                continue
            chunk = os.read(rfd, 64)
            if not chunk:  # the daemon closed the pipe without READY: it exited
                code = self._proc.wait(timeout=5)
                raise _startup_error(code, self.log)
            got += chunk

    @property
    def pid(self) -> int:
        return self._proc.pid

    def running(self) -> bool:
        return self._proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        self._close_log()
        return code

    def signal(self, sig: int) -> None:
        """Send a signal (SIGHUP reloads the settings)."""
        self._proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (a crash, for tests) and reap."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._parent_w >= 0:
            os.close(self._parent_w)
            self._parent_w = -1
        if not self._log.closed:
            self._final_log = self.log
            self._log.close()

    @property
    def log(self) -> str:
        """What the daemon has written to stderr so far."""
        if self._log.closed:
            return self._final_log
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<surpdb.Server {self.path!r} pid={self._proc.pid}>"
