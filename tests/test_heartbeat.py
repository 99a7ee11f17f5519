"""HTTPExporter heartbeats and stale limits, against real loopback backends.

The exporter's clock is a fake one that only moves when a test says so; after
moving it, ``advance`` wakes the delivery threads and polls (bounded) until
they have sent everything that fell due, so no test waits on real time.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import seenn
import seenn.server
from seenn._core.events import RESUMED_SEQUENCE_UNIT
from seenn.exporters import BatchProcessor, HTTPExporter
from seenn.propagation import resume
from seenn.server import RunningServer
from tests.faults import free_port
from tests.server import RecordingServer
from tests.test_http_exporter import ev

INTERVAL = 16.0  # a sixteenth of it is a whole second: due times land on the fake clock's grid
UNIT = RESUMED_SEQUENCE_UNIT


class Clock:
    """A monotonic clock for the exporter that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(url: str, clock: Clock, key: str = "sk_test_x", **options: Any) -> HTTPExporter:
    """An exporter on ``clock``, with heartbeats every INTERVAL and no backoff waits."""
    options.setdefault("heartbeat_interval", INTERVAL)
    exporter = HTTPExporter(api_key=key, base_url=url, **options)
    exporter._random = lambda: 0.0
    exporter._clock = clock
    return exporter


def idle(exporter: HTTPExporter) -> bool:
    """Nothing ready, in flight or due on the exporter's clock (retries may wait on it)."""
    with exporter._cond:
        timers = exporter._timers
        due = bool(timers) and timers[0][0] <= exporter._clock()
        return not (exporter._ready or exporter._busy or due or exporter._hand_offs)


def settle(exporter: HTTPExporter, timeout: float = 30.0) -> None:
    """Wake the delivery threads and poll until they have sent all that is due."""
    deadline = time.monotonic() + timeout
    while True:
        with exporter._cond:
            exporter._cond.notify_all()
        if idle(exporter):
            return
        assert time.monotonic() < deadline, "the exporter did not settle"
        time.sleep(0.005)


def advance(exporter: HTTPExporter, clock: Clock, seconds: float) -> None:
    """Move the exporter's clock on and let it send what fell due."""
    clock.now += seconds
    settle(exporter)


def beats(server: RecordingServer, job_id: str | None = None) -> list[Any]:
    """The heartbeat requests the server received (their key has an ``h``), in order."""
    return [r for r in server.requests
            if "h" in r.headers.get("Idempotency-Key", "").rpartition(".")[2]
            and (job_id is None or r.path == f"/v1/jobs/{job_id}/progress")]


@pytest.fixture
def clock() -> Clock:
    """The exporter's fake clock."""
    return Clock()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[RunningServer]:
    """A real `seenn serve` on loopback."""
    with seenn.server.running(tmp_path / "hb.db") as srv:
        yield srv


def test_a_quiet_running_job_gets_one_heartbeat_per_interval(
        server: RecordingServer, clock: Clock) -> None:
    """A running job quiet past the interval gets heartbeats repeating its progress, one each."""
    exporter = make(server.url, clock)
    stage = seenn.Stage("render", 2, 4)
    exporter.export([ev("started", "job_H", 0),
                     ev("progress", "job_H", 1, progress=40, message="rendering", stage=stage)])
    assert exporter.force_flush(30)
    advance(exporter, clock, INTERVAL - 1)
    assert beats(server) == []
    advance(exporter, clock, 1)
    (first,) = beats(server)
    assert first.path == "/v1/jobs/job_H/progress"
    assert first.json == {"progress": 40, "message": "rendering", "stage": stage.to_wire()}
    assert first.headers["Idempotency-Key"] == "job_H.1h0"
    advance(exporter, clock, INTERVAL - 1)
    assert len(beats(server)) == 1  # one per interval, counted from the heartbeat
    advance(exporter, clock, 1)
    assert [r.headers["Idempotency-Key"] for r in beats(server)] == ["job_H.1h0", "job_H.1h1"]
    job = server.backend.jobs["job_H"]
    assert (job["status"], job["progress"], job["message"]) == ("running", 40, "rendering")
    assert exporter.stats.heartbeats == 2
    assert exporter.stats.delivered == 2  # heartbeats are not events
    exporter.shutdown()


