"""OTelExporter with the real OpenTelemetry SDK: span events, spans per job, rate limits, no-ops."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import seenn
from seenn.exporters import (
    BatchProcessor,
    ConsoleExporter,
    HTTPExporter,
    OTelExporter,
    SimpleProcessor,
)
from seenn.exporters._setup import exporters_from_env
from seenn.testing import strict_mode
from tests.conftest import SECRET
from tests.server import RecordingServer
from tests.tracking_helpers import no_job_left_behind

__all__ = ["no_job_left_behind"]


@dataclass
class Otel:
    """A private SDK tracer provider whose finished spans land in memory."""

    provider: TracerProvider
    memory: InMemorySpanExporter

    @property
    def tracer(self) -> trace.Tracer:
        return self.provider.get_tracer("tests")

    def spans(self) -> list[ReadableSpan]:
        return list(self.memory.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        found = [span for span in self.spans() if span.name == name]
        assert len(found) == 1, [span.name for span in self.spans()]
        return found[0]

    def tracker(self, **options: Any) -> seenn.Tracker:
        """A tracker whose only exporter is an OTelExporter on this provider."""
        exporter = OTelExporter(tracer_provider=self.provider, **options)
        return seenn.Tracker(exporters=[exporter])


@pytest.fixture
def otel() -> Iterator[Otel]:
    """An SDK TracerProvider (never the global one) recording into an InMemorySpanExporter."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with strict_mode():
        yield Otel(provider, memory)
    provider.shutdown()


def names(span: ReadableSpan) -> list[str]:
    return [event.name for event in span.events]


def attrs(span: ReadableSpan, name: str, index: int = 0) -> dict[str, Any]:
    events = [event for event in span.events if event.name == name]
    return dict(events[index].attributes or {})


def exporter_of(tracker: seenn.Tracker) -> OTelExporter:
    processor = tracker.processors[0]
    assert isinstance(processor, SimpleProcessor)
    exporter = processor.exporter
    assert isinstance(exporter, OTelExporter)
    return exporter


# -- events on the current span ------------------------------------------------------------


def test_events_and_attributes_on_the_current_span(otel: Otel) -> None:
    """Each change of a job is an event with seenn.job.* attributes on the span current then."""
    tracker = otel.tracker(progress_interval=0)
    with otel.tracer.start_as_current_span("request"), \
            tracker.track("video", user_id="user_1", title="A cat",
                          stages=["render", "encode"]) as job:
        job.set_progress(10, message="Preparing")
        job.set_stage("encode")
        job.set_progress(75)
    span = otel.span("request")
    assert names(span) == ["seenn.job.started", "seenn.job.progress", "seenn.job.stage",
                           "seenn.job.progress", "seenn.job.completed"]
    started = attrs(span, "seenn.job.started")
    assert started["seenn.job.id"] == job.id
    assert started["seenn.job.type"] == "video"
    assert started["seenn.job.status"] == "running"
    assert started["seenn.job.title"] == "A cat"
    assert started["seenn.job.sequence"] == 0
    assert attrs(span, "seenn.job.progress")["seenn.job.message"] == "Preparing"
    stage = attrs(span, "seenn.job.stage")
    assert (stage["seenn.job.stage.name"], stage["seenn.job.stage.current"],
            stage["seenn.job.stage.total"], stage["seenn.job.progress"]) == ("encode", 2, 2, 50)
    assert attrs(span, "seenn.job.progress", 1)["seenn.job.progress"] == 75
    completed = attrs(span, "seenn.job.completed")
    assert (completed["seenn.job.status"], completed["seenn.job.progress"]) == ("completed", 100)
    assert all("seenn.job.user_id" not in (event.attributes or {}) for event in span.events)
    # Each event carries the time of the change it records.
    assert [event.timestamp for event in span.events] == sorted(
        event.timestamp for event in span.events)


def test_user_id_is_recorded_only_when_asked(otel: Otel) -> None:
    """record_user_id=True adds seenn.job.user_id (personal data is left out by default)."""
    tracker = otel.tracker(record_user_id=True)
    with otel.tracer.start_as_current_span("request"), tracker.track("video", user_id="u_7"):
        pass
    assert all(event.attributes["seenn.job.user_id"] == "u_7"
               for event in otel.span("request").events)


