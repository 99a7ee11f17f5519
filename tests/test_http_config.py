"""Setting the HTTP exporter up: configure(api_key=...), SEENN_EXPORTER=http, the outbox hook."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import seenn
import seenn.server
from seenn.exporters import BatchProcessor, HTTPExporter
from seenn.server import RunningServer


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[RunningServer]:
    """A real `seenn serve` on loopback."""
    with seenn.server.running(tmp_path / "cfg.db") as srv:
        yield srv


def http_exporters(tracker: seenn.Tracker) -> list[HTTPExporter]:
    return [p.exporter for p in tracker._pipeline
            if isinstance(p, BatchProcessor) and isinstance(p.exporter, HTTPExporter)]


def test_configure_with_a_key_sends_jobs_to_the_backend(backend: RunningServer) -> None:
    """configure(api_key=, base_url=) puts an HTTPExporter behind a BatchProcessor."""
    tracker = seenn.Tracker(exporters=[])
    tracker.configure(api_key=backend.api_key, base_url=backend.url)
    (exporter,) = http_exporters(tracker)
    processor = tracker._pipeline[0]
    assert isinstance(processor, BatchProcessor)
    with tracker.track("config-test", user_id="u", title="Configured") as job:
        job.set_progress(40, message="half way")
    assert tracker.force_flush(30)
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
        stored = client.jobs.get(job.id)
    assert (stored.status, stored.title) == ("completed", "Configured")
    tracker.configure(exporters=[])
    assert http_exporters(tracker) == []
    assert exporter.export([]) is seenn.exporters.ExportResult.FAILURE  # shut down


def test_environment_turns_the_http_exporter_on(monkeypatch: pytest.MonkeyPatch,
                                                backend: RunningServer) -> None:
    """SEENN_EXPORTER=http, or SEENN_API_KEY alone, configures the HTTP exporter."""
    monkeypatch.setenv("SEENN_API_KEY", backend.api_key)
    monkeypatch.setenv("SEENN_BASE_URL", backend.url)
    monkeypatch.delenv("SEENN_EXPORTER", raising=False)
    implicit = seenn.Tracker()
    assert len(http_exporters(implicit)) == 1
    monkeypatch.setenv("SEENN_EXPORTER", "console,http")
    both = seenn.Tracker()
    assert len(both._pipeline) == 2
    assert len(http_exporters(both)) == 1
    monkeypatch.setenv("SEENN_EXPORTER", "none")
    assert seenn.Tracker()._pipeline == ()
    for tracker in (implicit, both):
        tracker.shutdown(timeout=1)


def test_a_missing_key_warns_instead_of_breaking_import(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    """SEENN_EXPORTER=http without a key logs a warning; tracking still works."""
    monkeypatch.delenv("SEENN_API_KEY", raising=False)
    monkeypatch.setenv("SEENN_EXPORTER", "http")
    with caplog.at_level(logging.WARNING, logger="seenn"):
        tracker = seenn.Tracker()
    assert tracker._pipeline == ()
    assert "SEENN_EXPORTER=http could not be set up" in caplog.text
    assert "SEENN_API_KEY" in caplog.text
    with tracker.track("no-backend") as job:
        job.set_progress(5)
    out = subprocess.run([sys.executable, "-c", "import seenn; print('imported')"],
                         env={"SEENN_EXPORTER": "http", "PATH": ""}, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "imported"


def test_the_batch_processor_takes_the_exporters_progress_interval(
        backend: RunningServer) -> None:
    """The processor in front of an HTTPExporter paces progress as the exporter asks."""
    exporter = HTTPExporter(api_key=backend.api_key, base_url=backend.url,
                            progress_interval=1.5)
    tracker = seenn.Tracker(exporters=[exporter])
    processor = tracker._pipeline[0]
    assert isinstance(processor, BatchProcessor)
    assert processor._interval == 1.5
    tracker.shutdown(timeout=1)


def test_with_an_outbox_starts_and_ends_are_on_disk_when_the_block_returns(
        tmp_path: Path) -> None:
    """The job's started and terminal events are in the outbox before track() returns."""
    outbox = tmp_path / "outbox.db"
    exporter = HTTPExporter(api_key="sk_test_x", base_url="http://127.0.0.1:9", outbox=outbox)
    tracker = seenn.Tracker(exporters=[exporter])
    with tracker.track("durable", user_id="u") as job:
        with sqlite3.connect(outbox) as db:
            kinds = [row[0] for row in db.execute(
                "SELECT kind FROM events WHERE job_id = ?", (job.id,))]
        assert kinds == ["started"]
        job.set_progress(50)
    with sqlite3.connect(outbox) as db:
        kinds = sorted(row[0] for row in db.execute(
            "SELECT kind FROM events WHERE job_id = ?", (job.id,)))
    assert "completed" in kinds
    assert "started" in kinds
    tracker.shutdown(timeout=0.2)