def test_a_heartbeat_never_takes_the_backend_back(backend: RunningServer, clock: Clock) -> None:
    """Against seenn serve, heartbeats keep the job's latest progress, stage and message."""
    exporter = make(backend.url, clock, key=backend.api_key)
    exporter.export([ev("started", "job_S", 0)]
                    + [ev("progress", "job_S", i, progress=i * 10, message=f"step {i}",
                          stage=seenn.Stage("encode", i, 5)) for i in range(1, 6)])
    assert exporter.force_flush(30)
    for _ in range(3):
        advance(exporter, clock, INTERVAL)
    assert exporter.stats.heartbeats == 3
    assert exporter.stats.rejected == 0
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
        job = client.jobs.get("job_S")
    assert (job.status, job.progress, job.message) == ("running", 50, "step 5")
    assert job.stage == seenn.Stage("encode", 5, 5)
    exporter.shutdown()


def test_a_heartbeat_repeats_what_was_delivered_not_what_was_refused(
        server: RecordingServer, clock: Clock) -> None:
    """After a refused progress call, heartbeats repeat the last progress the backend took."""
    exporter = make(server.url, clock)
    exporter.export([ev("started", "job_V", 0), ev("progress", "job_V", 1, progress=30)])
    assert exporter.force_flush(30)
    server.reply(400, {"error": {"code": "VALIDATION_ERROR", "message": "no"}})
    exporter.export([ev("progress", "job_V", 2, progress=90, message="too far")])
    assert exporter.force_flush(30)
    advance(exporter, clock, INTERVAL)
    (beat,) = beats(server)
    assert beat.json == {"progress": 30}
    assert beat.headers["Idempotency-Key"] == "job_V.2h0"
    exporter.shutdown()


def test_a_job_that_keeps_reporting_gets_no_heartbeat(
        server: RecordingServer, clock: Clock) -> None:
    """Progress delivered more often than the interval leaves no room for a heartbeat."""
    exporter = make(server.url, clock)
    exporter.export([ev("started", "job_K", 0)])
    assert exporter.force_flush(30)
    for step in range(1, 8):  # 7 x 10 s: over four intervals since the start
        advance(exporter, clock, 10)
        exporter.export([ev("progress", "job_K", step, progress=step)])
        assert exporter.force_flush(30)
    advance(exporter, clock, 10)
    assert beats(server) == []
    assert exporter.stats.heartbeats == 0
    advance(exporter, clock, INTERVAL)  # ... and once it goes quiet, it gets one
    assert [r.headers["Idempotency-Key"] for r in beats(server)] == ["job_K.7h0"]
    exporter.shutdown()


def test_queued_and_finished_jobs_get_no_heartbeat(server: RecordingServer, clock: Clock) -> None:
    """A queued job, a completed one and a failed one are never heartbeated; a running one is."""
    exporter = make(server.url, clock)
    error = seenn.JobError("BOOM", "no")
    exporter.export([
        ev("started", "job_queued", 0, status="queued", queue=seenn.Queue(3, 10)),
        ev("started", "job_done", 0), ev("progress", "job_done", 1, progress=50),
        ev("completed", "job_done", 2),
        ev("started", "job_failed", 0), ev("failed", "job_failed", 1, error=error),
        ev("started", "job_running", 0),
    ])
    assert exporter.force_flush(30)
    advance(exporter, clock, 3 * INTERVAL)
    assert {r.path for r in beats(server)} == {"/v1/jobs/job_running/progress"}
    exporter.export([ev("progress", "job_queued", 1, status="running", progress=5)])
    assert exporter.force_flush(30)
    advance(exporter, clock, INTERVAL)  # out of its queue, it runs: now it gets them too
    assert len(beats(server, "job_queued")) == 1
    exporter.shutdown()


def test_a_job_ending_while_its_heartbeat_waits_to_retry_gets_no_more(
        server: RecordingServer, clock: Clock) -> None:
    """A terminal event replaces a heartbeat still waiting, and the job's heartbeats stop."""
    exporter = make(server.url, clock)
    exporter._random = lambda: 1.0  # the retry waits 0.5 s on the fake clock
    exporter.export([ev("started", "job_E", 0)])
    assert exporter.force_flush(30)
    server.reply(503, {"error": {"code": "DOWN", "message": "x"}})
    advance(exporter, clock, INTERVAL)
    assert len(beats(server)) == 1  # failed, waiting to retry
    exporter.export([ev("completed", "job_E", 1)])
    advance(exporter, clock, 1)
    advance(exporter, clock, 3 * INTERVAL)
    assert [r.path for r in server.requests][-1] == "/v1/jobs/job_E/complete"
    assert len(beats(server)) == 1
    assert exporter.stats.heartbeats == 0
    assert exporter.stats.lost == 0
    exporter.shutdown()


