"""HTTPExporter and `POST /v1/events`: batches when the backend offers them, single calls else.

A real `seenn serve` (in process) sits behind the fault proxy of ``tests.faults``,
which passes ``/healthz`` through and records every call and its answer, so the
tests count batches and single calls on the server's side and read, from the
batches' bodies and results, which calls were applied and in what order.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import seenn
import seenn.server
from seenn import JobEvent
from seenn.exporters import HTTPExporter
from seenn.server import RunningServer
from tests.faults import FaultProxy
from tests.polling import wait_until
from tests.server import RecordingServer


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[RunningServer]:
    """A `seenn serve` offering the events extension."""
    with seenn.server.running(tmp_path / "seenn.db") as srv:
        yield srv


@pytest.fixture
def proxy(backend: RunningServer) -> Iterator[FaultProxy]:
    """The fault proxy in front of it, passing /healthz through."""
    host, port = backend.url.removeprefix("http://").split(":")
    front = FaultProxy(host, int(port))
    front.pass_healthz = True
    yield front
    front.stop()


def exporter_for(url: str, key: str, **options: Any) -> HTTPExporter:
    exporter = HTTPExporter(api_key=key, base_url=url, eta_history_interval=None,
                            **options)
    exporter._random = lambda: 0.05  # short, non-zero backoff
    return exporter


def run_jobs(tracker: seenn.Tracker, count: int = 12, steps: int = 6) -> dict[str, str]:
    """Tracked jobs on 4 threads, each with a child; every third fails. id -> outcome."""
    outcomes: dict[str, str] = {}
    lock = threading.Lock()

    def worker(offset: int) -> None:
        for n in range(offset, count, 4):
            try:
                with tracker.track("batch-test", user_id="u", title=f"job {n}") as job:
                    with lock:
                        outcomes[job.id] = "failed" if n % 3 == 2 else "completed"
                    with tracker.track("batch-child", title=f"child {n}") as child:
                        with lock:
                            outcomes[child.id] = "completed"
                        child.set_progress(50)
                    for step in range(steps):
                        job.set_progress(step * 100 // steps, message=f"step {step}")
                    if n % 3 == 2:
                        raise KeyError("no such frame")
                    job.set_result({"type": "video", "url": f"https://cdn/{n}.mp4"})
            except KeyError:
                pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def applied_calls(proxy: FaultProxy) -> dict[str, list[str]]:
    """Per job, the idempotency keys of the calls the backend applied, in order."""
    applied: dict[str, list[str]] = defaultdict(list)
    for exchange in proxy.log:
        if not exchange.forwarded or not 200 <= exchange.status < 300:
            continue
        if exchange.path.endswith("/v1/events"):
            events = json.loads(exchange.body)["events"]
            results = json.loads(exchange.answer)["results"]
            for event, result in zip(events, results, strict=True):
                if 200 <= result["status"] < 300 and not result.get("replayed"):
                    key = event["idempotencyKey"]
                    applied[key.partition(".")[0]].append(key)
        elif exchange.method == "POST" and exchange.key and not exchange.replayed:
            applied[exchange.key.partition(".")[0]].append(exchange.key)
    return applied


def check_stored(backend: RunningServer, outcomes: dict[str, str]) -> None:
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
        for job_id, outcome in outcomes.items():
            job = client.jobs.get(job_id)
            assert job.status == outcome, job_id
            if job.job_type == "batch-child":
                assert job.parent is not None


def check_order_and_once(proxy: FaultProxy, outcomes: dict[str, str]) -> None:
    """Each job's calls were applied once each, in the order of its events."""
    applied = applied_calls(proxy)
    for job_id in outcomes:
        keys = applied[job_id]
        assert len(keys) == len(set(keys)), (job_id, keys)
        sequences = [int(key.partition(".")[2].rstrip("p")) for key in keys]
        assert sequences == sorted(sequences), (job_id, keys)
        assert sequences[0] == 0, (job_id, keys)


