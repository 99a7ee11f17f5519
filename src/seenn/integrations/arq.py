"""arq: a job whose function has ``@seenn.job`` is one seenn job, from ``enqueue_job()`` to its end.

Call :func:`instrument` once in every process that enqueues or runs jobs. arq
enqueues by function *name*, so the enqueuing process names the functions it
enqueues (the same list as ``WorkerSettings.functions``); a worker finds them
in its own settings::

    import seenn
    from seenn.integrations import arq as seenn_arq

    @seenn.job("video-generation", user_id=lambda ctx, prompt, user: user)
    async def render(ctx, prompt, user): ...

    seenn_arq.instrument(functions=[render])

    class WorkerSettings:
        functions = [render]

    job = await redis.enqueue_job("render", "a cat", "user_123")
    job.job_id                                    # the seenn job's id too

What happens:

* **Enqueue** (``ArqRedis.enqueue_job``): the job is started ``queued`` in the
  enqueuing process, with arq's job id as its id (seenn picks the id arq would
  have picked, a UUID in hex, when the caller gives none), and its carrier is
  written to Redis under ``seenn-job:<job id>`` *before* the job is enqueued,
  so a worker never sees the job without it. arq jobs have no header slot:
  this side key is how the carrier travels. It expires a day after the arq job
  would, and is deleted when the job ends. A ``_job_id`` given again once arq
  has forgotten the earlier job is a new run, tracked as ``<id>~2`` (then
  ``~3``...): Redis counts the runs of the ids callers give
  (``seenn-runs:<id>``, for 30 days).
* **Run**: each tracked function of a :class:`arq.worker.Worker` made while
  instrumented is wrapped. The wrapper runs in the job's own asyncio task
  (arq runs ``on_job_start`` in another task, and its hooks never see how the
  job ended): it reads the side key, resumes the job (or starts it, with the
  arq job id, when nothing was enqueued with it, and writes the side key so
  that later tries resume it), and the function's ``@seenn.job`` call runs in
  it. ``ctx["job_try"]`` above 1 shows ``"Attempt 2 of 5"``.
* **End**: a return completes the job (with the result the decoration maps);
  an exception fails it. ``arq.Retry`` sends it back to ``queued`` for the next
  try; on the last try (``max_tries``) it fails, with the exception the
  ``Retry`` was raised from, if any. A job past arq's ``job_timeout`` fails with
  code ``JOB_TIMEOUT``; an aborted job (``Job.abort()``) with ``CANCELLED``; a
  job cancelled by a stopping worker goes back to ``queued`` (arq runs it again).
  A job sent back to its queue is stored again in its side key as it is then
  (its children counted), before arq lets the next try run.
* **Ended before it ran**: when arq ends a job without running it (tries
  used up after a worker died, expired, aborted before it started, function
  unknown), the worker that picks it up fails its job.
* **A killed worker**: arq runs the job again once its in-progress key expires
  (``job_timeout`` + 10 s): that try resumes the same job. Until then nothing
  in arq notices; ``seenn serve``'s stale limit ends a job left ``running``
  as ``failed``, ``WORKER_LOST``.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import threading
import uuid
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from seenn._core.models import JobError
from seenn._core.pipeline import logger
from seenn._core.validation import fail
from seenn._instrumentation.decorator import JobSpec
from seenn._instrumentation.job import TrackedJob
from seenn._instrumentation.outcomes import error_from_exception
from seenn.integrations._common import (
    RUNS_KEY_PREFIX,
    Patches,
    guarded,
    guarded_async,
    next_run_id_async,
    spec_of,
    spec_to_end,
    waiting_in,
    worker_error,
)
from seenn.propagation._carrier import CARRIER_KEY, encode_job
from seenn.propagation._handover import (
    end_elsewhere,
    is_live_here,
    own,
    requeue,
    start_handed_off,
)

__all__ = ["RUNS_KEY_PREFIX", "SIDE_KEY_PREFIX", "instrument", "is_instrumented",
           "uninstrument"]

SIDE_KEY_PREFIX = "seenn-job:"
"""The Redis key of a job's carrier is this prefix and arq's job id."""

_KEEP_EXTRA_MS = 86_400_000  # the side key outlives the arq job by a day: see _keep_ms
# The keyword arguments of ArqRedis.enqueue_job that are arq's, not the function's.
_ARQ_OPTIONS = frozenset({"_job_id", "_queue_name", "_defer_until", "_defer_by", "_expires",
                          "_job_try"})

_lock = threading.Lock()
_active = False
_patches = Patches()
# Function name -> decoration, for enqueue_job: instrument(functions=) and workers made here.
_specs: dict[str, JobSpec] = {}
# Each instrumented worker's tracked functions, by name.
_worker_specs: weakref.WeakKeyDictionary[Any, dict[str, JobSpec]] = weakref.WeakKeyDictionary()
# The tries running in this process, by arq job id (ended by Worker.finish_job).
_attempts: dict[str, _Attempt] = {}


def instrument(*, functions: Iterable[Any] = ()) -> None:
    """Track the arq jobs of this process whose function has ``@seenn.job``.

    Idempotent and process-wide: call it where the enqueuing process sets up
    its Redis pool and in the module of the worker's ``WorkerSettings`` (before
    the worker is made). Each call adds the ``functions`` it is given.

    Args:
        functions: The functions this process enqueues by name, as in
            ``WorkerSettings.functions``: coroutine functions, ``arq.func(...)``
            (its ``name`` is the name enqueued), ``arq.cron(...)`` jobs, or import
            paths. A worker needs none: it tracks the functions it runs. A name
            not given here is not tracked at enqueue; the worker then starts the
            job when it runs it.

    Raises:
        ValidationError: An item of ``functions`` is not a coroutine function,
            an ``arq`` function or cron job, or an import path of one.
    """
    global _active
    named = _named(functions)
    from arq.connections import ArqRedis
    from arq.worker import Worker

    with _lock:
        _specs.update(named)
        for cls, name, make in ((ArqRedis, "enqueue_job", _enqueue_patch),
                                (Worker, "__init__", _init_patch),
                                (Worker, "finish_job", _finish_patch),
                                (Worker, "finish_failed_job", _finish_failed_patch)):
            _patches.install(cls, name, make)
        _active = True


def uninstrument() -> None:
    """Stop tracking arq jobs (jobs running now keep theirs; named functions stay known).

    The patches are removed where nothing was put over them since; where
    something was, they stay and pass every call through.
    """
    global _active
    with _lock:
        _active = False
        _patches.remove()


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return _active


def _named(functions: Iterable[Any]) -> dict[str, JobSpec]:
    """The tracked functions among ``functions``, by the name arq enqueues them under."""
    if isinstance(functions, (str, bytes)) or not isinstance(functions, Iterable):
        fail("functions", "must be a list of functions, as WorkerSettings.functions")
    named: dict[str, JobSpec] = {}
    for item in functions:
        if hasattr(item, "name") and hasattr(item, "coroutine"):  # arq.func(), arq.cron()
            name, coroutine = item.name, item.coroutine
        else:
            from arq.worker import func

            try:
                made = func(item)
            except Exception as exc:  # arq asserts (0.25) or raises RuntimeError (0.28)
                fail("functions", f"{item!r} is not a coroutine function or an import path "
                                  f"of one ({type(exc).__name__})")
            name, coroutine = made.name, made.coroutine
        spec = spec_of(coroutine)
        if spec is not None and isinstance(name, str):
            named[name] = spec
    return named


# -- the side key -------------------------------------------------------------------------


def _side_key(job_id: str) -> str:
    return SIDE_KEY_PREFIX + job_id


def _side_value(function: str, carrier: Mapping[str, str]) -> str:
    return json.dumps({"function": function, CARRIER_KEY: carrier[CARRIER_KEY]},
                      separators=(",", ":"))


def _read_side(raw: object) -> tuple[str | None, dict[str, str]] | None:
    """The function name and carrier a side key holds; ``None`` if it holds none."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = None
    carrier = value.get(CARRIER_KEY) if isinstance(value, dict) else None
    if not isinstance(carrier, str) or not carrier:
        logger.warning("seenn: arq: the side key of a job holds no carrier: %.80r", raw)
        return None
    function = value.get("function")
    return (function if isinstance(function, str) else None), {CARRIER_KEY: carrier}


