"""What the queue integrations share: guarded hooks, the jobs running here, flushing."""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from seenn._core.models import JobError, Queue
from seenn._core.pipeline import internal_error, is_strict, logger
from seenn._core.validation import MAX_JOB_TYPE
from seenn._instrumentation.decorator import JobSpec, job_spec
from seenn._instrumentation.job import TrackedJob
from seenn._instrumentation.tracker import default_tracker
from seenn.propagation._carrier import CARRIER_KEY

__all__ = ["FLUSH_TIMEOUT", "Running", "carrier_of", "flush", "guarded", "spec_of",
           "waiting_in", "worker_error"]

F = TypeVar("F", bound=Callable[..., Any])

FLUSH_TIMEOUT = 10.0
"""Seconds a worker process waits, as it exits, for its jobs' events to be delivered."""


def guarded(what: str) -> Callable[[F], F]:
    """Make a queue hook never raise into the queue library (errors are logged).

    A broken hook must not break task publishing or execution, any more than
    a failing backend would. In strict mode (``seenn.testing``) it raises.
    """
    def decorate(func: F) -> F:
        @functools.wraps(func)
        def hook(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                internal_error(what, exc, ())
                if is_strict():
                    raise
                return None

        return hook  # type: ignore[return-value]

    return decorate


# The trackers of the jobs seen here (besides the default one): flushed at exit.
_trackers: weakref.WeakSet[Any] = weakref.WeakSet()


def spec_of(func: Any) -> JobSpec | None:
    """The ``@seenn.job`` decoration of a task's function (plain or async), if any."""
    found = job_spec(func)
    if found is None:
        return None
    spec, kind = found
    if kind not in ("sync", "async"):
        logger.warning("seenn: a generator task is not tracked as a queue job: %r", func)
        return None
    if hasattr(spec.tracker, "force_flush"):
        _trackers.add(spec.tracker)
    return spec


def carrier_of(value: object) -> dict[str, str] | None:
    """A carrier holding the ``seenn-job`` value a message brought, if it brought one."""
    if isinstance(value, Mapping):
        value = value.get(CARRIER_KEY)
    return {CARRIER_KEY: value} if isinstance(value, str) and value else None


def waiting_in(queue_name: object) -> Queue:
    """The place of a job waiting in a named queue (position unknown: shown as 0)."""
    if isinstance(queue_name, str) and 0 < len(queue_name) <= MAX_JOB_TYPE \
            and queue_name.isprintable():
        return Queue(position=0, queue_name=queue_name)
    return Queue(position=0)


def worker_error(code: str, message: str) -> JobError:
    """The error of a job whose worker ended it without running to an outcome."""
    return JobError(code=code, message=message)


class Running:
    """The jobs whose tasks run in this process, by the queue's task id (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, TrackedJob] = {}

    def add(self, task_id: str, job: TrackedJob) -> None:
        with self._lock:
            self._jobs[task_id] = job

    def get(self, task_id: object) -> TrackedJob | None:
        if not isinstance(task_id, str):
            return None
        with self._lock:
            return self._jobs.get(task_id)

    def pop(self, task_id: object) -> TrackedJob | None:
        if not isinstance(task_id, str):
            return None
        with self._lock:
            return self._jobs.pop(task_id, None)

    def clear(self) -> None:
        with self._lock:
            self._jobs.clear()


def flush(timeout: float = FLUSH_TIMEOUT) -> bool:
    """Deliver what the default tracker's exporters hold, before the process exits.

    A worker process that ends with ``os._exit`` (a Celery prefork child, an
    RQ work horse) runs no ``atexit`` handler: without this, the end of its
    last job could be lost.
    """
    deadline = time.monotonic() + timeout
    delivered = True
    for tracker in {default_tracker(), *_trackers}:
        try:
            delivered = tracker.force_flush(max(deadline - time.monotonic(), 0.0)) and delivered
        except Exception as exc:  # never break the worker's exit
            internal_error("flushing at worker exit", exc, ())
            delivered = False
    return delivered
