"""The Dramatiq broker and actors the integration tests send to and run in a real worker.

The worker (``dramatiq tests.integrations.dramatiq_app``) imports it with
``SEENN_TEST_WORKER=1``: it then sends its jobs to the backend named in
``SEENN_API_KEY``/``SEENN_BASE_URL``. The test process imports it as the web
process would (its default tracker set up by a fixture, the broker pointed at
the session's Redis by :func:`connect`). Two more switches, for one worker each:

* ``SEENN_TEST_RESCUE=1``: this worker's broker counts a silent worker as dead
  after 5 s, and looks for dead workers' messages on every call (Dramatiq's
  defaults: 60 s, one call in a thousand);
* ``SEENN_TEST_EXPORT_DELAY=S``: events wait ``S`` seconds before export, so
  only the flush at the worker's exit delivers them.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker
from dramatiq.middleware import AsyncIO, CurrentMessage

import seenn
from seenn.exporters import BatchProcessor, HTTPExporter
from seenn.integrations import dramatiq as seenn_dramatiq

QUEUE = "seenn-dramatiq"
"""The queue of the module's worker."""

if os.environ.get("SEENN_TEST_WORKER") == "1":
    delay = os.environ.get("SEENN_TEST_EXPORT_DELAY")
    if delay:
        seenn.configure(processors=[BatchProcessor(
            HTTPExporter(api_key=os.environ["SEENN_API_KEY"],
                               base_url=os.environ["SEENN_BASE_URL"]),
            schedule_delay=float(delay))])
    else:
        seenn.configure(api_key=os.environ["SEENN_API_KEY"],
                        base_url=os.environ["SEENN_BASE_URL"])

# Before the broker is made: brokers made from now on get seenn's middleware.
seenn_dramatiq.instrument()

_rescue: dict[str, Any] = (
    {"heartbeat_timeout": 5000, "maintenance_chance": MAINTENANCE_SCALE}
    if os.environ.get("SEENN_TEST_RESCUE") == "1" else {})
broker = RedisBroker(url=os.environ.get("SEENN_TEST_REDIS", "redis://127.0.0.1:1") + "/0",
                     namespace="seenn-tests-dramatiq", **_rescue)
broker.add_middleware(AsyncIO())
broker.add_middleware(CurrentMessage())
dramatiq.set_broker(broker)


def connect(url: str) -> None:
    """Point this process's broker at ``url`` (the broker has not connected yet)."""
    broker.client.connection_pool = redis.ConnectionPool.from_url(url + "/0")


def signals() -> redis.Redis:
    """A client for the tests' own keys, beside the broker's."""
    return redis.Redis(connection_pool=broker.client.connection_pool)


def _message_id() -> str:
    message = CurrentMessage.get_current_message()
    assert message is not None
    return message.message_id


def _hold() -> None:
    """Tell the test this message runs (and in which process), then wait for its go.

    Only the first run of a message waits: a run after its worker was killed goes on.
    """
    message_id = _message_id()
    connection = signals()
    connection.set(f"pid:{message_id}", os.getpid())
    if not connection.set(f"held:{message_id}", 1, nx=True):
        return
    deadline = time.monotonic() + 120
    # Short waits: the client's socket timeout is shorter than the whole wait.
    while connection.blpop([f"go:{message_id}"], timeout=1) is None:
        assert time.monotonic() < deadline, "the test never said go"


def _step(tag: str, *, fail: str | None = None, hold: bool = False) -> dict[str, Any]:
    """Report progress, maybe wait for the test, fail as asked, else return."""
    job = seenn.current_job()
    assert job is not None
    job.set_progress(50, message="half way")
    if hold:
        _hold()
    if fail:
        raise ValueError(fail)
    signals().set(f"done:{_message_id()}", 1)
    return {"type": "text", "data": tag}


step_job = seenn.job("dramatiq-step", user_id=lambda tag, **options: tag, result=True)(_step)

# ValueError is in throws: it fails the message at once, without a retry.
step = dramatiq.actor(step_job, queue_name=QUEUE, throws=(ValueError,))
parked = dramatiq.actor(step_job, actor_name="parked", queue_name="seenn-parked")
doomed = dramatiq.actor(step_job, actor_name="doomed", queue_name="seenn-doomed")
rescued = dramatiq.actor(step_job, actor_name="rescued", queue_name="seenn-rescued")
flushed = dramatiq.actor(step_job, actor_name="flushed", queue_name="seenn-flushed")


@dramatiq.actor(queue_name=QUEUE, max_retries=2, min_backoff=10, max_backoff=50)
@seenn.job("dramatiq-flaky", user_id=lambda tag, failures: tag)
def flaky(tag: str, failures: int) -> str:
    """Fail with ConnectionError on the first ``failures`` attempts (of three at most).

    The last attempt waits for the test's go, once it runs.
    """
    message = CurrentMessage.get_current_message()
    assert message is not None
    retries = message.options.get("retries", 0)
    if retries == min(failures, 2):
        _hold()
    if retries < failures:
        raise ConnectionError("the service is busy")
    return tag


@dramatiq.actor(queue_name=QUEUE, max_retries=1, min_backoff=10, max_backoff=50)
@seenn.job("dramatiq-parent", user_id=lambda tag: tag)
def spawner(tag: str) -> str:
    """Send a child message on each attempt; the first attempt fails (Retries sends it again)."""
    message = CurrentMessage.get_current_message()
    assert message is not None
    attempt = message.options.get("retries", 0) + 1
    parked.send(f"{tag}-child-{attempt}")
    if attempt == 1:
        raise ConnectionError("the service is busy")
    return tag


@dramatiq.actor(queue_name=QUEUE, time_limit=1000, max_retries=0)
@seenn.job("dramatiq-slow", user_id=lambda tag: tag)
def too_slow(tag: str) -> None:
    """Report progress, then outlive the time limit (in Python code it can interrupt)."""
    seenn.current_job().set_progress(10)  # type: ignore[union-attr]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.02)


@dramatiq.actor(queue_name=QUEUE)
@seenn.job("dramatiq-async", user_id=lambda tag: tag, result=True)
async def render_async(tag: str) -> dict[str, Any]:
    """An async actor (the AsyncIO middleware's event loop): the job is ambient there too."""
    job = seenn.current_job()
    assert job is not None
    job.set_progress(40, message="on the event loop")
    await asyncio.sleep(0)
    return {"type": "text", "data": tag}


def _worker_only(tag: str) -> str:
    if os.environ.get("SEENN_TEST_WORKER") != "1":
        raise RuntimeError("this callable fails where messages are sent")
    return tag


@dramatiq.actor(queue_name=QUEUE)
@seenn.job("dramatiq-picky", user_id=_worker_only)
def picky(tag: str) -> str:
    """Its user_id callable raises in the sending process only."""
    return tag


@dramatiq.actor(queue_name=QUEUE)
def untracked(tag: str) -> str:
    """An actor without @seenn.job: no job."""
    return tag
