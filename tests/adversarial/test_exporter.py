"""The exporter inside a production worker: bursts, overload, odd answers and a failing outbox."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import seenn
from seenn.exporters import BatchProcessor, HTTPExporter
from tests.adversarial.conftest import Served
from tests.server import RecordingServer

KEY = "sk_test_exporter-secret-never-logged"


def completed_on(served: Served, user_id: str) -> int:
    """How many of ``user_id``'s jobs the backend holds as completed."""
    with seenn.SeennClient(served.secret, base_url=served.url) as client:
        return sum(1 for job in client.jobs.iter(user_id, page_size=100)
                   if job.status == "completed")


def outbox_lines(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    """The log lines that name the outbox at ``path``."""
    return [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]


def test_a_burst_of_short_jobs_against_a_healthy_backend_loses_none(served: Served) -> None:
    """Fifteen thousand empty tracked blocks in a tight loop all reach the backend completed."""
    tracker = seenn.Tracker(exporters=[])
    tracker.configure(api_key=served.secret, base_url=served.url)
    (processor,) = tracker._pipeline
    assert isinstance(processor, BatchProcessor)
    for _ in range(15_000):
        with tracker.track("burst", user_id="burst-user"):
            pass
    assert tracker.force_flush(timeout=300)
    assert processor.dropped == 0
    assert completed_on(served, "burst-user") == 15_000
    tracker.shutdown(timeout=10)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_an_overloaded_exporter_without_outbox_drops_whole_jobs_and_says_so(
        server: RecordingServer, caplog: pytest.LogCaptureFixture) -> None:
    """Past max_pending_jobs, new jobs are dropped whole: counted, one log line, flush False."""
    release = threading.Event()
    server.reply(200, hold=release, times=200)  # a backend that answers nothing for now
    exporter = HTTPExporter(api_key=KEY, base_url=server.url, max_pending_jobs=10)
    tracker = seenn.Tracker(exporters=[exporter])
    ids = []
    with caplog.at_level(logging.WARNING, logger="seenn"):
        for _ in range(50):
            with tracker.track("flood", user_id="u") as job:
                ids.append(job.id)
        wait_for(lambda: exporter.stats.accepted == 100)
    release.set()
    assert tracker.force_flush(timeout=30) is False  # jobs were dropped since the last flush
    assert tracker.force_flush(timeout=30)  # ... and that was said once
    assert exporter.stats.dropped == 80  # 40 jobs: their starts and their ends
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1
    assert ids[10] in lines[0] and "stats.dropped" in lines[0]
    assert KEY not in caplog.text
    started = {r.json["id"] for r in server.requests if r.path == "/v1/jobs"}
    assert started == set(ids[:10])
    tracker.shutdown(timeout=10)


def test_an_overloaded_exporter_with_an_outbox_keeps_every_job_on_disk(
        tmp_path: Path, server: RecordingServer, caplog: pytest.LogCaptureFixture) -> None:
    """Past max_pending_jobs, new jobs wait in the outbox and all reach the backend, in order."""
    release = threading.Event()
    server.reply(200, hold=release, times=500)
    exporter = HTTPExporter(api_key=KEY, base_url=server.url, outbox=tmp_path / "spill.db",
                            max_pending_jobs=5)
    tracker = seenn.Tracker(exporters=[exporter])
    ids = []
    with caplog.at_level(logging.WARNING, logger="seenn"):
        for _ in range(40):
            with tracker.track("spill", user_id="u") as job:
                ids.append(job.id)
                job.set_progress(50, message="half way")
        wait_for(lambda: exporter.stats.accepted == 120)
    release.set()
    assert tracker.force_flush(timeout=60)
    assert exporter.stats.dropped == 0 and exporter.stats.spilled > 0
    lines = [r.getMessage() for r in caplog.records if "waits in the outbox" in r.getMessage()]
    assert len(lines) == 1
    calls: dict[str, list[str]] = {}
    for request in server.requests:
        job_id = request.json["id"] if request.path == "/v1/jobs" else request.path.split("/")[3]
        calls.setdefault(job_id, []).append(request.path.rsplit("/", 1)[-1])
    assert set(calls) == set(ids)
    assert all(paths == ["jobs", "progress", "complete"] for paths in calls.values())
    tracker.shutdown(timeout=10)


class GatedExporter(HTTPExporter):
    """An HTTPExporter whose ``export`` waits for a gate: a processor worker held up."""

    def __init__(self, gate: threading.Event, **options: Any) -> None:
        super().__init__(**options)
        self.gate = gate
        self.entered = threading.Event()

    def export(self, events: Sequence[seenn.JobEvent]) -> seenn.exporters.ExportResult:
        self.entered.set()
        self.gate.wait(30)
        return super().export(events)


def test_a_full_processor_queue_leaves_new_jobs_to_the_outbox_not_lost(
        tmp_path: Path, served: Served) -> None:
    """With an outbox, a job the processor's queue has no room for is delivered from disk."""
    gate = threading.Event()
    exporter = GatedExporter(gate, api_key=served.secret, base_url=served.url,
                             outbox=tmp_path / "queue-full.db")
    processor = BatchProcessor(exporter, max_queue_size=2, schedule_delay=0)
    tracker = seenn.Tracker(processors=[processor])
    with tracker.track("queued", user_id="queue-user"):
        assert exporter.entered.wait(10)  # the worker is stuck handing this start over
    for _ in range(100):
        with tracker.track("queued", user_id="queue-user") as job:
            job.set_progress(30)
    gate.set()
    assert tracker.force_flush(timeout=60)
    assert processor.dropped == 0
    assert completed_on(served, "queue-user") == 101
    assert processor.spilled > 0  # the queue was full: those jobs went by way of the disk
    tracker.shutdown(timeout=10)


def test_a_job_whose_start_a_full_outbox_did_not_take_is_dropped_not_spilled(
        tmp_path: Path, server: RecordingServer) -> None:
    """A full queue never leaves to the outbox a job whose start the (full) outbox refused."""
    gate = threading.Event()
    exporter = GatedExporter(gate, api_key=KEY, base_url=server.url,
                             outbox=tmp_path / "full.db", max_outbox_events=1)
    processor = BatchProcessor(exporter, max_queue_size=1, schedule_delay=0)
    tracker = seenn.Tracker(processors=[processor])
    with tracker.track("full", user_id="u") as job:
        ids = [job.id]
        assert exporter.entered.wait(10)  # the worker is stuck handing this start over
    for _ in range(40):
        with tracker.track("full", user_id="u") as job:
            ids.append(job.id)
    gate.set()
    assert tracker.force_flush(timeout=60) is False  # jobs were dropped, and it says so
    assert processor.spilled == 0
    assert exporter.stats.rejected == 0  # no complete call for a job the backend never saw
    delivered = [job_id for job_id in ids if job_id in server.backend.jobs]
    assert all(server.backend.jobs[job_id]["status"] == "completed" for job_id in delivered)
    assert processor.dropped == 2 * (len(ids) - len(delivered)) > 0
    tracker.shutdown(timeout=10)


def unreadable_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The log lines about answers the exporter could not use."""
    return [r.getMessage() for r in caplog.records
            if "could not use the answer" in r.getMessage()]


def test_a_200_that_is_not_json_is_sent_again_with_the_same_key_and_logged_once(
        server: RecordingServer, caplog: pytest.LogCaptureFixture) -> None:
    """A 200 carrying an HTML page is no delivery: retried with its key, one log line."""
    page = b"<html><body><h1>Welcome to the hotel wifi</h1></body></html>"
    server.reply(200, raw=page, headers={"Content-Type": "text/html"}, times=3)
    exporter = HTTPExporter(api_key=KEY, base_url=server.url)
    exporter._random = lambda: 0.0  # no backoff waits in a test
    tracker = seenn.Tracker(exporters=[exporter])
    with caplog.at_level(logging.WARNING, logger="seenn"):
        ids = []
        for _ in range(3):
            with tracker.track("portal", user_id="u") as job:
                ids.append(job.id)
        assert tracker.force_flush(timeout=30)
    assert exporter.stats.retries == 3
    assert {server.backend.jobs[job_id]["status"] for job_id in ids} == {"completed"}
    keys = [r.headers["Idempotency-Key"] for r in server.requests]
    assert len(keys) == 9 and len(set(keys)) == 6  # three calls sent twice, each under its key
    (line,) = unreadable_lines(caplog)
    assert "INVALID_RESPONSE" in line
    assert any(job_id in line for job_id in ids)
    assert KEY not in caplog.text
    tracker.shutdown(timeout=10)


def test_an_oversized_200_is_not_read_whole_and_is_sent_again(
        server: RecordingServer, caplog: pytest.LogCaptureFixture) -> None:
    """A 200 larger than the client's cap is cut short, logged and the call retried."""
    server.reply(200, raw=b"[" + b" " * (9 << 20) + b"]")  # 9 MB: over the 8 MB cap
    exporter = HTTPExporter(api_key=KEY, base_url=server.url)
    exporter._random = lambda: 0.0
    tracker = seenn.Tracker(exporters=[exporter])
    with caplog.at_level(logging.WARNING, logger="seenn"):
        with tracker.track("huge", user_id="u") as job:
            pass
        assert tracker.force_flush(timeout=30)
    assert server.backend.jobs[job.id]["status"] == "completed"
    assert exporter.stats.retries == 1
    (line,) = unreadable_lines(caplog)
    assert job.id in line and "RESPONSE_TOO_LARGE" in line
    tracker.shutdown(timeout=10)


@pytest.mark.parametrize("where", ["under-a-file", "missing-directory"])
def test_an_outbox_path_that_cannot_be_created_is_a_validation_error(
        tmp_path: Path, where: str) -> None:
    """An outbox whose directory is missing or is a file raises ValidationError naming it."""
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / ("file" if where == "under-a-file" else "missing") / "outbox.db"
    with pytest.raises(seenn.ValidationError) as caught:
        HTTPExporter(api_key=KEY, base_url="http://127.0.0.1:9", outbox=path)
    assert caught.value.details == {"field": "outbox", "reason": caught.value.details["reason"]}
    assert str(path) in str(caught.value)
    assert KEY not in str(caught.value)


def test_outbox_files_are_readable_by_their_owner_only(tmp_path: Path, served: Served) -> None:
    """The outbox database, its WAL and its lock file are created 0600."""
    path = tmp_path / "private.db"
    exporter = HTTPExporter(api_key=served.secret, base_url=served.url, outbox=path)
    tracker = seenn.Tracker(exporters=[exporter])
    with tracker.track("private", user_id="u"):
        pass
    files = [p for p in tmp_path.iterdir() if p.name.startswith("private.db")]
    assert {p.name for p in files} >= {"private.db", "private.db-wal", "private.db.lock"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        p.name: oct(0o600) for p in files}
    assert tracker.force_flush(timeout=30)
    tracker.shutdown(timeout=10)


def test_an_outbox_deleted_while_running_is_said_once_and_jobs_still_arrive(
        tmp_path: Path, served: Served, caplog: pytest.LogCaptureFixture) -> None:
    """Deleting the outbox's directory under a running exporter: one line, nothing lost."""
    directory = tmp_path / "spool"
    directory.mkdir()
    path = directory / "outbox.db"
    exporter = HTTPExporter(api_key=served.secret, base_url=served.url, outbox=path)
    tracker = seenn.Tracker(exporters=[exporter])
    with tracker.track("before", user_id="gone-user"):
        pass
    assert tracker.force_flush(timeout=30)
    shutil.rmtree(directory)
    with caplog.at_level(logging.WARNING, logger="seenn"):
        for _ in range(50):
            with tracker.track("after", user_id="gone-user") as job:
                job.set_progress(50)
        assert tracker.force_flush(timeout=60)
    (line,) = outbox_lines(caplog, path)
    assert "deleted" in line
    assert completed_on(served, "gone-user") == 51
    tracker.shutdown(timeout=10)


UNWRITABLE = textwrap.dedent("""
    import logging, os, resource, signal, sys
    import seenn
    from seenn.exporters import HTTPExporter

    url, key, outbox = sys.argv[1:4]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    exporter = HTTPExporter(api_key=key, base_url=url, outbox=outbox)
    tracker = seenn.Tracker(exporters=[exporter])
    # From here no file of this process may grow, root or not: the outbox's next write
    # fails as on a full disk (the size signal is ignored, so write() fails instead).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    size = os.path.getsize(outbox + "-wal")
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
    for _ in range(50):
        with tracker.track("disk-full", user_id="disk-user") as job:
            job.set_progress(50)
    print("flushed", tracker.force_flush(60))
    tracker.shutdown(10)
""")


def test_an_outbox_that_can_no_longer_be_written_is_said_once_and_jobs_still_arrive(
        tmp_path: Path, served: Served) -> None:
    """Outbox writes failing (a full disk) cost one log line; every job is delivered anyway."""
    path = tmp_path / "full.db"
    out = subprocess.run([sys.executable, "-c", UNWRITABLE, served.url, served.secret,
                          str(path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SEENN_EXPORTER": "none"})
    assert "flushed True" in out.stdout, out.stderr
    lines = [line for line in out.stderr.splitlines() if str(path) in line]
    assert len(lines) == 1, out.stderr
    assert "cannot write the outbox" in lines[0]
    assert "Traceback" not in out.stderr
    assert completed_on(served, "disk-user") == 50
