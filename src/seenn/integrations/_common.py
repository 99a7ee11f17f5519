"""What the queue integrations share: guarded hooks, patches, the jobs running here, flushing."""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from seenn._core.models import JobError, Queue
from seenn._core.pipeline import internal_error, is_strict, logger
from seenn._core.validation import MAX_JOB_TYPE, MAX_TTL_SECONDS
from seenn._instrumentation.decorator import JobSpec, job_spec
from seenn._instrumentation.job import TrackedJob
from seenn._instrumentation.tracker import default_tracker
from seenn.propagation._carrier import CARRIER_KEY, extract

__all__ = ["FLUSH_TIMEOUT", "RUNS_KEEP_MS", "RUNS_KEY_PREFIX", "Patches", "Running",
           "carrier_in", "flush", "guarded", "guarded_async", "is_run_of", "next_run_id",
           "next_run_id_async", "run_job_id", "runs_key", "spec_of", "spec_to_end",
           "waiting_in", "worker_error"]

F = TypeVar("F", bound=Callable[..., Any])
A = TypeVar("A", bound=Callable[..., Coroutine[Any, Any, Any]])

FLUSH_TIMEOUT = 10.0
"""Seconds a worker process waits, as it exits, for its jobs' events to be delivered."""

FAILING_FLUSH_TIMEOUT = 0.25
"""...and at most this once the backend is found failing (0 when an outbox keeps the events)."""

_FLUSH_SLICE = 0.1  # how often the exit flush looks whether the backend is failing


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


def guarded_async(what: str) -> Callable[[A], A]:
    """:func:`guarded` for coroutine functions (cancellation still goes through)."""
    def decorate(func: A) -> A:
        @functools.wraps(func)
        async def hook(*args: Any, **kwargs: Any) -> Any:
            try:
                return await func(*args, **kwargs)
            except Exception as exc:
                internal_error(what, exc, ())
                if is_strict():
                    raise
                return None

        return hook  # type: ignore[return-value]

    return decorate


class Patches:
    """The methods an integration replaced on a queue library's classes, to put back.

    Each ``(class, name)`` is replaced once. :meth:`remove` puts the original
    back only where seenn's replacement is still the class's attribute: where
    another library wrapped it since, seenn's stays in place (idle while the
    integration is off, so theirs keeps working) and :meth:`install` reuses
    it. Not thread-safe: the integration holds its lock around both.
    """

    def __init__(self) -> None:
        self._installed: dict[tuple[type, str], tuple[Any, Any]] = {}

    def install(self, owner: type, name: str, make: Callable[[Any], Any]) -> None:
        """Replace ``owner.<name>`` (its own attribute) with ``make(original)``, unless done."""
        if (owner, name) in self._installed:
            return
        original = owner.__dict__[name]
        ours = make(original)
        setattr(owner, name, ours)
        self._installed[owner, name] = (original, ours)

    def remove(self) -> None:
        """Put the originals back where seenn's replacements are still on top."""
        for (owner, name), (original, ours) in list(self._installed.items()):
            if owner.__dict__.get(name) is ours:
                setattr(owner, name, original)
                del self._installed[owner, name]


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


def carrier_in(value: object) -> dict[str, str] | None:
    """A carrier holding the ``seenn-job`` value a message brought, if it brought one."""
    if isinstance(value, Mapping):
        value = value.get(CARRIER_KEY)
    return {CARRIER_KEY: value} if isinstance(value, str) and value else None


def spec_to_end(carrier: Mapping[str, Any]) -> JobSpec | None:
    """A spec to end a carried job with where its function is not at hand (default tracker).

    ``None`` when the carrier holds no job.

    Raises:
        ValidationError: The carrier is malformed.
    """
    context = extract(carrier)
    if context is None:
        return None
    return JobSpec(default_tracker(), context.job_type, None, None, None, None, None, None)


RUNS_KEY_PREFIX = "seenn-runs:"
"""The Redis key counting the runs enqueued under one caller-given id is this prefix and the id."""

RUNS_KEEP_MS = MAX_TTL_SECONDS * 1000
"""How long that count is kept after the last run is enqueued: as long as a backend keeps a job."""


