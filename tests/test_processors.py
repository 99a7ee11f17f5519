"""Processors and the tracker pipeline: coalescing, order, bounds, deadlines, fork, failures."""

from __future__ import annotations

import contextvars
import logging
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import seenn
from seenn.exporters import BatchProcessor, ConsoleExporter, SimpleProcessor
from seenn.testing import InMemoryExporter, strict_mode
from tests.tracking_helpers import (
    ListExporter,
    RaisingExporter,
    no_job_left_behind,  # noqa: F401 (autouse fixture)
)

WORKER_NAME = "seenn-batch-processor"


@pytest.fixture
def batch() -> Iterator[tuple[seenn.Tracker, BatchProcessor, ListExporter]]:
    """A tracker with one BatchProcessor whose progress interval never elapses in a test."""
    exporter = ListExporter()
    processor = BatchProcessor(exporter, progress_interval=3600)
    tracker = seenn.Tracker(processors=[processor])
    yield tracker, processor, exporter
    tracker.shutdown(timeout=10)


def _by_job(events: list[seenn.JobEvent]) -> dict[str, list[seenn.JobEvent]]:
    jobs: dict[str, list[seenn.JobEvent]] = {}
    for event in events:
        jobs.setdefault(event.job_id, []).append(event)
    return jobs


def test_progress_is_coalesced_per_job_and_terminal_events_kept(
        batch: tuple[seenn.Tracker, BatchProcessor, ListExporter]) -> None:
    """A burst of progress exports started, the first progress and the completion only."""
    tracker, processor, exporter = batch
    with tracker.track("t") as job:
        for value in range(1000):
            job.set_progress(value % 100 + 1)
    assert processor.force_flush(timeout=10)
    kinds = [e.kind for e in exporter.events]
    assert kinds == ["started", "progress", "completed"]
    assert processor.coalesced == 999
    assert processor.exported == 3 and processor.dropped == 0


def test_flush_releases_the_latest_waiting_progress(
        batch: tuple[seenn.Tracker, BatchProcessor, ListExporter]) -> None:
    """force_flush() exports a job's waiting progress event, the latest one."""
    tracker, processor, exporter = batch
    with tracker.track("t") as job:
        job.set_progress(1)
        job.set_progress(2, message="two")
        job.set_progress(3, message="three")
        assert processor.force_flush(timeout=10)
        progress = [(e.progress, e.message) for e in exporter.events if e.kind == "progress"]
        assert progress == [(1, None), (3, "three")]


def test_zero_interval_exports_every_progress_in_order() -> None:
    """With progress_interval=0 every progress event is exported, in sequence order."""
    exporter = ListExporter()
    processor = BatchProcessor(exporter, progress_interval=0)
    tracker = seenn.Tracker(processors=[processor])
    with tracker.track("t") as job:
        for value in range(1, 51):
            job.set_progress(value)
    tracker.shutdown(timeout=10)
    assert [e.sequence for e in exporter.events] == list(range(52))


