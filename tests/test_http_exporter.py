"""HTTPExporter: ordered, coalesced, retried delivery to real loopback backends."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import seenn
import seenn.server
from seenn._core.events import JobEvent
from seenn._core.pipeline import ExportResult
from seenn.exporters._http import HTTPExporter
from seenn.server import RunningServer
from tests.faults import free_port
from tests.polling import wait_until
from tests.server import RecordingServer

STATUS = {"started": "running", "progress": "running", "completed": "completed",
          "failed": "failed"}


def ev(kind: str, job: str, seq: int, **fields: Any) -> JobEvent:
    """A JobEvent as the tracker would emit it."""
    values: dict[str, Any] = {
        "kind": kind, "job_id": job, "job_type": "video", "user_id": "u1", "title": "Video",
        "status": STATUS[kind], "progress": 100 if kind == "completed" else 0,
        "message": None, "stage": None, "queue": None, "metadata": None, "result": None,
        "error": None, "retryable": None, "parent_id": None, "child_index": None,
        "sequence": seq, "timestamp": time.time(), "trace_id": None, "span_id": None}
    values.update(fields)
    return JobEvent(**values)


def lifecycle(job: str, steps: int = 3, **start: Any) -> list[JobEvent]:
    """started, ``steps`` progress events, completed."""
    events = [ev("started", job, 0, **start)]
    events += [ev("progress", job, i, progress=i * 10, message=f"step {i}")
               for i in range(1, steps + 1)]
    events.append(ev("completed", job, steps + 1, message="done",
                     result=seenn.JobResult(type="video", url=f"https://cdn/{job}.mp4")))
    return events


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[RunningServer]:
    """A real `seenn serve` on loopback."""
    with seenn.server.running(tmp_path / "x.db") as srv:
        yield srv


def exporter_for(url: str, key: str, **options: Any) -> HTTPExporter:
    """An exporter whose retry waits are zero (so tests never wait on backoff)."""
    exporter = HTTPExporter(api_key=key, base_url=url, **options)
    exporter._random = lambda: 0.0
    return exporter


def stored(backend: RunningServer, job_id: str) -> seenn.Job:
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
        return client.jobs.get(job_id)


def test_a_job_reaches_the_backend_in_order(backend: RunningServer) -> None:
    """start, progress and completion arrive in order under the in-process id."""
    exporter = exporter_for(backend.url, backend.api_key)
    assert exporter.export(lifecycle("job_A", stage=seenn.Stage("render", 1, 2),
                                     metadata={"prompt": "cat"})) is ExportResult.SUCCESS
    assert exporter.force_flush(30)
    job = stored(backend, "job_A")
    assert (job.status, job.progress, job.message) == ("completed", 100, "done")
    assert job.result == seenn.JobResult("video", "https://cdn/job_A.mp4")
    assert job.metadata == {"prompt": "cat"}
    assert exporter.stats.rejected == 0
    assert exporter.stats.delivered == exporter.stats.accepted - exporter.stats.coalesced
    exporter.shutdown()


def test_progress_is_coalesced_while_calls_are_in_flight(backend: RunningServer) -> None:
    """A thousand progress events of one job cost a handful of calls; the latest wins."""
    exporter = exporter_for(backend.url, backend.api_key, progress_interval=0.05)
    exporter.export([ev("started", "job_P", 0)])
    for i in range(1, 1001):
        exporter.export([ev("progress", "job_P", i, progress=i // 10, message=f"{i}")])
    assert exporter.force_flush(30)
    job = stored(backend, "job_P")
    assert (job.progress, job.message) == (100, "1000")
    assert exporter.stats.requests < 50
    assert exporter.stats.coalesced > 900
    exporter.shutdown()


def test_many_jobs_are_delivered_concurrently_each_in_order(backend: RunningServer) -> None:
    """Fifty interleaved jobs all complete, with no call reaching a job before its start."""
    exporter = exporter_for(backend.url, backend.api_key, max_concurrency=8)
    streams = [lifecycle(f"job_{n:02d}") for n in range(50)]
    for step in range(5):
        exporter.export([stream[step] for stream in streams])
    assert exporter.force_flush(60)
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
        jobs = list(client.jobs.iter("u1", page_size=100))
    assert len(jobs) == 50
    assert {j.status for j in jobs} == {"completed"}
    assert exporter.stats.rejected == 0
    assert exporter.stats.retries == 0
    exporter.shutdown()


def test_children_start_after_their_parents(backend: RunningServer) -> None:
    """A child's start waits for its parent's, so the backend always knows the parent."""
    exporter = exporter_for(backend.url, backend.api_key, max_concurrency=8)
    events = []
    for n in range(10):
        parent = f"job_parent{n}"
        events.append(ev("started", parent, 0))
        events += [ev("started", f"{parent}_c{i}", 0, parent_id=parent, child_index=i)
                   for i in range(3)]
    exporter.export(events)
    assert exporter.force_flush(60)
    assert exporter.stats.rejected == 0
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
        family = client.jobs.children("job_parent7")
    assert [c.id for c in family.children] == [f"job_parent7_c{i}" for i in range(3)]
    assert family.parent.children == seenn.ChildrenStats(3, running=0, pending=3)
    exporter.shutdown()


def test_server_assigned_ids_are_mapped(server: RecordingServer) -> None:
    """When the backend answers a start with its own id, later calls use that id."""
    server.reply(201, {"id": "srv_99", "status": "pending", "progress": 0})
    exporter = exporter_for(server.url, "sk_test_x")
    exporter.export(lifecycle("job_local", steps=1))
    assert exporter.force_flush(30)
    paths = [r.path for r in server.requests]
    assert paths == ["/v1/jobs", "/v1/jobs/srv_99/progress", "/v1/jobs/srv_99/complete"]
    exporter.shutdown()


def test_retries_reuse_the_idempotency_key(server: RecordingServer) -> None:
    """Failed calls are retried with the key <job id>.<sequence>, then delivered."""
    server.reply(503, {"error": {"code": "DOWN", "message": "x"}}, times=2)
    server.reply(drop=True)
    exporter = exporter_for(server.url, "sk_test_x")
    exporter.export([ev("started", "job_R", 0)])
    assert exporter.force_flush(30)
    starts = [r for r in server.requests if r.path == "/v1/jobs"]
    assert len(starts) == 4
    assert {r.headers["Idempotency-Key"] for r in starts} == {"job_R.0"}
    assert exporter.stats.retries == 3
    assert exporter.stats.delivered == 1
    exporter.shutdown()


def test_rate_limits_pause_and_resume(server: RecordingServer) -> None:
    """A 429 with Retry-After is waited out, then the call goes through."""
    server.reply(429, {"error": {"code": "RATE_LIMITED", "message": "slow"}},
                 headers={"Retry-After": "0.05"})
    exporter = exporter_for(server.url, "sk_test_x")
    exporter.export(lifecycle("job_L", steps=1))
    assert exporter.force_flush(30)
    assert server.backend.jobs["job_L"]["status"] == "completed"
    assert exporter.stats.retries == 1
    exporter.shutdown()


def test_a_rejected_start_drops_its_job_without_a_404_storm(
        server: RecordingServer, caplog: pytest.LogCaptureFixture) -> None:
    """A 400 on start is logged once with the job id; the job's later events are not sent."""
    server.reply(400, {"error": {"code": "VALIDATION_ERROR", "message": "bad"}})
    exporter = exporter_for(server.url, "sk_test_x")
    with caplog.at_level(logging.WARNING, logger="seenn"):
        exporter.export(lifecycle("job_X", steps=5))
        assert exporter.force_flush(30)
        exporter.export([ev("progress", "job_X", 99)])
        assert exporter.force_flush(30)
    assert len(server.requests) == 1
    # start, the coalesced progress, completion and the late progress; the rest coalesced
    assert exporter.stats.rejected == 4
    assert exporter.stats.rejected + exporter.stats.coalesced == exporter.stats.accepted
    assert exporter.stats.retries == 0
    warnings = [r.getMessage() for r in caplog.records if "job_X" in r.getMessage()]
    assert len(warnings) == 1
    assert "refused the started event of job job_X" in warnings[0]
    exporter.shutdown()


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_are_not_retried(server: RecordingServer, status: int) -> None:
    """401 and 403 answers are counted, never retried."""
    server.reply(status, {"error": {"code": "NOPE", "message": "no"}}, times=3)
    exporter = exporter_for(server.url, "sk_test_x")
    exporter.export([ev("started", f"job_{i}", 0) for i in range(3)])
    assert exporter.force_flush(30)
    assert len(server.requests) == 3
    assert exporter.stats.rejected == 3
    exporter.shutdown()


