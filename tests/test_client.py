"""The blocking REST client against a real loopback HTTP server."""

from __future__ import annotations

import json
import logging
import pickle
import socket
import threading
import traceback
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

import seenn
import seenn.server
from seenn import SeennClient
from tests.conftest import SECRET, FakeClock
from tests.server import RecordingServer

JOB = {
    "id": "job_01ABC", "appId": "app_1", "userId": "user_123", "jobType": "video-generation",
    "title": "Generating video", "status": "running", "progress": 40,
    "createdAt": "2026-11-26T10:00:00Z", "updatedAt": "2026-11-26T10:00:05.5Z",
}


def test_start_sends_camelcase_body_and_protocol_headers(client: SeennClient,
                                                         server: RecordingServer) -> None:
    """start() posts every field in camelCase with auth, JSON, agent and idempotency headers."""
    eta = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    job = client.jobs.start(
        "video-generation", user_id="user_123", title="Generating video", job_id="job_x1",
        workflow_id="wf", metadata={"prompt": "A cat"}, queue={"position": 5, "total": 20},
        stage=seenn.Stage("queued", 1, 4), estimated_completion_at=eta,
        estimated_duration=timedelta(seconds=90), ttl_seconds=3600)
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/v1/jobs")
    assert request.json == {
        "jobType": "video-generation", "userId": "user_123", "title": "Generating video",
        "id": "job_x1", "workflowId": "wf", "metadata": {"prompt": "A cat"},
        "queue": {"position": 5, "total": 20},
        "stage": {"name": "queued", "current": 1, "total": 4},
        "estimatedCompletionAt": "2030-01-02T03:04:05.678Z", "estimatedDuration": 90000,
        "ttlSeconds": 3600,
    }
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith(f"seenn-python/{seenn.__version__}")
    assert len(request.headers["Idempotency-Key"]) >= 16
    assert job.id == "job_x1"
    assert job.status == "pending"
    assert job.stage == seenn.Stage("queued", 1, 4)
    assert job.queue == seenn.Queue(5, 20)


def test_parent_and_child_fields_are_sent(client: SeennClient, server: RecordingServer) -> None:
    """Parent and child start fields reach the wire as totalChildren, parentJobId, childIndex."""
    parent = client.jobs.start("batch", user_id="u", title="P", total_children=3,
                               child_progress_mode="weighted")
    client.jobs.start("batch", user_id="u", title="C", parent_job_id=parent.id, child_index=2)
    assert server.requests[0].json["totalChildren"] == 3
    assert server.requests[0].json["childProgressMode"] == "weighted"
    assert server.requests[1].json["parentJobId"] == parent.id
    assert server.requests[1].json["childIndex"] == 2


def test_job_parses_camelcase_and_keeps_unknown_fields(client: SeennClient,
                                                      server: RecordingServer) -> None:
    """A job response becomes typed snake_case attributes; unknown fields land in extra."""
    server.reply(200, {
        **JOB, "status": "failed", "workflowId": "wf", "message": "Oops",
        "queue": {"position": 2, "total": 9, "queueName": "gpu"},
        "stage": {"name": "render", "current": 2, "total": 4, "description": "frames"},
        "result": {"type": "video", "url": "https://x/y.mp4", "data": {"s": 30}},
        "error": {"code": "GPU", "message": "out of memory", "details": {"gb": 24}},
        "metadata": {"k": "v"}, "estimatedCompletionAt": "2999-01-01T00:00:00.123456789Z",
        "etaConfidence": 0.8, "startedAt": "2026-11-26T10:00:01+02:00",
        "completedAt": "not a date", "parent": {"parentJobId": "job_p", "childIndex": 3},
        "childProgressMode": "average", "brandNewField": [1, 2],
    })
    job = client.jobs.get("job_01ABC")
    assert (job.id, job.app_id, job.user_id, job.job_type) == (
        "job_01ABC", "app_1", "user_123", "video-generation")
    assert job.workflow_id == "wf"
    assert job.queue == seenn.Queue(2, 9, "gpu")
    assert job.stage == seenn.Stage("render", 2, 4, "frames")
    assert job.result == seenn.JobResult("video", "https://x/y.mp4", {"s": 30})
    assert job.error == seenn.JobError("GPU", "out of memory", {"gb": 24})
    assert job.created_at == datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)
    assert job.updated_at == datetime(2026, 11, 26, 10, 0, 5, 500000, tzinfo=timezone.utc)
    assert job.started_at == datetime(2026, 11, 26, 8, 0, 1, tzinfo=timezone.utc)
    assert job.completed_at is None
    assert job.parent == seenn.ParentInfo("job_p", 3)
    assert job.extra == {"brandNewField": [1, 2]}
    assert job.to_dict()["brandNewField"] == [1, 2]
    assert job.is_terminal and job.is_child and not job.is_parent
    assert job.eta_remaining is not None and job.eta_remaining > timedelta(days=300)


