"""TrackedJob's status through every transition, with and without processors.

The state machine keeps one small int per job and reads the status off it;
these tests pin each transition, in both modes (nothing configured: no events,
no lock; configured: the same statuses, and events that say so).
"""

from __future__ import annotations

from collections import UserString
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from opentelemetry import context
from opentelemetry.trace.propagation import _SPAN_KEY

import seenn
from seenn import ValidationError
from seenn.exporters import SimpleProcessor
from seenn.testing import InMemoryExporter
from tests.tracking_helpers import no_job_left_behind  # noqa: F401 (autouse fixture)


@contextmanager
def tracker_in(mode: str) -> Iterator[tuple[seenn.Tracker, InMemoryExporter]]:
    """A tracker with nothing configured, or with an in-memory exporter."""
    exporter = InMemoryExporter()
    processors = [] if mode == "unconfigured" else [SimpleProcessor(exporter)]
    yield seenn.Tracker(exporters=[], processors=processors), exporter


MODES = ["unconfigured", "configured"]


@pytest.mark.parametrize("mode", MODES)
def test_a_queued_job_completes_when_its_block_ends(mode: str) -> None:
    """A job started with a queue reads queued, then completed at 100 on exit."""
    with tracker_in(mode) as (tracker, exporter):
        job = tracker.track("t", queue={"position": 2})
        assert job.status == "pending"
        with job:
            assert job.status == "queued"
        assert (job.status, job.progress, job.is_done) == ("completed", 100, True)
    if mode == "configured":
        assert [(e.kind, e.status) for e in exporter.events] == [
            ("started", "queued"), ("completed", "completed")]


@pytest.mark.parametrize("mode", MODES)
def test_a_job_made_with_a_queue_is_a_child_of_the_ambient_job_and_entered_once(
        mode: str) -> None:
    """Entering a job made with a queue (not the plain path) adopts the parent as usual."""
    with tracker_in(mode) as (tracker, exporter):
        with tracker.track("parent") as parent:
            job = tracker.track("t", queue={"position": 1})
            with job:
                assert (job.status, seenn.current_job()) == ("queued", job)
                assert (job.parent_id, job.child_index) == (parent.id, 0)
            assert seenn.current_job() is parent
            with pytest.raises(RuntimeError, match="entered only once"), job:
                pass
        assert job.status == "completed"
    if mode == "configured":
        started = next(e for e in exporter.events if e.job_id == job.id)
        assert (started.kind, started.status, started.parent_id) == (
            "started", "queued", parent.id)


@pytest.mark.parametrize("mode", MODES)
def test_progress_without_a_queue_moves_a_queued_job_to_running(mode: str) -> None:
    """set_progress() without a queue, or a stage, takes a queued job out of the queue."""
    with tracker_in(mode) as (tracker, _), \
            tracker.track("t", queue={"position": 1}, stages=["a", "b"]) as job:
        job.set_progress(10)
        assert job.status == "running"
        job.set_progress(20, queue={"position": 1})
        assert job.status == "queued"
        job.set_stage("b")
        assert job.status == "running"
        job.set_progress(30, queue={"position": 1}, message="waiting")
        assert job.status == "queued"


@pytest.mark.parametrize("mode", MODES)
def test_a_queue_given_before_the_block_reads_queued(mode: str) -> None:
    """set_progress(queue=...) before entering marks the job queued; entering keeps it so."""
    with tracker_in(mode) as (tracker, _):
        job = tracker.track("t")
        job.set_progress(5, queue={"position": 3})
        assert (job.status, job.progress) == ("queued", 5)
        with job:
            assert job.status == "queued"
        assert job.status == "completed"


@pytest.mark.parametrize("mode", MODES)
def test_a_failed_job_keeps_its_progress_and_ignores_updates(mode: str) -> None:
    """A failure ends the job at its progress; later updates change nothing."""
    jobs: list[seenn.TrackedJob] = []

    def fail_at_40(tracker: seenn.Tracker) -> None:
        with tracker.track("t") as job:
            jobs.append(job)
            job.set_progress(40)
            raise RuntimeError("boom")

    with tracker_in(mode) as (tracker, _):
        with pytest.raises(RuntimeError, match="boom"):
            fail_at_40(tracker)
        job = jobs[0]
        assert (job.status, job.progress, job.is_done) == ("failed", 40, True)
        job.set_progress(90)
        job.set_stage("late")
        job.complete()
        assert (job.status, job.progress) == ("failed", 40)


@pytest.mark.parametrize("mode", MODES)
def test_a_handed_off_queued_job_stays_running_elsewhere(mode: str) -> None:
    """A handed-off job is not completed by its block, whatever its queue status."""
    with tracker_in(mode) as (tracker, _):
        with tracker.track("t", queue={"position": 1}) as job:
            job.hand_off()
            assert job.status == "queued"
            job.set_progress(50)
            assert (job.status, job.progress) == ("queued", 50)
        assert (job.status, job.is_done) == ("queued", False)
        job.complete()
        assert (job.status, job.progress) == ("completed", 100)


