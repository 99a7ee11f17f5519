"""``TrackedJob``: the state machine behind ``track()`` and ``@job``.

Every public method validates its arguments first and raises
:class:`~seenn.ValidationError` before anything changes. State changes then
become :class:`~seenn.JobEvent` objects handed to the tracker's processors,
inline and without I/O. A job with no processors (nothing configured) builds
no events at all, which is what keeps the unconfigured path cheap.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from seenn._context import CURRENT_JOB
from seenn._events import EventBuilder, EventKind, JobEvent, get_current_span
from seenn._ids import new_job_id
from seenn._models import JobError, JobResult, JobStatus, Queue, Stage
from seenn._pipeline import internal_error, is_strict, logger
from seenn._validation import (
    MAX_JOB_TYPE,
    MAX_MESSAGE,
    MAX_STAGE_NAME,
    MAX_TITLE,
    MAX_USER_ID,
    check_int,
    check_metadata,
    check_opt_text,
    check_progress,
    check_text,
    coerce_error,
    coerce_queue,
    coerce_result,
    coerce_stage,
    fail,
)

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

    from seenn._pipeline import Processor
    from seenn._stages import StageScope
    from seenn._tracker import Tracker

__all__ = ["RetryRule", "StagePlan", "TrackedJob", "error_from_exception", "plain_job"]

RetryRule: TypeAlias = (
    bool
    | type[BaseException]
    | tuple[type[BaseException], ...]
    | Callable[[BaseException], bool]
    | None
)
"""Whether a failure may be retried: a bool, exception types, or a predicate."""

StagePlan: TypeAlias = Sequence[str] | int | None
"""Declared stages: their names in order, or just how many there are."""

_NEW = 0
_RUNNING = 1
_DONE = 2
_HANDED = 3  # running, but continued elsewhere: leaving the block does not complete it

MAX_STAGES = 1000
_MAX_TRACEBACK = 8000
_MAX_CHAIN = 5

_child_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # Another thread may have held the lock when the process forked.
    global _child_lock
    _child_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
_get = CURRENT_JOB.get
_time = time.time
_set = CURRENT_JOB.set
_reset = CURRENT_JOB.reset


def _restore(token: Any) -> None:
    try:
        _reset(token)
    except ValueError:
        # The block was left in another context than it was entered in (a
        # generator resumed elsewhere): put back what was ambient, by value.
        old = token.old_value
        _set(None if old is token.MISSING else old)


def _check_plan(stages: object) -> tuple[str, ...] | int | None:
    if stages is None:
        return None
    if isinstance(stages, int) and not isinstance(stages, bool):
        return check_int("stages", stages, minimum=1, maximum=MAX_STAGES)
    if isinstance(stages, str) or not isinstance(stages, Sequence):
        fail("stages", f"must be a sequence of stage names or an int, not {type(stages).__name__}")
    names = tuple(stages)
    if not 1 <= len(names) <= MAX_STAGES:
        fail("stages", f"must name 1 to {MAX_STAGES} stages, got {len(names)}")
    for index, name in enumerate(names):
        check_text(f"stages[{index}]", name, max_len=MAX_STAGE_NAME)
    if len(set(names)) != len(names):
        fail("stages", "must not name a stage twice")
    return names


def _check_retry_rule(value: object) -> RetryRule:
    if value is None or isinstance(value, bool) or callable(value):
        return value
    if isinstance(value, tuple) and all(
            isinstance(item, type) and issubclass(item, BaseException) for item in value):
        return value
    fail("retryable", "must be a bool, an exception type, a tuple of them, or a predicate")
    return None  # unreachable: fail() raises


def _qualified_name(kind: type) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, GeneratorExit):
        return True
    # asyncio is only consulted if something already imported it: an asyncio
    # CancelledError cannot exist otherwise, and importing asyncio is slow.
    aio = sys.modules.get("asyncio")
    if aio is not None and isinstance(exc, aio.CancelledError):
        return True
    # trio.Cancelled and friends: cancellations that are not Exceptions.
    return not isinstance(exc, Exception) and type(exc).__name__ in ("Cancelled", "CancelledError")


def is_success_exit(exc: BaseException) -> bool:
    """Whether ``exc`` ends a tracked block successfully (``SystemExit(0)``)."""
    if isinstance(exc, SystemExit):
        code = exc.code
        return code is None or (isinstance(code, int) and code == 0)
    return False


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "INTERRUPTED"
    if _is_cancellation(exc):
        return "CANCELLED"
    try:
        code = getattr(exc, "code", None)
    except Exception:
        code = None
    if isinstance(code, str) and 1 <= len(code) <= MAX_JOB_TYPE:
        return code
    return type(exc).__name__[:MAX_JOB_TYPE]


def _chain(exc: BaseException) -> list[dict[str, str]]:
    links: list[dict[str, str]] = []
    seen = {id(exc)}
    current: BaseException | None = exc
    while current is not None and len(links) < _MAX_CHAIN:
        if current.__cause__ is not None:
            nxt, relation = current.__cause__, "cause"
        elif current.__context__ is not None and not current.__suppress_context__:
            nxt, relation = current.__context__, "context"
        else:
            break
        if id(nxt) in seen:
            break
        seen.add(id(nxt))
        links.append({"relation": relation, "type": _qualified_name(type(nxt)),
                      "message": _safe_str(nxt)[:MAX_MESSAGE]})
        current = nxt
    return links


def error_from_exception(exc: BaseException, *, full: bool = True) -> JobError:
    """Build the ``JobError`` for an exception, following the outcome table of DESIGN.md.

    ``details`` always names the exception's qualified type; with ``full`` it
    also holds the formatted traceback (the last 8,000 characters, chain
    included) and the cause/context chain, for exporters that want them.
    """
    message = _safe_str(exc)[:MAX_MESSAGE] or type(exc).__name__
    details: dict[str, Any] = {"type": _qualified_name(type(exc))}
    if full:
        try:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except Exception:
            text = ""
        details["traceback"] = text[-_MAX_TRACEBACK:]
        chain = _chain(exc)
        if chain:
            details["chain"] = chain
    return JobError(code=_error_code(exc), message=message, details=details)


def _retryable_for(rule: RetryRule, exc: BaseException) -> bool | None:
    if rule is None or isinstance(rule, bool):
        return rule
    if isinstance(rule, (type, tuple)):
        return isinstance(exc, rule)
    try:
        return bool(rule(exc))
    except Exception as failure:
        internal_error("the retryable predicate", failure, ())
        if is_strict():
            raise
        return None


class TrackedJob:
    """A job whose changes are reported as they happen; made by ``track()`` and ``@job``.

    Entering it (``with``/``async with``) starts the job and makes it the ambient
    job; leaving completes it, or fails it with the exception's details (the
    exception is re-raised). Reading attributes is free; every ``set_*`` method
    validates first and raises :class:`~seenn.ValidationError` before changing
    anything. Once the job is completed or failed, further updates are ignored
    with one logged warning.

    Attributes are read-only: ``id``, ``job_type``, ``user_id``, ``title``,
    ``status``, ``progress``, ``message``, ``current_stage``, ``queue``,
    ``metadata``, ``result``, ``error``, ``retryable``, ``parent_id``,
    ``child_index``, ``is_done``.
    """

    # The attributes read on every call live in slots; the rest are class
    # attributes acting as defaults until a job sets its own (in __dict__), so
    # making a job stores only what the caller gave: the unconfigured path is
    # mostly the cost of making the job.
    __slots__ = ("__dict__", "__weakref__", "_id", "_job_type", "_lock", "_procs", "_progress",
                 "_queue", "_seq", "_state", "_status", "_token", "_tracker", "_user_id")

    _tracker: Tracker
    _job_type: str
    _token: Any
    _user_id: str | None
    _queue: Queue | None
    _status: JobStatus
    _progress: int
    _lock: threading.Lock | None
    _state: int
    _id: str | None
    # Set when the job gets processors, and only read after that.
    _procs: tuple[Processor, ...]
    _seq: int
    _title: str | None = None
    _metadata: Mapping[str, Any] | None = None
    _plan: tuple[str, ...] | int | None = None
    _stage_count = 0
    _retry_rule: RetryRule = None
    _message: str | None = None
    _stage: Stage | None = None
    _result: JobResult | None = None
    _error: JobError | None = None
    _retryable: bool | None = None
    _parent: TrackedJob | None = None
    _child_index: int | None = None
    _children = 0
    _warned = False

    def __init__(
        self,
        tracker: Tracker,
        job_type: str,
        user_id: str | None = None,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        queue: Queue | Mapping[str, Any] | None = None,
        stage: Stage | Mapping[str, Any] | str | None = None,
        stages: StagePlan = None,
        job_id: str | None = None,
        retryable: RetryRule = None,
    ) -> None:
        # The common call passes only job_type (and maybe user_id): keep that path
        # to a few type tests and stores.
        if type(job_type) is not str or not 0 < len(job_type) <= MAX_JOB_TYPE:
            check_text("job_type", job_type, max_len=MAX_JOB_TYPE)
        if user_id is not None and (type(user_id) is not str
                                    or not 0 < len(user_id) <= MAX_USER_ID):
            check_text("user_id", user_id, max_len=MAX_USER_ID)
        # Keep these stores in step with plain_job() and Tracker.track().
        self._tracker = tracker
        self._job_type = job_type
        self._user_id = user_id
        self._queue = None
        self._status = "pending"
        self._progress = 0
        self._lock = None
        self._state = _NEW
        self._id = None
        if title is not None or metadata is not None or queue is not None or \
                stage is not None or stages is not None or job_id is not None or \
                retryable is not None:
            self._init_options(title, metadata, queue, stage, stages, job_id, retryable)

    def _init_options(self, title: str | None, metadata: Mapping[str, Any] | None,
                      queue: Queue | Mapping[str, Any] | None,
                      stage: Stage | Mapping[str, Any] | str | None, stages: StagePlan,
                      job_id: str | None, retryable: RetryRule) -> None:
        # Everything is checked before anything is stored.
        if title is not None:
            check_text("title", title, max_len=MAX_TITLE)
        if metadata is not None:
            metadata = check_metadata(metadata)
        checked_queue = coerce_queue(queue) if queue is not None else None
        if job_id is not None:
            check_text("job_id", job_id, max_len=MAX_JOB_TYPE)
        plan = _check_plan(stages)
        if retryable is not None:
            retryable = _check_retry_rule(retryable)
        self._plan = plan
        checked_stage = self._resolve_stage(stage) if stage is not None else None
        self._title = title
        self._metadata = metadata
        self._queue = checked_queue
        if job_id is not None:
            self._id = job_id
        self._retry_rule = retryable
        if checked_stage is not None:
            self._stage = checked_stage
            self._stage_count = checked_stage.current

    # -- read-only state ---------------------------------------------------------------

    @property
    def id(self) -> str:
        """The job's id: ``job_`` + a ULID, made on first use, unless given to ``track()``."""
        job_id = self._id
        if job_id is None:
            job_id = self._id = new_job_id()
        return job_id

    @property
    def job_type(self) -> str:
        """The kind of job, e.g. ``"video-generation"``."""
        return self._job_type

    @property
    def user_id(self) -> str | None:
        """The user the job belongs to (inherited from the parent job if not given)."""
        return self._user_id

    @property
    def title(self) -> str | None:
        """The human-readable title, if one was given."""
        return self._title

    @property
    def status(self) -> JobStatus:
        """``pending`` before the block starts, then ``running``/``queued``, then terminal."""
        return self._status

    @property
    def progress(self) -> int:
        """Percent done, 0 to 100 (100 once completed)."""
        return self._progress

    @property
    def message(self) -> str | None:
        """The latest progress message."""
        return self._message

    @property
    def current_stage(self) -> Stage | None:
        """The current stage, if any (``stage()`` is the method that runs a block as one)."""
        return self._stage

    @property
    def queue(self) -> Queue | None:
        """The job's place in a queue, if given."""
        return self._queue

    @property
    def metadata(self) -> Mapping[str, Any] | None:
        """The latest metadata given."""
        return self._metadata

    @property
    def result(self) -> JobResult | None:
        """The result set with ``set_result`` or ``complete``."""
        return self._result

    @property
    def error(self) -> JobError | None:
        """Why the job failed, once it has."""
        return self._error

    @property
    def retryable(self) -> bool | None:
        """Whether the failure may be retried, once the job has failed."""
        return self._retryable

    @property
    def parent_id(self) -> str | None:
        """The id of the job this one was started inside, if any."""
        parent = self._parent
        return parent.id if parent is not None else None

    @property
    def child_index(self) -> int | None:
        """This job's 0-based index among its parent's children, in start order."""
        return self._child_index

    @property
    def is_done(self) -> bool:
        """Whether the job has completed or failed."""
        return self._state == _DONE

    def __repr__(self) -> str:
        return (f"<TrackedJob {self.id} {self._job_type!r} status={self._status} "
                f"progress={self._progress}>")

    # -- updates -----------------------------------------------------------------------

    def set_progress(
        self,
        progress: float,
        /,
        *,
        message: str | None = None,
        stage: Stage | Mapping[str, Any] | str | None = None,
        queue: Queue | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Report how far the job has got.

        Args:
            progress: Percent done, 0 to 100 (floats are floored).
            message: A short human-readable message (at most 1,000 characters).
            stage: The current stage: a ``Stage``, a dict of its fields, or a
                name (numbered from the declared ``stages``).
            queue: The job's place in a queue; giving one marks the job queued.
            metadata: Replaces the job's metadata (a JSON object, at most 10 KB).

        Raises:
            ValidationError: An argument is out of range; nothing was changed.
        """
        # Fast path: a bare in-range int with nothing configured is the common call.
        if type(progress) is int and 0 <= progress <= 100:
            value: int = progress
        else:
            value = check_progress(progress)
        if message is None and stage is None and queue is None and metadata is None:
            if self._lock is None:
                if self._state == _RUNNING:
                    self._progress = value
                    self._status = "running"
                elif self._state == _DONE:
                    self._ignored("set_progress")
                else:
                    self._progress = value
                return
            if value == self._progress and self._status == "running":
                # Nothing would change: no event. Loops that report per item
                # often repeat the same percentage many times.
                return
            new_stage = None
        else:
            if message is not None:
                check_opt_text("message", message, max_len=MAX_MESSAGE)
            new_stage = self._resolve_stage(stage) if stage is not None else None
            if queue is not None:
                queue = coerce_queue(queue)
            if metadata is not None:
                metadata = check_metadata(metadata)
        lock = self._lock
        if lock is None:
            if self._state == _DONE:
                self._ignored("set_progress")
                return
            self._apply(value, message, new_stage, queue, metadata)
            return
        lock.acquire()
        try:
            if self._state == _DONE:
                self._ignored("set_progress")
                return
            self._apply(value, message, new_stage, queue, metadata)
            self._emit("progress")
        finally:
            lock.release()

    def _apply(self, progress: int, message: str | None, stage: Stage | None,
               queue: Queue | None, metadata: Mapping[str, Any] | None) -> None:
        self._progress = progress
        if message is not None:
            self._message = message
        if stage is not None:
            self._stage = stage
            self._stage_count = stage.current
        if metadata is not None:
            self._metadata = metadata
        if queue is not None:
            self._queue = queue
            self._status = "queued"
        elif self._state == _RUNNING:
            self._status = "running"

    def set_stage(
        self,
        name: str,
        /,
        *,
        current: int | None = None,
        total: int | None = None,
        description: str | None = None,
    ) -> None:
        """Move the job to the stage ``name``.

        ``current`` and ``total`` default to the stage's place in the declared
        ``stages`` (or, with none declared, to the count of stages so far). With
        stages declared, progress moves forward to the start of this stage.

        Raises:
            ValidationError: The stage is not declared or its numbers are off;
                nothing was changed.
        """
        stage = self._resolve_stage(name, current, total, description)
        self._change_stage(stage, warn=True)

    def stage(self, name: str, /, *, description: str | None = None) -> StageScope:
        """Return a context manager (and decorator) that runs a block as stage ``name``.

        Entering moves the job to the stage (as :meth:`set_stage`); leaving
        without an exception moves progress forward to the end of the stage when
        stages are declared.
        """
        from seenn._stages import StageScope

        return StageScope(name, description, self)

    def set_result(self, result: JobResult | Mapping[str, Any], /) -> None:
        """Set the result sent with the completion (``type``, ``url``, ``data``; ≤ 100 KB).

        Raises:
            ValidationError: The result is malformed or too large; nothing was changed.
        """
        checked = coerce_result(result)
        lock = self._lock
        if lock is None:
            if self._state == _DONE:
                self._ignored("set_result")
                return
            self._result = checked
            return
        lock.acquire()
        try:
            if self._state == _DONE:
                self._ignored("set_result")
                return
            self._result = checked
        finally:
            lock.release()

    def complete(self, *, result: JobResult | Mapping[str, Any] | None = None,
                 message: str | None = None) -> None:
        """Complete the job now (progress 100); leaving the block then changes nothing.

        Raises:
            ValidationError: The result or message is malformed; nothing was changed.
        """
        checked = coerce_result(result) if result is not None else None
        if message is not None:
            check_opt_text("message", message, max_len=MAX_MESSAGE)
        self._finish("completed", checked, message, None, None, warn=True)

    def fail(self, *, error: JobError | Mapping[str, Any] | BaseException | str | None = None,
             retryable: bool | None = None) -> None:
        """Fail the job now; leaving the block then changes nothing.

        Args:
            error: A ``JobError``, a dict with ``code``/``message``/``details``, an
                exception (turned into an error as the outcome table says), or a
                message (code ``"FAILED"``).
            retryable: Whether the job may be retried.

        Raises:
            ValidationError: The error is malformed; nothing was changed.
        """
        if error is None:
            checked = JobError(code="FAILED", message="Job failed")
        elif isinstance(error, str):
            check_text("error.message", error, max_len=10_000, min_len=0)
            checked = JobError(code="FAILED", message=error)
        elif isinstance(error, BaseException):
            checked = error_from_exception(error, full=self._lock is not None)
        else:
            checked = coerce_error(error)
        if retryable is not None and not isinstance(retryable, bool):
            fail("retryable", f"must be a bool, not {type(retryable).__name__}")
        self._finish("failed", None, None, checked, retryable, warn=True)

    def hand_off(self) -> dict[str, str]:
        """Hand the job over to another process and return the carrier to resume it with.

        The job goes on running: leaving its block (or returning from its
        decorated function) normally no longer completes it, so that a worker
        can :func:`seenn.propagation.resume` it and report its progress and its
        end. An exception leaving the block still fails it, and
        :meth:`complete` and :meth:`fail` still end it here. Send the carrier
        (a dict of strings) along with the work: a queue message, task
        headers, an HTTP request. It also holds the OpenTelemetry trace
        context, written by the global propagator, so the worker can continue
        the trace: that of the job's own span (``OTelExporter(span_per_job=True)``),
        else that of the current span.

        Returns:
            The carrier: the job under the ``seenn-job`` key (see
            ``docs/propagation.md``), plus the trace context, if there is a span.

        Raises:
            RuntimeError: The job has not started yet, or has already ended.
        """
        from seenn.propagation import _carrier_for_hand_off, _encode_job

        lock = self._lock
        if lock is not None:
            lock.acquire()
        try:
            if self._state == _NEW:
                raise RuntimeError("hand_off() needs a started job: call it inside the "
                                   "job's block")
            if self._state == _DONE:
                raise RuntimeError(f"hand_off(): job {self.id} has already {self._status}")
            value = _encode_job(self)
            self._state = _HANDED
        finally:
            if lock is not None:
                lock.release()
        return _carrier_for_hand_off(value, self)

    # -- lifecycle (used by track(), @job and stages) ----------------------------------

    def __enter__(self) -> Self:
        if self._state != _NEW:
            raise RuntimeError("a TrackedJob can be entered only once")
        # _start(), inlined: this is the hot path.
        parent = _get()
        if parent is not None:
            self._adopt(parent)
        self._state = _RUNNING
        self._status = "queued" if self._queue is not None else "running"
        procs = self._tracker._processors
        if procs:
            self._open(procs)
        self._token = _set(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        token = self._token
        self._token = None
        if exc is None and self._lock is None:
            # Nothing configured: completing is three assignments.
            if self._state == _RUNNING:
                self._state = _DONE
                self._status = "completed"
                self._progress = 100
        else:
            try:
                if exc is None:
                    self._succeed(None)
                else:
                    self._fail_with(exc)
            except BaseException:
                _restore(token)
                raise
        try:
            _reset(token)
        except ValueError:
            _restore(token)

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    def _start(self) -> None:
        parent = _get()
        if parent is not None:
            self._adopt(parent)
        self._state = _RUNNING
        self._status = "queued" if self._queue is not None else "running"
        procs = self._tracker._processors
        if procs:
            self._open(procs)

    def _open(self, procs: tuple[Processor, ...]) -> None:
        self._procs = procs
        self._seq = 0
        # No other thread can reach the job before it is entered: no locking yet.
        self._lock = threading.Lock()
        self._emit("started")

    def _adopt(self, parent: TrackedJob) -> None:
        self._parent = parent
        with _child_lock:
            self._child_index = parent._children
            parent._children += 1
        if self._user_id is None:
            self._user_id = parent._user_id

    def _succeed(self, result: JobResult | None) -> None:
        """End the job as completed (unless it already ended, or was handed off)."""
        if self._lock is None and self._state == _RUNNING:
            # Nothing configured: no event, no lock; just the state.
            self._state = _DONE
            self._status = "completed"
            self._progress = 100
            if result is not None:
                self._result = result
            return
        if self._state == _HANDED:
            self._leave_handed_off()
            return
        self._finish("completed", result, None, None, None, warn=False)

    def _leave_handed_off(self) -> None:
        """Tell the processors that ask (``on_hand_off``) that the job goes on elsewhere."""
        if self._lock is None:
            return
        job_id = self.id
        for processor in self._procs:
            hook = getattr(processor, "on_hand_off", None)
            if hook is None:
                continue
            try:
                hook(job_id)
            except Exception as exc:
                internal_error(f"processor {type(processor).__name__}.on_hand_off()", exc,
                               (job_id,))
                if is_strict():
                    raise

    def _enter_resumed(self, sequence: int) -> None:
        """Enter the block of a job resumed from a carrier: no ``started`` event.

        The job becomes ambient; with processors configured it reports one
        ``progress`` event (it runs here now), its events numbered from ``sequence``.
        """
        if self._state != _NEW:
            raise RuntimeError("a TrackedJob can be entered only once")
        self._state = _RUNNING
        self._status = "running"
        procs = self._tracker._processors
        if procs:
            self._procs = procs
            self._seq = sequence
            lock = self._lock = threading.Lock()
            with lock:
                self._emit("progress")
        self._token = _set(self)

    def _fail_with(self, exc: BaseException) -> None:
        """End the job as the outcome table says for ``exc`` (unless it already ended)."""
        if self._state == _DONE:
            return
        if is_success_exit(exc):
            if self._state == _HANDED:
                self._leave_handed_off()
                return
            self._finish("completed", None, None, None, None, warn=False)
            return
        error = error_from_exception(exc, full=self._lock is not None)
        retryable = _retryable_for(self._retry_rule, exc)
        self._finish("failed", None, None, error, retryable, warn=False)

    def _finish(self, kind: EventKind, result: JobResult | None, message: str | None,
                error: JobError | None, retryable: bool | None, *, warn: bool) -> None:
        if self._state == _NEW:
            self._start()
        lock = self._lock
        if lock is None:
            self._end(kind, result, message, error, retryable, warn)
            return
        lock.acquire()
        try:
            if self._end(kind, result, message, error, retryable, warn):
                self._emit(kind)
        finally:
            lock.release()

    def _end(self, kind: EventKind, result: JobResult | None, message: str | None,
             error: JobError | None, retryable: bool | None, warn: bool) -> bool:
        if self._state == _DONE:
            if warn:
                self._ignored("complete" if kind == "completed" else "fail")
            return False
        self._state = _DONE
        if message is not None:
            self._message = message
        if kind == "completed":
            self._status = "completed"
            self._progress = 100
            if result is not None:
                self._result = result
        else:
            self._status = "failed"
            self._error = error
            self._retryable = retryable
        return True

    def _ignored(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("seenn: %s() on job %s ignored: the job has already %s "
                           "(later updates are ignored silently)", what, self.id, self._status)

    # -- stages and automatic progress -------------------------------------------------

    def _resolve_stage(self, stage: Stage | Mapping[str, Any] | str,
                       current: int | None = None, total: int | None = None,
                       description: str | None = None) -> Stage:
        if not isinstance(stage, str):
            return coerce_stage(stage)
        check_text("stage.name", stage, max_len=MAX_STAGE_NAME)
        plan = self._plan
        if current is None:
            if isinstance(plan, tuple):
                try:
                    current = plan.index(stage) + 1
                except ValueError:
                    fail("stage.name", f"{stage!r} is not one of the declared stages "
                                       f"({', '.join(plan)})")
            else:
                current = self._stage_count + 1
        if total is None:
            total = len(plan) if isinstance(plan, tuple) else max(plan or 0, current)
        return coerce_stage({"name": stage, "current": current, "total": total,
                             "description": description})

    def _stage_share(self, stage: Stage | None) -> tuple[int, int] | None:
        """The progress range of ``stage`` when stages are declared, else ``None``."""
        if self._plan is None or stage is None:
            return None
        return (stage.current - 1) * 100 // stage.total, stage.current * 100 // stage.total

    def _change_stage(self, stage: Stage, *, warn: bool) -> bool:
        lock = self._lock
        if lock is None:
            return self._apply_stage(stage, warn)
        lock.acquire()
        try:
            if self._apply_stage(stage, warn):
                self._emit("progress")
                return True
            return False
        finally:
            lock.release()

    def _apply_stage(self, stage: Stage, warn: bool) -> bool:
        if self._state == _DONE:
            if warn:
                self._ignored("set_stage")
            return False
        self._stage = stage
        self._stage_count = stage.current
        if self._state == _RUNNING:
            self._status = "running"
        share = self._stage_share(stage)
        if share is not None and share[0] > self._progress:
            self._progress = share[0]
        return True

    def _leave_stage(self, stage: Stage) -> None:
        if self._stage is not stage:
            return
        share = self._stage_share(stage)
        if share is not None:
            self._auto_progress(share[1], None)

    def _auto_progress(self, progress: int, message: str | None) -> None:
        """Move progress forward (never back) on behalf of stages and ``iterate()``."""
        lock = self._lock
        if lock is None:
            if self._state != _DONE:
                if progress > self._progress:
                    self._progress = progress
                if message is not None:
                    self._message = message
            return
        lock.acquire()
        try:
            if self._state == _DONE:
                return
            changed = progress > self._progress
            if changed:
                self._progress = progress
            if message is not None and message != self._message:
                self._message = message
                changed = True
            if changed:
                self._emit("progress")
        finally:
            lock.release()

    # -- events ------------------------------------------------------------------------

    def _emit(self, kind: EventKind) -> None:
        """Build the event for the current state and hand it to the processors.

        The caller holds ``self._lock``: that keeps the sequence numbers and the
        order in which processors see a job's events the same. This runs for
        every change of a configured job, so helpers are inlined.
        """
        try:
            seq = self._seq
            self._seq = seq + 1
            job_id = self._id
            if job_id is None:
                job_id = self._id = new_job_id()
            parent = self._parent
            span = get_current_span().get_span_context()
            if span.is_valid:
                trace_id: str | None = format(span.trace_id, "032x")
                span_id: str | None = format(span.span_id, "016x")
            else:
                trace_id = span_id = None
            event = EventBuilder(
                kind,
                job_id,
                self._job_type,
                self._user_id,
                self._title,
                self._status,
                self._progress,
                self._message,
                self._stage,
                self._queue,
                self._metadata,
                self._result if kind == "completed" else None,
                self._error if kind == "failed" else None,
                self._retryable if kind == "failed" else None,
                parent.id if parent is not None else None,
                self._child_index,
                seq,
                _time(),
                trace_id,
                span_id,
            )
            event.__class__ = JobEvent  # see seenn._events.make_event
        except Exception as exc:
            # A bug here must not break the tracked code any more than a failing
            # exporter would.
            internal_error("building a job event", exc, (self._id or "-",))
            if is_strict():
                raise
            return
        for processor in self._procs:
            try:
                processor.on_event(event)
            except Exception as exc:
                internal_error(f"processor {type(processor).__name__}", exc, (job_id,))
                if is_strict():
                    raise


_new_object = object.__new__


def plain_job(tracker: Tracker, job_type: str, user_id: str | None) -> TrackedJob:
    """Make a job whose type and user id are already checked, without ``__init__``.

    The per-call path of a ``@job`` with static options.
    """
    job: TrackedJob = _new_object(TrackedJob)
    # Keep these stores in step with TrackedJob.__init__.
    job._tracker = tracker
    job._job_type = job_type
    job._user_id = user_id
    job._queue = None
    job._status = "pending"
    job._progress = 0
    job._lock = None
    job._state = _NEW
    job._id = None
    return job
