"""``TrackedJob``: the public face of a tracked job, and ``StageScope``.

Every public method validates its arguments first and raises
:class:`~seenn.ValidationError` before anything changes, then hands the change
to the state machine it inherits from ``JobCore`` (``lifecycle``).
``StageScope`` lives here because a job and its stage scopes name each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from seenn._core.accel import use_compiled
from seenn._core.models import JobError, JobResult, JobStatus, Queue, Stage
from seenn._core.validation import (
    MAX_JOB_TYPE,
    MAX_MESSAGE,
    MAX_STAGE_NAME,
    MAX_TITLE,
    MAX_USER_ID,
    check_metadata,
    check_opt_text,
    check_option_names,
    check_progress,
    check_text,
    coerce_error,
    coerce_queue,
    coerce_result,
    fail,
)
from seenn._instrumentation.lifecycle import CURRENT_JOB, JobCore, ProcessorSource
from seenn._instrumentation.outcomes import RetryRule, check_retry_rule, error_from_exception
from seenn._instrumentation.plan import StagePlan, check_plan
from seenn._instrumentation.states import (
    COMPLETED,
    HANDED,
    NEW,
    NEW_WITH_QUEUE,
    QUEUED,
    RUNNING,
    STATUS,
)
from seenn._instrumentation.wrapping import wrap_stage

if TYPE_CHECKING:
    from types import TracebackType

    from seenn._core.eta import Eta

__all__ = ["StageScope", "TrackedJob", "current_job", "new_job", "plain_job", "set_hand_off_codec",
           "stage"]

F = TypeVar("F", bound=Callable[..., Any])

_PROGRESS_OPTIONS = frozenset({"message", "stage", "queue", "metadata"})

# Every value of CURRENT_JOB is a TrackedJob (JobCore is never made on its own).
_current: Callable[[], TrackedJob | None] = CURRENT_JOB.get  # type: ignore[assignment]



def current_job() -> TrackedJob | None:
    """Return the job of the innermost ``track()`` or ``@job`` call running here, if any."""
    return _current()


_hand_off_codec: tuple[Callable[[TrackedJob], str],
                       Callable[[str, TrackedJob], dict[str, str]]] | None = None


def set_hand_off_codec(encode: Callable[[TrackedJob], str],
                       carrier: Callable[[str, TrackedJob], dict[str, str]]) -> None:
    """Register how ``hand_off()`` writes a job into a carrier (``seenn.propagation`` does).

    The carrier format belongs to propagation, which sits above instrumentation:
    it plugs itself in here when imported (``import seenn`` imports it).

    Args:
        encode: Returns the ``seenn-job`` value of a live job (called under its lock).
        carrier: Builds the whole carrier from that value (trace context included).
    """
    global _hand_off_codec
    _hand_off_codec = (encode, carrier)


class TrackedJob(JobCore):
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
    ``child_index``, ``is_done``, ``eta``.

    Jobs are made by ``track()`` and ``@job``, not by calling the class.
    """
    __slots__ = ()

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
        plan = check_plan(stages)
        if retryable is not None:
            retryable = check_retry_rule(retryable)
        self._plan = plan
        checked_stage = self._resolve_stage(stage) if stage is not None else None
        self._title = title
        self._metadata = metadata
        self._queue = checked_queue
        if checked_queue is not None:
            self._state = NEW_WITH_QUEUE
        if job_id is not None:
            self._id = job_id
        self._retry_rule = retryable
        if checked_stage is not None:
            self._stage = checked_stage
            self._stage_count = checked_stage.current

    # -- read-only state ---------------------------------------------------------------

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
        return STATUS[self._state]

    @property
    def progress(self) -> int:
        """Percent done, 0 to 100 (100 once completed)."""
        # A job completed with nothing configured skips storing the 100.
        return 100 if self._state == COMPLETED else self._progress

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
        return self._state >= COMPLETED

    @property
    def eta(self) -> Eta | None:
        """How long the job has left, estimated now: a :class:`seenn.Eta`, or ``None``.

        It weighs the job's own pace (its progress, the time since it started
        running in this process, when its progress reached each 2 % step and when
        it last changed) against what completed jobs of its type took, when the
        backend has told (the HTTP exporter fetches that history; see
        ``docs/tracking.md``). ``stage()`` and ``iterate()`` feed it through the
        progress they set.

        ``None`` when there is nothing to go on yet (no history, and less than 5 %
        done), while the job is not running (pending, queued, ended), and always
        for a job with nothing configured: such a job records nothing, to stay free.
        """
        return self._estimate()

    def __repr__(self) -> str:
        return (f"<TrackedJob {self.id} {self._job_type!r} status={self.status} "
                f"progress={self.progress}>")

    # -- updates -----------------------------------------------------------------------

    @overload
    def set_progress(self, progress: float, /) -> None: ...

    @overload
    def set_progress(
        self,
        progress: float,
        /,
        *,
        message: str | None = None,
        stage: Stage | Mapping[str, Any] | str | None = None,
        queue: Queue | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None: ...

    # **options rather than keyword-only parameters, as in Tracker.track(): a
    # bare percentage, the common call, then pays for no default lookups. The
    # overloads above are the typed signature.
    def set_progress(self, progress: float, /, **options: Any) -> None:
        """Report how far the job has got.

        Args:
            progress: Percent done, 0 to 100 (floats are floored).

        Keyword Args:
            message (str): A short human-readable message (at most 1,000 characters).
            stage (Stage | Mapping[str, Any] | str): The current stage: a ``Stage``, a
                dict of its fields, or a name (numbered from the declared ``stages``).
            queue (Queue | Mapping[str, Any]): The job's place in a queue; giving one
                marks the job queued.
            metadata (Mapping[str, Any]): Replaces the job's metadata (a JSON object, at
                most 10 KB).

        Raises:
            ValidationError: An argument is out of range; nothing was changed.
        """
        if options and self._update(progress, options):
            return
        # Fast path: a bare in-range int with nothing configured is the common
        # call. (Plain comparisons and attributes read twice rather than kept
        # in locals: fewer bytecodes.)
        if type(progress) is not int or progress < 0 or progress > 100:
            progress = check_progress(progress)
        if self._lock is None:
            if self._state == 1:  # RUNNING
                self._progress = progress
                return
            if self._state >= COMPLETED:
                self._ignored("set_progress")
            else:
                self._progress = progress
                if self._state == QUEUED:
                    self._leave_queue()
            return
        if progress == self._progress and (self._state == RUNNING or self._state == HANDED):
            # Nothing would change: no event. Loops that report per item
            # often repeat the same percentage many times.
            return
        # _apply() for a bare percentage, inlined: the configured hot path.
        with self._lock:
            if self._state >= COMPLETED:
                self._ignored("set_progress")
                return
            self._progress = progress
            if self._state == QUEUED:
                self._state = RUNNING
            self._emit("progress")

    def _update(self, progress: float, options: dict[str, Any]) -> bool:
        """``set_progress()`` with options: check them all, then apply them at once.

        Returns:
            ``False`` if every option was ``None``: the caller goes on as for a
            bare percentage.

        Raises:
            TypeError: An option has an unknown name (checked first, as a plain
                signature would).
            ValidationError: An argument is malformed; nothing was changed.
        """
        check_option_names("set_progress", options, _PROGRESS_OPTIONS)
        value = check_progress(progress)
        message = options.get("message")
        stage = options.get("stage")
        queue = options.get("queue")
        metadata = options.get("metadata")
        if message is None and stage is None and queue is None and metadata is None:
            return False
        if message is not None:
            check_opt_text("message", message, max_len=MAX_MESSAGE)
        new_stage = self._resolve_stage(stage) if stage is not None else None
        if queue is not None:
            queue = coerce_queue(queue)
        if metadata is not None:
            metadata = check_metadata(metadata)
        with self._guard():
            ended = self._state >= COMPLETED
            if not ended:
                self._apply(value, message, new_stage, queue, metadata)
                if self._lock is not None:
                    self._emit("progress")
        if ended:  # logged outside the lock
            self._ignored("set_progress")
        return True

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
        return StageScope(name, description, self)

    def set_result(self, result: JobResult | Mapping[str, Any], /) -> None:
        """Set the result sent with the completion (``type``, ``url``, ``data``; ≤ 100 KB).

        Raises:
            ValidationError: The result is malformed or too large; nothing was changed.
        """
        checked = coerce_result(result)
        with self._guard():
            ended = self._state >= COMPLETED
            if not ended:
                self._result = checked
        if ended:  # logged outside the lock
            self._ignored("set_result")

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
        codec = _hand_off_codec
        if codec is None:  # pragma: no cover - import seenn registers it
            raise RuntimeError("hand_off() needs seenn.propagation: import seenn first")
        with self._guard():
            if self._state <= 0:  # NEW, NEW_QUEUED
                raise RuntimeError("hand_off() needs a started job: call it inside the "
                                   "job's block")
            if self._state >= COMPLETED:
                raise RuntimeError(f"hand_off(): job {self.id} has already {self.status}")
            value = codec[0](self)
            if self._state < HANDED:
                self._state += HANDED - RUNNING  # RUNNING -> HANDED, QUEUED -> HANDED_QUEUED
        return codec[1](value, self)


use_compiled(TrackedJob, {"set_progress": "_set_progress_full"})


def new_job(
    tracker: ProcessorSource,
    job_type: str,
    user_id: str | None = None,
    title: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    queue: Queue | Mapping[str, Any] | None = None,
    stage: Stage | Mapping[str, Any] | str | None = None,
    stages: StagePlan = None,
    job_id: str | None = None,
    retryable: RetryRule = None,
) -> TrackedJob:
    """Make a job from checked arguments (what ``track()`` and ``@job`` call).

    Raises:
        ValidationError: An argument is malformed.
    """
    # The common call passes only job_type (and maybe user_id): keep that path
    # to a few type tests and stores.
    # Non-ASCII text takes the full check: it may hold a lone surrogate,
    # which could never be sent; so does text with NUL, which no backend stores.
    if type(job_type) is not str or not 0 < len(job_type) <= MAX_JOB_TYPE \
            or not job_type.isascii() or "\x00" in job_type:
        check_text("job_type", job_type, max_len=MAX_JOB_TYPE)
    if user_id is not None and (type(user_id) is not str
                                or not 0 < len(user_id) <= MAX_USER_ID
                                or not user_id.isascii() or "\x00" in user_id):
        check_text("user_id", user_id, max_len=MAX_USER_ID)
    job = plain_job(tracker, job_type, user_id)
    if title is not None or metadata is not None or queue is not None or \
            stage is not None or stages is not None or job_id is not None or \
            retryable is not None:
        job._init_options(title, metadata, queue, stage, stages, job_id, retryable)
    return job


def plain_job(tracker: ProcessorSource, job_type: str, user_id: str | None) -> TrackedJob:
    """Make a job whose type and user id are already checked (no checks, no options).

    The per-call path of a ``@job`` with static options.
    """
    job = TrackedJob()
    # Keep these stores in step with Tracker.track(), which has them inline.
    job._tracker = tracker
    job._job_type = job_type
    job._user_id = user_id
    job._progress = 0
    job._lock = None
    job._state = NEW
    return job


class StageScope:
    """Runs a block, or each call of a decorated function, as a stage of a job.

    Made by ``seenn.stage(name)`` (acting on the ambient job, looked up on
    entry) or ``job.stage(name)``. Entering moves the job to the stage; leaving
    without an exception moves progress to the end of the stage when the job
    declared its ``stages``. Outside a job it does nothing. As a context
    manager it yields the job (or ``None``).
    """

    __slots__ = ("_description", "_entered", "_job", "_name")

    def __init__(self, name: str, description: str | None = None,
                 job: TrackedJob | None = None) -> None:
        check_text("stage.name", name, max_len=MAX_STAGE_NAME)
        check_opt_text("stage.description", description, max_len=MAX_MESSAGE)
        self._name = name
        self._description = description
        self._job = job
        self._entered: tuple[TrackedJob, Stage] | None = None

    @property
    def name(self) -> str:
        """The stage's name."""
        return self._name

    def __enter__(self) -> TrackedJob | None:
        job = self._job if self._job is not None else _current()
        if job is None:
            return None
        stage = job._resolve_stage(self._name, None, None, self._description)
        job._change_stage(stage, warn=False)
        self._entered = (job, stage)
        return job

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        entered = self._entered
        self._entered = None
        if entered is not None and exc is None:
            entered[0]._leave_stage(entered[1])

    async def __aenter__(self) -> TrackedJob | None:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F, /) -> F:
        """Decorate ``func`` so that each call runs as this stage (sync, async or generator)."""
        name, description, job = self._name, self._description, self._job
        decorated: F = wrap_stage(func, lambda: StageScope(name, description, job))
        return decorated


def stage(name: str, /, *, description: str | None = None) -> StageScope:
    """Run a block (``with``/``async with``) or a function (decorator) as stage ``name``.

    It acts on the ambient job; outside one it does nothing. With the job's
    ``stages`` declared, the stage's number and the total follow from the
    declaration and progress advances stage by stage.

    Args:
        name: The stage's name; with a declared list of stages, one of them.
        description: An optional human-readable description.

    Raises:
        ValidationError: On entry, if the name is not one of the declared stages.
    """
    return StageScope(name, description)
