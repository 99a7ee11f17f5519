"""The HTTP exporter fetches each job type's ETA history into the prior cache, off the hot path."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import seenn
from seenn._core import eta as core
from seenn._core.eta_live import prior, set_prior
from seenn.exporters import HTTPExporter, SimpleProcessor
from seenn.exporters._http.prior import history_of_answer
from tests.conftest import SECRET
from tests.server import RecordingServer
from tests.tracking_helpers import no_job_left_behind  # noqa: F401 (autouse fixture)


def steady_history(durations: list[float]) -> core.History:
    """The history of past jobs that moved at a steady pace, one per duration."""
    samples = [core.Sample(d, core.curve_of([i / 50 * d for i in range(core.CURVE_POINTS)], d))
               for d in durations]
    return core.history_of(samples, {"render": core.stats_of([40.0, 50.0, 60.0])})


HISTORY = steady_history([90.0, 95.0, 100.0, 100.0, 105.0, 110.0, 120.0])


def answer_of(key: str, history: core.History) -> dict[str, Any]:
    """What ``seenn serve`` answers to ``GET /v1/eta/{key}`` for ``history``."""
    wire = history.to_wire()
    return {"etaKey": key, "count": wire["count"], "avgDuration": 102_000,
            "p50Duration": wire["p50Duration"], "p95Duration": wire["p95Duration"],
            "minDuration": 90_000, "maxDuration": 120_000, "confidence": 0.5,
            "lastUpdated": "2026-01-01T00:00:00.000Z",
            "stages": {name: s.to_wire() for name, s in history.stages.items()},
            "history": wire}


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds (bounded); fail the test if it never does."""
    done = threading.Event()
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        done.wait(0.005)


class Setup:
    """An exporter against the recording server, its tracker, and a clock to move on."""

    def __init__(self, server: RecordingServer, *, simple: bool = False,
                 **options: Any) -> None:
        self.exporter = HTTPExporter(api_key=SECRET, base_url=server.url, **options)
        self.offset = 0.0
        self.exporter._clock = lambda: time.monotonic() + self.offset
        self.tracker = (seenn.Tracker(processors=[SimpleProcessor(self.exporter)]) if simple
                        else seenn.Tracker(exporters=[self.exporter]))

    def run(self, job_type: str, times: int = 1) -> None:
        for _ in range(times):
            with self.tracker.track(job_type, user_id="u"):
                pass
        assert self.tracker.force_flush(timeout=10)


@pytest.fixture
def setup(server: RecordingServer) -> Iterator[Setup]:
    """An exporter fetching ETA history every 300 s (the default)."""
    made = Setup(server)
    yield made
    made.tracker.shutdown(timeout=5)


