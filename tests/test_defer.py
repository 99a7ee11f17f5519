"""seenn.defer(): the job exists at once, queued; the deferred call runs later as that job."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import seenn
import seenn.server
from seenn.testing import InMemoryExporter
from tests.tracking_helpers import memory_tracker, no_job_left_behind  # noqa: F401


@pytest.fixture
def tracked() -> Iterator[tuple[seenn.Tracker, InMemoryExporter]]:
    """A private tracker with an in-memory exporter."""
    with memory_tracker() as pair:
        yield pair


def test_defer_creates_the_job_queued_before_the_call_runs(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """defer() starts the job (queued, user id from the arguments) and runs nothing."""
    tracker, exporter = tracked
    ran = threading.Event()

    @tracker.job("export", user_id=lambda user, fmt: user)
    def export(user: str, fmt: str) -> None:
        ran.set()

    deferred = seenn.defer(export, "user_1", "csv")
    assert not ran.is_set()
    (started,) = exporter.events
    assert (started.kind, started.status, started.job_id) == ("started", "queued", deferred.id)
    assert started.user_id == "user_1" and started.job_type == "export"
    assert deferred.id.startswith("job_")
    assert deferred.carrier["seenn-job"].startswith("v=1;id=" + deferred.id)


def test_calling_it_in_a_thread_runs_the_call_as_that_one_job(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """The deferred call runs in another thread, in the job: one start, then its end."""
    tracker, exporter = tracked

    @tracker.job("export", user_id=lambda user: user, result=True)
    def export(user: str) -> dict[str, Any]:
        job = seenn.current_job()
        assert job is not None
        job.set_progress(50, message="half")
        return {"type": "file", "url": f"https://cdn/{user}.csv"}

    deferred = seenn.defer(export, "user_2")
    with ThreadPoolExecutor(1) as pool:
        value = pool.submit(deferred).result(timeout=30)
    assert value == {"type": "file", "url": "https://cdn/user_2.csv"}
    events = exporter.events_for(deferred.id)
    assert [e.kind for e in events] == ["started", "progress", "progress", "completed"]
    assert [e.status for e in events] == ["queued", "running", "running", "completed"]
    assert events[-1].result == seenn.JobResult(type="file", url="https://cdn/user_2.csv")
    assert {e.job_id for e in exporter.events} == {deferred.id}


def test_a_deferred_call_that_raises_fails_its_job_and_reraises(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """An exception from the deferred call fails the job (outcome table) and propagates."""
    tracker, exporter = tracked

    @tracker.job("export")
    def export() -> None:
        raise ValueError("no rows")

    deferred = seenn.defer(export)
    with pytest.raises(ValueError, match="no rows"):
        deferred()
    last = exporter.events_for(deferred.id)[-1]
    assert last.kind == "failed" and last.error is not None
    assert (last.error.code, last.error.message) == ("ValueError", "no rows")


async def test_defer_of_an_async_function_gives_a_coroutine_to_await(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """For an async function, calling the DeferredJob returns the coroutine that runs it."""
    tracker, exporter = tracked

    @tracker.job("thumbnail")
    async def thumbnail(size: int) -> int:
        await asyncio.sleep(0)  # a real suspension inside the job
        job = seenn.current_job()
        assert job is not None and job.job_type == "thumbnail"
        return size * 2

    deferred = seenn.defer(thumbnail, 21)
    assert await deferred() == 42
    assert exporter.kinds(deferred.id) == ["started", "progress", "completed"]


def test_a_job_call_inside_the_deferred_call_is_a_child(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """The deferred call adopts the job once; a nested @job call is a child of it."""
    tracker, exporter = tracked

    @tracker.job("step")
    def step() -> None:
        pass

    @tracker.job("pipeline")
    def pipeline(inner: bool) -> None:
        if inner:
            pipeline(False)
        step()

    deferred = seenn.defer(pipeline, True)
    deferred()
    starts = [e for e in exporter.events if e.kind == "started"]
    assert [e.job_type for e in starts] == ["pipeline", "pipeline", "step", "step"]
    assert starts[1].parent_id == deferred.id
    assert len({e.job_id for e in starts}) == 4


def test_defer_inside_a_job_makes_a_child_of_it(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """Called inside a tracked block, defer() starts a child job, as track() would."""
    tracker, exporter = tracked

    @tracker.job("child")
    def child() -> None:
        pass

    with tracker.track("request") as parent:
        deferred = seenn.defer(child)
    started = exporter.events_for(deferred.id)[0]
    assert started.parent_id == parent.id and started.child_index == 0


def test_defer_refuses_functions_without_job_and_generators() -> None:
    """defer() needs a plain or async @seenn.job function: TypeError otherwise."""
    def plain() -> None:
        pass

    @seenn.job("gen")
    def generate() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match=r"@seenn\.job"):
        seenn.defer(plain)
    with pytest.raises(TypeError, match="generators"):
        seenn.defer(generate)


@seenn.job("pooled", user_id=lambda user: user, result=True)
def pooled(user: str) -> dict[str, str]:
    """A @seenn.job function a process pool can find by name."""
    return {"type": "text", "data": user.upper()}


def _configure(api_key: str, base_url: str) -> None:
    seenn.configure(api_key=api_key, base_url=base_url)


def _run_and_flush(deferred: seenn.DeferredJob[Any]) -> Any:
    # A pool process exits without atexit handlers: deliver before returning.
    try:
        return deferred()
    finally:
        seenn.force_flush(timeout=30)


def test_a_deferred_job_pickles_and_runs_in_a_process_pool(tmp_path: Path) -> None:
    """Sent to a spawned process, the DeferredJob finishes the job seenn serve shows queued."""
    tracker = seenn.track.__self__  # type: ignore[attr-defined]
    previous = tracker.processors
    with seenn.server.running(tmp_path / "serve.db") as backend:
        seenn.configure(api_key=backend.api_key, base_url=backend.url)
        try:
            deferred = seenn.defer(pooled, "user_3")
            assert seenn.force_flush(timeout=30)
            with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
                assert client.jobs.get(deferred.id).status == "queued"
                assert pickle.loads(pickle.dumps(deferred)).id == deferred.id
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(1, mp_context=context, initializer=_configure,
                                         initargs=(backend.api_key, backend.url)) as pool:
                    value = pool.submit(_run_and_flush, deferred).result(timeout=120)
                stored = client.jobs.get(deferred.id)
        finally:
            seenn.configure(processors=list(previous))
    assert value == {"type": "text", "data": "USER_3"}
    assert (stored.status, stored.user_id) == ("completed", "user_3")
    assert stored.result == seenn.JobResult(type="text", data="USER_3")


def test_after_the_adopted_call_the_job_is_no_longer_ambient(
        tracked: tuple[seenn.Tracker, InMemoryExporter]) -> None:
    """What a queue does after the function returns (a chain's next task) is not a child."""
    from seenn.propagation._handover import own

    tracker, exporter = tracked

    @tracker.job("task")
    def task() -> None:
        assert seenn.current_job() is job  # adopted: the call runs in the owned job

    spec = task._self_seenn_spec  # type: ignore[attr-defined]
    job = own(spec, None, (), {}, job_id="job_owned")
    try:
        task()
        assert seenn.current_job() is None  # stepped out: a publish now is no child
        with tracker.track("next-in-chain") as after:
            pass
    finally:
        job.__exit__(None, None, None)
    assert after.parent_id is None
    assert exporter.kinds("job_owned") == ["started", "completed"]
