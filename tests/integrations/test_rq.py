"""RQ: one job per RQ job from enqueue() to its end, in real forking and simple workers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from rq import Callback, Queue, RateLimit, Retry
from rq.command import send_stop_job_command
from rq.job import Job

import seenn
import seenn.propagation
from seenn.integrations import rq as seenn_rq
from seenn.server import RunningServer
from tests.integrations import rq_app
from tests.integrations.conftest import (
    PYTHON,
    ROOT,
    WorkerProcess,
    running_pid,
    settled,
    showing,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.usefixtures("publisher")


@pytest.fixture(scope="module")
def broker(redis_url: str) -> Iterator[redis.Redis]:
    """The Redis database the jobs go through, and a client for the tests' own signals."""
    rq_app.REDIS_URL = redis_url + "/1"
    connection = rq_app.connection()
    yield connection
    connection.close()


def start_worker(backend: RunningServer, redis_url: str, queue: str,
                 *extra: str) -> WorkerProcess:
    """``rq worker -c tests.integrations.rq_app`` on one queue, in a subprocess."""
    return WorkerProcess(
        [PYTHON, "-m", "rq.cli", "worker", "-c", "tests.integrations.rq_app", "--url",
         redis_url + "/1", "--name", f"seenn-{queue}", *extra, queue],
        worker_env(backend, redis_url), ready="Listening on")


@pytest.fixture(scope="module")
def worker(backend: RunningServer, redis_url: str, broker: redis.Redis) -> Iterator[WorkerProcess]:
    """RQ's default worker: it forks a work horse for each job."""
    process = start_worker(backend, redis_url, "rq-tests")
    yield process
    process.stop(signal.SIGTERM)


@pytest.fixture(scope="module")
def simple_worker(backend: RunningServer, redis_url: str,
                  broker: redis.Redis) -> Iterator[WorkerProcess]:
    """RQ's SimpleWorker (it runs each job in its own process), with RQ's scheduler."""
    process = start_worker(backend, redis_url, "rq-simple", "-w", "rq.worker.SimpleWorker",
                           "--with-scheduler")
    yield process
    process.stop(signal.SIGTERM)


@pytest.fixture(scope="module")
def spawn_worker(backend: RunningServer, redis_url: str,
                 broker: redis.Redis) -> Iterator[WorkerProcess]:
    """RQ's SpawnWorker (a new interpreter per job), as the module defining the jobs has it."""
    process = start_worker(backend, redis_url, "rq-spawn", "-w",
                           "tests.integrations.rq_app.SpawnWorker")
    yield process
    process.stop(signal.SIGTERM)


def queue(broker: redis.Redis, name: str = "rq-tests", **options: bool) -> Queue:
    """An RQ queue on the tests' Redis database."""
    return Queue(name, connection=broker, **options)


def test_the_job_exists_queued_with_the_rq_job_id_before_any_worker_runs(
        client: seenn.SeennClient, broker: redis.Redis) -> None:
    """enqueue() creates the job at once, queued in the RQ queue, with the RQ job id as its id."""
    shared = {"source": "web"}  # one meta dict for two jobs: each gets its own carrier
    first = queue(broker, "rq-parked").enqueue(rq_app.step, "user-parked", meta=shared)
    second = queue(broker, "rq-parked").enqueue(rq_app.step, "user-parked-2", meta=shared)
    assert shared == {"source": "web"}
    assert seenn.force_flush(timeout=10)
    job = client.jobs.get(first.id)
    assert (job.id, job.status, job.user_id, job.job_type) == (
        first.id, "queued", "user-parked", "rq-step")
    assert job.queue is not None and job.queue.queue_name == "rq-parked"
    assert client.jobs.get(second.id).user_id == "user-parked-2"
    stored = Job.fetch(second.id, connection=broker).meta
    assert stored["source"] == "web"
    context = seenn.propagation.extract({"seenn-job": stored["seenn-job"]})
    assert context is not None and context.job_id == second.id