def test_eta_remaining_is_none_without_eta_and_never_negative(client: SeennClient,
                                                              server: RecordingServer) -> None:
    """eta_remaining is None without an ETA and zero once the ETA has passed."""
    server.reply(200, JOB)
    server.reply(200, {**JOB, "estimatedCompletionAt": "2001-01-01T00:00:00Z",
                       "children": {"total": 2, "completed": 1}})
    assert client.jobs.get("a").eta_remaining is None
    late = client.jobs.get("b")
    assert late.eta_remaining == timedelta(0)
    assert late.is_parent and late.children == seenn.ChildrenStats(2, completed=1)


def test_job_methods_send_their_bodies_and_update_the_object(client: SeennClient,
                                                             server: RecordingServer) -> None:
    """set_progress, complete, fail and refresh post the right bodies and refresh the job."""
    job = client.jobs.start("video", user_id="u", title="T")
    assert job.set_progress(49.9, message="Rendering", stage={"name": "render", "current": 2,
                            "total": 4}, queue=seenn.Queue(0), metadata={"fps": 24},
                            push={"title": "Almost"}) is job
    assert server.requests[-1].path == f"/v1/jobs/{job.id}/progress"
    assert server.requests[-1].json == {
        "progress": 49, "message": "Rendering", "stage": {"name": "render", "current": 2,
                                                          "total": 4},
        "queue": {"position": 0}, "metadata": {"fps": 24}, "push": {"title": "Almost"}}
    assert (job.status, job.progress, job.message) == ("running", 49, "Rendering")
    job.complete(result=seenn.JobResult(type="video", url="https://cdn/v.mp4"),
                 message="Ready", live_activity=True)
    assert server.requests[-1].json == {"result": {"type": "video", "url": "https://cdn/v.mp4"},
                                        "message": "Ready", "liveActivity": True}
    assert (job.status, job.progress, job.is_terminal) == ("completed", 100, True)
    other = client.jobs.start("video", user_id="u", title="T2")
    other.fail(error={"code": "RENDER_FAILED", "message": "GPU memory exceeded"}, retryable=True)
    assert server.requests[-1].json == {
        "error": {"code": "RENDER_FAILED", "message": "GPU memory exceeded"}, "retryable": True}
    assert other.error == seenn.JobError("RENDER_FAILED", "GPU memory exceeded")
    server.backend.jobs[other.id]["message"] = "changed elsewhere"
    assert other.refresh().message == "changed elsewhere"
    assert server.requests[-1].method == "GET"


def test_job_ids_are_quoted_into_one_path_segment(client: SeennClient,
                                                   server: RecordingServer) -> None:
    """A job id with a slash or query characters cannot change the request path."""
    server.reply(200, JOB)
    client.jobs.get("a/../b?c")
    assert server.requests[0].path == "/v1/jobs/a%2F..%2Fb%3Fc"


@pytest.mark.parametrize(("status", "error_type", "code"), [
    (400, seenn.ValidationError, "VALIDATION_ERROR"),
    (401, seenn.AuthenticationError, "UNAUTHORIZED"),
    (403, seenn.AuthenticationError, "FORBIDDEN"),
    (404, seenn.NotFoundError, "NOT_FOUND"),
    (409, seenn.ConflictError, "CONFLICT"),
    (413, seenn.SeennError, "PAYLOAD_TOO_LARGE"),
    (429, seenn.RateLimitError, "RATE_LIMITED"),
    (500, seenn.ServerError, "INTERNAL"),
    (503, seenn.ServerError, "UNAVAILABLE"),
])
def test_status_codes_map_to_errors(server: RecordingServer, status: int,
                                    error_type: type[seenn.SeennError], code: str) -> None:
    """Each error status becomes its exception with the body's code, message and details."""
    server.reply(status, {"error": {"code": code, "message": "it went wrong",
                                    "details": {"field": "x"}}})
    with SeennClient(SECRET, base_url=server.url, max_retries=0) as client, \
            pytest.raises(error_type) as caught:
        client.jobs.get("job_1")
    assert type(caught.value) is error_type
    assert (caught.value.status_code, caught.value.code) == (status, code)
    assert caught.value.message == "it went wrong"
    assert caught.value.details == {"field": "x"}
    assert len(server.requests) == 1


def test_error_without_json_body_still_says_what_happened(client: SeennClient,
                                                          server: RecordingServer) -> None:
    """A non-JSON error body gives a default code and a message naming the status."""
    server.reply(418, raw=b"<html>teapot</html>")
    with pytest.raises(seenn.SeennError) as caught:
        client.jobs.get("job_1")
    assert caught.value.code == "HTTP_ERROR"
    assert "418" in caught.value.message and "teapot" in caught.value.message