def _keep_ms(redis: Any, options: Mapping[str, Any]) -> int:
    """How long a side key lives: as long as arq keeps the job, and a day more.

    The extra day lets the worker that finds the job expired (or its tries
    used up) still find its carrier and fail it.
    """
    from arq.utils import timestamp_ms, to_ms, to_unix_ms

    expires = to_ms(options.get("_expires"))
    if not expires:
        now = timestamp_ms()
        until = options.get("_defer_until")
        score = to_unix_ms(until) if until is not None else now + (to_ms(options.get("_defer_by"))
                                                                   or 0)
        expires = max(score - now, 0) + int(getattr(redis, "expires_extra_ms", _KEEP_EXTRA_MS))
    return int(expires) + _KEEP_EXTRA_MS


# -- enqueueing ---------------------------------------------------------------------------


def _enqueue_patch(original: Any) -> Any:
    @functools.wraps(original)
    async def enqueue_job(self: Any, function: str, *args: Any, **kwargs: Any) -> Any:
        if not _active:
            return await original(self, function, *args, **kwargs)
        prepared = await _prepare(self, function, args, kwargs)
        if prepared is None:
            return await original(self, function, *args, **kwargs)
        job_id, spec, carrier = prepared
        try:
            return await original(self, function, *args, **{**kwargs, "_job_id": job_id})
        except Exception as exc:
            _not_enqueued(spec, carrier, job_id, exc)
            raise

    return enqueue_job


