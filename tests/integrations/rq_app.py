"""The RQ jobs the integration tests enqueue, and the settings module of their workers.

The worker loads it with ``rq worker -c tests.integrations.rq_app`` and
``SEENN_TEST_WORKER=1``: it then sends its jobs to the backend named in
``SEENN_API_KEY``/``SEENN_BASE_URL``, and has called ``instrument()`` before
it forks a work horse. The test process imports it as the web process would
(its default tracker set up by a fixture).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import redis
import rq
from rq import Retry, get_current_job

import seenn
from seenn.integrations import rq as seenn_rq

REDIS_URL = os.environ.get("SEENN_TEST_REDIS", "redis://127.0.0.1:1") + "/1"
WORKER = os.environ.get("SEENN_TEST_WORKER") == "1"

if WORKER:
    seenn.configure(api_key=os.environ["SEENN_API_KEY"], base_url=os.environ["SEENN_BASE_URL"])
seenn_rq.instrument()


def connection() -> redis.Redis:
    """A client of the tests' Redis database (for the jobs and the tests' own signals)."""
    return redis.Redis.from_url(REDIS_URL)


def _attempt(job_id: str) -> int:
    """Which run of this job this is, counted by the job itself (1 for the first)."""
    return int(connection().incr(f"runs:{job_id}"))


def _hold(job_id: str) -> None:
    """Tell the test this job runs (and in which process), then wait for its go."""
    client = connection()
    client.set(f"pid:{job_id}", os.getpid())
    deadline = time.monotonic() + 120
    # Short waits: redis-py's socket timeout is shorter than the whole wait.
    while client.blpop([f"go:{job_id}"], timeout=1) is None:
        assert time.monotonic() < deadline, "the test never said go"


def _user(tag: str, **options: Any) -> str:
    if tag.startswith("boom-at-enqueue") and not WORKER:
        raise RuntimeError("a user_id callable that fails in the web process")
    return tag


@seenn.job("rq-step", user_id=_user, result=True)
def step(tag: str, *, fail: str | None = None, fail_until: int = 0,
         hold: bool = False) -> dict[str, Any]:
    """Report progress, maybe wait for the test (first run only), fail as asked, else return."""
    job = seenn.current_job()
    assert job is not None
    rq_job = get_current_job()
    assert rq_job is not None
    run = _attempt(rq_job.id)
    job.set_progress(50, message="half way")
    if hold and run == 1:
        _hold(rq_job.id)
    if run <= fail_until:
        raise ConnectionError("the service is busy")
    if fail:
        raise ValueError(fail)
    return {"type": "text", "data": tag}


@seenn.job("rq-again", user_id=lambda tag, times, max_retries: tag)
def again(tag: str, times: int, max_retries: int) -> Retry | str:
    """Return ``Retry(max=max_retries)`` on the first ``times`` runs, then the tag."""
    rq_job = get_current_job()
    assert rq_job is not None
    if _attempt(rq_job.id) <= times:
        return Retry(max=max_retries)
    return tag


@seenn.job("rq-parent", user_id=lambda tag: tag)
def spawner(tag: str) -> str:
    """Enqueue a child job on each run; the first run fails (RQ retries it)."""
    rq_job = get_current_job()
    assert rq_job is not None
    run = _attempt(rq_job.id)
    rq.Queue("rq-parked", connection=connection()).enqueue(step, f"{tag}-child-{run}")
    if run == 1:
        raise ConnectionError("the service is busy")
    return tag


@seenn.job("rq-async", user_id=lambda tag: tag, result=True)
async def step_async(tag: str) -> dict[str, Any]:
    """An async job: RQ runs it with asyncio.run in the work horse."""
    await asyncio.sleep(0)
    job = seenn.current_job()
    assert job is not None
    job.set_progress(30, message="awaited")
    return {"type": "text", "data": tag.upper()}


def untracked(tag: str) -> str:
    """A job without @seenn.job: no job."""
    return tag


class SpawnWorker(rq.SpawnWorker):
    """RQ's SpawnWorker, from this module: a spawned work horse imports it, so instruments RQ.

    A SpawnWorker's work horse is a new interpreter that imports only the worker
    class's module before it runs the job.
    """


def broken_callback(job: Any, connection: Any, result: Any) -> None:
    """An on_success callback that raises: RQ fails the job."""
    raise RuntimeError("the callback broke")