def test_a_terminal_event_replayed_after_success_counts_as_delivered(
        server: RecordingServer) -> None:
    """A 409 on complete (the job is finished already) is not an error."""
    server.reply(201, {"id": "job_D", "status": "pending", "progress": 0})
    server.reply(409, {"error": {"code": "CONFLICT", "message": "already completed"}})
    exporter = exporter_for(server.url, "sk_test_x")
    exporter.export([ev("started", "job_D", 0), ev("completed", "job_D", 1)])
    assert exporter.force_flush(30)
    assert exporter.stats.delivered == 2
    assert exporter.stats.rejected == 0
    exporter.shutdown()


def test_backend_down_then_up_loses_nothing(tmp_path: Path) -> None:
    """Events exported while the backend is down are delivered once it comes up."""
    port = free_port()
    exporter = exporter_for(f"http://127.0.0.1:{port}", "sk_test_late")
    exporter._random = lambda: 0.01
    exporter.export(lifecycle("job_W", steps=2))
    assert not exporter.force_flush(0.2)
    assert exporter.pending > 0
    with seenn.server.running(tmp_path / "late.db", port=port, api_key="sk_test_late") as srv:
        assert exporter.force_flush(60)
        assert stored(srv, "job_W").status == "completed"
    assert exporter.stats.lost == 0
    exporter.shutdown()


