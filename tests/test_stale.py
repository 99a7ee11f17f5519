"""`seenn serve` ends running jobs whose worker went silent: failed with WORKER_LOST."""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import seenn
import seenn.server
from seenn.server import SeennServerApp, WSGIServer
from seenn.server._sqlite import SQLiteStore
from seenn.server._store import STALE_BY_DEFAULT, STALE_BY_OWN_LIMIT
from seenn.server._transaction import Transaction

BASE = {"jobType": "render", "userId": "u", "title": "Render"}
START = 1_800_000_000.0


@dataclass
class Stale:
    """A backend on a clock the test moves, and raw HTTP to it with the secret key."""

    api: httpx.Client
    backend: seenn.server.RunningServer
    now: list[float]

    @property
    def app(self) -> SeennServerApp:
        return self.backend.app

    def advance(self, seconds: float) -> None:
        """Move the server's clock forward."""
        self.now[0] += seconds

    def start(self, **fields: Any) -> dict[str, Any]:
        """Start a job; the answer must be 201."""
        answer = self.api.post("/jobs", json={**BASE, **fields})
        assert answer.status_code == 201, answer.text
        job: dict[str, Any] = answer.json()
        return job

    def progress(self, job_id: str, value: int = 32, **fields: Any) -> httpx.Response:
        """Report progress on a job."""
        return self.api.post(f"/jobs/{job_id}/progress", json={"progress": value, **fields})

    def running(self, **fields: Any) -> dict[str, Any]:
        """Start a job and make it running at 32 %."""
        job = self.start(**fields)
        answer = self.progress(job["id"])
        assert answer.json()["status"] == "running", answer.text
        return dict(answer.json())

    def get(self, job_id: str) -> dict[str, Any]:
        """Read a job; the answer must be 200."""
        answer = self.api.get(f"/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        return job

    def stored(self, job_id: str) -> dict[str, Any]:
        """The job as the database holds it, read without going through the app."""
        with self.app.store._connection() as conn:
            row = conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        job: dict[str, Any] = json.loads(row[0])
        return job


def _serve(db: str, **options: Any) -> AbstractContextManager[seenn.server.RunningServer]:
    return seenn.server.running(db, **options)


@pytest.fixture
def stale(db: str) -> Iterator[Stale]:
    """`seenn serve` with the default limit (300 s) on a clock that only the test moves."""
    now = [START]
    with _serve(db, clock=lambda: now[0]) as backend, \
            httpx.Client(base_url=backend.url + "/v1", timeout=30,
                         headers={"Authorization": f"Bearer {backend.api_key}"}) as api:
        yield Stale(api, backend, now)


def _count_writes(app: SeennServerApp) -> list[str]:
    """Record the app id of every write transaction on jobs the app opens from now on."""
    calls: list[str] = []
    write = app.store.write

    def counting(app_id: str) -> AbstractContextManager[Transaction]:
        if app_id:  # "" is the purge of expired rows, at most once a minute
            calls.append(app_id)
        return write(app_id)

    app.store.write = counting  # type: ignore[method-assign]
    return calls


@contextmanager
def _served(app: SeennServerApp) -> Iterator[httpx.Client]:
    """Serve ``app`` on a thread until the block ends (then server_close()), with a client."""
    assert app.created_keys is not None
    with WSGIServer(("127.0.0.1", 0), app) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            with httpx.Client(base_url=server.url + "/v1", timeout=30, headers={
                    "Authorization": f"Bearer {app.created_keys[0]}"}) as api:
                yield api
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


def _status(app: SeennServerApp, job_id: str) -> str:
    """A job's status as the database holds it, read without going through the app."""
    with sqlite3.connect(app.store.path) as db:
        row = db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return str(json.loads(row[0])["status"])


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        threading.Event().wait(0.01)


# Reads see it as soon as the limit has passed ---------------------------------------------


def test_a_running_job_past_the_limit_reads_failed_with_worker_lost(stale: Stale) -> None:
    """A job running at 32 % with no write for over 300 s reads failed, WORKER_LOST, 32 %."""
    job = stale.running()
    stale.advance(300.5)
    seen = stale.get(job["id"])
    assert (seen["status"], seen["progress"]) == ("failed", 32)
    assert seen["error"]["code"] == "WORKER_LOST"
    assert "300 s" in seen["error"]["message"]
    assert seen["error"]["details"] == {"staleAfterSeconds": 300,
                                        "lastUpdateAt": job["updatedAt"]}
    assert seen["completedAt"] == seen["updatedAt"] != job["updatedAt"]
    assert seen["startedAt"] == job["startedAt"]
    assert "staleAfterSeconds" not in seen
    assert stale.stored(job["id"]) == seen


def test_a_job_at_its_limit_is_still_running_and_reading_it_writes_nothing(
        stale: Stale) -> None:
    """Exactly 300 s of silence is not over the limit, and a fresh job's read is a pure read."""
    job = stale.running()
    stale.advance(300)
    writes = _count_writes(stale.app)
    assert stale.get(job["id"])["status"] == "running"
    assert stale.api.get("/jobs", params={"userId": "u"}).json()["jobs"][0]["status"] == "running"
    assert writes == []
    stale.advance(0.001)
    assert stale.get(job["id"])["status"] == "failed"
    assert len(writes) == 1


def test_a_list_shows_the_stale_job_failed_and_the_fresh_one_running(stale: Stale) -> None:
    """GET /jobs?userId= ends a stale job it lists before answering, and leaves fresh ones."""
    old = stale.running()
    stale.advance(200)
    fresh = stale.running()
    stale.advance(101)
    jobs = {j["id"]: j for j in stale.api.get("/jobs", params={"userId": "u"}).json()["jobs"]}
    assert jobs[old["id"]]["status"] == "failed"
    assert jobs[old["id"]]["error"]["code"] == "WORKER_LOST"
    assert jobs[fresh["id"]]["status"] == "running"


def test_children_and_their_declared_parent_follow_a_lost_child(stale: Stale) -> None:
    """/children ends a stale child, and its parent's counts and progress move with it."""
    parent = stale.start(totalChildren=2)
    child = stale.running(parentJobId=parent["id"])
    stale.advance(301)
    family = stale.api.get(f"/jobs/{parent['id']}/children").json()
    assert [c["status"] for c in family["children"]] == ["failed"]
    assert family["children"][0]["error"]["code"] == "WORKER_LOST"
    assert family["parent"]["children"] == {"total": 2, "completed": 0, "failed": 1,
                                            "running": 0, "pending": 0}
    assert (family["parent"]["status"], family["parent"]["progress"]) == ("running", 50)
    assert stale.get(child["id"])["status"] == "failed"


def test_a_declared_parent_waiting_for_its_children_never_goes_stale(stale: Stale) -> None:
    """A declared parent follows its children: hours without a write do not end it."""
    parent = stale.start(totalChildren=2)
    done = stale.start(parentJobId=parent["id"])
    stale.api.post(f"/jobs/{done['id']}/complete", json={})
    waiting = stale.start(parentJobId=parent["id"], queue={"position": 1})
    stale.advance(86_400)
    assert stale.app.sweep() == 0
    assert stale.get(parent["id"])["status"] == "running"
    assert stale.get(waiting["id"])["status"] == "queued"


def test_an_undeclared_parent_and_its_child_both_end_and_count_once(stale: Stale) -> None:
    """Nested running jobs (track() in track()) both end; the parent counts its child failed."""
    outer = stale.running()
    inner = stale.running(parentJobId=outer["id"])
    stale.advance(301)
    assert stale.get(inner["id"])["status"] == "failed"
    seen = stale.get(outer["id"])
    assert seen["status"] == "failed" and seen["error"]["code"] == "WORKER_LOST"
    assert seen["children"] == {"total": 1, "completed": 0, "failed": 1, "running": 0,
                                "pending": 0}


def test_queued_and_pending_jobs_never_go_stale(stale: Stale) -> None:
    """Jobs waiting for a worker (pending, queued, queue updates) are never ended this way."""
    pending = stale.start()
    queued = stale.start(queue={"position": 3})
    moved = stale.start(queue={"position": 5})
    assert stale.progress(moved["id"], 0, queue={"position": 1}).json()["status"] == "queued"
    stale.advance(2_000_000)
    assert stale.app.sweep() == 0
    assert [stale.get(j["id"])["status"] for j in (pending, queued, moved)] == [
        "pending", "queued", "queued"]


def test_finished_jobs_are_left_as_they_are(stale: Stale) -> None:
    """A completed or failed job is never rewritten by the limit."""
    done = stale.running()
    done = stale.api.post(f"/jobs/{done['id']}/complete", json={}).json()
    failed = stale.running()
    failed = stale.api.post(f"/jobs/{failed['id']}/fail",
                            json={"error": {"code": "E", "message": "m"}}).json()
    stale.advance(10_000)
    assert stale.app.sweep() == 0
    assert stale.get(done["id"]) == done
    assert stale.get(failed["id"]) == failed


# Per-job limits ---------------------------------------------------------------------------


def test_a_job_with_a_longer_limit_outlives_the_server_default(stale: Stale) -> None:
    """staleAfterSeconds 600 at start: running after 301 s, failed after 601 s."""
    job = stale.running(staleAfterSeconds=600)
    assert job["staleAfterSeconds"] == 600
    stale.advance(301)
    assert stale.get(job["id"])["status"] == "running"
    stale.advance(300)
    seen = stale.get(job["id"])
    assert seen["status"] == "failed"
    assert seen["error"]["details"]["staleAfterSeconds"] == 600
    assert "600 s" in seen["error"]["message"]


def test_a_job_with_a_shorter_limit_ends_before_the_default(stale: Stale) -> None:
    """staleAfterSeconds 30 at start: failed after 31 s of silence."""
    job = stale.running(staleAfterSeconds=30)
    stale.advance(30)
    assert stale.get(job["id"])["status"] == "running"
    stale.advance(1)
    assert stale.get(job["id"])["status"] == "failed"


def test_a_progress_body_sets_a_new_limit(stale: Stale) -> None:
    """A later worker's staleAfterSeconds on progress replaces the job's limit."""
    job = stale.running()
    longer = stale.progress(job["id"], 40, staleAfterSeconds=900).json()
    assert longer["staleAfterSeconds"] == 900
    stale.advance(800)
    assert stale.get(job["id"])["status"] == "running"
    assert stale.progress(job["id"], 41, staleAfterSeconds=20).json()["staleAfterSeconds"] == 20
    stale.advance(21)
    assert stale.get(job["id"])["status"] == "failed"


def test_heartbeats_keep_a_silent_job_alive(stale: Stale) -> None:
    """Progress repeated at the last value every 250 s keeps a job running for 25 minutes."""
    job = stale.running()
    for _ in range(6):
        stale.advance(250)
        beat = stale.progress(job["id"], 32)
        assert (beat.status_code, beat.json()["status"]) == (200, "running")
    assert stale.get(job["id"])["progress"] == 32
    stale.advance(301)
    assert stale.get(job["id"])["status"] == "failed"


def test_with_the_server_limit_off_only_jobs_with_their_own_limit_end(db: str) -> None:
    """stale_after=0: a job with no limit runs on for ever; one with staleAfterSeconds ends."""
    now = [START]
    with _serve(db, stale_after=0, clock=lambda: now[0]) as backend, \
            httpx.Client(base_url=backend.url + "/v1",
                         headers={"Authorization": f"Bearer {backend.api_key}"}) as api:
        stale = Stale(api, backend, now)
        plain = stale.running()
        own = stale.running(staleAfterSeconds=60)
        stale.advance(2_000_000)
        assert stale.get(plain["id"])["status"] == "running"
        assert stale.get(own["id"])["status"] == "failed"
        assert backend.app.sweep_interval == 30


def test_a_restarted_server_gives_workers_one_whole_limit(db: str) -> None:
    """After downtime longer than the limit, a running job ends only a limit after the start."""
    now = [START]
    with _serve(db, clock=lambda: now[0]) as backend:
        with httpx.Client(base_url=backend.url + "/v1",
                          headers={"Authorization": f"Bearer {backend.api_key}"}) as api:
            job = api.post("/jobs", json=BASE).json()
            job = api.post(f"/jobs/{job['id']}/progress", json={"progress": 10}).json()
        key = backend.api_key
    now[0] += 3600
    with _serve(db, api_key=key, clock=lambda: now[0]) as backend, \
            seenn.SeennClient(key, base_url=backend.url) as client:
        now[0] += 300
        assert client.jobs.get(job["id"]).status == "running"
        now[0] += 1
        lost = client.jobs.get(job["id"]).to_dict()
    assert lost["error"]["code"] == "WORKER_LOST"
    assert lost["error"]["details"]["lastUpdateAt"] == job["updatedAt"]


# Late workers and races -------------------------------------------------------------------


@pytest.mark.parametrize(("action", "body"), [
    ("progress", {"progress": 33}), ("complete", {}),
    ("fail", {"error": {"code": "E", "message": "m"}}),
])
def test_a_late_worker_gets_409_after_the_job_was_ended(stale: Stale, action: str,
                                                         body: dict[str, Any]) -> None:
    """A worker heard from after WORKER_LOST is refused with 409 and changes nothing."""
    job = stale.running()
    stale.advance(301)
    ended = stale.get(job["id"])
    late = stale.api.post(f"/jobs/{job['id']}/{action}", json=body)
    assert (late.status_code, late.json()["error"]["code"]) == (409, "CONFLICT")
    assert stale.get(job["id"]) == ended


def test_a_late_write_that_nobody_preceded_ends_the_job_then_refuses(stale: Stale) -> None:
    """A write past the limit, with no read or sweep before it, still meets a failed job."""
    parent = stale.start(totalChildren=1)
    job = stale.running(parentJobId=parent["id"])
    stale.advance(301)
    late = stale.api.post(f"/jobs/{job['id']}/complete", json={},
                          headers={"Idempotency-Key": "late-1"})
    assert late.status_code == 409
    assert "already failed" in late.json()["error"]["message"]
    assert stale.stored(job["id"])["error"]["code"] == "WORKER_LOST"
    family = stale.get(parent["id"])
    assert (family["status"], family["error"]["code"]) == ("failed", "CHILDREN_FAILED")
    again = stale.api.post(f"/jobs/{job['id']}/complete", json={},
                           headers={"Idempotency-Key": "late-1"})
    assert (again.status_code, again.headers["Idempotent-Replayed"]) == (409, "true")


def test_a_restart_of_the_same_job_id_shows_it_ended(stale: Stale) -> None:
    """Starting a client-chosen id again (200) answers the job ended, not running."""
    job = stale.running(id="job-fixed")
    stale.advance(301)
    again = stale.api.post("/jobs", json={**BASE, "id": job["id"]})
    assert (again.status_code, again.json()["status"]) == (200, "failed")


def test_racing_sweeps_and_reads_end_a_job_once(stale: Stale) -> None:
    """Four sweeps and four reads at once: one job ended once, its parent counts one failure."""
    parent = stale.start(totalChildren=3)
    child = stale.running(parentJobId=parent["id"])
    stale.advance(301)
    barrier = threading.Barrier(8)
    ended: list[int] = []
    seen: list[str] = []

    def sweeper() -> None:
        barrier.wait()
        ended.append(stale.app.sweep())

    def reader() -> None:
        with httpx.Client(base_url=stale.api.base_url, headers=stale.api.headers) as api:
            barrier.wait()
            seen.append(api.get(f"/jobs/{child['id']}").json()["status"])

    threads = [threading.Thread(target=f) for f in (sweeper, reader) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert seen == ["failed"] * 4
    assert sum(ended) <= 1
    final = stale.get(parent["id"])
    assert final["children"] == {"total": 3, "completed": 0, "failed": 1, "running": 0,
                                 "pending": 0}
    assert final["progress"] == 33


# The sweep --------------------------------------------------------------------------------


def test_the_sweep_ends_a_job_nobody_reads_and_moves_its_parent(stale: Stale) -> None:
    """sweep() ends a silent child; reading only the parent shows the failure counted."""
    parent = stale.start(totalChildren=2)
    child = stale.running(parentJobId=parent["id"])
    other = stale.running()
    stale.advance(301)
    assert stale.stored(child["id"])["status"] == "running"
    assert stale.app.sweep() == 2
    assert stale.stored(child["id"])["error"]["code"] == "WORKER_LOST"
    assert stale.stored(other["id"])["status"] == "failed"
    assert stale.get(parent["id"])["children"]["failed"] == 1
    assert stale.app.sweep() == 0


def test_the_sweep_ends_many_jobs_in_batches(stale: Stale) -> None:
    """More stale jobs than one batch holds are all ended by one sweep."""
    jobs = [stale.running(userId=f"u{i}", staleAfterSeconds=10 + i % 2) for i in range(250)]
    stale.advance(12)
    assert stale.app.sweep() == 250
    assert {stale.stored(j["id"])["status"] for j in jobs} == {"failed"}


@pytest.mark.parametrize(("sql", "index"), [(STALE_BY_DEFAULT, "jobs_idle"),
                                            (STALE_BY_OWN_LIMIT, "jobs_idle_own_limit")])
def test_the_sweep_reads_only_its_partial_index(tmp_path: Path, sql: str, index: str) -> None:
    """Each query of the sweep is answered from its partial index, not a scan of all jobs."""
    store = SQLiteStore(str(tmp_path / "plan.db"))
    try:
        with store.write("app") as tx:
            plan = tx._conn.execute("EXPLAIN QUERY PLAN " + sql,
                                    (1.0,) * sql.count("?")).fetchall()
    finally:
        store.close()
    assert [row[3] for row in plan] == [f"SEARCH jobs USING INDEX {index} " + (
        "(idle_since>? AND idle_since<?)" if index == "jobs_idle" else "(<expr><?)")]


def test_the_background_sweep_ends_a_silent_job_and_stops_with_the_server(
        tmp_path: Path) -> None:
    """The sweep thread of a served app ends a job nobody reads; server_close() stops it."""
    now = [START]
    app = seenn.server.create_app(tmp_path / "bg.db", stale_after=10, clock=lambda: now[0])
    assert app.sweep_interval == 1
    app.sweep_interval = 0.02
    with _served(app) as api:
        job = api.post("/jobs", json=BASE).json()
        api.post(f"/jobs/{job['id']}/progress", json={"progress": 7})
        assert app._sweeper.running
        now[0] += 11
        _wait_for(lambda: _status(app, job["id"]) == "failed")
    assert not app._sweeper.running
    app.start_sweeper()  # stopped for good: a late request does not bring it back
    assert not app._sweeper.running
    app.close()


def test_under_another_wsgi_server_the_first_request_starts_the_sweep(tmp_path: Path) -> None:
    """Called as a plain WSGI app (gunicorn and co.), the app starts its sweep itself."""
    app = seenn.server.create_app(tmp_path / "wsgi.db")
    assert not app._sweeper.running
    answers: list[str] = []
    body = app({"REQUEST_METHOD": "GET", "PATH_INFO": "/healthz"},
               lambda status, headers: answers.append(status))
    assert answers == ["200 OK"]
    assert json.loads(b"".join(body))["status"] == "ok"
    assert app._sweeper.running
    app.close()
    assert not app._sweeper.running


def test_a_failing_sweep_is_logged_and_the_next_one_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Database errors in the sweep thread are logged once; the thread sweeps on and ends a job."""
    now = [START]
    app = seenn.server.create_app(tmp_path / "flaky.db", clock=lambda: now[0])
    app.sweep_interval = 0.01
    real = app.store.stale_jobs
    failures = [sqlite3.OperationalError("database is locked") for _ in range(3)]

    def flaky(**kwargs: Any) -> list[tuple[str, str]]:
        if failures:
            raise failures.pop()
        return real(**kwargs)

    app.store.stale_jobs = flaky  # type: ignore[method-assign]
    caplog.set_level(logging.ERROR, logger="seenn.server")
    with _served(app) as api:
        _wait_for(lambda: not failures)
        job = api.post("/jobs", json=BASE).json()
        api.post(f"/jobs/{job['id']}/progress", json={"progress": 5})
        now[0] += 301
        _wait_for(lambda: _status(app, job["id"]) == "failed")
        assert app._sweeper.running
    lines = [r for r in caplog.records if "sweep for silent jobs failed" in r.getMessage()]
    assert len(lines) == 1
    assert "database is locked" in caplog.text
    app.close()


# Validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "300", 300.5, 300.0, -1, 0, 9, 2_592_001, 10**30, True, False, [300], {"s": 300},
    "Infinity",
])
@pytest.mark.parametrize("where", ["start", "progress"])
def test_hostile_stale_after_seconds_are_400_naming_the_field(stale: Stale, value: Any,
                                                              where: str) -> None:
    """staleAfterSeconds must be an integer from 10 to 2,592,000; anything else is a 400."""
    if where == "start":
        answer = stale.api.post("/jobs", json={**BASE, "staleAfterSeconds": value})
    else:
        answer = stale.progress(stale.start()["id"], 5, staleAfterSeconds=value)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"]["field"] == "staleAfterSeconds"


def test_non_finite_numbers_in_raw_json_are_refused(stale: Stale) -> None:
    """NaN and Infinity written as bare JSON tokens are not a limit either."""
    for token in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        answer = stale.api.post("/jobs", content=b'{"jobType": "t", "userId": "u", '
                                b'"title": "t", "staleAfterSeconds": ' + token + b"}")
        assert answer.status_code == 400, token
        assert answer.json()["error"]["details"]["field"] == "staleAfterSeconds"


def test_a_null_stale_after_seconds_counts_as_absent(stale: Stale) -> None:
    """As for every optional field, null is absent: the server default applies."""
    job = stale.start(staleAfterSeconds=None)
    assert "staleAfterSeconds" not in job
    assert "staleAfterSeconds" not in stale.progress(job["id"], staleAfterSeconds=None).json()


@pytest.mark.parametrize("value", [10, 2_592_000])
def test_the_bounds_of_stale_after_seconds_are_accepted(stale: Stale, value: int) -> None:
    """10 and 2,592,000 are both valid limits, stored and shown with the job."""
    assert stale.start(staleAfterSeconds=value)["staleAfterSeconds"] == value


@pytest.mark.parametrize("value", [5, -1, 9.99, 2_592_001, math.nan, math.inf, True, "300"])
def test_create_app_refuses_a_bad_stale_after_before_creating_anything(
        tmp_path: Path, value: Any) -> None:
    """stale_after must be 0 or 10 to 2,592,000 seconds; the error names it; no file is made."""
    with pytest.raises(seenn.ValidationError) as caught:
        seenn.server.create_app(tmp_path / "never.db", stale_after=value)
    assert caught.value.details["field"] == "stale_after"
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize(("value", "interval"), [(0, 30), (10, 1), (100, 10), (120, 12),
                                                 (300, 30), (86_400, 30)])
def test_the_sweep_interval_is_a_tenth_of_the_limit_within_1_to_30_s(
        tmp_path: Path, value: float, interval: float) -> None:
    """The background sweep runs every stale_after / 10 seconds, at least 1 s and at most 30 s."""
    app = seenn.server.create_app(tmp_path / "i.db", stale_after=value)
    try:
        assert app.sweep_interval == interval
        assert app.stale_after == value
    finally:
        app.close()


# Older databases --------------------------------------------------------------------------


def test_a_database_from_before_stale_limits_gains_them_on_start(tmp_path: Path) -> None:
    """An older database gets the columns; its running jobs count from their last update."""
    db = tmp_path / "old.db"
    now = [START]
    with seenn.server.running(db, clock=lambda: now[0]) as backend:
        key = backend.api_key
        with seenn.SeennClient(key, base_url=backend.url) as client:
            job = client.jobs.start("t", user_id="u", title="t").set_progress(20)
            waiting = client.jobs.start("t", user_id="u", title="t")
    with sqlite3.connect(db) as old:
        old.executescript("DROP INDEX jobs_idle; DROP INDEX jobs_idle_own_limit; "
                          "ALTER TABLE jobs DROP COLUMN idle_since; "
                          "ALTER TABLE jobs DROP COLUMN stale_after;")
    now[0] += 100
    with seenn.server.running(db, api_key=key, clock=lambda: now[0]) as backend, \
            seenn.SeennClient(key, base_url=backend.url) as client:
        with sqlite3.connect(db) as migrated:
            rows = dict(migrated.execute("SELECT id, idle_since FROM jobs").fetchall())
        assert rows == {job.id: START, waiting.id: None}
        now[0] += 300
        assert client.jobs.get(job.id).status == "running"  # one limit from this start
        now[0] += 1
        assert client.jobs.get(job.id).error.code == "WORKER_LOST"  # type: ignore[union-attr]
        assert client.jobs.get(waiting.id).status == "pending"


# The client -------------------------------------------------------------------------------


def test_the_client_sets_a_limit_and_sees_the_job_lost(stale: Stale) -> None:
    """jobs.start(stale_after=) and set_progress(stale_after=) reach the server and read back."""
    with seenn.SeennClient(stale.backend.api_key, base_url=stale.backend.url) as client:
        job = client.jobs.start("render", user_id="u", title="t", stale_after=120)
        assert job.stale_after_seconds == 120
        job.set_progress(32, stale_after=60)
        assert (job.status, job.stale_after_seconds) == ("running", 60)
        stale.advance(61)
        lost = client.jobs.get(job.id)
        assert (lost.status, lost.progress) == ("failed", 32)
        assert lost.error is not None and lost.error.code == "WORKER_LOST"
        assert lost.completed_at is not None
        with pytest.raises(seenn.ConflictError):
            job.set_progress(33)
        assert client.jobs.start("t", user_id="u", title="t").stale_after_seconds is None


async def test_the_async_client_sets_a_limit(stale: Stale) -> None:
    """AsyncSeennClient sends stale_after on start and on set_progress too."""
    async with seenn.AsyncSeennClient(stale.backend.api_key,
                                      base_url=stale.backend.url) as client:
        job = await client.jobs.start("render", user_id="u", title="t", stale_after=45)
        assert job.stale_after_seconds == 45
        await job.set_progress(10, stale_after=90)
        assert job.stale_after_seconds == 90
        stale.advance(91)
        assert (await client.jobs.get(job.id)).status == "failed"
