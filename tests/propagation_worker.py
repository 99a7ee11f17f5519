"""The worker side of the cross-process propagation tests (importable by spawned processes)."""

from __future__ import annotations

import multiprocessing.queues
from typing import Any

import seenn
import seenn.propagation
from seenn.exporters import HTTPExporter, SimpleProcessor
from seenn.testing import InMemoryExporter


def finish_jobs(inbox: multiprocessing.queues.Queue[Any],
                outbox: multiprocessing.queues.Queue[Any],
                base_url: str | None, api_key: str | None) -> None:
    """Resume each carrier from ``inbox`` and finish its job; report the events to ``outbox``.

    A message is ``(carrier, action)``: ``"complete"`` reports progress and
    completes, ``"fail"`` raises inside the resumed block. ``None`` ends the worker.
    With ``base_url`` the events also go to that backend through an HTTPExporter.
    """
    memory = InMemoryExporter()
    processors: list[Any] = [SimpleProcessor(memory)]
    tracker = seenn.Tracker(processors=processors)
    if base_url is not None:
        tracker.configure(exporters=[HTTPExporter(api_key=api_key, base_url=base_url)],
                          processors=processors)
    while True:
        message = inbox.get(timeout=60)
        if message is None:
            break
        carrier, action = message
        try:
            with seenn.propagation.resume(carrier, tracker=tracker) as job:
                assert job is not None
                assert seenn.current_job() is job
                job.set_progress(60, message="worker picked it up")
                job.set_progress(90)
                if action == "fail":
                    raise RuntimeError("worker failed")
        except RuntimeError:
            pass
    tracker.force_flush(timeout=30)
    tracker.shutdown(timeout=30)
    outbox.put([event.to_dict() for event in memory.events])