def test_enqueue_in_and_enqueue_many_start_queued_jobs_too(
        client: seenn.SeennClient, broker: redis.Redis) -> None:
    """A scheduled job and each job of enqueue_many (by function or by name) start queued."""
    parked = queue(broker, "rq-parked")
    later = parked.enqueue_in(timedelta(hours=1), rq_app.step, "user-later")
    many = parked.enqueue_many([
        Queue.prepare_data(rq_app.step, ("user-many-1",)),
        Queue.prepare_data("tests.integrations.rq_app.step", ("user-many-2",), job_id="many-2"),
        Queue.prepare_data(rq_app.untracked, ("user-many-3",)),
    ])
    assert seenn.force_flush(timeout=10)
    assert client.jobs.get(later.id).status == "queued"
    assert [client.jobs.get(job.id).user_id for job in many[:2]] == ["user-many-1",
                                                                      "user-many-2"]
    assert many[1].id == "many-2"
    with pytest.raises(seenn.NotFoundError):
        client.jobs.get(many[2].id)


def test_a_failed_enqueue_fails_the_job_it_started(
        client: seenn.SeennClient, broker: redis.Redis) -> None:
    """enqueue_job() raising after the job started ends that job failed, ENQUEUE_FAILED."""
    parked = queue(broker, "rq-parked")
    rq_job = parked.create_job(rq_app.step, args=("user-not-enqueued",),
                               rate_limit=RateLimit("seenn-tests", 1))
    with pytest.raises(ValueError, match="pipeline"):
        parked.enqueue_job(rq_job, pipeline=broker.pipeline())  # RQ refuses this combination
    job = settled(client, rq_job.id, 20)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "ENQUEUE_FAILED" and "ValueError" in job.error.message
    unnamed = parked.create_job(rq_app.step, args=("user-unique-unnamed",))
    with pytest.raises(ValueError, match="job_id"):
        parked.enqueue_job(unnamed, unique=True)  # as RQ says, even with seenn's hook