def runs_key(queue_job_id: str) -> str:
    """The Redis key counting the runs of a queue job id the caller gave."""
    return RUNS_KEY_PREFIX + queue_job_id


def run_job_id(queue_job_id: str, run: int) -> str:
    """The seenn job id of the ``run``-th run enqueued under one queue job id.

    The first run's job has the queue's id; a later run (the id given again
    once the earlier job ended: a backend never starts a finished job again)
    gets ``<id>~<run>``.
    """
    return queue_job_id if run <= 1 else f"{queue_job_id}~{run}"


def next_run_id(redis: Any, queue_job_id: str) -> str:
    """Count a run enqueued under a caller-given queue job id; its seenn job id.

    ``redis`` is a redis-py client; Redis keeps the count under
    ``seenn-runs:<id>`` for ``RUNS_KEEP_MS`` after the last run.
    """
    key = runs_key(queue_job_id)
    if redis.set(key, 1, nx=True, px=RUNS_KEEP_MS):
        return queue_job_id
    with redis.pipeline() as pipe:
        pipe.incr(key)
        pipe.pexpire(key, RUNS_KEEP_MS)
        run, _ = pipe.execute()
    return run_job_id(queue_job_id, int(run))


async def next_run_id_async(redis: Any, queue_job_id: str) -> str:
    """:func:`next_run_id` with a redis-py asyncio client."""
    key = runs_key(queue_job_id)
    if await redis.set(key, 1, nx=True, px=RUNS_KEEP_MS):
        return queue_job_id
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.pexpire(key, RUNS_KEEP_MS)
        run, _ = await pipe.execute()
    return run_job_id(queue_job_id, int(run))


def is_run_of(job_id: str, queue_job_id: str) -> bool:
    """Whether ``job_id`` is the seenn job id of a run of ``queue_job_id`` (:func:`run_job_id`)."""
    if job_id == queue_job_id:
        return True
    prefix, _, run = job_id.rpartition("~")
    return prefix == queue_job_id and run.isascii() and run.isdigit()


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
    """Jobs by the queue's task id (thread-safe), e.g. the tasks running in this process.

    Bounded: past ``limit`` entries the oldest is forgotten (a table whose
    entries are not always taken back, such as jobs prepared for a publish
    that failed, must not grow forever).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, TrackedJob] = {}
        self._limit = limit

    def add(self, task_id: str, job: TrackedJob) -> None:
        with self._lock:
            self._jobs.pop(task_id, None)
            self._jobs[task_id] = job
            if len(self._jobs) > self._limit:
                del self._jobs[next(iter(self._jobs))]

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


def _exporters(tracker: Any) -> list[Any]:
    return [getattr(processor, "exporter", processor)
            for processor in getattr(tracker, "processors", ())]


def flush(timeout: float = FLUSH_TIMEOUT) -> bool:
    """Deliver what the default tracker's exporters hold, before the process exits.

    A worker process that ends with ``os._exit`` (a Celery prefork child, an
    RQ work horse) runs no ``atexit`` handler: without this, the end of its
    last job could be lost. A backend that is down does not hold the exit up:
    once an exporter finds it failing, the wait ends within
    ``FAILING_FLUSH_TIMEOUT`` (at once when an outbox keeps the events).
    """
    trackers = {default_tracker(), *_trackers}
    deadline = time.monotonic() + timeout
    while True:
        delivered = True
        for tracker in trackers:
            left = max(min(deadline - time.monotonic(), _FLUSH_SLICE), 0.0)
            try:
                delivered = tracker.force_flush(left) and delivered
            except Exception as exc:  # never break the worker's exit
                internal_error("flushing at worker exit", exc, ())
                return False
        now = time.monotonic()
        if delivered or now >= deadline:
            return delivered
        troubled = [exporter for tracker in trackers for exporter in _exporters(tracker)
                    if getattr(exporter, "failing", False)]
        if troubled:
            # What an outbox holds is replayed by the next process; the rest
            # would be lost anyway: do not hold the worker's exit for it.
            durable = all(getattr(exporter, "durable", False) for exporter in troubled)
            deadline = min(deadline, now + (0.0 if durable else FAILING_FLUSH_TIMEOUT))
