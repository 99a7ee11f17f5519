"""ETA on `seenn serve`: statistics per eta key, each running job's estimate, /v1/eta."""

from __future__ import annotations

import json
import math
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

import seenn.server
from seenn._core.eta import (
    MAX_RISE,
    MIN_RISE,
    MIN_SAMPLES,
    MIN_SPREAD,
    History,
    Sample,
    curve_point,
    estimate,
    history_of,
    percentile,
    smooth_completion,
)
from seenn._core.validation import format_datetime
from seenn.server import RunningServer
from seenn.server._eta import (
    MAX_STAGES,
    RECOMPUTE_AFTER,
    RECOMPUTE_EVERY,
    WINDOW,
    _iso,
    _Seconds,
)

T0 = 1_800_000_000.0


class Clock:
    """The server's time source: it moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A clock for the backend, at T0."""
    return Clock()


@pytest.fixture
def backend(db: str, clock: Clock) -> Iterator[RunningServer]:
    """A `seenn serve` on the test clock, without a server-wide stale limit."""
    with seenn.server.running(db, clock=clock, stale_after=0) as srv:
        yield srv


@pytest.fixture
def http(backend: RunningServer) -> Iterator[httpx.Client]:
    """Raw requests with the secret key."""
    with httpx.Client(base_url=backend.url + "/v1",
                      headers={"Authorization": f"Bearer {backend.api_key}"}) as c:
        yield c


def iso(timestamp: float) -> str:
    return format_datetime(datetime.fromtimestamp(timestamp, tz=timezone.utc))


def start(http: httpx.Client, key: str = "render", **body: Any) -> str:
    answer = http.post("/jobs", json={"jobType": "video", "workflowId": key, "userId": "u",
                                      "title": "t", **body})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def progress(http: httpx.Client, job_id: str, value: int, **body: Any) -> dict[str, Any]:
    answer = http.post(f"/jobs/{job_id}/progress", json={"progress": value, **body})
    assert answer.status_code == 200, answer.text
    job: dict[str, Any] = answer.json()
    return job


def complete(http: httpx.Client, job_id: str) -> dict[str, Any]:
    answer = http.post(f"/jobs/{job_id}/complete", json={})
    assert answer.status_code == 200, answer.text
    job: dict[str, Any] = answer.json()
    return job


def run(http: httpx.Client, clock: Clock, duration: float, key: str = "render") -> str:
    """A job that runs for `duration` seconds at a steady pace (a report at half way)."""
    job_id = start(http, key)
    progress(http, job_id, 0)
    clock.now += duration / 2
    progress(http, job_id, 50)
    clock.now += duration / 2
    complete(http, job_id)
    return job_id


