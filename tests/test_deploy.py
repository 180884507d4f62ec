"""A real deployment: the Django project in tests/deploy served by gunicorn (4 pre-fork sync
workers) and by uvicorn (2 ASGI workers) on loopback, with the surpdb cache backend.

Checked: the cache session backend keeps one session across workers and across a daemon
SIGKILL (reads go on without the daemon, a write made while it is down waits for the next
one) and, under load, loses no write; the per-site cache middleware serves one stored page
from every worker; the low-level cache calls see one store from every worker; a short wrk run
gets an answer to every request.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from deploy.harness import (
    Reply,
    Site,
    free_port,
    gunicorn_args,
    project_env,
    rotate_script,
    run_wrk,
    serving,
    uvicorn_args,
    wrk_path,
)

import surpdb

pytest.importorskip("django")

# Seconds a surpdb write waits for the daemon's acknowledgement (CLIENT_TIMEOUT): longer than
# a restart takes, so a request made while the daemon is down completes once it is back.
CLIENT_TIMEOUT = "30"
# How long a test keeps asking before it gives up on seeing a second worker.
SPREAD_SECONDS = 30.0


def need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install {module})")


def site(kind: str, tmp_path: Path, store: str) -> AbstractContextManager[Site]:
    """The project on the surpdb cache at `store`, under gunicorn (4 workers) or uvicorn (2)."""
    need(kind)
    port = free_port()
    args = gunicorn_args(port, workers=4) if kind == "gunicorn" else uvicorn_args(port, workers=2)
    env = project_env("surpdb", store, SURPDB_DEPLOY_CLIENT_TIMEOUT=CLIENT_TIMEOUT)
    return serving(args, port, env, tmp_path / f"{kind}.log")


def until_two_workers(site: Site, ask: Callable[[], Reply], at_least: int) -> set[int]:
    """Call `ask` at least `at_least` times, and until two workers have answered."""
    workers: set[int] = set()
    deadline = time.monotonic() + SPREAD_SECONDS
    done = 0
    while done < at_least or len(workers) < 2:
        assert time.monotonic() < deadline, f"only worker(s) {workers} answered in {done} calls"
        r = ask()
        assert r.status == 200, (r.status, r.body[:2000], site.log[-4000:])
        workers.add(r.worker)
        done += 1
    return workers


def wait_for(what: str, condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds}s"
        time.sleep(0.01)


class Session:
    """One browser's session: a cookie and the count the server should answer next."""

    def __init__(self, site: Site) -> None:
        self.site = site
        r = site.get("/session/")
        assert r.status == 200, (r.body[:2000], site.log[-4000:])
        assert r.json() == {"n": 1, "pid": r.worker}
        key = r.cookie("sessionid")
        assert key
        self.cookie = f"sessionid={key}"
        self.n = 1

    def check(self, r: Reply) -> Reply:
        """The answer to a /session/ request made with the cookie: the next count."""
        assert r.status == 200, (r.status, r.body[:2000], self.site.log[-4000:])
        self.n += 1
        assert r.json() == {"n": self.n, "pid": r.worker}
        assert r.cookie("sessionid") in (None, self.cookie.partition("=")[2])
        return r

    def next(self) -> Reply:
        return self.check(self.site.get("/session/", self.cookie))


def check_page(site: Site) -> bytes:
    """The page rendered once, then served from the cache by every worker: same body (the
    renderer's pid, render number and time), an Age header, X-Worker varying."""
    first = site.get("/page/")
    assert first.status == 200
    assert "age" not in first.headers  # rendered, not from the cache
    assert "max-age=60" in first.headers["cache-control"] and "expires" in first.headers
    assert f"rendered by pid {first.worker}, render ".encode() in first.body

    def again() -> Reply:
        r = site.get("/page/")
        assert r.body == first.body and "age" in r.headers, (r.headers, r.body)
        return r

    until_two_workers(site, again, at_least=8)
    return first.body


def check_lowlevel(site: Site, path: str, filled_by: int | None = None) -> int:
    """get_many / set_many / get_or_set / incr: the items stored by one worker are read by
    the others, and the shared hit counter goes up by exactly one per request."""
    first = site.get(path)
    assert first.status == 200, (first.body[:2000], site.log[-4000:])
    got = first.json()
    filled_by = filled_by if filled_by is not None else got["pid"]
    assert got["n"] == 50 and got["names"] == ["item 0", "item 1", "item 2"]
    assert got["by"] == [filled_by] and got["made"] == filled_by
    hits = got["hits"]

    def again() -> Reply:
        nonlocal hits
        r = site.get(path)
        if r.status == 200:
            hits += 1
            assert r.json() == {**got, "hits": hits, "pid": r.worker}
        return r

    until_two_workers(site, again, at_least=8)
    return filled_by


