"""Celery: a task whose function carries ``@seenn.job`` is one job, from ``delay()`` to its end.

Call :func:`instrument` once in every process that publishes or runs tasks
(the module that creates the Celery app is the usual place)::

    import seenn
    from seenn.integrations import celery as seenn_celery

    app = Celery("video", broker="redis://...")
    seenn_celery.instrument()

    @app.task(bind=True, autoretry_for=(ConnectionError,), max_retries=3)
    @seenn.job("video-generation", user_id=lambda prompt, user: user)
    def render(self, prompt, user): ...

    job_id = render.delay("a cat", "user_123").id   # the job's id is the task id

What happens, through Celery's signals:

* **Publish** (``before_task_publish``): the job is started ``queued`` in the
  publishing process, with the task id as its id and the user id, title and
  metadata the decoration computes from the task's arguments, and the
  ``seenn-job`` carrier goes in the message headers.
* **Run** (``task_prerun`` in the process that runs the task): the job is
  resumed from the headers (or started, for a task published without seenn)
  and made ambient; the task's ``@seenn.job`` call runs in it (no second job).
* **Retry** (``task_retry``): the job goes back to ``queued`` with a message
  naming the next attempt; the next attempt resumes it and says
  ``"Attempt 2 of 4"``. It fails only when Celery gives up.
* **End**: ``task_postrun`` completes it (with the result the decoration
  maps), ``task_failure`` fails it. In a prefork worker, the main process
  fails the job of a child that was killed (``WorkerLostError``: SIGKILL, out
  of memory) or ran past its hard time limit (``TimeLimitExceeded``), and a
  revoked task's job ends ``failed`` with code ``CANCELLED``.
* **Exit**: a pool process flushes its events before it exits
  (``worker_process_shutdown``; Celery ends children with ``os._exit``).

Exporters are set up as usual (``seenn.configure(...)``); in a prefork
worker each child gets fresh delivery threads after the fork.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Any

from seenn._instrumentation.decorator import JobSpec
from seenn._instrumentation.outcomes import error_from_exception
from seenn.integrations._common import (
    FLUSH_TIMEOUT,
    Running,
    carrier_in,
    flush,
    guarded,
    spec_of,
    waiting_in,
    worker_error,
)
from seenn.propagation._carrier import CARRIER_KEY, encode_job
from seenn.propagation._handover import (
    carrier_of,
    end_elsewhere,
    is_live_here,
    own,
    prepare,
    requeue,
    start_prepared,
)

__all__ = ["instrument", "is_instrumented", "uninstrument"]

_lock = threading.Lock()
_connected: list[tuple[Any, Any, str]] = []  # (signal, receiver, dispatch_uid)
_running = Running()  # tasks running in this process
_publishing = Running()  # prepared at before_task_publish, started at after_task_publish
_eager = Running()  # eager retries: apply() runs them with no message to carry the job
_flush_timeout = FLUSH_TIMEOUT


def instrument(*, flush_timeout: float = FLUSH_TIMEOUT) -> None:
    """Track the tasks of every Celery app in this process whose function has ``@seenn.job``.

    Idempotent and process-wide: call it in the web process and in the worker
    alike (at import of the module defining the app). Nothing is patched;
    seenn connects to Celery's signals.

    Args:
        flush_timeout: Seconds a worker process waits, as it exits, for its
            jobs' events to be delivered.
    """
    global _flush_timeout
    from celery import signals

    with _lock:
        _flush_timeout = flush_timeout
        if _connected:
            return
        for signal, receiver in (
            (signals.before_task_publish, _on_publish),
            (signals.after_task_publish, _on_published),
            (signals.task_prerun, _on_prerun),
            (signals.task_retry, _on_retry),
            (signals.task_failure, _on_failure),
            (signals.task_postrun, _on_postrun),
            (signals.task_revoked, _on_revoked),
            (signals.worker_process_shutdown, _on_exit),
            (signals.worker_shutdown, _on_exit),
        ):
            uid = f"seenn.{receiver.__name__}"
            signal.connect(receiver, weak=False, dispatch_uid=uid)
            _connected.append((signal, receiver, uid))


def uninstrument() -> None:
    """Disconnect seenn from Celery's signals (tasks running now keep their jobs)."""
    with _lock:
        for signal, receiver, uid in _connected:
            signal.disconnect(receiver, dispatch_uid=uid)
        _connected.clear()


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return bool(_connected)


# -- publishing ---------------------------------------------------------------------------


def _spec_of_task(task: Any) -> JobSpec | None:
    """The ``@seenn.job`` decoration of a task's function, through Celery's own wrapping.

    ``autoretry_for`` replaces ``task.run`` with a wrapper of the original
    (kept as ``task._orig_run``, and as ``__wrapped__`` by ``functools.wraps``).
    """
    if task is None:
        return None
    for func in (getattr(task, "run", None), getattr(task, "_orig_run", None)):
        for _ in range(4):  # a few layers of functools.wraps at most
            if func is None:
                break
            spec = spec_of(func)
            if spec is not None:
                return spec
            func = getattr(func, "__wrapped__", None)
    return None


def _task_named(name: object) -> Any:
    from celery import current_app

    return current_app.tasks.get(name) if isinstance(name, str) else None