def test_uses_batches_when_the_backend_offers_them(backend: RunningServer,
                                                  proxy: FaultProxy) -> None:
    """Calls of many jobs go in POST /v1/events; order, links and outcomes are kept."""
    exporter = exporter_for(proxy.url, backend.api_key)
    tracker = seenn.Tracker(exporters=[exporter])
    outcomes = run_jobs(tracker)
    assert tracker.force_flush(60)
    check_stored(backend, outcomes)
    check_order_and_once(proxy, outcomes)
    batches = proxy.exchanges("/v1/events")
    assert batches and all(e.status == 200 for e in batches)
    assert len(proxy.exchanges("/healthz")) == 1
    assert exporter.stats.batches == len(batches)
    stats = exporter.stats
    assert stats.requests < stats.delivered
    assert (stats.lost, stats.rejected, stats.dropped) == (0, 0, 0)
    tracker.shutdown()


def test_falls_back_to_single_calls_without_the_extension(tmp_path: Path) -> None:
    """A backend whose /healthz lists no events gets one call per event, never a batch."""
    with seenn.server.running(tmp_path / "off.db", max_events=0) as backend:
        host, port = backend.url.removeprefix("http://").split(":")
        front = FaultProxy(host, int(port))
        front.pass_healthz = True
        try:
            exporter = exporter_for(front.url, backend.api_key)
            tracker = seenn.Tracker(exporters=[exporter])
            outcomes = run_jobs(tracker, count=8)
            assert tracker.force_flush(60)
            check_stored(backend, outcomes)
            check_order_and_once(front, outcomes)
            assert front.exchanges("/v1/events") == []
            assert len(front.exchanges("/healthz")) == 1
            assert exporter.stats.batches == 0
            tracker.shutdown()
        finally:
            front.stop()


def test_never_asks_with_batching_turned_off(backend: RunningServer,
                                            proxy: FaultProxy) -> None:
    """max_batch_events=0 sends single calls without asking /healthz."""
    exporter = exporter_for(proxy.url, backend.api_key, max_batch_events=0)
    tracker = seenn.Tracker(exporters=[exporter])
    outcomes = run_jobs(tracker, count=4)
    assert tracker.force_flush(60)
    check_stored(backend, outcomes)
    assert proxy.exchanges("/healthz") == [] and proxy.exchanges("/v1/events") == []
    tracker.shutdown()


def event(kind: str, job_id: str, sequence: int, **fields: Any) -> JobEvent:
    status = {"started": "pending", "progress": "running", "completed": "completed",
              "failed": "failed"}[kind]
    values: dict[str, Any] = {
        "kind": kind, "job_id": job_id, "job_type": "t", "user_id": "u", "title": "T",
        "status": status, "message": None, "stage": None, "queue": None, "metadata": None,
        "result": None, "error": None, "retryable": None, "parent_id": None,
        "child_index": None, "sequence": sequence, "timestamp": time.time(),
        "trace_id": None, "span_id": None,
        "progress": 100 if kind == "completed" else fields.pop("progress", 0)}
    values.update(fields)
    return JobEvent(**values)


OFFER = (200, {"status": "ok", "extensions": {"events": {"maxEvents": 50,
                                                         "maxBytes": 524288}}})


def test_a_backend_that_drops_the_extension_gets_single_calls_for_good() -> None:
    """A 404 from /v1/events turns batching off: the same calls go singly, and stay so."""
    server = RecordingServer().start()
    server.health = OFFER
    try:
        exporter = exporter_for(server.url, "sk_test_x", progress_interval=0)
        exporter.export([event("started", "a", 0), event("started", "b", 1)])
        assert exporter.force_flush(10)
        exporter.export([event("completed", "a", 1), event("completed", "b", 2)])
        assert exporter.force_flush(10)
        paths = [r.path for r in server.requests]
        assert paths[0] == "/v1/events"
        assert paths.count("/v1/events") == 1
        assert sorted(paths[1:3]) == ["/v1/jobs", "/v1/jobs"]
        assert sorted(paths[3:]) == ["/v1/jobs/a/complete", "/v1/jobs/b/complete"]
        assert [r.headers["Idempotency-Key"] for r in server.requests[1:3]] in (
            ["a.0", "b.1"], ["b.1", "a.0"])
        assert server.backend.jobs["a"]["status"] == "completed"
        assert exporter.stats.delivered == 4
        exporter.shutdown()
    finally:
        server.stop()


