"""The web side: a FastAPI endpoint that enqueues the task and returns the job's id.

Run it with ``uvicorn examples.celery_app.web:app --port 8000`` beside the worker
(see tasks.py), then::

    curl -X POST 'http://127.0.0.1:8000/videos?prompt=a+cat&user_id=user_123'

The answer holds the job id (the Celery task id), the URL a phone polls, and a
token that lets that user read their own jobs only (``POST /v1/tokens``): the
secret key never leaves the server. The job reads ``queued`` from the first
poll; the worker takes it from there.
"""

from __future__ import annotations

import os

from examples.celery_app.tasks import generate_video
from fastapi import FastAPI

import seenn

app = FastAPI(title="video service")
backend = seenn.SeennClient(base_url=os.environ.get("SEENN_BASE_URL", "http://127.0.0.1:8080"))


@app.post("/videos", status_code=202)
def create_video(prompt: str, user_id: str) -> dict[str, str]:
    """Enqueue a video; answer with what the user's app needs to follow it."""
    job_id = generate_video.delay(prompt, user_id).id
    token = backend.create_token(user_id, ttl_seconds=3600)
    return {"jobId": job_id, "pollUrl": f"{backend.base_url}{backend.base_path}/jobs/{job_id}",
            "token": token.token}
