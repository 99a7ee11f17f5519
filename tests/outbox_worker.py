"""The process side of the outbox family tests (importable by spawned processes)."""

from __future__ import annotations

import logging
import multiprocessing.queues
import multiprocessing.synchronize
import os
import time
from typing import Any

import seenn
from seenn.exporters import HTTPExporter

KEY = "sk_test_outbox-family"


class Lines(logging.Handler):
    """Keeps the messages of the ``seenn`` logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def listen() -> Lines:
    """Collect what the ``seenn`` logger says from now on."""
    lines = Lines()
    logger = logging.getLogger("seenn")
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    return lines


def lifecycle(job_id: str) -> list[seenn.JobEvent]:
    """started, one progress and completed events of one job."""
    fields: dict[str, Any] = {
        "job_type": "video", "user_id": "u1", "title": "Video", "message": None,
        "stage": None, "queue": None, "metadata": None, "result": None, "error": None,
        "retryable": None, "parent_id": None, "child_index": None, "timestamp": time.time(),
        "trace_id": None, "span_id": None}
    return [seenn.JobEvent(kind="started", job_id=job_id, status="running", progress=0,
                           sequence=0, **fields),
            seenn.JobEvent(kind="progress", job_id=job_id, status="running", progress=50,
                           sequence=1, **fields),
            seenn.JobEvent(kind="completed", job_id=job_id, status="completed", progress=100,
                           sequence=2, **fields)]


def hold(setting: str, url: str, jobs: list[str],
         results: multiprocessing.queues.Queue[Any],
         stop: multiprocessing.synchronize.Event) -> None:
    """Open an exporter on ``setting``, file ``jobs``, report, and hold it until ``stop``.

    Reports ``{"pid", "path", "replayed", "count", "lines"}`` once open, then the
    outbox's row count once ``stop`` is set, and shuts down.
    """
    lines = listen()
    exporter = HTTPExporter(api_key=KEY, base_url=url, outbox=setting)
    for job_id in jobs:
        exporter.export(lifecycle(job_id))
    outbox = exporter._outbox
    assert outbox is not None
    results.put({"pid": os.getpid(), "path": exporter._outbox_path,
                 "replayed": exporter.stats.replayed, "count": outbox.count,
                 "lines": list(lines.lines)})
    stop.wait(120)
    results.put(outbox.count)
    exporter.shutdown(timeout=0.2)


def adopt(setting: str, url: str, barrier: multiprocessing.synchronize.Barrier,
          results: multiprocessing.queues.Queue[Any]) -> None:
    """Start an exporter on ``setting`` the moment the other racer does; deliver; report."""
    barrier.wait(60)
    exporter = HTTPExporter(api_key=KEY, base_url=url, outbox=setting)
    replayed = exporter.stats.replayed
    flushed = exporter.force_flush(60)
    exporter.shutdown(timeout=5)
    results.put({"pid": os.getpid(), "replayed": replayed, "flushed": flushed})
