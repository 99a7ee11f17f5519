"""``Tracker``: where jobs get their processors; the default one backs ``seenn.track`` & co."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from typing_extensions import ParamSpec

from seenn._core.accel import speedups, use_compiled
from seenn._core.models import Queue, Stage
from seenn._core.pipeline import internal_error, is_strict
from seenn._core.validation import MAX_JOB_TYPE, MAX_USER_ID, check_option_names, check_text
from seenn._instrumentation.context import current_job as _current_job
from seenn._instrumentation.context import with_current_job as _with_current_job
from seenn._instrumentation.decorator import ResultMapper, job_decorator
from seenn._instrumentation.iteration import iterate as _iterate
from seenn._instrumentation.job import StageScope, TrackedJob, new_job
from seenn._instrumentation.outcomes import RetryRule
from seenn._instrumentation.plan import StagePlan

if TYPE_CHECKING:
    from seenn._core.pipeline import Exporter, Processor

__all__ = ["PipelineBuilder", "Tracker", "default_tracker", "set_pipeline_builder"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_REPLACED_SHUTDOWN_TIMEOUT = 5.0
# Job types that passed check_text(): a program uses a handful, and one set
# lookup is cheaper than the type and length checks. Bounded, in case types
# are made per call.
_checked_types: dict[str, None] = {}  # a dict: str-keyed lookups are its fast path
_MAX_CHECKED_TYPES = 1024
# User ids that passed new_job()'s check, likewise: a known id costs one
# lookup instead of a length and isascii(). Bounded: once full, an id not seen
# yet is still checked on the fast path, just not remembered.
_checked_users: dict[str, None] = {}
_MAX_CHECKED_USERS = 1024
_TRACK_OPTIONS = frozenset({"title", "metadata", "queue", "stage", "stages", "job_id",
                            "retryable"})


class PipelineBuilder(Protocol):
    """Turns what ``configure()`` was given into the processors of a pipeline.

    Instrumentation knows processors only through their protocol; which
    exporters exist, how ``SEENN_EXPORTER`` names them and how each is wrapped
    belongs to ``seenn.exporters``, whose builder ``import seenn`` registers
    with :func:`set_pipeline_builder`.
    """

    def __call__(self, *, exporters: Seq[Exporter] | None, processors: Seq[Processor] | None,
                 api_key: str | None, base_url: str | None,
                 debug: bool) -> list[Processor]: ...


_builder: PipelineBuilder | None = None
_default: Tracker | None = None


def set_pipeline_builder(builder: PipelineBuilder) -> None:
    """Register the builder every tracker's ``configure()`` uses (``import seenn`` does)."""
    global _builder
    _builder = builder


def default_tracker() -> Tracker:
    """Return the tracker behind ``seenn.track`` and the other facade functions."""
    global _default
    if _default is None:
        _default = Tracker()
    return _default


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


if TYPE_CHECKING or speedups is None:
    class _TrackerBase:
        """The base of ``Tracker``: nothing here, or with the compiled hot path
        ``seenn._core._speedups.TrackerBase``, whose ``track`` makes the common
        job (see ``use_compiled`` at the end of this module)."""

        __slots__ = ()
else:
    _TrackerBase = speedups.TrackerBase


