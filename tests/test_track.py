"""seenn.track(): lifecycle, outcomes, nesting, validation, stages, iterate, context."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

import seenn
from seenn import JobError, JobResult, Stage, ValidationError
from tests.tracking_helpers import (
    memory_tracker,
    no_job_left_behind,  # noqa: F401 (autouse fixture)
)

ULID_ID = re.compile(r"^job_[0-9A-HJKMNP-TV-Z]{26}$")


class CodedError(Exception):
    """An application error that carries a string code."""

    code = "RENDER_FAILED"


def test_block_emits_started_progress_completed() -> None:
    """A with-block emits started, progress and completed with the job's state."""
    with memory_tracker() as (tracker, exporter):
        with tracker.track("video-generation", user_id="user_123", title="Making video",
                           metadata={"prompt": "A cat"}) as job:
            job.set_progress(40, message="Rendering")
        events = exporter.events
    assert [e.kind for e in events] == ["started", "progress", "completed"]
    assert [e.sequence for e in events] == [0, 1, 2]
    assert {e.job_id for e in events} == {job.id}
    assert events[0].status == "running"
    assert events[1].progress == 40 and events[1].message == "Rendering"
    assert events[2].status == "completed" and events[2].progress == 100
    assert events[2].user_id == "user_123" and events[2].title == "Making video"
    assert events[2].metadata == {"prompt": "A cat"}
    assert job.status == "completed" and job.progress == 100


def test_repeating_the_same_progress_emits_nothing_new() -> None:
    """set_progress() with the value the job already has, and nothing else, emits no event."""
    with memory_tracker() as (tracker, exporter):
        with tracker.track("t") as job:
            for _ in range(3):
                job.set_progress(10)
            job.set_progress(10, message="same value, new message")
        kinds = [(e.kind, e.progress) for e in exporter.events]
    assert kinds == [("started", 0), ("progress", 10), ("progress", 10), ("completed", 100)]


def test_job_ids_are_job_prefixed_ulids_and_unique() -> None:
    """Job ids are job_ + a 26-character Crockford ULID, all different."""
    with memory_tracker() as (tracker, _):
        ids = set()
        for _ in range(2000):
            with tracker.track("t") as job:
                pass
            ids.add(job.id)
    assert len(ids) == 2000
    assert all(ULID_ID.match(job_id) for job_id in ids)


def _ulid_ms(job_id: str) -> int:
    ms = 0
    for char in job_id[4:14]:
        ms = ms * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(char)
    return ms


def test_a_job_id_carries_the_millisecond_of_its_first_event() -> None:
    """The id made for the first event is stamped with that event's own clock reading."""
    with memory_tracker() as (tracker, exporter):
        for _ in range(50):
            with tracker.track("t"):
                pass
    started = [e for e in exporter.events if e.kind == "started"]
    assert len(started) == 50
    assert all(_ulid_ms(e.job_id) == int(e.timestamp * 1000) for e in started)
    from seenn._instrumentation.ids import new_job_id
    assert _ulid_ms(new_job_id(1_700_000_000.1239)) == 1_700_000_000_123
    before = time.time_ns() // 1_000_000
    made = _ulid_ms(new_job_id())
    assert before <= made <= time.time_ns() // 1_000_000


