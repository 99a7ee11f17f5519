"""@seenn.job: every kind of function, concurrency, pickling, generators, options."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import pickle
import threading
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context

import pytest
from opentelemetry.sdk.trace import TracerProvider

import seenn
from seenn import JobResult, ValidationError
from seenn.testing import capture_jobs
from tests.tracking_helpers import (
    Renderer,
    double,
    memory_tracker,
    no_job_left_behind,  # noqa: F401 (autouse fixture)
)


def _one_start_one_end(events: list[seenn.JobEvent]) -> Counter[str]:
    """Check each job has exactly one started and one terminal event; count job types."""
    per_job: dict[str, list[str]] = {}
    for event in events:
        per_job.setdefault(event.job_id, []).append(event.kind)
    for kinds in per_job.values():
        assert kinds[0] == "started" and kinds.count("started") == 1
        assert kinds[-1] in ("completed", "failed")
        assert sum(kind in ("completed", "failed") for kind in kinds) == 1
    return Counter(event.job_type for event in events if event.kind == "started")


def test_bare_decorator_uses_qualified_name_and_returns_value() -> None:
    """@job without arguments names the job after the function and returns its value."""
    with memory_tracker() as (tracker, exporter):

        @tracker.job
        def resize(width: int) -> int:
            assert seenn.current_job() is not None
            return width // 2

        assert resize(10) == 5
        events = exporter.events
    assert [e.kind for e in events] == ["started", "completed"]
    assert events[0].job_type == (
        "test_bare_decorator_uses_qualified_name_and_returns_value.resize")


def test_partial_of_async_function_is_an_async_job() -> None:
    """A decorated functools.partial of an async function starts its job when awaited."""
    with memory_tracker() as (tracker, exporter):

        async def work(value: int) -> int:
            return value

        coro = tracker.job("t")(functools.partial(work, 7))()
        assert exporter.events == []
        assert asyncio.run(coro) == 7
        assert [e.kind for e in exporter.events] == ["started", "completed"]


def test_decorated_function_keeps_signature_name_and_doc() -> None:
    """Decoration preserves __name__, __doc__, the signature and the function kind checks."""

    @seenn.job("t")
    def plain(a: int, b: str = "x") -> str:
        """Plain doc."""
        return b * a

    @seenn.job("t")
    async def coro(a: int) -> int:
        return a

    @seenn.job("t")
    def gen(n: int) -> Iterator[int]:
        yield n

    @seenn.job("t")
    async def agen(n: int) -> AsyncIterator[int]:
        yield n

    assert plain.__name__ == "plain" and plain.__doc__ == "Plain doc."
    assert str(inspect.signature(plain)) == "(a: 'int', b: 'str' = 'x') -> 'str'"
    assert inspect.iscoroutinefunction(coro) and asyncio.iscoroutinefunction(coro)
    assert inspect.isgeneratorfunction(gen)
    assert inspect.isasyncgenfunction(agen)
    assert not inspect.iscoroutinefunction(plain)


def test_exception_fails_the_job_and_is_reraised_unchanged() -> None:
    """A raising decorated function fails its job and the very exception propagates."""
    error = LookupError("no such model")
    with memory_tracker() as (tracker, exporter):

        @tracker.job("t")
        def boom() -> None:
            raise error

        with pytest.raises(LookupError) as caught:
            boom()
        assert caught.value is error
        assert exporter.events[-1].error is not None
        assert exporter.events[-1].error.code == "LookupError"


async def test_async_job_starts_when_awaited_not_when_called() -> None:
    """An async job's started event comes when the coroutine runs, its end when it returns."""
    with memory_tracker() as (tracker, exporter):
        gate = asyncio.Event()
        halfway = asyncio.Event()

        @tracker.job("t")
        async def generate() -> str:
            job = seenn.current_job()
            assert job is not None
            job.set_progress(50)
            halfway.set()
            await gate.wait()
            return "done"

        coro = generate()
        assert exporter.events == []
        task = asyncio.create_task(coro)
        await halfway.wait()
        assert [e.kind for e in exporter.events] == ["started", "progress"]
        gate.set()
        assert await task == "done"
        assert exporter.events[-1].kind == "completed"


