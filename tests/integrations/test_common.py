"""What the queue integrations share: the exit flush, tables, patches, hooks and run ids."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import seenn
from seenn.exporters import HTTPExporter
from seenn.integrations._common import (
    Patches,
    Running,
    flush,
    guarded_async,
    is_run_of,
    run_job_id,
)
from seenn.testing import strict_mode
from tests.faults import free_port


@pytest.fixture
def dead_backend() -> Iterator[str]:
    """The default tracker sends to a port nothing listens on (a backend that is down)."""
    tracker = seenn.track.__self__  # type: ignore[attr-defined]
    previous = tracker.processors
    yield f"http://127.0.0.1:{free_port()}"
    seenn.shutdown(timeout=0)  # nothing to wait for: the backend never answers
    seenn.configure(processors=list(previous))


def test_the_exit_flush_does_not_wait_for_a_backend_that_is_down(dead_backend: str) -> None:
    """A worker exiting with the backend down leaves at once, not after the whole timeout."""
    seenn.configure(exporters=[HTTPExporter(api_key="sk_test_x", base_url=dead_backend)])
    with seenn.track("exit-flush", user_id="u1"):
        pass
    assert flush(timeout=600) is False  # returns soon: a hang here is the failure


def test_the_exit_flush_leaves_at_once_when_an_outbox_holds_the_events(
        dead_backend: str, tmp_path: Path) -> None:
    """With an outbox, what is undelivered stays on disk for the next process: no wait."""
    exporter = HTTPExporter(api_key="sk_test_x", base_url=dead_backend,
                            outbox=tmp_path / "outbox.db")
    seenn.configure(exporters=[exporter])
    with seenn.track("exit-flush", user_id="u1"):
        pass
    assert flush(timeout=600) is False
    assert exporter.durable


def test_running_tables_are_bounded() -> None:
    """Past its limit, a table forgets its oldest entries (failed publishes never come back)."""
    table = Running(limit=3)
    jobs = [seenn.Tracker().track("t") for _ in range(5)]
    for index, job in enumerate(jobs):
        table.add(f"task-{index}", job)
    assert table.get("task-0") is None and table.get("task-1") is None
    assert table.pop("task-4") is jobs[4] and table.get("task-2") is jobs[2]


def _prefixed(label: str) -> Callable[[Any], Any]:
    def make(original: Any) -> Any:
        def method(self: Any) -> str:
            return f"{label} {original(self)}"

        return method

    return make


def test_patches_put_back_only_what_is_still_on_top() -> None:
    """remove() restores an untouched method and leaves one wrapped since; nothing twice."""
    class Owner:
        def first(self) -> str:
            return "first"

        def second(self) -> str:
            return "second"

    original_first = Owner.__dict__["first"]
    patches = Patches()
    patches.install(Owner, "first", _prefixed("seenn"))
    patches.install(Owner, "second", _prefixed("seenn"))
    patches.install(Owner, "first", _prefixed("again"))  # in place already: not again
    assert Owner().first() == "seenn first"
    Owner.second = _prefixed("theirs")(Owner.__dict__["second"])  # type: ignore[method-assign]
    patches.remove()
    assert Owner.__dict__["first"] is original_first
    assert Owner().second() == "theirs seenn second"  # theirs keeps working
    patches.install(Owner, "second", _prefixed("again"))  # seenn's is still there: reused
    assert Owner().second() == "theirs seenn second"


def test_guarded_async_hooks_log_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    """An async hook's error is logged and None returned; in strict mode it raises."""
    @guarded_async("a test hook")
    async def hook() -> int:
        raise RuntimeError("broken hook")

    with caplog.at_level(logging.ERROR, logger="seenn"):
        assert asyncio.run(hook()) is None
    assert "a test hook" in caplog.text and "broken hook" in caplog.text
    with strict_mode(), pytest.raises(RuntimeError, match="broken hook"):
        asyncio.run(hook())


def test_run_ids_name_later_runs_of_a_queue_job_id() -> None:
    """The first run has the queue's id; later ones "<id>~<n>", recognised as runs of it."""
    assert run_job_id("nightly", 1) == "nightly"
    assert run_job_id("nightly", 3) == "nightly~3"
    assert is_run_of("nightly", "nightly") and is_run_of("nightly~3", "nightly")
    assert not is_run_of("nightly~", "nightly")
    assert not is_run_of("nightly~x", "nightly")
    assert not is_run_of("other~2", "nightly")
    assert not is_run_of("nightly~2~3", "nightly")