def test_failure_and_parent_attributes(otel: Otel) -> None:
    """A failed child job records its error code, message, retryable flag and parent id."""
    tracker = otel.tracker()
    with otel.tracer.start_as_current_span("request"), tracker.track("batch") as parent, \
            pytest.raises(TimeoutError), tracker.track("page", retryable=True):
        raise TimeoutError("slow disk")
    failed = attrs(otel.span("request"), "seenn.job.failed")
    assert failed["seenn.job.parent_id"] == parent.id
    assert failed["seenn.job.child_index"] == 0
    assert failed["seenn.job.error.code"] == "TimeoutError"
    assert failed["seenn.job.error.message"] == "slow disk"
    assert failed["seenn.job.retryable"] is True


def test_events_follow_the_span_current_at_each_change(otel: Otel) -> None:
    """A job that runs through several spans records each change on the span current then."""
    tracker = otel.tracker()
    with tracker.track("video") as job:
        with otel.tracer.start_as_current_span("download"):
            job.set_progress(30)
        with otel.tracer.start_as_current_span("render"):
            job.set_progress(60)
        job.set_progress(90)  # no span: recorded nowhere
    assert names(otel.span("download")) == ["seenn.job.progress"]
    assert names(otel.span("render")) == ["seenn.job.progress"]
    assert exporter_of(tracker)._jobs == {}


def test_without_a_span_nothing_is_recorded_or_remembered(otel: Otel) -> None:
    """Outside any span the exporter records nothing and keeps no state for the job."""
    tracker = otel.tracker()
    with tracker.track("video") as job:
        job.set_progress(50)
        assert exporter_of(tracker)._jobs == {}
    assert otel.spans() == []


def test_hand_off_is_recorded_on_the_current_span(otel: Otel) -> None:
    """Leaving a handed-off block records seenn.job.handed_off and forgets the job."""
    tracker = otel.tracker()
    with otel.tracer.start_as_current_span("request"), tracker.track("video") as job:
        job.hand_off()
    assert names(otel.span("request")) == ["seenn.job.started", "seenn.job.handed_off"]
    assert exporter_of(tracker)._jobs == {}


# -- a span per job ------------------------------------------------------------------------


def test_span_per_job_carries_the_events_and_ends_with_the_job(otel: Otel) -> None:
    """span_per_job opens 'seenn.job <type>' under the current span; it ends when the job does."""
    tracker = otel.tracker(span_per_job=True)
    with otel.tracer.start_as_current_span("request"), tracker.track("video") as job:
        job.set_progress(40)
        assert exporter_of(tracker).job_span(job.id) is not None
        assert otel.spans() == []  # the job's span is still open
    request, span = otel.span("request"), otel.span("seenn.job video")
    assert span.parent is not None and span.parent.span_id == request.context.span_id
    assert names(span) == ["seenn.job.started", "seenn.job.progress", "seenn.job.completed"]
    assert names(request) == []
    assert span.attributes["seenn.job.id"] == job.id
    assert span.attributes["seenn.job.status"] == "completed"
    assert span.status.status_code is StatusCode.UNSET
    assert span.start_time is not None and span.end_time is not None
    assert span.end_time >= span.start_time
    assert exporter_of(tracker)._jobs == {}


def test_span_per_job_failure_sets_error_status_and_records_the_exception(otel: Otel) -> None:
    """A failed job's span has status ERROR and an 'exception' event with exception.*."""
    tracker = otel.tracker(span_per_job=True)
    with pytest.raises(ValueError, match="bad frame"), tracker.track("video"):
        raise ValueError("bad frame 24")
    span = otel.span("seenn.job video")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: bad frame 24"
    assert span.attributes["seenn.job.error.code"] == "ValueError"
    exception = attrs(span, "exception")
    assert exception["exception.type"] == "ValueError"
    assert exception["exception.message"] == "bad frame 24"
    assert "ValueError: bad frame 24" in exception["exception.stacktrace"]
    assert "test_otel.py" in exception["exception.stacktrace"]


def test_job_fail_with_a_message_is_an_error_without_exception(otel: Otel) -> None:
    """job.fail(error='...') ends the span with status ERROR but no exception event."""
    tracker = otel.tracker(span_per_job=True)
    with tracker.track("video") as job:
        job.fail(error="GPU memory exceeded")
    span = otel.span("seenn.job video")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "FAILED: GPU memory exceeded"
    assert "exception" not in names(span)


async def test_cancellation_is_recorded_as_cancelled(otel: Otel) -> None:
    """A cancelled task's job span ends with status ERROR, description CANCELLED."""
    tracker = otel.tracker(span_per_job=True)
    running = asyncio.Event()

    async def work() -> None:
        async with tracker.track("cancel-me"):
            running.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    await running.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    span = otel.span("seenn.job cancel-me")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "CANCELLED"
    assert attrs(span, "seenn.job.failed")["seenn.job.error.code"] == "CANCELLED"