def test_sync_function_returning_a_coroutine_spans_the_coroutine() -> None:
    """A decorated sync function returning a coroutine completes only when that has run."""
    with memory_tracker() as (tracker, exporter):

        async def work(value: int) -> int:
            job = seenn.current_job()
            assert job is not None
            job.set_progress(30)
            return value

        def factory() -> Coroutine[None, None, int]:
            return work(7)

        coro = tracker.job("t")(factory)()
        assert [e.kind for e in exporter.events] == ["started"]
        assert asyncio.run(coro) == 7
        assert [e.kind for e in exporter.events] == ["started", "progress", "completed"]


def test_methods_classmethods_and_staticmethods() -> None:
    """@job works on instance methods, classmethods and staticmethods, in either order."""
    with memory_tracker() as (tracker, exporter):

        class Service:
            def __init__(self) -> None:
                self.scale = 3

            @tracker.job("method")
            def method(self, value: int) -> int:
                return value * self.scale

            @tracker.job("class-outer")
            @classmethod
            def outer_classmethod(cls, value: int) -> str:
                return f"{cls.__name__}:{value}"

            @classmethod
            @tracker.job("class-inner")
            def inner_classmethod(cls, value: int) -> str:
                return f"{cls.__name__}:{value}"

            @tracker.job("static-outer")
            @staticmethod
            def outer_static(value: int) -> int:
                return value + 1

            @staticmethod
            @tracker.job("static-inner")
            def inner_static(value: int) -> int:
                return value + 2

        service = Service()
        assert service.method(2) == 6
        assert Service.method(service, 2) == 6
        assert Service.outer_classmethod(1) == "Service:1"
        assert service.inner_classmethod(1) == "Service:1"
        assert Service.outer_static(1) == 2
        assert service.inner_static(1) == 3
        types = _one_start_one_end(exporter.events)
    assert types == {"method": 2, "class-outer": 1, "class-inner": 1, "static-outer": 1,
                     "static-inner": 1}


def test_user_id_title_and_metadata_callables_get_the_call_arguments() -> None:
    """Callable options receive the call's arguments (without self) and fill the job."""
    with memory_tracker() as (tracker, exporter):

        class Request:
            user_id = "user_42"
            prompt = "A cat"

        class Api:
            @tracker.job("video", user_id=lambda req: req.user_id,
                         title=lambda req: f"Video for {req.prompt}",
                         metadata=lambda req: {"prompt": req.prompt})
            def generate(self, req: Request) -> None:
                return None

        Api().generate(Request())
        started = exporter.events[0]
    assert started.user_id == "user_42"
    assert started.title == "Video for A cat"
    assert started.metadata == {"prompt": "A cat"}


def test_invalid_user_id_from_callable_raises_before_the_function_runs() -> None:
    """A user_id callable returning a bad value raises ValidationError; the function never runs."""
    ran = []
    with memory_tracker() as (tracker, exporter):

        @tracker.job("t", user_id=lambda: "")
        def work() -> None:
            ran.append(True)

        with pytest.raises(ValidationError) as caught:
            work()
        assert caught.value.field == "user_id"
        assert ran == [] and exporter.events == []


def test_invalid_options_raise_at_decoration() -> None:
    """Bad static options raise ValidationError when decorating, not at the first call."""
    with pytest.raises(ValidationError) as caught:
        seenn.job("")
    assert caught.value.field == "job_type"
    with pytest.raises(ValidationError) as caught:
        seenn.job("t", metadata={"blob": "x" * 20_000})(lambda: None)
    assert caught.value.field == "metadata"


def test_result_option_sends_the_mapped_return_value() -> None:
    """result=True sends a dict return as is, a callable maps the value, the default sends none."""
    with memory_tracker() as (tracker, exporter):

        @tracker.job("a", result=True)
        def as_is() -> dict[str, str]:
            return {"type": "video", "url": "https://x/v.mp4"}

        @tracker.job("b", result=lambda path: {"type": "file", "url": f"file://{path}"})
        def mapped() -> str:
            return "/tmp/out.png"

        @tracker.job("c")
        def hidden() -> str:
            return "secret"

        as_is()
        mapped()
        hidden()
        results = [e.result for e in exporter.events if e.kind == "completed"]
    assert results == [JobResult(type="video", url="https://x/v.mp4"),
                       JobResult(type="file", url="file:///tmp/out.png"), None]


