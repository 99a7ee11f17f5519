"""The Celery app the integration tests publish to and run in a real prefork worker.

The worker imports it with ``SEENN_TEST_WORKER=1``: it then sends its jobs to
the backend named in ``SEENN_API_KEY``/``SEENN_BASE_URL``. The test process
imports it as the web process would (its default tracker set up by a fixture).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery

import seenn
from seenn.integrations import celery as seenn_celery

app = Celery("seenn-tests")
app.conf.update(
    broker_url=os.environ.get("SEENN_TEST_REDIS", "redis://127.0.0.1:1") + "/0",
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_default_queue="celery",
)

if os.environ.get("SEENN_TEST_WORKER") == "1":
    seenn.configure(api_key=os.environ["SEENN_API_KEY"], base_url=os.environ["SEENN_BASE_URL"])
seenn_celery.instrument()


def _redis() -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url)


def _hold(task_id: str) -> None:
    """Tell the test this task runs (and in which process), then wait for its go."""
    connection = _redis()
    connection.set(f"pid:{task_id}", os.getpid())
    deadline = time.monotonic() + 120
    # Short waits: redis-py's socket timeout is shorter than the whole wait.
    while connection.blpop([f"go:{task_id}"], timeout=1) is None:
        assert time.monotonic() < deadline, "the test never said go"


@app.task(bind=True, max_retries=3)
@seenn.job("celery-step", user_id=lambda tag, **options: tag, result=True)
def step(self: Any, tag: str, *, fail: str | None = None, retry_until: int = 0,
         hold: bool = False) -> dict[str, Any]:
    """Report progress, maybe wait for the test, retry or fail as asked, else return."""
    job = seenn.current_job()
    assert job is not None
    job.set_progress(50, message="half way")
    if hold:
        _hold(self.request.id)
    if self.request.retries < retry_until:
        raise self.retry(countdown=0)
    if fail:
        raise ValueError(fail)
    return {"type": "text", "data": tag}


@app.task(bind=True, autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=0)
@seenn.job("celery-flaky", user_id=lambda tag, failures: tag)
def flaky(self: Any, tag: str, failures: int) -> str:
    """Fail with ConnectionError on the first ``failures`` attempts (autoretry_for)."""
    if self.request.retries < failures:
        raise ConnectionError("the service is busy")
    return tag


@app.task(bind=True, time_limit=2)
@seenn.job("celery-slow", user_id=lambda tag: tag)
def too_slow(self: Any, tag: str) -> None:
    """Report progress, then outlive the hard time limit."""
    seenn.current_job().set_progress(10)  # type: ignore[union-attr]
    _hold(self.request.id)


@app.task
def untracked(tag: str) -> str:
    """A task without @seenn.job: no job."""
    return tag


def _user_of(tag: str | None) -> str:
    if tag is None:
        raise LookupError("no user for this call")
    return tag


@app.task
@seenn.job("celery-picky", user_id=_user_of)
def picky(tag: str | None) -> None:
    """A task whose user_id callable raises for some arguments."""


@app.task(bind=True, max_retries=2)
@seenn.job("celery-parent", user_id=lambda tag: tag)
def spawner(self: Any, tag: str) -> None:
    """Enqueue a child on each attempt, and retry once: the children stay distinct."""
    step.apply_async((f"{tag}-child-{self.request.retries}",), queue="parked")
    # The child's start reaches the backend before this attempt ends: the next attempt
    # may run (and end the job) in another pool process, whose events do not wait for
    # this one's (a child of an ended job would start unlinked).
    seenn.force_flush(timeout=30)
    if self.request.retries < 1:
        raise self.retry(countdown=0)


@app.task(bind=True)
@seenn.job("celery-ignored", user_id=lambda tag: tag)
def ignored(self: Any, tag: str) -> None:
    """Tell Celery to leave the task's state alone (Ignore)."""
    from celery.exceptions import Ignore

    raise Ignore()


@app.task(bind=True, max_retries=1)
@seenn.job("celery-stretched", user_id=lambda tag: tag)
def stretched(self: Any, tag: str) -> None:
    """Retry twice, past the task's max_retries=1, by a per-call max_retries=3."""
    if self.request.retries < 2:
        raise self.retry(countdown=0, max_retries=3)
