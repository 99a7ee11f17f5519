"""What the queue integrations share: the exit flush and the bounded tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import seenn
from seenn.exporters import HTTPExporter
from seenn.integrations._common import Running, flush
from tests.faults import free_port


@pytest.fixture
def dead_backend() -> Iterator[str]:
    """The default tracker sends to a port nothing listens on (a backend that is down)."""
    tracker = seenn.track.__self__  # type: ignore[attr-defined]
    previous = tracker.processors
    yield f"http://127.0.0.1:{free_port()}"
    seenn.shutdown(timeout=0)  # nothing to wait for: the backend never answers
    seenn.configure(processors=list(previous))


def test_the_exit_flush_does_not_wait_for_a_backend_that_is_down(dead_backend: str) -> None:
    """A worker exiting with the backend down leaves at once, not after the whole timeout."""
    seenn.configure(exporters=[HTTPExporter(api_key="sk_test_x", base_url=dead_backend)])
    with seenn.track("exit-flush", user_id="u1"):
        pass
    assert flush(timeout=600) is False  # returns soon: a hang here is the failure


def test_the_exit_flush_leaves_at_once_when_an_outbox_holds_the_events(
        dead_backend: str, tmp_path: Path) -> None:
    """With an outbox, what is undelivered stays on disk for the next process: no wait."""
    exporter = HTTPExporter(api_key="sk_test_x", base_url=dead_backend,
                            outbox=tmp_path / "outbox.db")
    seenn.configure(exporters=[exporter])
    with seenn.track("exit-flush", user_id="u1"):
        pass
    assert flush(timeout=600) is False
    assert exporter.durable


def test_running_tables_are_bounded() -> None:
    """Past its limit, a table forgets its oldest entries (failed publishes never come back)."""
    table = Running(limit=3)
    jobs = [seenn.Tracker().track("t") for _ in range(5)]
    for index, job in enumerate(jobs):
        table.add(f"task-{index}", job)
    assert table.get("task-0") is None and table.get("task-1") is None
    assert table.pop("task-4") is jobs[4] and table.get("task-2") is jobs[2]
