"""Helpers shared by the instrumentation tests (kept out of conftest.py on purpose)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

import seenn
from seenn.exporters import ExportResult, SimpleProcessor
from seenn.testing import InMemoryExporter


@pytest.fixture(autouse=True)
def no_job_left_behind() -> Iterator[None]:
    """Fail a test that leaves a job ambient (import it into a test module to use it)."""
    assert seenn.current_job() is None, "a previous test left a job ambient"
    yield
    assert seenn.current_job() is None, "the test left a job ambient"


@contextmanager
def memory_tracker() -> Iterator[tuple[seenn.Tracker, InMemoryExporter]]:
    """A private tracker whose events land, inline, in an InMemoryExporter."""
    exporter = InMemoryExporter()
    tracker = seenn.Tracker(processors=[SimpleProcessor(exporter)])
    try:
        yield tracker, exporter
    finally:
        tracker.shutdown(timeout=5)


class ListExporter:
    """An exporter that records each batch, optionally blocking until released."""

    def __init__(self, *, block: bool = False) -> None:
        self.batches: list[list[seenn.JobEvent]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        if not block:
            self.release.set()
        self.lock = threading.Lock()

    @property
    def events(self) -> list[seenn.JobEvent]:
        with self.lock:
            return [event for batch in self.batches for event in batch]

    def export(self, events: Sequence[seenn.JobEvent]) -> ExportResult:
        self.entered.set()
        self.release.wait(30)
        with self.lock:
            self.batches.append(list(events))
        return ExportResult.SUCCESS

    def force_flush(self, timeout: float = 30.0) -> bool:
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        self.release.set()


class RaisingExporter:
    """An exporter whose export always raises."""

    def __init__(self) -> None:
        self.calls = 0

    def export(self, events: Sequence[seenn.JobEvent]) -> ExportResult:
        self.calls += 1
        raise RuntimeError("exporter exploded")

    def force_flush(self, timeout: float = 30.0) -> bool:
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        return None


# Module-level decorated functions: picklable by reference, for process pools.

@seenn.job("pickled-double")
def double(value: int) -> int:
    """Double ``value`` inside a job."""
    job = seenn.current_job()
    assert job is not None
    job.set_progress(50)
    return value * 2


class Renderer:
    """A class with decorated methods, for pickling bound methods."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    @seenn.job("render")
    def render(self, value: int) -> int:
        return value * self.factor
