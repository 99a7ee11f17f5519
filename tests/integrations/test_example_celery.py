"""examples/celery_app: the FastAPI endpoint returns a job id that a real worker completes."""

from __future__ import annotations

import importlib
import signal
import sys

import httpx
import pytest

import seenn
from seenn.server import RunningServer
from tests.integrations.conftest import PYTHON, WorkerProcess, wait_until, worker_env


@pytest.fixture
def example_env(backend: RunningServer, redis_url: str,
                monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment the example's README asks for, in this process and the worker's."""
    env = worker_env(backend, redis_url, CELERY_BROKER_URL=redis_url + "/2",
                     EXAMPLE_PACE="0", EXAMPLE_BUSY_ONCE="1")
    for name in ("SEENN_API_KEY", "SEENN_BASE_URL", "CELERY_BROKER_URL", "EXAMPLE_PACE",
                 "EXAMPLE_BUSY_ONCE"):
        monkeypatch.setenv(name, env[name])
    for module in ("examples.celery_app.web", "examples.celery_app.tasks"):
        sys.modules.pop(module, None)  # read the environment afresh
    return env


async def test_the_endpoint_returns_an_id_that_a_worker_takes_to_completed(
        example_env: dict[str, str], backend: RunningServer, publisher: None) -> None:
    """POST /videos answers a job id and a user token; the phone's poll sees it completed."""
    worker = WorkerProcess([PYTHON, "-m", "celery", "-A", "examples.celery_app.tasks",
                            "worker", "-P", "prefork", "-c", "1", "--without-gossip",
                            "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
                           example_env, ready=" ready.")
    try:
        web = importlib.import_module("examples.celery_app.web")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web.app),
                                     base_url="http://web") as http:
            answer = await http.post("/videos", params={"prompt": "a cat surfing",
                                                        "user_id": "user_123"})
        assert answer.status_code == 202
        body = answer.json()
        poll = {"Authorization": f"Bearer {body['token']}"}

        def finished() -> dict[str, object] | None:
            response = httpx.get(body["pollUrl"], headers=poll)
            if response.status_code != 200:
                return None
            job: dict[str, object] = response.json()
            return job if job["status"] in ("completed", "failed") else None

        job = wait_until(finished, 90, "the video job to end")
    finally:
        worker.stop(signal.SIGTERM)
    assert job["id"] == body["jobId"]
    assert job["status"] == "completed" and job["userId"] == "user_123"
    assert job["title"] == "Video: a cat surfing"
    assert job["result"] == {"type": "video",
                             "url": "https://cdn.example.com/user_123/a-cat-surfing.mp4"}
    assert job["metadata"] == {"attempt": 2}  # EXAMPLE_BUSY_ONCE: one retry, one job
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as reader:
        assert [j.id for j in reader.jobs.list("user_123").jobs] == [body["jobId"]]
