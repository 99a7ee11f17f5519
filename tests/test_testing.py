"""seenn.testing: InMemoryExporter, capture_jobs(), strict mode and the pytest fixture."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

import seenn
from seenn.exporters import SimpleProcessor
from seenn.testing import InMemoryExporter, capture_jobs, strict_mode
from tests.tracking_helpers import (
    RaisingExporter,
    no_job_left_behind,  # noqa: F401 (autouse fixture)
)


def test_in_memory_exporter_keeps_and_clears_events() -> None:
    """InMemoryExporter keeps events in order, filters them by job, and forgets them on clear()."""
    exporter = InMemoryExporter()
    tracker = seenn.Tracker(processors=[SimpleProcessor(exporter)])
    with tracker.track("a") as first:
        first.set_progress(10)
    with tracker.track("b"):
        pass
    assert exporter.kinds() == ["started", "progress", "completed", "started", "completed"]
    assert exporter.kinds(first.id) == ["started", "progress", "completed"]
    assert [e.job_type for e in exporter.events_for(first.id)] == ["a"] * 3
    exporter.clear()
    assert exporter.events == []


def test_events_property_is_a_copy() -> None:
    """Changing the list returned by .events does not change the exporter."""
    exporter = InMemoryExporter()
    exporter.events.append(None)  # type: ignore[arg-type]
    assert exporter.events == []


def test_capture_jobs_swaps_and_restores_the_default_pipeline() -> None:
    """capture_jobs() captures the default tracker's events and puts the old pipeline back."""
    tracker = seenn.track.__self__  # type: ignore[attr-defined]
    before = tracker.processors
    with capture_jobs() as exporter:
        with seenn.track("captured") as job:
            job.set_progress(50)
        assert exporter.kinds() == ["started", "progress", "completed"]
    assert tracker.processors == before


def test_capture_jobs_on_a_given_tracker() -> None:
    """capture_jobs(tracker) captures that tracker's jobs only."""
    tracker = seenn.Tracker(exporters=[])
    with capture_jobs(tracker) as exporter:
        with tracker.track("mine"):
            pass
        with seenn.track("default"):
            pass
    assert {e.job_type for e in exporter.events} == {"mine"}


def test_capture_jobs_sees_jobs_of_a_disabled_tracker() -> None:
    """capture_jobs() captures even when the tracker is disabled, and leaves it disabled."""
    tracker = seenn.Tracker(exporters=[], disabled=True)
    with capture_jobs(tracker) as exporter, tracker.track("t"):
        pass
    assert exporter.kinds() == ["started", "completed"]
    assert tracker.disabled
    with tracker.track("t"):
        pass
    assert exporter.kinds() == ["started", "completed"]


def test_capture_jobs_is_strict_by_default() -> None:
    """Inside capture_jobs() internal errors are re-raised; strict=False turns that off."""
    tracker = seenn.Tracker(processors=[SimpleProcessor(RaisingExporter())])
    with capture_jobs(seenn.Tracker(exporters=[])), pytest.raises(RuntimeError), \
            tracker.track("t"):
        pass
    with capture_jobs(seenn.Tracker(exporters=[]), strict=False), tracker.track("t"):
        pass


def test_strict_mode_restores_the_previous_setting() -> None:
    """strict_mode() nests and restores what was in force before."""
    tracker = seenn.Tracker(processors=[SimpleProcessor(RaisingExporter())])
    with strict_mode(), strict_mode(False), tracker.track("t"):
        pass
    with tracker.track("t"):
        pass


def test_pytest_plugin_is_registered_through_an_entry_point() -> None:
    """The pytest11 entry point names seenn's plugin module."""
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("seenn") == "seenn.testing.pytest_plugin"


def test_seenn_exporter_fixture_captures_default_tracker_jobs(
        seenn_exporter: InMemoryExporter) -> None:
    """The seenn_exporter fixture captures the jobs of the test, inline."""

    @seenn.job("fixture-job")
    def work() -> int:
        return 3

    assert work() == 3
    assert seenn_exporter.kinds() == ["started", "completed"]