def test_progress_then_success_with_the_mapped_result(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """The work horse's progress reaches the backend, then the completion with the result."""
    rq_job = queue(broker).enqueue(rq_app.step, "user-ok", hold=True)
    assert running_pid(broker, rq_job.id) != worker.proc.pid  # a forked work horse
    job = showing(client, rq_job.id, 50)
    assert job.status == "running" and job.message == "half way"
    broker.rpush(f"go:{rq_job.id}", 1)
    job = settled(client, rq_job.id)
    assert job.status == "completed" and job.progress == 100
    assert job.result is not None and job.result.data == "user-ok"
    assert [j.id for j in client.jobs.list("user-ok").jobs] == [rq_job.id]  # one job


def test_an_async_job_runs_in_its_job(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """An async job function (run by RQ with asyncio.run) adopts the job and maps its result."""
    rq_job = queue(broker).enqueue(rq_app.step_async, "user-async")
    job = settled(client, rq_job.id)
    assert job.status == "completed"
    assert job.result is not None and job.result.data == "USER-ASYNC"
    assert [j.id for j in client.jobs.list("user-async").jobs] == [rq_job.id]


def test_an_exception_fails_the_job_with_its_type_and_message(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """A job raising ValueError ends its seenn job failed, code ValueError, with the message."""
    rq_job = queue(broker).enqueue(rq_app.step, "user-fail", fail="bad input")
    job = settled(client, rq_job.id)
    assert job.status == "failed" and job.error is not None
    assert (job.error.code, job.error.message) == ("ValueError", "bad input")


def test_a_job_timeout_fails_the_job_with_rqs_exception(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """A job past its job_timeout: RQ raises JobTimeoutException in it; the job fails so."""
    rq_job = queue(broker).enqueue(rq_app.step, "user-timeout", hold=True, job_timeout=1)
    job = settled(client, rq_job.id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "JobTimeoutException"


def test_a_failing_success_callback_fails_the_job_as_rq_does(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """on_success raising: RQ fails the job, and its seenn job fails with that error."""
    rq_job = queue(broker).enqueue(rq_app.step, "user-callback",
                                   on_success=Callback(rq_app.broken_callback))
    job = settled(client, rq_job.id)
    assert job.status == "failed" and job.error is not None
    assert (job.error.code, job.error.message) == ("RuntimeError", "the callback broke")
    assert Job.fetch(rq_job.id, connection=broker).get_status() == "failed"


def test_a_retry_that_succeeds_is_one_job_that_shows_the_attempt(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """Retry(max=2): the failed first attempt requeues the job; the second completes it."""
    rq_job = queue(broker).enqueue(rq_app.step, "user-retry", fail_until=1, retry=Retry(max=2))
    job = settled(client, rq_job.id)
    assert job.status == "completed"
    assert job.metadata == {"attempt": 2}
    assert [j.id for j in client.jobs.list("user-retry").jobs] == [rq_job.id]


def test_retries_exhausted_fail_the_job_once(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """Retry(max=1) and two failures: the job fails once, after its second attempt."""
    rq_job = queue(broker).enqueue(rq_app.step, "user-exhausted", fail_until=5,
                                   retry=Retry(max=1))
    job = settled(client, rq_job.id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "ConnectionError"
    assert job.metadata == {"attempt": 2}
    assert Job.fetch(rq_job.id, connection=broker).get_status() == "failed"
    assert len(client.jobs.list("user-exhausted").jobs) == 1


def test_a_returned_retry_is_one_job_and_fails_past_its_max(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """A job returning Retry is requeued as the same job; past Retry.max it fails."""
    recovered = queue(broker).enqueue(rq_app.again, "user-again", 1, 2)
    given_up = queue(broker).enqueue(rq_app.again, "user-again-fail", 5, 1)
    job = settled(client, recovered.id)
    assert job.status == "completed" and job.metadata == {"attempt": 2}
    job = settled(client, given_up.id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "MAX_RETRIES_EXCEEDED"
    assert job.metadata == {"attempt": 2}
    assert len(client.jobs.list("user-again-fail").jobs) == 1


def test_a_work_horse_killed_mid_job_fails_the_job_from_the_worker(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """SIGKILL of the work horse: the worker's main process fails the job at once."""
    rq_job = queue(broker).enqueue(rq_app.step, "user-killed", hold=True)
    pid = running_pid(broker, rq_job.id)
    showing(client, rq_job.id, 50)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    job = settled(client, rq_job.id)
    seen_after = time.monotonic() - killed_at
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "WORK_HORSE_TERMINATED"
    assert "SIGKILL" in job.error.message
    print(f"\nSIGKILL to failed on the backend: {seen_after:.2f} s")


def test_a_killed_work_horse_with_retries_left_is_retried_as_the_same_job(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """A killed work horse whose job has retries left: requeued, then completed by attempt 2."""
    rq_job = queue(broker).enqueue(rq_app.step, "user-killed-retried", hold=True,
                                   retry=Retry(max=1))
    os.kill(running_pid(broker, rq_job.id), signal.SIGKILL)
    job = settled(client, rq_job.id)
    assert job.status == "completed" and job.metadata == {"attempt": 2}
    assert len(client.jobs.list("user-killed-retried").jobs) == 1


def test_a_stopped_job_is_cancelled(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """send_stop_job_command() kills the work horse; the job ends failed, code CANCELLED."""
    rq_job = queue(broker).enqueue(rq_app.step, "user-stopped", hold=True)
    running_pid(broker, rq_job.id)
    send_stop_job_command(broker, rq_job.id)
    job = settled(client, rq_job.id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "CANCELLED"


def test_cancelling_a_queued_job_cancels_its_job(
        client: seenn.SeennClient, broker: redis.Redis) -> None:
    """Job.cancel() of a job waiting in its queue ends its seenn job failed, CANCELLED."""
    rq_job = queue(broker, "rq-parked").enqueue(rq_app.step, "user-cancelled")
    Job.fetch(rq_job.id, connection=broker).cancel()
    job = settled(client, rq_job.id, 20)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "CANCELLED"


def test_a_simple_worker_runs_jobs_in_process_as_one_job(
        client: seenn.SeennClient, broker: redis.Redis, simple_worker: WorkerProcess) -> None:
    """SimpleWorker (no fork): results, failures and a scheduled retry reach the same job."""
    ok = queue(broker, "rq-simple").enqueue(rq_app.step, "user-simple")
    failing = queue(broker, "rq-simple").enqueue(rq_app.step, "user-simple-fail", fail="no")
    # Retry(interval=1): RQ schedules the second attempt; its scheduler enqueues it.
    retried = queue(broker, "rq-simple").enqueue(rq_app.step, "user-simple-retry",
                                                 fail_until=1, retry=Retry(max=1, interval=1))
    job = settled(client, ok.id)
    assert job.status == "completed" and job.result is not None
    assert job.result.data == "user-simple"
    job = settled(client, failing.id)
    assert job.status == "failed" and job.error is not None and job.error.code == "ValueError"
    job = settled(client, retried.id)
    assert job.status == "completed" and job.metadata == {"attempt": 2}
    assert len(client.jobs.list("user-simple-retry").jobs) == 1


def test_a_spawn_worker_resumes_the_job_in_its_spawned_work_horse(
        client: seenn.SeennClient, broker: redis.Redis, spawn_worker: WorkerProcess) -> None:
    """SpawnWorker: the spawned work horse resumes the job, completes it and flushes."""
    rq_job = queue(broker, "rq-spawn").enqueue(rq_app.step, "user-spawn")
    job = settled(client, rq_job.id)
    assert job.status == "completed" and job.result is not None
    assert job.result.data == "user-spawn"
    assert [j.id for j in client.jobs.list("user-spawn").jobs] == [rq_job.id]


def test_a_worker_that_did_not_instrument_rq_before_its_jobs_says_so(
        backend: RunningServer, redis_url: str, broker: redis.Redis) -> None:
    """Plain `rq worker` (no -c): instrument() runs in the work horse, too late; it warns."""
    rq_job = queue(broker, "rq-plain").enqueue(rq_app.step, "user-plain")
    process = WorkerProcess(
        [PYTHON, "-m", "rq.cli", "worker", "--burst", "--url", redis_url + "/1", "rq-plain"],
        worker_env(backend, redis_url), ready="Listening on")
    assert process.proc.wait(timeout=60) == 0
    line = process.wait_for_line("did not call it before running jobs", 10)
    assert rq_job.id in line and "rq worker -c" in line


def test_a_synchronous_queue_runs_the_job_at_enqueue_as_that_job(
        client: seenn.SeennClient, broker: redis.Redis) -> None:
    """Queue(is_async=False) runs the job inside enqueue(): one job, completed or failed."""
    ok = queue(broker, "rq-sync", is_async=False).enqueue(rq_app.step, "user-sync")
    failed = queue(broker, "rq-sync", is_async=False).enqueue(rq_app.step, "user-sync-fail",
                                                              fail="sync")
    assert seenn.force_flush(timeout=10)
    job = client.jobs.get(ok.id)
    assert job.status == "completed" and job.result is not None
    assert job.result.data == "user-sync"
    assert [j.id for j in client.jobs.list("user-sync").jobs] == [ok.id]
    job = client.jobs.get(failed.id)
    assert job.status == "failed" and job.error is not None and job.error.code == "ValueError"


def test_a_hook_error_never_breaks_enqueueing(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """A user_id callable raising at enqueue: the job is enqueued, and the worker starts it."""
    rq_job = queue(broker).enqueue(rq_app.step, "boom-at-enqueue")
    assert "seenn-job" not in Job.fetch(rq_job.id, connection=broker).meta
    job = settled(client, rq_job.id)
    assert job.id == rq_job.id
    assert job.status == "completed" and job.user_id == "boom-at-enqueue"


def test_a_job_enqueued_by_name_without_seenn_is_tracked_by_the_worker(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """A job enqueued by a process that did not instrument RQ: the worker starts its job."""
    seenn_rq.uninstrument()
    try:
        rq_job = queue(broker).enqueue("tests.integrations.rq_app.step", "user-by-name")
    finally:
        seenn_rq.instrument()
    job = settled(client, rq_job.id)
    assert job.id == rq_job.id
    assert job.status == "completed" and job.user_id == "user-by-name"


def test_a_job_without_seenn_job_makes_no_job(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """A job whose function has no @seenn.job is not tracked."""
    rq_job = queue(broker).enqueue(rq_app.untracked, "user-untracked")
    tracked = queue(broker).enqueue(rq_app.step, "user-after-untracked")
    settled(client, tracked.id)
    assert rq_job.get_status() == "finished"
    with pytest.raises(seenn.NotFoundError):
        client.jobs.get(rq_job.id)


def test_instrument_twice_is_harmless_and_uninstrument_stops_tracking(
        client: seenn.SeennClient, broker: redis.Redis) -> None:
    """instrument() again changes nothing; after uninstrument() enqueue() starts no job."""
    wrapper = Queue.__dict__["enqueue_job"]
    seenn_rq.instrument()
    assert Queue.__dict__["enqueue_job"] is wrapper and seenn_rq.is_instrumented()
    tracked = queue(broker, "rq-parked").enqueue(rq_app.step, "user-twice")
    seenn_rq.uninstrument()
    try:
        assert not seenn_rq.is_instrumented()
        assert Queue.__dict__["enqueue_job"] is wrapper.__wrapped__  # RQ's own method again
        untracked = queue(broker, "rq-parked").enqueue(rq_app.step, "user-uninstrumented")
    finally:
        seenn_rq.instrument()
    assert seenn.force_flush(timeout=10)
    assert client.jobs.get(tracked.id).status == "queued"
    assert len(client.jobs.list("user-twice").jobs) == 1
    with pytest.raises(seenn.NotFoundError):
        client.jobs.get(untracked.id)


def test_importing_the_integration_does_not_import_rq() -> None:
    """import seenn.integrations.rq loads nothing of RQ (it is an optional extra)."""
    code = ("import sys, seenn.integrations.rq as m; "
            "assert not m.is_instrumented(); "
            "assert 'rq' not in sys.modules, sorted(n for n in sys.modules if 'rq' in n)")
    subprocess.run([PYTHON, "-c", code], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def children_of(client: seenn.SeennClient, job_id: str) -> list[tuple[int, str | None]]:
    """The (child index, user id) of a job's children linked to it, by index."""
    family = client.jobs.children(job_id)
    return sorted((child.parent.child_index, child.user_id) for child in family.children
                  if child.parent is not None and child.parent.child_index is not None)


def test_a_retried_jobs_children_stay_linked_under_distinct_indices(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """A retry stores the job as it is in job.meta: the second run's child is child 1."""
    rq_job = queue(broker).enqueue(rq_app.spawner, "user-spawner", retry=Retry(max=1))
    job = settled(client, rq_job.id)
    assert job.status == "completed" and job.metadata == {"attempt": 2}
    assert children_of(client, rq_job.id) == [(0, "user-spawner-child-1"),
                                              (1, "user-spawner-child-2")]


def test_a_job_id_given_again_after_its_job_ended_is_tracked_as_a_new_run(
        client: seenn.SeennClient, broker: redis.Redis, worker: WorkerProcess) -> None:
    """job_id= reused once the first job ended: the second run is its own job, "<id>~2"."""
    first = queue(broker).enqueue(rq_app.step, "user-rq-nightly", job_id="rq-nightly-7")
    assert settled(client, first.id).status == "completed"
    wait_until(lambda: first.get_status(refresh=True) == "finished", 60, "RQ to finish it")
    second = queue(broker).enqueue(rq_app.step, "user-rq-nightly", job_id="rq-nightly-7")
    assert second.id == "rq-nightly-7"
    job = settled(client, "rq-nightly-7~2")
    assert job.status == "completed" and job.result is not None
    assert client.jobs.get("rq-nightly-7").status == "completed"
    assert sorted(j.id for j in client.jobs.list("user-rq-nightly").jobs) == [
        "rq-nightly-7", "rq-nightly-7~2"]
    assert broker.get(seenn_rq.RUNS_KEY_PREFIX + "rq-nightly-7") == b"2"


def test_unique_enqueue_of_a_taken_id_makes_no_job(
        client: seenn.SeennClient, broker: redis.Redis) -> None:
    """unique=True and an id RQ still holds: DuplicateJobError, and no second job."""
    from rq.exceptions import DuplicateJobError

    parked = queue(broker, "rq-parked")
    parked.enqueue(rq_app.step, "user-rq-unique", job_id="rq-unique-1")
    with pytest.raises(DuplicateJobError):
        parked.enqueue(rq_app.step, "user-rq-unique", job_id="rq-unique-1", unique=True)
    assert seenn.force_flush(timeout=10)
    assert [j.id for j in client.jobs.list("user-rq-unique").jobs] == ["rq-unique-1"]
