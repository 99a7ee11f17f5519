"""Throughput and latency of `seenn serve`, on both storage engines, in one run.

For each engine (SQLite in a temporary file; PostgreSQL in a throwaway cluster the
benchmark starts, as the tests do, or ``--postgres-url``) it starts ``python -m seenn
serve`` in subprocesses on free loopback ports and reports:

1. requests/s from ``--threads`` keep-alive client threads (``http.client``, lighter
   than httpx, so that the server is what is measured), with ``GET /healthz`` (no
   database, no auth) as the baseline measured in the same run: polls of one job
   (200, and 304 with ``If-None-Match``), batched polls of 10 jobs (``GET
   /v1/jobs?ids=``, 200 and 304), and single-event writes (``POST
   /jobs/{id}/progress`` with an ``Idempotency-Key``, as the HTTP exporter sends them);
2. progress events/s through ``POST /v1/events`` as ``HTTPExporter`` sends them
   (batches of ``--batch`` events, one per job, each with its idempotency key,
   ``"brief": true``) beside one call per event measured the same way;
3. long-poll latency: ``--long-poll`` ``set_progress()`` calls in a job tracked in
   this process (``seenn.track`` with the HTTP exporter behind a ``BatchProcessor``
   with ``schedule_delay=0.005`` and ``progress_interval=0``, so each update is sent
   at once) to a watcher thread blocked in ``GET /v1/jobs/{id}?wait=30``, p50/p99,
   with the watcher on the same server process and on another process of the same
   database (woken by SQLite's poll, or by PostgreSQL's NOTIFY);
4. single-event writes/s (and reads) against ``seenn serve --workers N`` for each N of
   ``--workers`` (with ``--gunicorn``, gunicorn gthread too), the load coming from
   ``--client-processes`` processes so that the client's GIL is not the limit.

    python benchmarks/server.py [--engines sqlite,postgresql] [--seconds 2]
        [--threads 4] [--workers 1,2,4] [--long-poll 200] [--only requests,events,...]

On a 2-core machine the load generator and the server share the cores, so
absolute figures are a floor; the ratios are what to compare between changes.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
        conn.request("POST", "/v1/events", body=json.dumps({"events": events, "brief": True}),
                     headers=auth)
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


SECTIONS = ("requests", "events", "long-poll", "processes")


def request_cases(served: Served, threads: list[int], seconds: float,
                  figures: dict[str, str]) -> None:
    """Section 1: polls and single writes per second, beside the healthz baseline."""
    host, port = served.host, served.port
    auth = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    setup = http.client.HTTPConnection(host, port)
    job_ids = []
    for i in range(max(max(threads), 10)):
        body = json.dumps({"jobType": "bench", "userId": "u", "title": f"job {i}"})
        setup.request("POST", "/v1/jobs", body=body, headers=auth)
        job_ids.append(json.loads(setup.getresponse().read())["id"])
    setup.request("GET", f"/v1/jobs/{job_ids[0]}", headers=auth)
    response = setup.getresponse()
    response.read()
    etag = response.headers["ETag"]
    batch = ",".join(job_ids[:10])
    setup.request("GET", f"/v1/jobs?ids={batch}", headers=auth)
    response = setup.getresponse()
    response.read()
    batch_etag = response.headers["ETag"]
    setup.close()

    def healthz(conn: http.client.HTTPConnection, i: int) -> None:
        conn.request("GET", "/healthz")
        conn.getresponse().read()

    def get(path: str, status: int, extra: dict[str, str]) -> Request:
        def request(conn: http.client.HTTPConnection, i: int) -> None:
            conn.request("GET", path.format(id=job_ids[i]), headers={**auth, **extra})
            response = conn.getresponse()
            response.read()
            assert response.status == status, response.status

        return request

    written = [0] * max(threads)

    def progress(conn: http.client.HTTPConnection, i: int) -> None:
        written[i] += 1
        conn.request("POST", f"/v1/jobs/{job_ids[i]}/progress",
                     body=json.dumps({"progress": written[i] % 100, "message": "working"}),
                     headers={**auth, "Idempotency-Key": uuid.uuid4().hex})
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status

    cases: list[tuple[str, Request]] = [
        ("GET /healthz (baseline)", healthz),
        ("GET /jobs/{id} + If-None-Match -> 304",
         get(f"/v1/jobs/{job_ids[0]}", 304, {"If-None-Match": etag})),
        ("GET /jobs/{id} -> 200", get("/v1/jobs/{id}", 200, {})),
        ("GET /jobs?ids= (10) + If-None-M. -> 304",
         get(f"/v1/jobs?ids={batch}", 304, {"If-None-Match": batch_etag})),
        ("GET /jobs?ids= (10) -> 200", get(f"/v1/jobs?ids={batch}", 200, {})),
        ("POST /jobs/{id}/progress (writes)", progress),
    ]
    header = f"{'requests/s (ratio to healthz)':<40}" + "".join(
        f"{f'{n} thr':>18}" for n in threads)
    print(header)
    print("-" * len(header))
    baseline: dict[int, float] = {}
    for name, request in cases:
        cells = []
        for n in threads:
            rate = measure(host, port, n, seconds, request)
            if request is healthz:
                baseline[n] = rate
            cells.append(f"{rate:>9.0f} ({rate / baseline[n]:.2f}x)")
            if n == max(threads):
                figures[f"{name} [{n} thr], /s"] = f"{rate:.0f}"
        print(f"{name:<40}" + "".join(f"{cell:>18}" for cell in cells))


def event_cases(served: Served, threads: list[int], seconds: float, batch: int,
                jobs_per_thread: int, figures: dict[str, str]) -> None:
    """Section 2: progress events per second through POST /v1/events and one by one."""
    auth = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    print(f"\nprogress events/s, {batch} per POST /v1/events over {jobs_per_thread} jobs "
          "per thread, beside one POST /jobs/{id}/progress per event (idempotency keys)")
    for n in threads:
        events, calls = measure_events(served.host, served.port, auth, n, seconds, batch,
                                       jobs_per_thread)
        print(f"  {n} thr: POST /v1/events {events:>8.0f} events/s; single calls "
              f"{calls:>6.0f} events/s ({events / calls:.1f}x)")
        if n == max(threads):
            figures[f"POST /v1/events [{n} thr], events/s"] = f"{events:.0f}"


def long_poll_cases(served: Served, db: str, updates: int, figures: dict[str, str]) -> None:
    """Section 3: set_progress() to long-poll answer, same process and another process."""
    print()
    same = long_poll_latency(served.url, served.url, SECRET, updates)
    second = start_server(db, "--api-key", SECRET, "--public-key", PUBLIC)
    try:
        other = long_poll_latency(served.url, second.url, SECRET, updates)
    finally:
        second.stop()
    for where, found in (("same process", same), ("other process", other)):
        if found is not None:
            figures[f"long poll p50 / p99 ({where}), ms"] = f"{found[0]:.1f} / {found[1]:.1f}"


def process_cases(new_db: Callable[[], str], workers: list[int], threads: int,
                  client_processes: int, seconds: float, gunicorn: bool,
                  gunicorn_threads: int, figures: dict[str, str]) -> None:
    """Section 4: writes (and reads) per second against N server processes."""
    servers = ["seenn serve --workers N"] + (["gunicorn -k gthread -w N"] if gunicorn else [])
    print(f"\nrequests/s against N processes: single-event writes (POST .../progress with "
          f"Idempotency-Key) and reads (GET /jobs/{{id}}), {threads} connections from "
          f"{client_processes} client processes, a new database per N")
    header = f"{'server':<36}" + "".join(f"{f'N={n}':>18}" for n in workers)
    print(header)
    print("-" * len(header))
    for server in servers:
        cells: dict[str, list[str]] = {"writes": [], "reads": []}
        first: dict[str, float] = {}
        for n in workers:
            db = new_db()
            if server.startswith("gunicorn"):
                served = start_gunicorn(db, n, gunicorn_threads, SECRET, PUBLIC)
            else:
                served = start_server(db, "--workers", str(n), "--api-key", SECRET,
                                      "--public-key", PUBLIC)
            try:
                for kind in ("write", "read"):
                    rate = measure_processes(served, kind, threads, client_processes, seconds)
                    first.setdefault(kind, rate)
                    cells[kind + "s"].append(f"{rate:>9.0f} ({rate / first[kind]:.2f}x)")
                    if kind == "write" and server.startswith("seenn"):
                        figures[f"writes/s, serve --workers {n}"] = (
                            f"{rate:.0f} ({rate / first[kind]:.2f}x)")
            finally:
                served.stop()
        for kind, row in cells.items():
            print(f"{server + ': ' + kind:<36}" + "".join(f"{cell:>18}" for cell in row))


@contextmanager
def databases(engine: str, tmp: Path, postgres_url: str | None) -> Iterator[Callable[[], str]]:
    """A maker of fresh, empty databases of ``engine`` (paths or URLs)."""
    count = itertools.count()
    if engine == "sqlite":
        yield lambda: str(tmp / f"bench-{next(count)}.db")
        return
    if postgres_url:
        import psycopg

        def fresh() -> str:
            name = f"seenn_bench_{os.getpid()}_{next(count)}"
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            return urlunsplit(urlsplit(postgres_url)._replace(path="/" + name))

        yield fresh
        return
    # The tests' throwaway cluster: fsync off, as for the tests (no crash safety needed).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.pg import PostgresServer

    server = PostgresServer()
    try:
        yield server.new_database
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", help="a PostgreSQL server to create databases on "
                        "(default: a throwaway cluster started here)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"sections to run, of {','.join(SECTIONS)}")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", default="4")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--jobs-per-thread", type=int, default=200,
                        help="jobs the batch's events are spread over, per client thread "
                             "(the exporter sends one event per job per batch)")
    parser.add_argument("--long-poll", type=int, default=200, metavar="N",
                        help="updates for the long-poll latency (0: skip)")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--gunicorn", action="store_true",
                        help="in the processes section, gunicorn gthread as well")
    parser.add_argument("--gunicorn-threads", type=int, default=8)
    parser.add_argument("--client-processes", type=int, default=2)
    args = parser.parse_args()
    threads = [int(n) for n in args.threads.split(",")]
    only = set(args.only.split(","))
    engines = args.engines.split(",")
    results: dict[str, dict[str, str]] = {}
    print(f"{os.cpu_count()} cores, {args.seconds:.1f} s per cell")
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            figures = results[engine] = {}
            with databases(engine, Path(tmp), args.postgres_url) as new_db:
                print(f"\n=== {engine} ===")
                db = new_db()
                served = start_server(db, "--api-key", SECRET, "--public-key", PUBLIC)
                try:
                    if "requests" in only:
                        request_cases(served, threads, args.seconds, figures)
                    if "events" in only:
                        event_cases(served, threads, args.seconds, args.batch,
                                    args.jobs_per_thread, figures)
                    if "long-poll" in only and args.long_poll:
                        long_poll_cases(served, db, args.long_poll, figures)
                finally:
                    served.stop()
                if "processes" in only:
                    process_cases(new_db, [int(n) for n in args.workers.split(",")],
                                  max(threads) * 4, args.client_processes, args.seconds,
                                  args.gunicorn, args.gunicorn_threads, figures)
    names = list(dict.fromkeys(name for figures in results.values() for name in figures))
    print("\n=== summary ===")
    print(f"{'figure':<52}" + "".join(f"{engine:>16}" for engine in engines))
    for name in names:
        print(f"{name:<52}" + "".join(f"{results[e].get(name, '-'):>16}" for e in engines))


def long_poll_latency(url: str, watch_url: str, secret: str,
                      updates: int) -> tuple[float, float] | None:
    """Print p50/p99 seconds from ``set_progress()`` here to a long-polling watcher's answer.

    Updates go to ``url``; the watcher long-polls ``watch_url`` (the same server, or
    another process on the same database, woken by SQLite's poll or PostgreSQL's
    NOTIFY). The watcher re-arms its long poll after each answer; the next update is
    made once it has (its request was sent and a moment passed for the server to park
    it).
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
        return None
    p50 = lat[len(lat) // 2]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    where = "same process" if watch_url == url else "watcher on another process"
    print(f"long poll ({where}): set_progress() -> watcher answered, {len(lat)} updates "
          f"(schedule_delay 5 ms, progress_interval 0): p50 {p50:.1f} ms, "
          f"p99 {p99:.1f} ms, max {lat[-1]:.1f} ms")
    return p50, p99


if __name__ == "__main__":
    main()
