"""RQ: a job whose function carries ``@seenn.job`` is one seenn job, from ``enqueue()`` to its end.

Call :func:`instrument` in every process that enqueues or runs jobs (the
module defining the jobs is the natural place). A worker must call it
*before* it runs jobs: ``rq worker`` imports a job's module only in the work
horse, while the job runs, which is too late. Give the worker a settings
module that imports it::

    # myapp/tasks.py
    import seenn
    from seenn.integrations import rq as seenn_rq

    seenn_rq.instrument()

    @seenn.job("video-generation", user_id=lambda prompt, user: user)
    def render(prompt, user): ...

    # myapp/rq_settings.py                  rq worker -c myapp.rq_settings
    import seenn
    seenn.configure(api_key="sk_live_...")
    import myapp.tasks

    job = queue.enqueue(render, "a cat", "user_123")   # job.id is the seenn job's id

RQ has no signals, so seenn wraps a few of its methods (``instrument()``
installs the wrappers, ``uninstrument()`` removes them):

* **Enqueue** (``Queue.enqueue_job``, ``schedule_job``, ``enqueue_many``): the
  job is started ``queued`` with the RQ job id as its id, and the
  ``seenn-job`` carrier goes in ``job.meta``, saved with the job. A
  ``job_id`` the caller gives again is a new run, tracked as ``<id>~2`` (then
  ``~3``...): Redis counts the runs of the ids callers give
  (``seenn-runs:<id>``, for 30 days).
* **Run** (``BaseWorker.perform_job`` in the work horse or a ``SimpleWorker``;
  ``Queue.run_job`` for a queue with ``is_async=False``): the job is resumed
  and made ambient; the function's ``@seenn.job`` call (plain or ``async``)
  runs in it. It completes when RQ has finished the job.
* **Retry** (``handle_job_failure`` with retries left, ``handle_job_retry``
  for a returned ``Retry``): back to ``queued`` with the next attempt named;
  the carrier in ``job.meta`` is updated before RQ saves the job. RQ's retry
  counters give the attempt. It fails only when RQ gives up.
* **Work horse killed** (``handle_work_horse_killed`` then
  ``handle_job_failure`` in the worker's main process): failed with code
  ``WORK_HORSE_TERMINATED`` (or sent back to its queue if RQ retries it); a
  job stopped with ``send_stop_job_command`` ends ``CANCELLED``.
* **Cancel** (``Job.cancel`` of a job not running): failed, ``CANCELLED``.
* **Exit**: the work horse delivers its events before RQ ends it with
  ``os._exit`` (bounded by ``flush_timeout``).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import wrapt

from seenn._core.models import JobError
from seenn._core.pipeline import logger
from seenn._instrumentation.decorator import JobSpec
from seenn._instrumentation.job import TrackedJob
from seenn.errors import ValidationError
from seenn.integrations._common import (
    FLUSH_TIMEOUT,
    RUNS_KEY_PREFIX,
    Patches,
    Running,
    carrier_in,
    flush,
    guarded,
    is_run_of,
    next_run_id,
    spec_of,
    spec_to_end,
    waiting_in,
    worker_error,
)
from seenn.propagation._carrier import CARRIER_KEY, encode_job, extract
from seenn.propagation._handover import (
    end_elsewhere,
    is_live_here,
    own,
    requeue,
    start_handed_off,
)

__all__ = ["RETRIES_KEY", "RUNS_KEY_PREFIX", "instrument", "is_instrumented", "uninstrument"]

RETRIES_KEY = "seenn-retries"
"""The ``job.meta`` key holding the retries the job was enqueued with (``Retry(max=...)``)."""

_lock = threading.Lock()
_active = False
_patches = Patches()
_running = Running()
# The worker's main process: the wait status of a killed work horse, by RQ job id,
# from handle_work_horse_killed() to the handle_job_failure() that follows it.
_killed: dict[str, int] = {}
_flush_timeout = FLUSH_TIMEOUT

_Hook = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]


def instrument(*, flush_timeout: float = FLUSH_TIMEOUT) -> None:
    """Track the RQ jobs of this process whose function has ``@seenn.job``.

    Idempotent and process-wide: call it in the process that enqueues and in
    the worker alike. In a worker it must run before the worker runs jobs
    (``rq worker -c <a settings module that calls it>``); a worker forks its
    work horses from that process, with seenn's hooks in place.

    RQ has no signals: this wraps ``Queue.enqueue_job``, ``schedule_job``,
    ``enqueue_many`` and ``run_job``, ``Job.cancel``, and ``BaseWorker``'s
    ``perform_job``, ``handle_job_failure``, ``handle_job_retry`` and
    ``handle_work_horse_killed`` (subclasses inherit the wrappers).

    Args:
        flush_timeout: Seconds a work horse waits, after its job, for the job's
            events to be delivered before RQ ends it with ``os._exit``.
    """
    global _active, _flush_timeout
    from rq.job import Job
    from rq.queue import Queue
    from rq.worker import BaseWorker

    hooks: tuple[tuple[type, str, _Hook], ...] = (
        (Queue, "enqueue_job", _on_enqueue_job),
        (Queue, "schedule_job", _on_schedule_job),
        (Queue, "enqueue_many", _on_enqueue_many),
        (Queue, "run_job", _on_run_job),
        (Job, "cancel", _on_cancel),
        (BaseWorker, "perform_job", _on_perform_job),
        (BaseWorker, "handle_job_failure", _on_job_failure),
        (BaseWorker, "handle_job_retry", _on_job_retry),
        (BaseWorker, "handle_work_horse_killed", _on_work_horse_killed),
    )
    with _lock:
        _flush_timeout = flush_timeout
        activating = not _active
        for owner, name, hook in hooks:
            _patches.install(owner, name, functools.partial(wrapt.FunctionWrapper, wrapper=hook))
        _active = True
    if activating:
        _warn_if_inside_a_job()


def uninstrument() -> None:
    """Remove seenn's wrappers from RQ (jobs running now keep their jobs).

    A wrapper that another library has wrapped in turn since stays in place,
    inert, so that theirs keeps working.
    """
    global _active
    with _lock:
        _active = False
        _patches.remove()


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return _active


def _warn_if_inside_a_job() -> None:
    from rq.job import get_current_job

    current = get_current_job()
    if current is not None and _running.get(current.id) is None:
        logger.warning(
            "seenn: seenn.integrations.rq.instrument() ran while RQ was running job %s: this "
            "worker did not call it before running jobs, so its jobs are not resumed (each "
            "@seenn.job call makes a job of its own). Start the worker with "
            "`rq worker -c <a module that calls instrument()>`.", current.id)


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


# -- the carrier in job.meta --------------------------------------------------------------


def _readable_meta(job: Any) -> dict[str, Any] | None:
    """The job's meta, unless this process could not deserialize it (leave that alone)."""
    meta = getattr(job, "meta", None)
    if not isinstance(meta, dict) or getattr(job, "_unreadable_meta", None) is not None:
        return None
    return meta