def test_a_job_types_history_is_fetched_once_per_interval(server: RecordingServer,
                                                          setup: Setup) -> None:
    """Many starts of a type make one GET /v1/eta/{type}; another after the interval."""
    server.backend.eta["video generation"] = (200, answer_of("video generation", HISTORY))
    setup.run("video generation", times=5)
    wait_until(lambda: prior("video generation") is not None)
    assert [r.path for r in server.eta_requests] == ["/v1/eta/video%20generation"]
    assert server.eta_requests[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert setup.exporter.stats.eta_fetches == 1
    assert setup.exporter.stats.requests == 10  # the jobs' calls only
    setup.offset = 299.0
    setup.run("video generation", times=3)
    assert len(server.eta_requests) == 1
    setup.offset = 301.0
    setup.run("video generation")
    wait_until(lambda: len(server.eta_requests) == 2)


def test_the_history_is_rebuilt_as_the_backend_has_it(server: RecordingServer,
                                                      setup: Setup) -> None:
    """The prior is the backend's History: durations, spread, curve, errors, stages."""
    server.backend.eta["render"] = (200, answer_of("render", HISTORY))
    setup.run("render")
    wait_until(lambda: prior("render") is not None)
    found = prior("render")
    assert found is not None and found.usable
    assert found == core.History.from_wire(HISTORY.to_wire(), answer_of("render",
                                                                        HISTORY)["stages"])
    assert found.total == core.DurationStats(7, 100.0, 117.0)
    assert found.spread == pytest.approx(HISTORY.spread, abs=1e-6)
    assert found.curve == pytest.approx(HISTORY.curve, abs=1e-6)
    assert found.errors[0] == math.inf
    assert found.errors[1:] == pytest.approx(HISTORY.errors[1:], abs=1e-6)
    assert found.stages == {"render": core.DurationStats(3, 50.0, 59.0)}


def test_export_never_waits_for_the_history(server: RecordingServer) -> None:
    """With the GET held by the backend, jobs run, end and are delivered; it lands later."""
    made = Setup(server, simple=True)  # export() runs on the tracked thread itself
    server.backend.eta["render"] = (200, answer_of("render", HISTORY))
    held = server.hold_requests(lambda r: r.path.startswith("/v1/eta/"))
    with made.tracker.track("render", user_id="u") as job:
        job.set_progress(50)
    assert made.tracker.force_flush(timeout=10)
    assert server.backend.jobs[job.id]["status"] == "completed"
    wait_until(lambda: len(server.eta_requests) == 1)
    assert prior("render") is None  # still held
    fetcher = made.exporter._priors._thread if made.exporter._priors is not None else None
    assert fetcher is not None and fetcher.is_alive()  # the GET waits on the exporter's thread
    assert fetcher is not threading.current_thread() and fetcher.name == "seenn-eta-prior"
    held.set()
    wait_until(lambda: prior("render") is not None)
    made.tracker.shutdown(timeout=5)
    assert made.exporter._priors is not None and not made.exporter._priors.alive()


def test_a_404_forgets_the_prior_and_is_not_asked_again_within_the_interval(
        server: RecordingServer, setup: Setup) -> None:
    """No statistics for the type: its old prior goes, and no request storm follows."""
    set_prior("render", HISTORY)
    setup.run("render")
    wait_until(lambda: prior("render") is None)
    setup.run("render", times=5)
    assert len(server.eta_requests) == 1
    setup.offset = 301.0
    server.backend.eta["render"] = (200, answer_of("render", HISTORY))
    setup.run("render")
    wait_until(lambda: prior("render") is not None)
    assert len(server.eta_requests) == 2


@pytest.mark.parametrize("status", [401, 403, 429])
def test_a_refused_endpoint_pauses_every_fetch_for_the_interval(
        server: RecordingServer, setup: Setup, status: int) -> None:
    """A key or backend without the endpoint (or a limit) stops all fetches for a while."""
    server.backend.eta["a"] = (status, {"error": {"code": "FORBIDDEN", "message": "no"}})
    setup.run("a")
    priors = setup.exporter._priors
    assert priors is not None
    wait_until(lambda: priors._paused_until > 0)
    setup.run("b")
    setup.run("c")
    assert [r.path for r in server.eta_requests] == ["/v1/eta/a"]
    setup.offset = 301.0
    setup.run("b")
    wait_until(lambda: len(server.eta_requests) == 2)
    assert server.eta_requests[1].path == "/v1/eta/b"


def test_an_error_keeps_the_prior_and_waits_for_the_interval(server: RecordingServer,
                                                              setup: Setup) -> None:
    """A 500 leaves the cached prior as it was, and the type is not asked again soon."""
    server.backend.eta["render"] = (500, {"error": {"code": "INTERNAL", "message": "boom"}})
    set_prior("render", HISTORY)
    setup.run("render")
    wait_until(lambda: setup.exporter.stats.eta_fetches == 1)
    setup.run("render", times=5)
    setup.tracker.shutdown(timeout=5)  # waits for the fetch in flight
    assert len(server.eta_requests) == 1
    assert prior("render") is HISTORY


def test_fetching_history_never_logs_the_key(server: RecordingServer, setup: Setup,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """Whatever the answer, the log names the job type and the status, never the key."""
    server.backend.eta["b"] = (500, {"error": {"code": "INTERNAL", "message": SECRET}})
    server.backend.eta["c"] = (403, {"error": {"code": "FORBIDDEN", "message": SECRET}})
    setup.exporter._client._http.debug = True
    with caplog.at_level(logging.DEBUG, logger="seenn"):
        for job_type in ("a", "b", "c"):
            setup.run(job_type)
            wait_until(lambda job_type=job_type: any(  # type: ignore[misc]
                job_type in r.getMessage() or "not available" in r.getMessage()
                for r in caplog.records if "ETA history" in r.getMessage()))
    assert "ETA history" in caplog.text
    assert SECRET not in caplog.text


def test_statistics_alone_give_a_steady_prior(server: RecordingServer, setup: Setup) -> None:
    """A backend answering only count and percentiles (Seenn Cloud's EtaStats) still helps."""
    server.backend.eta["render"] = (200, {"etaKey": "render", "count": 20,
                                          "avgDuration": 61000, "p50Duration": 60000,
                                          "p95Duration": 90000, "confidence": 0.6})
    setup.run("render")
    wait_until(lambda: prior("render") is not None)
    found = prior("render")
    assert found is not None and found.usable
    assert found.total == core.DurationStats(20, 60.0, 90.0)
    assert found.curve[25] == pytest.approx(0.5)


@pytest.mark.parametrize("answer", [None, [], "x", {"count": "7"}, {"history": {"curve": [1]}},
                                    {"count": 7, "p50Duration": -1, "p95Duration": 2}])
def test_an_answer_of_another_shape_is_ignored(answer: object) -> None:
    """An answer that is not EtaStats gives no prior rather than a wrong one."""
    assert history_of_answer(answer) is None


def test_a_malformed_history_falls_back_to_the_statistics() -> None:
    """A history object that does not read is left out; the statistics beside it are used."""
    answer = answer_of("render", HISTORY)
    answer["history"]["curve"] = answer["history"]["curve"][:10]
    found = history_of_answer(answer)
    assert found is not None and found.total.count == 7
    assert found.curve[10] == pytest.approx(0.2)  # steady, not history's


def test_no_history_is_fetched_when_turned_off(server: RecordingServer) -> None:
    """eta_history_interval=None (or 0) sends no GET at all."""
    for interval in (None, 0):
        made = Setup(server, eta_history_interval=interval)
        made.run("render", times=2)
        made.tracker.shutdown(timeout=5)
        assert made.exporter._priors is None
    assert server.eta_requests == []


@pytest.mark.parametrize("value", [-1, math.inf, math.nan, "300", True])
def test_a_bad_interval_is_a_validation_error(value: Any) -> None:
    """eta_history_interval must be a finite number of seconds, or None."""
    with pytest.raises(seenn.ValidationError) as caught:
        HTTPExporter(api_key=SECRET, base_url="http://127.0.0.1:9", eta_history_interval=value)
    assert caught.value.details is not None
    assert caught.value.details["field"] == "eta_history_interval"


def test_a_forked_child_fetches_for_itself_and_keeps_the_cache(server: RecordingServer,
                                                               setup: Setup) -> None:
    """After os.fork() the child asks again with its own thread; the prior it inherited stays."""
    server.backend.eta["render"] = (200, answer_of("render", HISTORY))
    setup.run("render")
    wait_until(lambda: prior("render") is not None)
    parent_priors = setup.exporter._priors
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a threaded process; forking one is the point.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            priors = setup.exporter._priors
            fresh = (priors is not None and priors is not parent_priors and not priors._due
                     and priors._thread is None and prior("render") is not None)
            if fresh:
                assert priors is not None
                set_prior("render", None)  # to see the child's own answer arrive
                priors.want("render")
                wait_until(lambda: prior("render") is not None)
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [r.path for r in server.eta_requests] == ["/v1/eta/render"] * 2
