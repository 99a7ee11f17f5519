"""Dramatiq: one job per message from send() to its end, in a real worker over Redis."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import dramatiq
import dramatiq.broker
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware

import seenn
import seenn.server
from seenn.server import RunningServer
from seenn.testing import capture_jobs
from tests.faults import free_port
from tests.integrations import dramatiq_app
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

READY = "Worker process is ready for action."


@pytest.fixture(scope="module")
def signals(redis_url: str) -> Iterator[redis.Redis]:
    """This process's broker pointed at the session's Redis, and a client for the tests' keys."""
    dramatiq_app.connect(redis_url)
    connection = dramatiq_app.signals()
    yield connection
    connection.close()


def start_worker(backend: RunningServer, redis_url: str, queues: Sequence[str],
                 **env: str) -> WorkerProcess:
    """A Dramatiq worker (one process, two threads) on ``queues``, in a subprocess."""
    return WorkerProcess(
        [PYTHON, "-m", "dramatiq", "tests.integrations.dramatiq_app", "--processes", "1",
         "--threads", "2", "--queues", *queues],
        worker_env(backend, redis_url, **env), ready=READY)


def stop_worker(process: WorkerProcess) -> int:
    """Stop a worker as Dramatiq expects: SIGTERM to the main process, which passes it on.

    (SIGTERM to the whole process group reaches the worker process twice, and
    Dramatiq takes the second as "kill now": it then skips its shutdown.)
    """
    if process.proc.poll() is None:
        process.proc.send_signal(signal.SIGTERM)
        try:
            return process.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    return process.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def worker(backend: RunningServer, redis_url: str,
           signals: redis.Redis) -> Iterator[WorkerProcess]:
    """The module's worker, on the queue of most actors."""
    process = start_worker(backend, redis_url, [dramatiq_app.QUEUE])
    yield process
    stop_worker(process)


def jobs_of(client: seenn.SeennClient, user_id: str) -> list[str]:
    """The ids of a user's jobs."""
    return [job.id for job in client.jobs.list(user_id).jobs]


# -- in this process ----------------------------------------------------------------------


def test_importing_the_integration_does_not_import_dramatiq() -> None:
    """`import seenn.integrations.dramatiq` leaves Dramatiq unimported until instrument()."""
    code = ("import sys, seenn.integrations.dramatiq as m; "
            "print('dramatiq' in sys.modules, m.is_instrumented())")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]


def seenn_middleware(broker: dramatiq.broker.Broker) -> list[int]:
    """The positions of seenn's middleware in a broker's list."""
    return [i for i, m in enumerate(broker.middleware) if type(m).__name__ == "SeennMiddleware"]


def test_instrument_is_idempotent_and_reaches_the_global_broker_and_new_ones() -> None:
    """instrument() twice adds one middleware, first; uninstrument() takes it out everywhere."""
    seenn_dramatiq = dramatiq_app.seenn_dramatiq
    original_init = dramatiq.broker.Broker.__init__.__wrapped__  # the app instrumented
    try:
        seenn_dramatiq.instrument()
        seenn_dramatiq.instrument()
        assert seenn_dramatiq.is_instrumented()
        assert seenn_middleware(dramatiq_app.broker) == [0]
        made_after = StubBroker()
        assert seenn_middleware(made_after) == [0]
        seenn_dramatiq.uninstrument()
        assert not seenn_dramatiq.is_instrumented()
        assert seenn_middleware(dramatiq_app.broker) == []
        assert seenn_middleware(made_after) == []
        assert seenn_middleware(StubBroker()) == []
        assert dramatiq.broker.Broker.__init__ is original_init
    finally:
        seenn_dramatiq.instrument()
    # The global broker (made before this instrument()) gets it back.
    assert seenn_middleware(dramatiq_app.broker) == [0]