def test_a_retried_heartbeat_keeps_its_idempotency_key(
        server: RecordingServer, clock: Clock) -> None:
    """Every attempt of one heartbeat carries the same key; the next heartbeat has its own."""
    exporter = make(server.url, clock)
    exporter.export([ev("started", "job_R", 0), ev("progress", "job_R", 1, progress=7)])
    assert exporter.force_flush(30)
    server.reply(503, {"error": {"code": "DOWN", "message": "x"}})
    server.reply(drop=True)
    advance(exporter, clock, INTERVAL)
    advance(exporter, clock, INTERVAL)
    keys = [r.headers["Idempotency-Key"] for r in beats(server)]
    assert keys == ["job_R.1h0", "job_R.1h0", "job_R.1h0", "job_R.1h1"]
    assert (exporter.stats.heartbeats, exporter.stats.retries) == (2, 2)
    exporter.shutdown()


def test_a_job_the_backend_has_ended_gets_no_more_heartbeats(
        server: RecordingServer, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """A 409 on a heartbeat (the backend ended the job as stale) stops them, with one log line."""
    exporter = make(server.url, clock)
    exporter.export([ev("started", "job_L", 0)])
    assert exporter.force_flush(30)
    server.backend.jobs["job_L"]["status"] = "failed"  # as a stale limit would
    with caplog.at_level(logging.WARNING, logger="seenn"):
        advance(exporter, clock, INTERVAL)
        advance(exporter, clock, 3 * INTERVAL)
    assert len(beats(server)) == 1
    lines = [r.getMessage() for r in caplog.records if "heartbeat of job job_L" in r.getMessage()]
    assert len(lines) == 1
    assert exporter.stats.heartbeats == 0
    exporter.shutdown()


def test_a_handed_off_job_gets_no_heartbeat_here(server: RecordingServer, clock: Clock) -> None:
    """Leaving the block of a handed-off job reaches the exporter through the BatchProcessor."""
    exporter = make(server.url, clock)
    tracker = seenn.Tracker(processors=[BatchProcessor(exporter)])
    with tracker.track("render") as leaves:
        leaves.set_progress(30)
        leaves.hand_off()
    with tracker.track("render") as stays:
        assert tracker.force_flush(30)
        advance(exporter, clock, 3 * INTERVAL)
        assert {r.path for r in beats(server)} == {f"/v1/jobs/{stays.id}/progress"}
    assert tracker.force_flush(30)
    assert server.backend.jobs[leaves.id]["status"] == "running"
    tracker.shutdown()


def test_a_job_handed_off_before_its_start_was_exported_gets_no_heartbeat(
        server: RecordingServer, clock: Clock) -> None:
    """A hand-off the exporter hears of before the job's start still stops its heartbeats."""
    exporter = make(server.url, clock)
    exporter.export([ev("started", "job_first", 0)])  # starts the delivery threads
    assert exporter.force_flush(30)
    exporter.on_hand_off("job_early")
    settle(exporter)
    exporter.export([ev("started", "job_early", 0)])
    assert exporter.force_flush(30)
    advance(exporter, clock, 2 * INTERVAL)
    assert beats(server, "job_early") == []
    assert beats(server, "job_first")
    exporter.shutdown()


def test_a_job_resumed_in_the_process_that_handed_it_off_keeps_its_heartbeat(
        server: RecordingServer, clock: Clock) -> None:
    """Resumed here before (or after) its first block is left, the job is heartbeated again."""
    exporter = make(server.url, clock)
    tracker = seenn.Tracker(processors=[BatchProcessor(exporter)])

    def scenario(resume_first: bool) -> None:
        scope = tracker.track("render")
        job = scope.__enter__()
        carrier = job.hand_off()
        again = resume(carrier, tracker=tracker)
        if resume_first:
            again.__enter__()
            scope.__exit__(None, None, None)  # its on_hand_off comes after the resume
        else:
            scope.__exit__(None, None, None)
            assert tracker.force_flush(30)
            settle(exporter)
            again.__enter__()
        assert tracker.force_flush(30)
        advance(exporter, clock, INTERVAL)
        assert len(beats(server, job.id)) == 1
        key = beats(server, job.id)[0].headers["Idempotency-Key"]
        assert int(key.split(".")[1].split("h")[0]) >= UNIT  # the resumed run's sequence
        again.__exit__(None, None, None)
        assert tracker.force_flush(30)

    for resume_first in (True, False):
        # Blocks left out of order: each run in a context of its own, so no job stays ambient.
        contextvars.copy_context().run(scenario, resume_first)
    tracker.shutdown()


def test_jobs_replayed_from_an_outbox_get_no_heartbeat(
        tmp_path: Path, server: RecordingServer, clock: Clock) -> None:
    """A job read back from an earlier run's outbox is not live here: no heartbeat keeps it up."""
    outbox = tmp_path / "outbox.db"
    first = HTTPExporter(api_key="sk_test_x", base_url=f"http://127.0.0.1:{free_port()}",
                         outbox=outbox)  # on the real clock: its shutdown gives up in time
    first.export([ev("started", "job_dead", 0), ev("progress", "job_dead", 1, progress=20)])
    first.shutdown(timeout=0.1)
    second = make(server.url, clock, outbox=outbox)
    assert second.stats.replayed == 2
    assert second.force_flush(30)
    second.export([ev("started", "job_alive", 0)])
    assert second.force_flush(30)
    advance(second, clock, 3 * INTERVAL)
    assert {r.path for r in beats(server)} == {"/v1/jobs/job_alive/progress"}
    second.shutdown()


def test_stale_after_goes_with_starts_and_a_resumed_jobs_first_progress(
        server: RecordingServer, clock: Clock) -> None:
    """staleAfterSeconds is in every start and in a resumed job's first progress call only."""
    exporter = make(server.url, clock, stale_after=600)
    exporter.export([ev("started", "job_A", 0), ev("progress", "job_A", 1, progress=5)])
    assert exporter.force_flush(30)
    server.backend.jobs["job_B"] = dict(server.backend.jobs["job_A"], id="job_B")
    server.backend.jobs["job_C"] = dict(server.backend.jobs["job_A"], id="job_C")
    exporter.export([ev("progress", "job_B", 3 * UNIT, progress=6)])  # resumed here
    assert exporter.force_flush(30)
    exporter.export([ev("progress", "job_B", 3 * UNIT + 1, progress=7)])
    # A resumed job's first progress replaced before it went out: its successor carries it.
    exporter.export([ev("progress", "job_C", 5 * UNIT, progress=1),
                     ev("progress", "job_C", 5 * UNIT + 1, progress=2)])
    assert exporter.force_flush(30)
    advance(exporter, clock, INTERVAL)
    assert sorted((r.path, r.json.get("progress"), r.json.get("staleAfterSeconds"))
                  for r in server.requests if r not in beats(server)) == [
        ("/v1/jobs", None, 600),
        ("/v1/jobs/job_A/progress", 5, None),
        ("/v1/jobs/job_B/progress", 6, 600),
        ("/v1/jobs/job_B/progress", 7, None),
        ("/v1/jobs/job_C/progress", 2, 600)]
    assert sorted(r.json["progress"] for r in beats(server)) == [2, 5, 7]
    assert all("staleAfterSeconds" not in r.json for r in beats(server))
    exporter.shutdown()


def test_without_stale_after_the_field_is_never_sent(server: RecordingServer, clock: Clock) -> None:
    """By default neither a start nor a resumed job's progress carries staleAfterSeconds."""
    exporter = make(server.url, clock)
    exporter.export([ev("started", "job_A", 0)])
    assert exporter.force_flush(30)
    exporter.export([ev("progress", "job_A", 2 * UNIT, progress=3)])
    assert exporter.force_flush(30)
    assert len(server.requests) == 2
    assert all("staleAfterSeconds" not in r.json for r in server.requests)
    exporter.shutdown()


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "60", True])
def test_a_bad_heartbeat_interval_is_refused(value: Any) -> None:
    """heartbeat_interval must be a finite number of seconds (or None/0), else it is named."""
    with pytest.raises(seenn.ValidationError) as info:
        HTTPExporter(api_key="sk_test_x", base_url="http://127.0.0.1:9",
                     heartbeat_interval=value)
    assert info.value.field == "heartbeat_interval"


