"""The tracked job's state machine: lifecycle, state changes under its lock, and events.

``JobCore`` is the part of :class:`~seenn.TrackedJob` that the rest of
instrumentation drives: entering and leaving the block, adopting a parent,
ending as the outcome table says, moving stages and automatic progress, and
turning every change into a :class:`~seenn.JobEvent` for the processors,
inline and without I/O. A job with no processors (nothing configured) takes
no lock and builds no events at all, which is what keeps the unconfigured
path cheap. The public, validating methods live on ``TrackedJob``
(``seenn._instrumentation.job``); stage numbering lives in ``plan``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from seenn._core.accel import speedups, use_compiled
from seenn._core.eta_live import estimate_run, prior
from seenn._core.events import SPAN_KEY, EventBuilder, EventKind, JobEvent, Span, current_context
from seenn._core.models import JobError, JobResult, Queue, Stage
from seenn._core.pipeline import internal_error, is_strict, logger
from seenn._instrumentation.ids import new_job_id
from seenn._instrumentation.outcomes import (
    RetryRule,
    error_from_exception,
    is_success_exit,
    retryable_for,
)
from seenn._instrumentation.plan import Plan, resolve_stage, stage_share
from seenn._instrumentation.states import (
    COMPLETED,
    FAILED,
    HANDED,
    HANDED_QUEUED,
    NEW_QUEUED,
    QUEUED,
    RUNNING,
    STATUS,
)

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

    from seenn._core.eta import Eta
    from seenn._core.pipeline import Processor

__all__ = ["CURRENT_JOB", "JobCore", "ProcessorSource"]


CURRENT_JOB: ContextVar[JobCore | None] = ContextVar("seenn.current_job", default=None)
"""The ambient job: the one ContextVar of seenn (every value in it is a ``TrackedJob``)."""


class ProcessorSource(Protocol):
    """Where a job finds its processors when it starts (a ``Tracker``)."""

    _processors: tuple[Processor, ...]


# Orders what jobs without a lock of their own share: a parent's count of
# children, and the rare state changes of a job with nothing configured (an
# update taking it out of its queue against a fail() or hand_off() from
# another thread). Held for a few stores, never across I/O. See JobCore._guard().
_shared_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # Another thread may have held the lock when the process forked.
    global _shared_lock
    _shared_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
_get = CURRENT_JOB.get
_Lock = threading.Lock
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


if TYPE_CHECKING or speedups is None:
    class _JobSlots:
        """The attributes a job reads on every call, in slots.

        With the compiled hot path the base is ``seenn._core._speedups.JobSlots``
        instead: the same fields, plus compiled twins of ``__enter__``,
        ``__exit__``, ``set_progress`` and ``_emit`` (see ``seenn._core.accel.use_compiled``).
        """

        __slots__ = ("_eta_at", "_eta_base", "_eta_began", "_eta_marks", "_eta_next", "_eta_p",
                     "_job_type", "_lock", "_procs", "_progress", "_seq", "_state", "_token",
                     "_tracker", "_user_id")

        # What an event reads besides: class attributes acting as defaults until
        # a job sets its own (in JobCore's __dict__), so that making a job stores
        # only what the caller gave. (The compiled JobSlots has fields for them,
        # which start as None.)
        _id: str | None = None
        _queue: Queue | None = None
        _title: str | None = None
        _metadata: Mapping[str, Any] | None = None
        _message: str | None = None
        _stage: Stage | None = None
        _result: JobResult | None = None
        _error: JobError | None = None
        _retryable: bool | None = None
        _parent: JobCore | None = None
        _child_index: int | None = None
else:
    _JobSlots = speedups.JobSlots


class JobCore(_JobSlots):
    """The state machine of a tracked job; ``TrackedJob`` adds the public methods."""

    # The attributes read on every call live in slots (the base class); the
    # rest are class attributes acting as defaults until a job sets its own (in
    # __dict__), so making a job stores only what the caller gave: the
    # unconfigured path is mostly the cost of making the job.
    __slots__ = ("__dict__", "__weakref__")

    _tracker: ProcessorSource
    _job_type: str
    _token: Any
    _user_id: str | None
    _progress: int
    _lock: threading.Lock | None
    _state: int
    # Set when the job gets processors, and only read after that.
    _procs: tuple[Processor, ...]
    _seq: int
    # What eta needs, recorded by _emit() (so only for a job with processors), as
    # the fields of a seenn._core.eta_live.Run: the progress of the last event (-1
    # until the job runs here) and when it changed; the percent at which the next
    # curve point is passed (0 until the job runs here: every change looks); when the
    # job started running here and at what progress; the crossings of curve points.
    _eta_p: int
    _eta_at: float
    _eta_next: int
    _eta_began: float
    _eta_base: int
    _eta_marks: list[float]
    # Read on the unconfigured path only by properties (and the id made on first use).
    _plan: Plan = None
    _stage_count = 0
    _retry_rule: RetryRule = None
    _children = 0
    _warned = False
    # Set on a job that a queue integration (or a deferred call) runs: the first
    # call of the @job function this names adopts the job instead of starting a
    # child of it (see seenn.propagation._handover).
    _awaiting: object = None

    @property
    def id(self) -> str:
        """The job's id: ``job_`` + a ULID, made on first use, unless given to ``track()``."""
        job_id = self._id
        if job_id is None:
            job_id = self._id = new_job_id()
        return job_id

    # -- lifecycle (used by track(), @job, stages and resume()) ------------------------

    def __enter__(self) -> Self:
        if self._state:  # made with a queue, or entered already: not the hot path
            return self._enter_other()
        # _start() for a NEW job (no queue), inlined: this is the hot path of every job.
        parent = _get()
        if parent is not None:
            self._adopt(parent)
        self._state = 1  # RUNNING
        if self._tracker._processors:
            self._procs = self._tracker._processors
            self._seq = 0
            self._eta_p = -1
            self._eta_next = 0
            # No other thread can reach the job before it is entered: no locking yet.
            self._lock = _Lock()
            # _own_event_fields(), inlined.
            self._id = self._id
            self._queue = self._queue
            self._title = self._title
            self._message = self._message
            self._stage = self._stage
            self._metadata = self._metadata
            self._result = self._result
            self._parent = self._parent
            self._child_index = self._child_index
            self._emit("started")
        self._token = _set(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # The token is read where needed rather than kept in a local: on the
        # unconfigured path every bytecode counts. It is dropped at the end: it
        # holds the whole context the block was entered in.
        if exc is None and self._lock is None:
            # Nothing configured: completing is one assignment (the progress
            # property reads 100 for a completed job). Entered, so not NEW:
            # below HANDED means RUNNING or QUEUED. Written out to the return,
            # without a jump.
            if self._state < 3:
                self._state = 5  # COMPLETED
            try:
                _reset(self._token)
                self._token = None
                return
            except ValueError:
                _restore(self._token)
                self._token = None
                return
        try:
            if exc is None:
                self._succeed(None)
            else:
                self._fail_with(exc)
        except BaseException:
            _restore(self._token)
            self._token = None
            raise
        try:
            _reset(self._token)
        except ValueError:
            _restore(self._token)
        self._token = None

    def _enter_other(self) -> Self:
        if self._state > 0:
            raise RuntimeError("a TrackedJob can be entered only once")
        self._start()
        self._token = _set(self)
        return self

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    def _own_event_fields(self) -> None:
        """Give the job its own copy of the class defaults that ``_emit()`` reads.

        Called once, when the job gets processors. In CPython 3.11 reading an
        attribute through the instance that finds only the class default is not
        specialised (several times the cost of reading the job's own value), and
        every event reads these. Copying the value changes nothing else.
        """
        self._id = self._id
        self._queue = self._queue
        self._title = self._title
        self._message = self._message
        self._stage = self._stage
        self._metadata = self._metadata
        self._result = self._result
        self._parent = self._parent
        self._child_index = self._child_index

    def _start(self) -> None:
        parent = _get()
        if parent is not None:
            self._adopt(parent)
        self._state = QUEUED if self._queue is not None else RUNNING
        if self._tracker._processors:
            self._procs = self._tracker._processors
            self._seq = 0
            self._eta_p = -1
            self._eta_next = 0
            # No other thread can reach the job before it starts: no locking yet.
            self._lock = _Lock()
            self._own_event_fields()
            self._emit("started")

    def _adopt(self, parent: JobCore) -> None:
        self._parent = parent
        with _shared_lock:
            self._child_index = parent._children
            parent._children += 1
        if self._user_id is None:
            self._user_id = parent._user_id

    def _succeed(self, result: JobResult | None) -> None:
        """End the job as completed (unless it already ended, or was handed off)."""
        lock = self._lock
        if 0 < self._state < HANDED:  # RUNNING or QUEUED: the common end
            if lock is None:
                # Nothing configured: no event, no lock; just the state.
                self._state = COMPLETED
                self._progress = 100
                if result is not None:
                    self._result = result
                return
            # _finish() and _end(), written out.
            with lock:
                if 0 < self._state < HANDED:  # no other thread ended or handed it meanwhile
                    self._state = COMPLETED
                    self._progress = 100
                    if result is not None:
                        self._result = result
                    self._emit("completed")
                    return
            # Another thread ended the job or handed it off meanwhile: decide again
            # (a handed-off job is left to the process that goes on with it).
            self._succeed(result)
            return
        if HANDED <= self._state < COMPLETED:
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
        self._resume(sequence, announce=True)
        self._token = _set(self)

    def _resume(self, sequence: int, *, announce: bool) -> None:
        """Take over a job started in another process: running here, no ``started`` event.

        Its events are numbered from ``sequence``. ``announce`` reports one
        ``progress`` event (it runs here now); without it the next change is the
        first thing the processors hear (a process ending a job it never ran).
        """
        if self._state > 0:
            raise RuntimeError("a TrackedJob can be entered only once")
        self._state = RUNNING
        procs = self._tracker._processors
        if procs:
            self._procs = procs
            self._seq = sequence
            self._eta_p = -1
            self._eta_next = 0
            lock = self._lock = _Lock()
            self._own_event_fields()
            if announce:
                with lock:
                    self._emit("progress")

    def _fail_with(self, exc: BaseException) -> None:
        """End the job as the outcome table says for ``exc`` (unless it already ended)."""
        if self._state >= COMPLETED:
            return
        if is_success_exit(exc):
            if HANDED <= self._state < COMPLETED:
                self._leave_handed_off()
                return
            self._finish("completed", None, None, None, None, warn=False)
            return
        error = error_from_exception(exc, full=self._lock is not None)
        retryable = retryable_for(self._retry_rule, exc)
        self._finish("failed", None, None, error, retryable, warn=False)

    def _finish(self, kind: EventKind, result: JobResult | None, message: str | None,
                error: JobError | None, retryable: bool | None, *, warn: bool) -> None:
        if self._state <= 0:  # NEW, NEW_QUEUED
            self._start()
        with self._guard():
            ended_now = self._end(kind, result, message, error, retryable)
            if ended_now and self._lock is not None:
                self._emit(kind)
        if not ended_now and warn:  # logged outside the lock
            self._ignored("complete" if kind == "completed" else "fail")

    def _guard(self) -> threading.Lock:
        """The lock that orders this job's state changes.

        The job's own once it has processors; with nothing configured (no lock
        of its own, and no events to order) one lock shared by such jobs, so a
        ``fail()`` or ``hand_off()`` from another thread is never undone by an
        update that read the state just before.
        """
        lock = self._lock
        return lock if lock is not None else _shared_lock

    def _leave_queue(self) -> None:
        """QUEUED -> RUNNING, unless another thread ended or handed off the job meanwhile."""
        with self._guard():
            if self._state == QUEUED:
                self._state = RUNNING

    def _end(self, kind: EventKind, result: JobResult | None, message: str | None,
             error: JobError | None, retryable: bool | None) -> bool:
        """End the job; ``False`` if it had already ended. The caller holds ``_guard()``."""
        if self._state >= COMPLETED:
            return False
        if message is not None:
            self._message = message
        if kind == "completed":
            self._state = COMPLETED
            self._progress = 100
            if result is not None:
                self._result = result
        else:
            self._state = FAILED
            self._error = error
            self._retryable = retryable
        return True

    def _ignored(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("seenn: %s() on job %s ignored: the job has already %s "
                           "(later updates are ignored silently)", what, self.id,
                           STATUS[self._state])

    # -- updates -----------------------------------------------------------------------

    def _apply(self, progress: int, message: str | None, stage: Stage | None,
               queue: Queue | None, metadata: Mapping[str, Any] | None) -> None:
        """Store a ``set_progress`` change; the caller holds the lock, if there is one."""
        self._progress = progress
        if message is not None:
            self._message = message
        elif stage is not None and self._message and self._new_stage(stage):
            self._message = ""  # the previous stage's words no longer describe the work
        if stage is not None:
            self._stage = stage
            self._stage_count = stage.current
        if metadata is not None:
            self._metadata = metadata
        state = self._state
        if queue is not None:
            self._queue = queue
            self._state = NEW_QUEUED if state <= 0 else QUEUED if state < HANDED else HANDED_QUEUED
        elif state == QUEUED:
            self._state = RUNNING

    # -- stages and automatic progress -------------------------------------------------

    def _resolve_stage(self, stage: Stage | Mapping[str, Any] | str,
                       current: int | None = None, total: int | None = None,
                       description: str | None = None) -> Stage:
        return resolve_stage(self._plan, self._stage_count, stage, current, total, description)

    def _stage_share(self, stage: Stage | None) -> tuple[int, int] | None:
        """The progress range of ``stage`` when stages are declared, else ``None``."""
        return stage_share(self._plan, stage)

    def _change_stage(self, stage: Stage, *, warn: bool) -> bool:
        with self._guard():
            applied = self._apply_stage(stage)
            if applied and self._lock is not None:
                self._emit("progress")
        if not applied and warn:  # logged outside the lock
            self._ignored("set_stage")
        return applied

    def _apply_stage(self, stage: Stage) -> bool:
        if self._state >= COMPLETED:
            return False
        if self._message and self._new_stage(stage):
            # An empty message, not None: the backend keeps a message that is left out,
            # and a finished job would still read "Encoding".
            self._message = ""
        self._stage = stage
        self._stage_count = stage.current
        if self._state == QUEUED:
            self._state = RUNNING
        share = self._stage_share(stage)
        if share is not None and share[0] > self._progress:
            self._progress = share[0]
        return True

    def _new_stage(self, stage: Stage) -> bool:
        """Whether ``stage`` is another stage than the job's current one."""
        current = self._stage
        return current is None or (current.name, current.current) != (stage.name, stage.current)

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
            if self._state < COMPLETED:
                if progress > self._progress:
                    self._progress = progress
                if message is not None:
                    self._message = message
            return
        lock.acquire()
        try:
            if self._state >= COMPLETED:
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

    # -- how long? ---------------------------------------------------------------------

    def _estimate(self) -> Eta | None:
        """The estimate now (see ``TrackedJob.eta``)."""
        if self._lock is None or not self._eta_next or STATUS[self._state] != "running":
            return None
        return estimate_run(_time(), self._eta_began, self._eta_p, self._eta_at,
                            base=self._eta_base, crossings=self._eta_marks,
                            history=prior(self._job_type))

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
            now = _time()
            job_id = self._id
            if job_id is None:
                job_id = self._id = new_job_id(now)  # one clock read for both
            parent = self._parent
            # The active span: with none, this is two lookups (see current_context).
            span = current_context().get(SPAN_KEY)
            # make_event(), written out: plain slot stores on a builder (see EventBuilder).
            event: Any = EventBuilder()
            if span is not None and isinstance(span, Span) and \
                    (span_context := span.get_span_context()).is_valid:
                event.trace_id = format(span_context.trace_id, "032x")
                event.span_id = format(span_context.span_id, "016x")
            else:
                event.trace_id = event.span_id = None
            event.kind = kind
            event.job_id = job_id
            event.job_type = self._job_type
            event.user_id = self._user_id
            event.title = self._title
            event.status = STATUS[self._state]
            progress = event.progress = self._progress
            event.message = self._message
            event.stage = self._stage
            event.queue = self._queue
            event.metadata = self._metadata
            event.parent_id = parent.id if parent is not None else None
            event.child_index = self._child_index
            event.sequence = seq
            event.timestamp = now
            if kind == "completed":
                event.result = self._result
                event.error = event.retryable = None
            elif kind == "failed":
                event.result = None
                event.error = self._error
                event.retryable = self._retryable
            else:
                event.result = event.error = event.retryable = None
                if progress != self._eta_p:
                    # For eta (a running job's, so not on the terminal events): a
                    # comparison per event, two stores per change, one extend per new
                    # curve point (every 2 %; (p | 1) + 1 is the next even percent
                    # above p). Until the job runs here, _eta_next is 0 and every
                    # change looks whether it does now.
                    self._eta_p = progress
                    self._eta_at = now
                    next_mark = self._eta_next
                    if progress >= next_mark:
                        if next_mark:
                            marks = self._eta_marks
                            marks += (progress, now)
                            self._eta_next = (progress | 1) + 1
                        elif self._state == 1 or self._state == 3:  # RUNNING, HANDED
                            self._eta_began = now
                            self._eta_base = progress
                            self._eta_marks = []
                            self._eta_next = (progress | 1) + 1
                        else:
                            self._eta_p = -1  # not running yet: look again at the next event
            event.__class__ = JobEvent
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


if speedups is not None:
    speedups.bind(globals(), CURRENT_JOB, JobEvent)
use_compiled(JobCore, {"__enter__": "_enter_full", "__exit__": "_exit_full", "_emit": None})