def test_per_job_order_holds_across_threads(
        batch: tuple[seenn.Tracker, BatchProcessor, ListExporter]) -> None:
    """Jobs updated from many threads each arrive started first, terminal last, sequence rising."""
    tracker, processor, exporter = batch

    def work(index: int) -> None:
        with tracker.track("t") as job:
            for value in range(100):
                job.set_progress(value, message=f"{index}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert processor.force_flush(timeout=10)
    jobs = _by_job(exporter.events)
    assert len(jobs) == 8
    for events in jobs.values():
        assert events[0].kind == "started" and events[-1].kind == "completed"
        sequences = [e.sequence for e in events]
        assert sequences == sorted(sequences)


def test_full_queue_holds_progress_per_job_then_drops_whole_new_jobs(
        caplog: pytest.LogCaptureFixture) -> None:
    """With the exporter stuck, progress waits one per job; past the cap new jobs go whole."""
    exporter = ListExporter(block=True)
    processor = BatchProcessor(exporter, max_queue_size=4, progress_interval=3600,
                               schedule_delay=0)
    tracker = seenn.Tracker(processors=[processor])
    first = tracker.track("t")
    first.__enter__()
    assert exporter.entered.wait(10)  # the worker is now stuck exporting first's start
    first.set_progress(1)  # queued: 1 waiting
    admitted = [tracker.track("t") for _ in range(126)]
    for job in admitted[:3]:
        job.__enter__()  # 4 waiting: the queue is full for progress
    first.set_progress(2)  # waits in first's slot rather than being dropped
    first.set_progress(3)  # and replaces what waits there
    assert (processor.dropped, processor.coalesced) == (0, 1)
    for job in admitted[3:]:
        job.__enter__()  # starts still get in, up to 32 * 4 waiting
    assert processor.queued == 128
    refused = [tracker.track("t") for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="seenn"):
        for job in refused:
            job.__enter__()  # past that, a new job is dropped whole
            job.set_progress(50)
            job.__exit__(None, None, None)
    assert processor.dropped == 9
    lines = [r.getMessage() for r in caplog.records if "dropped job" in r.getMessage()]
    assert len(lines) == 1 and refused[0].id in lines[0]  # one line a minute, not per job
    for job in [*admitted, first]:
        job.__exit__(None, None, None)  # every admitted job's end is queued
    exporter.release.set()
    assert processor.force_flush(timeout=10) is False  # jobs were dropped since the last one
    assert processor.force_flush(timeout=10)
    jobs = _by_job(exporter.events)
    assert not {job.id for job in refused} & set(jobs)
    assert set(jobs) == {first.id, *(job.id for job in admitted)}
    for events in jobs.values():
        assert events[0].kind == "started" and events[-1].kind == "completed"
    assert [e.progress for e in jobs[first.id]] == [0, 1, 100]  # the end carries the rest
    tracker.shutdown(timeout=10)


def test_hanging_exporter_never_blocks_tracked_code_and_deadlines_hold() -> None:
    """A hung exporter: tracking goes on, force_flush() returns False and shutdown() returns."""
    exporter = ListExporter(block=True)
    processor = BatchProcessor(exporter, schedule_delay=0)
    tracker = seenn.Tracker(processors=[processor])
    with tracker.track("first"):
        assert exporter.entered.wait(10)  # the worker is stuck exporting this start
    for _ in range(100):
        with tracker.track("t") as job:
            job.set_progress(50)
    assert processor.queued == 301
    assert processor.force_flush(timeout=0.05) is False
    tracker.shutdown(timeout=0.05)
    assert processor.dropped == 301  # what was still queued at the deadline
    exporter.release.set()


def test_raising_exporter_is_logged_with_job_id_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    """An exporter that raises never reaches user code; the failure is logged with the job id."""
    exporter = RaisingExporter()
    processor = BatchProcessor(exporter)
    tracker = seenn.Tracker(processors=[processor])
    with caplog.at_level(logging.ERROR, logger="seenn"):
        with tracker.track("t") as job:
            job.set_progress(5)
        processor.force_flush(timeout=10)
    assert processor.failed == 3 and processor.exported == 0
    assert any(job.id in r.getMessage() for r in caplog.records if r.name == "seenn")
    tracker.shutdown(timeout=10)


def test_simple_processor_contains_a_raising_exporter(caplog: pytest.LogCaptureFixture) -> None:
    """SimpleProcessor logs and counts a raising exporter instead of raising."""
    processor = SimpleProcessor(RaisingExporter())
    tracker = seenn.Tracker(processors=[processor])
    with caplog.at_level(logging.ERROR, logger="seenn"), tracker.track("t") as job:
        pass
    assert processor.failed == 2
    assert any(job.id in r.getMessage() for r in caplog.records)


def test_strict_mode_reraises_internal_errors() -> None:
    """In strict mode an exporter's exception reaches the caller (inline) or the flush (batched)."""
    simple = seenn.Tracker(processors=[SimpleProcessor(RaisingExporter())])
    batched_processor = BatchProcessor(RaisingExporter())
    batched = seenn.Tracker(processors=[batched_processor])
    with strict_mode():
        with pytest.raises(RuntimeError, match="exploded"), simple.track("t"):
            pass
        with batched.track("t"):
            pass
        with pytest.raises(RuntimeError, match="exploded"):
            batched.force_flush(timeout=10)
    batched.shutdown(timeout=10)


def test_worker_thread_starts_with_the_first_event() -> None:
    """No worker thread exists until the first event arrives."""

    def workers() -> int:
        return sum(thread.name == WORKER_NAME for thread in threading.enumerate())

    before = workers()
    processor = BatchProcessor(ListExporter())
    tracker = seenn.Tracker(processors=[processor])
    assert workers() == before
    with tracker.track("t"):
        pass
    assert workers() == before + 1
    tracker.shutdown(timeout=10)
    assert workers() == before


def test_fork_child_gets_a_fresh_queue_and_worker() -> None:
    """After os.fork() the child starts empty and exports its own jobs; the parent keeps its own."""
    exporter = ListExporter()
    processor = BatchProcessor(exporter, schedule_delay=3600)
    tracker = seenn.Tracker(processors=[processor])
    with tracker.track("parent-job"):
        pass
    assert processor.queued == 2
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a threaded process; forking one is the point.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            if processor.queued == 0:
                with tracker.track("child-job"):
                    pass
                if processor.force_flush(timeout=10) and [
                        e.job_type for e in exporter.events[-2:]] == ["child-job"] * 2 and \
                        all(e.job_type != "parent-job" for e in exporter.events):
                    code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert processor.force_flush(timeout=10)
    assert [e.job_type for e in exporter.events] == ["parent-job", "parent-job"]
    tracker.shutdown(timeout=10)


def _run_script(source: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SEENN_")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True,
                          text=True, timeout=120, env=environment, check=False)


def test_pending_events_are_flushed_at_interpreter_exit() -> None:
    """Events still queued when the program ends are exported by the exit hook."""
    result = _run_script("""
        import seenn
        from seenn.exporters import BatchProcessor, ConsoleExporter
        seenn.configure(processors=[BatchProcessor(ConsoleExporter(format="json"),
                                                   schedule_delay=3600)])
        with seenn.track("exit-job"):
            pass
    """)
    assert result.returncode == 0, result.stderr
    assert '"kind": "completed"' in result.stderr and "exit-job" in result.stderr


def test_exit_is_not_held_up_by_a_hung_exporter() -> None:
    """At exit, a hung exporter delays the program by at most exit_timeout, then it ends."""
    result = _run_script("""
        import threading
        import seenn
        from seenn.exporters import BatchProcessor, ExportResult

        class Hung:
            def export(self, events):
                threading.Event().wait()
                return ExportResult.SUCCESS
            def force_flush(self, timeout=30.0):
                return True
            def shutdown(self, timeout=30.0):
                return None

        seenn.configure(processors=[BatchProcessor(Hung(), exit_timeout=0.2)])
        for _ in range(3):
            with seenn.track("stuck"):
                pass
        print("done")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"


def test_import_starts_no_thread_even_with_an_exporter_configured() -> None:
    """Importing seenn with SEENN_EXPORTER set starts no thread: the worker waits for an event."""
    result = _run_script("""
        import threading
        import seenn
        print(threading.active_count())
    """, SEENN_EXPORTER="console")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_seenn_exporter_console_env_var() -> None:
    """SEENN_EXPORTER=console sends the default tracker's events to stderr with no code change."""
    result = _run_script("""
        import seenn
        with seenn.track("env-job") as job:
            job.set_progress(40, message="Working")
    """, SEENN_EXPORTER="console")
    assert result.returncode == 0, result.stderr
    assert "env-job" in result.stderr and "completed" in result.stderr


def test_env_exporter_names(monkeypatch: pytest.MonkeyPatch,
                            caplog: pytest.LogCaptureFixture) -> None:
    """SEENN_EXPORTER takes a comma list; none means nothing; unknown names warn and are skipped."""
    monkeypatch.setenv("SEENN_EXPORTER", "none")
    assert seenn.Tracker().processors == ()
    monkeypatch.setenv("SEENN_EXPORTER", " Console , none")
    tracker = seenn.Tracker()
    assert len(tracker.processors) == 1
    assert isinstance(tracker.processors[0], BatchProcessor)
    assert isinstance(tracker.processors[0].exporter, ConsoleExporter)
    tracker.shutdown(timeout=5)
    monkeypatch.setenv("SEENN_EXPORTER", "console,carrier-pigeon")
    with caplog.at_level(logging.WARNING, logger="seenn"):
        tracker = seenn.Tracker()
    assert len(tracker.processors) == 1
    assert any("carrier-pigeon" in r.getMessage() and "console" in r.getMessage()
               for r in caplog.records)
    tracker.shutdown(timeout=5)


def test_seenn_disabled_env_var_turns_tracking_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """SEENN_DISABLED=1 makes every job a no-op, even with processors configured."""
    monkeypatch.setenv("SEENN_DISABLED", "1")
    exporter = InMemoryExporter()
    tracker = seenn.Tracker(processors=[SimpleProcessor(exporter)])
    assert tracker.disabled
    with tracker.track("t") as job:
        job.set_progress(5)
    assert exporter.events == [] and job.status == "completed"
    enabled = InMemoryExporter()
    tracker.configure(processors=[SimpleProcessor(enabled)], disabled=False)
    with tracker.track("t"):
        pass
    assert len(enabled.events) == 2


def test_seenn_debug_env_var_logs_events(monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """SEENN_DEBUG=1 logs every event on the seenn logger at DEBUG level."""
    monkeypatch.setenv("SEENN_DEBUG", "1")
    tracker = seenn.Tracker(exporters=[])
    assert tracker.debug
    with caplog.at_level(logging.DEBUG, logger="seenn"), tracker.track("dbg") as job:
        pass
    messages = [r.getMessage() for r in caplog.records if r.name == "seenn"]
    assert any("started" in m and job.id in m for m in messages)
    assert any("completed" in m and job.id in m for m in messages)
    logger = logging.getLogger("seenn")
    for handler in [h for h in logger.handlers if getattr(h, "_seenn_debug", False)]:
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def test_configure_replaces_the_pipeline_and_never_stacks() -> None:
    """configure() twice leaves one processor per exporter and shuts the old ones down."""
    tracker = seenn.Tracker(exporters=[])
    old = InMemoryExporter()
    tracker.configure(exporters=[old])
    tracker.configure(exporters=[InMemoryExporter()])
    assert len(tracker.processors) == 1
    with tracker.track("t"):
        pass
    assert old.events == []
    assert old.export([]) is seenn.exporters.ExportResult.FAILURE  # it was shut down


def test_inline_exporters_skip_the_batch_processor() -> None:
    """configure(exporters=[...]) runs an inline exporter through a SimpleProcessor."""
    tracker = seenn.Tracker(exporters=[InMemoryExporter(), ListExporter()])
    kinds = [type(p) for p in tracker.processors]
    assert kinds == [SimpleProcessor, BatchProcessor]
    tracker.shutdown(timeout=5)


def test_facade_functions_are_bound_to_one_default_tracker() -> None:
    """The facade functions are methods of one default tracker, which configure() keeps."""
    tracker = seenn.track.__self__  # type: ignore[attr-defined]
    assert isinstance(tracker, seenn.Tracker)
    for name in ("job", "stage", "iterate", "current_job", "with_current_job", "configure",
                 "force_flush", "shutdown"):
        assert getattr(seenn, name).__self__ is tracker
    previous = tracker.processors
    exporter = InMemoryExporter()
    seenn.configure(processors=[SimpleProcessor(exporter)])
    try:
        with seenn.track("t"):
            pass
        assert seenn.track.__self__ is tracker  # type: ignore[attr-defined]
        assert len(exporter.events) == 2
        assert seenn.force_flush(timeout=5)
    finally:
        seenn.configure(processors=list(previous))


def test_failure_building_an_event_is_contained(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """An internal error while building an event is logged, not raised (raised in strict mode)."""
    import seenn._instrumentation.lifecycle as tracked_job

    def broken_span() -> object:
        raise RuntimeError("span lookup broke")

    monkeypatch.setattr(tracked_job, "current_context", broken_span)
    exporter = InMemoryExporter()
    tracker = seenn.Tracker(processors=[SimpleProcessor(exporter)])
    with caplog.at_level(logging.ERROR, logger="seenn"), tracker.track("t") as job:
        job.set_progress(5)
    assert job.status == "completed" and exporter.events == []
    assert any("building a job event" in r.getMessage() for r in caplog.records)
    with strict_mode(), pytest.raises(RuntimeError, match="span lookup broke"), \
            tracker.track("t"):
        pass


@settings(max_examples=60, deadline=None)
@given(operations=st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["progress", "end"])),
                           max_size=80),
       interval=st.sampled_from([0.0, 3600.0]), max_queue=st.integers(1, 8))
def test_batch_export_is_an_ordered_subsequence_per_job(
        operations: list[tuple[int, str]], interval: float, max_queue: int) -> None:
    """For any interleaving, each job exports its own events in order, start and end included."""
    inline = InMemoryExporter()
    exporter = ListExporter()
    processor = BatchProcessor(exporter, progress_interval=interval, max_queue_size=max_queue,
                               schedule_delay=3600)
    tracker = seenn.Tracker(processors=[SimpleProcessor(inline), processor])
    open_jobs: dict[int, seenn.TrackedJob] = {}

    def play() -> None:
        for slot, action in operations:
            job = open_jobs.get(slot)
            if job is None:
                job = open_jobs[slot] = tracker.track("t")
                job.__enter__()
            if action == "progress":
                job.set_progress(job.progress % 100 + 1)
            else:
                job.__exit__(None, None, None)
                del open_jobs[slot]
        for job in open_jobs.values():
            job.__exit__(None, None, None)

    # Blocks left out of order leave some job ambient: keep that in a context of its own.
    contextvars.copy_context().run(play)
    # False only to say jobs were dropped since the last flush (a full queue of 1 may
    # drop some, depending on how fast the worker drains it); either way all is out.
    assert processor.force_flush(timeout=10) or processor.dropped > 0
    assert processor.queued == 0
    tracker.shutdown(timeout=10)
    emitted = _by_job(inline.events)
    exported = _by_job(exporter.events)
    assert set(exported) <= set(emitted)
    for job_id, events in exported.items():
        sequences = [e.sequence for e in events]
        assert sequences == sorted(set(sequences))
        assert set(events) <= set(emitted[job_id])
        assert events[0].kind == "started" and events[-1].kind == "completed"
    assert processor.exported + processor.dropped + processor.coalesced == len(inline.events)
    if interval == 0.0 and max_queue >= 8:
        # With no interval, only a full queue loses events: dropped whole jobs, or
        # progress replaced by a newer one while it waited in its job's slot.
        assert exported == emitted or processor.dropped + processor.coalesced > 0


def test_a_held_lock_never_blocks_tracked_code() -> None:
    """While another thread holds the processor lock, on_event returns at once; none is lost."""
    exporter = ListExporter()
    processor = BatchProcessor(exporter, progress_interval=0)
    tracker = seenn.Tracker(processors=[processor])
    done = threading.Event()

    def tracked() -> None:
        with tracker.track("contended") as job:
            for i in range(1, 6):
                job.set_progress(i * 10)
        done.set()

    with processor._lock:  # a holder that is not running (as if waiting for the GIL)
        thread = threading.Thread(target=tracked)
        thread.start()
        assert done.wait(timeout=30)  # finished while the lock was still held
    thread.join()
    assert processor.force_flush(timeout=10)
    kinds = [(e.kind, e.progress) for e in exporter.events]
    assert kinds == [("started", 0), *[("progress", i * 10) for i in range(1, 6)],
                     ("completed", 100)]
    tracker.shutdown(timeout=10)


def test_an_event_deferred_behind_a_non_producer_lock_holder_is_delivered() -> None:
    """An event deferred while a reader holds the lock reaches the exporter without new events."""
    exporter = ListExporter()
    processor = BatchProcessor(exporter, schedule_delay=0.01)
    tracker = seenn.Tracker(processors=[processor])
    with tracker.track("quiet") as job:
        assert processor.force_flush(timeout=10)
        holding, release = threading.Event(), threading.Event()

        def reader() -> None:
            with processor._lock:  # as `queued` or a flush does
                holding.set()
                release.wait(30)

        thread = threading.Thread(target=reader)
        thread.start()
        holding.wait(30)
        job_id = job.id
    release.set()  # the terminal event was deferred: both lock attempts failed
    thread.join()
    delivered = threading.Event()
    for _ in range(200):  # bounded polling: the worker's idle poll takes it
        if any(e.kind == "completed" and e.job_id == job_id for e in exporter.events):
            delivered.set()
            break
        delivered.wait(0.05)
    assert delivered.is_set()
    tracker.shutdown(timeout=10)


def test_rate_limited_log_says_each_kind_once_per_interval_then_counts_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    """One line per kind per interval; the next one says how many were held back."""
    from seenn._core.pipeline import RateLimitedLog

    now = [0.0]
    log = RateLimitedLog(60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="seenn"):
        assert log.warning("full", "queue full for job %s", "job_1")
        assert not log.warning("full", "queue full for job %s", "job_2")
        assert not log.warning("full", "queue full for job %s", "job_3")
        assert log.warning("outbox", "outbox %s broken", "/x")  # another kind: its own line
        now[0] = 61.0
        assert log.warning("full", "queue full for job %s", "job_4")
    assert [r.getMessage() for r in caplog.records] == [
        "queue full for job job_1", "outbox /x broken",
        "queue full for job job_4 (2 more like this since the last such line)"]


class HandOffExporter(ListExporter):
    """A ListExporter that records the hand-offs it is told about."""

    def __init__(self) -> None:
        super().__init__()
        self.hand_offs: list[str] = []

    def on_hand_off(self, job_id: str) -> None:
        self.hand_offs.append(job_id)


@pytest.mark.parametrize("make", [BatchProcessor, SimpleProcessor])
def test_processors_pass_a_hand_off_on_to_their_exporter(make: type) -> None:
    """Leaving a handed-off job's block reaches the exporter's on_hand_off, once, until shutdown."""
    exporter = HandOffExporter()
    processor = make(exporter)
    tracker = seenn.Tracker(processors=[processor])
    with tracker.track("handed") as job:
        job.hand_off()
    with tracker.track("finished"):
        pass
    assert exporter.hand_offs == [job.id]
    tracker.shutdown(timeout=10)
    processor.on_hand_off("job_after_shutdown")
    assert exporter.hand_offs == [job.id]


def _wait_for(predicate: Callable[[], bool]) -> bool:
    """Bounded polling: whether ``predicate`` holds within 30 seconds."""
    waited = threading.Event()
    for _ in range(600):
        if predicate():
            return True
        waited.wait(0.05)
    return predicate()


def test_one_event_wakes_an_idle_worker_without_a_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event alone in the inbox reaches the exporter: handing it over wakes the idle worker.

    The worker's idle poll is made an hour long, so only the wake can deliver it.
    """
    monkeypatch.setattr("seenn.exporters._processors._IDLE_POLL", 3600.0)
    exporter = ListExporter()
    processor = BatchProcessor(exporter, schedule_delay=0.01)
    tracker = seenn.Tracker(processors=[processor])
    with tracker.track("first"):
        pass
    assert processor.force_flush(timeout=10)
    # The worker has exported everything: it goes idle, then waits for a wake (in
    # the wait, it does not hold the lock).
    assert _wait_for(lambda: processor._worker_idle and not processor._lock.locked())
    with tracker.track("second") as job:
        assert _wait_for(lambda: [e.kind for e in exporter.events if e.job_id == job.id]
                         == ["started"])
    assert _wait_for(lambda: [e.kind for e in exporter.events if e.job_id == job.id]
                     == ["started", "completed"])
    tracker.shutdown(timeout=10)


def test_counters_count_events_still_in_the_inbox() -> None:
    """dropped and coalesced include events handed over and not yet queued by anyone."""
    exporter = ListExporter()
    processor = BatchProcessor(exporter, progress_interval=3600, schedule_delay=3600)
    tracker = seenn.Tracker(processors=[processor])
    with tracker.track("t") as job:
        # The worker waits for a batch to fill (an hour), not holding the lock: the
        # counters below can always take the inbox.
        assert _wait_for(lambda: processor._collecting and not processor._lock.locked())
        for value in range(1, 5):
            job.set_progress(value)  # the first is released, the rest wait in one slot
        assert processor.coalesced == 2
    assert processor.coalesced == 3  # the completion replaced the waiting progress
    assert processor.force_flush(timeout=10)
    processor.shutdown(timeout=10)
    assert [e.kind for e in exporter.events] == ["started", "progress", "completed"]
    late = exporter.events[0]
    processor.on_event(late)  # after shutdown: dropped, and counted at once
    assert processor.dropped == 1
    assert not processor.force_flush(timeout=10)


def test_reading_a_counter_under_the_processors_own_warning_never_deadlocks() -> None:
    """A logging handler that reads dropped while the full-queue warning is logged (under
    the processor's lock) gets an answer, and the processor goes on exporting."""
    from seenn.exporters import _processors

    exporter = ListExporter(block=True)
    processor = BatchProcessor(exporter, max_queue_size=1)  # room for 32 started events
    seen: list[int] = []

    class CountingHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(processor.dropped)

    handler = CountingHandler()
    logger = logging.getLogger("seenn")
    logger.addHandler(handler)
    tracker = seenn.Tracker(processors=[processor])

    def produce() -> None:
        for _ in range(40):
            with tracker.track("t"):
                pass

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    producer.join(30)
    exporter.release.set()
    flusher = threading.Thread(target=processor.force_flush, args=(10,), daemon=True)
    flusher.start()
    flusher.join(30)
    logger.removeHandler(handler)
    stuck = producer.is_alive() or flusher.is_alive()
    if stuck:  # a deadlocked processor would hang shutdown, and the exit flush
        _processors._live.discard(processor)
    else:
        tracker.shutdown(timeout=10)
    assert not stuck  # the worker was not stuck on its own lock
    assert seen  # the handler ran, and returned
    assert processor.dropped > 0
    assert {e.kind for e in exporter.events} == {"started", "completed"}