def test_events_past_the_delivery_timeout_are_lost_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    """With the backend unreachable for longer than delivery_timeout, events count as lost."""
    exporter = exporter_for(f"http://127.0.0.1:{free_port()}", "sk_test_x",
                            delivery_timeout=0.3)
    exporter._random = lambda: 0.02
    with caplog.at_level(logging.ERROR, logger="seenn"):
        exporter.export(lifecycle("job_G", steps=1))
        assert exporter.force_flush(30) is False  # nothing is pending, but a job was lost
        assert exporter.force_flush(30)  # and that was said once
    assert exporter.stats.lost == 1
    assert exporter.stats.rejected == 2  # the job's later events go with its start
    assert any("gave up on the started event of job job_G" in r.getMessage()
               for r in caplog.records)
    exporter.shutdown()


def test_memory_is_bounded_by_max_pending_jobs() -> None:
    """Beyond max_pending_jobs new jobs are dropped whole and counted."""
    exporter = exporter_for(f"http://127.0.0.1:{free_port()}", "sk_test_x",
                            max_pending_jobs=2)
    exporter._random = lambda: 1.0
    for n in range(4):
        exporter.export([ev("started", f"job_{n}", 0)])
    exporter.export([ev("completed", "job_3", 1)])
    assert exporter.stats.dropped == 3  # two starts, and job_3's end with its start
    assert exporter.pending == 2
    exporter.shutdown(timeout=0.1)


def test_tracebacks_stay_out_unless_asked_for(server: RecordingServer) -> None:
    """error.details keeps the exception type; traceback and chain only with include_traceback."""
    error = seenn.JobError("ValueError", "bad frame", {"type": "builtins.ValueError",
                                                       "traceback": "Traceback...",
                                                       "chain": [{"type": "KeyError"}]})
    for include in (False, True):
        exporter = exporter_for(server.url, "sk_test_x", include_traceback=include)
        job = f"job_tb_{include}"
        exporter.export([ev("started", job, 0),
                         ev("failed", job, 1, error=error, retryable=True)])
        assert exporter.force_flush(30)
        exporter.shutdown()
        body = server.requests[-1].json
        assert body["retryable"] is True
        assert body["error"]["code"] == "ValueError"
        details = body["error"]["details"]
        assert details["type"] == "builtins.ValueError"
        assert ("traceback" in details) is include
        assert ("chain" in details) is include


