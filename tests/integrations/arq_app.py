"""The arq functions the integration tests enqueue, and the settings of the real worker.

The worker (``python -m arq tests.integrations.arq_app.WorkerSettings``) imports
it with ``SEENN_TEST_WORKER=1``: it then sends its jobs to the backend named in
``SEENN_API_KEY``/``SEENN_BASE_URL`` and reads the queue named in
``SEENN_TEST_ARQ_QUEUE``. The test process imports it as the web process would
(its default tracker set up by a fixture).
"""

from __future__ import annotations

import os
from typing import Any

import arq
from arq.connections import RedisSettings

import seenn
from seenn.integrations import arq as seenn_arq

REDIS_URL = os.environ.get("SEENN_TEST_REDIS", "redis://127.0.0.1:1")
QUEUE = os.environ.get("SEENN_TEST_ARQ_QUEUE", "arq:seenn-tests")

if os.environ.get("SEENN_TEST_WORKER") == "1":
    seenn.configure(api_key=os.environ["SEENN_API_KEY"], base_url=os.environ["SEENN_BASE_URL"])


async def _hold(ctx: dict[str, Any]) -> None:
    """Tell the test this job runs (and in which process), then wait for its go."""
    redis = ctx["redis"]
    await redis.set(f"pid:{ctx['job_id']}", os.getpid())
    await redis.blpop([f"go:{ctx['job_id']}"], timeout=120)


@seenn.job("arq-step", user_id=lambda ctx, tag, **options: tag, result=True)
async def step(ctx: dict[str, Any], tag: str, *, fail: str | None = None, retry_until: int = 0,
               hold: bool = False, hold_once: bool = False) -> dict[str, Any]:
    """Report progress, maybe wait for the test (each try, or the first), retry, fail or return."""
    job = seenn.current_job()
    assert job is not None
    job.set_progress(50, message="half way")
    if hold or (hold_once and ctx["job_try"] == 1):
        await _hold(ctx)
    if ctx["job_try"] <= retry_until:
        # A second apart: each try's first progress is then sent on its own, not
        # coalesced into the next event (see the exporter's progress_interval).
        raise arq.Retry(defer=1)
    if fail:
        raise ValueError(fail)
    return {"type": "text", "data": tag}


@seenn.job("arq-flaky", user_id=lambda ctx, tag, failures: tag)
async def flaky(ctx: dict[str, Any], tag: str, failures: int) -> str:
    """Retry (from a ConnectionError) on the first ``failures`` tries."""
    try:
        if ctx["job_try"] <= failures:
            raise ConnectionError("the service is busy")
    except ConnectionError as exc:
        raise arq.Retry(defer=1) from exc
    return tag


@seenn.job("arq-slow", user_id=lambda ctx, tag: tag)
async def too_slow(ctx: dict[str, Any], tag: str) -> None:
    """Report progress, then outlive the function's timeout."""
    seenn.current_job().set_progress(10)  # type: ignore[union-attr]
    await _hold(ctx)


@seenn.job("arq-parent", user_id=lambda ctx, tag, **options: tag)
async def spawner(ctx: dict[str, Any], tag: str, *, hold: bool = False) -> str:
    """Enqueue a child job on each try; the first try retries (or, with hold, waits)."""
    await ctx["redis"].enqueue_job("step", f"{tag}-child-{ctx['job_try']}",
                                   _queue_name="arq:parked")
    if ctx["job_try"] == 1:
        if hold:
            await _hold(ctx)
        raise arq.Retry(defer=0.1)
    return tag


def _user_from_ctx(ctx: dict[str, Any] | None, tag: str) -> str:
    """A user id only a worker can compute: it raises where the job is enqueued (no ctx)."""
    assert ctx is not None, "no ctx where the job is enqueued"
    return tag


@seenn.job("arq-worker-only", user_id=_user_from_ctx)
async def user_in_worker(ctx: dict[str, Any], tag: str) -> str:
    """A job whose @seenn.job callable fails at enqueue."""
    return tag


async def untracked(ctx: dict[str, Any], tag: str) -> str:
    """A function without @seenn.job: no job."""
    return tag


FUNCTIONS = [step, arq.func(flaky, max_tries=3), arq.func(too_slow, timeout=1),
             user_in_worker, untracked, spawner]

seenn_arq.instrument(functions=FUNCTIONS)


class WorkerSettings:
    """The worker of the tests: quick polling, ten jobs at a time, jobs that can be aborted."""

    functions = FUNCTIONS
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    queue_name = QUEUE
    poll_delay = 0.05
    job_timeout = 60
    max_tries = 5
    allow_abort_jobs = True