def test_each_result_settles_its_own_call() -> None:
    """A batch's results map back as single answers: a server id, a refusal, a retry."""
    server = RecordingServer().start()
    server.health = OFFER
    job = {"id": "srv_a", "appId": "app", "userId": "u", "jobType": "t", "title": "T",
           "status": "pending", "progress": 0, "createdAt": "2025-01-01T00:00:00.000Z",
           "updatedAt": "2025-01-01T00:00:00.000Z"}
    server.reply(200, {"results": [
        {"status": 201, "body": job},
        {"status": 400, "body": {"error": {"code": "VALIDATION_ERROR", "message": "title",
                                           "details": {"field": "title"}}}},
        {"status": 500, "body": {"error": {"code": "INTERNAL", "message": "oops"}}}]})
    try:
        exporter = exporter_for(server.url, "sk_test_x", progress_interval=0)
        exporter.export([event("started", "a", 0), event("started", "b", 0),
                         event("started", "c", 0)])
        exporter.export([event("progress", "a", 1, progress=5),
                         event("progress", "b", 1, progress=5)])
        wait_until(lambda: exporter.pending == 0, what="every call settled")
        first = server.requests[0].json["events"]
        assert [(e["type"], e["idempotencyKey"]) for e in first] == [
            ("start", "a.0"), ("start", "b.0"), ("start", "c.0")]
        later = [(r.path, r.headers.get("Idempotency-Key")) for r in server.requests[1:]]
        # The backend (in memory here) lacks /v1/events: a's progress and c's retried
        # start go singly, a's to the id the backend gave; b was refused, so its
        # progress is dropped with it.
        assert ("/v1/jobs/srv_a/progress", "a.1") in later
        assert ("/v1/jobs", "c.0") in later
        assert not any(key and key.startswith("b.") for _, key in later)
        stats = exporter.stats
        assert (stats.rejected, stats.retries) == (3, 1)  # b.0, b.1 dropped, a.1 a 404 here
        exporter.shutdown()
    finally:
        server.stop()


def test_terminal_states_survive_a_batch_endpoint_failing_midway(
        backend: RunningServer, proxy: FaultProxy) -> None:
    """Batches answered 500, or applied with the answer lost, are retried under their keys."""
    proxy.fail_every = 3
    exporter = exporter_for(proxy.url, backend.api_key, request_timeout=0.5)
    tracker = seenn.Tracker(exporters=[exporter])
    outcomes = run_jobs(tracker)
    proxy.fail_every = 0
    proxy.slow_next = 2
    proxy.slow_seconds = 2.0
    more = run_jobs(tracker, count=8)
    assert tracker.force_flush(60)
    outcomes.update(more)
    check_stored(backend, outcomes)
    check_order_and_once(proxy, outcomes)
    assert exporter.stats.retries > 0
    assert exporter.stats.lost == 0
    tracker.shutdown()