def test_trace_context_goes_into_metadata(server: RecordingServer) -> None:
    """include_trace_context puts the start's traceId and spanId into the job's metadata."""
    exporter = exporter_for(server.url, "sk_test_x", include_trace_context=True)
    exporter.export([ev("started", "job_T", 0, metadata={"a": 1}, trace_id="ab" * 16,
                        span_id="cd" * 8)])
    assert exporter.force_flush(30)
    assert server.requests[0].json["metadata"] == {"a": 1, "traceId": "ab" * 16,
                                                   "spanId": "cd" * 8}
    exporter.shutdown()


def test_jobs_without_user_or_title_get_protocol_defaults(server: RecordingServer) -> None:
    """A job tracked without user_id or title is sent as user 'anonymous' titled by its type."""
    exporter = exporter_for(server.url, "sk_test_x")
    exporter.export([ev("started", "job_N", 0, user_id=None, title=None)])
    assert exporter.force_flush(30)
    body = server.requests[0].json
    assert (body["userId"], body["title"], body["id"]) == ("anonymous", "video", "job_N")
    exporter.shutdown()


def test_outbox_keeps_undelivered_events_for_the_next_start(tmp_path: Path) -> None:
    """Events that could not be delivered stay in the outbox and are replayed exactly once."""
    port = free_port()
    outbox = tmp_path / "outbox.db"
    first = exporter_for(f"http://127.0.0.1:{port}", "sk_test_ob", outbox=outbox)
    first._random = lambda: 1.0
    first.export(lifecycle("job_O", steps=2))
    first.shutdown(timeout=0.1)
    assert first.stats.lost == 0
    with seenn.server.running(tmp_path / "ob.db", port=port, api_key="sk_test_ob") as srv:
        second = exporter_for(srv.url, "sk_test_ob", outbox=outbox)
        assert second.stats.replayed >= 2
        assert second.force_flush(60)
        job = stored(srv, "job_O")
        assert (job.status, job.progress) == ("completed", 100)
        second.shutdown()
        third = exporter_for(srv.url, "sk_test_ob", outbox=outbox)
        assert third.stats.replayed == 0
        third.shutdown()


def test_persist_makes_start_and_end_durable_before_export(tmp_path: Path,
                                                          backend: RunningServer) -> None:
    """persist() writes start and terminal events at once; export() later does not duplicate."""
    import sqlite3

    outbox = tmp_path / "p.db"
    exporter = exporter_for(backend.url, backend.api_key, outbox=outbox)
    events = lifecycle("job_Q", steps=1)
    for event in events:
        exporter.persist(event)
    with sqlite3.connect(outbox) as db:
        kinds = [row[0] for row in db.execute("SELECT kind FROM events ORDER BY seq")]
    assert kinds == ["started", "completed"]  # not progress
    exporter.export(events)
    assert exporter.force_flush(30)
    assert stored(backend, "job_Q").status == "completed"
    exporter.shutdown()
    with sqlite3.connect(outbox) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_shutdown_reports_what_was_not_delivered(caplog: pytest.LogCaptureFixture) -> None:
    """shutdown() gives up at its deadline and says in one line what was not delivered."""
    exporter = exporter_for(f"http://127.0.0.1:{free_port()}", "sk_test_x")
    exporter._random = lambda: 1.0
    exporter.export(lifecycle("job_S", steps=1) + lifecycle("job_T2", steps=1))
    with caplog.at_level(logging.WARNING, logger="seenn"):
        exporter.shutdown(timeout=0.2)
    lines = [r.getMessage() for r in caplog.records if "shut down" in r.getMessage()]
    assert len(lines) == 1
    assert "of 2 job(s) undelivered" in lines[0]
    assert exporter.export([ev("started", "job_late", 0)]) is ExportResult.FAILURE