class Tracker(_TrackerBase):
    """Makes tracked jobs and owns the processors their events go to.

    ``seenn.track``, ``seenn.job``, ``seenn.configure`` and the other facade
    functions are bound methods of one default tracker, which is configured
    but never replaced. Make a separate ``Tracker`` for a pipeline of your own
    (a library that must not share the application's exporters, a test).
    Arguments left as ``None`` are read from the environment, as
    :meth:`configure` describes.
    """

    def __init__(
        self,
        *,
        exporters: Seq[Exporter] | None = None,
        processors: Seq[Processor] | None = None,
        debug: bool | None = None,
        disabled: bool | None = None,
    ) -> None:
        self._pipeline: tuple[Processor, ...] = ()
        self._processors: tuple[Processor, ...] = ()
        self._disabled = False
        self._debug = False
        self.configure(exporters=exporters, processors=processors, debug=debug,
                       disabled=disabled)

    # -- configuration -----------------------------------------------------------------

    def configure(
        self,
        *,
        exporters: Seq[Exporter] | None = None,
        processors: Seq[Processor] | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        debug: bool | None = None,
        disabled: bool | None = None,
    ) -> None:
        """Replace this tracker's whole pipeline (calling it again never stacks exporters).

        Each exporter is put behind its own :class:`BatchProcessor`, except an
        exporter that declares ``inline = True``, which runs as it is.
        Processors are used exactly as given. Jobs already running keep
        sending to the pipeline they started with; the processors replaced are
        shut down (waiting at most 5 seconds).

        Args:
            exporters: Where events go. ``None``, with no ``processors`` either,
                means the exporters named in ``SEENN_EXPORTER`` (``console``,
                ``http``, ``otel``, ``none``; a comma-separated list); ``[]`` means none.
            processors: Extra processors, e.g. ``SimpleProcessor(InMemoryExporter())``.
                ``None`` means none.
            api_key: Send jobs to a Seenn backend with this key: adds an
                :class:`~seenn.exporters.HTTPExporter` (instead of one named in
                ``SEENN_EXPORTER``). ``SEENN_API_KEY`` alone, with ``SEENN_EXPORTER``
                unset, does the same at import.
            base_url: The backend for that exporter (``SEENN_BASE_URL``, then Seenn Cloud).
            debug: Log every event and internal detail on the ``seenn`` logger to
                stderr. ``None`` means ``SEENN_DEBUG``.
            disabled: Track nothing: every job is a no-op. ``None`` means
                ``SEENN_DISABLED``.
        """
        debug = _env_flag("SEENN_DEBUG") if debug is None else bool(debug)
        disabled = _env_flag("SEENN_DISABLED") if disabled is None else bool(disabled)
        if _builder is None:  # pragma: no cover - import seenn registers it
            raise RuntimeError("no pipeline builder: import seenn first")
        # Built before anything changes: a bad argument leaves the tracker as it was.
        pipeline = _builder(exporters=exporters, processors=processors, api_key=api_key,
                            base_url=base_url, debug=debug)
        self._debug = debug
        self._disabled = disabled
        old = self._pipeline
        self._pipeline = tuple(pipeline)
        self._processors = () if self._disabled else self._pipeline
        self._shutdown_all([p for p in old if p not in self._pipeline],
                           _REPLACED_SHUTDOWN_TIMEOUT)

    def _swap_pipeline(self, pipeline: tuple[Processor, ...], *,
                       enable: bool = False) -> tuple[Processor, ...]:
        """Put ``pipeline`` in place as it is and return the previous one.

        For ``seenn.testing``: nothing is shut down, so the old pipeline can be
        put back. ``enable`` sends events even if the tracker is disabled
        (a test capturing jobs must see them whatever ``SEENN_DISABLED`` says).
        """
        old = self._pipeline
        self._pipeline = pipeline
        self._processors = () if self._disabled and not enable else pipeline
        return old

    @property
    def processors(self) -> tuple[Processor, ...]:
        """The processors jobs started now send their events to."""
        return self._pipeline

    @property
    def disabled(self) -> bool:
        """Whether tracking is turned off."""
        return self._disabled

    @property
    def debug(self) -> bool:
        """Whether debug logging is on."""
        return self._debug

    # -- tracking ----------------------------------------------------------------------

    @overload
    def track(self, job_type: str, /, *, user_id: str | None = None) -> TrackedJob: ...

    @overload
    def track(
        self,
        job_type: str,
        /,
        *,
        user_id: str | None = None,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        queue: Queue | Mapping[str, Any] | None = None,
        stage: Stage | Mapping[str, Any] | str | None = None,
        stages: StagePlan = None,
        job_id: str | None = None,
        retryable: RetryRule = None,
    ) -> TrackedJob: ...

    # The options arrive as **options, not as keyword-only parameters: CPython
    # fills each missing keyword-only parameter with a dict lookup, and the
    # common call (a type and a user id) then paid for eight of them. The
    # overloads above are the typed signature.
    def track(self, job_type: str, /, *, user_id: str | None = None,
              **options: Any) -> TrackedJob:
        """Make a job to run as a ``with`` (or ``async with``) block.

        Entering the block starts the job and makes it the ambient job (a child
        of the ambient job, if there is one); leaving completes it, or fails it
        with the exception's details and re-raises the exception::

            with seenn.track("video-generation", user_id="user_123") as job:
                job.set_progress(10, message="Preparing")

        Args:
            job_type: The kind of job (1 to 100 characters).
            user_id: Whose job it is; inherited from the parent job if not given.

        Keyword Args:
            title (str): A human-readable title.
            metadata (Mapping[str, Any]): A JSON object (at most 10 KB).
            queue (Queue | Mapping[str, Any]): The job's place in a queue; the job
                starts as ``queued``.
            stage (Stage | Mapping[str, Any] | str): The stage the job starts in.
            stages (Sequence[str] | int): The job's stages: their names in order, or
                how many there are. Stages then number themselves and advance progress.
            job_id (str): Use this id instead of making one (``job_`` + ULID).
            retryable (bool | type[BaseException] | Callable): Whether a failure may be
                retried: a bool, exception types, or a predicate of the exception.

        Raises:
            ValidationError: An argument is malformed.
        """
        if options or type(job_type) is not str or job_type not in _checked_types:
            return self._track_checked(job_type, user_id, options)
        # The common call: build the job without the general constructor's frame
        # (most of the unconfigured cost), once the user id is checked.
        if user_id is not None:
            if type(user_id) is not str:
                check_text("user_id", user_id, max_len=MAX_USER_ID)
            elif user_id not in _checked_users:
                # Not seen yet: new_job()'s check, written out (no call).
                if (user_id and len(user_id) <= MAX_USER_ID and user_id.isascii()
                        and "\x00" not in user_id):
                    if len(_checked_users) < _MAX_CHECKED_USERS:
                        _checked_users[user_id] = None
                else:
                    check_text("user_id", user_id, max_len=MAX_USER_ID)
        # A class call: TrackedJob has no __init__ (new_job() is the checked
        # constructor), so this is a bare allocation.
        job = TrackedJob()
        # The stores of plain_job(), inlined: one frame less on the hot path.
        job._tracker = self
        job._job_type = job_type
        job._user_id = user_id
        job._progress = 0
        job._lock = None
        job._state = 0
        return job

    def _track_checked(self, job_type: str, user_id: str | None,
                       options: dict[str, Any]) -> TrackedJob:
        """``track()`` with options, or a job type not checked yet."""
        check_option_names("track", options, _TRACK_OPTIONS)
        job = new_job(self, job_type, user_id, **options)
        if type(job_type) is str and len(_checked_types) < _MAX_CHECKED_TYPES:
            # Checked by the constructor: the next track() of this type skips the checks.
            _checked_types[job_type] = None
        return job

    @overload
    def job(self, func: Callable[P, R], /) -> Callable[P, R]: ...

    @overload
    def job(
        self,
        job_type: str | None = None,
        /,
        *,
        user_id: str | Callable[..., str | None] | None = None,
        title: str | Callable[..., str | None] | None = None,
        metadata: Mapping[str, Any] | Callable[..., Mapping[str, Any] | None] | None = None,
        stages: StagePlan = None,
        result: ResultMapper = None,
        retryable: RetryRule = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]: ...

    def job(
        self,
        job_type: Any = None,
        /,
        *,
        user_id: str | Callable[..., str | None] | None = None,
        title: str | Callable[..., str | None] | None = None,
        metadata: Mapping[str, Any] | Callable[..., Mapping[str, Any] | None] | None = None,
        stages: StagePlan = None,
        result: ResultMapper = None,
        retryable: RetryRule = None,
    ) -> Any:
        """Decorate a function so that every call runs as its own job.

        Works on sync and async functions, generators and async generators
        (the job spans the whole iteration; closing early fails it as
        ``CANCELLED``), methods, classmethods and staticmethods. Use it bare
        (the job type is the function's qualified name) or with arguments::

            @seenn.job("video-generation", user_id=lambda req: req.user_id)
            async def generate(req): ...

        Args:
            job_type: The kind of job; defaults to the function's qualified name.
            user_id: A user id, or a callable given the call's arguments
                (without ``self``/``cls``) that returns one.
            title: A title, or a callable of the call's arguments.
            metadata: Metadata, or a callable of the call's arguments.
            stages: The job's stages, as for :meth:`track`.
            result: ``True`` to send the return value as the job's result (a
                dict or ``JobResult`` as it is, anything else as ``data``), or a
                callable mapping the return value to one. By default return
                values are not sent.
            retryable: Whether a failure may be retried: a bool, exception
                types, or a predicate of the exception.

        Raises:
            ValidationError: An option is malformed (at decoration), or a callable
                option returned a malformed value (at the call).
        """
        if callable(job_type) or isinstance(job_type, (classmethod, staticmethod)):
            return job_decorator(self, job_type, None, user_id, title, metadata, stages,
                                 result, retryable)

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            wrapped: Callable[P, R] = job_decorator(self, func, job_type, user_id, title,
                                                    metadata, stages, result, retryable)
            return wrapped

        if job_type is not None:
            # Check the job type now, not when the decorator is applied.
            check_text("job_type", job_type, max_len=MAX_JOB_TYPE)
        return decorate

    def stage(self, name: str, /, *, description: str | None = None) -> StageScope:
        """Run a block or a function as stage ``name`` of the ambient job; see ``seenn.stage``."""
        return StageScope(name, description)

    @overload
    def iterate(self, iterable: Iterable[T], /, *, total: int | None = None,
                message: str | None = None) -> Iterator[T]: ...

    @overload
    def iterate(self, iterable: AsyncIterable[T], /, *, total: int | None = None,
                message: str | None = None) -> AsyncIterator[T]: ...

    def iterate(self, iterable: Iterable[T] | AsyncIterable[T], /, *, total: int | None = None,
                message: str | None = None) -> Iterator[T] | AsyncIterator[T]:
        """Iterate, advancing the ambient job's progress; see ``seenn.iterate``."""
        return _iterate(iterable, total=total, message=message)

    def current_job(self) -> TrackedJob | None:
        """Return the ambient job (of any tracker), or ``None`` outside one."""
        return _current_job()

    def with_current_job(self, func: Callable[P, R], /) -> Callable[P, R]:
        """Wrap ``func`` to run with the caller's ambient job; see ``seenn.with_current_job``."""
        return _with_current_job(func)

    # -- delivery ----------------------------------------------------------------------

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Deliver every pending event within ``timeout`` seconds (shared by all processors).

        Returns:
            ``True`` if everything was delivered in time.
        """
        deadline = time.monotonic() + timeout
        ok = True
        for processor in self._pipeline:
            try:
                ok = processor.force_flush(max(deadline - time.monotonic(), 0.0)) and ok
            except Exception as exc:
                internal_error(f"{type(processor).__name__}.force_flush()", exc, ())
                if is_strict():
                    raise
                ok = False
        return ok

    def shutdown(self, timeout: float = 30.0) -> None:
        """Deliver pending events within ``timeout`` seconds and stop every processor.

        Jobs started afterwards are not tracked.
        """
        pipeline = self._pipeline
        self._pipeline = self._processors = ()
        self._shutdown_all(pipeline, timeout)

    @staticmethod
    def _shutdown_all(processors: Seq[Processor], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for processor in processors:
            try:
                processor.shutdown(max(deadline - time.monotonic(), 0.0))
            except Exception as exc:
                internal_error(f"{type(processor).__name__}.shutdown()", exc, ())
                if is_strict():
                    raise


use_compiled(Tracker, {"track": "_track_full"})
if speedups is not None:
    speedups.bind_tracker(globals(), TrackedJob)