def run_on_stub(broker: StubBroker, actor: dramatiq.Actor[Any, Any]) -> str:
    """Send ``actor`` a message and run it in an in-process Worker: its job's last event.

    The event reads ``"<kind> <message> <error code>"``.
    """
    with capture_jobs() as captured:
        worker = dramatiq.Worker(broker, worker_timeout=50)
        worker.start()
        try:
            message = actor.send()
            broker.join(actor.queue_name, fail_fast=False, timeout=30_000)
            worker.join()
        finally:
            worker.stop()
    event = captured.events_for(message.message_id)[-1]
    return f"{event.kind} {event.message} {event.error.code if event.error else None}"


def _stub_fails(attempts: list[int]) -> Callable[[], None]:
    @seenn.job("stub")
    def fails() -> None:
        attempts.append(1)
        if len(attempts) < 2:
            raise ConnectionError("busy")

    return fails


def test_retry_when_decides_retries_and_the_attempt_has_no_total() -> None:
    """With retry_when, a retried attempt says "Attempt 2" (Retries has no count to give)."""
    broker = StubBroker()  # made after instrument(): seenn's middleware is in it
    attempts: list[int] = []
    actor = dramatiq.actor(_stub_fails(attempts), broker=broker, min_backoff=1, max_backoff=5,
                           retry_when=lambda retries, exc: retries < 3)
    assert run_on_stub(broker, actor) == "completed Attempt 2 None"
    assert len(attempts) == 2


def test_without_the_retries_middleware_a_failure_is_final() -> None:
    """A broker without Retries never runs a message again: its first failure ends the job."""
    broker = StubBroker(middleware=[])
    attempts: list[int] = []
    actor = dramatiq.actor(_stub_fails(attempts), broker=broker)
    assert run_on_stub(broker, actor) == "failed None ConnectionError"
    assert attempts == [1]


class _Rejects(Middleware):
    """Marks every message failed before it runs, without skipping it."""

    def before_process_message(self, broker: Any, message: Any) -> None:
        message.fail()


def test_a_message_rejected_before_it_runs_ends_cancelled() -> None:
    """A middleware failing the message before the actor runs: the job ends CANCELLED."""
    broker = StubBroker()
    broker.add_middleware(_Rejects())
    attempts: list[int] = []
    actor = dramatiq.actor(_stub_fails(attempts), broker=broker)
    assert run_on_stub(broker, actor) == "failed None CANCELLED"
    assert attempts == []


def test_a_retry_sends_the_job_back_to_its_queue_before_the_message_goes_out() -> None:
    """The job reads "Waiting for attempt 2" before the broker has the retried message."""
    broker = StubBroker()
    seen: list[list[str | None]] = []
    attempts: list[int] = []
    actor = dramatiq.actor(_stub_fails(attempts), broker=broker, min_backoff=1, max_backoff=5)
    with capture_jobs() as captured:

        class Snoop(Middleware):
            """Notes what the job's events say when the retried message is about to go out."""

            def before_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
                if message.options.get("retries"):
                    seen.append([e.message for e in captured.events_for(message.message_id)])

        broker.add_middleware(Snoop())  # after seenn's, which is first
        worker = dramatiq.Worker(broker, worker_timeout=50)
        worker.start()
        try:
            message = actor.send()
            broker.join(actor.queue_name, fail_fast=False, timeout=30_000)
            worker.join()
        finally:
            worker.stop()
    assert len(attempts) == 2
    assert seen and seen[0][-1] == "Waiting for attempt 2: ConnectionError"
    assert captured.events_for(message.message_id)[-1].kind == "completed"


class _ResendFails(StubBroker):
    """A broker that takes a message once, and fails to take it again (a retry)."""

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        if message.options.get("retries"):
            self.emit_before("enqueue", message, delay)
            raise ConnectionError("the broker is down")
        return super().enqueue(message, delay=delay)


def test_a_retry_the_broker_does_not_take_ends_the_job_with_the_attempts_error() -> None:
    """Requeued for a retry that never went out: the job fails (not queued for ever)."""
    broker = _ResendFails()
    attempts: list[int] = []
    actor = dramatiq.actor(_stub_fails(attempts), broker=broker, min_backoff=1, max_backoff=5)
    assert run_on_stub(broker, actor) == "failed The retry could not be sent ConnectionError"
    assert attempts == [1]


