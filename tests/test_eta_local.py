"""How long? ``TrackedJob.eta``, the process-wide prior cache, and the console's time left."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import pytest

import seenn
from seenn._core import eta as core
from seenn._core.eta_live import (
    MAX_PRIORS,
    Run,
    describe,
    format_duration,
    history_from_stats,
    prior,
    prior_age,
    reached_times,
    set_prior,
)
from seenn._instrumentation import lifecycle
from seenn.exporters import ConsoleExporter, SimpleProcessor
from seenn.propagation import resume
from seenn.testing import InMemoryExporter
from tests.tracking_helpers import no_job_left_behind  # noqa: F401 (autouse fixture)

START = 1_700_000_000.0


class Wall:
    """The clock of job events and ``eta`` (``time.time`` in seenn), moved by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def at(self, seconds: float) -> None:
        """Move to ``seconds`` after ``START``."""
        self.now = START + seconds


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> Wall:
    """Job events and ``eta`` read this clock."""
    clock = Wall()
    monkeypatch.setattr(lifecycle, "_time", clock)
    return clock


@pytest.fixture
def tracker() -> Iterator[seenn.Tracker]:
    """A tracker with a processor: its jobs record their pace."""
    tracker = seenn.Tracker(processors=[SimpleProcessor(InMemoryExporter())])
    yield tracker
    tracker.shutdown(timeout=5)


def steady_history(durations: list[float]) -> core.History:
    """The history of past jobs that moved at a steady pace, one per duration."""
    samples = [core.Sample(d, core.curve_of([i / 50 * d for i in range(core.CURVE_POINTS)], d))
               for d in durations]
    return core.history_of(samples)


HISTORY = steady_history([90.0, 95.0, 100.0, 100.0, 105.0, 110.0, 120.0])


# -- TrackedJob.eta ------------------------------------------------------------------------


def test_eta_is_none_before_any_progress_without_history(wall: Wall,
                                                          tracker: seenn.Tracker) -> None:
    """Without history there is nothing to go on until MIN_PROGRESS is done."""
    with tracker.track("render") as job:
        assert job.eta is None
        wall.at(20)
        job.set_progress(4)
        assert job.eta is None


def test_eta_follows_the_jobs_own_pace_after_min_progress(wall: Wall,
                                                          tracker: seenn.Tracker) -> None:
    """10 % in 30 s says 270 s are left; a quiet stretch then counts down."""
    with tracker.track("render") as job:
        wall.at(30)
        job.set_progress(10)
        eta = job.eta
        assert eta is not None
        assert eta.remaining == pytest.approx(270.0)
        assert (eta.based_on, eta.overdue) == (0, False)
        wall.at(40)
        job.set_progress(10, message="still rendering")  # no progress: the pace stands
        assert job.eta is not None and job.eta.remaining == pytest.approx(260.0)


def test_eta_equals_the_estimator_on_the_same_inputs(wall: Wall,
                                                     tracker: seenn.Tracker) -> None:
    """job.eta is seenn._core.eta.estimate() on the job's times, progress and prior."""
    set_prior("render", HISTORY)
    with tracker.track("render") as job:
        for seconds, progress in ((5, 3), (12, 10), (20, 11), (41, 37), (60, 58)):
            wall.at(seconds)
            job.set_progress(progress)
        wall.at(75)
        job.set_progress(58, message="encoding")  # a change that is not progress
        wall.at(80)
        # Points reached: 0 at start; 2 at 5 s; 4-10 at 12 s; 12-36 at 41 s; 38-58 at 60 s.
        reached = {0: 0.0, 1: 5.0}
        reached.update(dict.fromkeys(range(2, 6), 12.0))
        reached.update(dict.fromkeys(range(6, 19), 41.0))
        reached.update(dict.fromkeys(range(19, 30), 60.0))
        expected = core.estimate(80.0, 0.58, reached_at=60.0, history=HISTORY,
                                 reached_times=reached)
        assert expected is not None and expected.based_on == 7
        assert job.eta == expected


