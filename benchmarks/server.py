"""Throughput of `seenn serve` on loopback: polling and progress writes per second.

Starts ``python -m seenn serve`` in a subprocess on a free port with a fresh
database, then drives it from N client threads (keep-alive ``http.client``
connections, lighter than httpx so the server is what is measured) for a fixed
time per case. ``GET /healthz`` (no database, no auth) is the baseline measured
in the same run; the other cases are reported as requests per second and as a
ratio to it.

Then progress events per second through ``POST /v1/events`` (batches of
``--batch`` progress events spread over a few jobs, each with its idempotency
key, as ``HTTPExporter`` sends them), printed beside the single-call figure
measured the same way (``POST /jobs/{id}/progress`` with an ``Idempotency-Key``).

    python benchmarks/server.py [--seconds 2] [--threads 1,2,4,8] [--batch 200]

On a 2-core machine the load generator and the server share the cores, so
absolute figures are a floor; the ratios are what to compare between changes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
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


def measure_events(host: str, port: int, auth: dict[str, str], threads: int, seconds: float,
                   batch: int, jobs_per_thread: int = 4) -> tuple[float, float]:
    """Progress events per second: through ``POST /v1/events``, and one call each.

    Each client thread has jobs of its own (one writer per job, as an exporter does),
    and every event carries a fresh idempotency key, so each is stored for replay.
    """
    setup = http.client.HTTPConnection(host, port)
    owned: list[list[str]] = []
    for t in range(threads):
        ids = []
        for j in range(jobs_per_thread):
            body = json.dumps({"jobType": "bench", "userId": "u", "title": f"job {t}.{j}"})
            setup.request("POST", "/v1/jobs", body=body, headers=auth)
            ids.append(json.loads(setup.getresponse().read())["id"])
        owned.append(ids)
    setup.close()
    counter = [0] * threads

    def batched(conn: http.client.HTTPConnection, i: int) -> None:
        n = counter[i]
        counter[i] += batch
        ids = owned[i]
        events = [{"type": "progress", "jobId": ids[k % len(ids)],
                   "idempotencyKey": f"b{threads}.{i}.{n + k}",
                   "body": {"progress": (n + k) % 100, "message": "working"}}
                  for k in range(batch)]
        conn.request("POST", "/v1/events", body=json.dumps({"events": events}), headers=auth)
        response = conn.getresponse()
        answer = json.loads(response.read())
        last = answer["results"][-1]
        assert response.status == 200 and last["status"] == 200, last

    def single(conn: http.client.HTTPConnection, i: int) -> None:
        n = counter[i]
        counter[i] += 1
        ids = owned[i]
        body = json.dumps({"progress": n % 100, "message": "working"})
        conn.request("POST", f"/v1/jobs/{ids[n % len(ids)]}/progress", body=body,
                     headers={**auth, "Idempotency-Key": f"s{threads}.{i}.{n}"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200

    events = measure(host, port, threads, seconds, batched) * batch
    calls = measure(host, port, threads, seconds, single)
    return events, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", default="1,2,4,8")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--jobs-per-thread", type=int, default=4,
                        help="jobs the batch's events are spread over, per client thread "
                             "(the exporter sends one event per job per batch)")
    parser.add_argument("--only-events", action="store_true",
                        help="measure POST /v1/events only (and its single-call figure)")
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

            cases = [] if args.only_events else [("GET /healthz (baseline)", healthz),
                     ("GET /jobs/{id} + If-None-Match -> 304", poll_304),
                     ("GET /jobs/{id} -> 200", poll_200),
                     ("POST /jobs/{id}/progress", progress)]
            if cases:
                print(f"seenn serve on {host}:{port}, {args.seconds:.1f} s per cell, "
                  f"{os.cpu_count()} cores; requests/second (ratio to the baseline)")
            header = f"{'case':<40}" + "".join(f"{f'{n} thr':>18}" for n in thread_counts)
            if cases:
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
            print(f"\nprogress events/second, {args.batch} per POST /v1/events over "
                  f"{args.jobs_per_thread} jobs per thread, beside one "
                  "POST /jobs/{id}/progress per event (both with idempotency keys)")
            print(header)
            print("-" * len(header))
            figures = [measure_events(host, port, auth, n, args.seconds, args.batch,
                                      args.jobs_per_thread) for n in thread_counts]
            print(f"{'POST /v1/events (events/s)':<40}"
                  + "".join(f"{events:>18.0f}" for events, _ in figures))
            print(f"{'single calls (events/s)':<40}"
                  + "".join(f"{calls:>18.0f}" for _, calls in figures))
            print(f"{'ratio':<40}"
                  + "".join(f"{events / calls:>17.1f}x" for events, calls in figures))
        finally:
            served.stop()


if __name__ == "__main__":
    main()