def test_what_dramatiq_sends_once_the_actor_returned_is_not_a_child() -> None:
    """A pipeline's next message, sent after the actor returned, is a job of its own."""
    broker = StubBroker()

    @seenn.job("stub-first")
    def first() -> None:
        return None

    @seenn.job("stub-second")
    def second(_previous: object = None) -> None:
        return None

    actors = [dramatiq.actor(func, broker=broker) for func in (first, second)]
    with capture_jobs() as captured:
        worker = dramatiq.Worker(broker, worker_timeout=50)
        worker.start()
        try:
            dramatiq.pipeline([actor.message() for actor in actors], broker=broker).run()
            broker.join(actors[0].queue_name, fail_fast=False, timeout=30_000)
            worker.join()
        finally:
            worker.stop()
    starts = {e.job_type: e for e in captured.events if e.kind == "started"}
    assert set(starts) == {"stub-first", "stub-second"}
    assert starts["stub-second"].parent_id is None


# -- sending ------------------------------------------------------------------------------


def test_a_send_the_broker_refuses_makes_no_job(
        client: seenn.SeennClient, signals: redis.Redis) -> None:
    """The broker down at send(): send() raises as before, and no job was started."""
    dead = RedisBroker(url=f"redis://127.0.0.1:{free_port()}/0")  # made instrumented
    try:
        actor = dramatiq.actor(dramatiq_app.step_job, broker=dead, actor_name="unsent",
                               queue_name="seenn-unsent")
        with pytest.raises(redis.ConnectionError):
            actor.send("user-unsent")
    finally:
        dead.close()
    assert seenn.force_flush(timeout=10)
    assert client.jobs.list("user-unsent").jobs == []


def test_the_job_exists_queued_with_the_message_id_before_any_worker_runs(
        client: seenn.SeennClient, signals: redis.Redis) -> None:
    """send() creates the job at once, queued in the actor's queue, with the message id."""
    message = dramatiq_app.parked.send("user-parked")  # nobody consumes seenn-parked
    assert seenn.force_flush(timeout=10)
    job = client.jobs.get(message.message_id)
    assert job.id == message.message_id
    assert job.status == "queued"
    assert job.queue is not None and job.queue.queue_name == "seenn-parked"
    assert job.user_id == "user-parked"
    assert job.job_type == "dramatiq-step"


def test_a_hook_error_never_breaks_sending_and_the_worker_starts_the_job(
        client: seenn.SeennClient, worker: WorkerProcess,
        caplog: pytest.LogCaptureFixture) -> None:
    """A user_id callable raising at send(): the message is sent, the worker makes the job."""
    with caplog.at_level(logging.ERROR, logger="seenn"):
        message = dramatiq_app.picky.send("user-picky")
    assert any("before_enqueue" in record.getMessage() for record in caplog.records)
    job = settled(client, message.message_id)
    assert job.status == "completed" and job.user_id == "user-picky"