def test_rate_limit_error_reads_rate_limit_headers(server: RecordingServer) -> None:
    """A 429 exposes Retry-After, X-RateLimit-Limit and X-RateLimit-Remaining."""
    server.reply(429, {"error": {"code": "RATE_LIMITED", "message": "slow down"}},
                 headers={"Retry-After": "12", "X-RateLimit-Limit": "100",
                          "X-RateLimit-Remaining": "0"})
    with SeennClient(SECRET, base_url=server.url, max_retries=0) as client, \
            pytest.raises(seenn.RateLimitError) as caught:
        client.jobs.get("job_1")
    assert (caught.value.retry_after, caught.value.limit, caught.value.remaining) == (12, 100, 0)


def test_retries_server_errors_with_one_idempotency_key(client: SeennClient,
                                                        server: RecordingServer,
                                                        clock: FakeClock) -> None:
    """A POST that meets 500, 502 and 503 is retried with the same Idempotency-Key each time."""
    for status in (500, 502, 503):
        server.reply(status, {"error": {"code": "X", "message": "x"}})
    job = client.jobs.start("video", user_id="u", title="T")
    assert job.status == "pending"
    keys = {r.headers["Idempotency-Key"] for r in server.requests}
    assert len(server.requests) == 4 and len(keys) == 1
    assert len(clock.sleeps) == 3
    for attempt, delay in enumerate(clock.sleeps):
        assert 0 <= delay <= 0.5 * 2 ** attempt


def test_each_logical_call_gets_its_own_idempotency_key(client: SeennClient,
                                                       server: RecordingServer) -> None:
    """Two separate POSTs carry two different keys; GETs carry none."""
    job = client.jobs.start("video", user_id="u", title="T")
    job.set_progress(10)
    job.refresh()
    first, second, get = server.requests
    assert first.headers["Idempotency-Key"] != second.headers["Idempotency-Key"]
    assert "Idempotency-Key" not in get.headers


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_gets_are_retried_on_retryable_statuses(client: SeennClient, server: RecordingServer,
                                               status: int) -> None:
    """408, 429 and 5xx are retried for GETs too, unlike the Node SDK's POSTs."""
    server.reply(status, {"error": {"code": "X", "message": "x"}})
    server.reply(200, JOB)
    assert client.jobs.get("job_01ABC").id == "job_01ABC"
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_other_client_errors_are_not_retried(client: SeennClient, server: RecordingServer,
                                             clock: FakeClock, status: int) -> None:
    """4xx answers other than 408 and 429 fail at once, without a second attempt."""
    server.reply(status, {"error": {"code": "NOPE", "message": "no"}})
    with pytest.raises(seenn.SeennError):
        client.jobs.start("video", user_id="u", title="T")
    assert len(server.requests) == 1 and clock.sleeps == []


def test_max_retries_zero_means_one_attempt(server: RecordingServer) -> None:
    """max_retries=0 turns retries off."""
    server.reply(503, {"error": {"code": "DOWN", "message": "down"}}, times=2)
    with SeennClient(SECRET, base_url=server.url, max_retries=0) as client, \
            pytest.raises(seenn.ServerError):
        client.jobs.get("job_1")
    assert len(server.requests) == 1


def test_gives_up_after_max_retries_with_the_last_error(client: SeennClient,
                                                       server: RecordingServer) -> None:
    """After 1 + max_retries attempts the last error is raised."""
    server.reply(503, {"error": {"code": "DOWN", "message": "still down"}}, times=4)
    with pytest.raises(seenn.ServerError) as caught:
        client.jobs.get("job_1")
    assert caught.value.message == "still down"
    assert len(server.requests) == 4


def test_retry_after_seconds_is_honoured(client: SeennClient, server: RecordingServer,
                                         clock: FakeClock) -> None:
    """A 429 with Retry-After: 7 waits exactly 7 seconds before the retry."""
    server.reply(429, {"error": {"code": "RATE_LIMITED", "message": "x"}},
                 headers={"Retry-After": "7"})
    client.jobs.start("video", user_id="u", title="T")
    assert clock.sleeps == [7.0]
    assert len(server.requests) == 2


def test_retry_after_http_date_is_honoured(client: SeennClient, server: RecordingServer,
                                           clock: FakeClock) -> None:
    """A Retry-After HTTP date is turned into the seconds until then."""
    client._http._time = lambda: 1_800_000_000.0
    when = datetime.fromtimestamp(1_800_000_030, tz=timezone.utc)
    server.reply(503, {"error": {"code": "DOWN", "message": "x"}},
                 headers={"Retry-After": format_datetime(when, usegmt=True)})
    client.jobs.start("v", user_id="u", title="T")
    assert clock.sleeps == [30.0]


