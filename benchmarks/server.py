"""Throughput of `seenn serve` on loopback: polling and progress writes per second.

Starts ``python -m seenn serve`` in a subprocess on a free port with a fresh
database, then drives it from N client threads (keep-alive ``http.client``
connections, lighter than httpx so the server is what is measured) for a fixed
time per case. ``GET /healthz`` (no database, no auth) is the baseline measured
in the same run; the other cases are reported as requests per second and as a
ratio to it.

    python benchmarks/server.py [--seconds 2] [--threads 1,2,4,8] [--long-poll 200]

``--long-poll N`` then measures the latency of a long poll: N ``set_progress()``
calls in a job tracked here (``seenn.track`` with the HTTP exporter behind a
``BatchProcessor`` with ``schedule_delay=0.005`` and ``progress_interval=0``, so
each update is sent at once) against a watcher thread blocked in
``GET /v1/jobs/{id}?wait=30``; p50 and p99 from the call to the watcher's answer.

On a 2-core machine the load generator and the server share the cores, so
absolute figures are a floor; the ratios are what to compare between changes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _serve import start_server

Request = Callable[[http.client.HTTPConnection, int], None]


def measure(host: str, port: int, threads: int, seconds: float, request: Request) -> float:
    """Requests per second completed by ``threads`` clients in ``seconds``."""
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        start.wait()
        n = 0
        while not stop.is_set():
            request(conn, index)
            n += 1
        counts[index] = n
        conn.close()

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", default="1,2,4,8")
    parser.add_argument("--long-poll", type=int, default=0, metavar="N",
                        help="also measure long-poll latency over N updates (e.g. 200)")
    args = parser.parse_args()
    thread_counts = [int(n) for n in args.threads.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        served = start_server(Path(tmp) / "bench.db")
        host, port, secret = served.host, served.port, served.secret
        auth = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
        try:
            setup = http.client.HTTPConnection(host, port)
            job_ids = []
            for i in range(max(thread_counts)):
                body = json.dumps({"jobType": "bench", "userId": "u", "title": f"job {i}"})
                setup.request("POST", "/v1/jobs", body=body, headers=auth)
                job_ids.append(json.loads(setup.getresponse().read())["id"])
            setup.request("GET", f"/v1/jobs/{job_ids[0]}", headers=auth)
            response = setup.getresponse()
            response.read()
            etag = response.headers["ETag"]
            setup.close()

            def healthz(conn: http.client.HTTPConnection, i: int) -> None:
                conn.request("GET", "/healthz")
                conn.getresponse().read()

            def poll_304(conn: http.client.HTTPConnection, i: int) -> None:
                conn.request("GET", f"/v1/jobs/{job_ids[0]}",
                             headers={**auth, "If-None-Match": etag})
                response = conn.getresponse()
                response.read()
                assert response.status == 304

            def poll_200(conn: http.client.HTTPConnection, i: int) -> None:
                conn.request("GET", f"/v1/jobs/{job_ids[i]}", headers=auth)
                conn.getresponse().read()

            progress_body = json.dumps({"progress": 50, "message": "working"})

            def progress(conn: http.client.HTTPConnection, i: int) -> None:
                conn.request("POST", f"/v1/jobs/{job_ids[i]}/progress", body=progress_body,
                             headers=auth)
                response = conn.getresponse()
                response.read()
                assert response.status == 200

            batch = ",".join(job_ids[:10] + [f"absent{i}" for i in range(10 - len(job_ids))])
            setup = http.client.HTTPConnection(host, port)
            setup.request("GET", f"/v1/jobs?ids={batch}", headers=auth)
            response = setup.getresponse()
            response.read()
            batch_etag = response.headers["ETag"]
            setup.close()

            def ids_304(conn: http.client.HTTPConnection, i: int) -> None:
                conn.request("GET", f"/v1/jobs?ids={batch}",
                             headers={**auth, "If-None-Match": batch_etag})
                response = conn.getresponse()
                response.read()
                assert response.status == 304

            def ids_200(conn: http.client.HTTPConnection, i: int) -> None:
                conn.request("GET", f"/v1/jobs?ids={batch}", headers=auth)
                response = conn.getresponse()
                response.read()
                assert response.status == 200

            cases = [("GET /healthz (baseline)", healthz),
                     ("GET /jobs/{id} + If-None-Match -> 304", poll_304),
                     ("GET /jobs/{id} -> 200", poll_200),
                     ("GET /jobs?ids= (10) + If-None-M. -> 304", ids_304),
                     ("GET /jobs?ids= (10) -> 200", ids_200),
                     ("POST /jobs/{id}/progress", progress)]
            print(f"seenn serve on {host}:{port}, {args.seconds:.1f} s per cell, "
                  f"{os.cpu_count()} cores; requests/second (ratio to the baseline)")
            header = f"{'case':<40}" + "".join(f"{f'{n} thr':>18}" for n in thread_counts)
            print(header)
            print("-" * len(header))
            baseline: dict[int, float] = {}
            for name, request in cases:
                cells = []
                for n in thread_counts:
                    rate = measure(host, port, n, args.seconds, request)
                    if request is healthz:
                        baseline[n] = rate
                    cells.append(f"{rate:>9.0f} ({rate / baseline[n]:.2f}x)")
                print(f"{name:<40}" + "".join(f"{cell:>18}" for cell in cells))
            if args.long_poll:
                long_poll_latency(served.url, served.url, secret, args.long_poll)
                # The watcher on a second process of the same database: woken by its poll.
                second = start_server(Path(tmp) / "bench.db", "--api-key", secret)
                try:
                    long_poll_latency(served.url, second.url, secret, args.long_poll)
                finally:
                    second.stop()
        finally:
            served.stop()


def long_poll_latency(url: str, watch_url: str, secret: str, updates: int) -> None:
    """Print p50/p99 seconds from ``set_progress()`` here to a long-polling watcher's answer.

    Updates go to ``url``; the watcher long-polls ``watch_url`` (the same server, or
    another process on the same database, woken by its SQLite poll). The watcher
    re-arms its long poll after each answer; the next update is made once it has
    (its request was sent and a moment passed for the server to park it).
    """
    import seenn
    from seenn.exporters import BatchProcessor, HTTPExporter

    exporter = HTTPExporter(api_key=secret, base_url=url, progress_interval=0.0,
                            heartbeat_interval=None, eta_history_interval=None)
    seenn.configure(processors=[BatchProcessor(exporter, progress_interval=0.0,
                                               schedule_delay=0.005)])
    parts = watch_url.removeprefix("http://").split(":")
    host, port = parts[0], int(parts[1])
    auth = {"Authorization": f"Bearer {secret}"}
    received: dict[int, float] = {}
    armed = threading.Event()
    answered = threading.Condition()
    stop = threading.Event()

    def watcher(job_id: str) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        etag = '"none"'
        while not stop.is_set():
            conn.request("GET", f"/v1/jobs/{job_id}?wait=30",
                         headers={**auth, "If-None-Match": etag})
            armed.set()
            try:
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                return  # the server stopped while the watcher waited: the run is over
            if response.status == 200:
                when = time.perf_counter()
                etag = response.headers["ETag"]
                message = json.loads(body).get("message") or ""
                if message.startswith("u"):
                    with answered:
                        received.setdefault(int(message[1:]), when)
                        answered.notify_all()
        conn.close()

    sent: dict[int, float] = {}
    gaps = random.Random(13)
    with seenn.track("bench-long-poll", user_id="u", title="latency") as job:
        seenn.force_flush()
        thread = threading.Thread(target=watcher, args=(job.id,), daemon=True)
        thread.start()
        for i in range(updates):
            armed.wait(30)
            # Let the re-armed request reach the server and wait there; a random gap, so
            # updates do not fall in step with the server's 25 ms poll for other processes.
            time.sleep(gaps.uniform(0.015, 0.065))
            armed.clear()
            sent[i] = time.perf_counter()
            job.set_progress(i % 100, message=f"u{i}")
            with answered:
                answered.wait_for(lambda i=i: i in received, timeout=30)
        stop.set()
    seenn.shutdown()
    lat = sorted((received[i] - sent[i]) * 1000 for i in sent if i in received)
    if not lat:
        print("long poll: no update reached the watcher")
        return
    p50 = lat[len(lat) // 2]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    where = "same process" if watch_url == url else "watcher on another process"
    print(f"long poll ({where}): set_progress() -> watcher answered, {len(lat)} updates "
          f"(schedule_delay 5 ms, progress_interval 0): p50 {p50:.1f} ms, "
          f"p99 {p99:.1f} ms, max {lat[-1]:.1f} ms")


if __name__ == "__main__":
    main()