def test_export_never_blocks_on_a_hanging_backend(server: RecordingServer) -> None:
    """With every call hanging, export() returns for thousands of events before any answer."""
    release = threading.Event()
    server.reply(200, {"id": "x"}, hold=release, times=8)
    exporter = exporter_for(server.url, "sk_test_x", request_timeout=30.0)
    for n in range(2000):
        assert exporter.export([ev("started", f"job_h{n}", 0)]) is ExportResult.SUCCESS
    # Every export returned while no call had been answered: none waited for one.
    assert exporter.stats.delivered == 0
    assert exporter.stats.requests == 0
    release.set()
    exporter.shutdown(timeout=0.5)


def test_a_child_started_after_its_parent_moved_on_is_not_held_back(
        backend: RunningServer) -> None:
    """A child whose parent's start went out earlier is not held back by its parent."""
    exporter = exporter_for(backend.url, backend.api_key)
    exporter.export([ev("started", "job_par", 0)])
    assert exporter.force_flush(30)
    exporter.export([ev("progress", "job_par", 1, progress=10),
                     ev("started", "job_kid", 0, parent_id="job_par", child_index=0)])
    assert exporter.force_flush(30)
    assert stored(backend, "job_kid").parent == seenn.ParentInfo("job_par", 0)
    exporter.shutdown()


def test_an_odd_answer_does_not_stop_delivery(server: RecordingServer) -> None:
    """A response that cannot be decoded is retried; the delivery thread survives."""
    server.reply(201, raw=b"not gzip", headers={"Content-Encoding": "gzip"})
    exporter = exporter_for(server.url, "sk_test_x", max_concurrency=1)
    exporter.export(lifecycle("job_odd", steps=0))
    assert exporter.force_flush(30)
    exporter.export(lifecycle("job_next", steps=0))
    assert exporter.force_flush(30)
    assert server.backend.jobs["job_next"]["status"] == "completed"
    assert exporter.stats.retries == 1
    exporter.shutdown()


def test_the_backend_id_and_progress_pace_outlive_an_empty_queue(
        server: RecordingServer) -> None:
    """Between a job's events its backend id and last progress time are remembered."""
    server.reply(201, {"id": "srv-1", "status": "pending", "progress": 0})
    server.reply(200, {"id": "srv-1", "status": "running", "progress": 5}, times=3)
    exporter = exporter_for(server.url, "sk_test_x", progress_interval=3600)
    exporter.export([ev("started", "job_m", 0)])
    assert exporter.force_flush(30)
    exporter.export([ev("progress", "job_m", 1, progress=5)])
    assert exporter.force_flush(30)
    exporter.export([ev("progress", "job_m", 2, progress=6)])
    with exporter._cond:
        job = exporter._jobs["job_m"]
        due = exporter._when(job)
        assert due is not None
        assert due - exporter._clock() > 3000  # paced by the progress call made earlier
    exporter.export([ev("completed", "job_m", 3, progress=100)])
    assert exporter.force_flush(30)
    paths = [r.path for r in server.requests]
    assert paths[0] == "/v1/jobs"
    assert all(path.startswith("/v1/jobs/srv-1/") for path in paths[1:])
    assert exporter.stats.rejected == 0
    exporter.shutdown()


def test_shutdown_keeps_undelivered_events_in_the_outbox(tmp_path: Path) -> None:
    """Shutting down with the backend down removes no outbox row, however far retries got."""
    outbox = tmp_path / "keep.db"
    exporter = exporter_for(f"http://127.0.0.1:{free_port()}", "sk_test_x", outbox=outbox)
    exporter._random = lambda: 0.0
    for n in range(10):
        exporter.export(lifecycle(f"job_k{n}", steps=1))
    exporter.shutdown(timeout=0.3)
    assert exporter.stats.lost == 0
    import sqlite3

    with sqlite3.connect(outbox) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 30