def test_retry_after_beyond_the_cap_gives_up_at_once(client: SeennClient,
                                                     server: RecordingServer,
                                                     clock: FakeClock) -> None:
    """A Retry-After longer than the cap raises RateLimitError instead of waiting."""
    server.reply(429, {"error": {"code": "RATE_LIMITED", "message": "x"}},
                 headers={"Retry-After": "3600"})
    with pytest.raises(seenn.RateLimitError) as caught:
        client.jobs.start("video", user_id="u", title="T")
    assert caught.value.retry_after == 3600
    assert clock.sleeps == [] and len(server.requests) == 1


def test_deadline_stops_retrying(server: RecordingServer, clock: FakeClock) -> None:
    """Retries stop when the next wait would pass the call's overall deadline."""
    server.reply(503, {"error": {"code": "DOWN", "message": "x"}}, times=20)
    with SeennClient(SECRET, base_url=server.url, max_retries=20, deadline=10.0) as client:
        client._http._sleep = clock.sleep
        client._http._monotonic = clock.monotonic
        client._http._random = lambda: 1.0  # the top of every jitter range
        with pytest.raises(seenn.ServerError):
            client.jobs.get("job_1")
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0]
    assert len(server.requests) == 5


def test_dropped_connections_are_retried(client: SeennClient, server: RecordingServer) -> None:
    """A connection closed without an answer is retried like a 5xx."""
    server.reply(drop=True)
    job = client.jobs.start("video", user_id="u", title="T")
    assert job.id.startswith("job_")
    assert len(server.requests) == 2
    assert server.requests[0].headers["Idempotency-Key"] == server.requests[1].headers[
        "Idempotency-Key"]


def test_unreachable_backend_raises_connection_error(clock: FakeClock) -> None:
    """A closed port gives APIConnectionError after the retries, without the key in it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with SeennClient(SECRET, base_url=f"http://127.0.0.1:{port}") as client:
        client._http._sleep = clock.sleep
        client._http._monotonic = clock.monotonic
        with pytest.raises(seenn.APIConnectionError) as caught:
            client.jobs.get("job_1")
    assert not isinstance(caught.value, seenn.APITimeoutError)
    assert len(clock.sleeps) == 3
    assert SECRET not in "".join(traceback.format_exception(caught.value))


def test_slow_backend_raises_timeout_error(server: RecordingServer) -> None:
    """An answer slower than the timeout gives APITimeoutError."""
    release = threading.Event()
    server.reply(200, JOB, hold=release)
    with SeennClient(SECRET, base_url=server.url, timeout=0.2, max_retries=0) as client, \
            pytest.raises(seenn.APITimeoutError) as caught:
        client.jobs.get("job_1")
    release.set()
    assert isinstance(caught.value, seenn.APIConnectionError)
    assert caught.value.code == "TIMEOUT"


def test_timeouts_are_retried(server: RecordingServer, clock: FakeClock) -> None:
    """An attempt that times out is retried, and the retry's answer is returned."""
    release = threading.Event()
    server.reply(200, JOB, hold=release)
    server.reply(200, {**JOB, "id": "second"})
    with SeennClient(SECRET, base_url=server.url, timeout=0.2, max_retries=1) as client:
        client._http._sleep = clock.sleep
        assert client.jobs.get("job_1").id == "second"
    release.set()
    assert len(server.requests) == 2


def test_pagination_lists_and_walks_every_page(client: SeennClient,
                                               server: RecordingServer) -> None:
    """list() passes userId, limit and cursor; iter() follows next_cursor to the end."""
    ids = [client.jobs.start("video", user_id="user_9", title=f"T{i}").id for i in range(5)]
    client.jobs.start("video", user_id="someone_else", title="X")
    page = client.jobs.list("user_9", limit=2)
    assert [j.id for j in page.jobs] == ids[::-1][:2]
    assert page.next_cursor == "2"
    assert server.requests[-1].query == {"userId": ["user_9"], "limit": ["2"]}
    second = client.jobs.list("user_9", limit=2, cursor=page.next_cursor)
    assert server.requests[-1].query["cursor"] == ["2"]
    assert [j.id for j in second.jobs] == ids[::-1][2:4]
    before = len(server.requests)
    assert [j.id for j in client.jobs.iter("user_9", page_size=2)] == ids[::-1]
    assert len(server.requests) - before == 3


