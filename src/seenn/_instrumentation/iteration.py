"""``iterate()``: progress that follows the items of a loop, sync or async."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, Generic, TypeVar, overload

from seenn._core.validation import MAX_MESSAGE, check_int, check_opt_text
from seenn._instrumentation.lifecycle import CURRENT_JOB, JobCore

__all__ = ["iterate"]

T = TypeVar("T")


class _ProgressIterator(Generic[T]):
    __slots__ = ("_count", "_it", "_job", "_last", "_lo", "_message", "_span", "_total")

    def __init__(self, job: JobCore, it: Any, total: int | None, lo: int, hi: int,
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