def _carrier_of_job(job: Any) -> dict[str, str] | None:
    """The carrier in ``job.meta``, if it holds this very job (not one copied from another)."""
    meta = _readable_meta(job)
    carrier = carrier_in(meta) if meta is not None else None
    if carrier is None:
        return None
    try:
        context = extract(carrier)
    except ValidationError as exc:
        logger.warning("seenn: RQ job %s carries a malformed seenn-job value: %s", job.id, exc)
        return None
    return carrier if context is not None and is_run_of(context.job_id, job.id) else None


def _attempts(job: Any) -> tuple[int, int | None, int | None]:
    """The attempt RQ's counters say this is, the most it makes if known, and the retries.

    ``retries_left`` counts down from ``Retry(max=...)`` (kept in meta at
    enqueue, since RQ does not keep it); ``number_of_retries`` counts the
    times the job returned a ``Retry``.
    """
    meta = _readable_meta(job) or {}
    left = getattr(job, "retries_left", None)
    left = left if isinstance(left, int) else None
    total = meta.get(RETRIES_KEY)
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        total = left  # not recorded: enqueued without seenn, and this is its first run
    done = max(total - left, 0) if total is not None and left is not None else 0
    returned = getattr(job, "number_of_retries", None)
    returned = returned if isinstance(returned, int) and returned > 0 else 0
    attempt = 1 + done + returned
    most = total + 1 if total and not returned else None
    return attempt, most, total


def _write_carrier(job: Any, tracked: TrackedJob, retries: int | None) -> None:
    """Put the job's carrier in ``job.meta`` (in this worker, before RQ saves the job)."""
    meta = _readable_meta(job)
    if meta is None:
        return
    meta[CARRIER_KEY] = encode_job(tracked)
    if retries is not None:
        meta[RETRIES_KEY] = retries