def test_a_replay_over_the_memory_cap_keeps_the_rest_for_later(tmp_path: Path) -> None:
    """Replaying more jobs than max_pending_jobs leaves the rest on disk, deleting no row."""
    outbox = tmp_path / "cap.db"
    first = exporter_for(f"http://127.0.0.1:{free_port()}", "sk_test_x", outbox=outbox)
    for n in range(6):
        first.export(lifecycle(f"job_c{n}", steps=0))
    first.shutdown(timeout=0.1)
    port = free_port()
    capped = exporter_for(f"http://127.0.0.1:{port}", "sk_test_x", outbox=outbox,
                          max_pending_jobs=2)
    assert (capped.stats.spilled, capped.stats.dropped) == (8, 0)
    capped.shutdown(timeout=0.1)
    with seenn.server.running(tmp_path / "cap-backend.db", port=port,
                              api_key="sk_test_x") as srv:
        full = exporter_for(srv.url, "sk_test_x", outbox=outbox)
        assert full.force_flush(60)
        assert {stored(srv, f"job_c{n}").status for n in range(6)} == {"completed"}
        full.shutdown()


def test_replay_keeps_each_jobs_order(tmp_path: Path, server: RecordingServer) -> None:
    """Progress written to the outbox after the end of its job is replayed before the end."""
    outbox = tmp_path / "order.db"
    writer = exporter_for(f"http://127.0.0.1:{free_port()}", "sk_test_x", outbox=outbox)
    start, progress, end = lifecycle("job_ord", steps=1)
    writer.persist(start)
    writer.persist(end)  # as the processor does, inline, before progress is handed over
    writer.export([start, progress, end])
    writer.shutdown(timeout=0.1)
    replay = exporter_for(server.url, "sk_test_x", outbox=outbox)
    assert replay.force_flush(30)
    assert [r.headers["Idempotency-Key"] for r in server.requests] == [
        "job_ord.0", "job_ord.1", "job_ord.2"]
    replay.shutdown()


def test_shut_down_exporters_are_freed_and_ignore_persist(tmp_path: Path) -> None:
    """After shutdown an exporter writes nothing and can be garbage collected."""
    import gc
    import weakref

    exporter = exporter_for(f"http://127.0.0.1:{free_port()}", "sk_test_x",
                            outbox=tmp_path / "gone.db")
    exporter.shutdown(timeout=0.1)
    exporter.persist(ev("started", "job_after", 0))  # no error, no row
    ref = weakref.ref(exporter)
    del exporter
    gc.collect()
    assert ref() is None


def test_children_of_a_refused_parent_start_on_their_own(server: RecordingServer) -> None:
    """When a parent's start is refused, its children are started without the parent link."""
    server.reply(400, {"error": {"code": "VALIDATION_ERROR", "message": "bad parent"}})
    exporter = exporter_for(server.url, "sk_test_x")
    exporter.export([ev("started", "job_bad_parent", 0)])
    assert exporter.force_flush(30)
    exporter.export([ev("started", "job_orphan", 0, parent_id="job_bad_parent", child_index=0)])
    assert exporter.force_flush(30)
    assert server.requests[-1].json["id"] == "job_orphan"
    assert "parentJobId" not in server.requests[-1].json
    assert server.backend.jobs["job_orphan"]["status"] == "pending"
    exporter.shutdown()


def test_a_parent_ends_only_after_its_childs_start_is_answered(server: RecordingServer) -> None:
    """A parent's completion waits for the start of a child filed before it.

    Different jobs go out concurrently; a parent's end overtaking its child's
    start makes the backend refuse the child (its parent is finished).
    """
    gate = server.hold_requests(lambda r: r.method == "POST" and r.path == "/v1/jobs"
                                and b"parentJobId" in r.body)
    exporter = exporter_for(server.url, "sk_test_key")
    parent_events = [ev("started", "job_parent", 0)]
    child_events = [ev("started", "job_child", 0, parent_id="job_parent", child_index=0),
                    ev("completed", "job_child", 1)]
    assert exporter.export(parent_events + child_events
                           + [ev("completed", "job_parent", 1)]) is ExportResult.SUCCESS
    wait_until(lambda: any(b"parentJobId" in r.body for r in server.requests), 30,
               "the child's start")
    with exporter._cond:  # the parent's end waits on the child's start, not on a timer
        parent = exporter._jobs["job_parent"]
        assert parent.queue[0].event.kind == "completed"
        assert not parent.busy and not parent.scheduled
        assert "job_parent" not in exporter._ready
    gate.set()
    assert exporter.force_flush(30)
    exporter.shutdown(5)
    paths = [(r.method, r.path) for r in server.requests]
    child_start = next(i for i, r in enumerate(server.requests) if b"parentJobId" in r.body)
    assert paths.index(("POST", "/v1/jobs/job_parent/complete")) > child_start
    assert server.backend.jobs["job_child"]["status"] == "completed"
    assert exporter.stats.rejected == 0


