"""``stage()`` and ``iterate()``: progress that follows the shape of the work."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from seenn._context import CURRENT_JOB
from seenn._validation import MAX_MESSAGE, MAX_STAGE_NAME, check_int, check_opt_text, check_text

if TYPE_CHECKING:
    from types import TracebackType

    from seenn._models import Stage
    from seenn._tracked_job import TrackedJob

__all__ = ["StageScope", "iterate", "stage"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


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
        job = self._job if self._job is not None else CURRENT_JOB.get()
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
        from seenn._decorator import stage_decorator

        decorated: F = stage_decorator(self._name, self._description, self._job, func)
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


class _ProgressIterator(Generic[T]):
    __slots__ = ("_count", "_it", "_job", "_last", "_lo", "_message", "_span", "_total")

    def __init__(self, job: TrackedJob, it: Any, total: int | None, lo: int, hi: int,
                 message: str | None) -> None:
        self._job = job
        self._it = it
        self._total = total
        self._lo = lo
        self._span = max(hi - lo, 0)
        self._count = 0
        self._last = -1
        self._message = message

    def _advance(self) -> None:
        # Progress counts items finished: item n is done when item n+1 is asked for.
        total = self._total
        if total:
            value = self._lo + self._span * min(self._count, total) // total
            if value > self._last:
                self._last = value
                self._job._auto_progress(value, self._message)
        elif self._last < 0:
            self._last = self._lo
            self._job._auto_progress(self._lo, self._message)

    def _finish(self) -> None:
        self._job._auto_progress(self._lo + self._span, self._message)


class _SyncProgress(_ProgressIterator[T], Iterator[T]):
    __slots__ = ()

    def __iter__(self) -> _SyncProgress[T]:
        return self

    def __next__(self) -> T:
        self._advance()
        try:
            item: T = next(self._it)
        except StopIteration:
            self._finish()
            raise
        self._count += 1
        return item


class _AsyncProgress(_ProgressIterator[T], AsyncIterator[T]):
    __slots__ = ()

    def __aiter__(self) -> _AsyncProgress[T]:
        return self

    async def __anext__(self) -> T:
        self._advance()
        try:
            item: T = await self._it.__anext__()
        except StopAsyncIteration:
            self._finish()
            raise
        self._count += 1
        return item


@overload
def iterate(iterable: Iterable[T], /, *, total: int | None = None,
            message: str | None = None) -> Iterator[T]: ...


@overload
def iterate(iterable: AsyncIterable[T], /, *, total: int | None = None,
            message: str | None = None) -> AsyncIterator[T]: ...


def iterate(iterable: Iterable[T] | AsyncIterable[T], /, *, total: int | None = None,
            message: str | None = None) -> Iterator[T] | AsyncIterator[T]:
    """Iterate over ``iterable`` (sync or async), advancing the ambient job's progress.

    Progress moves through the current stage's share when the job declared
    ``stages`` and is in one, otherwise from the job's current progress to
    100, in proportion to the items consumed (it only moves forward, and at
    most once per whole percent). Outside a job the items pass through
    untouched.

    Args:
        iterable: What to iterate over.
        total: How many items there are; defaults to ``len(iterable)`` when it
            has one. Without a total, progress jumps to the end of the range
            when the iteration ends.
        message: A progress message set when iteration starts.

    Raises:
        ValidationError: ``total`` or ``message`` is malformed.
    """
    if total is not None:
        check_int("total", total, minimum=0)
    if message is not None:
        check_opt_text("message", message, max_len=MAX_MESSAGE)
    is_async = not isinstance(iterable, Iterable) and isinstance(iterable, AsyncIterable)
    job = CURRENT_JOB.get()
    if job is None:
        return aiter(iterable) if is_async else iter(iterable)  # type: ignore[arg-type]
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    share = job._stage_share(job._stage)
    lo, hi = share if share is not None else (job._progress, 100)
    if is_async:
        return _AsyncProgress(job, aiter(iterable), total, lo, hi,  # type: ignore[arg-type]
                              message)
    return _SyncProgress(job, iter(iterable), total, lo, hi, message)  # type: ignore[arg-type]