def test_a_handed_off_job_reports_an_unchanged_progress_once() -> None:
    """Repeating the same percentage on a handed-off job emits no second event."""
    with tracker_in("configured") as (tracker, exporter), tracker.track("t") as job:
        job.hand_off()
        job.set_progress(30)
        job.set_progress(30)
    assert [e.progress for e in exporter.events if e.kind == "progress"] == [30]


def test_entering_twice_is_refused_in_every_state() -> None:
    """A job can be entered once: running, ended or queued-before-entry alike."""
    with tracker_in("unconfigured") as (tracker, _):
        job = tracker.track("t")
        job.set_progress(1, queue={"position": 1})
        with job, pytest.raises(RuntimeError, match="entered only once"), job:
            pass
        with pytest.raises(RuntimeError, match="entered only once"), job:
            pass


def test_unknown_options_are_type_errors_naming_the_call() -> None:
    """track() and set_progress() refuse an unknown keyword like a plain signature does."""
    with tracker_in("unconfigured") as (tracker, _):
        with pytest.raises(TypeError, match=r"track\(\) got an unexpected keyword.*'colour'"):
            tracker.track("t", colour="red")  # type: ignore[call-overload]
        with tracker.track("t") as job:
            with pytest.raises(TypeError, match=r"set_progress\(\).*'colour'"):
                job.set_progress(5, colour="red")  # type: ignore[call-overload]
            assert job.progress == 0


@pytest.mark.parametrize("job_type", [["a", "list"], {"a": "dict"}, "", "x" * 101, 7,
                                      "nul\x00"])
def test_a_bad_job_type_is_a_validation_error_even_after_good_ones(job_type: object) -> None:
    """The cache of checked job types never lets a bad (or unhashable) type through."""
    with tracker_in("unconfigured") as (tracker, _):
        with tracker.track("fine"):
            pass
        with pytest.raises(ValidationError, match="job_type"):
            tracker.track(job_type)  # type: ignore[arg-type]


