"""seenn.propagation: carriers, resume, hand_off, SeennPropagator, and one job across processes."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import seenn
import seenn.propagation as propagation
from seenn._core.events import RESUMED_SEQUENCE_UNIT, make_event
from seenn.exporters import (
    BatchProcessor,
    ExportResult,
    HTTPExporter,
    OTelExporter,
    SimpleProcessor,
)
from seenn.propagation import CARRIER_KEY, JobContext, SeennPropagator
from seenn.testing import InMemoryExporter, strict_mode
from tests.conftest import SECRET
from tests.polling import wait_until
from tests.propagation_worker import finish_jobs
from tests.server import RecordingServer
from tests.tracking_helpers import memory_tracker, no_job_left_behind

__all__ = ["no_job_left_behind"]


@pytest.fixture
def tracked() -> Iterator[tuple[seenn.Tracker, InMemoryExporter]]:
    """A private tracker with an inline InMemoryExporter, in strict mode."""
    with memory_tracker() as (tracker, exporter), strict_mode():
        yield tracker, exporter


# -- the carrier ---------------------------------------------------------------------------


def test_inject_extract_round_trip_keeps_every_field() -> None:
    """What inject() writes, extract() reads back: ids, user, title, parent, stages, progress."""
    stages = ["down;load", "ren,der", "up=load", "ünïcode stage"]
    with seenn.track("batch", user_id="user 1;x=2") as parent:
        with seenn.track("video-generation", title="Générer: a cat, 100% fun",
                         stages=stages) as job, seenn.stage("ren,der"):
            job.set_progress(40)
            carrier: dict[str, str] = {}
            propagation.inject(carrier)
        assert list(carrier) == [CARRIER_KEY]
        context = propagation.extract(carrier)
    assert context == JobContext(
        job_id=job.id, job_type="video-generation", user_id="user 1;x=2",
        title="Générer: a cat, 100% fun", parent_id=parent.id, child_index=0,
        stages=tuple(stages), stage=seenn.Stage("ren,der", 2, 4), progress=40, children=0)
    assert carrier[CARRIER_KEY].isascii()
    assert " " not in carrier[CARRIER_KEY]


def test_stage_counts_and_children_round_trip() -> None:
    """A stage count and the number of children started so far survive the trip."""
    with seenn.track("batch", stages=3) as job:
        with seenn.track("page"), seenn.track("sub"):
            pass
        with seenn.track("page"):
            pass
        job.set_stage("second")
        context = propagation.extract({CARRIER_KEY: propagation._carrier.encode_job(job)})
    assert context is not None
    assert (context.stages, context.children, context.stage) == (3, 2, seenn.Stage("second", 1, 3))
    assert context.user_id is None and context.parent_id is None and context.title is None


def test_inject_outside_a_job_writes_nothing_and_inject_job_writes_that_job() -> None:
    """inject() without an ambient job leaves the carrier alone; job= names the job to write."""
    carrier: dict[str, str] = {"traceparent": "x"}
    propagation.inject(carrier)
    assert carrier == {"traceparent": "x"}
    job = seenn.track("video")
    with job, seenn.track("child"):
        propagation.inject(carrier, job=job)
    context = propagation.extract(carrier)
    assert context is not None and context.job_id == job.id


def test_extract_without_a_job_is_none_and_reads_any_letter_case() -> None:
    """No seenn-job key means None; 'Seenn-Job' and one-item lists are read like the key."""
    assert propagation.extract({}) is None
    assert propagation.extract({"traceparent": "00-abc"}) is None
    value = "v=1;id=job_1;type=video"
    for carrier in ({"Seenn-Job": value}, {CARRIER_KEY: [value]}, {"SEENN-JOB": (value,)}):
        context = propagation.extract(carrier)
        assert context is not None and (context.job_id, context.job_type) == ("job_1", "video")


def test_unknown_fields_are_ignored() -> None:
    """A field this version does not know is skipped (a newer writer may add some)."""
    context = propagation.extract({CARRIER_KEY: "v=1;id=job_1;type=video;eta=12"})
    assert context is not None and context.job_id == "job_1"


@pytest.mark.parametrize("value", [
    "",
    "   ",
    "garbage",
    "id=job_1;type=video",
    "v=2;id=job_1;type=video",
    "v=1;type=video",
    "v=1;id=job_1",
    "v=1;id=;type=video",
    "v=1;id=job_1;id=job_2;type=video",
    "v=1;id=job 1;type=video",
    "v=1;id=job%zz;type=video",
    "v=1;id=job%FF;type=video",
    "v=1;id=job_1;type=video;progress=101",
    "v=1;id=job_1;type=video;progress=-1",
    "v=1;id=job_1;type=video;progress=ten",
    "v=1;id=job_1;type=video;stage=render",
    "v=1;id=job_1;type=video;stage=3,2,render",
    "v=1;id=job_1;type=video;stages=a,a",
    "v=1;id=job_1;type=video;stages=a;nstages=1",
    "v=1;id=job_1;type=video;nstages=0",
    "v=1;id=job_1;type=" + "x" * 101,
    "v=1;id=job_1;type=video;;",
])
def test_malformed_carriers_raise_validation_error(value: str) -> None:
    """extract() and resume() refuse a malformed seenn-job value with ValidationError."""
    with pytest.raises(seenn.ValidationError) as caught:
        propagation.extract({CARRIER_KEY: value})
    assert caught.value.field is not None and caught.value.field.startswith(CARRIER_KEY)
    with pytest.raises(seenn.ValidationError):
        propagation.resume({CARRIER_KEY: value})


@pytest.mark.parametrize("carrier", ["seenn-job", 42, {CARRIER_KEY: 42}, {CARRIER_KEY: b"v=1"}])
def test_carriers_of_the_wrong_type_raise_validation_error(carrier: Any) -> None:
    """A carrier that is not a mapping of strings is a ValidationError too."""
    with pytest.raises(seenn.ValidationError):
        propagation.extract(carrier)


# -- resume --------------------------------------------------------------------------------


def test_resume_continues_the_job_without_a_second_start(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """A resumed job keeps its id and state, reports running, then its progress and its end."""
    tracker, exporter = tracked
    with tracker.track("video", user_id="u1", title="Cat", stages=["render", "encode"]) as job:
        job.set_progress(20)
        carrier = job.hand_off()
    exporter.clear()
    with propagation.resume(carrier, tracker=tracker) as resumed:
        assert resumed is not None and seenn.current_job() is resumed
        assert (resumed.id, resumed.job_type, resumed.user_id, resumed.title) == (
            job.id, "video", "u1", "Cat")
        assert (resumed.status, resumed.progress) == ("running", 20)
        with resumed.stage("encode"):
            resumed.set_progress(80)
    assert seenn.current_job() is None
    events = exporter.events
    assert [event.kind for event in events] == ["progress"] * 4 + ["completed"]
    assert {event.job_id for event in events} == {job.id}
    first = events[0].sequence
    assert first % RESUMED_SEQUENCE_UNIT == 0 and first >= RESUMED_SEQUENCE_UNIT
    assert [event.sequence for event in events] == list(range(first, first + 5))
    assert events[0].progress == 20 and events[0].status == "running"
    assert events[1].stage == seenn.Stage("encode", 2, 2)
    assert resumed.status == "completed"


def test_resume_keeps_the_parent_and_starts_no_child_of_the_ambient_job(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """A resumed child keeps its original parent even inside another job, and numbers on."""
    tracker, _ = tracked
    with tracker.track("batch") as batch, tracker.track("page") as page:
        carrier = page.hand_off()
    with tracker.track("worker-loop") as loop, \
            propagation.resume(carrier, tracker=tracker) as resumed:
        assert resumed is not None
        assert (resumed.parent_id, resumed.child_index) == (batch.id, 0)
        with tracker.track("thumb") as thumb:
            assert thumb.parent_id == page.id
    assert loop._children == 0


def test_an_exception_fails_the_resumed_job(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """An exception in the resumed block fails the job as usual and is re-raised."""
    tracker, exporter = tracked
    with tracker.track("video") as job:
        carrier = job.hand_off()
    with pytest.raises(KeyError), propagation.resume(carrier, tracker=tracker, retryable=True):
        raise KeyError("frame")
    last = exporter.events[-1]
    assert (last.kind, last.error and last.error.code, last.retryable) == (
        "failed", "KeyError", True)


async def test_async_with_resume(tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """async with resume(...) works like with."""
    tracker, exporter = tracked
    with tracker.track("video") as job:
        carrier = job.hand_off()
    async with propagation.resume(carrier, tracker=tracker) as resumed:
        assert resumed is not None
        resumed.set_progress(50)
    assert exporter.kinds(job.id)[-3:] == ["progress", "progress", "completed"]


def test_resume_takes_a_job_context(tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """resume() also takes the JobContext extract() returned."""
    tracker, exporter = tracked
    context = JobContext("job_ctx", "video", progress=10)
    with propagation.resume(context, tracker=tracker) as job:
        assert job is not None and (job.id, job.progress) == ("job_ctx", 10)
    assert exporter.kinds("job_ctx") == ["progress", "completed"]


def test_a_carrier_without_a_job_resumes_nothing_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    """resume({}) runs the block with None as the job and logs a warning naming the key."""
    with caplog.at_level(logging.WARNING, logger="seenn"), \
            propagation.resume({"traceparent": "x"}) as job:
        assert job is None
        assert seenn.current_job() is None
    assert "holds no job" in caplog.text and CARRIER_KEY in caplog.text
    with propagation.resume(None) as nothing:
        assert nothing is None


def test_two_resumes_of_one_carrier_never_share_sequences(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """Each resume numbers its events from its own random base, far above the starter's."""
    tracker, exporter = tracked
    with tracker.track("video") as job:
        carrier = job.hand_off()
    starter = {event.sequence for event in exporter.events}
    bases = set()
    for _ in range(20):
        exporter.clear()
        with propagation.resume(carrier, tracker=tracker) as resumed:
            assert resumed is not None
            resumed.set_progress(50)
        sequences = [event.sequence for event in exporter.events]
        assert min(sequences) >= RESUMED_SEQUENCE_UNIT > max(starter)
        assert max(sequences) < 2 ** 63  # fits SQLite's INTEGER (the HTTP outbox)
        bases.add(sequences[0])
    assert len(bases) == 20