def test_parent_child_and_batch_helpers(client: SeennClient, server: RecordingServer) -> None:
    """create_parent, create_child, create_batch and children() work like the Node SDK's."""
    parent = client.jobs.create_parent("batch", user_id="u", title="All", child_count=2,
                                       child_progress_mode="sequential")
    assert server.requests[-1].json["totalChildren"] == 2
    child = client.jobs.create_child("batch", parent_job_id=parent.id, child_index=0,
                                     user_id="u", title="One")
    assert child.parent == seenn.ParentInfo(parent.id, 0)
    batch = client.jobs.create_batch("thumbs", user_id="u", parent_title="Thumbs",
                                     child_titles=["a", "b", "c"])
    assert [c.parent.child_index for c in batch.children if c.parent] == [0, 1, 2]
    assert batch.parent.children == seenn.ChildrenStats(3, pending=3)
    family = client.jobs.children(batch.parent.id)
    assert family.parent.id == batch.parent.id
    assert [c.title for c in family.children] == ["a", "b", "c"]


def test_batch_checks_every_title_before_sending(client: SeennClient,
                                                 server: RecordingServer) -> None:
    """A bad child title fails the whole batch before the parent is created."""
    with pytest.raises(seenn.ValidationError) as caught:
        client.jobs.create_batch("t", user_id="u", parent_title="P", child_titles=["ok", ""])
    assert caught.value.field == "child_titles[1]"
    assert server.requests == []


BIG = {"blob": "x" * 20_000}


@pytest.mark.parametrize(("call", "field"), [
    (lambda c: c.jobs.start("", user_id="u", title="t"), "job_type"),
    (lambda c: c.jobs.start("x" * 101, user_id="u", title="t"), "job_type"),
    (lambda c: c.jobs.start("t", user_id="u" * 256, title="t"), "user_id"),
    (lambda c: c.jobs.start("t", user_id=None, title="t"), "user_id"),
    (lambda c: c.jobs.start("t", user_id="u", title="x" * 201), "title"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", metadata=BIG), "metadata"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", metadata={"f": object()}), "metadata"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", metadata={"n": float("nan")}),
     "metadata"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", ttl_seconds=59), "ttl_seconds"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", ttl_seconds=2_592_001),
     "ttl_seconds"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", total_children=0), "total_children"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", child_progress_mode="bogus"),
     "child_progress_mode"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", child_index=1), "child_index"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", estimated_completion_at="soon"),
     "estimated_completion_at"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", estimated_duration=-1),
     "estimated_duration"),
    (lambda c: c.jobs.start("t", user_id="u", title="t",
                            stage={"name": "s", "current": 3, "total": 2}), "stage.current"),
    (lambda c: c.jobs.start("t", user_id="u", title="t",
                            stage={"name": "s", "current": 0, "total": 2}), "stage.current"),
    (lambda c: c.jobs.start("t", user_id="u", title="t",
                            stage={"name": "s", "current": 1, "total": 0}), "stage.total"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", stage={"nam": "s"}), "stage.nam"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", queue={"position": -1}),
     "queue.position"),
    (lambda c: c.jobs.list("u", limit=0), "limit"),
    (lambda c: c.jobs.get(""), "job_id"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", stale_after=9), "stale_after"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", stale_after=2_592_001),
     "stale_after"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", stale_after=60.0), "stale_after"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", stale_after="60"), "stale_after"),
    (lambda c: c.jobs.start("t", user_id="u", title="t", stale_after=True), "stale_after"),
])
def test_invalid_arguments_fail_before_any_request(client: SeennClient, server: RecordingServer,
                                                   call: object, field: str) -> None:
    """Invalid arguments raise ValidationError naming the field, and nothing is sent."""
    with pytest.raises(seenn.ValidationError) as caught:
        call(client)  # type: ignore[operator]
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    assert server.requests == []


@pytest.mark.parametrize(("call", "field"), [
    (lambda j: j.set_progress(150), "progress"),
    (lambda j: j.set_progress(-1), "progress"),
    (lambda j: j.set_progress(True), "progress"),
    (lambda j: j.set_progress("50"), "progress"),
    (lambda j: j.set_progress(float("nan")), "progress"),
    (lambda j: j.set_progress(5, metadata=BIG), "metadata"),
    (lambda j: j.set_progress(5, push="yes"), "push"),
    (lambda j: j.complete(result={"data": "x" * 110_000}), "result"),
    (lambda j: j.complete(result={"kind": "video"}), "result.kind"),
    (lambda j: j.fail(error={"message": "no code"}), "error.code"),
    (lambda j: j.fail(error={"code": "", "message": "m"}), "error.code"),
    (lambda j: j.fail(error={"code": "C", "message": "m"}, retryable="yes"), "retryable"),
    (lambda j: j.set_progress(5, stale_after=0), "stale_after"),
    (lambda j: j.set_progress(5, stale_after=-60), "stale_after"),
    (lambda j: j.set_progress(5, stale_after=10**30), "stale_after"),
    (lambda j: j.set_progress(5, stale_after=600.5), "stale_after"),
])
def test_invalid_job_updates_fail_before_any_request(client: SeennClient,
                                                     server: RecordingServer, call: object,
                                                     field: str) -> None:
    """Invalid update arguments raise ValidationError and leave the job untouched."""
    job = client.jobs.start("video", user_id="u", title="T")
    sent = len(server.requests)
    with pytest.raises(seenn.ValidationError) as caught:
        call(job)  # type: ignore[operator]
    assert caught.value.field == field
    assert len(server.requests) == sent
    assert (job.status, job.progress) == ("pending", 0)