def test_job_ids_made_on_many_threads_at_once_are_all_different() -> None:
    """Threads taking ids from the shared random blocks never get the same one."""
    from seenn._instrumentation.ids import new_job_id

    made: list[list[str]] = [[] for _ in range(4)]

    def make(ids: list[str]) -> None:
        for _ in range(3000):
            ids.append(new_job_id())

    threads = [threading.Thread(target=make, args=(ids,)) for ids in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [job_id for ids in made for job_id in ids]
    assert len(set(every)) == len(every) == 12000
    assert all(ULID_ID.match(job_id) for job_id in every)


def test_a_new_block_of_random_parts_emptied_by_other_threads_is_drawn_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """If other threads take every part of a fresh block first, the id draws another block."""
    from seenn._instrumentation import ids

    blocks = [iter(()), iter(["ABCDEFGHJKMNPQRS"])]  # the first comes back empty
    monkeypatch.setattr(ids, "_random_chunks", lambda: blocks.pop(0))
    monkeypatch.setattr(ids, "_chunks", iter(()))
    job_id = ids.new_job_id()
    assert job_id.endswith("ABCDEFGHJKMNPQRS") and ULID_ID.match(job_id)
    assert blocks == []


def test_a_forked_child_makes_other_job_ids_than_its_parent() -> None:
    """After os.fork() the child draws fresh random bytes: its ids are not the parent's next."""
    from seenn._instrumentation.ids import new_job_id

    new_job_id()  # the parent holds a block of random parts
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: forking with threads
        pid = os.fork()
    if pid == 0:  # the child: report through the pipe only
        try:
            os.write(write_end, " ".join(new_job_id() for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [new_job_id() for _ in range(5)]
    assert len(child) == 5
    assert not {job_id[-16:] for job_id in child} & {job_id[-16:] for job_id in parent}


def test_given_job_id_is_used() -> None:
    """track(job_id=...) uses that id in every event."""
    with memory_tracker() as (tracker, exporter), tracker.track("t", job_id="job_custom"):
        pass
    assert {e.job_id for e in exporter.events} == {"job_custom"}


def test_unconfigured_tracking_works_and_emits_nothing() -> None:
    """With no processors a job still tracks its state, and no event is built."""
    tracker = seenn.Tracker(exporters=[])
    with tracker.track("t") as job:
        assert seenn.current_job() is job
        job.set_progress(30)
        assert job.progress == 30 and job.status == "running"
    assert job.status == "completed" and job.progress == 100
    assert seenn.current_job() is None


def test_exception_with_string_code_fails_with_that_code_and_is_reraised() -> None:
    """An exception with a string .code fails the job with that code and is re-raised as is."""
    error = CodedError("GPU memory exceeded")
    with memory_tracker() as (tracker, exporter):
        with pytest.raises(CodedError) as caught, tracker.track("t"):
            raise error
        assert caught.value is error
        last = exporter.events[-1]
    assert last.kind == "failed" and last.status == "failed"
    assert last.error is not None
    assert last.error.code == "RENDER_FAILED"
    assert last.error.message == "GPU memory exceeded"
    assert last.error.details is not None
    assert last.error.details["type"] == "tests.test_track.CodedError"


def test_exception_without_code_uses_class_name_and_records_chain() -> None:
    """A plain exception's class name is the code; details carry traceback and cause chain."""
    def fail_with_cause() -> None:
        try:
            raise KeyError("frame 7")
        except KeyError as cause:
            raise ValueError("bad frame") from cause

    with memory_tracker() as (tracker, exporter):
        with pytest.raises(ValueError, match="bad frame"), tracker.track("t"):
            fail_with_cause()
        error = exporter.events[-1].error
    assert error is not None and error.code == "ValueError"
    assert error.details is not None
    assert "Traceback" in error.details["traceback"]
    assert error.details["chain"] == [
        {"relation": "cause", "type": "KeyError", "message": "'frame 7'"}]


def test_non_string_code_falls_back_to_class_name() -> None:
    """An exception whose .code is not a string (OSError-like ints) uses the class name."""

    class NumberedError(Exception):
        code = 42

    with memory_tracker() as (tracker, exporter):
        with pytest.raises(NumberedError), tracker.track("t"):
            raise NumberedError("x")
        error = exporter.events[-1].error
    assert error is not None and error.code == "NumberedError"


def test_keyboard_interrupt_is_interrupted() -> None:
    """KeyboardInterrupt fails the job as INTERRUPTED and propagates."""
    with memory_tracker() as (tracker, exporter):
        with pytest.raises(KeyboardInterrupt), tracker.track("t"):
            raise KeyboardInterrupt
        error = exporter.events[-1].error
    assert error is not None and error.code == "INTERRUPTED"


def test_system_exit_zero_completes() -> None:
    """SystemExit(0) completes the job and still propagates."""
    with memory_tracker() as (tracker, exporter):
        with pytest.raises(SystemExit), tracker.track("t"):
            raise SystemExit(0)
        assert exporter.events[-1].kind == "completed"


@pytest.mark.parametrize("code", [1, 2, "fatal"])
def test_system_exit_non_zero_is_interrupted(code: object) -> None:
    """SystemExit with a non-zero code fails the job as INTERRUPTED."""
    with memory_tracker() as (tracker, exporter):
        with pytest.raises(SystemExit), tracker.track("t"):
            raise SystemExit(code)
        error = exporter.events[-1].error
    assert error is not None and error.code == "INTERRUPTED"


async def test_cancelled_error_is_cancelled() -> None:
    """A task cancelled inside an async with block fails the job as CANCELLED."""
    with memory_tracker() as (tracker, exporter):
        entered = asyncio.Event()

        async def work() -> None:
            async with tracker.track("t"):
                entered.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(work())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        last = exporter.events[-1]
    assert last.kind == "failed"
    assert last.error is not None and last.error.code == "CANCELLED"


def test_generator_closed_early_inside_track_is_cancelled() -> None:
    """A generator closed while inside its track() block fails that job as CANCELLED."""
    with memory_tracker() as (tracker, exporter):

        def frames() -> Iterator[int]:
            with tracker.track("t"):
                yield 1
                yield 2

        gen = frames()
        next(gen)
        gen.close()
        last = exporter.events[-1]
    assert last.error is not None and last.error.code == "CANCELLED"


async def test_async_with_completes() -> None:
    """async with track() starts and completes the job around the block."""
    with memory_tracker() as (tracker, exporter):
        async with tracker.track("t") as job:
            assert seenn.current_job() is job
            await asyncio.sleep(0)
            job.set_progress(70)
        assert [e.kind for e in exporter.events] == ["started", "progress", "completed"]


def test_nested_tracks_are_children_with_index_and_inherited_user() -> None:
    """A track() inside a track() is a child: parent_id, child_index in order, user_id inherited."""
    with memory_tracker() as (tracker, exporter):
        with tracker.track("batch", user_id="user_9") as parent:
            with tracker.track("item") as first:
                assert seenn.current_job() is first
            with tracker.track("item", user_id="someone_else") as second:
                pass
            assert seenn.current_job() is parent
        started = [e for e in exporter.events if e.kind == "started"]
    assert parent.parent_id is None and parent.child_index is None
    assert (first.parent_id, first.child_index, first.user_id) == (parent.id, 0, "user_9")
    assert (second.parent_id, second.child_index, second.user_id) == (
        parent.id, 1, "someone_else")
    assert [(e.parent_id, e.child_index) for e in started] == [
        (None, None), (parent.id, 0), (parent.id, 1)]


def test_invalid_progress_raises_before_any_change() -> None:
    """set_progress(150) raises ValidationError naming the field; nothing changes or is sent."""
    with memory_tracker() as (tracker, exporter), tracker.track("t") as job:
        job.set_progress(20)
        before = len(exporter.events)
        with pytest.raises(ValidationError) as caught:
            job.set_progress(150, message="never")
        assert caught.value.field == "progress"
        assert job.progress == 20 and job.message is None
        assert len(exporter.events) == before


def test_oversized_metadata_raises_before_any_change() -> None:
    """A 20 KB metadata blob raises ValidationError on 'metadata' and leaves the job as it was."""
    with memory_tracker() as (tracker, exporter), tracker.track("t") as job:
        before = len(exporter.events)
        with pytest.raises(ValidationError) as caught:
            job.set_progress(50, metadata={"blob": "x" * 20_000})
        assert caught.value.field == "metadata"
        assert job.progress == 0 and job.metadata is None
        assert len(exporter.events) == before


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"job_type": ""}, "job_type"),
    ({"job_type": "x" * 101}, "job_type"),
    ({"job_type": "t", "user_id": ""}, "user_id"),
    ({"job_type": "t", "title": "x" * 201}, "title"),
    ({"job_type": "t", "queue": {"position": -1}}, "queue.position"),
    ({"job_type": "t", "stages": []}, "stages"),
    ({"job_type": "t", "stages": ["a", "a"]}, "stages"),
])
def test_track_validates_its_arguments(kwargs: dict[str, object], field: str) -> None:
    """track() rejects malformed arguments with a ValidationError naming the field."""
    job_type = kwargs.pop("job_type")
    with pytest.raises(ValidationError) as caught:
        seenn.track(job_type, **kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_updates_after_completion_are_ignored_with_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    """After complete(), updates are dropped, never emitted, and warned about once."""
    with memory_tracker() as (tracker, exporter):
        with tracker.track("t") as job:
            job.complete(result={"type": "video", "url": "https://x/v.mp4"}, message="Done")
            with caplog.at_level(logging.WARNING, logger="seenn"):
                job.set_progress(10)
                job.set_stage("again")
                job.fail(error="late")
        kinds = [e.kind for e in exporter.events]
    assert kinds == ["started", "completed"]
    warnings = [r for r in caplog.records if r.name == "seenn" and "ignored" in r.message]
    assert len(warnings) == 1 and job.id in warnings[0].message
    assert exporter.events[-1].result == JobResult(type="video", url="https://x/v.mp4")
    assert exporter.events[-1].message == "Done"


def test_set_result_is_sent_with_the_completion() -> None:
    """set_result() stores the result, which arrives on the completed event only."""
    with memory_tracker() as (tracker, exporter):
        with tracker.track("t") as job:
            job.set_result({"type": "image", "data": {"w": 3}})
            job.set_progress(50)
        events = exporter.events
    assert events[1].result is None
    assert events[-1].result == JobResult(type="image", data={"w": 3})


def test_explicit_fail_keeps_error_and_retryable() -> None:
    """job.fail() inside the block fails the job once; leaving the block adds nothing."""
    with memory_tracker() as (tracker, exporter):
        with tracker.track("t") as job:
            job.fail(error={"code": "QUOTA", "message": "No credits"}, retryable=True)
        events = exporter.events
    assert [e.kind for e in events] == ["started", "failed"]
    assert events[-1].error == JobError(code="QUOTA", message="No credits")
    assert events[-1].retryable is True


def test_retryable_rule_of_exception_types() -> None:
    """track(retryable=(TimeoutError,)) marks a TimeoutError failure retryable, others not."""
    with memory_tracker() as (tracker, exporter):
        with pytest.raises(TimeoutError), tracker.track("t", retryable=(TimeoutError,)):
            raise TimeoutError("slow")
        with pytest.raises(ValueError, match="bad"), tracker.track("t", retryable=(TimeoutError,)):
            raise ValueError("bad")
        failed = [e for e in exporter.events if e.kind == "failed"]
    assert [e.retryable for e in failed] == [True, False]


def test_queue_starts_job_queued() -> None:
    """A job given a queue starts as queued, and a later plain update makes it running."""
    with memory_tracker() as (tracker, exporter):
        with tracker.track("t", queue={"position": 5, "total": 20}) as job:
            job.set_progress(1)
        events = exporter.events
    assert events[0].status == "queued" and events[0].queue is not None
    assert events[0].queue.position == 5
    assert events[1].status == "running"


def test_a_job_cannot_be_entered_twice() -> None:
    """Entering the same TrackedJob twice raises RuntimeError."""
    job = seenn.track("t")
    with job, pytest.raises(RuntimeError):
        job.__enter__()


def test_declared_stages_number_themselves_and_advance_progress() -> None:
    """With stages declared, seenn.stage() sets current/total and moves progress stage by stage."""
    with memory_tracker() as (tracker, exporter):
        with tracker.track("t", stages=["download", "render", "encode", "upload"]) as job:
            for name in ("download", "render", "encode"):
                with seenn.stage(name):
                    pass
            assert job.current_stage == Stage(name="encode", current=3, total=4)
            assert job.progress == 75
        progress = [(e.stage.name if e.stage else None, e.progress)
                    for e in exporter.events if e.kind == "progress"]
    assert progress == [("download", 0), ("download", 25), ("render", 25), ("render", 50),
                        ("encode", 50), ("encode", 75)]


def test_stage_count_declared_as_int() -> None:
    """stages=3 numbers stages in the order they are entered, out of 3."""
    with memory_tracker() as (tracker, _), tracker.track("t", stages=3) as job:
        with job.stage("fetch"):
            pass
        with job.stage("resize"):
            assert job.current_stage == Stage(name="resize", current=2, total=3)
            assert job.progress == 33


def test_undeclared_stage_name_is_rejected() -> None:
    """With a list of stages, entering an unknown stage raises ValidationError on stage.name."""
    with memory_tracker() as (tracker, _), tracker.track("t", stages=["a", "b"]):
        with pytest.raises(ValidationError) as caught, seenn.stage("c"):
            pass
        assert caught.value.field == "stage.name"


def test_stage_does_not_advance_when_block_raises() -> None:
    """A stage left with an exception leaves progress where it was."""
    with memory_tracker() as (tracker, _), tracker.track("t", stages=2) as job:
        with pytest.raises(RuntimeError), seenn.stage("first"):
            raise RuntimeError("x")
        assert job.progress == 0


def test_explicit_progress_ahead_of_stage_is_kept() -> None:
    """Stages only move progress forward: an explicit value ahead of the stage wins."""
    with memory_tracker() as (tracker, _), tracker.track("t", stages=4) as job:
        with seenn.stage("one"):
            job.set_progress(60)
        assert job.progress == 60


def test_stage_as_decorator_on_sync_and_async_functions() -> None:
    """@seenn.stage(name) runs each call as that stage of the ambient job."""

    @seenn.stage("render")
    def render() -> str | None:
        job = seenn.current_job()
        return job.current_stage.name if job and job.current_stage else None

    @seenn.stage("encode")
    async def encode() -> int:
        job = seenn.current_job()
        assert job is not None
        return job.progress

    with memory_tracker() as (tracker, _), tracker.track("t", stages=["render", "encode"]) as job:
        assert render() == "render"
        assert asyncio.run(encode()) == 50
        # asyncio.run copies the context, so the stage's end reached the same job.
        assert job.progress == 100
    assert render() is None


def test_stage_outside_a_job_does_nothing() -> None:
    """seenn.stage() with no ambient job is a no-op yielding None."""
    with seenn.stage("x") as job:
        assert job is None


def test_iterate_advances_progress_within_the_stage() -> None:
    """iterate() moves progress through the current stage's share as items are consumed."""
    with memory_tracker() as (tracker, exporter):
        with tracker.track("t", stages=["prepare", "render"]), seenn.stage("render"):
            seen = []
            for frame in seenn.iterate(["f1", "f2", "f3", "f4"], message="Rendering frames"):
                job = seenn.current_job()
                assert job is not None
                seen.append((frame, job.progress))
        progress = [e.progress for e in exporter.events if e.kind == "progress"]
    assert seen == [("f1", 50), ("f2", 62), ("f3", 75), ("f4", 87)]
    assert progress == [50, 50, 62, 75, 87, 100]  # the second 50 brings the message
    assert exporter.events[-2].message == "Rendering frames"


def test_iterate_without_stages_spans_to_100_and_uses_total() -> None:
    """Without stages, iterate() runs from the current progress to 100 (total= for generators)."""
    with memory_tracker() as (tracker, _), tracker.track("t") as job:
        job.set_progress(20)
        values = []
        for _ in seenn.iterate((i for i in range(4)), total=4):
            values.append(job.progress)
        assert values == [20, 40, 60, 80]
        assert job.progress == 100


async def test_iterate_async_iterable() -> None:
    """iterate() over an async iterable advances progress the same way."""

    async def numbers() -> object:
        for i in range(2):
            yield i

    with memory_tracker() as (tracker, _):
        async with tracker.track("t") as job:
            got = [item async for item in seenn.iterate(numbers(), total=2)]
            assert got == [0, 1] and job.progress == 100


def test_iterate_outside_a_job_passes_items_through() -> None:
    """iterate() outside a job yields the items untouched."""
    assert list(seenn.iterate([1, 2, 3])) == [1, 2, 3]


def test_with_current_job_carries_the_job_into_threads() -> None:
    """with_current_job() makes the ambient job visible in a thread; a bare thread sees none."""
    seen: dict[str, object] = {}
    with memory_tracker() as (tracker, _), tracker.track("t") as job:
        bare = threading.Thread(target=lambda: seen.update(bare=seenn.current_job()))
        carried = threading.Thread(
            target=seenn.with_current_job(lambda: seen.update(carried=seenn.current_job())))
        for thread in (bare, carried):
            thread.start()
            thread.join()
    assert seen == {"bare": None, "carried": job}


def test_child_jobs_from_executor_threads_are_children() -> None:
    """Jobs started in pool threads through with_current_job() are children of the caller's job."""
    from concurrent.futures import ThreadPoolExecutor

    with memory_tracker() as (tracker, exporter):

        def part(index: int) -> str | None:
            with tracker.track("part") as child:
                return child.parent_id

        with tracker.track("whole") as job, ThreadPoolExecutor(4) as pool:
            parents = list(pool.map(seenn.with_current_job(part), range(8)))
        indexes = sorted(e.child_index for e in exporter.events
                         if e.kind == "started" and e.parent_id)
    assert parents == [job.id] * 8
    assert indexes == list(range(8))


def test_events_carry_the_active_opentelemetry_span() -> None:
    """trace_id/span_id come from the active OpenTelemetry span, and are None without one."""
    tracer = TracerProvider().get_tracer("test")
    with memory_tracker() as (tracker, exporter):
        with tracer.start_as_current_span("request") as span, tracker.track("t"):
            pass
        with tracker.track("t"):
            pass
        events = exporter.events
    context = span.get_span_context()
    assert events[0].trace_id == format(context.trace_id, "032x")
    assert events[0].span_id == format(context.span_id, "016x")
    assert events[-1].trace_id is None and events[-1].span_id is None


def test_job_event_is_frozen_and_serialisable() -> None:
    """JobEvent cannot be changed, and to_dict() gives JSON-ready wire-shaped values."""
    import dataclasses
    import json

    with memory_tracker() as (tracker, exporter), tracker.track("t", stages=["a"]), \
            seenn.stage("a"):
        pass
    event = exporter.events[-1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.progress = 3  # type: ignore[misc]
    assert not hasattr(event, "__dict__")
    data = json.loads(json.dumps(event.to_dict()))
    assert data["stage"] == {"name": "a", "current": 1, "total": 1}
    assert dataclasses.replace(event, progress=5).progress == 5
    assert event == dataclasses.replace(event)


def test_job_events_survive_pickling_and_copying_as_frozen_job_events() -> None:
    """An event pickled or copied comes back equal, a JobEvent, and still frozen."""
    import copy
    import dataclasses
    import pickle

    with memory_tracker() as (tracker, exporter), \
            tracker.track("t", user_id="u", metadata={"k": [1]}) as job:
        job.set_progress(5, message="m")
    for event in exporter.events:
        for again in (pickle.loads(pickle.dumps(event)), copy.copy(event),
                      copy.deepcopy(event)):
            assert type(again) is seenn.JobEvent
            assert again == event
            assert [getattr(again, f.name) for f in dataclasses.fields(again)] == [
                getattr(event, f.name) for f in dataclasses.fields(event)]
            with pytest.raises(dataclasses.FrozenInstanceError):
                again.kind = "failed"  # type: ignore[misc]


def test_leaving_a_block_in_another_context_restores_without_error() -> None:
    """A block entered in one context and left in another (a resumed generator) ends cleanly."""
    import contextvars

    with memory_tracker() as (tracker, exporter):
        job = tracker.track("t")
        contextvars.copy_context().run(job.__enter__)
        other = contextvars.copy_context()
        other.run(job.__exit__, None, None, None)
        assert other.run(seenn.current_job) is None
        assert [e.kind for e in exporter.events] == ["started", "completed"]


def test_stage_decorator_on_a_generator_spans_its_iteration() -> None:
    """@seenn.stage on a generator function holds the stage for the whole iteration."""

    @seenn.stage("render")
    def frames() -> Iterator[int]:
        job = seenn.current_job()
        assert job is not None and job.current_stage is not None
        yield job.current_stage.current
        yield job.progress

    with memory_tracker() as (tracker, _), tracker.track("t", stages=["load", "render"]) as job:
        assert list(frames()) == [2, 50]
        assert job.progress == 100