def stats(http: httpx.Client, key: str = "render") -> dict[str, Any]:
    answer = http.get(f"/eta/{key}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


@dataclass
class Model:
    """What the server keeps of a running job, as docs/self-hosted.md states it."""

    started: float
    reached: list[float] = field(default_factory=list)
    value: tuple[int, float] = (-1, 0.0)
    shown: float | None = None

    def write(self, now: float, value: int, history: History | None) -> Any:
        # The server keeps times to the millisecond.
        started = round(self.started * 1000) / 1000
        elapsed = now - started
        while len(self.reached) <= curve_point(value / 100):
            self.reached.append(round(elapsed * 1000) / 1000)
        if self.value[0] != value:
            self.value = (value, round(elapsed * 1000) / 1000)
        found = estimate(elapsed, value / 100, reached_at=self.value[1], history=history,
                         reached_times=dict(enumerate(self.reached)))
        if found is not None:
            shown = smooth_completion(self.shown, now + found.remaining, now)
            self.shown = round(shown * 1000) / 1000
        return found


def history_of_key(http: httpx.Client, key: str = "render") -> History:
    body = stats(http, key)
    history = History.from_wire(body["history"], body["stages"])
    assert history is not None
    return history


# Statistics ---------------------------------------------------------------------------


def test_statistics_match_the_durations_of_completed_jobs(http: httpx.Client,
                                                          clock: Clock) -> None:
    """count, avg, min and max are exact; p50, p95 and confidence follow their rules."""
    durations = [12.0, 20.0, 16.5, 30.0, 14.0, 18.0, 25.5, 11.0, 40.0, 22.0]
    for duration in durations:
        clock.now += 7  # time between jobs is not running time
        run(http, clock, duration)
    body = stats(http)
    ordered = sorted(durations)
    assert body["etaKey"] == "render"
    assert body["count"] == len(durations)
    assert body["avgDuration"] == round(sum(durations) / len(durations) * 1000)
    assert (body["minDuration"], body["maxDuration"]) == (11000, 40000)
    assert body["p50Duration"] == round(percentile(ordered, 0.5) * 1000)
    assert body["p95Duration"] == round(percentile(ordered, 0.95) * 1000)
    assert body["lastUpdated"] == iso(clock.now)
    spread = body["history"]["spread"]
    expected = math.erf(math.log(1.2) / (max(spread, MIN_SPREAD) * math.sqrt(2))) * 10 / 15
    assert body["confidence"] == round(expected, 2)
    assert body["history"]["count"] == len(durations)
    listed = http.get("/eta").json()["stats"]
    assert listed == [{k: v for k, v in body.items() if k not in ("stages", "history")}]


def test_duration_is_running_time_not_the_wait_before(http: httpx.Client,
                                                      clock: Clock) -> None:
    """A job queued for 100 s, then running for 10 s, counts 10 s."""
    job_id = start(http, queue={"position": 3})
    clock.now += 100
    progress(http, job_id, 0, queue={"position": 0})
    clock.now += 100
    progress(http, job_id, 1)
    clock.now += 10
    complete(http, job_id)
    assert stats(http)["minDuration"] == 10_000


def test_only_jobs_completed_after_running_count(db: str, clock: Clock) -> None:
    """Failed, stale-ended (WORKER_LOST) and never-running jobs leave no statistics."""
    with seenn.server.running(db, clock=clock) as srv, \
            httpx.Client(base_url=srv.url + "/v1",
                         headers={"Authorization": f"Bearer {srv.api_key}"}) as http:
        failed = start(http)
        progress(http, failed, 40)
        clock.now += 5
        assert http.post(f"/jobs/{failed}/fail",
                         json={"error": {"code": "E", "message": "m"}}).status_code == 200
        lost = start(http)
        progress(http, lost, 40)
        clock.now += 301
        assert http.get(f"/jobs/{lost}").json()["error"]["code"] == "WORKER_LOST"
        never_ran = start(http)
        clock.now += 5
        assert complete(http, never_ran)["status"] == "completed"
        assert http.get("/eta/render").status_code == 404
        assert http.get("/eta").json() == {"stats": []}
        run(http, clock, 8.0)
        assert stats(http)["count"] == 1


def test_per_stage_statistics_follow_stage_transitions(http: httpx.Client,
                                                       clock: Clock) -> None:
    """A stage's duration runs from the write entering it to the next stage (or the end)."""
    for scale in (1.0, 2.0, 3.0):
        job_id = start(http, stage={"name": "queued"})
        clock.now += 1 * scale
        progress(http, job_id, 0, stage={"name": "render"})
        clock.now += 6 * scale
        progress(http, job_id, 30, stage={"name": "render", "current": 1, "total": 3})
        progress(http, job_id, 60, stage={"name": "encode"})
        clock.now += 3 * scale
        progress(http, job_id, 90, stage={"name": "render"})  # back again: adds up
        clock.now += 1 * scale
        complete(http, job_id)
    stages = stats(http)["stages"]
    assert stages == {
        "queued": {"count": 3, "p50Duration": 2000, "p95Duration": 2900},
        "encode": {"count": 3, "p50Duration": 6000, "p95Duration": 8700},
        "render": {"count": 3, "p50Duration": 14000, "p95Duration": 20300},
    }


def test_the_window_stays_bounded(http: httpx.Client, clock: Clock,
                                  backend: RunningServer) -> None:
    """Past WINDOW jobs the oldest leave the percentiles; all-time figures keep them."""
    for index in range(WINDOW + 5):
        job_id = start(http)
        progress(http, job_id, 0, stage={"name": f"s{index % (MAX_STAGES + 8)}"})
        clock.now += 1000.0 if index < 5 else 10.0
        complete(http, job_id)
    body = stats(http)
    assert body["count"] == WINDOW + 5
    assert body["history"]["count"] == WINDOW
    assert (body["maxDuration"], body["p95Duration"], body["p50Duration"]) == (
        1_000_000, 10_000, 10_000)
    assert len(body["stages"]) == MAX_STAGES
    with backend.app.store._connection() as conn:
        (window,) = conn.execute('SELECT "window" FROM eta_stats').fetchone()
    stored = json.loads(window)
    assert len(stored["s"]) == WINDOW
    assert len(stored["g"]) == MAX_STAGES
    assert all(len(durations) <= WINDOW for durations in stored["g"].values())


def test_a_full_windows_summary_is_recomputed_every_few_jobs(http: httpx.Client,
                                                              clock: Clock) -> None:
    """With the window full, percentiles move every RECOMPUTE_EVERY jobs (or after a minute)."""
    for _ in range(WINDOW):
        run(http, clock, 1.0)
    for _ in range(RECOMPUTE_EVERY - 1):  # 35 s in all: under RECOMPUTE_AFTER
        run(http, clock, 5.0)
    assert stats(http)["p95Duration"] == 1_000  # 7 long jobs in: not recomputed yet
    run(http, clock, 5.0)
    assert stats(http)["p95Duration"] == 5_000  # the 8th: 8 of 128 are long
    for _ in range(WINDOW // 2 - RECOMPUTE_EVERY):  # up to 64 long, 64 short: recomputed
        run(http, clock, 5.0)
    assert stats(http)["p50Duration"] == 3_000
    run(http, clock, 5.0)  # 65 long: the median would be 5 s, but not recomputed...
    assert stats(http)["p50Duration"] == 3_000
    clock.now += RECOMPUTE_AFTER
    run(http, clock, 5.0)  # ...until a minute has passed
    assert stats(http)["p50Duration"] == 5_000


def test_keys_are_per_app_and_per_workflow(db: str, clock: Clock) -> None:
    """Another app sees none of an app's statistics; workflowId, else jobType, is the key."""
    with seenn.server.running(db, api_key="sk_test_a", clock=clock):
        pass
    with seenn.server.running(db, api_key="sk_test_b", clock=clock) as srv:
        one = httpx.Client(base_url=srv.url + "/v1", headers={"Authorization": "Bearer sk_test_a"})
        two = httpx.Client(base_url=srv.url + "/v1", headers={"Authorization": "Bearer sk_test_b"})
        run(one, clock, 5.0, key="shared")
        job_id = str(one.post("/jobs", json={"jobType": "bare", "userId": "u",
                                             "title": "t"}).json()["id"])
        progress(one, job_id, 0)
        clock.now += 2
        complete(one, job_id)
        assert [s["etaKey"] for s in one.get("/eta").json()["stats"]] == ["bare", "shared"]
        assert two.get("/eta/shared").status_code == 404
        assert two.get("/eta").json() == {"stats": []}
        assert two.delete("/eta/shared").status_code == 404
        assert one.get("/eta/shared").status_code == 200
        one.close()
        two.close()


# Endpoints ----------------------------------------------------------------------------


def test_reset_removes_statistics_and_running_jobs_keep_their_eta(http: httpx.Client,
                                                                  clock: Clock) -> None:
    """DELETE answers 200 {etaKey, reset}; the key is 404 after; counting starts again."""
    for _ in range(MIN_SAMPLES):
        run(http, clock, 10.0)
    job_id = start(http)
    before = progress(http, job_id, 0)
    assert before["etaBasedOn"] == MIN_SAMPLES
    answer = http.delete("/eta/render")
    assert (answer.status_code, answer.json()) == (200, {"etaKey": "render", "reset": True})
    assert http.get("/eta/render").status_code == 404
    assert http.delete("/eta/render").json()["error"]["code"] == "NOT_FOUND"
    kept = http.get(f"/jobs/{job_id}").json()
    assert kept["estimatedCompletionAt"] == before["estimatedCompletionAt"]
    clock.now += 4
    assert progress(http, job_id, 50)["etaBasedOn"] == 0  # its own pace from now on
    clock.now += 4
    complete(http, job_id)
    assert stats(http)["count"] == 1


def test_eta_endpoints_need_a_secret_key(backend: RunningServer, http: httpx.Client,
                                         clock: Clock) -> None:
    """No key is 401; a public key and a user token are 403 on all three endpoints."""
    run(http, clock, 5.0)
    token = http.post("/tokens", json={"userId": "u"}).json()["token"]
    for credential, status in ((None, 401), ("sk_test_unknown", 401),
                               (backend.public_key, 403), (token, 403)):
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        with httpx.Client(base_url=backend.url + "/v1", headers=headers) as other:
            for method, path in (("GET", "/eta"), ("GET", "/eta/render"),
                                 ("DELETE", "/eta/render")):
                answer = other.request(method, path)
                assert answer.status_code == status, (credential, method, path)
    assert stats(http)["count"] == 1


def test_eta_routes_and_methods(http: httpx.Client) -> None:
    """Only GET /eta and GET, DELETE /eta/{key} exist; deeper paths are 404."""
    assert http.post("/eta").status_code == 405
    assert http.delete("/eta").headers["Allow"] == "GET, OPTIONS"
    assert http.post("/eta/render").headers["Allow"] == "GET, DELETE, OPTIONS"
    assert http.get("/eta/render/more").status_code == 404
    assert http.options("/eta/render").headers["Access-Control-Allow-Methods"] == "GET, DELETE"


@pytest.mark.parametrize("raw", ["x" * 101, "%C3%A9" * 101])
def test_keys_longer_than_100_characters_are_refused(http: httpx.Client, raw: str) -> None:
    """An eta key over 100 characters (once decoded) is 400 naming etaKey."""
    for method in ("GET", "DELETE"):
        answer = http.request(method, f"/eta/{raw}")
        assert answer.status_code == 400
        assert answer.json()["error"]["details"]["field"] == "etaKey"


@pytest.mark.parametrize("key", [
    "a/b", "..", ".", "?x=1#f", "%", "100%25", "'; DROP TABLE eta_stats; --", "\u00e9t\u00e9",
    "\U0001f600" * 100, "line\nbreak", "tab\there", "../jobs", "\\", " space ",
])
def test_hostile_keys_round_trip(http: httpx.Client, clock: Clock, key: str) -> None:
    """Any workflowId a job may have reads and resets its own statistics, path-escaped."""
    run(http, clock, 3.0, key=key)
    segment = "".join(f"%{b:02X}" for b in key.encode())  # every byte escaped
    answer = http.get(f"/eta/{segment}")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["etaKey"], answer.json()["count"]) == (key, 1)
    assert http.get("/eta").json()["stats"][0]["etaKey"] == key
    assert http.delete(f"/eta/{segment}").status_code == 200
    assert http.get("/eta").json() == {"stats": []}


@pytest.mark.parametrize("segment", ["%FF", "%ED%A0%80", "%00", "%2E%2E%2Fjobs"])
def test_undecodable_and_odd_segments_are_plain_unknown_keys(http: httpx.Client,
                                                             segment: str) -> None:
    """Bytes that are not UTF-8, NUL and escaped dots read as keys without statistics (404)."""
    answer = http.get(f"/eta/{segment}")
    assert (answer.status_code, answer.json()["error"]["code"]) == (404, "NOT_FOUND")


# ETA on jobs --------------------------------------------------------------------------


def test_pending_and_queued_jobs_get_no_automatic_eta(http: httpx.Client,
                                                      clock: Clock) -> None:
    """Only a running job gets an ETA; one sent back to a queue loses it."""
    for _ in range(MIN_SAMPLES):
        run(http, clock, 10.0)
    job_id = start(http)
    assert "estimatedCompletionAt" not in http.get(f"/jobs/{job_id}").json()
    waiting = progress(http, job_id, 0, queue={"position": 2})
    assert waiting["status"] == "queued"
    assert not {"estimatedCompletionAt", "etaConfidence", "etaBasedOn"} & set(waiting)
    running = progress(http, job_id, 10)
    assert running["etaBasedOn"] == MIN_SAMPLES
    requeued = progress(http, job_id, 10, queue={"position": 0})
    assert not {"estimatedCompletionAt", "etaConfidence", "etaBasedOn"} & set(requeued)


def test_history_gives_an_eta_from_min_samples_on(http: httpx.Client, clock: Clock) -> None:
    """Below MIN_SAMPLES a job at 0 % has no ETA; from MIN_SAMPLES on it has one, etaBasedOn set."""
    for _ in range(MIN_SAMPLES - 1):
        run(http, clock, 10.0)
    early = progress(http, start(http), 0)
    assert "estimatedCompletionAt" not in early
    run(http, clock, 10.0)
    job = progress(http, start(http), 0)
    assert job["etaBasedOn"] == MIN_SAMPLES
    assert job["estimatedCompletionAt"] == iso(clock.now + 10.0)


def test_without_history_a_job_gets_its_own_pace_eta(http: httpx.Client, clock: Clock) -> None:
    """With no completed job of its key, an ETA comes from the job's pace past MIN_PROGRESS."""
    job_id = start(http, "new-kind")
    progress(http, job_id, 0)
    clock.now += 2
    assert "estimatedCompletionAt" not in progress(http, job_id, 4)
    clock.now += 2
    job = progress(http, job_id, 10)
    found = estimate(4.0, 0.10, reached_at=4.0, history=None)
    assert found is not None
    assert (job["etaBasedOn"], job["etaConfidence"]) == (0, found.confidence)
    assert job["estimatedCompletionAt"] == iso(clock.now + found.remaining)


def test_progress_refines_the_eta_exactly_as_the_estimator(http: httpx.Client,
                                                           clock: Clock) -> None:
    """Each write's ETA is estimate() on the job's times and the key's history, smoothed."""
    for duration, slow in ((20.0, 0.7), (24.0, 0.6), (18.0, 0.8), (30.0, 0.5), (22.0, 0.7),
                           (26.0, 0.6), (21.0, 0.75)):
        job_id = start(http)
        progress(http, job_id, 0)
        clock.now += duration * slow  # the first half is slow, the second quick
        progress(http, job_id, 50)
        clock.now += duration * (1 - slow)
        complete(http, job_id)
    history = history_of_key(http)
    job_id = start(http)
    model = Model(clock.now)
    for step, value in ((0.0, 0), (4.0, 10), (3.0, 10), (5.0, 30), (2.5, 50), (1.5, 52),
                        (2.0, 80), (0.5, 90), (30.0, 90), (1.0, 95)):
        clock.now += step
        job = progress(http, job_id, value)
        found = model.write(clock.now, value, history)
        assert found is not None and model.shown is not None
        assert job["estimatedCompletionAt"] == iso(model.shown), (step, value)
        assert (job["etaConfidence"], job["etaBasedOn"]) == (found.confidence, found.based_on)
        assert job.get("etaOverdue", False) is found.overdue
    assert clock.now - model.started > history.total.p95
    assert job["etaOverdue"] is True  # 30 s without news near the end: past p95


def test_the_shown_eta_never_rises_by_more_than_the_bound(http: httpx.Client,
                                                          clock: Clock) -> None:
    """A job falling behind moves its ETA later by at most MAX_RISE of the time left per write."""
    for _ in range(6):
        run(http, clock, 20.0)
    history = history_of_key(http)
    job_id = start(http)
    model = Model(clock.now)
    previous: float | None = None
    clamped = 0
    for value in (0, 10, 20, 25, 28, 30, 32, 34, 35, 36):
        job = progress(http, job_id, value)
        found = model.write(clock.now, value, history)
        assert found is not None and model.shown is not None
        shown = datetime.fromisoformat(job["estimatedCompletionAt"].replace("Z", "+00:00"))
        assert job["estimatedCompletionAt"] == iso(model.shown)
        if previous is not None and previous > clock.now:
            bound = max((previous - clock.now) * MAX_RISE, MIN_RISE)
            assert shown.timestamp() <= previous + bound + 0.001
            clamped += clock.now + found.remaining > model.shown + 0.001
        previous = model.shown
        clock.now += 2.0 + value / 10  # ever slower
    assert clamped >= 3  # the raw estimate rose faster than what was shown


def test_eta_overdue_on_read_without_a_write(http: httpx.Client, clock: Clock,
                                             backend: RunningServer) -> None:
    """Once a running job's ETA passes, reads say etaOverdue; nothing is written for it."""
    for _ in range(MIN_SAMPLES):
        run(http, clock, 10.0)
    job_id = start(http)
    job = progress(http, job_id, 20)
    eta = job["estimatedCompletionAt"]
    assert "etaOverdue" not in job
    assert "etaOverdue" not in http.get(f"/jobs/{job_id}").json()
    clock.now += 10.0 + 0.001  # just past the ETA
    read = http.get(f"/jobs/{job_id}").json()
    assert (read["etaOverdue"], read["estimatedCompletionAt"]) == (True, eta)
    assert http.get("/jobs", params={"userId": "u"}).json()["jobs"][0]["etaOverdue"] is True
    assert http.get(f"/jobs/{job_id}/children").json()["parent"]["etaOverdue"] is True
    with backend.app.store._connection() as conn:
        (data,) = conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert "etaOverdue" not in json.loads(data)
    done = complete(http, job_id)
    assert "etaOverdue" not in done and done["estimatedCompletionAt"] == eta
    assert "etaOverdue" not in http.get(f"/jobs/{job_id}").json()


def test_explicit_etas_win(http: httpx.Client, clock: Clock) -> None:
    """estimatedDuration or estimatedCompletionAt from the client is never replaced."""
    for _ in range(MIN_SAMPLES):
        run(http, clock, 10.0)
    by_duration = start(http, estimatedDuration=90_000)
    expected = iso(clock.now + 90)
    by_time = start(http, estimatedCompletionAt="2030-01-01T00:00:00Z")
    for job_id, eta in ((by_duration, expected), (by_time, "2030-01-01T00:00:00.000Z")):
        for value in (0, 30, 60):
            clock.now += 3
            job = progress(http, job_id, value)
            assert job["estimatedCompletionAt"] == eta
            assert not {"etaConfidence", "etaBasedOn", "etaOverdue"} & set(job)
    automatic = start(http)
    assert "etaBasedOn" in progress(http, automatic, 10)
    given = progress(http, automatic, 20, estimatedCompletionAt="2031-01-01T00:00:00Z")
    assert not {"etaConfidence", "etaBasedOn", "etaOverdue"} & set(given)
    clock.now += 5
    later = progress(http, automatic, 40)
    assert later["estimatedCompletionAt"] == "2031-01-01T00:00:00.000Z"
    assert "etaBasedOn" not in later


def test_explicit_eta_passed_reads_overdue(http: httpx.Client, clock: Clock) -> None:
    """A running job past the ETA its client gave reads etaOverdue too."""
    job_id = start(http, estimatedDuration=5_000)
    progress(http, job_id, 10)
    clock.now += 6
    assert http.get(f"/jobs/{job_id}").json()["etaOverdue"] is True


def test_eta_state_stays_out_of_the_job(http: httpx.Client, clock: Clock,
                                        backend: RunningServer) -> None:
    """What the estimator keeps per job lives in its own column, not in the job JSON."""
    for _ in range(MIN_SAMPLES):
        run(http, clock, 10.0)
    job_id = start(http, stage={"name": "a"})
    clock.now += 1
    job = progress(http, job_id, 30, stage={"name": "b"})
    assert set(job) <= {"id", "appId", "userId", "jobType", "title", "workflowId", "status",
                        "progress", "stage", "createdAt", "updatedAt", "startedAt",
                        "estimatedCompletionAt", "etaConfidence", "etaBasedOn", "etaOverdue"}
    with backend.app.store._connection() as conn:
        (state,) = conn.execute("SELECT eta FROM jobs WHERE id = ?", (job_id,)).fetchone()
    kept = json.loads(state)
    # Times since the start in milliseconds: the curve points reached, and the last change.
    assert kept["b"] == round(clock.now * 1000) and kept["m"] == [0] * 16
    assert kept["w"] == [30, 0]
    assert kept["c"] == ["b", clock.now] and kept["t"] == {"a": 1.0}


def test_eta_state_of_0_1_0_in_seconds_reads_as_milliseconds(
        http: httpx.Client, clock: Clock, backend: RunningServer) -> None:
    """A running job whose ETA state 0.1.0 wrote (times in seconds: "s", "r", "v", "e")
    goes on exactly as a job with today's state (milliseconds: "b", "m", "w", "f")."""
    for _ in range(MIN_SAMPLES):
        run(http, clock, 10.0)
    new, old = start(http), start(http)
    for job_id in (new, old):
        progress(http, job_id, 0)
    clock.now += 1.25
    for job_id in (new, old):
        progress(http, job_id, 30)

    def state_of(job_id: str) -> dict[str, Any]:
        with backend.app.store._connection() as conn:
            (text,) = conn.execute("SELECT eta FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(json.loads(text))

    kept = state_of(old)
    assert kept["m"][-1] == 1250 and kept["w"] == [30, 1250] and "f" in kept
    kept["s"] = kept.pop("b") / 1000
    kept["r"] = [ms / 1000 for ms in kept.pop("m")]
    kept["v"] = [30, 1.25]
    kept["e"] = kept.pop("f") / 1000
    with backend.app.store._connection() as conn:
        # Both engines' connections commit each statement (autocommit).
        conn.execute("UPDATE jobs SET eta = ? WHERE id = ?", (json.dumps(kept), old))
    clock.now += 0.5
    answers = [progress(http, job_id, 45) for job_id in (new, old)]
    assert answers[0]["estimatedCompletionAt"] == answers[1]["estimatedCompletionAt"]
    assert answers[0]["etaConfidence"] == answers[1]["etaConfidence"]
    assert state_of(old) == state_of(new)
    clock.now += 0.5
    for job_id in (new, old):
        complete(http, job_id)
    window = http.get("/eta/render").json()
    assert window["count"] == MIN_SAMPLES + 2


def test_a_database_of_an_older_version_gains_the_eta_column(tmp_path: Path,
                                                             clock: Clock) -> None:
    """Jobs written before ETA existed keep working: a given ETA stays the client's."""
    path = tmp_path / "db"
    with seenn.server.running(path, clock=clock, stale_after=0) as srv, \
            httpx.Client(base_url=srv.url + "/v1",
                         headers={"Authorization": f"Bearer {srv.api_key}"}) as http:
        explicit = start(http, estimatedCompletionAt="2030-01-01T00:00:00Z")
        plain = start(http)
        progress(http, plain, 10)
        key = srv.api_key
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE jobs DROP COLUMN eta")
        db.execute("DROP TABLE eta_stats")
    with seenn.server.running(path, api_key=key, clock=clock, stale_after=0) as srv, \
            httpx.Client(base_url=srv.url + "/v1",
                         headers={"Authorization": f"Bearer {key}"}) as http:
        clock.now += 3
        assert progress(http, explicit, 50)["estimatedCompletionAt"] == \
            "2030-01-01T00:00:00.000Z"
        clock.now += 3
        assert progress(http, plain, 50)["etaBasedOn"] == 0
        clock.now += 3
        complete(http, plain)
        assert stats(http)["count"] == 1


def test_eta_times_format_as_datetime_formats_them() -> None:
    """The fast formatting of a shown ETA gives datetime's text to the millisecond."""
    rng = random.Random(7)
    values = [0.0, 0.0005, 0.9999995, 0.9999996, 1796212778.043, 1796212778.9995,
              1796212778.9999995, 253402300799.999, 253402300800.0, -1.5, 1e20]
    values += [rng.uniform(0, 253402300799) for _ in range(20_000)]
    values += [rng.randrange(0, 253402300799000) / 1000 for _ in range(20_000)]
    for value in values:
        try:
            expected: str | None = format_datetime(
                datetime.fromtimestamp(value, tz=timezone.utc))
        except (OverflowError, OSError, ValueError):
            expected = None
        assert _iso(value) == expected, value


def test_curve_point_times_read_from_milliseconds_estimate_as_a_dict_of_seconds() -> None:
    """The view of a job's kept milliseconds that a progress write hands to ``estimate``
    answers exactly as the dict of seconds it replaces, over jobs with history."""
    rng = random.Random(11)
    history = history_of([Sample(rng.uniform(50, 150),
                                 (0.0, *sorted(rng.random() for _ in range(49)), 1.0))
                          for _ in range(40)])
    assert history.usable
    looked_up = 0
    for _ in range(2_000):
        progress = rng.randrange(1, 100)
        reached = sorted(rng.randrange(0, 120_000) for _ in range(curve_point(progress / 100) + 1))
        elapsed = reached[-1] / 1000 + rng.uniform(0, 30)
        view = _Seconds(reached)
        as_dict = {index: ms / 1000 for index, ms in enumerate(reached)}
        assert dict(view) == as_dict and len(view) == len(as_dict)
        assert view.get(len(reached)) is None and view.get(-1) is None
        found = estimate(elapsed, progress / 100, reached_at=reached[-1] / 1000,
                         history=history, reached_times=view)
        assert found == estimate(elapsed, progress / 100, reached_at=reached[-1] / 1000,
                                 history=history, reached_times=as_dict)
        looked_up += found != estimate(elapsed, progress / 100, reached_at=reached[-1] / 1000,
                                       history=history)
    assert looked_up > 1_000  # the times were used, not only passed
