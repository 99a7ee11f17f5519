"""Throughput of `seenn serve` on loopback: polling and progress writes per second.

Starts ``python -m seenn serve`` in a subprocess on a free port with a fresh
database, then drives it from N client threads (keep-alive ``http.client``
connections, lighter than httpx so the server is what is measured) for a fixed
time per case. ``GET /healthz`` (no database, no auth) is the baseline measured
in the same run; the other cases are reported as requests per second and as a
ratio to it.

    python benchmarks/server.py [--seconds 2] [--threads 1,2,4,8] [--db PATH_OR_URL]

With ``--workers 1,2,4`` it measures instead how single-event writes (one
``POST /jobs/{id}/progress`` per request, each with its own ``Idempotency-Key`` as
the HTTP exporter sends them), and reads (``GET /jobs/{id}``) for comparison, scale
with server processes: ``seenn serve --workers N`` for each N, and with
``--gunicorn`` also gunicorn (gthread, ``-w N``) serving ``seenn.server.wsgi:app``.
All processes of a run share one database: a fresh
temporary SQLite file per run, or ``--db`` (a path or a URL, passed through as it
is, e.g. a PostgreSQL URL). The load comes from ``--client-processes`` processes
(default 2) so that the client's GIL is not the limit.

    python benchmarks/server.py --workers 1,2,4 [--gunicorn] [--threads 16] [--seconds 3]

Without ``--workers`` it also measures progress events per second through ``POST
/v1/events`` (batches of ``--batch`` progress events spread over a few jobs, each with
its idempotency key, as ``HTTPExporter`` sends them), printed beside the single-call
figure measured the same way (``POST /jobs/{id}/progress`` with an ``Idempotency-Key``).

    python benchmarks/server.py [--seconds 2] [--threads 1,2,4,8] [--batch 200]

On a 2-core machine the load generator and the server share the cores, so
absolute figures are a floor; the ratios are what to compare between changes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from _serve import Served, start_gunicorn, start_server

SECRET, PUBLIC = "sk_test_bench-procs", "pk_test_bench-procs"

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


def _client_process(args: tuple[str, str, int, list[str], float, float]) -> int:
    """One client process: a thread per job, each making requests of ``kind`` (``write``:
    progress, ``read``: GET the job) from ``start_at`` (wall clock) for ``seconds``."""
    kind, host, port, job_ids, start_at, seconds = args
    auth = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    counts = [0] * len(job_ids)

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        path = f"/v1/jobs/{job_ids[index]}"
        while time.time() < start_at:
            time.sleep(0.001)
        end, n, progress = start_at + seconds, 0, 0
        while time.time() < end:
            progress = progress % 99 + 1
            if kind == "write":
                conn.request("POST", path + "/progress", body=json.dumps({"progress": progress}),
                             headers={**auth, "Idempotency-Key": uuid.uuid4().hex})
            else:
                conn.request("GET", path, headers=auth)
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
            n += 1
        counts[index] = n
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(job_ids))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts)


def measure_processes(served: Served, kind: str, threads: int, processes: int,
                      seconds: float) -> float:
    """Requests of ``kind`` per second: ``threads`` connections, one job each, over processes."""
    auth = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    setup = http.client.HTTPConnection(served.host, served.port, timeout=60)
    job_ids = []
    for i in range(threads):
        body = json.dumps({"jobType": "bench", "userId": "u", "title": f"job {i}"})
        setup.request("POST", "/v1/jobs", body=body, headers=auth)
        response = setup.getresponse()
        job_ids.append(json.loads(response.read())["id"])
    setup.close()
    shares = [job_ids[i::processes] for i in range(processes)]
    start_at = time.time() + 1.0  # every client connected and waiting by then
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        done = pool.map(_client_process, [(kind, served.host, served.port, share, start_at,
                                           seconds) for share in shares if share])
    return sum(done) / seconds


def _shown(db: str) -> str:
    """A database setting fit to print: a URL's password is masked."""
    parts = urlsplit(db)
    if parts.password is None:
        return db
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def compare_processes(args: argparse.Namespace) -> None:
    """Writes (and reads) per second against N server processes, for each N of ``--workers``."""
    counts = [int(n) for n in args.workers.split(",")]
    threads = max(int(n) for n in args.threads.split(","))
    servers = ["seenn serve --workers N"] + (["gunicorn -k gthread -w N"] if args.gunicorn
                                             else [])
    print(f"requests/s: single-event writes (POST /jobs/{{id}}/progress with "
          f"Idempotency-Key) and reads (GET /jobs/{{id}} -> 200), "
          f"{threads} connections from {args.client_processes} client processes, "
          f"{args.seconds:.1f} s per cell, {os.cpu_count()} cores; database: "
          f"{_shown(args.db) if args.db else 'a new temporary SQLite file per run'}")
    header = f"{'server':<36}" + "".join(f"{f'N={n}':>18}" for n in counts)
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for server in servers:
            cells: dict[str, list[str]] = {"writes": [], "reads": []}
            first: dict[str, float] = {}
            for n in counts:
                db = args.db or str(Path(tmp) / f"{server.split()[0]}-{n}.db")
                if server.startswith("gunicorn"):
                    served = start_gunicorn(db, n, args.gunicorn_threads, SECRET, PUBLIC)
                else:
                    served = start_server(db, "--workers", str(n), "--api-key", SECRET,
                                          "--public-key", PUBLIC)
                try:
                    for kind in ("write", "read"):
                        rate = measure_processes(served, kind, threads, args.client_processes,
                                                 args.seconds)
                        first.setdefault(kind, rate)
                        cells[kind + "s"].append(f"{rate:>9.0f} ({rate / first[kind]:.2f}x)")
                finally:
                    served.stop()
            for kind, row in cells.items():
                print(f"{server + ': ' + kind:<36}" + "".join(f"{cell:>18}" for cell in row))
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
    parser.add_argument("--db", help="the database, a path or a URL (default: a new "
                                     "temporary SQLite file)")
    parser.add_argument("--workers", help="compare writes/s over server processes, e.g. 1,2,4")
    parser.add_argument("--gunicorn", action="store_true",
                        help="with --workers: gunicorn gthread as well")
    parser.add_argument("--gunicorn-threads", type=int, default=8)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--jobs-per-thread", type=int, default=4,
                        help="jobs the batch's events are spread over, per client thread "
                             "(the exporter sends one event per job per batch)")
    parser.add_argument("--only-events", action="store_true",
                        help="measure POST /v1/events only (and its single-call figure)")
    args = parser.parse_args()
    if args.workers:
        compare_processes(args)
        return
    thread_counts = [int(n) for n in args.threads.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        served = start_server(args.db or Path(tmp) / "bench.db")
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
