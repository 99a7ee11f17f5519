"""``@job``: every call of a decorated function runs as its own job.

Each call of a decorated function makes its own :class:`TrackedJob`; nothing
about a call is stored on the decorator, so concurrent calls (threads,
``asyncio.gather``) never share a job. The kind of function (sync, async,
generator, async generator) is decided once, at decoration, so the per-call
path does no inspection.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Mapping
from types import CoroutineType
from typing import Any, TypeAlias

from seenn._core.models import JobResult
from seenn._core.validation import (
    MAX_JOB_TYPE,
    MAX_TITLE,
    MAX_USER_ID,
    check_metadata,
    check_text,
    coerce_result,
    fail,
)
from seenn._instrumentation.job import TrackedJob, new_job, plain_job
from seenn._instrumentation.lifecycle import CURRENT_JOB, ProcessorSource
from seenn._instrumentation.outcomes import RetryRule, check_retry_rule
from seenn._instrumentation.plan import StagePlan, check_plan
from seenn._instrumentation.wrapping import (
    JobFunction,
    Wrapper,
    default_job_type,
    fast_target,
    kind_of,
)

__all__ = ["JobSpec", "ResultMapper", "job_decorator", "job_spec"]

ResultMapper: TypeAlias = bool | Callable[[Any], JobResult | Mapping[str, Any] | None] | None
"""``True`` sends the return value as the result; a callable maps it to one."""

_set = CURRENT_JOB.set
_reset = CURRENT_JOB.reset
# Every value of CURRENT_JOB is a TrackedJob (JobCore is never made on its own).
_get: Callable[[], TrackedJob | None] = CURRENT_JOB.get  # type: ignore[assignment]


class JobSpec:
    """What a ``@job`` decoration said, checked once; makes one ``TrackedJob`` per call."""

    __slots__ = ("job_type", "metadata", "metadata_fn", "plan", "result", "retryable",
                 "simple", "title", "title_fn", "tracker", "user_id", "user_id_fn")

    def __init__(self, tracker: ProcessorSource, job_type: str, user_id: Any, title: Any,
                 metadata: Any,
                 stages: StagePlan, result: ResultMapper, retryable: RetryRule) -> None:
        check_text("job_type", job_type, max_len=MAX_JOB_TYPE)
        self.tracker = tracker
        self.job_type = job_type
        self.user_id_fn = user_id if callable(user_id) else None
        self.user_id = None if callable(user_id) else user_id
        if self.user_id is not None:
            check_text("user_id", self.user_id, max_len=MAX_USER_ID)
        self.title_fn = title if callable(title) else None
        self.title = None if callable(title) else title
        if self.title is not None:
            check_text("title", self.title, max_len=MAX_TITLE)
        self.metadata_fn = metadata if callable(metadata) else None
        self.metadata = None if callable(metadata) else check_metadata(metadata)
        self.plan = check_plan(stages)
        if result is not None and not isinstance(result, bool) and not callable(result):
            fail("result", "must be True or a callable mapping the return value to a result")
        self.result = result if result else None
        self.retryable = check_retry_rule(retryable)
        # The common decoration: nothing computed per call, nothing beyond the
        # user id to store.
        self.simple = (self.user_id_fn is None and self.title is None and self.title_fn is None
                       and self.metadata is None and self.metadata_fn is None
                       and self.plan is None and self.retryable is None)

    def new_job(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TrackedJob:
        if self.simple:
            return new_job(self.tracker, self.job_type, self.user_id)
        user_id = self.user_id if self.user_id_fn is None else self.user_id_fn(*args, **kwargs)
        title = self.title if self.title_fn is None else self.title_fn(*args, **kwargs)
        metadata = None if self.metadata_fn is None else self.metadata_fn(*args, **kwargs)
        job = new_job(self.tracker, self.job_type, user_id, title, metadata)
        # Checked once at decoration, not again per call; only what differs
        # from the defaults is stored.
        if metadata is None and self.metadata is not None:
            job._metadata = self.metadata
        if self.plan is not None:
            job._plan = self.plan
        if self.retryable is not None:
            job._retry_rule = self.retryable
        return job

    def map_result(self, value: Any) -> JobResult | None:
        mapper = self.result
        if mapper is None:
            return None
        if mapper is True:
            if isinstance(value, (JobResult, Mapping)):
                return coerce_result(value)
            return None if value is None else coerce_result({"data": value})
        mapped = mapper(value)
        return None if mapped is None else coerce_result(mapped)


async def _await_in_job(job: TrackedJob, awaitable: Coroutine[Any, Any, Any],
                        spec: JobSpec) -> Any:
    # A "sync" function returned a coroutine (a partial of an async function, a
    # factory): the job must span the coroutine, not just its creation.
    token = _set(job)
    try:
        value = await awaitable
        result = spec.map_result(value)
    except BaseException as exc:
        job._fail_with(exc)
        raise
    finally:
        _reset(token)
    job._succeed(result)
    return value


def _job_factory(spec: JobSpec) -> Callable[[tuple[Any, ...], dict[str, Any]], TrackedJob]:
    if not spec.simple:
        return spec.new_job
    tracker, job_type, user_id = spec.tracker, spec.job_type, spec.user_id

    def new_plain_job(args: tuple[Any, ...], kwargs: dict[str, Any]) -> TrackedJob:
        return plain_job(tracker, job_type, user_id)

    return new_plain_job


def _adopted_call(job: TrackedJob, spec: JobSpec, wrapped: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
    """Run a call in a job its owner started and will end (a queue integration's task).

    The job is ambient already. The call keeps its mapped result for the
    completion; how the job ends (completed, failed, retried) is the owner's
    to say, since only the queue knows whether an exception means a retry.
    """
    job._awaiting = None  # one call adopts it; nested calls make child jobs
    try:
        value = wrapped(*args, **kwargs)
    except BaseException:
        _step_out(job)
        raise
    if type(value) is CoroutineType:
        return _await_adopted(job, value, spec)
    _keep_result(job, spec, value)
    _step_out(job)
    return value


async def _await_adopted(job: TrackedJob, awaitable: Coroutine[Any, Any, Any],
                         spec: JobSpec) -> Any:
    try:
        value = await awaitable
        _keep_result(job, spec, value)
    finally:
        _step_out(job)
    return value


def _step_out(job: TrackedJob) -> None:
    """Once the adopted call is over, the job is no longer ambient.

    What the queue does next, before its owner ends the job (Celery sends a
    chain's next task and link callbacks then), is not the job's work: tasks it
    enqueues are not children of it. The owner's token still restores what was
    ambient before.
    """
    token = getattr(job, "_token", None)
    if token is not None and _get() is job:
        old = token.old_value
        _set(None if old is token.MISSING else old)


def _keep_result(job: TrackedJob, spec: JobSpec, value: Any) -> None:
    if spec.result is not None:
        result = spec.map_result(value)
        if result is not None:
            job.set_result(result)


def _sync_wrapper(spec: JobSpec) -> Wrapper:
    new_job = _job_factory(spec)
    map_result = spec.map_result if spec.result is not None else None

    def call_in_job(wrapped: Any, instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        ambient = _get()
        if ambient is not None and ambient._awaiting is spec:
            return _adopted_call(ambient, spec, wrapped, args, kwargs)
        job = new_job(args, kwargs)
        job._start()
        token = _set(job)
        try:
            value = wrapped(*args, **kwargs)
            if type(value) is CoroutineType:
                return _await_in_job(job, value, spec)
            result = map_result(value) if map_result is not None else None
        except BaseException as exc:
            job._fail_with(exc)
            raise
        finally:
            _reset(token)
        job._succeed(result)
        return value

    return call_in_job


def _async_wrapper(spec: JobSpec) -> Wrapper:
    new_job = _job_factory(spec)

    async def run(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        job = new_job(args, kwargs)
        job._start()
        token = _set(job)
        try:
            value = await wrapped(*args, **kwargs)
            result = spec.map_result(value)
        except BaseException as exc:
            job._fail_with(exc)
            raise
        finally:
            _reset(token)
        job._succeed(result)
        return value

    def call_in_job(wrapped: Any, instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        ambient = _get()
        if ambient is not None and ambient._awaiting is spec:
            return _adopted_call(ambient, spec, wrapped, args, kwargs)
        return run(wrapped, args, kwargs)

    return call_in_job


def _generator_wrapper(spec: JobSpec) -> Wrapper:
    new_job = _job_factory(spec)

    def run(wrapped: Any, args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> Generator[Any, Any, Any]:
        job = new_job(args, kwargs)
        job._start()
        # The job is ambient only while the generator's own code runs: it is set
        # and reset around every resumption, never held across a yield, so the
        # consumer never sees it and a resumption in another context is fine.
        token = _set(job)
        try:
            gen = wrapped(*args, **kwargs)
        except BaseException as exc:
            job._fail_with(exc)
            raise
        finally:
            _reset(token)
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            token = _set(job)
            try:
                if thrown is None:
                    item = gen.send(sent)
                else:
                    item, thrown = gen.throw(thrown), None
            except StopIteration as stop:
                try:
                    result = spec.map_result(stop.value)
                except BaseException as exc:
                    job._fail_with(exc)
                    raise
                job._succeed(result)
                return stop.value
            except BaseException as exc:
                job._fail_with(exc)
                raise
            finally:
                _reset(token)
            try:
                sent = yield item
            except GeneratorExit as exit_:
                token = _set(job)
                try:
                    gen.close()
                finally:
                    _reset(token)
                job._fail_with(exit_)
                raise
            except BaseException as exc:
                thrown = exc

    def call_in_job(wrapped: Any, instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        return run(wrapped, args, kwargs)

    return call_in_job


def _async_generator_wrapper(spec: JobSpec) -> Wrapper:
    new_job = _job_factory(spec)

    async def run(wrapped: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> AsyncGenerator[Any, Any]:
        job = new_job(args, kwargs)
        job._start()
        token = _set(job)
        try:
            agen = wrapped(*args, **kwargs)
        except BaseException as exc:
            job._fail_with(exc)
            raise
        finally:
            _reset(token)
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            token = _set(job)
            try:
                if thrown is None:
                    item = await agen.asend(sent)
                else:
                    item, thrown = await agen.athrow(thrown), None
            except StopAsyncIteration:
                job._succeed(None)
                return
            except BaseException as exc:
                job._fail_with(exc)
                raise
            finally:
                _reset(token)
            try:
                sent = yield item
            except GeneratorExit as exit_:
                token = _set(job)
                try:
                    await agen.aclose()
                finally:
                    _reset(token)
                job._fail_with(exit_)
                raise
            except BaseException as exc:
                thrown = exc

    def call_in_job(wrapped: Any, instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        return run(wrapped, args, kwargs)

    return call_in_job


_WRAPPERS: dict[str, Callable[[JobSpec], Wrapper]] = {
    "sync": _sync_wrapper,
    "async": _async_wrapper,
    "generator": _generator_wrapper,
    "asyncgen": _async_generator_wrapper,
}


def job_decorator(tracker: ProcessorSource, func: Any, job_type: str | None, user_id: Any,
                  title: Any, metadata: Any, stages: StagePlan, result: ResultMapper,
                  retryable: RetryRule) -> Any:
    """Wrap ``func`` so that each call runs as a new job of ``tracker``."""
    if not callable(func) and not isinstance(func, (classmethod, staticmethod)):
        raise TypeError(f"@job needs a function, got {type(func).__name__}")
    spec = JobSpec(tracker, job_type if job_type is not None else default_job_type(func),
                    user_id, title, metadata, stages, result, retryable)
    kind = kind_of(func)
    wrapper = JobFunction(fast_target(func), _WRAPPERS[kind](spec))
    # Kept on the wrapper (wrapt keeps _self_* names on the proxy) for the queue
    # integrations and defer(): they start the job where the work is enqueued.
    wrapper._self_seenn_spec = spec
    wrapper._self_seenn_kind = kind
    return wrapper


def job_spec(func: Any) -> tuple[JobSpec, str] | None:
    """The ``@job`` decoration of ``func`` and its kind (``"sync"``, ``"async"``, ...).

    ``func`` may be the decorated function, or a method of it bound to an
    instance (a Celery task's ``run``). ``None`` if ``func`` carries no ``@job``.
    """
    for candidate in (func, getattr(func, "_self_parent", None)):
        if isinstance(candidate, JobFunction) and isinstance(candidate._self_seenn_spec, JobSpec):
            return candidate._self_seenn_spec, candidate._self_seenn_kind
    return None