def test_retryable_predicate() -> None:
    """retryable= may be a predicate of the exception."""
    with memory_tracker() as (tracker, exporter):

        @tracker.job("t", retryable=lambda exc: "temporary" in str(exc))
        def flaky(message: str) -> None:
            raise RuntimeError(message)

        for message in ("temporary glitch", "permanent"):
            with pytest.raises(RuntimeError):
                flaky(message)
        retryable = [e.retryable for e in exporter.events if e.kind == "failed"]
    assert retryable == [True, False]


def test_concurrent_calls_in_threads_get_their_own_jobs() -> None:
    """Concurrent calls of one decorated function in threads make one job each, never shared."""
    with memory_tracker() as (tracker, exporter):
        barrier = threading.Barrier(8)

        @tracker.job("t")
        def work(index: int) -> str:
            barrier.wait(timeout=30)
            job = seenn.current_job()
            assert job is not None
            job.set_progress(index * 10)
            return job.id

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(work, range(8)))
        events = exporter.events
    assert len(set(ids)) == 8
    assert _one_start_one_end(events) == {"t": 8}


async def test_concurrent_calls_with_gather_get_their_own_jobs() -> None:
    """asyncio.gather of one decorated coroutine function makes one job per call."""
    with memory_tracker() as (tracker, exporter):

        @tracker.job("t")
        async def work(index: int) -> str:
            job = seenn.current_job()
            assert job is not None
            await asyncio.sleep(0)
            assert seenn.current_job() is job
            job.set_progress(index)
            return job.id

        ids = await asyncio.gather(*(work(i) for i in range(20)))
        events = exporter.events
    assert len(set(ids)) == 20
    assert _one_start_one_end(events) == {"t": 20}


def test_generator_job_spans_iteration_and_hides_the_job_from_the_consumer() -> None:
    """A decorated generator's job spans the iteration and is not ambient between yields."""
    with memory_tracker() as (tracker, exporter):

        @tracker.job("frames")
        def frames(count: int) -> Iterator[str]:
            for index in range(count):
                job = seenn.current_job()
                assert job is not None and job.job_type == "frames"
                yield f"frame-{index}"
            return None

        gen = frames(3)
        assert exporter.events == []
        seen_outside = []
        for _ in gen:
            seen_outside.append(seenn.current_job())
        kinds = [e.kind for e in exporter.events]
    assert seen_outside == [None, None, None]
    assert kinds == ["started", "completed"]


def test_generator_send_throw_and_return_value_pass_through() -> None:
    """send() values, throw() exceptions and the return value reach the wrapped generator."""
    with memory_tracker() as (tracker, exporter):

        @tracker.job("echo")
        def echo() -> object:
            received = []
            while True:
                try:
                    value = yield len(received)
                except KeyError:
                    received.append("thrown")
                    continue
                if value is None:
                    return received
                received.append(value)

        gen = echo()
        assert next(gen) == 0
        assert gen.send("a") == 1
        assert gen.throw(KeyError("k")) == 2
        with pytest.raises(StopIteration) as stop:
            gen.send(None)
        assert stop.value.value == ["a", "thrown"]
        assert exporter.events[-1].kind == "completed"


def test_generator_closed_early_is_cancelled() -> None:
    """Closing a decorated generator before it ends fails its job as CANCELLED."""
    cleaned_up = []
    with memory_tracker() as (tracker, exporter):

        @tracker.job("frames")
        def frames() -> Iterator[int]:
            try:
                yield 1
                yield 2
            finally:
                cleaned_up.append(seenn.current_job() is not None)

        gen = frames()
        next(gen)
        gen.close()
        last = exporter.events[-1]
    assert cleaned_up == [True]
    assert last.kind == "failed"
    assert last.error is not None and last.error.code == "CANCELLED"