def _call_of(body: object) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of a task message (protocol 2: a tuple; protocol 1: a dict)."""
    if isinstance(body, (tuple, list)) and len(body) >= 2:
        args, kwargs = body[0], body[1]
    elif isinstance(body, Mapping):
        args, kwargs = body.get("args", ()), body.get("kwargs", {})
    else:
        args, kwargs = (), {}
    return (tuple(args) if isinstance(args, (tuple, list)) else (),
            dict(kwargs) if isinstance(kwargs, Mapping) else {})


@guarded("the Celery before_task_publish hook")
def _on_publish(sender: Any = None, body: Any = None, headers: Any = None,
                routing_key: Any = None, **_: Any) -> None:
    if not isinstance(headers, dict):
        return
    task_id = headers.get("id")
    running = _running.get(task_id)
    if running is not None:
        # The task running here republishes itself (self.retry(), autoretry_for,
        # self.replace()): the job goes back to its queue now, before any process
        # can run the next attempt, and the message carries the job as it is now
        # (its children so far included), not as it was first published.
        if is_live_here(running):
            failure = sys.exc_info()[1]
            retries = headers.get("retries")
            requeue(running, reason=type(failure).__name__ if failure else None,
                    queue=waiting_in(routing_key),
                    next_attempt=retries + 1 if isinstance(retries, int) else None)
        headers[CARRIER_KEY] = encode_job(running)
        return
    if headers.get(CARRIER_KEY):
        return  # already carrying its job
    task = _task_named(sender)
    spec = _spec_of_task(task)
    if spec is None or not isinstance(task_id, str):
        return
    args, kwargs = _call_of(body)
    job = prepare(spec, args, kwargs, job_id=task_id, queue=waiting_in(routing_key))
    headers[CARRIER_KEY] = carrier_of(job)[CARRIER_KEY]
    # Started once the message is out (after_task_publish): a publish that fails
    # (the broker is down) makes no job.
    _publishing.add(task_id, job)


@guarded("the Celery after_task_publish hook")
def _on_published(headers: Any = None, **_: Any) -> None:
    task_id = headers.get("id") if isinstance(headers, dict) else None
    job = _publishing.pop(task_id)
    if job is not None:
        start_prepared(job)


# -- running ------------------------------------------------------------------------------


def _request_carrier(request: Any) -> dict[str, str] | None:
    value = getattr(request, CARRIER_KEY, None)
    if value is None:
        value = getattr(request, "headers", None)
    return carrier_in(value)


@guarded("the Celery task_prerun hook")
def _on_prerun(task_id: Any = None, task: Any = None, args: Any = None, kwargs: Any = None,
               **_: Any) -> None:
    spec = _spec_of_task(task)
    if spec is None or not isinstance(task_id, str):
        return
    request = task.request
    retries = getattr(request, "retries", 0) or 0
    max_retries = getattr(task, "max_retries", None)
    carrier = _request_carrier(request)
    eager = _eager.pop(task_id)
    if carrier is None and eager is not None:
        carrier = carrier_of(eager)  # an eager retry: apply() runs it without a message
    job = own(spec, carrier, tuple(args or ()), dict(kwargs or {}),
              job_id=task_id, attempt=retries + 1,
              max_attempts=max_retries + 1 if isinstance(max_retries, int) else None)
    _running.add(task_id, job)


@guarded("the Celery task_retry hook")
def _on_retry(request: Any = None, reason: Any = None, **_: Any) -> None:
    job = _running.get(getattr(request, "id", None))
    if job is None:
        return
    retries = getattr(request, "retries", 0) or 0
    why = type(reason).__name__ if isinstance(reason, BaseException) else reason
    delivery = getattr(request, "delivery_info", None) or {}
    requeue(job, reason=str(why) if why else None,
            queue=waiting_in(delivery.get("routing_key")), next_attempt=retries + 2)
    if getattr(request, "is_eager", False):
        _eager.add(job.id, job)


@guarded("the Celery task_failure hook")
def _on_failure(sender: Any = None, task_id: Any = None, exception: Any = None,
                **_: Any) -> None:
    job = _running.get(task_id)
    if job is not None:  # it ran here and raised; task_postrun follows
        if isinstance(exception, BaseException):
            job._fail_with(exception)
        return
    # The main process of a prefork worker: the child running the task was lost
    # (killed, out of memory) or ran past its hard time limit.
    spec = _spec_of_task(sender)
    if spec is None or not isinstance(task_id, str):
        return
    error = (error_from_exception(exception, full=False)
             if isinstance(exception, BaseException)
             else worker_error("WORKER_LOST", "the task's worker process ended"))
    end_elsewhere(spec, None, job_id=task_id, error=error)


@guarded("the Celery task_postrun hook")
def _on_postrun(task_id: Any = None, state: Any = None, **_: Any) -> None:
    job = _running.pop(task_id)
    if job is None:
        return
    if state == "RETRY":
        requeue(job)  # if task_retry did not already
    elif state not in ("SUCCESS", "IGNORED") and is_live_here(job):
        # A failure this process did not see as an exception (the pool process
        # being stopped past a hard time limit): the main process reports it.
        job.hand_off()
    # Otherwise the job ends as Celery ends the task: completed (SUCCESS, and
    # Ignore, which Celery counts as done), unless it failed or went back to its
    # queue above (a retry, a replace() under the same id).
    job.__exit__(None, None, None)


@guarded("the Celery task_revoked hook")
def _on_revoked(sender: Any = None, request: Any = None, terminated: Any = False,
                signum: Any = None, expired: Any = False, **_: Any) -> None:
    task_id = getattr(request, "id", None)
    job = _running.get(task_id)
    if job is not None:
        return  # revoked while running here: its own end follows
    spec = _spec_of_task(sender)
    if spec is None or not isinstance(task_id, str):
        return
    if expired:
        message = "the task expired before a worker ran it"
    elif terminated:
        message = f"the task was revoked and its process terminated (signal {signum})"
    else:
        message = "the task was revoked"
    end_elsewhere(spec, None, job_id=task_id, error=worker_error("CANCELLED", message))


@guarded("the Celery worker exit hook")
def _on_exit(**_: Any) -> None:
    flush(_flush_timeout)