def test_an_event_failing_inside_a_batch_is_retried_alone(
        backend: RunningServer, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result of 500 for one event (its savepoint rolled back) retries that call only."""
    import seenn.server._writes as writes

    real = writes.update_job
    failed: list[str] = []

    def first_complete_fails(tx: Any, action: str, job_id: str, body: dict[str, Any],
                             **kwargs: Any) -> Any:
        if action == "complete" and not failed:
            failed.append(job_id)
            raise RuntimeError("a storage hiccup")
        return real(tx, action, job_id, body, **kwargs)

    monkeypatch.setattr(writes, "update_job", first_complete_fails)
    exporter = exporter_for(proxy.url, backend.api_key)
    tracker = seenn.Tracker(exporters=[exporter])
    outcomes = run_jobs(tracker, count=8)
    assert tracker.force_flush(60)
    assert failed
    check_stored(backend, outcomes)
    check_order_and_once(proxy, outcomes)
    assert exporter.stats.lost == 0
    tracker.shutdown()


def test_a_backend_down_when_asked_is_asked_again_later() -> None:
    """No answer to /healthz means single calls for now, and asking again a minute later."""
    server = RecordingServer().start()
    server.health = (503, {"error": {"code": "UNAVAILABLE", "message": "starting"}})
    try:
        exporter = exporter_for(server.url, "sk_test_x", progress_interval=0)
        offset = [0.0]
        exporter._clock = lambda: time.monotonic() + offset[0]
        exporter.export([event("started", "a", 0), event("started", "b", 0)])
        assert exporter.force_flush(10)
        assert [r.path for r in server.requests] == ["/v1/jobs", "/v1/jobs"]
        server.health = OFFER
        offset[0] = 61.0
        exporter.export([event("completed", "a", 1), event("completed", "b", 1)])
        assert exporter.force_flush(10)
        assert len(server.health_requests) == 2
        # Offered now; the in-memory backend has no /v1/events (404): single calls again.
        assert server.requests[2].path == "/v1/events"
        assert sorted(r.path for r in server.requests[3:]) == [
            "/v1/jobs/a/complete", "/v1/jobs/b/complete"]
        assert exporter.stats.delivered == 4
        exporter.shutdown()
    finally:
        server.stop()


def test_a_batch_refused_whole_goes_out_singly() -> None:
    """A 413 (or 400) to the whole batch sends its calls singly at once; batches get smaller."""
    server = RecordingServer().start()
    server.health = OFFER
    server.reply(413, {"error": {"code": "PAYLOAD_TOO_LARGE", "message": "too large"}})
    try:
        exporter = exporter_for(server.url, "sk_test_x", progress_interval=0)
        exporter.export([event("started", f"j{i}", 0) for i in range(6)])
        assert exporter.force_flush(10)
        paths = [r.path for r in server.requests]
        assert paths == ["/v1/events"] + ["/v1/jobs"] * 6
        assert len(server.requests[0].json["events"]) == 6
        assert exporter._batch_max == 3
        assert set(server.backend.jobs) == {f"j{i}" for i in range(6)}
        assert (exporter.stats.delivered, exporter.stats.requests) == (6, 7)
        exporter.shutdown()
    finally:
        server.stop()


def test_a_batch_answer_over_the_cap_goes_out_singly() -> None:
    """A batch whose answer is over the client's cap is sent again as single calls."""
    server = RecordingServer().start()
    server.health = OFFER
    server.reply(200, {"results": [], "padding": "x" * 5000})
    try:
        exporter = exporter_for(server.url, "sk_test_x", progress_interval=0)
        exporter._client._http.max_response_bytes = 2000
        exporter.export([event("started", f"j{i}", 0) for i in range(4)])
        assert exporter.force_flush(10)
        assert [r.path for r in server.requests] == ["/v1/events"] + ["/v1/jobs"] * 4
        assert set(server.backend.jobs) == {f"j{i}" for i in range(4)}
        exporter.shutdown()
    finally:
        server.stop()


@pytest.mark.parametrize("value", [-1, 501, True, 2.5, "5"])
def test_a_bad_max_batch_events_is_refused(value: Any) -> None:
    """max_batch_events takes an integer from 0 to 500; anything else names it."""
    with pytest.raises(seenn.ValidationError, match="max_batch_events"):
        HTTPExporter(api_key="sk_test_x", base_url="http://127.0.0.1:9",
                     max_batch_events=value)