def test_interruption_and_early_close_are_recorded_as_such(otel: Otel) -> None:
    """KeyboardInterrupt ends the span as INTERRUPTED, a generator closed early as CANCELLED."""
    tracker = otel.tracker(span_per_job=True)
    with pytest.raises(KeyboardInterrupt), tracker.track("interrupted"):
        raise KeyboardInterrupt

    @tracker.job("frames")
    def frames() -> Iterator[int]:
        yield from range(10)

    gen = frames()
    next(gen)
    gen.close()
    assert otel.span("seenn.job interrupted").status.description == "INTERRUPTED"
    closed = otel.span("seenn.job frames")
    assert (closed.status.status_code, closed.status.description) == (StatusCode.ERROR,
                                                                       "CANCELLED")


def test_nested_jobs_nest_their_spans(otel: Otel) -> None:
    """A child job's span is a child of its parent job's span, or of a span opened in between."""
    tracker = otel.tracker(span_per_job=True)
    with otel.tracer.start_as_current_span("request"), tracker.track("batch"):
        with tracker.track("page"):
            pass
        with otel.tracer.start_as_current_span("thumbnails"), tracker.track("thumb"):
            pass
    batch, page = otel.span("seenn.job batch"), otel.span("seenn.job page")
    thumbnails, thumb = otel.span("thumbnails"), otel.span("seenn.job thumb")
    assert page.parent is not None and page.parent.span_id == batch.context.span_id
    assert thumb.parent is not None and thumb.parent.span_id == thumbnails.context.span_id
    assert page.attributes["seenn.job.parent_id"] == batch.attributes["seenn.job.id"]
    assert {span.context.trace_id for span in otel.spans()} == {batch.context.trace_id}


def test_job_span_can_parent_user_spans(otel: Otel) -> None:
    """job_span() lets code put its own spans under the job's span with trace.use_span."""
    tracker = otel.tracker(span_per_job=True)
    exporter = exporter_of(tracker)
    with tracker.track("video") as job:
        job_span = exporter.job_span(job.id)
        assert job_span is not None
        with trace.use_span(job_span), otel.tracer.start_as_current_span("render"):
            pass
    render, span = otel.span("render"), otel.span("seenn.job video")
    assert render.parent is not None and render.parent.span_id == span.context.span_id
    assert span.end_time is not None  # use_span did not end it early: the job did


async def test_concurrent_async_jobs_record_on_their_own_spans(otel: Otel) -> None:
    """Jobs interleaved in asyncio tasks each record on the span of their own task."""
    tracker = otel.tracker(progress_interval=0)
    arrived = 0
    all_in = asyncio.Event()

    async def work(index: int) -> None:
        nonlocal arrived
        with otel.tracer.start_as_current_span(f"task-{index}"):
            async with tracker.track(f"job-{index}") as job:
                arrived += 1
                if arrived == 3:
                    all_in.set()
                await all_in.wait()  # every job is running before any reports progress
                job.set_progress(50)

    await asyncio.gather(*(work(index) for index in range(3)))
    for index in range(3):
        span = otel.span(f"task-{index}")
        assert names(span) == ["seenn.job.started", "seenn.job.progress", "seenn.job.completed"]
        assert {event.attributes["seenn.job.type"] for event in span.events} == {f"job-{index}"}


def test_threads_record_on_their_own_spans(otel: Otel) -> None:
    """Jobs in threads record on the span current in their thread; a carried context works too."""
    tracker = otel.tracker(span_per_job=True)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            with otel.tracer.start_as_current_span(f"thread-{index}"), \
                    tracker.track(f"job-{index}") as job:
                barrier.wait(timeout=30)
                job.set_progress(50)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for index in range(4):
        outer, span = otel.span(f"thread-{index}"), otel.span(f"seenn.job job-{index}")
        assert span.parent is not None and span.parent.span_id == outer.context.span_id

    def carried_work() -> None:
        with tracker.track("carried"):
            pass

    with otel.tracer.start_as_current_span("main"):
        thread = threading.Thread(target=seenn.with_current_job(carried_work))
        thread.start()
        thread.join()
    span = otel.span("seenn.job carried")
    assert span.parent is not None and span.parent.span_id == otel.span("main").context.span_id


