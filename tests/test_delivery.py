"""Fault tests: tracked jobs reach a real `seenn serve` (in a subprocess) whatever it does.

Each test runs tracked code through the HTTP exporter while the backend is down,
killed, rate-limiting, failing or slow, then checks from the outside (the
backend's stored jobs and a proxy's log) that each job's final state is stored,
its calls arrived in order, each call was applied once, and that the tracked
code neither raised nor waited for the backend.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

import seenn
from seenn.exporters import HTTPExporter
from tests.faults import FaultProxy, ServeProcess, free_port

KEY = "sk_test_delivery"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    """`seenn serve` in a subprocess on a fixed free port (not started yet)."""
    process = ServeProcess(tmp_path / "backend.db", free_port(), KEY)
    yield process
    process.stop()


def run_jobs(tracker: seenn.Tracker, prefix: str, count: int = 12,
             steps: int = 15) -> dict[str, str]:
    """Run ``count`` tracked jobs on 4 threads; every third fails. Returns id -> outcome."""
    outcomes: dict[str, str] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        for n in range(offset, count, 4):
            try:
                with tracker.track("delivery-test", user_id=f"{prefix}-user",
                                   title=f"{prefix} {n}", stages=["a", "b"]) as job:
                    with lock:
                        outcomes[job.id] = "failed" if n % 3 == 2 else "completed"
                    for step in range(steps):
                        job.set_progress(step * 100 // steps, message=f"step {step}")
                    if n % 3 == 2:
                        raise KeyError("no such frame")
                    job.set_result({"type": "video", "url": f"https://cdn/{n}.mp4"})
            except KeyError:
                pass
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return outcomes


def check_stored(url: str, outcomes: dict[str, str]) -> None:
    """Each job's final state is on the backend."""
    with seenn.SeennClient(KEY, base_url=url) as client:
        for job_id, outcome in outcomes.items():
            job = client.jobs.get(job_id)
            assert job.status == outcome, job_id
            if outcome == "completed":
                assert job.progress == 100
                assert job.result is not None
            else:
                assert job.error is not None
                assert job.error.code == "KeyError"
                assert "traceback" not in (job.error.details or {})


def check_order_and_once(proxy: FaultProxy, outcomes: dict[str, str]) -> None:
    """Per job, applied calls are in sequence order, and no call was applied twice."""
    applied: dict[str, list[int]] = defaultdict(list)
    for exchange in proxy.log:
        if exchange.method == "GET" and exchange.path.startswith("/v1/eta/"):
            continue  # the ETA history of the job type: 404 until a job of it completes
        assert exchange.status not in (404, 409), exchange
        if exchange.forwarded and exchange.key and 200 <= exchange.status < 300:
            job_id, _, seq = exchange.key.partition(".")
            applied[job_id].append(int(seq.rstrip("p")))
    for job_id in outcomes:
        seqs = applied[job_id]
        assert seqs == sorted(seqs), (job_id, seqs)
        assert seqs[0] == 0


def tracker_for(url: str, **options: object) -> tuple[seenn.Tracker, HTTPExporter]:
    exporter = HTTPExporter(api_key=KEY, base_url=url, **options)  # type: ignore[arg-type]
    exporter._random = lambda: 0.05  # short, non-zero backoff
    return seenn.Tracker(exporters=[exporter]), exporter


def test_backend_down_when_jobs_run_and_up_later(serve: ServeProcess) -> None:
    """Jobs tracked while the backend is down all arrive once it starts."""
    tracker, exporter = tracker_for(serve.url)
    outcomes = run_jobs(tracker, "down")  # finishes before the backend exists: no waiting
    assert exporter.stats.delivered == 0
    serve.start()
    assert tracker.force_flush(60)
    check_stored(serve.url, outcomes)
    assert exporter.stats.lost == 0
    tracker.shutdown()


def test_backend_killed_mid_run_and_restarted(serve: ServeProcess) -> None:
    """A backend killed with SIGKILL between and during deliveries loses nothing."""
    serve.start()
    proxy = FaultProxy("127.0.0.1", serve.port)
    tracker, exporter = tracker_for(proxy.url)
    first = run_jobs(tracker, "before")
    assert tracker.force_flush(60)
    second = run_jobs(tracker, "during")
    serve.kill()  # while the second batch is being delivered
    third = run_jobs(tracker, "while-down")
    serve.start()
    assert tracker.force_flush(60)
    outcomes = {**first, **second, **third}
    check_stored(serve.url, outcomes)
    check_order_and_once(proxy, outcomes)
    assert exporter.stats.lost == 0
    tracker.shutdown()
    proxy.stop()