def test_metadata_given_just_before_the_end_reaches_seenn_serve(
        backend: RunningServer) -> None:
    """Metadata on a progress call the batch processor dropped for the end still arrives.

    complete/fail carry no metadata: the exporter sends a progress call first.
    """
    tracker = seenn.Tracker(exporters=[exporter_for(backend.url, backend.api_key)])
    try:
        with tracker.track("video", user_id="u1") as job:
            job.set_progress(10)  # sent at once: the next one is held for 0.25 s
            job.set_progress(20, metadata={"attempt": 2})
        assert tracker.force_flush(timeout=30)
    finally:
        tracker.shutdown(timeout=5)
    final = stored(backend, job.id)
    assert (final.status, final.metadata) == ("completed", {"attempt": 2})


@pytest.mark.parametrize("refusal", ["finished", "index-taken"])
def test_a_child_the_backend_will_not_link_starts_on_its_own(
        backend: RunningServer, refusal: str, caplog: pytest.LogCaptureFixture) -> None:
    """A child refused for its parent link (finished parent, index taken) is started unlinked."""
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
        parent = client.jobs.start("video", user_id="u1", title="parent", job_id="job_P")
        if refusal == "finished":
            parent.complete()
        else:
            client.jobs.start("video", user_id="u1", title="first", job_id="job_first",
                              parent_job_id="job_P", child_index=0)
    exporter = exporter_for(backend.url, backend.api_key)
    child = [ev("started", "job_C", 0, parent_id="job_P", child_index=0),
             ev("progress", "job_C", 1, progress=50), ev("completed", "job_C", 2)]
    with caplog.at_level(logging.WARNING, logger="seenn"):
        assert exporter.export(child) is ExportResult.SUCCESS
        assert exporter.force_flush(30)
    exporter.shutdown(5)
    job = stored(backend, "job_C")
    assert job.status == "completed" and job.parent is None
    assert exporter.stats.rejected == 0
    assert any("starts without its parent" in r.getMessage() for r in caplog.records)


def test_a_childs_start_waits_for_a_parent_started_by_another_process(
        backend: RunningServer) -> None:
    """A 404 for the parent of a child (its start still on its way) is waited out, linked."""
    exporter = exporter_for(backend.url, backend.api_key)
    child = [ev("started", "job_child_late", 0, parent_id="job_parent_late", child_index=0),
             ev("completed", "job_child_late", 1)]
    assert exporter.export(child) is ExportResult.SUCCESS
    # The child's start was answered 404 at least once.
    wait_until(lambda: exporter.stats.retries, 30, "the child's start to be refused")
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
        client.jobs.start("video", user_id="u1", title="parent", job_id="job_parent_late")
    assert exporter.force_flush(60)
    exporter.shutdown(5)
    job = stored(backend, "job_child_late")
    assert job.status == "completed"
    assert job.parent is not None and job.parent.parent_job_id == "job_parent_late"


def test_a_backend_answering_for_a_start_on_its_way_is_not_failing(
        backend: RunningServer) -> None:
    """A 404 waited out for a parent whose start is on its way is an answer, not "failing"."""
    exporter = exporter_for(backend.url, backend.api_key)
    child = [ev("started", "job_child_waits", 0, parent_id="job_parent_on_its_way",
                child_index=0)]
    assert exporter.export(child) is ExportResult.SUCCESS
    # The child's start was answered 404 at least once.
    wait_until(lambda: exporter.stats.retries, 30, "the child's start to be refused")
    assert not exporter.failing  # an exit flush (seenn.integrations) waits for it
    exporter.shutdown(0)
