"""ETA end to end against ``seenn serve``: its history reaches the process, and both agree."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

import seenn
import seenn.server
from seenn._cli.jobs import watch
from seenn._core.eta import History
from seenn._core.eta_live import describe, prior
from seenn._instrumentation import lifecycle
from seenn.exporters import HTTPExporter, SimpleProcessor
from seenn.server import RunningServer
from tests.tracking_helpers import no_job_left_behind  # noqa: F401 (autouse fixture)

START = 1_800_000_000.0


class Clock:
    """One hand-moved wall clock for the tracked process and the backend."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds (bounded); fail the test if it never does."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        pause.wait(0.005)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Job events, ``eta`` and the backend all read this clock."""
    shared = Clock()
    monkeypatch.setattr(lifecycle, "_time", shared)
    return shared


@pytest.fixture
def backend(tmp_path: Path, clock: Clock) -> Iterator[RunningServer]:
    """``seenn serve`` on the shared clock."""
    with seenn.server.running(tmp_path / "eta.db", clock=clock) as srv:
        yield srv


class Pipeline:
    """A tracker whose every change reaches the backend at the moment (of the clock) made."""

    def __init__(self, backend: RunningServer, clock: Clock) -> None:
        self.clock = clock
        self.exporter = HTTPExporter(api_key=backend.api_key, base_url=backend.url,
                                     progress_interval=0, heartbeat_interval=None)
        self.tracker = seenn.Tracker(processors=[SimpleProcessor(self.exporter)])

    def flush(self) -> None:
        assert self.exporter.force_flush(timeout=10)

    def step(self, job: seenn.TrackedJob, seconds: float, progress: int) -> None:
        self.clock.now += seconds
        job.set_progress(progress)
        self.flush()

    def completed_job(self, duration: float) -> None:
        """A job of ``render`` that moves 10 % a tenth of ``duration`` at a time."""
        with self.tracker.track("render", user_id="u") as job:
            job.set_progress(0, message="go")  # the backend counts from its first progress
            self.flush()
            for progress in range(10, 100, 10):
                self.step(job, duration / 10, progress)
            self.clock.now += duration / 10
        self.flush()


def test_job_eta_and_seenn_serve_agree_on_the_same_job(backend: RunningServer,
                                                       clock: Clock) -> None:
    """The prior is the backend's History, and job.eta is the backend's estimate."""
    pipeline = Pipeline(backend, clock)
    for duration in (90.0, 95.0, 100.0, 105.0, 110.0, 120.0):
        pipeline.completed_job(duration)
    assert prior("render") is None  # asked at the first start: nothing had completed
    offset = 301.0  # the interval has passed: the next start asks again
    pipeline.exporter._clock = lambda: time.monotonic() + offset
    out: list[str] = []
    lines = _Lines(out)
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
        with pipeline.tracker.track("render", user_id="u") as job:
            job.set_progress(0, message="go")
            pipeline.flush()
            wait_until(lambda: prior("render") is not None)
            stats = client.eta.get_stats("render")
            assert stats is not None
            answer = stats.to_dict()
            assert prior("render") == History.from_wire(answer["history"], answer["stages"])

            pipeline.step(job, 20.0, 30)  # faster than history: the estimate only drops
            eta = job.eta
            stored = client.jobs.get(job.id)
            assert eta is not None and stored.estimated_completion_at is not None
            assert eta.based_on == 6 == stored.eta_based_on
            assert eta.confidence == stored.eta_confidence
            backend_left = stored.estimated_completion_at.timestamp() - clock.now
            assert eta.remaining == pytest.approx(backend_left, abs=0.002)

            thread = threading.Thread(target=watch, args=(client, job.id), kwargs={
                "interval": 0.01, "out": lines, "tty": False,
                "now": lambda: datetime.fromtimestamp(clock.now, tz=timezone.utc)})
            thread.start()
            lines.wait_for(describe(backend_left))
        pipeline.flush()
        thread.join(timeout=30)
    assert f" 30%  running  go  {describe(backend_left)}\n" in "".join(out)
    assert "".join(out).endswith("completed\n")
    pipeline.tracker.shutdown(timeout=5)


class _Lines:
    """A text output a test can wait on."""

    def __init__(self, out: list[str]) -> None:
        self._out = out
        self._changed = threading.Condition()

    def write(self, text: str) -> int:
        with self._changed:
            self._out.append(text)
            self._changed.notify_all()
        return len(text)

    def flush(self) -> None:
        return None

    def wait_for(self, text: str) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: text in "".join(self._out), timeout=30), text
