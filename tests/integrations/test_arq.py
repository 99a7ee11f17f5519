"""arq: one job per enqueued job from enqueue_job() to its end, in a real arq worker over Redis."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import seenn
import seenn.server
from seenn.integrations import arq as seenn_arq
from seenn.server import RunningServer
from tests.faults import free_port
from tests.integrations import arq_app
from tests.integrations.conftest import (
    PYTHON,
    ROOT,
    WorkerProcess,
    fetch,
    running_pid,
    settled,
    showing,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.usefixtures("publisher")

WORKER = [PYTHON, "-m", "arq", "tests.integrations.arq_app.WorkerSettings"]
READY = "redis_version="  # arq logs it once connected, just before it starts polling


@pytest.fixture(scope="module")
def broker(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the Redis arq uses, for the tests' own signals to the jobs."""
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def worker(backend: RunningServer, redis_url: str, broker: redis.Redis) -> Iterator[WorkerProcess]:
    """An arq worker (``arq tests.integrations.arq_app.WorkerSettings``) in a subprocess."""
    process = WorkerProcess(WORKER, worker_env(backend, redis_url), ready=READY)
    yield process
    process.stop(signal.SIGTERM)
    assert not [line for line in process.output if line.startswith("seenn:")], \
        "the worker logged seenn errors:\n" + "".join(process.output[-60:])


def enqueue(redis_url: str, function: str, *args: Any, **kwargs: Any) -> str:
    """Enqueue a job as a web process would (a pool of its own); return arq's job id."""
    async def go() -> str:
        pool = await create_pool(RedisSettings.from_dsn(redis_url),
                                 default_queue_name=arq_app.QUEUE)
        try:
            job = await pool.enqueue_job(function, *args, **kwargs)
        finally:
            await pool.aclose()
        assert job is not None
        return str(job.job_id)

    return asyncio.run(go())


def test_importing_the_integration_does_not_import_arq() -> None:
    """`import seenn.integrations.arq` leaves arq unimported until instrument()."""
    code = "import sys, seenn.integrations.arq; print('arq' in sys.modules)"
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=True)
    assert out.stdout.strip() == "False"


def test_the_job_exists_queued_with_the_arq_job_id_before_any_worker_runs(
        client: seenn.SeennClient, redis_url: str) -> None:
    """enqueue_job() creates the job at once, queued in its arq queue, with arq's job id."""
    job_id = enqueue(redis_url, "step", "user-parked", _queue_name="arq:parked")  # no worker
    assert seenn.force_flush(timeout=10)
    job = client.jobs.get(job_id)
    assert job.id == job_id
    assert job.status == "queued"
    assert job.queue is not None and job.queue.queue_name == "arq:parked"
    assert job.user_id == "user-parked"
    assert job.job_type == "arq-step"


def test_a_job_enqueued_inside_a_tracked_job_is_its_child(
        client: seenn.SeennClient, redis_url: str) -> None:
    """enqueue_job() inside a tracked block makes the job a child of the block's job."""
    with seenn.track("request", user_id="user-parent") as parent:
        job_id = enqueue(redis_url, "step", "user-child", _queue_name="arq:parked")
    assert seenn.force_flush(timeout=10)
    job = client.jobs.get(job_id)
    assert job.parent is not None and job.parent.parent_job_id == parent.id


def test_a_job_id_given_to_enqueue_job_is_the_job_id(
        client: seenn.SeennClient, redis_url: str) -> None:
    """_job_id= names the job; enqueueing the same id again makes no second job."""
    enqueue(redis_url, "step", "user-named", _job_id="render-42", _queue_name="arq:parked")

    async def again() -> object:
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        try:
            return await pool.enqueue_job("step", "user-other", _job_id="render-42",
                                          _queue_name="arq:parked")
        finally:
            await pool.aclose()

    assert asyncio.run(again()) is None  # arq refuses it
    assert seenn.force_flush(timeout=10)
    assert client.jobs.get("render-42").user_id == "user-named"
    assert client.jobs.list("user-other").jobs == []


def test_progress_then_success_with_the_mapped_result(
        client: seenn.SeennClient, broker: redis.Redis, redis_url: str,
        worker: WorkerProcess) -> None:
    """The worker's progress reaches the backend, then the completion with the job's result."""
    job_id = enqueue(redis_url, "step", "user-ok", hold=True)
    running_pid(broker, job_id)
    job = showing(client, job_id, 50)
    assert job.status == "running" and job.message == "half way"
    broker.rpush(f"go:{job_id}", 1)
    job = settled(client, job_id)
    assert job.status == "completed" and job.progress == 100
    assert job.result is not None and job.result.data == "user-ok"
    assert [j.id for j in client.jobs.list("user-ok").jobs] == [job_id]  # one job
    assert broker.exists(seenn_arq.SIDE_KEY_PREFIX + job_id) == 0  # the carrier is gone


