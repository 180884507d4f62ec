"""Time from SIGKILL to serving again: surpd re-attaching to its segment, beside redis-server
loading the same data from an RDB snapshot and from an AOF, in one run.

    python benchmarks/restart_bench.py [--counts 100000,1000000]

surpd: fill N items (~100-byte values), SIGKILL the daemon, start a new one; reported: the
daemon's own attach time (from its log), time until READY (includes starting the Python
process that hosts it), and until a client's first read is served. Redis: the same N keys,
SAVE (RDB) or appendonly (AOF, appendfsync no), SIGKILL, restart, time until it answers a GET.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from servers import free_port

import surpdb

VALUE = b"v" * 100


def surpdb_restart(n: int) -> dict[str, float]:
    d = tempfile.mkdtemp(prefix="restart-surpdb-", dir="/var/tmp")
    try:
        size = f"{max(64, n * 400 // (1 << 20))}MiB"
        srv = surpdb.Server(d, size=size)
        c = surpdb.connect(d)
        batch = 5000
        for start in range(0, n, batch):
            c.set_many({f"key:{i}": VALUE for i in range(start, min(start + batch, n))})
        assert c.stats()["items"] == n
        srv.kill()
        t0 = time.perf_counter()
        srv = surpdb.Server(d, size=size)
        t_ready = time.perf_counter() - t0
        assert surpdb.connect(d).get(f"key:{n - 1}") == VALUE
        t_read = time.perf_counter() - t0
        m = re.search(r"attach_ms=([0-9.]+)", srv.log)
        srv.stop()
        return {
            "segment_mib": float(size.removesuffix("MiB")),
            "attach_ms": float(m.group(1)) if m else float("nan"),
            "ready_ms": t_ready * 1e3,
            "first_read_ms": t_read * 1e3,
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


def redis_restart(n: int, mode: str) -> dict[str, float]:
    import redis

    exe = shutil.which("redis-server")
    if not exe:
        raise RuntimeError("redis-server not installed")
    d = tempfile.mkdtemp(prefix=f"restart-redis-{mode}-", dir="/var/tmp")
    port = free_port()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--save", ""]
    args += (
        ["--appendonly", "yes", "--appendfsync", "no"] if mode == "aof" else ["--appendonly", "no"]
    )

    def start() -> tuple[subprocess.Popen[bytes], float]:
        t0 = time.perf_counter()
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        r = redis.Redis(port=port)
        while True:
            try:
                if r.get(f"key:{n - 1}") == VALUE:
                    return p, time.perf_counter() - t0
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            time.sleep(0.001)

    try:
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        r = redis.Redis(port=port)
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.01)
        batch = 5000
        for s in range(0, n, batch):
            pipe = r.pipeline(transaction=False)
            for i in range(s, min(s + batch, n)):
                pipe.set(f"key:{i}", VALUE)
            pipe.execute()
        if mode == "rdb":
            r.save()
        else:
            time.sleep(1.5)  # let the AOF's background writes reach the file (appendfsync no)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p, t = start()
        p.terminate()
        p.wait(timeout=30)
        return {"first_read_ms": t * 1e3}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--counts", default="100000,1000000")
    a = ap.parse_args()
    print(f"{'items':>9}  {'system':<22}{'attach ms':>10}{'ready ms':>10}{'first read ms':>15}")
    for n in map(int, a.counts.split(",")):
        s = surpdb_restart(n)
        print(
            f"{n:>9}  {'surpdb (SIGKILL)':<22}{s['attach_ms']:>10.1f}{s['ready_ms']:>10.1f}"
            f"{s['first_read_ms']:>15.1f}"
        )
        for mode in ("rdb", "aof"):
            try:
                r = redis_restart(n, mode)
                name = f"redis {mode.upper()} (SIGKILL)"
                print(f"{n:>9}  {name:<22}{'':>20}{r['first_read_ms']:>15.1f}")
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"{n:>9}  redis {mode}: skipped: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
