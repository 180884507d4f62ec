"""Running surpd as a service: notify protocol, config, permissions, signals, stats formats."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import surpdb
from surpdb.cli import prometheus, systemd_unit


class NotifyListener:
    """A real NOTIFY_SOCKET: a Unix datagram socket collecting what the daemon sends."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages: list[str] = []

    def wait_for(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        for m in self.messages:
            if needle in m:
                self.messages.remove(m)
                return m
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                m = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            if needle in m:
                return m
            self.messages.append(m)
        raise AssertionError(f"no {needle!r} from the daemon; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


def test_notify_ready_status_watchdog_reload_stopping(
    store_dir: str, notify: NotifyListener
) -> None:
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="200000")
    srv = surpdb.Server(store_dir, size="32MiB", env=env)
    try:
        ready = notify.wait_for("READY=1")
        assert "STATUS=serving 0 items" in ready
        # Pings come from the apply loop, twice per WATCHDOG_USEC period.
        t0 = time.monotonic()
        for _ in range(3):
            notify.wait_for("WATCHDOG=1", timeout=2)
        assert time.monotonic() - t0 < 2
        c = surpdb.connect(store_dir)
        c.set_many({f"k{i}": i for i in range(10)})
        assert "10 items" in notify.wait_for("STATUS=serving 10 items", timeout=10)
        srv.signal(signal.SIGHUP)
        assert "MONOTONIC_USEC=" in notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
    finally:
        assert srv.stop() == 0
    notify.wait_for("STOPPING=1")


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    text = systemd_unit(user="root", group="root", config="/etc/surpdb/surpdb.toml")
    for line in [
        "Type=notify",
        "Restart=always",
        "StateDirectory=surpdb",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RemoveIPC=no",
        f"ExecStart={sys.executable} -m surpdb serve /var/lib/surpdb --config",
    ]:
        assert line in text, line
    directives = [line.split("=")[0] for line in text.splitlines() if not line.startswith("#")]
    assert "DynamicUser" not in directives and "PrivateTmp" not in directives
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "surpdb.service"
    unit.write_text(text)
    r = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if str(unit) in line or "surpdb.service" in line
    ]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def test_config_file_env_and_flags_precedence(tmp_path: Path, store_dir: str) -> None:
    cfg = tmp_path / "surpdb.toml"
    cfg.write_text(
        f'dir = "{store_dir}"\nsize = "16MiB"\nmax_value = "64KiB"\n'
        'eviction_policy = "noeviction"\nmax_clients = 12\n'
    )
    env = dict(os.environ, SURPDB_MAX_CLIENTS="20")
    # The flag (Server passes --size 24MiB) beats the file; the variable beats the file.
    with surpdb.Server(store_dir, size="24MiB", config=cfg, env=env):
        st = surpdb.connect(store_dir).stats()
        assert st["capacity"] == 24 << 20
        assert st["max_value"] == 64 << 10
        assert st["eviction_policy"] == "noeviction"
        assert st["ring_clients_max"] == 20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('size = "12 parsecs"', "size"),
        ('eviction_policy = "random"', "eviction policy"),
        ('durability = "sometimes"', "durability"),
        ("max_clients = 0", "max_clients"),
        ('group = "no-such-group-surpdb"', "no-such-group-surpdb"),
        ('log_level = "loud"', "log level"),
        ('colour = "blue"', 'unknown setting "colour"'),
        ("this is not toml", "config file"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(
    tmp_path: Path, store_dir: str, text: str, message: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(surpdb.Error, match=message) as e:
        surpdb.Server(store_dir, config=cfg)
    assert isinstance(e.value, surpdb.ConfigError | surpdb.Error)
    assert not os.path.exists(os.path.join(store_dir, "data.surp"))


def test_sighup_reloads_live_settings_and_names_the_others(tmp_path: Path, store_dir: str) -> None:
    cfg = tmp_path / "surpdb.toml"
    cfg.write_text('eviction_policy = "allkeys-lru"\n')
    srv = surpdb.Server(store_dir, size="32MiB", config=cfg)
    try:
        c = surpdb.connect(store_dir)
        assert c.stats()["eviction_policy"] == "allkeys-lru"
        cfg.write_text('eviction_policy = "noeviction"\nmax_clients = 3\nlog_level = "debug"\n')
        srv.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while c.stats()["eviction_policy"] != "noeviction" and time.monotonic() < deadline:
            c.flush()
        assert c.stats()["eviction_policy"] == "noeviction"
        c.set("k", 1)  # still serving
        assert c.get("k") == 1
    finally:
        srv.stop()
    assert "max_clients cannot change without a restart" in srv.log
    assert "reloaded settings changed=[eviction_policy,log_level]" in srv.log


def test_sync_durability_flushes_before_the_ack(store_dir: str) -> None:
    with surpdb.Server(store_dir, size="32MiB", durability="sync"):
        c = surpdb.connect(store_dir)
        for i in range(20):
            assert c.set(f"k{i}", i) is True
        assert c.incr("n") == 1
        assert c.get("k19") == 19
        assert c.stats()["sets"] == 21


def test_sigterm_stops_cleanly_and_restart_is_clean(store_dir: str) -> None:
    srv = surpdb.Server(store_dir, size="32MiB")
    c = surpdb.connect(store_dir)
    for i in range(100):
        c.set(f"k{i}", i, wait=False)
    srv.signal(signal.SIGTERM)
    assert srv.stop() == 0
    assert "stopped cleanly" in srv.log
    assert c.get("k99") == 99  # everything queued was applied before the stop
    with surpdb.Server(store_dir, size="32MiB") as srv2:
        assert "unclean" not in srv2.log


def test_stats_formats_parse_back(client: surpdb.Client) -> None:
    client.set("a", 1)
    client.get("a")
    client.get("nope")
    st = client.stats()
    text = prometheus(st, client.path, client.namespaces())
    r = subprocess.run(
        [sys.executable, "-m", "surpdb", "stats", client.path, "--prometheus"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0
    parsed: dict[str, float] = {}
    for line in r.stdout.splitlines():
        if line.startswith("#"):
            assert line.split()[1] == "TYPE" and line.split()[3] in ("counter", "gauge")
            continue
        name, value = line.rsplit(" ", 1)
        parsed[name.split("{")[0]] = float(value)
    assert parsed["surpdb_items"] == 1
    assert parsed["surpdb_hits_total"] >= 1 and parsed["surpdb_misses_total"] >= 1
    assert parsed["surpdb_eviction_policy_info"] == 1
    assert set(parsed) == {line.split("{")[0] for line in text.splitlines() if line[0] != "#"}
    j = json.loads(
        subprocess.run(
            [sys.executable, "-m", "surpdb", "stats", client.path, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert j["items"] == 1 and j["eviction_policy"] == "allkeys-lru"


# --------------------------------------------------------------------- permissions

GROUP, MEMBER, OUTSIDER = "surpdbtest", "surpdbtest-member", "surpdbtest-outsider"


def _ids(name: str) -> tuple[int, int]:
    import pwd

    p = pwd.getpwnam(name)
    return p.pw_uid, p.pw_gid


@pytest.fixture(scope="module")
def test_users() -> dict[str, tuple[int, int]]:
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd to create test users")
    import grp

    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True)
    for user, extra in [(MEMBER, ["-G", GROUP]), (OUTSIDER, [])]:
        r = subprocess.run(["id", user], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["useradd", "--system", "--no-create-home", *extra, user], check=True)
    return {MEMBER: _ids(MEMBER), OUTSIDER: _ids(OUTSIDER), GROUP: (0, grp.getgrnam(GROUP).gr_gid)}


def _as_user(uid: int, gid: int, groups: list[int], fn) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """Run fn() in a forked child with the given identity; returns (exit code, message)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code, msg = 1, ""
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            msg = fn()
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            msg = f"{type(e).__name__}: {e}"
        finally:
            os.write(w, msg.encode()[:60000])
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


def test_group_members_attach_and_outsiders_get_a_clear_permission_error(
    test_users: dict[str, tuple[int, int]],
) -> None:
    top = tempfile.mkdtemp(prefix="surpdb-perm-")
    os.chmod(top, 0o755)
    store = os.path.join(top, "store")
    gid = test_users[GROUP][1]
    try:
        with surpdb.Server(store, size="32MiB", group=GROUP):
            data, ring = (
                os.stat(os.path.join(store, "data.surp")),
                os.stat(os.path.join(store, "ring.surp")),
            )
            assert (data.st_mode & 0o777, data.st_gid) == (0o640, gid)
            assert (ring.st_mode & 0o777, ring.st_gid) == (0o660, gid)
            assert os.stat(store).st_mode & 0o777 == 0o750
            surpdb.connect(store).set("k", "from root")

            def member() -> str:
                c = surpdb.connect(store)
                c.set("m", "from member")
                return str(c.get("k"))

            uid, ugid = test_users[MEMBER]
            code, msg = _as_user(uid, ugid, [gid], member)
            assert (code, msg) == (0, "from root")
            assert surpdb.connect(store).get("m") == "from member"

            def outsider() -> str:
                surpdb.connect(store)
                return "attached"

            uid, ugid = test_users[OUTSIDER]
            code, msg = _as_user(uid, ugid, [], outsider)
            assert code == 1
            assert msg.startswith("PermissionError")
            assert "data.surp" in msg or "store" in msg
            assert GROUP in msg and "mode 0750" in msg
    finally:
        shutil.rmtree(top, ignore_errors=True)
