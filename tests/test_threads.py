"""One client shared by threads: waits release the GIL, nothing is lost or mixed up."""

from __future__ import annotations

import threading

import surpdb


def test_threads_share_a_client(client: surpdb.Client) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(500):
                client.set(f"t{t}:{i}", (t, i))
                assert client.get(f"t{t}:{i}") == (t, i)
                client.incr("shared")
                if i % 50 == 0:
                    tk = client.set(f"async{t}", i, wait=False)
                    assert client.wait(tk) is True
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    assert client.get("shared") == 8 * 500
    assert all(client.get(f"t{t}:499") == (t, 499) for t in range(8))