def test_interleaved_generators_each_see_their_own_job() -> None:
    """Two decorated generators advanced alternately each see only their own job."""
    with memory_tracker() as (tracker, _):

        @tracker.job("g")
        def gen(name: str) -> Iterator[tuple[str, str]]:
            for _ in range(3):
                job = seenn.current_job()
                assert job is not None
                yield name, job.id

        a, b = gen("a"), gen("b")
        pairs = [next(a), next(b), next(a), next(b)]
        a_ids = {job_id for name, job_id in pairs if name == "a"}
        b_ids = {job_id for name, job_id in pairs if name == "b"}
    assert len(a_ids) == 1 and len(b_ids) == 1 and a_ids != b_ids


def test_generator_resumed_in_other_contexts_logs_no_detach_errors(
        caplog: pytest.LogCaptureFixture) -> None:
    """Resuming a decorated generator in different contexts, under OTel spans, logs nothing."""
    tracer = TracerProvider().get_tracer("test")
    with memory_tracker() as (tracker, exporter):

        @tracker.job("g")
        def gen() -> Iterator[int]:
            for index in range(4):
                with tracer.start_as_current_span(f"step-{index}"):
                    pass
                yield index

        generator = gen()
        with caplog.at_level(logging.DEBUG):
            for _ in range(4):
                with tracer.start_as_current_span("consumer"):
                    contextvars.copy_context().run(next, generator)
            with pytest.raises(StopIteration):
                contextvars.copy_context().run(next, generator)
        assert [e.kind for e in exporter.events] == ["started", "completed"]
    assert not [r for r in caplog.records if "detach" in r.getMessage().lower()]
    assert seenn.current_job() is None


async def test_async_generator_job_and_early_close() -> None:
    """A decorated async generator spans its iteration; aclose() early makes it CANCELLED."""
    with memory_tracker() as (tracker, exporter):

        @tracker.job("agen")
        async def numbers(limit: int) -> AsyncIterator[int]:
            for index in range(limit):
                job = seenn.current_job()
                assert job is not None
                await asyncio.sleep(0)
                yield index

        assert [item async for item in numbers(3)] == [0, 1, 2]
        assert seenn.current_job() is None
        agen = numbers(5)
        assert await agen.__anext__() == 0
        assert seenn.current_job() is None
        await agen.aclose()
        kinds = [e.kind for e in exporter.events]
        last = exporter.events[-1]
    assert kinds == ["started", "completed", "started", "failed"]
    assert last.error is not None and last.error.code == "CANCELLED"


def test_nested_decorated_calls_are_children() -> None:
    """A decorated function called inside another's job is its child."""
    with memory_tracker() as (tracker, exporter):

        @tracker.job("child")
        def child() -> None:
            return None

        @tracker.job("parent", user_id="user_1")
        def parent() -> None:
            child()
            child()

        parent()
        started = [e for e in exporter.events if e.kind == "started"]
    assert [(e.job_type, e.child_index, e.user_id) for e in started] == [
        ("parent", None, "user_1"), ("child", 0, "user_1"), ("child", 1, "user_1")]
    assert started[1].parent_id == started[0].job_id


def test_decorated_functions_and_bound_methods_pickle_by_reference() -> None:
    """A decorated function pickles to itself; a bound method pickles with its instance."""
    assert pickle.loads(pickle.dumps(double)) is double
    bound = pickle.loads(pickle.dumps(Renderer(3).render))
    with capture_jobs() as exporter:
        assert bound(2) == 6
    assert [e.job_type for e in exporter.events] == ["render", "render"]


def test_decorated_function_runs_in_a_process_pool() -> None:
    """A decorated function can be sent to a (spawned) process pool and run there."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        assert list(pool.map(double, [1, 2, 3], timeout=120)) == [2, 4, 6]


def test_default_tracker_decorator_is_captured() -> None:
    """@seenn.job on the default tracker reports to whatever capture_jobs() installs."""

    @seenn.job("captured")
    def work() -> int:
        return 1

    with capture_jobs() as exporter:
        work()
    work()
    assert [e.kind for e in exporter.events] == ["started", "completed"]
