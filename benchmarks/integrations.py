"""What the Celery integration costs a task: at publish and through a real worker.

Starts a Redis server (Debian's ``redis-server``) and ``seenn serve`` (in
subprocesses, so their CPU is not the publisher's) on free loopback ports, then
measures, in alternating runs so that a noisy neighbour slows both sides alike:

1. ``task.delay()`` in the publishing process without seenn, with
   ``instrument()`` and an exporter that drops events (the hook alone: the job
   made, started and handed off), and with an HTTP exporter (the start's
   ``POST /jobs`` is made on a delivery thread, but its CPU is the
   publisher's: it shares the GIL);
2. a prefork worker (one child) running ``--tasks`` small tasks, each
   reporting progress five times: the time from the first enqueue to the last
   task done, with the integration and an HTTP exporter in the worker, against
   the same worker without them (``@seenn.job`` then tracks nothing). The
   difference divided by the number of tasks is the extra time per task.

Run it alone (other processes skew the figures)::

    python benchmarks/integrations.py [--tasks 400] [--repeat 3] [--publish 2000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _serve import start_server

ROOT = Path(__file__).resolve().parents[1]
APP = '''
import os
import redis
from celery import Celery
import seenn

app = Celery("bench", broker=os.environ["BENCH_BROKER"])
app.conf.task_ignore_result = True
app.conf.worker_hijack_root_logger = False
done = redis.Redis.from_url(os.environ["BENCH_BROKER"])

if os.environ.get("BENCH_SEENN") == "1":
    from seenn.integrations import celery as seenn_celery
    seenn.configure(api_key=os.environ["SEENN_API_KEY"], base_url=os.environ["SEENN_BASE_URL"])
    seenn_celery.instrument()


@app.task
@seenn.job("bench", user_id=lambda i: f"user_{i % 50}")
def step(i):
    job = seenn.current_job()
    for p in (20, 40, 60, 80, 90):
        if job is not None:
            job.set_progress(p)
    done.incr("bench:done")
'''


KEY = "sk_test_bench"


class Discard:
    """An exporter that drops what it gets (inline: no batch processor)."""

    inline = True

    def export(self, events: object) -> object:
        from seenn.exporters import ExportResult

        return ExportResult.SUCCESS

    def force_flush(self, timeout: float = 30.0) -> bool:
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench_celery_app", "worker", "-P", "prefork",
         "-c", "1", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel", "WARNING", "--prefetch-multiplier", "16"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def stop(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def worker_run(env: dict[str, str], tasks: int, redis_url: str) -> float:
    """Seconds from the first enqueue to the last task done, in a fresh worker."""
    import redis

    connection = redis.Redis.from_url(redis_url)
    connection.delete("bench:done")
    proc = start_worker(env)
    try:
        # Warm up: the worker is up when one task has run.
        sys.path.insert(0, env["BENCH_DIR"])
        import bench_celery_app

        bench_celery_app.app.conf.broker_url = redis_url
        bench_celery_app.step.delay(0)
        wait(lambda: connection.get("bench:done") == b"1", 120, "the worker")
        started = time.perf_counter()
        for i in range(tasks):
            bench_celery_app.step.delay(i)
        wait(lambda: int(connection.get("bench:done") or 0) >= tasks + 1, 600, "the tasks")
        return time.perf_counter() - started
    finally:
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--publish", type=int, default=2000)
    args = parser.parse_args()

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    port = free_port()
    redis_proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL)
    redis_url = f"redis://127.0.0.1:{port}/0"
    workdir = Path(tempfile.mkdtemp())
    (workdir / "bench_celery_app.py").write_text(APP)

    import seenn

    served = start_server(workdir / "serve.db", "--api-key", KEY)
    base_url = served.url
    try:
        env = {**os.environ, "BENCH_BROKER": redis_url, "BENCH_DIR": str(workdir),
               "SEENN_API_KEY": KEY, "SEENN_BASE_URL": base_url,
               "PYTHONPATH": os.pathsep.join([str(workdir), str(ROOT / "src")]),
               "SEENN_EXPORTER": "none"}
        os.environ.update({"BENCH_BROKER": redis_url, "SEENN_API_KEY": KEY,
                           "SEENN_BASE_URL": base_url})
        sys.path.insert(0, str(workdir))
        import bench_celery_app

        from seenn.integrations import celery as seenn_celery

        bench_celery_app.app.conf.broker_url = redis_url
        wait(lambda: subprocess.run([binary.replace("server", "cli"), "-p", str(port),
                                     "ping"], capture_output=True).returncode == 0,
             30, "redis")

        # 1. Publishing.
        def publish(n: int) -> float:
            started = time.perf_counter()
            for i in range(n):
                bench_celery_app.step.apply_async((i,), queue="parked")
            return (time.perf_counter() - started) / n * 1e6

        plain_us = hook_us = with_us = float("inf")
        publish(200)  # warm up the connection
        for _ in range(args.repeat):
            seenn.configure(exporters=[])
            seenn_celery.uninstrument()
            plain_us = min(plain_us, publish(args.publish))
            # The hook alone: the job made, started and handed off, its events dropped.
            seenn.configure(exporters=[Discard()])
            seenn_celery.instrument()
            hook_us = min(hook_us, publish(args.publish))
            seenn.configure(api_key=KEY, base_url=base_url)
            with_us = min(with_us, publish(args.publish))
            seenn.force_flush(timeout=120)
        seenn.configure(exporters=[])
        seenn_celery.uninstrument()

        # 2. Through a worker.
        plain_s = with_s = float("inf")
        for _ in range(args.repeat):
            plain_s = min(plain_s, worker_run({**env, "BENCH_SEENN": "0"}, args.tasks,
                                              redis_url))
            with_s = min(with_s, worker_run({**env, "BENCH_SEENN": "1"}, args.tasks,
                                            redis_url))
    finally:
        served.stop()
        redis_proc.terminate()
        redis_proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    per_plain = plain_s / args.tasks * 1e3
    per_with = with_s / args.tasks * 1e3
    print(f"{'measurement':44} {'without':>12} {'with seenn':>12} {'extra':>12}")
    print(f"{'delay(): the hook alone (us per call)':44} {plain_us:12.1f} {hook_us:12.1f} "
          f"{hook_us - plain_us:12.1f}")
    print(f"{'delay(): with HTTP delivery (us per call)':44} {plain_us:12.1f} {with_us:12.1f} "
          f"{with_us - plain_us:12.1f}")
    print(f"{'task through a prefork worker (ms per task)':44} {per_plain:12.2f} "
          f"{per_with:12.2f} {per_with - per_plain:12.2f}")
    print(f"({args.tasks} tasks of 5 progress updates each, best of {args.repeat} runs; "
          f"the worker's exporter sends to seenn serve on loopback)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