def test_stale_after_is_sent_as_stale_after_seconds_and_read_back(
        client: SeennClient, server: RecordingServer) -> None:
    """start(stale_after=) and set_progress(stale_after=) send staleAfterSeconds; jobs read it."""
    server.reply(201, {"id": "job_1", "status": "pending", "staleAfterSeconds": 600})
    job = client.jobs.start("video", user_id="u", title="T", stale_after=600)
    assert server.requests[-1].json["staleAfterSeconds"] == 600
    assert job.stale_after_seconds == 600
    assert "staleAfterSeconds" not in job.extra
    server.reply(200, {"id": "job_1", "status": "running", "progress": 5,
                       "staleAfterSeconds": 10})
    job.set_progress(5, stale_after=10)
    assert server.requests[-1].json == {"progress": 5, "staleAfterSeconds": 10}
    assert job.stale_after_seconds == 10
    plain = client.jobs.start("video", user_id="u", title="T")
    assert "staleAfterSeconds" not in server.requests[-1].json
    assert plain.stale_after_seconds is None
    for odd in ("600", 600.5, True, None):
        server.reply(200, {"id": "job_2", "staleAfterSeconds": odd})
        assert client.jobs.get("job_2").stale_after_seconds is None


def test_progress_accepts_numbers_and_floors_floats(client: SeennClient,
                                                    server: RecordingServer) -> None:
    """Progress 0, 100, 99.99 and 12.5 are sent as 0, 100, 99 and 12."""
    job = client.jobs.start("video", user_id="u", title="T")
    for value in (0, 12.5, 99.99, 100):
        job.set_progress(value)
    assert [r.json["progress"] for r in server.requests[1:]] == [0, 12, 99, 100]


def test_api_key_falls_back_to_environment(monkeypatch: pytest.MonkeyPatch,
                                           server: RecordingServer) -> None:
    """SEENN_API_KEY and SEENN_BASE_URL are used when no key or URL is given."""
    monkeypatch.setenv("SEENN_API_KEY", "env-key")
    monkeypatch.setenv("SEENN_BASE_URL", server.url)
    server.reply(200, JOB)
    with SeennClient() as client:
        client.jobs.get("job_01ABC")
    assert server.requests[0].headers["Authorization"] == "Bearer env-key"


def test_missing_key_is_a_clear_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a key or SEENN_API_KEY the constructor raises a ValueError naming api_key."""
    monkeypatch.delenv("SEENN_API_KEY", raising=False)
    with pytest.raises(ValueError, match="SEENN_API_KEY") as caught:
        SeennClient(base_url="http://127.0.0.1:1")
    assert isinstance(caught.value, seenn.ValidationError)
    assert caught.value.field == "api_key"


@pytest.mark.parametrize("key", ["pk_live_abcdef123", "pk_test_abcdef123", "random-key"])
def test_seenn_cloud_needs_a_secret_key(key: str) -> None:
    """Seenn Cloud rejects public and unprefixed keys at construction, without echoing them."""
    with pytest.raises(seenn.ValidationError) as caught:
        SeennClient(key)
    assert caught.value.field == "api_key"
    assert key not in str(caught.value) and key not in repr(caught.value)


def test_self_hosted_backend_accepts_any_non_empty_key(server: RecordingServer) -> None:
    """A self-hosted base URL accepts a key of any shape."""
    server.reply(200, JOB)
    with SeennClient("anything", base_url=server.url + "/") as client:
        assert client.jobs.get("job_01ABC").id == "job_01ABC"
        assert client.base_url == server.url
    assert server.requests[0].path == "/v1/jobs/job_01ABC"


def test_base_path_is_configurable(server: RecordingServer) -> None:
    """base_path changes the prefix of every request path."""
    server.reply(200, JOB)
    with SeennClient(SECRET, base_url=server.url, base_path="/api/seenn/v1") as client:
        client.jobs.get("j")
    assert server.requests[0].path == "/api/seenn/v1/jobs/j"


@pytest.mark.parametrize(("option", "value"), [
    ("timeout", 0), ("timeout", "5"), ("max_retries", -1), ("max_retries", 1.5),
    ("deadline", 0), ("base_url", "ftp://example.com"), ("base_url", "not a url"),
    ("base_path", "v1"),
])
def test_bad_options_are_rejected(option: str, value: object) -> None:
    """Invalid constructor options raise ValidationError naming the option."""
    options: dict[str, object] = {"base_url": "http://127.0.0.1:1", option: value}
    with pytest.raises(seenn.ValidationError) as caught:
        SeennClient(SECRET, **options)  # type: ignore[arg-type]
    assert caught.value.field == option


def test_repr_and_errors_never_show_the_key(server: RecordingServer, clock: FakeClock) -> None:
    """Neither the client's repr nor any error (even one echoing the key) contains the key."""
    server.reply(401, {"error": {"code": "UNAUTHORIZED", "message": f"bad key {SECRET}"}})
    with SeennClient(SECRET, base_url=server.url) as client:
        assert SECRET not in repr(client)
        assert "sk_test_" in repr(client)
        with pytest.raises(seenn.AuthenticationError) as caught:
            client.jobs.get("job_1")
    text = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    assert SECRET not in text
    assert "[REDACTED]" in caught.value.message