# -- enqueueing ---------------------------------------------------------------------------


def _loaded_function(name: object, instance: Any = None) -> Any:
    """A job's function, if this process has imported its module (nothing is imported).

    ``name`` and ``instance`` are RQ's reference to it (``job.func_name``,
    ``job.instance``): a dotted path, or a method name on an instance.
    """
    if not isinstance(name, str):
        return None
    if instance is not None:
        return getattr(instance, name, None)
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        found: Any = sys.modules.get(".".join(parts[:cut]))
        if found is None:
            continue
        for part in parts[cut:]:
            found = getattr(found, part, None)
        return found
    return None


# What an enqueue hook started: the spec, the carrier, the RQ job id, the seenn job id.
_Started = tuple[JobSpec, dict[str, str], str, str]


def _start_queued(spec: JobSpec, args: Any, kwargs: Any, job_id: str, queue: Any,
                  named: bool) -> tuple[dict[str, str], str]:
    # A job id the caller gives again once its earlier job ended is a new job, which a
    # backend would refuse under the id of the finished one: "<id>~2" (Redis counts).
    tracked_id = next_run_id(queue.connection, job_id) if named else job_id
    _job, carrier = start_handed_off(
        spec, tuple(args or ()), dict(kwargs or {}), job_id=tracked_id,
        queue=waiting_in(getattr(queue, "name", None)))
    return carrier, tracked_id


@guarded("the RQ enqueue hook")
def _track_enqueue(job: Any, queue: Any, named: bool, unique: bool) -> _Started | None:
    if job is None or getattr(job, "repeats_left", None) is not None:
        return None  # a repeating job runs again under the same id: not one queue job
    if _carrier_of_job(job) is not None:
        return None  # tracked already: a retry, a job moved back to its queue
    meta = _readable_meta(job)
    spec = spec_of(_loaded_function(job.func_name, job.instance))
    if spec is None or meta is None:
        return None
    if unique and queue.connection.exists(job.key):
        return None  # RQ will refuse it (DuplicateJobError): not a new job
    carrier, tracked_id = _start_queued(spec, job.args, job.kwargs, job.id, queue, named)
    # A new dict: the caller's meta= may be shared with other jobs.
    job.meta = {**meta, CARRIER_KEY: carrier[CARRIER_KEY]}
    if isinstance(job.retries_left, int):
        job.meta[RETRIES_KEY] = job.retries_left
    return spec, carrier, job.id, tracked_id


@guarded("the RQ enqueue hook")
def _enqueue_failed(started: list[_Started], exc: BaseException) -> None:
    from rq.exceptions import DuplicateJobError

    for spec, carrier, job_id, tracked_id in started:
        if isinstance(exc, DuplicateJobError) and tracked_id == job_id:
            continue  # the id belongs to a job enqueued before: it is not ours to end
        end_elsewhere(spec, carrier, job_id=tracked_id, error=worker_error(
            "ENQUEUE_FAILED", f"RQ could not enqueue the job ({type(exc).__name__})"))