def test_generator_jobs_never_attach_a_context_across_yields(
        otel: Otel, caplog: pytest.LogCaptureFixture) -> None:
    """Decorated generators get their spans without any context token held across a yield."""
    tracker = otel.tracker(span_per_job=True)

    @tracker.job("frames")
    def frames() -> Iterator[int]:
        for index in range(3):
            job = seenn.current_job()
            assert job is not None
            job.set_progress((index + 1) * 30)
            yield index

    @tracker.job("chunks")
    async def chunks() -> AsyncIterator[int]:
        for index in range(3):
            yield index

    async def consume_async() -> list[int]:
        return [item async for item in chunks()]

    with caplog.at_level(logging.WARNING):
        gen = frames()
        consumed = []
        for item in gen:
            # The consumer's own spans between items are not children of the job's span.
            with otel.tracer.start_as_current_span(f"consume-{item}"):
                consumed.append(item)
        assert asyncio.run(consume_async()) == [0, 1, 2]
    assert consumed == [0, 1, 2]
    assert "detach" not in caplog.text.lower()
    job_span = otel.span("seenn.job frames")
    assert job_span.status.status_code is StatusCode.UNSET
    assert names(job_span)[-1] == "seenn.job.completed"
    for index in range(3):
        consumer = otel.span(f"consume-{index}")
        assert consumer.parent is None
    assert names(otel.span("seenn.job chunks"))[-1] == "seenn.job.completed"


# -- rate limits ---------------------------------------------------------------------------


def test_progress_events_are_capped_per_span_keeping_first_and_last(otel: Otel) -> None:
    """With a cap of 5, a hundred progress changes leave 5 events plus the last one."""
    tracker = otel.tracker(progress_interval=0, max_progress_events=5)
    with otel.tracer.start_as_current_span("request"), tracker.track("video") as job:
        for percent in range(1, 100):
            job.set_progress(percent)
    span = otel.span("request")
    progress = [event.attributes["seenn.job.progress"] for event in span.events
                if event.name == "seenn.job.progress"]
    assert progress == [1, 2, 3, 4, 5, 99]
    assert names(span)[-1] == "seenn.job.completed"


def test_progress_events_are_rate_limited_in_time(otel: Otel) -> None:
    """At most one progress event per progress_interval; the held-back last one still shows."""
    tracker = otel.tracker(span_per_job=True, progress_interval=1.0)
    now = [100.0]
    exporter_of(tracker)._clock = lambda: now[0]
    with tracker.track("video", stages=["render", "encode"]) as job:
        for percent in range(1, 30):
            job.set_progress(percent)  # all at the same instant: only the first is recorded
        now[0] += 1.0
        job.set_progress(30)  # a second later: recorded
        job.set_progress(31)
        job.set_progress(32)  # held back, then recorded as the last before the stage event
        job.set_stage("encode")  # stage changes are not held back by time
    span = otel.span("seenn.job video")
    recorded = [(event.name, event.attributes["seenn.job.progress"]) for event in span.events]
    assert recorded == [("seenn.job.started", 0), ("seenn.job.progress", 1),
                        ("seenn.job.progress", 30), ("seenn.job.stage", 50),
                        ("seenn.job.completed", 100)]