@guarded_async("the arq enqueue_job hook")
async def _prepare(redis: Any, function: object, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> tuple[str, JobSpec, dict[str, str]] | None:
    """Start the job of a tracked function and store its carrier, before arq enqueues it."""
    spec = _specs.get(function) if isinstance(function, str) else None
    if spec is None or not isinstance(function, str):
        return None
    job_id = kwargs.get("_job_id")
    if job_id is None:
        job_id = tracked_id = uuid.uuid4().hex  # what arq would pick
    elif not isinstance(job_id, str):
        return None
    else:
        from arq.constants import job_key_prefix, result_key_prefix

        if await redis.exists(job_key_prefix + job_id, result_key_prefix + job_id):
            return None  # arq will refuse it (enqueue_job returns None): not a new job
        # An id given again once arq forgot the earlier job (keep_result passed, a
        # cron job_id=): the run is a new job, which a backend would refuse under
        # the id of the finished one: "<id>~2" (Redis counts the runs of the id).
        tracked_id = await next_run_id_async(redis, job_id)
    call_kwargs = {name: value for name, value in kwargs.items() if name not in _ARQ_OPTIONS}
    queue = waiting_in(kwargs.get("_queue_name") or getattr(redis, "default_queue_name", None))
    # The callables of @seenn.job get the function's arguments: ctx is None here.
    _job, carrier = start_handed_off(spec, (None, *args), call_kwargs, job_id=tracked_id,
                                     queue=queue)
    try:
        await redis.set(_side_key(job_id), _side_value(function, carrier),
                        px=_keep_ms(redis, kwargs))
    except Exception as exc:
        # No carrier, no job: the worker will start one under a fresh id.
        _not_enqueued(spec, carrier, job_id, exc)
        raise
    return job_id, spec, carrier


@guarded("ending the job of an arq job that was not enqueued")
def _not_enqueued(spec: JobSpec, carrier: Mapping[str, str], job_id: str,
                  exc: BaseException) -> None:
    # Started queued and never enqueued: it would wait for ever (queued jobs never go stale).
    end_elsewhere(spec, carrier, job_id=job_id,
                  error=worker_error("ENQUEUE_FAILED",
                                     f"arq did not enqueue the job ({type(exc).__name__})"))


# -- running ------------------------------------------------------------------------------


class _Attempt:
    """One try of a tracked job in this worker."""

    __slots__ = ("aborting", "cancelled", "function", "job", "job_id", "job_try", "max_tries",
                 "outcome", "timeout_s")

    def __init__(self, job: TrackedJob, job_id: str, function: str, job_try: int,
                 max_tries: int, timeout_s: float | None) -> None:
        self.job = job
        self.job_id = job_id
        self.function = function  # the name arq runs it under
        self.job_try = job_try
        self.max_tries = max_tries
        self.timeout_s = timeout_s
        self.cancelled = False
        self.aborting = False
        self.outcome: str | None = None  # "ended" or "requeued", once decided


def _init_patch(original: Any) -> Any:
    # functools.wraps keeps Worker's signature visible: arq's create_worker() reads it.
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if _active:
            _wrap_functions(self)

    return __init__


@guarded("wrapping an arq worker's functions")
def _wrap_functions(worker: Any) -> None:
    """Wrap the tracked functions of a new worker (copies: the caller's objects are not changed)."""
    specs: dict[str, JobSpec] = {}
    for name, function in list(worker.functions.items()):
        spec = spec_of(getattr(function, "coroutine", None))
        if spec is None:
            continue
        replacement = copy.copy(function)
        replacement.coroutine = _runner(worker, function, spec)
        worker.functions[name] = replacement
        specs[name] = spec
    _worker_specs[worker] = specs
    with _lock:
        _specs.update(specs)  # a job that enqueues another one, in this worker


def _runner(worker: Any, function: Any, spec: JobSpec) -> Any:
    coroutine = function.coroutine

    @functools.wraps(coroutine)
    async def run(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        attempt = await _begin(worker, function, spec, ctx, args, kwargs) if _active else None
        if attempt is None:
            return await coroutine(ctx, *args, **kwargs)
        try:
            value = await coroutine(ctx, *args, **kwargs)
        except asyncio.CancelledError:
            # A timeout, an abort or a stopping worker: which one, and whether arq runs
            # the job again, is known in finish_job.
            attempt.cancelled = True
            attempt.aborting = attempt.job_id in getattr(worker, "aborting_tasks", ())
            raise
        except BaseException as exc:
            _raised(worker, attempt, exc)
            raise
        _returned(attempt)
        return value

    return run


@guarded_async("the arq job start hook")
async def _begin(worker: Any, function: Any, spec: JobSpec, ctx: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> _Attempt | None:
    """Resume (or start) the job of a try, ambient in this task, for the function's call."""
    job_id = ctx.get("job_id") if isinstance(ctx, Mapping) else None
    if not isinstance(job_id, str):
        return None
    job_try = ctx.get("job_try")
    job_try = job_try if isinstance(job_try, int) and job_try > 0 else 1
    stored = _read_side(await worker.pool.get(_side_key(job_id)))
    # As arq reads them: None means the worker's setting (0 is a value).
    max_tries = getattr(function, "max_tries", None)
    max_tries = worker.max_tries if max_tries is None else max_tries
    timeout_s = getattr(function, "timeout_s", None)
    timeout_s = worker.job_timeout_s if timeout_s is None else timeout_s
    job = own(spec, stored[1] if stored else None, (ctx, *args), kwargs, job_id=job_id,
              attempt=job_try, max_attempts=max_tries)
    attempt = _Attempt(job, job_id, function.name, job_try, max_tries, timeout_s)
    _attempts[job_id] = attempt
    if stored is None:
        await _remember(worker, job_id, function.name, job)
    return attempt


@guarded_async("storing the carrier of an arq job")
async def _remember(worker: Any, job_id: str, function: str, job: TrackedJob) -> None:
    """Store the carrier of a job as it is now: the next try resumes it, never starts another.

    Written when the worker starts a job enqueued without one, and again when
    a try sends the job back to its queue: the next try then carries on from
    there (its children numbered after this try's).
    """
    key = _side_key(job_id)
    keep = int(getattr(worker, "expires_extra_ms", _KEEP_EXTRA_MS)) + _KEEP_EXTRA_MS
    # No shorter than it was: a job enqueued with a long _expires keeps its carrier as long.
    left = await worker.pool.pttl(key)
    await worker.pool.set(key, _side_value(function, {CARRIER_KEY: encode_job(job)}),
                          px=max(keep, left if isinstance(left, int) else 0))


@guarded("the arq job end hook")
def _returned(attempt: _Attempt) -> None:
    attempt.outcome = "ended"
    attempt.job.__exit__(None, None, None)  # completed, with the result @seenn.job kept


@guarded("the arq job end hook")
def _raised(worker: Any, attempt: _Attempt, exc: BaseException) -> None:
    from arq.worker import Retry, RetryJob

    job = attempt.job
    if getattr(worker, "retry_jobs", True) and isinstance(exc, (Retry, RetryJob)):
        cause = exc.__cause__ or exc.__context__
        if not isinstance(cause, Exception) or isinstance(cause, (Retry, RetryJob)):
            cause = None
        if attempt.job_try >= attempt.max_tries:
            # arq will not run it again: the next worker to pick it up fails it unrun.
            job.fail(error=cause if cause is not None else worker_error(
                "RETRIES_EXHAUSTED", f"arq stopped after {attempt.max_tries} tries"))
            attempt.outcome = "ended"
        else:
            requeue(job, reason=type(cause).__name__ if cause is not None else None,
                    queue=waiting_in(worker.queue_name), next_attempt=attempt.job_try + 1)
            attempt.outcome = "requeued"
        job.__exit__(None, None, None)
        return
    attempt.outcome = "ended"
    job.__exit__(type(exc), exc, exc.__traceback__)  # failed, as the outcome table says


def _finish_patch(original: Any) -> Any:
    @functools.wraps(original)
    async def finish_job(self: Any, job_id: str, finish: bool, *args: Any, **kwargs: Any) -> None:
        attempt = _attempts.pop(job_id, None) if isinstance(job_id, str) else None
        if attempt is not None and attempt.outcome is None:
            _settle(self, attempt, finish)
        if attempt is not None and attempt.outcome == "requeued":
            # Before arq lets the next try run: it resumes the job as it is now.
            await _remember(self, job_id, attempt.function, attempt.job)
        elif attempt is not None and attempt.outcome == "ended":
            # Before arq forgets the job: once it has, the id may be enqueued again,
            # with a side key of its own.
            await _forget(self, job_id)
        await original(self, job_id, finish, *args, **kwargs)

    return finish_job


@guarded("the arq job end hook")
def _settle(worker: Any, attempt: _Attempt, finish: bool) -> None:
    """End a try that was cancelled, as arq decided: run again, or finished."""
    job = attempt.job
    if not is_live_here(job):
        return
    if not finish:  # a stopping worker's job: arq runs it again
        requeue(job, reason="the worker stopped", queue=waiting_in(worker.queue_name),
                next_attempt=attempt.job_try + 1)
        attempt.outcome = "requeued"
    else:
        if attempt.aborting:
            error = worker_error("CANCELLED", "the job was aborted")
        elif getattr(worker, "retry_jobs", True) or not _stopping(worker):
            # With retries on, only a timeout finishes a cancelled job.
            limit = f" of {attempt.timeout_s:g} s" if attempt.timeout_s else ""
            error = worker_error("JOB_TIMEOUT", f"the job ran past arq's job_timeout{limit}")
        else:
            error = worker_error("CANCELLED", "the worker stopped while the job ran")
        job.fail(error=error)
        attempt.outcome = "ended"
    job.__exit__(None, None, None)


def _stopping(worker: Any) -> bool:
    """Whether the worker is shutting down (its main task cancelled)."""
    main = getattr(worker, "main_task", None)
    if main is None:
        return False
    cancelling = getattr(main, "cancelling", None)  # Python 3.11+
    return bool(main.done() or (cancelling is not None and cancelling()))


@guarded_async("removing the carrier of an ended arq job")
async def _forget(worker: Any, job_id: str) -> None:
    await worker.pool.delete(_side_key(job_id))


def _finish_failed_patch(original: Any) -> Any:
    @functools.wraps(original)
    async def finish_failed_job(self: Any, job_id: str, result_data: Any, *args: Any,
                                **kwargs: Any) -> None:
        await original(self, job_id, result_data, *args, **kwargs)
        if _active and isinstance(job_id, str):
            await _ended_unrun(self, job_id, result_data)

    return finish_failed_job


@guarded_async("the arq hook for jobs ended before they ran")
async def _ended_unrun(worker: Any, job_id: str, result_data: Any) -> None:
    """arq failed a job without running it: fail its seenn job, if it has one."""
    stored = _read_side(await worker.pool.get(_side_key(job_id)))
    if stored is None:
        return
    function, carrier = stored
    specs = _worker_specs.get(worker, {})
    spec = (specs.get(function) or _specs.get(function)) if function is not None else None
    if spec is None:  # a function this worker does not know: the job still ends
        spec = spec_to_end(carrier)
    if spec is not None:
        end_elsewhere(spec, carrier, job_id=job_id, error=_unrun_error(worker, result_data))
    await worker.pool.delete(_side_key(job_id))


def _unrun_error(worker: Any, result_data: Any) -> JobError:
    """The error arq recorded for a job it ended unrun (tries used up, expired, aborted)."""
    result: object = None
    if isinstance(result_data, bytes):
        from arq.jobs import deserialize_result

        try:
            result = deserialize_result(result_data,
                                        deserializer=worker.job_deserializer).result
        except Exception:  # an unreadable result still ends the job
            result = None
    if isinstance(result, asyncio.CancelledError):
        return worker_error("CANCELLED", "the job was aborted before it ran")
    if isinstance(result, BaseException):
        return error_from_exception(result, full=False)
    return worker_error("JobExecutionFailed", "arq ended the job before it ran")