# -- hand_off ------------------------------------------------------------------------------


def test_leaving_a_handed_off_block_does_not_complete_the_job(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """After hand_off() the block ends with no terminal event; the job stays running."""
    tracker, exporter = tracked
    with tracker.track("video") as job:
        job.set_progress(10)
        carrier = job.hand_off()
        job.set_progress(15)  # the starter may still report until it lets go
    assert exporter.kinds(job.id) == ["started", "progress", "progress"]
    assert (job.status, job.is_done) == ("running", False)
    assert seenn.current_job() is None
    assert set(carrier) >= {CARRIER_KEY}


def _hand_off_then_raise(job: seenn.TrackedJob, exc: BaseException) -> None:
    with job:
        job.hand_off()
        raise exc


def test_an_exception_after_hand_off_still_fails_the_job(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """An exception leaving a handed-off block fails the job (the hand-off did not happen)."""
    tracker, exporter = tracked
    job = tracker.track("video")
    with pytest.raises(OSError, match="queue down"):
        _hand_off_then_raise(job, OSError("queue down"))
    assert exporter.kinds(job.id) == ["started", "failed"]
    assert job.status == "failed"


def test_complete_after_hand_off_still_ends_the_job(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """complete() after hand_off() completes the job here, explicitly."""
    tracker, exporter = tracked
    with tracker.track("video") as job:
        job.hand_off()
        job.complete(message="done here after all")
    assert exporter.kinds(job.id) == ["started", "completed"]


def test_system_exit_zero_after_hand_off_does_not_complete(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """SystemExit(0) is a normal exit: after hand_off() it leaves the job running too."""
    tracker, exporter = tracked
    job = tracker.track("video")
    with pytest.raises(SystemExit):
        _hand_off_then_raise(job, SystemExit(0))
    assert exporter.kinds(job.id) == ["started"]


def test_hand_off_in_a_decorated_function(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """A decorated function that hands its job off returns without completing it."""
    tracker, exporter = tracked

    @tracker.job("enqueue")
    def enqueue() -> dict[str, str]:
        job = seenn.current_job()
        assert job is not None
        return job.hand_off()

    carrier = enqueue()
    context = propagation.extract(carrier)
    assert context is not None and exporter.kinds(context.job_id) == ["started"]


def test_hand_off_works_with_nothing_configured() -> None:
    """Unconfigured, hand_off() still returns a carrier and leaves the job unfinished."""
    with seenn.track("video") as job:
        carrier = job.hand_off()
    assert not job.is_done
    with propagation.resume(carrier) as resumed:
        assert resumed is not None and resumed.id == job.id
    assert resumed.status == "completed"


def test_hand_off_outside_the_block_is_an_error() -> None:
    """hand_off() before the job starts or after it ended raises RuntimeError."""
    job = seenn.track("video")
    with pytest.raises(RuntimeError, match="started job"):
        job.hand_off()
    with job:
        pass
    with pytest.raises(RuntimeError, match="already completed"):
        job.hand_off()


def test_hand_off_carries_the_trace_context() -> None:
    """With a span active, the hand-off carrier holds traceparent for the worker's spans."""
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("request") as span, \
            seenn.track("video") as job:
        carrier = job.hand_off()
    assert CARRIER_KEY in carrier and "traceparent" in carrier
    remote = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    assert remote.trace_id == span.get_span_context().trace_id
    provider.shutdown()


def test_hand_off_and_resume_with_job_spans(tracked: tuple[seenn.Tracker, InMemoryExporter]
                                            ) -> None:
    """The starter's job span ends as handed off and parents the worker's spans."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    otel = OTelExporter(tracer_provider=provider, span_per_job=True)
    tracker = seenn.Tracker(processors=[SimpleProcessor(otel)])
    with provider.get_tracer("t").start_as_current_span("request"), \
            tracker.track("video") as job:
        carrier = job.hand_off()
    with provider.get_tracer("t").start_as_current_span(
            "worker", context=propagate.extract(carrier)), \
            propagation.resume(carrier, tracker=tracker) as resumed:
        assert resumed is not None
    spans = {span.name: span for span in memory.get_finished_spans()
             if not span.name.startswith("seenn.job")}
    starter, worker = [span for span in memory.get_finished_spans()
                       if span.name == "seenn.job video"]
    assert [event.name for event in starter.events] == ["seenn.job.started",
                                                        "seenn.job.handed_off"]
    assert [event.name for event in worker.events] == ["seenn.job.resumed",
                                                       "seenn.job.completed"]
    assert worker.attributes["seenn.job.resumed"] is True
    # request -> starter's job span -> worker -> worker's job span: one trace.
    assert starter.parent is not None
    assert starter.parent.span_id == spans["request"].context.span_id
    assert spans["worker"].parent is not None
    assert spans["worker"].parent.span_id == starter.context.span_id
    assert worker.parent is not None and worker.parent.span_id == spans["worker"].context.span_id
    assert otel._jobs == {}
    provider.shutdown()


def test_a_job_span_is_carried_even_without_a_current_span() -> None:
    """With span_per_job, hand_off() carries the job's span though no span is current."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    otel = OTelExporter(tracer_provider=provider, span_per_job=True)
    tracker = seenn.Tracker(processors=[SimpleProcessor(otel)])
    with tracker.track("video") as job:
        carrier = job.hand_off()
    (starter,) = memory.get_finished_spans()
    remote = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    assert (remote.trace_id, remote.span_id) == (starter.context.trace_id,
                                                 starter.context.span_id)
    provider.shutdown()


# -- SeennPropagator -----------------------------------------------------------------------


def test_seenn_propagator_round_trip_through_a_composite_propagator() -> None:
    """A CompositePropagator with trace context and seenn carries both; fields lists both."""
    composite = CompositePropagator([TraceContextTextMapPropagator(), SeennPropagator()])
    assert composite.fields >= {"traceparent", CARRIER_KEY}
    provider = TracerProvider()
    carrier: dict[str, str] = {}
    with provider.get_tracer("t").start_as_current_span("request") as span, \
            seenn.track("video", user_id="u1") as job:
        composite.inject(carrier)
    context = composite.extract(carrier)
    remote_job = propagation.job_from_context(context)
    assert remote_job is not None and (remote_job.job_id, remote_job.user_id) == (job.id, "u1")
    remote_span = trace.get_current_span(context).get_span_context()
    assert remote_span.trace_id == span.get_span_context().trace_id
    with propagation.resume(remote_job) as resumed:
        assert resumed is not None and resumed.id == job.id
    provider.shutdown()


def test_seenn_propagator_passes_an_extracted_job_on() -> None:
    """A service in the middle re-injects the job it extracted (explicitly or as current)."""
    propagator = SeennPropagator()
    context = propagator.extract({CARRIER_KEY: "v=1;id=job_9;type=video"})
    onward: dict[str, str] = {}
    propagator.inject(onward, context=context)
    assert onward == {CARRIER_KEY: "v=1;id=job_9;type=video"}
    from opentelemetry import context as otel_context

    token = otel_context.attach(context)
    try:
        current: dict[str, str] = {}
        propagator.inject(current)
    finally:
        otel_context.detach(token)
    assert current == onward
    nothing: dict[str, str] = {}
    propagator.inject(nothing)
    assert nothing == {}


def test_seenn_propagator_never_raises_on_malformed_input(
        caplog: pytest.LogCaptureFixture) -> None:
    """A malformed seenn-job header is ignored with a warning; the context comes back as is."""
    propagator = SeennPropagator()
    base = Context()
    assert propagator.extract({CARRIER_KEY: "v=9;junk"}, context=base) is base
    assert propagator.extract({}, context=base) is base
    assert propagation.job_from_context(base) is None
    assert "malformed" in caplog.text


def test_seenn_propagator_as_the_global_propagator() -> None:
    """Installed globally, opentelemetry.propagate.inject/extract carry the ambient job."""
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(
        CompositePropagator([TraceContextTextMapPropagator(), SeennPropagator()]))
    try:
        headers: dict[str, str] = {}
        with seenn.track("video") as job:
            propagate.inject(headers)
        remote = propagation.job_from_context(propagate.extract(headers))
    finally:
        propagate.set_global_textmap(previous)
    assert remote is not None and remote.job_id == job.id


# -- across processes ----------------------------------------------------------------------


def _spawn_worker(base_url: str | None = None) -> tuple[Any, Any, Any]:
    ctx = multiprocessing.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    worker = ctx.Process(target=finish_jobs, args=(inbox, outbox, base_url, SECRET))
    worker.start()
    return worker, inbox, outbox


def test_a_job_started_here_is_finished_by_a_worker_process(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """hand_off() here, resume() in a spawned process: one job, no second start, no collision."""
    tracker, exporter = tracked
    worker, inbox, outbox = _spawn_worker()
    try:
        with tracker.track("video", user_id="u1", stages=2) as done:
            done.set_progress(10)
            inbox.put((done.hand_off(), "complete"))
        with tracker.track("video", user_id="u2") as broken:
            inbox.put((broken.hand_off(), "fail"))
        inbox.put(None)
        remote = outbox.get(timeout=120)
    finally:
        worker.join(timeout=120)
    assert worker.exitcode == 0
    for job, last in ((done, "completed"), (broken, "failed")):
        here = exporter.events_for(job.id)
        there = [event for event in remote if event["job_id"] == job.id]
        assert here[0].kind == "started"
        assert all(event.kind != "started" for event in here[1:])
        assert [event["kind"] for event in there] == ["progress", "progress", "progress", last]
        assert {event["user_id"] for event in there} == {job.user_id}
        keys = [f"{job.id}.{event.sequence}" for event in here] + [
            f"{job.id}.{event['sequence']}" for event in there]
        assert len(keys) == len(set(keys))
    assert [e["error"]["code"] for e in remote if e["kind"] == "failed"] == ["RuntimeError"]


def test_http_delivery_from_two_processes_never_repeats_an_idempotency_key(
        server: RecordingServer) -> None:
    """The starter and the worker both deliver over HTTP: distinct keys, one finished job."""
    tracker = seenn.Tracker(exporters=[HTTPExporter(api_key=SECRET, base_url=server.url)])
    worker, inbox, outbox = _spawn_worker(server.url)
    try:
        with tracker.track("video", user_id="u1") as job:
            job.set_progress(10)
            carrier = job.hand_off()
        assert tracker.force_flush(timeout=30)  # the backend knows the job before the worker
        inbox.put((carrier, "complete"))
        inbox.put(None)
        outbox.get(timeout=120)
    finally:
        worker.join(timeout=120)
        tracker.shutdown(timeout=5)
    assert worker.exitcode == 0
    keys = [request.headers["Idempotency-Key"] for request in server.requests
            if request.method == "POST"]
    assert len(keys) == len(set(keys)) >= 3
    stored = server.backend.jobs[job.id]
    assert (stored["status"], stored["progress"], stored["userId"]) == ("completed", 100, "u1")
    assert [request.path.rsplit("/", 1)[-1] for request in server.requests].count("jobs") == 1


def test_a_resumed_job_waits_for_its_start_to_reach_the_backend(server: RecordingServer) -> None:
    """The worker's first call retries a 404: the starter's start may still be on its way."""
    context = JobContext("job_resumed_early", "video", user_id="u1", progress=10)
    exporter = HTTPExporter(api_key=SECRET, base_url=server.url)
    exporter._random = lambda: 0.0  # retry at once
    tracker = seenn.Tracker(exporters=[exporter])
    # The backend answers 404 twice (the starter's start has not arrived), then knows it.
    server.reply(404, {"error": {"code": "NOT_FOUND", "message": "job not found"}}, times=2)
    server.backend.jobs["job_resumed_early"] = {
        "id": "job_resumed_early", "appId": "app_test", "userId": "u1", "jobType": "video",
        "title": "video", "status": "running", "progress": 10}
    try:
        with propagation.resume(context, tracker=tracker) as job:
            assert job is not None
            job.set_progress(50)
        assert tracker.force_flush(timeout=30)
    finally:
        tracker.shutdown(timeout=5)
    assert server.backend.jobs["job_resumed_early"]["status"] == "completed"
    assert exporter.stats.rejected == 0 and exporter.stats.retries == 2


def test_a_started_job_does_not_retry_a_404(server: RecordingServer) -> None:
    """Outside resumed jobs a 404 still means the job is gone: no retry."""
    exporter = HTTPExporter(api_key=SECRET, base_url=server.url)
    event = make_event("progress", "job_gone", "video", None, None, "running", 50, None, None,
                       None, None, None, None, None, None, None, 1, 0.0, None, None)
    assert exporter.export([event]) is ExportResult.SUCCESS
    assert exporter.force_flush(timeout=30)
    exporter.shutdown(timeout=5)
    assert (exporter.stats.retries, exporter.stats.rejected) == (0, 1)


def test_a_batch_processor_forgets_a_handed_off_job() -> None:
    """After a handed-off block, the batch processor keeps nothing for the job."""
    memory = InMemoryExporter()
    processor = BatchProcessor(memory)
    tracker = seenn.Tracker(processors=[processor])
    try:
        with tracker.track("video") as job:
            job.set_progress(10)
            job.hand_off()
        assert job.id not in processor._last_sent
        assert tracker.force_flush(timeout=30)
    finally:
        tracker.shutdown(timeout=5)
    assert memory.kinds(job.id) == ["started", "progress"]


def test_resumed_sequences_fit_the_http_outbox(server: RecordingServer, tmp_path: Path) -> None:
    """A resumed job's large sequence numbers go through the SQLite outbox and are delivered."""
    server.backend.jobs["job_outboxed"] = {
        "id": "job_outboxed", "appId": "app_test", "userId": "u1", "jobType": "video",
        "title": "video", "status": "running", "progress": 0}
    exporter = HTTPExporter(api_key=SECRET, base_url=server.url, outbox=tmp_path / "out.db")
    tracker = seenn.Tracker(exporters=[exporter])
    try:
        with propagation.resume(JobContext("job_outboxed", "video"), tracker=tracker) as job:
            assert job is not None
            job.set_progress(50)
        assert tracker.force_flush(timeout=30)
    finally:
        tracker.shutdown(timeout=5)
    assert server.backend.jobs["job_outboxed"]["status"] == "completed"
    assert exporter.stats.delivered >= 2 and exporter.stats.dropped == 0
    keys = [request.headers["Idempotency-Key"] for request in server.requests]
    assert all(int(key.split(".")[1].rstrip("p")) >= RESUMED_SEQUENCE_UNIT for key in keys)


def test_a_resumed_job_can_be_handed_off_again(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """Web -> worker A -> worker B: each hop resumes without a start; only B ends the job."""
    tracker, exporter = tracked
    with tracker.track("video", stages=["fetch", "render"]) as job:
        first = job.hand_off()
    with propagation.resume(first, tracker=tracker) as hop, seenn.stage("fetch"):
        assert hop is not None
        second = hop.hand_off()
    with propagation.resume(second, tracker=tracker) as last, seenn.stage("render"):
        assert last is not None
    events = exporter.events_for(job.id)
    assert [event.kind for event in events].count("started") == 1
    assert [event.kind for event in events].count("completed") == 1
    assert events[-1].kind == "completed"
    keys = [event.sequence for event in events]
    assert len(keys) == len(set(keys))
    context = propagation.extract(second)
    assert context is not None and context.stage == seenn.Stage("fetch", 1, 2)


def test_the_public_names_of_propagation_and_exporters() -> None:
    """seenn.propagation and seenn.exporters list their public names, sorted, and have them."""
    import seenn.exporters

    for module in (propagation, seenn.exporters):
        assert module.__all__ == sorted(module.__all__)
        for name in module.__all__:
            assert hasattr(module, name)
    defined_here = {name for name, value in vars(propagation).items()
                    if not name.startswith("_")
                    and getattr(value, "__module__", None) == propagation.__name__}
    assert defined_here <= set(propagation.__all__)
    assert {"inject", "extract", "resume", "SeennPropagator"} <= set(propagation.__all__)
    assert "OTelExporter" in seenn.exporters.__all__


def test_seenn_serve_sees_one_job_from_start_to_worker_end(tmp_path: Path) -> None:
    """seenn serve shows one job, started by one tracker and finished by a resumed block."""
    import seenn.server

    with seenn.server.running(tmp_path / "serve.db") as backend:
        sending = HTTPExporter(api_key=backend.api_key, base_url=backend.url)
        finishing = HTTPExporter(api_key=backend.api_key, base_url=backend.url)
        starter = seenn.Tracker(exporters=[sending])
        worker = seenn.Tracker(exporters=[finishing])
        try:
            with starter.track("video", user_id="u1", stages=["queued", "render"]) as job:
                job.set_stage("queued")
                carrier = job.hand_off()
            assert starter.force_flush(timeout=30)
            with propagation.resume(carrier, tracker=worker) as resumed, \
                    seenn.stage("render"):
                assert resumed is not None
                resumed.set_progress(75, message="rendering")
                resumed.set_result({"type": "video", "url": "https://cdn/v.mp4"})
            assert worker.force_flush(timeout=30)
        finally:
            starter.shutdown(timeout=5)
            worker.shutdown(timeout=5)
        with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
            stored = client.jobs.get(job.id)
    assert (stored.status, stored.progress, stored.user_id) == ("completed", 100, "u1")
    assert stored.result == seenn.JobResult("video", "https://cdn/v.mp4")
    assert sending.stats.rejected == finishing.stats.rejected == 0


def test_a_resumed_job_whose_start_arrives_late_reaches_seenn_serve(tmp_path: Path) -> None:
    """The worker's calls answered 404 before the start arrived are retried under new keys.

    seenn serve stores a 404 under its Idempotency-Key and replays it: a retry
    under the same key would be answered 404 forever.
    """
    import seenn.server

    with seenn.server.running(tmp_path / "serve.db") as backend:
        exporter = HTTPExporter(api_key=backend.api_key, base_url=backend.url)
        exporter._random = lambda: 0.01  # retry soon
        worker = seenn.Tracker(exporters=[exporter])
        context = JobContext("job_late_start", "video", user_id="u1")
        client = seenn.SeennClient(backend.api_key, base_url=backend.url)
        try:
            with propagation.resume(context, tracker=worker) as job:
                assert job is not None
                job.set_progress(40)
            wait_until(lambda: exporter.stats.retries, 30, "a 404 to be retried")
            client.jobs.start(job_type="video", user_id="u1", title="video",
                              job_id="job_late_start")
            assert worker.force_flush(timeout=60)
            stored = client.jobs.get("job_late_start")
        finally:
            worker.shutdown(timeout=5)
            client.close()
    assert (stored.status, stored.progress) == ("completed", 100)
    assert exporter.stats.rejected == 0


def test_otel_propagators_env_var_names_seenn() -> None:
    """OTEL_PROPAGATORS=tracecontext,seenn composes SeennPropagator through its entry point."""
    import os
    import subprocess
    import sys

    script = ("from opentelemetry import propagate\n"
              "print(','.join(type(p).__name__ for p in "
              "propagate.get_global_textmap()._propagators))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "OTEL_PROPAGATORS": "tracecontext,seenn"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "TraceContextTextMapPropagator,SeennPropagator"