def test_a_long_job_stays_under_the_sdk_event_limit(otel: Otel) -> None:
    """Ten thousand changes over hours make fewer than 128 events, first and last included."""
    tracker = otel.tracker(span_per_job=True)
    now = [0.0]
    exporter_of(tracker)._clock = lambda: now[0]
    with tracker.track("export") as job:
        for step in range(10_000):
            now[0] += 0.5
            job.set_progress(step * 100 // 10_000, message=f"row {step}")
    span = otel.span("seenn.job export")
    assert len(span.events) < 128
    assert span.dropped_events == 0
    messages = [event.attributes.get("seenn.job.message") for event in span.events
                if event.name == "seenn.job.progress"]
    assert messages[0] == "row 0"
    assert messages[-1] == "row 9999"


# -- configuration -------------------------------------------------------------------------


def test_seenn_exporter_otel_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """SEENN_EXPORTER=otel,console builds an inline OTelExporter beside a batched console one."""
    monkeypatch.setenv("SEENN_EXPORTER", "otel,console")
    exporters = exporters_from_env()
    assert [type(exporter) for exporter in exporters] == [OTelExporter, ConsoleExporter]
    tracker = seenn.Tracker()
    try:
        first, second = tracker.processors
        assert isinstance(first, SimpleProcessor) and isinstance(first.exporter, OTelExporter)
        assert isinstance(second, BatchProcessor)
    finally:
        tracker.shutdown(timeout=5)


def test_otel_exporter_works_beside_http_and_console(otel: Otel, server: RecordingServer) -> None:
    """configure() with OTel, console and HTTP exporters: all three see the job."""
    stream = io.StringIO()
    tracker = seenn.Tracker()
    tracker.configure(exporters=[
        OTelExporter(tracer_provider=otel.provider, span_per_job=True),
        ConsoleExporter(stream),
        HTTPExporter(api_key=SECRET, base_url=server.url, include_trace_context=True),
    ])
    try:
        with otel.tracer.start_as_current_span("request") as request, \
                tracker.track("video", user_id="u1") as job:
            job.set_progress(50)
        assert tracker.force_flush(timeout=30)
    finally:
        tracker.shutdown(timeout=5)
    assert names(otel.span("seenn.job video"))[-1] == "seenn.job.completed"
    assert job.id in stream.getvalue()
    stored = server.backend.jobs[job.id]
    assert stored["status"] == "completed"
    assert stored["metadata"]["traceId"] == format(request.get_span_context().trace_id, "032x")


def test_configure_runs_the_otel_exporter_inline() -> None:
    """configure(exporters=[OTelExporter()]) puts it behind a SimpleProcessor, not a batch."""
    tracker = seenn.Tracker(exporters=[OTelExporter()])
    assert isinstance(tracker.processors[0], SimpleProcessor)
    tracker.shutdown(timeout=5)


def test_a_broken_tracer_never_reaches_user_code(caplog: pytest.LogCaptureFixture) -> None:
    """A tracer that raises is logged on the seenn logger; the tracked code runs on."""

    class BrokenProvider(trace.TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            return BrokenTracer()

    class BrokenTracer(trace.NoOpTracer):
        def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
            raise RuntimeError("tracer exploded")

    tracker = seenn.Tracker(
        exporters=[OTelExporter(tracer_provider=BrokenProvider(), span_per_job=True)])
    with tracker.track("video") as job:
        job.set_progress(50)
    assert job.status == "completed"
    assert "tracer exploded" in caplog.text
    tracker.shutdown(timeout=5)


def test_shutdown_ends_the_spans_of_running_jobs(otel: Otel) -> None:
    """Shutting the exporter down ends the open job spans; later events are refused."""
    exporter = OTelExporter(tracer_provider=otel.provider, span_per_job=True)
    tracker = seenn.Tracker(processors=[SimpleProcessor(exporter)])
    with tracker.track("video") as job:
        job.set_progress(10)
        exporter.shutdown()
        job.set_progress(20)
    span = otel.span("seenn.job video")
    assert names(span) == ["seenn.job.started", "seenn.job.progress"]
    assert exporter._jobs == {}


def test_bad_options_raise_validation_error() -> None:
    """Negative intervals and empty budgets are refused at construction."""
    with pytest.raises(seenn.ValidationError):
        OTelExporter(progress_interval=-1)
    with pytest.raises(seenn.ValidationError):
        OTelExporter(max_progress_events=0)


# -- without an SDK ------------------------------------------------------------------------

_NO_SDK = """
import sys

class BlockSDK:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry.sdk" or name.startswith("opentelemetry.sdk."):
            raise ImportError("blocked for this test: " + name)
        return None

if sys.argv[1] == "blocked":
    sys.meta_path.insert(0, BlockSDK())
    try:
        import opentelemetry.sdk.trace
    except ImportError:
        pass
    else:
        raise SystemExit("the SDK is importable")

import seenn
import seenn.propagation
from opentelemetry import trace
from seenn.exporters import OTelExporter

tracer = trace.get_tracer("app")
for span_per_job in (False, True):
    exporter = OTelExporter(span_per_job=span_per_job)
    tracker = seenn.Tracker(exporters=[exporter])
    with tracer.start_as_current_span("request"):
        with tracker.track("video", stages=["render", "encode"]) as job:
            for percent in range(101):
                job.set_progress(percent, message=f"{percent}%")
            with job.stage("encode"):
                with tracker.track("thumbnail"):
                    pass
            carrier = job.hand_off()
        with seenn.propagation.resume(carrier, tracker=tracker) as resumed:
            resumed.set_progress(99)
        try:
            with tracker.track("broken"):
                raise ValueError("boom")
        except ValueError:
            pass
    assert exporter._jobs == {}, exporter._jobs
    assert exporter.job_span(job.id) is None
    tracker.shutdown(timeout=5)
print("ok", "opentelemetry.sdk" in sys.modules)
"""


@pytest.mark.parametrize("sdk", ["blocked", "no-provider"])
def test_without_an_sdk_everything_is_a_quiet_no_op(sdk: str) -> None:
    """Without the SDK (or with no tracer provider set) jobs, hand-offs and resumes just work."""
    out = subprocess.run([sys.executable, "-c", _NO_SDK, sdk], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok False"
    assert out.stderr == ""
