"""``InMemoryExporter``, ``capture_jobs()`` and ``strict_mode()``."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from seenn._core.pipeline import ExportResult, set_strict
from seenn._instrumentation.tracker import Tracker, default_tracker
from seenn.exporters._simple import SimpleProcessor

if TYPE_CHECKING:
    from seenn._core.events import JobEvent

__all__ = ["InMemoryExporter", "capture_jobs", "strict_mode"]


class InMemoryExporter:
    """Keeps the events it is given, in order, for tests to inspect.

    Thread-safe. ``inline = True``: ``seenn.configure(exporters=[...])`` runs it
    without a batch processor, so events are visible as soon as they happen.
    """

    inline = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[JobEvent] = []
        self._shutdown = False

    @property
    def events(self) -> list[JobEvent]:
        """A copy of the events received so far, oldest first."""
        with self._lock:
            return list(self._events)

    def clear(self) -> None:
        """Forget the events received so far."""
        with self._lock:
            self._events.clear()

    def events_for(self, job_id: str) -> list[JobEvent]:
        """The events of one job, oldest first."""
        with self._lock:
            return [event for event in self._events if event.job_id == job_id]

    def kinds(self, job_id: str | None = None) -> list[str]:
        """The kinds of the events received (of one job, if given), oldest first."""
        with self._lock:
            return [event.kind for event in self._events
                    if job_id is None or event.job_id == job_id]

    def export(self, events: Sequence[JobEvent]) -> ExportResult:
        """Keep ``events``; after ``shutdown`` they are refused."""
        with self._lock:
            if self._shutdown:
                return ExportResult.FAILURE
            self._events.extend(events)
        return ExportResult.SUCCESS

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Nothing is buffered: returns ``True``."""
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        """Refuse further events (those kept so far stay readable)."""
        with self._lock:
            self._shutdown = True


@contextmanager
def strict_mode(enabled: bool = True) -> Iterator[None]:
    """Re-raise seenn's internal errors (a failing exporter, say) inside the block.

    Normally they are logged and counted so that instrumentation never breaks
    the tracked code; in a test you want to see them.
    """
    previous = set_strict(enabled)
    try:
        yield
    finally:
        set_strict(previous)


@contextmanager
def capture_jobs(tracker: Tracker | None = None, *, strict: bool = True
                 ) -> Iterator[InMemoryExporter]:
    """Send a tracker's events to a new :class:`InMemoryExporter` inside the block.

    The tracker's pipeline is set aside (not shut down) and put back on exit,
    so nothing reaches real exporters meanwhile. Events are exported inline:
    they are in ``exporter.events`` as soon as the job changes. Jobs are
    captured even if the tracker is disabled (``SEENN_DISABLED``).

    Args:
        tracker: The tracker to capture; the default one (behind ``seenn.track``)
            if not given.
        strict: Re-raise internal errors inside the block (see :func:`strict_mode`).

    Yields:
        The exporter receiving the events.
    """
    if tracker is None:
        tracker = default_tracker()
    exporter = InMemoryExporter()
    previous = tracker._swap_pipeline((SimpleProcessor(exporter),), enable=True)
    try:
        with strict_mode(strict):
            yield exporter
    finally:
        tracker._swap_pipeline(previous)
