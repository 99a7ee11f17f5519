"""A new stage clears the previous stage's message, here and on the backend."""

from __future__ import annotations

from pathlib import Path

import seenn
import seenn.server
from seenn.exporters import HTTPExporter, SimpleProcessor
from seenn.testing import InMemoryExporter


def test_a_new_stage_clears_the_message_of_the_previous_one() -> None:
    """Entering another stage sends an empty message; the same stage again keeps it."""
    exporter = InMemoryExporter()
    tracker = seenn.Tracker(processors=[SimpleProcessor(exporter)])
    with tracker.track("video", stages=["render", "encode", "upload"]) as job:
        with tracker.stage("render"):
            job.set_progress(10, message="Rendering")
            job.set_stage("render")  # the same stage: its message stays
            assert job.message == "Rendering"
        with tracker.stage("encode"):
            assert job.message == ""
            job.set_progress(70, message="Encoding")
        job.set_progress(80, stage="upload")  # a stage given to set_progress does it too
        assert job.message == ""
    messages = [(event.kind, event.stage.name if event.stage else None, event.message)
                for event in exporter.events]
    assert ("progress", "encode", "") in messages
    assert ("progress", "upload", "") in messages
    assert messages[-1] == ("completed", "upload", "")


def test_a_job_without_messages_sends_none() -> None:
    """A job that never had a message keeps None through its stages (nothing to clear)."""
    exporter = InMemoryExporter()
    tracker = seenn.Tracker(processors=[SimpleProcessor(exporter)])
    with tracker.track("video", stages=2):
        with tracker.stage("one"):
            pass
        with tracker.stage("two"):
            pass
    assert {event.message for event in exporter.events} == {None}


def test_a_finished_job_on_the_backend_does_not_keep_an_earlier_stage_message(
        tmp_path: Path) -> None:
    """The backend's completed job no longer reads "Encoding" after a silent last stage."""
    with seenn.server.running(tmp_path / "stages.db") as backend:
        exporter = HTTPExporter(api_key=backend.api_key, base_url=backend.url)
        tracker = seenn.Tracker(processors=[SimpleProcessor(exporter)])
        try:
            with tracker.track("video", user_id="u1", stages=["encode", "upload"]) as job:
                with tracker.stage("encode"):
                    job.set_progress(40, message="Encoding")
                with tracker.stage("upload"):
                    pass
            assert tracker.force_flush(timeout=30)
        finally:
            tracker.shutdown(timeout=30)
        with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
            stored = client.jobs.get(job.id)
    assert stored.status == "completed"
    assert not stored.message