def _enqueueing(wrapped: Any, queue: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # enqueue_job(job, pipeline, at_front, unique), schedule_job(job, datetime, pipeline, unique)
    job = _arg(args, kwargs, 0, "job")
    # Read before job.id is: that makes one up when the caller gave none.
    named = getattr(job, "_id", None) is not None
    unique = bool(_arg(args, kwargs, 3, "unique"))
    # unique=True needs an id given by the caller: RQ says so.
    started = _track_enqueue(job, queue, named, unique) if _active and (named or not unique) \
        else None
    try:
        return wrapped(*args, **kwargs)
    except Exception as exc:
        if started:
            _enqueue_failed([started], exc)
        raise


_on_enqueue_job = _enqueueing
_on_schedule_job = _enqueueing


@guarded("the RQ enqueue_many hook")
def _track_enqueue_data(data: Any, queue: Any) -> tuple[Any, Any]:
    func = _loaded_function(data.func) if isinstance(data.func, str) else data.func
    spec = spec_of(func)
    if spec is None or data.repeat is not None:
        return data, None
    job_id = data.job_id or str(uuid.uuid4())
    carrier, tracked_id = _start_queued(spec, data.args, data.kwargs, job_id, queue,
                                        data.job_id is not None)
    meta = {**(data.meta or {}), CARRIER_KEY: carrier[CARRIER_KEY]}
    if data.retry is not None:
        meta[RETRIES_KEY] = data.retry.max
    return data._replace(job_id=job_id, meta=meta), (spec, carrier, job_id, tracked_id)


def _on_enqueue_many(wrapped: Any, queue: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
    if not _active:
        return wrapped(*args, **kwargs)
    datas = list(_arg(args, kwargs, 0, "job_datas") or ())
    started = []
    for index, data in enumerate(datas):
        tracked = _track_enqueue_data(data, queue)
        if tracked is not None:
            datas[index], entry = tracked
            if entry is not None:
                started.append(entry)
    if args:
        args = (datas, *args[1:])
    else:
        kwargs = {**kwargs, "job_datas": datas}
    try:
        return wrapped(*args, **kwargs)
    except Exception as exc:
        _enqueue_failed(started, exc)
        raise


# -- running ------------------------------------------------------------------------------


def _function_here(job: Any) -> Any:
    try:
        return job.func  # imports it, as RQ is about to
    except Exception:  # RQ fails the job with this error itself
        return None


@guarded("the RQ job start hook")
def _begin(job: Any) -> TrackedJob | None:
    if job is None or getattr(job, "repeats_left", None) is not None:
        return None
    carrier = _carrier_of_job(job)
    spec = spec_of(_function_here(job))
    if spec is None and carrier is not None:
        # No @seenn.job function to run it any more (or none importable), but the
        # job was promised at enqueue: it still ends as RQ ends it.
        spec = spec_to_end(carrier)
    if spec is None:
        return None
    attempt, most, _total = _attempts(job)
    args, kwargs = (job.args, job.kwargs) if carrier is None else ((), {})
    tracked = own(spec, carrier, tuple(args or ()), dict(kwargs or {}), job_id=job.id,
                  attempt=attempt, max_attempts=most)
    _running.add(job.id, tracked)
    return tracked


@guarded("the RQ job end hook")
def _finish(job: Any, exc: BaseException | None) -> None:
    tracked = _running.pop(getattr(job, "id", None))
    if tracked is None:
        return
    if exc is None:
        tracked.__exit__(None, None, None)  # completes it unless it ended or was requeued
    else:
        tracked.__exit__(type(exc), exc, exc.__traceback__)


def _run(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run a job in the seenn job it owns here (if any), and end that as RQ ended it.

    RQ's failure and retry paths (wrapped below) have failed or requeued it
    by the time the call returns; what is still live here completes.
    """
    job = _arg(args, kwargs, 0, "job")
    tracked = _begin(job) if _active else None
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        if tracked is not None:
            _finish(job, exc)
        raise
    if tracked is not None:
        _finish(job, None)
    return result


@guarded("the RQ work horse exit hook")
def _flush_before_exit() -> None:
    flush(_flush_timeout)


def _on_perform_job(wrapped: Any, worker: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
    try:
        return _run(wrapped, args, kwargs)
    finally:
        # A work horse ends with os._exit once this returns, which skips atexit:
        # deliver the job's events first (and those of any track() it ran).
        if _active and getattr(worker, "is_horse", False):
            _flush_before_exit()


def _on_run_job(wrapped: Any, queue: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
    # A queue with is_async=False runs the job here, at enqueue; RQ does not retry it.
    return _run(wrapped, args, kwargs)


def _requeue_here(job: Any, tracked: TrackedJob, queue: Any, reason: str | None) -> None:
    attempt, _most, total = _attempts(job)
    requeue(tracked, reason=reason, queue=waiting_in(getattr(queue, "name", None)),
            next_attempt=attempt + 1)
    _write_carrier(job, tracked, total)


@guarded("the RQ handle_job_failure hook")
def _failed_here(worker: Any, job: Any, queue: Any, tracked: TrackedJob) -> None:
    """The job raised (or RQ failed it) in this process: requeued or failed, as RQ will do.

    This runs before RQ saves the job, so a retry's carrier goes in the meta it saves.
    """
    if not is_live_here(tracked):
        return
    exc = sys.exc_info()[1]  # RQ calls this while it handles the job's exception
    stopped = getattr(worker, "_stopped_job_id", None) == job.id
    if job.should_retry and not stopped:
        _requeue_here(job, tracked, queue, type(exc).__name__ if exc is not None else None)
    elif exc is not None:
        tracked._fail_with(exc)
    else:
        tracked.fail(error=worker_error("FAILED", "RQ failed the job"))


@guarded("the RQ handle_job_failure hook")
def _cause(worker: Any, job: Any) -> JobError:
    """Why a job that was not running here failed: killed horse, stop, lost worker."""
    status = _killed.pop(job.id, None)
    if getattr(worker, "_stopped_job_id", None) == job.id:
        return worker_error("CANCELLED", "the job was stopped (send_stop_job_command)")
    if status is None:
        return worker_error("WORKER_LOST", "RQ failed the job outside of its work horse "
                                           "(the worker that took it was lost)")
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "a signal"
        how = f"was killed by {name} (signal {number})"
    elif os.WIFEXITED(status):
        how = f"exited with status {os.WEXITSTATUS(status)}"
    else:
        how = f"ended (wait status {status})"
    return worker_error("WORK_HORSE_TERMINATED", f"the work horse running the job {how}")


@guarded("the RQ handle_job_failure hook")
def _failed_elsewhere(job: Any, queue: Any, error: JobError) -> None:
    """The worker's main process: RQ failed (or retries) a job its work horse was running."""
    from rq.job import JobStatus

    carrier = _carrier_of_job(job)
    spec = spec_to_end(carrier) if carrier is not None else None
    if spec is None or carrier is None:
        return  # enqueued without seenn: its job, if any, ends by the stale limit
    status = job.get_status(refresh=False)
    if status in (JobStatus.QUEUED, JobStatus.SCHEDULED):
        attempt, most, _total = _attempts(job)  # RQ has counted the retry: the next one
        tracked = own(spec, carrier, (), {}, job_id=job.id, attempt=max(attempt - 1, 1),
                      max_attempts=most)
        requeue(tracked, reason=error.message, queue=waiting_in(getattr(queue, "name", None)),
                next_attempt=attempt)
        tracked.__exit__(None, None, None)
    elif status in (JobStatus.FAILED, JobStatus.STOPPED):
        end_elsewhere(spec, carrier, job_id=job.id, error=error)


def _on_job_failure(wrapped: Any, worker: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
    job, queue = _arg(args, kwargs, 0, "job"), _arg(args, kwargs, 1, "queue")
    tracked = _running.get(getattr(job, "id", None))
    if tracked is not None:  # even after uninstrument(): the job began before
        _failed_here(worker, job, queue, tracked)
        return wrapped(*args, **kwargs)
    if not _active or job is None:
        return wrapped(*args, **kwargs)
    error = _cause(worker, job)  # before RQ forgets which job it stopped
    result = wrapped(*args, **kwargs)
    if error is not None:
        _failed_elsewhere(job, queue, error)
    return result


@guarded("the RQ handle_job_retry hook")
def _retry_returned(job: Any, queue: Any, retry: Any) -> None:
    tracked = _running.get(getattr(job, "id", None))
    if tracked is None or not is_live_here(tracked):
        return
    done = job.number_of_retries or 0
    if done and done >= retry.max:
        tracked.fail(error=worker_error(
            "MAX_RETRIES_EXCEEDED", f"the job returned Retry after its last retry ({retry.max})"))
    else:
        _requeue_here(job, tracked, queue, "Retry")


def _on_job_retry(wrapped: Any, worker: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
    _retry_returned(_arg(args, kwargs, 0, "job"), _arg(args, kwargs, 1, "queue"),
                    _arg(args, kwargs, 2, "retry"))
    return wrapped(*args, **kwargs)


def _on_work_horse_killed(wrapped: Any, worker: Any, args: tuple[Any, ...],
                          kwargs: dict[str, Any]) -> Any:
    job, status = _arg(args, kwargs, 0, "job"), _arg(args, kwargs, 2, "ret_val")
    if _active and job is not None and isinstance(status, int):
        _killed[job.id] = status
    return wrapped(*args, **kwargs)


# -- cancelling ---------------------------------------------------------------------------


@guarded("the RQ cancel hook")
def _cancelled(job: Any, status: object) -> None:
    from rq.job import JobStatus

    if status == JobStatus.STARTED:
        return  # RQ lets a running job run on; its worker ends its seenn job
    carrier = _carrier_of_job(job)
    spec = spec_to_end(carrier) if carrier is not None else None
    if spec is not None and carrier is not None:
        end_elsewhere(spec, carrier, job_id=job.id, error=worker_error(
            "CANCELLED", "the job was cancelled before it ran"))


def _on_cancel(wrapped: Any, job: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    status = getattr(job, "_status", None)  # as this process knows it; no Redis call
    result = wrapped(*args, **kwargs)
    if _active:
        _cancelled(job, status)
    return result