@pytest.mark.parametrize("value", [9, 9.99, 2_592_001, float("nan"), float("inf"), "600", True])
def test_a_bad_stale_after_is_refused(value: Any) -> None:
    """stale_after must be 10 to 2,592,000 seconds (or None), else it is named."""
    with pytest.raises(seenn.ValidationError) as info:
        HTTPExporter(api_key="sk_test_x", base_url="http://127.0.0.1:9", stale_after=value)
    assert info.value.field == "stale_after"


def test_heartbeat_and_stale_settings_are_kept() -> None:
    """None and 0 turn heartbeats off; stale_after is kept as whole seconds; 60 s is the default."""
    settings = []
    for options in ({}, {"heartbeat_interval": None}, {"heartbeat_interval": 0},
                    {"stale_after": 10, "heartbeat_interval": 5},
                    {"stale_after": 2_592_000.0}):
        exporter = HTTPExporter(api_key="k", base_url="http://127.0.0.1:9", **options)
        settings.append((exporter.heartbeat_interval, exporter.stale_after))
        exporter.shutdown()
    assert settings == [(60.0, None), (None, None), (None, None), (5.0, 10), (60.0, 2_592_000)]


def test_a_stale_limit_shorter_than_two_heartbeats_is_warned_about(
        caplog: pytest.LogCaptureFixture) -> None:
    """stale_after under twice heartbeat_interval logs one warning; at twice, none."""
    url = "http://127.0.0.1:9"
    with caplog.at_level(logging.WARNING, logger="seenn"):
        HTTPExporter(api_key="k", base_url=url, stale_after=119, heartbeat_interval=60)
        HTTPExporter(api_key="k", base_url=url, stale_after=120, heartbeat_interval=60)
        HTTPExporter(api_key="k", base_url=url, stale_after=10, heartbeat_interval=None)
    lines = [r.getMessage() for r in caplog.records if "stale_after" in r.getMessage()]
    assert len(lines) == 1
    assert "stale_after=119" in lines[0]