def test_debug_logs_one_line_per_attempt_without_the_key(server: RecordingServer,
                                                         caplog: pytest.LogCaptureFixture,
                                                         clock: FakeClock) -> None:
    """debug=True logs method, path, status, attempt and elapsed time for every attempt."""
    server.reply(503, {"error": {"code": "DOWN", "message": "x"}})
    server.reply(200, JOB)
    with SeennClient(SECRET, base_url=server.url, debug=True) as client:
        client._http._sleep = clock.sleep
        with caplog.at_level(logging.DEBUG, logger="seenn"):
            client.jobs.get("job_01ABC")
    lines = [r.getMessage() for r in caplog.records if r.name == "seenn"]
    assert len(lines) == 2
    assert "GET /v1/jobs/job_01ABC -> 503" in lines[0] and "attempt 1 of 4" in lines[0]
    assert "-> 200" in lines[1] and "attempt 2 of 4" in lines[1] and " ms " in lines[1]
    assert all(SECRET not in line for line in lines)


def test_no_logging_without_debug(client: SeennClient, server: RecordingServer,
                                  caplog: pytest.LogCaptureFixture) -> None:
    """Without debug=True, successful calls log nothing."""
    with caplog.at_level(logging.DEBUG, logger="seenn"):
        client.jobs.start("video", user_id="u", title="T")
    assert [r for r in caplog.records if r.name == "seenn"] == []


def test_a_given_http_client_is_used_and_left_open(server: RecordingServer) -> None:
    """An httpx.Client passed in sends the requests and is not closed by close()."""
    with httpx.Client(headers={"X-Extra": "1"}) as http:
        client = SeennClient(SECRET, base_url=server.url, http_client=http)
        server.reply(200, JOB)
        client.jobs.get("job_01ABC")
        client.close()
        assert not http.is_closed
    assert server.requests[0].headers["X-Extra"] == "1"


def test_invalid_json_success_body_is_an_error(client: SeennClient,
                                               server: RecordingServer) -> None:
    """A 2xx answer that is not JSON raises SeennError INVALID_RESPONSE."""
    server.reply(200, raw=b"not json")
    with pytest.raises(seenn.SeennError) as caught:
        client.jobs.get("job_1")
    assert caught.value.code == "INVALID_RESPONSE"


def test_errors_pickle_with_their_attributes() -> None:
    """Errors survive pickling (they cross process pools) with every attribute."""
    error = seenn.RateLimitError("slow", retry_after=3.0, limit=10, remaining=0,
                                 details={"a": 1})
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is seenn.RateLimitError
    assert (copy.message, copy.code, copy.status_code, copy.retry_after, copy.limit,
            copy.remaining, copy.details) == ("slow", "RATE_LIMITED", 429, 3.0, 10, 0, {"a": 1})
    assert json.loads(json.dumps(copy.details)) == {"a": 1}


def test_create_token_posts_user_and_ttl_and_hides_the_token(client: SeennClient,
                                                             server: RecordingServer) -> None:
    """create_token() posts {userId, ttlSeconds} to /v1/tokens; the UserToken repr hides it."""
    token = "ut_eyJ1c2VyIjoidTEifQ.c2lnbmF0dXJlc2lnbmF0dXJl"
    server.reply(201, {"token": token, "expiresAt": "2030-01-01T01:00:00.000Z"})
    minted = client.create_token("user_123", ttl_seconds=600)
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/v1/tokens")
    assert request.json == {"userId": "user_123", "ttlSeconds": 600}
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    assert minted == seenn.UserToken(token, datetime(2030, 1, 1, 1, tzinfo=timezone.utc))
    assert token not in repr(minted) and token not in str(minted)
    assert "ut_" in repr(minted)


