"""Jobs that start where work is enqueued and run where it is done.

``defer()`` is the public way: the job of one call of a ``@seenn.job``
function is created now (``queued``, its id known), and a :class:`DeferredJob`
runs the call later, in another thread or process, as that same job.

The queue integrations (``seenn.integrations.*``) build on the same pieces:

* :func:`start_handed_off`: in the process that enqueues, the job of a call,
  started ``queued`` and handed off, with the carrier to send along;
* :func:`own`: in the worker, the job a task runs in, started or resumed and
  made ambient; the task's ``@job`` call adopts it instead of starting a child,
  and the integration ends it (``__exit__``), or sends it back to its queue
  (:func:`requeue`) when the queue will retry the task;
* :func:`end_elsewhere`: a process that never ran the job ends it (Celery's
  main process, after the child running the task was killed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from typing_extensions import ParamSpec

from seenn._core.models import JobError, Queue
from seenn._core.validation import MAX_JOB_TYPE, MAX_MESSAGE, check_text
from seenn._instrumentation.decorator import JobSpec, job_spec
from seenn._instrumentation.job import TrackedJob, plain_job
from seenn._instrumentation.states import HANDED, NEW_WITH_QUEUE
from seenn.propagation._carrier import CARRIER_KEY, JobContext, encode_job, extract
from seenn.propagation._resume import ResumeScope, resumed_job, resumed_sequence

__all__ = ["DeferredJob", "carrier_of", "defer", "end_elsewhere", "is_live_here", "own",
           "prepare", "requeue", "start_handed_off", "start_prepared"]

P = ParamSpec("P")
R = TypeVar("R")

_WAITING = Queue(position=0)


def start_handed_off(spec: JobSpec, args: tuple[Any, ...], kwargs: Mapping[str, Any], *,
                     job_id: str | None = None,
                     queue: Queue | None = _WAITING) -> tuple[TrackedJob, dict[str, str]]:
    """Start the job of a call that is about to be enqueued, and hand it off.

    The job is made as the call itself would make it (its user id, title and
    metadata computed from the call's arguments), started ``queued`` (or
    ``running`` with ``queue=None``) as a child of the ambient job, if any, and
    handed off: this process sends its ``started`` event and nothing more.

    Returns:
        The job and the carrier to send with the work.

    Raises:
        ValidationError: ``job_id`` is malformed, or a callable option of the
            decoration returned a malformed value.
    """
    job = prepare(spec, args, kwargs, job_id=job_id, queue=queue)
    return job, start_prepared(job)


def prepare(spec: JobSpec, args: tuple[Any, ...], kwargs: Mapping[str, Any], *,
            job_id: str | None = None, queue: Queue | None = _WAITING) -> TrackedJob:
    """Make the job of a call about to be enqueued, not started yet.

    For a queue that says only *after* publishing whether the message went
    out: :func:`carrier_of` gives the carrier to put in the message now, and
    :func:`start_prepared` starts the job once it is published (a message that
    was never sent makes no job).

    Raises:
        ValidationError: As for :func:`start_handed_off`.
    """
    job = spec.new_job(args, dict(kwargs))
    if job_id is not None:
        check_text("job_id", job_id, max_len=MAX_JOB_TYPE)
        job._id = job_id
    job._queue = queue
    if queue is not None:
        job._state = NEW_WITH_QUEUE  # as track(queue=...) makes it
    return job


def carrier_of(job: TrackedJob) -> dict[str, str]:
    """The carrier of a job as it is now (prepared, running or handed off)."""
    return {CARRIER_KEY: encode_job(job)}


def start_prepared(job: TrackedJob) -> dict[str, str]:
    """Start a :func:`prepare`-d job (a child of the ambient job, if any) and hand it off.

    Returns:
        The carrier.
    """
    job._start()
    carrier = job.hand_off()
    job._succeed(None)  # leaves it handed off: the processors hear no end from here
    return carrier


def own(spec: JobSpec, carrier: Mapping[str, Any] | None, args: tuple[Any, ...],
        kwargs: Mapping[str, Any], *, job_id: str | None = None, attempt: int = 1,
        max_attempts: int | None = None) -> TrackedJob:
    """Enter the job a task runs in: resumed from ``carrier``, or started here.

    The job becomes ambient on this thread (or asyncio task), and the first call
    of the ``@job`` function ``spec`` describes adopts it: the call runs in it
    and keeps its result, but does not end it. The caller ends it with
    ``job.__exit__(...)`` in the same context (completed, or failed as the
    outcome table says), after :func:`requeue` if the queue retries the task.

    Args:
        spec: The ``@job`` decoration of the task's function.
        carrier: What the enqueuing process sent (``None``, or one holding no
            job, starts the job here, with ``job_id``).
        args: The call's positional arguments (for the decoration's callables).
        kwargs: The call's keyword arguments.
        job_id: The id of a job started here (the queue's id of the task).
        attempt: Which attempt this is (1 for the first); later attempts say so
            in the job's message and in ``metadata["attempt"]``.
        max_attempts: How many attempts the queue makes at most, if known.

    Raises:
        ValidationError: The carrier or an argument is malformed.
    """
    context = extract(carrier) if carrier is not None else None
    if context is None:
        job = spec.new_job(args, dict(kwargs))
        if job_id is not None:
            check_text("job_id", job_id, max_len=MAX_JOB_TYPE)
            job._id = job_id
        _note_attempt(job, attempt, max_attempts)
        job._awaiting = spec
        job.__enter__()
        return job
    job = _resumed(spec, context)
    _note_attempt(job, attempt, max_attempts)
    job._awaiting = spec
    job._enter_resumed(resumed_sequence())
    return job


def _resumed(spec: JobSpec, context: JobContext) -> TrackedJob:
    job = resumed_job(context, spec.tracker, spec.retryable)
    if spec.plan is not None and job._plan is None:
        job._plan = spec.plan
    return job


def _note_attempt(job: TrackedJob, attempt: int, max_attempts: int | None) -> None:
    if attempt > 1:
        # A total this attempt is past (a per-call override, as Celery's
        # self.retry(max_retries=...)) is not the total: leave it out.
        of = f" of {max_attempts}" if max_attempts and attempt <= max_attempts else ""
        job._message = f"Attempt {attempt}{of}"
        job._metadata = {"attempt": attempt}


def is_live_here(job: TrackedJob) -> bool:
    """Whether the job runs here still: started, not ended, not handed off."""
    return 0 < job._state < HANDED


def requeue(job: TrackedJob, *, reason: str | None = None, queue: Queue = _WAITING,
            next_attempt: int | None = None) -> None:
    """Send a job back to its queue: the queue will run the task again, as the same job.

    The job reads ``queued`` with a message saying so, and is handed off, so
    that leaving it (``job.__exit__``) ends nothing: the next attempt resumes it.
    A job no longer live here (already sent back, or ended) is left alone: the
    next attempt may already run elsewhere.
    """
    if not is_live_here(job):
        return
    message = (f"Waiting for attempt {next_attempt}" if next_attempt is not None
               and next_attempt > 1 else "Waiting in line") + (f": {reason}" if reason else "")
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE - 1] + "…"
    job.set_progress(job.progress, queue=queue, message=_printable(message))
    job.hand_off()


def end_elsewhere(spec: JobSpec, carrier: Mapping[str, Any] | None, *, job_id: str,
                  error: JobError, retryable: bool | None = None) -> None:
    """End as failed a job that another process was running (and is gone).

    Nothing is reported but the failure: the job's progress and stage stay what
    the backend last heard.
    """
    context = extract(carrier) if carrier is not None else None
    if context is not None:
        job = _resumed(spec, context)
        job._progress = 0
        job._stage = None
    else:
        job = plain_job(spec.tracker, spec.job_type, None)
        check_text("job_id", job_id, max_len=MAX_JOB_TYPE)
        job._id = job_id
    job._resume(resumed_sequence(), announce=False)
    job._finish("failed", None, None, error, retryable, warn=False)


def _printable(text: str) -> str:
    # Reasons come from exceptions: keep what the backend can store.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class DeferredJob(Generic[R]):
    """A call of a ``@seenn.job`` function whose job exists already; calling this runs it.

    Made by :func:`defer`. Hand it to a thread pool, FastAPI's
    ``BackgroundTasks``, or (it pickles, by reference to the function) a
    process pool: calling it runs the function in that job, which completes
    when the call returns and fails if it raises (async functions: calling it
    returns the coroutine to await). Run it once.

    Attributes:
        id: The job's id, to give to whoever waits for it.
    """

    __slots__ = ("_args", "_carrier", "_func", "_kwargs", "id")

    def __init__(self, func: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any],
                 carrier: dict[str, str], job_id: str) -> None:
        self._func = func
        self._args = args
        self._kwargs = kwargs
        self._carrier = carrier
        self.id = job_id

    @property
    def carrier(self) -> dict[str, str]:
        """The carrier (a copy) that continues the job, for :func:`seenn.propagation.resume`."""
        return dict(self._carrier)

    def __call__(self) -> R:
        """Run the call as the job: completed on return, failed by an exception."""
        found = job_spec(self._func)
        if found is None:  # pragma: no cover - checked by defer()
            raise TypeError("DeferredJob needs a @seenn.job function")
        spec, kind = found
        context = extract(self._carrier)
        if context is None:  # pragma: no cover - defer() wrote the carrier
            raise TypeError("DeferredJob: the carrier holds no job")
        job = _resumed(spec, context)
        job._awaiting = spec
        scope = ResumeScope(job, spec.tracker, context)
        if kind == "async":
            result: Any = self._run_async(scope)
            return result  # type: ignore[no-any-return]
        with scope:
            return self._func(*self._args, **self._kwargs)

    async def _run_async(self, scope: ResumeScope) -> Any:
        async with scope:
            return await self._func(*self._args, **self._kwargs)  # type: ignore[misc]

    def __reduce__(self) -> tuple[Any, ...]:
        return DeferredJob, (self._func, self._args, self._kwargs, self._carrier, self.id)

    def __repr__(self) -> str:
        name = getattr(self._func, "__qualname__", type(self._func).__name__)
        return f"<DeferredJob {self.id} {name}>"


def defer(func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> DeferredJob[R]:
    """Create the job of ``func(*args, **kwargs)`` now; run the call later, anywhere.

    ``func`` is a ``@seenn.job`` function (plain or async). Its job is created
    at once, ``queued``, as the call would make it (user id, title and metadata
    from the arguments) and as a child of the ambient job, if any; so its id can
    be returned to whoever waits before any work starts::

        deferred = seenn.defer(render, request)
        background_tasks.add_task(deferred)       # or executor.submit(deferred)
        return {"jobId": deferred.id}

    Args:
        func: A function decorated with ``@seenn.job`` (or a method of one).
        *args: Its positional arguments.
        **kwargs: Its keyword arguments.

    Returns:
        The deferred call; calling it runs ``func`` as that job.

    Raises:
        TypeError: ``func`` has no ``@seenn.job``, or is a generator function.
        ValidationError: A callable option of the decoration returned a malformed value.
    """
    found = job_spec(func)
    if found is None:
        raise TypeError(f"defer() needs a function decorated with @seenn.job, got {func!r}")
    spec, kind = found
    if kind not in ("sync", "async"):
        raise TypeError("defer() runs plain and async functions, not generators")
    job, carrier = start_handed_off(spec, args, kwargs)
    return DeferredJob(func, args, dict(kwargs), carrier, job.id)
