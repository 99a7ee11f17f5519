"""Celery: one job per task from delay() to its end, in a real prefork worker over Redis."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis

import seenn
from seenn.server import RunningServer
from tests.faults import free_port
from tests.integrations import celery_app
from tests.integrations.conftest import (
    PYTHON,
    WorkerProcess,
    fetch,
    running_pid,
    settled,
    showing,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.usefixtures("publisher")


@pytest.fixture(scope="module")
def broker(redis_url: str) -> Iterator[redis.Redis]:
    """The Redis the Celery app publishes to, and a client for the tests' own signals."""
    celery_app.app.conf.broker_url = redis_url + "/0"
    connection = redis.Redis.from_url(redis_url + "/0")
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def worker(backend: RunningServer, redis_url: str, broker: redis.Redis) -> Iterator[WorkerProcess]:
    """A Celery prefork worker (two children, each replaced after one task) in a subprocess."""
    process = WorkerProcess(
        [PYTHON, "-m", "celery", "-A", "tests.integrations.celery_app", "worker", "-P",
         "prefork", "-c", "2", "--max-tasks-per-child", "1", "-Q", "celery",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
        worker_env(backend, redis_url), ready=" ready.")
    yield process
    process.stop(signal.SIGTERM)


def test_the_job_exists_queued_with_the_task_id_before_any_worker_runs(
        client: seenn.SeennClient, broker: redis.Redis) -> None:
    """delay() creates the job at once, queued in the task's queue, with the task id as its id."""
    result = celery_app.step.apply_async(("user-parked",), queue="parked")  # nobody consumes it
    assert seenn.force_flush(timeout=10)
    job = client.jobs.get(result.id)
    assert job.id == result.id
    assert job.status == "queued"
    assert job.queue is not None and job.queue.queue_name == "parked"
    assert job.user_id == "user-parked"
    assert job.job_type == "celery-step"


def test_progress_then_success_with_the_mapped_result(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """The worker's progress reaches the backend, then the completion with the task's result."""
    result = celery_app.step.delay("user-ok", hold=True)
    running_pid(broker, result.id)
    job = showing(client, result.id, 50)
    assert job.status == "running" and job.message == "half way"
    broker.rpush(f"go:{result.id}", 1)
    job = settled(client, result.id)
    assert job.status == "completed" and job.progress == 100
    assert job.result is not None and job.result.data == "user-ok"
    assert [j.id for j in client.jobs.list("user-ok").jobs] == [result.id]  # one job


def test_an_exception_fails_the_job_with_its_type_and_message(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """A task raising ValueError ends its job failed, code ValueError, with the message."""
    result = celery_app.step.delay("user-fail", fail="bad input")
    try:
        job = settled(client, result.id, 20)
    except AssertionError:
        print("JOB", fetch(client, result.id))
        print("".join(worker.output[-80:]))
        raise
    assert job.status == "failed"
    assert job.error is not None
    assert (job.error.code, job.error.message) == ("ValueError", "bad input")


def test_a_retry_that_succeeds_is_one_job_that_shows_the_attempt(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """self.retry() keeps the job: it completes on the second attempt, which it names."""
    result = celery_app.step.delay("user-retry", retry_until=1)
    job = settled(client, result.id)
    assert job.status == "completed"
    assert job.metadata == {"attempt": 2}
    assert [j.id for j in client.jobs.list("user-retry").jobs] == [result.id]


def test_autoretry_for_keeps_one_job_and_fails_it_only_when_celery_gives_up(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """autoretry_for: retried attempts stay one job; past max_retries it fails once."""
    recovered = celery_app.flaky.delay("user-auto-ok", 1)
    given_up = celery_app.flaky.delay("user-auto-fail", 5)  # max_retries=2: three attempts
    job = settled(client, recovered.id)
    assert job.status == "completed" and job.metadata == {"attempt": 2}
    job = settled(client, given_up.id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "ConnectionError"
    assert job.metadata == {"attempt": 3}
    assert len(client.jobs.list("user-auto-fail").jobs) == 1


def test_a_pool_process_killed_mid_job_fails_the_job_from_the_main_process(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """SIGKILL of the child running a task: the main process fails the job (WorkerLostError)."""
    result = celery_app.step.delay("user-killed", hold=True)
    pid = running_pid(broker, result.id)
    showing(client, result.id, 50)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    job = settled(client, result.id)
    seen_after = time.monotonic() - killed_at
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "WorkerLostError"
    print(f"\nSIGKILL to failed on the backend: {seen_after:.2f} s")


def test_a_hard_time_limit_fails_the_job_from_the_main_process(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """A task past its hard time limit is killed; its job ends failed, TimeLimitExceeded."""
    result = celery_app.too_slow.delay("user-slow")
    running_pid(broker, result.id)
    job = settled(client, result.id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "TimeLimitExceeded"


def test_revoke_with_terminate_cancels_the_job(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """revoke(terminate=True) of a running task ends its job failed with code CANCELLED."""
    result = celery_app.step.delay("user-revoked", hold=True)
    running_pid(broker, result.id)
    celery_app.app.control.revoke(result.id, terminate=True, signal="SIGKILL")
    job = settled(client, result.id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "CANCELLED"


def test_a_task_sent_by_name_without_seenn_is_tracked_by_the_worker(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """send_task() from a process that does not know the task: the worker starts the job."""
    celery_app.seenn_celery.uninstrument()
    try:
        result = celery_app.app.send_task("tests.integrations.celery_app.step",
                                          args=("user-by-name",))
    finally:
        celery_app.seenn_celery.instrument()
    job = settled(client, result.id)
    assert job.id == result.id
    assert job.status == "completed" and job.user_id == "user-by-name"


def test_a_task_without_seenn_job_makes_no_job(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """A task whose function has no @seenn.job is not tracked."""
    result = celery_app.untracked.delay("user-untracked")
    assert result.id
    tracked = celery_app.step.delay("user-after-untracked")
    settled(client, tracked.id)
    with pytest.raises(seenn.NotFoundError):
        client.jobs.get(result.id)


def test_a_task_enqueued_inside_a_tracked_job_is_its_child(
        client: seenn.SeennClient, broker: redis.Redis) -> None:
    """delay() inside a tracked block makes the task's job a child of the block's job."""
    with seenn.track("request", user_id="user-parent") as parent:
        result = celery_app.step.apply_async(("user-child",), queue="parked")
    assert seenn.force_flush(timeout=10)
    job = client.jobs.get(result.id)
    assert job.parent is not None and job.parent.parent_job_id == parent.id


def test_a_raising_user_id_callable_never_breaks_publishing(
        client: seenn.SeennClient, broker: redis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    """A decoration's callable that raises at publish is logged; the task is still sent."""
    result = celery_app.picky.apply_async((None,), queue="parked")
    assert result.id
    assert seenn.force_flush(timeout=10)
    with pytest.raises(seenn.NotFoundError):
        client.jobs.get(result.id)
    assert any("before_task_publish" in record.getMessage() for record in caplog.records)
    assert broker.llen("parked") >= 1


def test_instrument_is_idempotent_and_uninstrument_stops_tracking(
        client: seenn.SeennClient, broker: redis.Redis) -> None:
    """instrument() twice connects each hook once; after uninstrument() no job is made."""
    from celery import signals

    def ours() -> list[object]:
        return [r for r in signals.before_task_publish.receivers
                if "seenn" in str(r[0])]

    seenn_celery = celery_app.seenn_celery
    seenn_celery.instrument()
    assert len(ours()) == 1 and seenn_celery.is_instrumented()
    seenn_celery.uninstrument()
    try:
        assert ours() == [] and not seenn_celery.is_instrumented()
        result = celery_app.step.apply_async(("user-untracked-publish",), queue="parked")
        assert seenn.force_flush(timeout=10)
        with pytest.raises(seenn.NotFoundError):
            client.jobs.get(result.id)
    finally:
        seenn_celery.instrument()


def test_importing_the_integration_does_not_import_celery() -> None:
    """seenn.integrations.celery imports Celery only when instrument() is called."""
    import subprocess
    import sys

    code = ("import sys, seenn.integrations.celery, seenn.integrations\n"
            "assert 'celery' not in sys.modules, sorted(sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_retried_task_carries_its_job_as_it_is_now(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """Each attempt's children are linked to the one job under distinct indices."""
    # countdown: the publisher's start lands before the first attempt runs (a child's
    # start that finds its parent unknown, then finished, is started unlinked).
    result = celery_app.spawner.apply_async(("user-spawner",), countdown=1)
    job = settled(client, result.id)
    assert job.status == "completed" and job.metadata == {"attempt": 2}
    family = client.jobs.children(result.id)
    assert sorted(c.parent.child_index for c in family.children if c.parent) == [0, 1]
    assert {c.user_id for c in family.children} == {"user-spawner-child-0",
                                                     "user-spawner-child-1"}


def test_ignore_ends_the_job_as_celery_ends_the_task(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """A task raising Ignore is done for Celery: its job completes (no WORKER_LOST later)."""
    result = celery_app.ignored.delay("user-ignored")
    assert settled(client, result.id).status == "completed"


def test_a_chain_is_not_a_family(client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """A task linked after another (a chain, a callback) is its own job, not a child."""
    first = celery_app.step.apply_async(("user-chain-a",),
                                        link=celery_app.step.si("user-chain-b"))
    settled(client, first.id)
    second = wait_until(lambda: client.jobs.list("user-chain-b").jobs, 60, "the linked task")
    job = settled(client, second[0].id)
    assert job.status == "completed" and job.parent is None


def test_an_eager_retry_is_one_job(client: seenn.SeennClient, broker: redis.Redis) -> None:
    """apply() runs a retry in the same process with no message: still one job, completed."""
    result = celery_app.step.apply(("user-eager",), kwargs={"retry_until": 1})
    assert result.successful()
    assert seenn.force_flush(timeout=30)
    job = client.jobs.get(result.id)
    assert job.status == "completed" and job.metadata == {"attempt": 2}
    assert len(client.jobs.list("user-eager").jobs) == 1


def test_a_publish_that_fails_makes_no_job(
        client: seenn.SeennClient, broker: redis.Redis) -> None:
    """The broker refusing the message: apply_async() raises and no job was started."""
    from kombu.exceptions import OperationalError

    dead = celery_app.app.connection_for_write(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(OperationalError):
        celery_app.step.apply_async(("user-unsent",), retry=False, connection=dead)
    assert seenn.force_flush(timeout=10)
    assert client.jobs.list("user-unsent").jobs == []


def test_an_attempt_past_the_tasks_max_retries_does_not_claim_a_smaller_total(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """self.retry(max_retries=3) on a task of max_retries=1: "Attempt 3", never "3 of 2"."""
    result = celery_app.stretched.delay("user-stretched")
    job = settled(client, result.id)
    assert job.status == "completed" and job.metadata == {"attempt": 3}
    assert job.message == "Attempt 3"