def test_an_exception_fails_the_job_with_its_type_and_message(
        client: seenn.SeennClient, redis_url: str, worker: WorkerProcess) -> None:
    """A job raising ValueError ends failed, code ValueError, with the message."""
    job_id = enqueue(redis_url, "step", "user-fail", fail="bad input")
    job = settled(client, job_id)
    assert job.status == "failed" and job.error is not None
    assert (job.error.code, job.error.message) == ("ValueError", "bad input")


def test_retries_are_one_job_that_shows_the_attempt_and_fails_only_when_arq_gives_up(
        client: seenn.SeennClient, redis_url: str, worker: WorkerProcess) -> None:
    """arq.Retry keeps one job: done on try 2; past max_tries=3 it fails once, with the cause."""
    recovered = enqueue(redis_url, "step", "user-retry", retry_until=1)
    given_up = enqueue(redis_url, "flaky", "user-gave-up", 5)  # max_tries=3
    job = settled(client, recovered)
    assert job.status == "completed"
    assert job.metadata == {"attempt": 2}
    assert [j.id for j in client.jobs.list("user-retry").jobs] == [recovered]
    job = settled(client, given_up)
    assert job.status == "failed" and job.error is not None
    assert (job.error.code, job.error.message) == ("ConnectionError", "the service is busy")
    assert job.metadata == {"attempt": 3} and job.message == "Attempt 3 of 3"
    assert [j.id for j in client.jobs.list("user-gave-up").jobs] == [given_up]