def test_heartbeats_off_sends_none(server: RecordingServer, clock: Clock) -> None:
    """With heartbeat_interval=None a quiet running job gets no heartbeat."""
    exporter = make(server.url, clock, heartbeat_interval=None)
    exporter.export([ev("started", "job_O", 0)])
    assert exporter.force_flush(30)
    advance(exporter, clock, 10 * INTERVAL)
    assert len(server.requests) == 1
    assert exporter._memory["job_O"][3] is None
    exporter.shutdown()


def test_quiet_jobs_cost_one_timer_each(server: RecordingServer, clock: Clock) -> None:
    """Many quiet jobs are remembered with one timer entry each, however often they reported."""
    exporter = make(server.url, clock, progress_interval=0)
    for n in range(200):
        exporter.export([ev("started", f"job_{n}", 0)])
    assert exporter.force_flush(60)
    for step in range(1, 6):
        exporter.export([ev("progress", f"job_{n}", step, progress=step) for n in range(200)])
        assert exporter.force_flush(60)
    with exporter._cond:
        assert len(exporter._memory) == 200
        assert len(exporter._timers) == 200
    advance(exporter, clock, INTERVAL)
    assert exporter.stats.heartbeats == 200
    exporter.shutdown()


def test_a_forked_child_has_no_heartbeats_of_its_parents_jobs(
        server: RecordingServer, clock: Clock) -> None:
    """After os.fork() the child holds none of the parent's live jobs; the parent keeps them."""
    exporter = make(server.url, clock)
    exporter.export([ev("started", "job_F", 0)])
    assert exporter.force_flush(30)
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a threaded process; forking one is the point.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            clock.now += 10 * INTERVAL
            if not (exporter._memory or exporter._timers or exporter._jobs) and \
                    exporter.stats.heartbeats == 0:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    advance(exporter, clock, INTERVAL)
    assert len(beats(server, "job_F")) == 1
    exporter.shutdown()
