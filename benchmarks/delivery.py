"""Delivery cost: tracked code with the HTTP exporter against `seenn serve` on loopback.

Runs M jobs x K progress updates (each update after a short simulated piece of
work) three ways, in one process, and prints them side by side:

1. no exporter (the baseline);
2. ``HTTPExporter`` behind its ``BatchProcessor`` (what ``seenn.configure`` sets up);
3. ``SeennClient`` called directly for every update, as the Node SDK is used.

For each: the wall time of the tracked code and its ratio to the baseline,
HTTP requests per job, and (for the exporter) the drain time from the last
job's exit until the backend holds every final state.

    python benchmarks/delivery.py [--jobs 40] [--updates 200] [--work-ms 0.2] [--threads 4]
                                  [--repeat 1]

With ``--repeat N`` the first two are run N times, alternately, and the best time of
each is shown: on a shared machine, the fastest run is the one least disturbed.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import threading
import time
from pathlib import Path

from _serve import start_server

import seenn
from seenn.exporters import HTTPExporter

KEY = "sk_test_bench"


def work(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:  # a busy wait: CPU-bound work, as a render would be
        pass


def run_tracked(tracker: seenn.Tracker, jobs: int, updates: int, work_s: float,
                threads: int, tag: str) -> tuple[float, list[str]]:
    ids: list[str] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        for n in range(offset, jobs, threads):
            with tracker.track("bench", user_id=f"{tag}-user", title=f"{tag} {n}") as job:
                with lock:
                    ids.append(job.id)
                for i in range(updates):
                    work(work_s)
                    job.set_progress(i * 100 // updates, message="working")

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    began = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return time.perf_counter() - began, ids


def run_direct(url: str, jobs: int, updates: int, work_s: float,
               threads: int) -> tuple[float, int]:
    calls = [0]
    lock = threading.Lock()

    def worker(offset: int) -> None:
        with seenn.SeennClient(KEY, base_url=url) as client:
            for n in range(offset, jobs, threads):
                job = client.jobs.start("bench", user_id="direct-user", title=f"direct {n}")
                for i in range(updates):
                    work(work_s)
                    job.set_progress(i * 100 // updates, message="working")
                job.complete()
                with lock:
                    calls[0] += updates + 2

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    began = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return time.perf_counter() - began, calls[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--work-ms", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-batches", action="store_true",
                        help="one call per event (max_batch_events=0), as to Seenn Cloud")
    args = parser.parse_args()
    work_s = args.work_ms / 1000

    with tempfile.TemporaryDirectory() as tmp:
        served = start_server(Path(tmp) / "bench.db", "--api-key", KEY)
        url = served.url
        try:
            baseline_tracker = seenn.Tracker(exporters=[])
            run_tracked(baseline_tracker, 4, 20, work_s, 1, "warmup")
            base_time = http_time = math.inf
            for _ in range(max(1, args.repeat)):
                took, _ = run_tracked(baseline_tracker, args.jobs, args.updates, work_s,
                                      args.threads, "none")
                base_time = min(base_time, took)
                exporter = HTTPExporter(api_key=KEY, base_url=url,
                                        max_batch_events=0 if args.no_batches else 100)
                tracker = seenn.Tracker(exporters=[exporter])
                took, ids = run_tracked(tracker, args.jobs, args.updates, work_s,
                                        args.threads, "http")
                http_time = min(http_time, took)
                exited = time.perf_counter()
                assert tracker.force_flush(120)
                stats = exporter.stats
                tracker.shutdown()
            drain = time.perf_counter() - exited
            with seenn.SeennClient(KEY, base_url=url) as client:
                unfinished = [i for i in ids if client.jobs.get(i).status != "completed"]

            direct_time, direct_calls = run_direct(url, args.jobs, args.updates, work_s,
                                                   args.threads)
        finally:
            served.stop()

    per_job = base_time / math.ceil(args.jobs / args.threads)
    bound = 2 + math.ceil(per_job / exporter.progress_interval)
    print(f"{args.jobs} jobs x {args.updates} updates, {args.work_ms} ms of work per update, "
          f"{args.threads} threads, seenn serve on loopback, {os.cpu_count()} cores")
    print(f"{'':<34}{'tracked code':>14}{'vs none':>10}{'requests/job':>15}")
    print(f"{'no exporter':<34}{base_time:>13.2f}s{1.0:>9.2f}x{0:>15}")
    print(f"{'HTTPExporter (seenn.configure)':<34}{http_time:>13.2f}s"
          f"{http_time / base_time:>9.2f}x{stats.requests / args.jobs:>15.1f}")
    print(f"{'SeennClient per update (Node way)':<34}{direct_time:>13.2f}s"
          f"{direct_time / base_time:>9.2f}x{direct_calls / args.jobs:>15.1f}")
    print(f"HTTPExporter: {stats.accepted} events, {stats.coalesced} coalesced, "
          f"{stats.requests} requests ({stats.batches} of them POST /v1/events), "
          f"{stats.retries} retries, {stats.lost} lost; "
          f"bound per job: start + terminal + {bound - 2} progress "
          f"(~{per_job:.2f} s per job / {exporter.progress_interval} s) = {bound}")
    print(f"drain (last run): {drain * 1000:.0f} ms from the last job's exit until the "
          f"exporter's flush returned ({len(ids) - len(unfinished)}/{len(ids)} completed)")


if __name__ == "__main__":
    main()