def test_a_prior_from_the_cache_gives_an_estimate_from_the_start(
        wall: Wall, tracker: seenn.Tracker) -> None:
    """With history for the job type, eta exists at 0 % and moves as history says."""
    with tracker.track("render") as job:
        wall.at(10)
        assert job.eta is None
        set_prior("render", HISTORY)
        eta = job.eta
        assert eta is not None and eta.based_on == 7
        assert eta.remaining == pytest.approx(HISTORY.total.p50 - 10)
        wall.at(30)
        job.set_progress(50)  # twice history's pace: the estimate drops
        fast = job.eta
        assert fast is not None and fast.remaining < HISTORY.total.p50 - 30
        set_prior("render", None)
        own = job.eta
        assert own is not None and own.remaining == pytest.approx(30.0)
        assert own.based_on == 0


def test_stages_and_iterate_feed_eta(wall: Wall, tracker: seenn.Tracker) -> None:
    """Progress set by stage() and iterate() is what eta reads, point by point."""
    with tracker.track("batch", stages=["load", "work"]) as job:
        with seenn.stage("load"):
            wall.at(10)
        assert job.progress == 50
        with seenn.stage("work"):
            for _item in seenn.iterate(range(10)):
                wall.now += 1  # an item takes a second: 5 % a second
        assert job.progress == 100
    # A fresh job paused mid-iteration, to read eta while it runs.
    wall.at(100)
    with tracker.track("batch", stages=["load", "work"]) as job:
        with seenn.stage("load"):
            wall.at(110)
        with seenn.stage("work"):
            items = seenn.iterate(range(10))
            for _ in range(5):
                next(items)
                wall.now += 1
            next(items)  # the fifth item is done: 75 %
            wall.now += 0.5
            reached = reached_times(START + 100, 0, [50, START + 110, 55, START + 111,
                                                     60, START + 112, 65, START + 113,
                                                     70, START + 114, 75, START + 115])
            expected = core.estimate(15.5, 0.75, reached_at=15.0, reached_times=reached)
            assert job.eta == expected
            assert expected is not None and expected.remaining == pytest.approx(4.5)
            for _ in items:
                pass


def test_eta_is_none_for_a_job_with_nothing_configured(wall: Wall) -> None:
    """A job with no processors records nothing (to stay free): its eta is None."""
    tracker = seenn.Tracker(exporters=[])
    set_prior("render", HISTORY)
    with tracker.track("render") as job:
        wall.at(30)
        job.set_progress(50)
        assert job.eta is None


def test_eta_is_none_while_queued_and_once_ended(wall: Wall, tracker: seenn.Tracker) -> None:
    """A queued job has no countdown; its pace counts from when it runs; an ended job has none."""
    set_prior("render", HISTORY)
    with tracker.track("render", queue={"position": 3}) as job:
        wall.at(50)
        assert job.status == "queued" and job.eta is None
        job.set_progress(0)  # out of the queue: running from now
        wall.at(60)
        eta = job.eta
        assert eta is not None and eta.remaining == pytest.approx(HISTORY.total.p50 - 10)
    assert job.status == "completed" and job.eta is None


def test_a_resumed_job_is_judged_by_its_pace_since_it_resumed(wall: Wall) -> None:
    """Resumed at 40 %, 70 % after 30 s here is half of what was left: 30 s to go."""
    sender = seenn.Tracker(processors=[SimpleProcessor(InMemoryExporter())])
    worker = seenn.Tracker(processors=[SimpleProcessor(InMemoryExporter())])
    set_prior("render", HISTORY)  # cannot place a job that ran elsewhere: not used
    with sender.track("render") as job:
        job.set_progress(40)
        carrier = job.hand_off()
    wall.at(1000)
    with resume(carrier, tracker=worker) as resumed:
        assert resumed is not None
        wall.at(1030)
        resumed.set_progress(70)
        eta = resumed.eta
        assert eta is not None and eta.remaining == pytest.approx(30.0)
        assert eta.based_on == 0
    sender.shutdown(timeout=5)
    worker.shutdown(timeout=5)


