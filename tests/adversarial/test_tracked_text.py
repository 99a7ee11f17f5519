"""Text that cannot be encoded never reaches the exporter from tracked code.

A lone surrogate (what ``os.fsdecode`` makes of a file name that is not UTF-8)
given as an argument is a ``ValidationError`` at the call; one inside an
exception that fails a job is escaped, so the failure is delivered at once
instead of being refused and retried.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import seenn
from seenn.exporters import HTTPExporter, SimpleProcessor
from seenn.server import RunningServer
from seenn.testing import InMemoryExporter

BAD = os.fsdecode(b"clip-\xff.mp4")  # "clip-\udcff.mp4"


@pytest.fixture
def tracker() -> seenn.Tracker:
    """A tracker that records events in memory."""
    return seenn.Tracker(processors=[SimpleProcessor(InMemoryExporter())])


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[RunningServer]:
    """A real ``seenn serve`` on loopback."""
    with seenn.server.running(tmp_path / "text.db") as srv:
        yield srv


@pytest.mark.parametrize("configured", [False, True])
@pytest.mark.parametrize(("field", "call"), [
    ("job_type", lambda t: t.track(BAD)),
    ("user_id", lambda t: t.track("render", user_id=BAD)),
    ("title", lambda t: t.track("render", title=BAD)),
    ("metadata", lambda t: t.track("render", metadata={"file": BAD})),
    ("stages", lambda t: t.track("render", stages=["ok", BAD])),
])
def test_track_refuses_unencodable_text(field: str, call: Callable[[seenn.Tracker], Any],
                                        configured: bool) -> None:
    """``track()`` raises ValidationError naming the field, configured or not."""
    tracker = seenn.Tracker(processors=[SimpleProcessor(InMemoryExporter())] if configured
                            else [])
    with pytest.raises(seenn.ValidationError) as caught:
        call(tracker)
    assert field in str(caught.value)
    assert BAD not in str(caught.value)


def test_user_id_is_checked_after_its_job_type_was_seen(tracker: seenn.Tracker) -> None:
    """The fast path of a known job type still checks the user id's text."""
    with tracker.track("known", user_id="user_1"):
        pass
    with pytest.raises(seenn.ValidationError, match="user_id"):
        tracker.track("known", user_id=BAD)
    with tracker.track("known", user_id="usér_1") as job:  # non-ASCII but valid
        pass
    assert job.status == "completed"


@pytest.mark.parametrize(("field", "options"), [
    ("message", {"message": BAD}),
    ("stage", {"stage": BAD}),
    ("metadata", {"metadata": {BAD: 1}}),
])
def test_set_progress_refuses_unencodable_text(tracker: seenn.Tracker, field: str,
                                              options: dict[str, Any]) -> None:
    """``set_progress()`` raises ValidationError and changes nothing."""
    with tracker.track("render") as job:
        job.set_progress(10)
        with pytest.raises(seenn.ValidationError, match=field):
            job.set_progress(20, **options)
        assert job.progress == 10


def test_job_decorator_refuses_an_unencodable_user_id(tracker: seenn.Tracker) -> None:
    """A ``@job`` whose user id function returns such text fails the call, not the delivery."""
    @tracker.job("render", user_id=lambda name: name)
    def render(name: str) -> str:
        return name

    assert render("user_1") == "user_1"
    with pytest.raises(seenn.ValidationError, match="user_id"):
        render(BAD)


class DecodeFailed(Exception):
    """An error whose message and code hold a file name that is not UTF-8."""

    code = f"BAD_{BAD}"


def test_failure_with_an_unencodable_message_is_delivered(backend: RunningServer) -> None:
    """A job failed by an exception naming a non-UTF-8 file reaches the backend failed, once."""
    exporter = HTTPExporter(api_key=backend.api_key, base_url=backend.url)
    tracker = seenn.Tracker(exporters=[exporter])

    def fail_a_job() -> None:
        with tracker.track("render", user_id="user_1") as job:
            with tracker.track("child") as child:
                child.set_progress(50)
            ids.extend([job.id, child.id])
            raise DecodeFailed(f"cannot decode {BAD}")

    ids: list[str] = []
    with pytest.raises(DecodeFailed):
        fail_a_job()
    job_id, child_id = ids
    # Delivered in one go: a refused event would be retried until the deadline.
    assert tracker.force_flush(30)
    assert (exporter.stats.rejected, exporter.stats.retries) == (0, 0)
    tracker.shutdown()
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
        stored = client.jobs.get(job_id)
        assert client.jobs.get(child_id).status == "completed"
    assert stored.status == "failed"
    assert stored.error is not None
    assert stored.error.code == "BAD_clip-\\udcff.mp4"
    assert stored.error.message == "cannot decode clip-\\udcff.mp4"