def test_a_message_sent_without_seenn_is_tracked_by_the_worker(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """uninstrument() stops tracking at send(); the worker still runs the message as its job."""
    dramatiq_app.seenn_dramatiq.uninstrument()
    try:
        message = dramatiq_app.step.send("user-by-worker")
        assert message.options.get("seenn-job") is None
    finally:
        dramatiq_app.seenn_dramatiq.instrument()
    job = settled(client, message.message_id)
    assert job.id == message.message_id
    assert job.status == "completed" and job.user_id == "user-by-worker"


# -- running ------------------------------------------------------------------------------


def test_progress_then_success_with_the_mapped_result(
        client: seenn.SeennClient, signals: redis.Redis, worker: WorkerProcess) -> None:
    """The worker's progress reaches the backend, then the completion with the actor's result."""
    message = dramatiq_app.step.send("user-ok", hold=True)
    running_pid(signals, message.message_id)
    job = showing(client, message.message_id, 50)
    assert job.status == "running" and job.message == "half way"
    signals.rpush(f"go:{message.message_id}", 1)
    job = settled(client, message.message_id)
    assert job.status == "completed" and job.progress == 100
    assert job.result is not None and job.result.data == "user-ok"
    assert jobs_of(client, "user-ok") == [message.message_id]  # one job


def test_an_exception_in_throws_fails_the_job_at_once_with_its_type_and_message(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """ValueError (in the actor's throws) fails its job on the first attempt: code, message."""
    message = dramatiq_app.step.send("user-fail", fail="bad input")
    job = settled(client, message.message_id)
    assert job.status == "failed" and job.error is not None
    assert (job.error.code, job.error.message) == ("ValueError", "bad input")
    assert job.metadata is None  # attempt 1


def attempting(client: seenn.SeennClient, job_id: str, attempt: int) -> seenn.Job:
    """Wait until the backend shows the job running its ``attempt``-th attempt."""
    return wait_until(lambda: (job := fetch(client, job_id)) is not None
                      and job.status == "running" and job.metadata == {"attempt": attempt}
                      and job, 60, f"job {job_id} on attempt {attempt}")


def test_a_retry_that_succeeds_is_one_job_that_shows_the_attempt(
        client: seenn.SeennClient, signals: redis.Redis, worker: WorkerProcess) -> None:
    """Retries keeps the job: it completes on the second attempt, which it names."""
    message = dramatiq_app.flaky.send("user-retry", 1)
    job = attempting(client, message.message_id, 2)
    assert job.message == "Attempt 2 of 3"
    signals.rpush(f"go:{message.message_id}", 1)
    job = settled(client, message.message_id)
    assert job.status == "completed"
    assert job.metadata == {"attempt": 2}
    assert jobs_of(client, "user-retry") == [message.message_id]


def test_retries_exhausted_fail_the_job_once(
        client: seenn.SeennClient, signals: redis.Redis, worker: WorkerProcess) -> None:
    """Past max_retries the job fails, once, on its last attempt ("Attempt 3 of 3")."""
    message = dramatiq_app.flaky.send("user-exhausted", 5)  # max_retries=2: three attempts
    job = attempting(client, message.message_id, 3)
    assert job.message == "Attempt 3 of 3"
    signals.rpush(f"go:{message.message_id}", 1)
    job = settled(client, message.message_id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "ConnectionError"
    assert job.metadata == {"attempt": 3}
    assert jobs_of(client, "user-exhausted") == [message.message_id]


def test_a_time_limit_fails_the_job_with_time_limit_exceeded(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """An actor past its time_limit (no retry left) ends failed, code TimeLimitExceeded."""
    message = dramatiq_app.too_slow.send("user-slow")
    job = settled(client, message.message_id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "TimeLimitExceeded"
    assert job.progress == 10


def test_an_async_actor_runs_in_its_job_on_the_event_loop(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """An async actor (AsyncIO middleware) sees its job as ambient and completes it."""
    message = dramatiq_app.render_async.send("user-async")
    job = settled(client, message.message_id)
    assert job.status == "completed"
    assert job.message == "on the event loop"
    assert job.result is not None and job.result.data == "user-async"
    assert jobs_of(client, "user-async") == [message.message_id]


def test_a_message_past_its_age_limit_ends_cancelled(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """AgeLimit skips (and dead-letters) an old message: its job ends failed, CANCELLED."""
    message = dramatiq_app.step.send_with_options(args=("user-expired",), max_age=1)
    job = settled(client, message.message_id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "CANCELLED"
    assert job.error.message == "the message was skipped: Message age limit exceeded"


def test_an_actor_without_seenn_job_makes_no_job(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """An actor whose function has no @seenn.job is not tracked."""
    message = dramatiq_app.untracked.send("user-untracked")
    tracked = dramatiq_app.step.send("user-after-untracked")
    settled(client, tracked.message_id)
    with pytest.raises(seenn.NotFoundError):
        client.jobs.get(message.message_id)


# -- workers that end -----------------------------------------------------------------------


def test_a_worker_flushes_its_events_as_it_stops(
        backend: RunningServer, redis_url: str, client: seenn.SeennClient,
        signals: redis.Redis) -> None:
    """Events held back by the exporter reach the backend when the worker process stops."""
    held = start_worker(backend, redis_url, ["seenn-flushed"], SEENN_TEST_EXPORT_DELAY="3600")
    try:
        message = dramatiq_app.flushed.send("user-flushed")
        wait_until(lambda: signals.get(f"done:{message.message_id}"), 60, "the message to run")
        assert seenn.force_flush(timeout=10)
        job = client.jobs.get(message.message_id)
        assert job.status == "queued"  # the worker's events are still held
    finally:
        assert stop_worker(held) == 0
    job = client.jobs.get(message.message_id)
    assert job.status == "completed" and job.result is not None
    assert job.result.data == "user-flushed"


def test_a_message_delivered_again_after_its_worker_was_killed_resumes_its_job(
        backend: RunningServer, redis_url: str, client: seenn.SeennClient,
        signals: redis.Redis) -> None:
    """SIGKILL mid-job; Redis gives the message to another worker: the same job completes."""
    doomed = start_worker(backend, redis_url, ["seenn-rescued"])
    rescuer: WorkerProcess | None = None
    try:
        message = dramatiq_app.rescued.send("user-rescued", hold=True)
        pid = running_pid(signals, message.message_id)
        showing(client, message.message_id, 50)
        # Counts the first worker dead 5 s after its last call to Redis.
        rescuer = start_worker(backend, redis_url, ["seenn-rescued"], SEENN_TEST_RESCUE="1")
        signals.delete(f"pid:{message.message_id}")
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)  # the second run does not wait for a go
        job = settled(client, message.message_id)
        seen_after = time.monotonic() - killed_at
        assert job.status == "completed"
        assert job.result is not None and job.result.data == "user-rescued"
        assert int(signals.get(f"pid:{message.message_id}")) != pid  # type: ignore[arg-type]
        assert jobs_of(client, "user-rescued") == [message.message_id]
        print(f"\nSIGKILL to completed by another worker: {seen_after:.2f} s")
    finally:
        stop_worker(doomed)
        if rescuer is not None:
            stop_worker(rescuer)


def test_a_worker_killed_mid_job_ends_its_job_failed_worker_lost(
        tmp_path: Path, redis_url: str, signals: redis.Redis, backend: RunningServer) -> None:
    """SIGKILL mid-job, nobody runs the message again: the backend's stale limit fails it."""
    with seenn.server.running(tmp_path / "lost.db", stale_after=10) as lost, \
            seenn.SeennClient(lost.api_key, base_url=lost.url) as reader:
        seenn.configure(api_key=lost.api_key, base_url=lost.url)
        killed = start_worker(lost, redis_url, ["seenn-doomed"])
        try:
            message = dramatiq_app.doomed.send("user-killed", hold=True)
            pid = running_pid(signals, message.message_id)
            showing(reader, message.message_id, 50)
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            job = settled(reader, message.message_id)
            seen_after = time.monotonic() - killed_at
        finally:
            stop_worker(killed)
            seenn.configure(api_key=backend.api_key, base_url=backend.url)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "WORKER_LOST"
    assert job.progress == 50
    print(f"\nSIGKILL to failed on the backend: {seen_after:.2f} s")


def children_of(client: seenn.SeennClient, job_id: str) -> list[tuple[int, str | None]]:
    """The (child index, user id) of a job's children linked to it, by index."""
    family = client.jobs.children(job_id)
    return sorted((child.parent.child_index, child.user_id) for child in family.children
                  if child.parent is not None and child.parent.child_index is not None)


def test_a_retried_messages_children_stay_linked_under_distinct_indices(
        client: seenn.SeennClient, worker: WorkerProcess) -> None:
    """The retried message carries the job as it is: the second attempt's child is child 1."""
    message = dramatiq_app.spawner.send("user-spawner")
    job = settled(client, message.message_id)
    assert job.status == "completed" and job.metadata == {"attempt": 2}
    assert children_of(client, message.message_id) == [(0, "user-spawner-child-1"),
                                                       (1, "user-spawner-child-2")]
