"""One job, two processes: a web process starts it, a queue worker finishes it.

Run it from the repository root, after ``python -m pip install -e .``::

    python examples/worker_propagation.py

The "web" side starts each job in a ``seenn.track()`` block, calls
``job.hand_off()`` and sends the carrier it returns with the work, here over a
``multiprocessing`` queue (in production: Celery task headers, an SQS message
attribute, a Kafka header...). Leaving the block does not complete the job.
The worker process continues it with ``seenn.propagation.resume(carrier)``:
same job id, no second ``started`` event; its progress and its end (completed,
or failed with the exception) come from the worker.

Both processes print every event on stderr with ``ConsoleExporter``, unless
the environment names where jobs go. With a backend (``seenn serve --port 8080
--db /tmp/seenn.db`` in a second terminal prints a secret key)::

    export SEENN_API_KEY=sk_test_... SEENN_BASE_URL=http://127.0.0.1:8080
    python examples/worker_propagation.py

both processes report to it (the key selects the HTTP exporter; add
``SEENN_EXPORTER=http,console`` to see the events as well), and it shows each
job moving from "queued" to its end across the two processes.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

import seenn
import seenn.propagation
from seenn.exporters import ConsoleExporter

STAGES = ["queued", "render", "upload"]
PROMPTS = ["a cat surfing", "a paradox"]


class RenderError(Exception):
    """The renderer gave up; ``code`` becomes the job's error code."""

    code = "RENDER_FAILED"


def configure_exporters() -> None:
    """Print jobs on the console, unless the environment names where they go.

    ``import seenn`` has already set up what ``SEENN_EXPORTER`` or
    ``SEENN_API_KEY`` asks for; only with neither does the example pick the
    console.
    """
    if "SEENN_EXPORTER" not in os.environ and "SEENN_API_KEY" not in os.environ:
        seenn.configure(exporters=[ConsoleExporter()])


def worker(tasks: Any, results: Any) -> None:
    """Take tasks off the queue and finish their jobs (runs in its own process)."""
    configure_exporters()
    while (task := tasks.get(timeout=60)) is not None:
        try:
            with seenn.propagation.resume(task["seenn"]) as job:
                assert job is not None
                with seenn.stage("render"):
                    for frame in seenn.iterate(range(24), message="Rendering frames"):
                        time.sleep(0.02)
                        if task["prompt"] == "a paradox" and frame == 12:
                            raise RenderError(f"GPU memory exceeded at frame {frame}")
                with seenn.stage("upload"):
                    url = f"https://cdn.example.com/{task['prompt'].replace(' ', '-')}.mp4"
                job.set_result({"type": "video", "url": url})
        except RenderError:
            pass
        results.put((job.id, job.status, job.progress, os.getpid()))
    seenn.shutdown()


def web(tasks: Any) -> list[str]:
    """Start one job per prompt and hand each to the worker, as a web request would."""
    ids = []
    for prompt in PROMPTS:
        with seenn.track("video-generation", user_id="user_123", title=f"Video: {prompt}",
                         stages=STAGES) as job:
            job.set_stage("queued")
            tasks.put({"prompt": prompt, "seenn": job.hand_off()})
        # The block is over, the job is not: the worker finishes it.
        print(f"web    (pid {os.getpid()}): {job.id} handed off, still {job.status}")
        ids.append(job.id)
    return ids


def main() -> None:
    """Run the web side here and the worker in a second process."""
    configure_exporters()
    context = multiprocessing.get_context("spawn")
    tasks, results = context.Queue(), context.Queue()
    process = context.Process(target=worker, args=(tasks, results))
    process.start()
    ids = web(tasks)
    tasks.put(None)
    for _ in ids:
        job_id, status, progress, pid = results.get(timeout=120)
        print(f"worker (pid {pid}): {job_id} {status} at {progress}%")
    process.join(timeout=120)
    seenn.shutdown()


if __name__ == "__main__":
    main()