def test_create_token_defaults_to_an_hour_and_checks_its_arguments(
        client: SeennClient, server: RecordingServer) -> None:
    """ttl_seconds defaults to 3600; a bad user id or TTL fails before any request."""
    server.reply(201, {"token": "ut_a.b", "expiresAt": "2030-01-01T00:00:00Z"})
    client.create_token("u")
    assert server.requests[0].json == {"userId": "u", "ttlSeconds": 3600}
    for call, field in [(lambda: client.create_token(""), "user_id"),
                        (lambda: client.create_token("u", ttl_seconds=59), "ttl_seconds"),
                        (lambda: client.create_token("u", ttl_seconds=2_592_001), "ttl_seconds"),
                        (lambda: client.create_token("u", ttl_seconds=1.5), "ttl_seconds")]:
        with pytest.raises(seenn.ValidationError) as caught:
            call()  # type: ignore[no-untyped-call]
        assert caught.value.field == field
    assert len(server.requests) == 1


def test_a_user_token_is_the_key_of_a_reading_client(server: RecordingServer) -> None:
    """A client made with a ut_ token sends it as its Bearer key."""
    token = "ut_eyJ1c2VyIjoidTEifQ.c2lnbmF0dXJl"
    server.reply(200, JOB)
    with SeennClient(token, base_url=server.url) as phone:
        phone.jobs.get("job_01ABC")
    assert server.requests[0].headers["Authorization"] == f"Bearer {token}"


def _child(index: int) -> dict[str, object]:
    return {**JOB, "id": f"job_c{index}", "parent": {"parentJobId": "job_p", "childIndex": index}}


def test_children_pages_pass_cursor_and_limit_and_iterate(client: SeennClient,
                                                          server: RecordingServer) -> None:
    """children() sends cursor and limit; iter_children() follows nextCursor to the end."""
    parent = {**JOB, "id": "job_p"}
    server.reply(200, {"parent": parent, "children": [_child(0), _child(1)], "nextCursor": "c2"})
    family = client.jobs.children("job_p", limit=2)
    assert server.requests[-1].query == {"limit": ["2"]}
    assert [c.id for c in family.children] == ["job_c0", "job_c1"]
    assert family.next_cursor == "c2"
    server.reply(200, {"parent": parent, "children": [_child(2)]})
    last = client.jobs.children("job_p", cursor="c2", limit=2)
    assert server.requests[-1].query == {"cursor": ["c2"], "limit": ["2"]}
    assert last.next_cursor is None
    server.reply(200, {"parent": parent, "children": [_child(0), _child(1)], "nextCursor": "c2"})
    server.reply(200, {"parent": parent, "children": [_child(2)]})
    before = len(server.requests)
    assert [c.id for c in client.jobs.iter_children("job_p", page_size=2)] == [
        "job_c0", "job_c1", "job_c2"]
    assert [r.query for r in server.requests[before:]] == [
        {"limit": ["2"]}, {"cursor": ["c2"], "limit": ["2"]}]


def test_children_of_a_backend_that_does_not_paginate_are_one_page(
        client: SeennClient, server: RecordingServer) -> None:
    """Without nextCursor the answer is the only page, and no query is sent by default."""
    parent = client.jobs.create_parent("batch", user_id="u", title="P", child_count=3)
    for index in range(3):
        client.jobs.create_child("batch", parent_job_id=parent.id, child_index=index,
                                 user_id="u", title=f"C{index}")
    before = len(server.requests)
    assert [c.title for c in client.jobs.iter_children(parent.id)] == ["C0", "C1", "C2"]
    assert len(server.requests) == before + 1
    assert server.requests[-1].query == {}
    with pytest.raises(seenn.ValidationError) as caught:
        client.jobs.children(parent.id, limit=0)
    assert caught.value.field == "limit"


def test_token_flow_and_children_pages_against_seenn_serve(tmp_path: Path) -> None:
    """A token minted with the secret key reads its user's jobs; children come in pages."""
    with seenn.server.running(tmp_path / "flow.db") as backend, \
            SeennClient(backend.api_key, base_url=backend.url) as app_backend:
        mine = app_backend.jobs.start("render", user_id="user_1", title="Mine")
        parent = app_backend.jobs.create_parent("batch", user_id="user_1", title="P",
                                                child_count=5)
        for index in range(5):
            app_backend.jobs.create_child("batch", parent_job_id=parent.id, child_index=index,
                                          user_id="user_1", title=f"C{index}")
        minted = app_backend.create_token("user_1", ttl_seconds=120)
        with SeennClient(minted.token, base_url=backend.url) as phone:
            assert mine.id in [job.id for job in phone.jobs.iter("user_1")]
            assert phone.jobs.get(mine.id).title == "Mine"
            with pytest.raises(seenn.AuthenticationError):
                phone.jobs.start("render", user_id="user_1", title="Never")
            first = phone.jobs.children(parent.id, limit=2)
            assert len(first.children) == 2 and first.next_cursor is not None
            assert [c.title for c in phone.jobs.iter_children(parent.id, page_size=2)] == [
                f"C{index}" for index in range(5)]