@pytest.mark.parametrize("user_id", ["", "u" * 256, 42, "nul\x00"])
def test_a_bad_user_id_is_refused_for_a_known_job_type(user_id: object) -> None:
    """The fast path for a known job type still checks the user id."""
    with tracker_in("unconfigured") as (tracker, _):
        with tracker.track("known", user_id="ok"):
            pass
        with pytest.raises(ValidationError, match="user_id"):
            tracker.track("known", user_id=user_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(("job_type", "user_id", "field"), [
    ("nul\x00type", None, "job_type"), ("new-type", "nul\x00user", "user_id")])
def test_nul_is_refused_in_a_new_job_type_or_user_id(job_type: str, user_id: str | None,
                                                     field: str) -> None:
    """NUL (which no backend stores) is refused on first sight, as check_text refuses it."""
    with tracker_in("unconfigured") as (tracker, _), \
            pytest.raises(ValidationError, match=field):
        tracker.track(job_type, user_id=user_id)


def test_a_user_id_equal_to_a_checked_one_but_no_str_is_refused() -> None:
    """The cache of checked user ids compares types too: a UserString is still refused."""
    with tracker_in("unconfigured") as (tracker, _):
        with tracker.track("known", user_id="ok"):
            pass
        with pytest.raises(ValidationError, match="user_id"):
            tracker.track("known", user_id=UserString("ok"))  # type: ignore[arg-type]


@pytest.mark.parametrize("user_id", ["", "u" * 256, 42, "bad \udc80", "nul\x00"])
def test_a_bad_user_id_is_refused_after_good_ones_were_remembered(user_id: object) -> None:
    """Remembered user ids never let another, bad one through the fast path."""
    with tracker_in("unconfigured") as (tracker, _):
        for good in ("ok", "u" * 255, "caf\u00e9"):
            for _ in range(2):  # the second time, from the cache
                with tracker.track("known", user_id=good) as job:
                    pass
                assert job.user_id == good
        with pytest.raises(ValidationError, match="user_id"):
            tracker.track("known", user_id=user_id)  # type: ignore[arg-type]


def test_the_cache_of_checked_user_ids_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the cache is full, new user ids are checked every time but no longer remembered."""
    from seenn._instrumentation import tracker as tracker_module

    cache: dict[str, None] = {}
    monkeypatch.setattr(tracker_module, "_checked_users", cache)
    monkeypatch.setattr(tracker_module, "_MAX_CHECKED_USERS", 3)
    with tracker_in("unconfigured") as (tracker, _):
        with tracker.track("known"):  # the job type is known: later calls take the fast path
            pass
        for index in range(10):
            with tracker.track("known", user_id=f"user-{index}") as job:
                pass
            assert job.status == "completed"
        assert list(cache) == ["user-0", "user-1", "user-2"]
        with pytest.raises(ValidationError, match="user_id"):
            tracker.track("known", user_id="u" * 256)
    assert len(cache) == 3


def test_what_a_job_was_given_before_it_started_is_in_each_of_its_events() -> None:
    """Title, message, metadata, result and parent set before the block reach every event."""
    with tracker_in("configured") as (tracker, exporter), tracker.track("parent") as parent:
        child = tracker.track("child", title="T", metadata={"a": 1})
        child.set_progress(5, message="m")
        child.set_result({"type": "x"})
        with child:
            child.set_progress(6)
    events = [e for e in exporter.events if e.job_type == "child"]
    assert [(e.kind, e.title, e.message, e.metadata, e.parent_id, e.child_index)
            for e in events] == [(kind, "T", "m", {"a": 1}, parent.id, 0)
                                 for kind in ("started", "progress", "completed")]
    assert [e.result.type if e.result else None for e in events] == [None, None, "x"]


def test_only_the_terminal_event_carries_result_error_and_retryable() -> None:
    """Started and progress events carry no result, error or retryable, even once they are set."""
    with tracker_in("configured") as (tracker, exporter):
        with tracker.track("done") as job:
            job.set_result({"type": "x"})
            job.set_progress(50)
        broken = tracker.track("broken", retryable=True)

        def fail_inside() -> None:
            with broken:
                broken.set_progress(50)
                raise KeyError("k")

        with pytest.raises(KeyError):
            fail_inside()
    assert [(e.job_type, e.kind, e.result.type if e.result else None,
             e.error.code if e.error else None, e.retryable) for e in exporter.events] == [
        ("done", "started", None, None, None), ("done", "progress", None, None, None),
        ("done", "completed", "x", None, None),
        ("broken", "started", None, None, None), ("broken", "progress", None, None, None),
        ("broken", "failed", None, "KeyError", True)]


def test_an_option_given_as_none_is_no_option() -> None:
    """set_progress(p, message=None) repeating the progress emits nothing, like set_progress(p)."""
    with tracker_in("configured") as (tracker, exporter), tracker.track("t") as job:
        job.set_progress(10)
        job.set_progress(10, message=None, stage=None, queue=None, metadata=None)
    assert [e.kind for e in exporter.events] == ["started", "progress", "completed"]


def test_an_unknown_option_is_refused_before_the_progress_is_checked() -> None:
    """A misspelt keyword is a TypeError even when the percentage is out of range too."""
    with tracker_in("unconfigured") as (tracker, _), tracker.track("t") as job, \
            pytest.raises(TypeError, match="colour"):
        job.set_progress(150, colour="red")  # type: ignore[call-overload]


def test_a_value_under_the_span_key_that_is_no_span_means_no_span() -> None:
    """Whatever sits under OpenTelemetry's span key, if it is no Span the events carry no ids."""
    token = context.attach(context.set_value(_SPAN_KEY, "not-a-span"))
    try:
        with tracker_in("configured") as (tracker, exporter), tracker.track("t") as job:
            job.set_progress(5)
    finally:
        context.detach(token)
    assert [(e.kind, e.trace_id, e.span_id) for e in exporter.events] == [
        ("started", None, None), ("progress", None, None), ("completed", None, None)]


def test_a_job_type_equal_to_a_checked_one_but_no_str_is_refused() -> None:
    """The cache of checked job types compares types too: a UserString is still refused."""
    with tracker_in("unconfigured") as (tracker, _):
        with tracker.track("video"):
            pass
        with pytest.raises(ValidationError, match="job_type"):
            tracker.track(UserString("video"))  # type: ignore[call-overload]


def test_a_str_subclass_job_type_is_accepted_and_not_cached() -> None:
    """A str subclass (even an unhashable one) is checked as text every time and accepted."""
    class Unhashable(str):
        __hash__ = None  # type: ignore[assignment]

    with tracker_in("unconfigured") as (tracker, _):
        for _ in range(2):
            with tracker.track(Unhashable("video")) as job:
                pass
            assert job.status == "completed"


@pytest.mark.parametrize("mode", MODES)
def test_an_update_that_read_queued_never_undoes_a_failure(mode: str) -> None:
    """Leaving the queue re-checks the state under the job's guard: a fail() in between wins."""
    with tracker_in(mode) as (tracker, _):
        with tracker.track("t", queue={"position": 1}) as job:
            # What a second thread's set_progress() does after it read QUEUED,
            # had fail() landed in between.
            job.fail(error="boom")
            job._leave_queue()
            assert (job.status, job.is_done) == ("failed", True)
        assert job.status == "failed"


@pytest.mark.parametrize("mode", MODES)
def test_a_handed_off_job_stays_handed_off_after_a_late_update(mode: str) -> None:
    """A queue update racing with hand_off() leaves the job handed off, not running here."""
    with tracker_in(mode) as (tracker, _), tracker.track("t", queue={"position": 1}) as job:
        job.hand_off()
        job._leave_queue()
        job.set_progress(40, queue={"position": 1})
    assert (job.status, job.is_done) == ("queued", False)