def test_gunicorn_session_across_workers_and_a_daemon_kill(tmp_path: Path, store_dir: str) -> None:
    """A session made by one request is read and written by the other pre-fork workers with
    no update lost; the daemon is SIGKILLed: the cached page is still served (reads need no
    daemon), a session request made meanwhile waits for the new daemon, then completes, and
    the count goes on from where it was."""
    daemons = [surpdb.Server(store_dir, size="64MiB")]
    try:
        with site("gunicorn", tmp_path, store_dir) as s:
            browser = Session(s)
            workers = until_two_workers(s, browser.next, at_least=12)
            assert browser.n >= 13 and len(workers) >= 2
            page = s.get("/page/").body

            daemons[0].kill()
            r = s.get("/page/")
            assert r.status == 200 and r.body == page and "age" in r.headers

            probe = surpdb.connect(store_dir)
            box: list[Reply | Exception] = []

            def request() -> None:
                try:
                    box.append(s.get("/session/", browser.cookie, timeout=90))
                except Exception as e:  # handed to the test's thread
                    box.append(e)

            waiting = threading.Thread(target=request, daemon=True)
            waiting.start()
            # The session save, queued in the ring with no daemon to apply it:
            wait_for("a write queued", lambda: probe.stats()["ring_pending_bytes"] > 0)
            assert waiting.is_alive() and not box  # it waits for a daemon

            daemons.append(surpdb.Server(store_dir, size="64MiB"))
            waiting.join(timeout=60)
            assert len(box) == 1 and isinstance(box[0], Reply), box
            browser.check(box[0])
            workers = until_two_workers(s, browser.next, at_least=8)
            assert len(workers) >= 2
            assert probe.stats()["daemon_pid"] == daemons[1].pid
            assert "Traceback" not in s.log, s.log[-4000:]
    finally:
        for d in daemons:
            d.kill()
        for d in daemons:
            assert "panicked" not in d.log, d.log


def test_gunicorn_daemon_kill_under_load_loses_no_write(tmp_path: Path, store_dir: str) -> None:
    """8 clients call the low-level view (one cache.incr each) while the daemon is SIGKILLed
    and a new one started: no request fails (the writes wait for the new daemon), and the
    shared counter ends at exactly the number of answers (no incr lost, none applied twice)."""
    daemons = [surpdb.Server(store_dir, size="64MiB")]
    answered: list[int] = []
    failed: list[object] = []
    lock = threading.Lock()
    try:
        with site("gunicorn", tmp_path, store_dir) as s:
            assert s.get("/lowlevel/20/").json()["hits"] == 1
            probe = surpdb.connect(store_dir)

            def client() -> None:
                for _ in range(100):
                    try:
                        r = s.get("/lowlevel/20/", timeout=90)
                        ok = r.status == 200
                        with lock:
                            (answered if ok else failed).append(r.status)
                    except Exception as e:
                        with lock:
                            failed.append(e)

            clients = [threading.Thread(target=client, daemon=True) for _ in range(8)]
            for t in clients:
                t.start()
            wait_for("100 hits", lambda: (probe.get(":1:lowlevel:hits") or 0) >= 100)
            daemons[0].kill()
            wait_for("a write queued", lambda: probe.stats()["ring_pending_bytes"] > 0)
            daemons.append(surpdb.Server(store_dir, size="64MiB"))
            for t in clients:
                t.join(timeout=90)
            assert not any(t.is_alive() for t in clients)
            assert failed == [] and len(answered) == 800
            assert probe.get(":1:lowlevel:hits") == 801
            assert "Traceback" not in s.log, s.log[-4000:]
    finally:
        for d in daemons:
            d.kill()
        for d in daemons:
            assert "panicked" not in d.log, d.log


def test_gunicorn_per_site_cache_and_low_level_views(tmp_path: Path, server: surpdb.Server) -> None:
    """The per-site cache middleware stores the page once and every worker serves that copy;
    the low-level view's items, stored by the first request's worker, are read by the others
    (sync view, then the async one under WSGI's async_to_sync)."""
    with site("gunicorn", tmp_path, server.path) as s:
        check_page(s)
        filled_by = check_lowlevel(s, "/lowlevel/50/")
        check_lowlevel(s, "/alowlevel/50/", filled_by)
        assert "Traceback" not in s.log, s.log[-4000:]


def test_uvicorn_session_page_and_async_views(tmp_path: Path, server: surpdb.Server) -> None:
    """The same under an ASGI server with two worker processes: one session across both, the
    cached page, and the low-level views (the async one uses surpdb's native async methods)."""
    with site("uvicorn", tmp_path, server.path) as s:
        browser = Session(s)
        until_two_workers(s, browser.next, at_least=6)
        check_page(s)
        filled_by = check_lowlevel(s, "/alowlevel/50/")
        check_lowlevel(s, "/lowlevel/50/", filled_by)
        assert "Traceback" not in s.log, s.log[-4000:]


WRK_PATHS = ["/page/", "/session/", "/lowlevel/20/", "/alowlevel/20/"]


def test_wrk_load_on_gunicorn(tmp_path: Path, server: surpdb.Server) -> None:
    """3 s of wrk (2 threads, 16 connections) over the page, session and low-level URLs,
    with one session cookie: every request answered 2xx, no socket error."""
    if wrk_path() is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    script = tmp_path / "paths.lua"
    script.write_text(rotate_script(WRK_PATHS))
    with site("gunicorn", tmp_path, server.path) as s:
        browser = Session(s)
        result = run_wrk(
            s.url("/"), seconds=3, connections=16, headers={"Cookie": browser.cookie}, script=script
        )
        assert result.non_2xx_3xx == 0, result.text
        assert result.socket_errors == dict.fromkeys(result.socket_errors, 0), result.text
        assert result.requests >= 50, result.text
        # Concurrent saves of one session may overwrite each other; it is still one session.
        r = s.get("/session/", browser.cookie)
        assert r.status == 200 and r.json()["n"] > browser.n
        assert "Traceback" not in s.log, s.log[-4000:]
