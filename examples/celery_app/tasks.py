"""The Celery side: an app, `seenn_celery.instrument()`, and a task that is a seenn job.

Run it (four terminals, from the repository root)::

    redis-server --port 6379
    seenn serve --port 8080 --db /tmp/seenn.db      # prints a secret key: export it
    export SEENN_API_KEY=sk_test_... SEENN_BASE_URL=http://127.0.0.1:8080
    celery -A examples.celery_app.tasks worker --loglevel INFO
    uvicorn examples.celery_app.web:app --port 8000  # see web.py

``import seenn`` with ``SEENN_API_KEY`` in the environment sends jobs to that
backend (``SEENN_BASE_URL``, else Seenn Cloud); the broker is
``CELERY_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``).
``EXAMPLE_PACE`` sets the seconds each rendered frame takes (default 0.2);
``EXAMPLE_BUSY_ONCE=1`` makes the first attempt's encoder busy, so Celery
retries the task and the job shows "Attempt 2 of 4".
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

import seenn
from seenn.integrations import celery as seenn_celery

app = Celery("video", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.task_ignore_result = True  # the job's result lives in seenn
seenn_celery.instrument()

PACE = float(os.environ.get("EXAMPLE_PACE", "0.2"))


class EncoderBusy(Exception):
    """A transient failure: Celery retries the task (the same seenn job)."""


@app.task(bind=True, autoretry_for=(EncoderBusy,), max_retries=3, default_retry_delay=1)
@seenn.job("video-generation", user_id=lambda prompt, user_id: user_id,
           title=lambda prompt, user_id: f"Video: {prompt}",
           stages=["render", "encode", "upload"], result=True)
def generate_video(self: Any, prompt: str, user_id: str) -> dict[str, str]:
    """Render frames, encode, upload: progress follows the stages and the frames."""
    with seenn.stage("render"):
        for _frame in seenn.iterate(range(12), message="Rendering frames"):
            time.sleep(PACE)
    with seenn.stage("encode"):
        if self.request.retries == 0 and os.environ.get("EXAMPLE_BUSY_ONCE") == "1":
            raise EncoderBusy("the encoder is busy")  # shows a retry: one job, attempt 2
        time.sleep(PACE)
    with seenn.stage("upload"):
        time.sleep(PACE)
    slug = "-".join(prompt.lower().split())
    return {"type": "video", "url": f"https://cdn.example.com/{user_id}/{slug}.mp4"}