def test_eta_is_public_as_seenn_eta(wall: Wall, tracker: seenn.Tracker) -> None:
    """job.eta is a seenn.Eta: remaining, confidence, based_on, overdue."""
    with tracker.track("render") as job:
        wall.at(10)
        job.set_progress(50)
        eta = job.eta
    assert isinstance(eta, seenn.Eta)
    assert (eta.remaining, eta.based_on, eta.overdue) == (pytest.approx(10.0), 0, False)
    assert 0 <= eta.confidence <= 1


# -- the prior cache -----------------------------------------------------------------------


def test_the_prior_cache_is_bounded_and_knows_each_entrys_age() -> None:
    """Past MAX_PRIORS keys the first stored goes; None forgets a key; ages are measured."""
    for index in range(MAX_PRIORS + 1):
        set_prior(f"type-{index}", HISTORY)
    assert prior("type-0") is None
    assert prior("type-1") is HISTORY and prior(f"type-{MAX_PRIORS}") is HISTORY
    age = prior_age("type-1")
    assert age is not None and age >= 0
    set_prior("type-1", None)
    assert prior("type-1") is None and prior_age("type-1") is None


def test_the_prior_cache_takes_writes_from_many_threads() -> None:
    """Threads storing and forgetting keys at once leave a consistent, bounded cache."""
    start = threading.Barrier(4)

    def write(offset: int) -> None:
        start.wait()
        for index in range(MAX_PRIORS):
            set_prior(f"k{(offset + index) % (MAX_PRIORS + 100)}", HISTORY)
            if index % 3 == 0:
                set_prior(f"k{index}", None)

    threads = [threading.Thread(target=write, args=(n * 300,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    from seenn._core import eta_live

    assert 0 < len(eta_live._priors) <= MAX_PRIORS
    assert all(prior(key) is HISTORY for key in list(eta_live._priors))


def test_a_prior_from_statistics_alone_is_used_like_history() -> None:
    """Count, median and p95 alone make a usable prior with a steady pace."""
    history = history_from_stats(core.DurationStats(12, 100.0, 160.0))
    assert history.usable
    at_start = core.estimate(10.0, 0.0, history=history)
    assert at_start is not None and at_start.remaining == pytest.approx(90.0)
    assert at_start.based_on == 12
    late = core.estimate(80.0, 0.8, history=history)  # own pace: 100 s, as history says
    assert late is not None and late.remaining == pytest.approx(20.0, rel=0.05)
    assert not history_from_stats(core.DurationStats(3, 100.0, 160.0)).usable


# -- wording -------------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (0.2, "1 s"), (8.4, "8 s"), (12, "10 s"), (44, "45 s"), (80, "1 min 20 s"),
    (118, "2 min"), (599, "10 min"), (1790, "30 min"), (3580, "1 h"), (5400, "1 h 30 min"),
    (8130, "2 h 15 min"), (90_000, "25 h"),
])
def test_durations_read_as_people_say_them(seconds: float, text: str) -> None:
    """Seconds, then minutes and seconds, minutes, hours: the finer unit goes as it grows."""
    assert format_duration(seconds) == text


def test_an_overdue_estimate_reads_taking_longer_than_usual() -> None:
    """describe() says the time left, or that the job is taking longer than usual."""
    assert describe(80) == "~1 min 20 s left"
    assert describe(80, overdue=True) == "taking longer than usual"


# -- the console ---------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    """A StringIO that says it is a TTY."""

    def isatty(self) -> bool:
        return True


def console_tracker(stream: io.StringIO) -> seenn.Tracker:
    return seenn.Tracker(processors=[SimpleProcessor(ConsoleExporter(stream))])


def test_console_progress_lines_say_how_long_is_left(wall: Wall) -> None:
    """A progress line ends with the time left, estimated from the events' times."""
    stream = io.StringIO()
    tracker = console_tracker(stream)
    with tracker.track("video", stages=["script", "render", "encode"]):
        with seenn.stage("script"):
            wall.at(33)  # 1 % a second: 100 s in all
        with seenn.stage("render"):
            wall.at(42)
            seenn.current_job().set_progress(42, message="Frames")  # type: ignore[union-attr]
            wall.at(56)
    lines = stream.getvalue().splitlines()
    assert lines[2].endswith(" 33% script (1/3), ~1 min 10 s left")  # 67 s
    assert lines[3].endswith(" 33% render (2/3), ~1 min 10 s left")
    assert lines[4].endswith(" 42% render (2/3) Frames, ~1 min left")  # 58 s
    assert lines[5].endswith(" 66% render (2/3) Frames, ~30 s left")  # 56 s for 66 %: 28.8 s
    expected = Run(START, 0)
    expected.advance(33, START + 33)
    expected.advance(42, START + 42)
    found = expected.estimate(START + 42)
    assert found is not None and describe(found.remaining) == "~1 min left"
    tracker.shutdown(timeout=5)


def test_console_says_taking_longer_than_usual_past_history(wall: Wall) -> None:
    """Past history's 95th percentile the line says so instead of a countdown."""
    set_prior("video", HISTORY)
    stream = io.StringIO()
    tracker = console_tracker(stream)
    with tracker.track("video") as job:
        wall.at(60)
        job.set_progress(30)
        wall.at(200)
        job.set_progress(70)
    lines = stream.getvalue().splitlines()
    run = Run(START, 0)
    run.advance(30, START + 60)
    found = run.estimate(START + 60, HISTORY)
    assert found is not None and not found.overdue
    assert lines[1].endswith(f" 30%, {describe(found.remaining)}")
    assert lines[2].endswith(" 70%, taking longer than usual")
    tracker.shutdown(timeout=5)


def test_console_countdown_moves_up_gently(wall: Wall) -> None:
    """A slower pace makes the time left rise by a tenth at most per line."""
    stream = io.StringIO()
    tracker = console_tracker(stream)
    with tracker.track("video") as job:
        wall.at(10)
        job.set_progress(10)  # 90 s left
        wall.at(20)
        job.set_progress(11)  # its own pace says 162 s; shown: 80 + 8
    lines = stream.getvalue().splitlines()
    assert lines[1].endswith(" 10%, ~1 min 30 s left")
    assert lines[2].endswith(" 11%, ~1 min 30 s left"), lines[2]
    tracker.shutdown(timeout=5)


def test_console_says_nothing_of_time_for_a_job_of_a_few_seconds(wall: Wall) -> None:
    """A job expected to take under a few seconds gets no countdown (nor an overdue)."""
    stream = io.StringIO()
    tracker = console_tracker(stream)
    with tracker.track("thumb") as job:
        wall.at(1)
        job.set_progress(50, message="Half")
        wall.at(2.5)
        job.set_progress(50, message="Still half")  # overdue by its own pace, but short
    lines = stream.getvalue().splitlines()
    assert lines[1].endswith(" 50% Half")
    assert lines[2].endswith(" 50% Still half")
    tracker.shutdown(timeout=5)


def test_console_live_bar_says_how_long_is_left(wall: Wall) -> None:
    """On a terminal the redrawn bar carries the time left too."""
    set_prior("video", HISTORY)
    terminal = FakeTerminal()
    tracker = console_tracker(terminal)
    with tracker.track("video") as job:
        wall.at(10)
        job.set_progress(10, message="Rendering")
    found = Run(START, 0)
    found.advance(10, START + 10)
    estimate = found.estimate(START + 10, HISTORY)
    assert estimate is not None
    assert (f"[##----------------------]  10% Rendering, {describe(estimate.remaining)}"
            in terminal.getvalue())
    tracker.shutdown(timeout=5)


def test_console_json_lines_are_unchanged(wall: Wall) -> None:
    """format='json' writes the events as they are: no estimate is added."""
    stream = io.StringIO()
    tracker = seenn.Tracker(processors=[SimpleProcessor(ConsoleExporter(stream,
                                                                        format="json"))])
    with tracker.track("video") as job:
        wall.at(30)
        job.set_progress(50)
    assert "left" not in stream.getvalue()
    tracker.shutdown(timeout=5)