def test_rate_limited_backend(serve: ServeProcess) -> None:
    """A backend answering 429 with Retry-After gets everything, paced as it asks."""
    serve.extra = ("--rate-limit", "15")
    serve.start()
    proxy = FaultProxy("127.0.0.1", serve.port)
    tracker, exporter = tracker_for(proxy.url)
    outcomes = run_jobs(tracker, "limited", count=16)
    assert tracker.force_flush(120)
    check_stored(serve.url, outcomes)
    check_order_and_once(proxy, outcomes)
    assert any(e.status == 429 for e in proxy.log)
    assert exporter.stats.lost == 0
    tracker.shutdown()
    proxy.stop()


def test_backend_answering_500s(serve: ServeProcess) -> None:
    """Every third call failing with 500 delays delivery but loses and repeats nothing."""
    serve.start()
    proxy = FaultProxy("127.0.0.1", serve.port)
    proxy.fail_every = 3
    tracker, exporter = tracker_for(proxy.url)
    outcomes = run_jobs(tracker, "errors")
    assert tracker.force_flush(60)
    check_stored(serve.url, outcomes)
    check_order_and_once(proxy, outcomes)
    assert exporter.stats.retries > 0
    assert exporter.stats.lost == 0
    tracker.shutdown()
    proxy.stop()


def test_backend_slower_than_the_timeout(serve: ServeProcess) -> None:
    """Answers lost after the backend applied the call are retried under the same key."""
    serve.start()
    proxy = FaultProxy("127.0.0.1", serve.port)
    proxy.slow_next = 6
    proxy.slow_seconds = 2.0
    tracker, exporter = tracker_for(proxy.url, request_timeout=0.3)
    outcomes = run_jobs(tracker, "slow")
    assert tracker.force_flush(60)
    check_stored(serve.url, outcomes)
    check_order_and_once(proxy, outcomes)
    replayed_keys = [e.key for e in proxy.log if e.forwarded]
    assert len(replayed_keys) > len(set(replayed_keys))  # some calls went out twice...
    assert exporter.stats.lost == 0  # ...and were applied once (idempotency keys)
    tracker.shutdown()
    proxy.stop()


PRODUCER = textwrap.dedent("""
    import sys, threading
    import seenn
    from seenn.exporters import HTTPExporter

    exporter = HTTPExporter(api_key=sys.argv[1], base_url=sys.argv[2], outbox=sys.argv[3])
    seenn.configure(exporters=[exporter])
    n = 0
    while True:  # until killed
        with seenn.track("crash-test", user_id="crash", title=f"job {n}") as job:
            for step in range(20):
                job.set_progress(step * 5)
            job.set_result({"type": "video", "url": f"https://cdn/{n}.mp4"})
        print(job.id, flush=True)
        n += 1
""")


def test_producer_killed_with_sigkill_replays_its_outbox(serve: ServeProcess,
                                                         tmp_path: Path) -> None:
    """A producer killed by SIGKILL leaves its finished jobs in the outbox for the next run."""
    serve.start()
    proxy = FaultProxy("127.0.0.1", serve.port)
    proxy.fail_every = 2  # keep deliveries pending when the kill comes
    outbox = tmp_path / "outbox.db"
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    producer = subprocess.Popen([sys.executable, str(script), KEY, proxy.url, str(outbox)],
                                stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    finished: list[str] = []
    assert producer.stdout is not None
    for line in producer.stdout:
        finished.append(line.strip())
        if len(finished) == 25:
            producer.kill()
            break
    producer.wait(timeout=60)
    proxy.fail_every = 0
    with HTTPExporter(api_key=KEY, base_url=proxy.url, outbox=outbox) as replay:
        assert replay.stats.replayed > 0
        assert replay.force_flush(60)
    check_stored(serve.url, dict.fromkeys(finished, "completed"))
    check_order_and_once(proxy, dict.fromkeys(finished, "completed"))
    proxy.stop()


def test_tracked_code_never_waits_for_a_hanging_backend() -> None:
    """With every call hanging, tracked blocks finish while no call has been answered."""
    port = free_port()
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen(100)  # accepts connections, never answers
    try:
        tracker, exporter = tracker_for(f"http://127.0.0.1:{port}", request_timeout=30.0)
        outcomes = run_jobs(tracker, "hang")
        assert len(outcomes) == 12
        assert exporter.stats.delivered == 0
        tracker.shutdown(timeout=0.5)
    finally:
        listener.close()