def test_a_job_past_its_timeout_fails_with_job_timeout(
        client: seenn.SeennClient, broker: redis.Redis, redis_url: str,
        worker: WorkerProcess) -> None:
    """arq.func(timeout=1): the job cancelled by arq's timeout ends failed, JOB_TIMEOUT."""
    job_id = enqueue(redis_url, "too_slow", "user-slow")
    running_pid(broker, job_id)
    job = settled(client, job_id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "JOB_TIMEOUT"
    assert job.progress == 10


def test_an_aborted_job_fails_as_cancelled(
        client: seenn.SeennClient, broker: redis.Redis, redis_url: str,
        worker: WorkerProcess) -> None:
    """Job.abort() of a running job (allow_abort_jobs) ends it failed, CANCELLED."""
    job_id = enqueue(redis_url, "step", "user-aborted", hold=True)
    running_pid(broker, job_id)

    async def abort() -> bool:
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        try:
            return bool(await Job(job_id, pool, _queue_name=arq_app.QUEUE).abort(timeout=30))
        finally:
            await pool.aclose()

    assert asyncio.run(abort())
    job = settled(client, job_id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "CANCELLED"


def test_a_job_that_expires_before_it_runs_fails(
        client: seenn.SeennClient, redis_url: str, worker: WorkerProcess) -> None:
    """A job arq ends without running it (expired in the queue) ends failed too."""
    job_id = enqueue(redis_url, "step", "user-expired", _defer_by=0.5, _expires=0.1)
    job = settled(client, job_id)
    assert job.status == "failed" and job.error is not None
    assert (job.error.code, job.error.message) == ("JobExecutionFailed", "job expired")


def test_a_hook_error_at_enqueue_never_breaks_enqueueing(
        client: seenn.SeennClient, redis_url: str, worker: WorkerProcess,
        caplog: pytest.LogCaptureFixture) -> None:
    """A user_id= callable raising at enqueue is logged; enqueued anyway, the worker tracks it."""
    with caplog.at_level(logging.ERROR, logger="seenn"):
        job_id = enqueue(redis_url, "user_in_worker", "user-from-worker")
    assert "no ctx where the job is enqueued" in caplog.text
    job = settled(client, job_id)
    assert job.id == job_id
    assert job.status == "completed" and job.user_id == "user-from-worker"


def test_an_enqueue_that_fails_fails_its_job_and_raises_as_before(
        client: seenn.SeennClient) -> None:
    """Redis unreachable: enqueue_job() raises arq's error; the job started for it is failed."""
    async def go() -> None:
        dead = ArqRedis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
        try:
            await dead.enqueue_job("step", "user-unreachable")
        finally:
            await dead.aclose()

    with pytest.raises(redis.ConnectionError):
        asyncio.run(go())
    assert seenn.force_flush(timeout=10)
    [job] = client.jobs.list("user-unreachable").jobs
    job = client.jobs.get(job.id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "ENQUEUE_FAILED"


def test_a_function_without_seenn_job_makes_no_job(
        client: seenn.SeennClient, redis_url: str, worker: WorkerProcess) -> None:
    """A function without @seenn.job is not tracked."""
    untracked = enqueue(redis_url, "untracked", "user-untracked")
    tracked = enqueue(redis_url, "step", "user-after-untracked")
    settled(client, tracked)
    with pytest.raises(seenn.NotFoundError):
        client.jobs.get(untracked)


def test_instrument_twice_is_harmless(client: seenn.SeennClient, redis_url: str) -> None:
    """A second instrument() patches nothing twice: one job per enqueue."""
    seenn_arq.instrument()
    seenn_arq.instrument(functions=arq_app.FUNCTIONS)
    assert seenn_arq.is_instrumented()
    assert not hasattr(ArqRedis.enqueue_job.__wrapped__, "__wrapped__")  # type: ignore[attr-defined]
    job_id = enqueue(redis_url, "step", "user-twice", _queue_name="arq:parked")
    assert seenn.force_flush(timeout=10)
    assert [j.id for j in client.jobs.list("user-twice").jobs] == [job_id]


def test_uninstrument_stops_tracking_at_enqueue(client: seenn.SeennClient, redis_url: str) -> None:
    """After uninstrument(), enqueue_job() starts no job; instrument() brings it back."""
    seenn_arq.uninstrument()
    try:
        assert not seenn_arq.is_instrumented()
        assert not hasattr(ArqRedis.enqueue_job, "__wrapped__")  # arq's own method again
        untracked = enqueue(redis_url, "step", "user-uninstrumented", _queue_name="arq:parked")
    finally:
        seenn_arq.instrument()
    tracked = enqueue(redis_url, "step", "user-reinstrumented", _queue_name="arq:parked")
    assert seenn.force_flush(timeout=10)
    with pytest.raises(seenn.NotFoundError):
        client.jobs.get(untracked)
    assert client.jobs.get(tracked).status == "queued"


def test_instrument_refuses_what_is_not_a_function() -> None:
    """instrument(functions=) names the field when an item is not an arq function."""
    with pytest.raises(seenn.ValidationError, match="functions"):
        seenn_arq.instrument(functions=[42])
    with pytest.raises(seenn.ValidationError, match="functions"):
        seenn_arq.instrument(functions="tests.integrations.arq_app.step")


def test_a_worker_killed_mid_job_ends_failed_by_the_stale_limit(
        backend: RunningServer, broker: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    """SIGKILL of the worker: nothing in arq notices; seenn serve's stale limit fails the job."""
    queue = "arq:seenn-killed"
    with seenn.server.running(tmp_path / "stale.db", stale_after=10) as stale, \
            seenn.SeennClient(stale.api_key, base_url=stale.url) as reader:
        seenn.configure(api_key=stale.api_key, base_url=stale.url)
        process = WorkerProcess(WORKER, worker_env(stale, redis_url, SEENN_TEST_ARQ_QUEUE=queue),
                                ready=READY)
        try:
            job_id = enqueue(redis_url, "step", "user-killed", hold=True, _queue_name=queue)
            pid = running_pid(broker, job_id)
            showing(reader, job_id, 50)
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            job = settled(reader, job_id)
            seen_after = time.monotonic() - killed_at
        finally:
            process.stop(signal.SIGKILL)
            seenn.force_flush(timeout=10)
            seenn.configure(api_key=backend.api_key, base_url=backend.url)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "WORKER_LOST"
    assert job.progress == 50
    print(f"\nSIGKILL to failed on the backend: {seen_after:.2f} s")


def test_a_killed_workers_job_runs_again_as_the_next_attempt_of_the_same_job(
        client: seenn.SeennClient, backend: RunningServer, broker: redis.Redis,
        redis_url: str) -> None:
    """After a SIGKILL, arq's next try of the job resumes the same job: one job, attempt 2."""
    queue = "arq:seenn-rerun"
    env = worker_env(backend, redis_url, SEENN_TEST_ARQ_QUEUE=queue)
    first = WorkerProcess(WORKER, env, ready=READY)
    try:
        job_id = enqueue(redis_url, "step", "user-rerun", hold_once=True, _queue_name=queue)
        pid = running_pid(broker, job_id)
        showing(client, job_id, 50)
        os.kill(pid, signal.SIGKILL)
    finally:
        first.stop(signal.SIGKILL)
    # What arq's expiry of the key does job_timeout + 10 s after the try started.
    assert broker.delete(f"arq:in-progress:{job_id}") == 1
    second = WorkerProcess(WORKER, env, ready=READY)
    try:
        job = settled(client, job_id)
    finally:
        second.stop(signal.SIGTERM)
    assert job.status == "completed" and job.metadata == {"attempt": 2}
    assert [j.id for j in client.jobs.list("user-rerun").jobs] == [job_id]


def test_a_stopping_workers_job_waits_for_its_next_try(
        client: seenn.SeennClient, backend: RunningServer, broker: redis.Redis,
        redis_url: str) -> None:
    """SIGTERM cancels a running job and arq keeps it for another try: the job says it waits."""
    queue = "arq:seenn-stopped"
    process = WorkerProcess(WORKER, worker_env(backend, redis_url, SEENN_TEST_ARQ_QUEUE=queue),
                            ready=READY)
    try:
        job_id = enqueue(redis_url, "step", "user-stopped", hold=True, _queue_name=queue)
        running_pid(broker, job_id)
        showing(client, job_id, 50)
    finally:
        assert process.stop(signal.SIGTERM) == 0
    job = wait_until(lambda: (job := fetch(client, job_id)) is not None
                     and job.message == "Waiting for attempt 2: the worker stopped" and job,
                     30, "the job to wait for its next try")
    assert job.status == "queued"  # back in line: the stale limit does not count the wait
    assert job.queue is not None and job.queue.queue_name == queue


def children_of(client: seenn.SeennClient, job_id: str) -> list[tuple[int, str | None]]:
    """The (child index, user id) of a job's children linked to it, by index."""
    family = client.jobs.children(job_id)
    return sorted((child.parent.child_index, child.user_id) for child in family.children
                  if child.parent is not None and child.parent.child_index is not None)


def test_a_retried_jobs_children_stay_linked_under_distinct_indices(
        client: seenn.SeennClient, redis_url: str, worker: WorkerProcess) -> None:
    """arq.Retry stores the job as it is: the second try's child is child 1, not refused."""
    job_id = enqueue(redis_url, "spawner", "user-spawner")
    job = settled(client, job_id)
    assert job.status == "completed" and job.metadata == {"attempt": 2}
    assert children_of(client, job_id) == [(0, "user-spawner-child-1"),
                                           (1, "user-spawner-child-2")]


def test_a_try_stopped_with_its_worker_hands_its_children_count_to_the_next(
        client: seenn.SeennClient, backend: RunningServer, broker: redis.Redis,
        redis_url: str) -> None:
    """A try cancelled by a stopping worker stores the job as it is for the next worker's try."""
    queue = "arq:seenn-stopped-parent"
    env = worker_env(backend, redis_url, SEENN_TEST_ARQ_QUEUE=queue)
    first = WorkerProcess(WORKER, env, ready=READY)
    try:
        job_id = enqueue(redis_url, "spawner", "user-stopped-parent", hold=True,
                         _queue_name=queue)
        running_pid(broker, job_id)
        wait_until(lambda: client.jobs.list("user-stopped-parent-child-1").jobs, 60,
                   "the first try's child")
    finally:
        assert first.stop(signal.SIGTERM) == 0
    second = WorkerProcess(WORKER, env, ready=READY)
    try:
        job = settled(client, job_id)
    finally:
        second.stop(signal.SIGTERM)
    assert job.status == "completed" and job.metadata == {"attempt": 2}
    assert children_of(client, job_id) == [(0, "user-stopped-parent-child-1"),
                                           (1, "user-stopped-parent-child-2")]


def test_a_job_id_given_again_after_arq_forgot_its_job_is_tracked_as_a_new_run(
        client: seenn.SeennClient, broker: redis.Redis, redis_url: str,
        worker: WorkerProcess) -> None:
    """_job_id= reused once the first run ended and arq dropped it: the run is "<id>~2"."""
    first = enqueue(redis_url, "step", "user-nightly", _job_id="nightly-7")
    assert settled(client, first).status == "completed"
    # What the expiry of keep_result (an hour by default) does.
    wait_until(lambda: broker.delete(f"arq:result:{first}"), 60, "arq to store the result")
    assert enqueue(redis_url, "step", "user-nightly", _job_id="nightly-7") == first
    job = settled(client, "nightly-7~2")
    assert job.status == "completed" and job.result is not None
    assert client.jobs.get("nightly-7").status == "completed"
    assert sorted(j.id for j in client.jobs.list("user-nightly").jobs) == ["nightly-7",
                                                                           "nightly-7~2"]
    assert broker.get(seenn_arq.RUNS_KEY_PREFIX + "nightly-7") == b"2"
