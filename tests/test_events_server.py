"""`POST /v1/events` of `seenn serve`: many job events in one transaction, one answer each."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import seenn.server
from seenn.server import RunningServer

START = {"jobType": "video", "userId": "u1", "title": "Video"}


@pytest.fixture
def raw(backend: RunningServer) -> Iterator[httpx.Client]:
    """An httpx client with the secret key, under /v1."""
    with httpx.Client(base_url=backend.url + "/v1",
                      headers={"Authorization": f"Bearer {backend.api_key}"}) as c:
        yield c


def start(job_id: str, key: str | None = None, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "start", "body": {**START, "id": job_id, **extra}}
    if key is not None:
        event["idempotencyKey"] = key
    return event


def update(kind: str, job_id: str, body: dict[str, Any], key: str | None = None
           ) -> dict[str, Any]:
    event: dict[str, Any] = {"type": kind, "jobId": job_id, "body": body}
    if key is not None:
        event["idempotencyKey"] = key
    return event


def post(raw: httpx.Client, *events: dict[str, Any]) -> list[dict[str, Any]]:
    response = raw.post("/events", json={"events": list(events)})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert len(results) == len(events)
    return results


def test_healthz_lists_the_extensions(backend: RunningServer) -> None:
    """/healthz and /v1/healthz offer events with its limits, beside the other extensions."""
    for path in ("/healthz", "/v1/healthz"):
        health = httpx.get(backend.url + path).json()
        assert health == {"status": "ok", "extensions": {
            "events": {"maxEvents": 500, "maxBytes": 524288},
            "jobsByIds": {"maxIds": 100}, "wait": {"maxSeconds": 30},
            "eta": {}, "tokens": {}, "staleAfter": {}}}


def test_a_whole_job_in_one_batch(raw: httpx.Client) -> None:
    """Start, progress and complete of one job, applied in order, each answered as its call."""
    results = post(raw, start("j1", "j1.0"),
                   update("progress", "j1", {"progress": 40, "message": "half"}, "j1.1"),
                   update("complete", "j1", {"result": {"type": "video"}}, "j1.2"))
    assert [r["status"] for r in results] == [201, 200, 200]
    assert results[0]["body"]["status"] == "pending"
    assert (results[1]["body"]["status"], results[1]["body"]["progress"]) == ("running", 40)
    assert results[2]["body"]["status"] == "completed"
    assert "replayed" not in results[0]
    job = raw.get("/jobs/j1").json()
    assert (job["status"], job["progress"], job["message"]) == ("completed", 100, "half")


def test_parent_and_child_in_one_batch(raw: httpx.Client) -> None:
    """A child started after its parent in the same batch links to it."""
    results = post(raw, start("p"), start("c", parentJobId="p", childIndex=0),
                   update("complete", "c", {}))
    assert [r["status"] for r in results] == [201, 201, 200]
    parent = raw.get("/jobs/p").json()
    assert parent["children"]["completed"] == 1


def test_refused_events_leave_the_others_standing(raw: httpx.Client) -> None:
    """A 400, a 404 and a 409 inside a batch answer alone; the events around them apply."""
    post(raw, start("done"), update("complete", "done", {}))
    results = post(raw, start("ok"),
                   update("progress", "ok", {"progress": 150}),
                   update("progress", "missing", {"progress": 5}),
                   update("progress", "done", {"progress": 5}),
                   update("progress", "ok", {"progress": 60}))
    assert [r["status"] for r in results] == [201, 400, 404, 409, 200]
    assert results[1]["body"]["error"]["code"] == "VALIDATION_ERROR"
    assert results[1]["body"]["error"]["details"]["field"] == "progress"
    assert results[2]["body"]["error"]["code"] == "NOT_FOUND"
    assert results[3]["body"]["error"]["code"] == "CONFLICT"
    assert raw.get("/jobs/ok").json()["progress"] == 60


def test_a_retried_batch_replays_every_answer(raw: httpx.Client) -> None:
    """The same batch sent twice applies once: the second answers are the stored ones."""
    events = [start("r1", "r1.0"), update("progress", "r1", {"progress": 10}, "r1.1"),
              update("progress", "nope", {"progress": 10}, "nope.1")]
    first = post(raw, *events)
    before = raw.get("/jobs/r1").json()
    again = post(raw, *events)
    assert [(r["status"], r["body"]) for r in again] == [(r["status"], r["body"]) for r in first]
    assert all(r.get("replayed") is True for r in again)
    assert raw.get("/jobs/r1").json()["updatedAt"] == before["updatedAt"]


def test_keys_replay_across_single_calls_and_batches(raw: httpx.Client) -> None:
    """A key first used in a batch replays to the single call, and the other way round."""
    post(raw, start("x1", "x1.0"), update("progress", "x1", {"progress": 30}, "x1.1"))
    single = raw.post("/jobs/x1/progress", json={"progress": 30},
                      headers={"Idempotency-Key": "x1.1"})
    assert single.status_code == 200
    assert single.headers["Idempotent-Replayed"] == "true"
    first = raw.post("/jobs/x1/progress", json={"progress": 50},
                     headers={"Idempotency-Key": "x1.2"})
    results = post(raw, update("progress", "x1", {"progress": 50}, "x1.2"),
                   start("x1", "x1.0"))
    assert results[0] == {"status": 200, "body": first.json(), "replayed": True}
    assert results[1]["status"] == 201 and results[1]["replayed"] is True


def test_a_key_reused_for_another_event_is_refused_alone(raw: httpx.Client) -> None:
    """The same key with another request is 409 IDEMPOTENCY_KEY_REUSED for that event only."""
    results = post(raw, start("k1", "same"), update("progress", "k1", {"progress": 5}, "same"),
                   update("progress", "k1", {"progress": 7}, "other"))
    assert [r["status"] for r in results] == [201, 409, 200]
    assert results[1]["body"]["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    reused = raw.post("/jobs/k1/complete", json={}, headers={"Idempotency-Key": "other"})
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_events_see_what_earlier_events_of_the_batch_wrote(raw: httpx.Client) -> None:
    """Jobs and keys read ahead for a batch are never answered stale.

    The jobs exist before the batch, so the server reads them all ahead; each later
    event must still see what the earlier ones wrote: to the job itself, to its parent
    (through the child's change), and under a key used twice.
    """
    post(raw, start("rp"), start("rc", parentJobId="rp", childIndex=0), start("rj"))
    results = post(raw,
                   update("progress", "rj", {"progress": 10, "message": "first"}, "rj.1"),
                   update("progress", "rj", {"progress": 20}, "rj.2"),
                   update("complete", "rc", {}),
                   update("progress", "rp", {"progress": 50, "message": "parent"}),
                   update("progress", "rj", {"progress": 20}, "rj.2"),
                   update("progress", "rj", {"progress": 30}, "rj.1"))
    assert [r["status"] for r in results] == [200, 200, 200, 200, 200, 409]
    assert results[4].get("replayed") is True
    job = raw.get("/jobs/rj").json()
    assert (job["progress"], job["message"]) == (20, "first")
    parent = raw.get("/jobs/rp").json()
    assert parent["children"]["completed"] == 1
    assert (parent["progress"], parent["message"]) == (50, "parent")


def test_keys_are_trimmed_as_the_single_calls_header_is(raw: httpx.Client) -> None:
    """A key with spaces around it (even past 255 characters with them) is the trimmed key."""
    long_key = "k" * 255
    post(raw, start("t1"))
    results = post(raw, update("progress", "t1", {"progress": 5}, "  short  "),
                   update("progress", "t1", {"progress": 6}, f" {long_key}  "))
    assert [r["status"] for r in results] == [200, 200]
    for key, value in (("short", 5), (long_key, 6)):
        again = raw.post("/jobs/t1/progress", json={"progress": value},
                         headers={"Idempotency-Key": key})
        assert again.headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize(("body", "field"), [
    ({}, "events"),
    ({"events": "many"}, "events"),
    ({"events": {"0": {}}}, "events"),
    ({"events": []}, "events"),
    ({"events": [5]}, "events.0"),
    ({"events": [{"type": "cancel", "jobId": "a", "body": {}}]}, "events.0.type"),
    ({"events": [{"type": ["progress"], "jobId": "a", "body": {}}]}, "events.0.type"),
    ({"events": [{"type": "progress", "body": {"progress": 1}}]}, "events.0.jobId"),
    ({"events": [{"type": "progress", "jobId": "", "body": {"progress": 1}}]},
     "events.0.jobId"),
    ({"events": [{"type": "progress", "jobId": "x" * 256, "body": {"progress": 1}}]},
     "events.0.jobId"),
    ({"events": [{"type": "start", "jobId": "a", "body": START}]}, "events.0.jobId"),
    ({"events": [{"type": "progress", "jobId": "a"}]}, "events.0.body"),
    ({"events": [{"type": "progress", "jobId": "a", "body": [1]}]}, "events.0.body"),
    ({"events": [{"type": "progress", "jobId": "a", "body": {"progress": 1},
                  "idempotencyKey": 7}]}, "events.0.idempotencyKey"),
    ({"events": [{"type": "progress", "jobId": "a", "body": {"progress": 1},
                  "idempotencyKey": "k" * 256}]}, "events.0.idempotencyKey"),
])
def test_a_bad_envelope_is_refused_before_anything_is_written(
        raw: httpx.Client, body: dict[str, Any], field: str) -> None:
    """A bad envelope is one 400 naming the field, and no event of the batch is applied."""
    good = {"type": "start", "idempotencyKey": "g", "body": {**START, "id": "good"}}
    if isinstance(body.get("events"), list) and body["events"]:
        body = {"events": [good, *body["events"]]}
        field = field.replace("events.0", "events.1")
    response = raw.post("/events", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["details"]["field"]) == ("VALIDATION_ERROR", field)
    assert raw.get("/jobs/good").status_code == 404


def test_too_many_events_and_too_many_bytes(db: str) -> None:
    """Past max_events the batch is 400 naming events; past the body cap it is 413."""
    with seenn.server.running(db, max_events=3) as backend:
        assert httpx.get(backend.url + "/healthz").json()["extensions"]["events"][
            "maxEvents"] == 3
        with httpx.Client(base_url=backend.url + "/v1",
                          headers={"Authorization": f"Bearer {backend.api_key}"}) as raw:
            many = raw.post("/events", json={"events": [start(f"m{i}") for i in range(4)]})
            assert many.status_code == 400
            assert many.json()["error"]["details"]["field"] == "events"
            assert raw.get("/jobs/m0").status_code == 404
            assert len(post(raw, *[start(f"m{i}") for i in range(3)])) == 3
            big = {"events": [start("big", metadata={"pad": "x" * 600_000})]}
            huge = raw.post("/events", json=big)
            assert huge.status_code == 413
            assert huge.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_a_declared_length_over_the_cap_is_413_without_reading(backend: RunningServer) -> None:
    """A raw request declaring a body over the cap is answered 413 before any body is sent."""
    host, port = backend.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     f"{backend.api_key}\r\nContent-Length: 9999999\r\n\r\n".encode())
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")


def test_only_secret_keys_write_batches(backend: RunningServer, raw: httpx.Client) -> None:
    """A public key or a user token is 403 on POST /v1/events; no key is 401."""
    token = raw.post("/tokens", json={"userId": "u1"}).json()["token"]
    body = {"events": [start("p1")]}
    for key in (backend.public_key, token):
        answer = httpx.post(backend.url + "/v1/events", json=body,
                            headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "FORBIDDEN"
    assert httpx.post(backend.url + "/v1/events", json=body).status_code == 401
    assert raw.get("/jobs/p1").status_code == 404


def test_hostile_bodies(raw: httpx.Client) -> None:
    """Lone surrogates, deep nesting, non-objects and odd job ids never get past their event."""
    surrogate = b'{"events": [{"type": "start", "body": {"jobType": "v", "userId": "u", ' \
                b'"title": "\\ud800"}}]}'
    answer = raw.post("/events", content=surrogate)
    assert answer.status_code == 400
    assert answer.json()["error"]["details"]["field"] == "events.0.body.title"
    # The same surrogate as raw bytes (which json.loads lets through), not as an escape.
    raw_bytes = surrogate.replace(b"\\ud800", b"\xed\xa0\x80")
    answer = raw.post("/events", content=raw_bytes)
    assert answer.status_code == 400
    assert answer.json()["error"]["details"]["field"] == "events.0.body.title"
    # And as a UTF-16 code unit of a body json.loads reads as UTF-16 (whose bytes,
    # big-endian, can even be valid UTF-8).
    utf16 = surrogate.decode().replace("\\ud800", "\udc80").encode("utf-16-be",
                                                                 "surrogatepass")
    answer = raw.post("/events", content=utf16)
    assert answer.status_code == 400
    assert answer.json()["error"]["details"]["field"] == "events.0.body.title"
    deep = b'{"events": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert raw.post("/events", content=deep).json()["error"]["code"] == "INVALID_JSON"
    assert raw.post("/events", content=b"[1, 2]").json()["error"]["code"] == "INVALID_JSON"
    assert raw.post("/events", content=b"").json()["error"]["code"] == "INVALID_JSON"
    results = post(raw, update("progress", "../../v1/jobs", {"progress": 5}),
                   update("progress", "a%2Fb", {"progress": 5}),
                   update("complete", "x", {"result": "not an object"}))
    assert [r["status"] for r in results] == [404, 404, 400]
    # A flood of tiny events is capped by count before any is applied.
    flood = raw.post("/events", content=json.dumps(
        {"events": [{}] * 50_000}).encode())
    assert flood.status_code == 400
    assert flood.json()["error"]["details"]["field"] == "events"


def test_nul_in_a_job_id_or_a_key(raw: httpx.Client) -> None:
    """A job id with NUL is that event's 404 (as its path would be); a key with NUL is a 400."""
    results = post(raw, start("n1"), update("progress", "n1\x00", {"progress": 5}),
                   update("progress", "n1", {"progress": 6}))
    assert [r["status"] for r in results] == [201, 404, 200]
    bad = raw.post("/events", json={"events": [
        update("progress", "n1", {"progress": 7}, "key\x00")]})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"]["field"] == "events.0.idempotencyKey"
    assert raw.get("/jobs/n1").json()["progress"] == 6


def test_an_internal_failure_rolls_back_its_event_only(
        raw: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event that fails inside the server is undone alone and answered 500, not stored."""
    import seenn.server._writes as writes

    real = writes.update_job

    def flaky(tx: Any, action: str, job_id: str, body: dict[str, Any],
              **kwargs: Any) -> Any:
        answer = real(tx, action, job_id, body, **kwargs)
        if body.get("message") == "boom":
            raise RuntimeError("storage hiccup after the write")
        return answer

    monkeypatch.setattr(writes, "update_job", flaky)
    results = post(raw, start("f1"), update("progress", "f1", {"progress": 20}),
                   update("progress", "f1", {"progress": 90, "message": "boom"}, "boom.1"),
                   update("progress", "f1", {"progress": 30}))
    assert [r["status"] for r in results] == [201, 200, 500, 200]
    assert results[2]["body"]["error"]["code"] == "INTERNAL"
    job = raw.get("/jobs/f1").json()
    assert (job["progress"], job.get("message")) == (30, None)
    monkeypatch.setattr(writes, "update_job", real)
    retried = post(raw, update("progress", "f1", {"progress": 90, "message": "boom"}, "boom.1"))
    assert retried[0]["status"] == 200 and "replayed" not in retried[0]


def test_reads_in_a_batch_see_its_held_back_writes(raw: httpx.Client) -> None:
    """A sequential parent's progress reads its first open child's row, written earlier in
    the same batch: the batch's held-back writes run before any read."""
    parent = {"type": "start", "body": {**START, "id": "sp", "totalChildren": 3,
                                        "childProgressMode": "sequential"}}
    post(raw, parent, *(start(f"sc{i}", parentJobId="sp", childIndex=i) for i in range(3)))
    results = post(raw, update("progress", "sc0", {"progress": 40}, "sc0.1"),
                   update("complete", "sc0", {}, "sc0.2"),
                   update("progress", "sc1", {"progress": 60}, "sc1.1"),
                   update("progress", "sc2", {"progress": 10}, "sc2.1"))
    assert [r["status"] for r in results] == [200, 200, 200, 200]
    # One child done, the first open one (sc1) at 60 %: (100 + 60) / 3.
    assert raw.get("/jobs/sp").json()["progress"] == (100 + 60) // 3
    assert raw.get("/jobs/sc1").json()["progress"] == 60


def test_a_failing_held_back_write_runs_the_batch_again_carefully(
        raw: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the batch's held-back writes fail when they run, nothing of the first attempt
    stays: the batch runs again writing as it goes, and every event is applied once."""
    from seenn.server._transaction import Transaction

    real = Transaction.flush
    failures: list[int] = []

    def failing_once(self: Transaction) -> None:
        if self._deferred and not failures:
            failures.append(1)
            raise RuntimeError("disk hiccup")
        real(self)

    post(raw, start("hb"))
    monkeypatch.setattr(Transaction, "flush", failing_once)
    results = post(raw, update("progress", "hb", {"progress": 10}, "hb.1"),
                   update("progress", "hb", {"progress": 20, "message": "m"}, "hb.2"))
    assert failures == [1]
    assert [r["status"] for r in results] == [200, 200]
    assert "replayed" not in results[1]
    job = raw.get("/jobs/hb").json()
    assert (job["progress"], job["message"]) == (20, "m")
    again = post(raw, update("progress", "hb", {"progress": 10}, "hb.1"))
    assert again[0]["replayed"] is True


def test_the_extension_can_be_switched_off(db: str) -> None:
    """With max_events=0, /v1/events is 404 and /healthz does not offer it."""
    with seenn.server.running(db, max_events=0) as backend:
        health = httpx.get(backend.url + "/healthz").json()
        assert "events" not in health["extensions"]
        answer = httpx.post(backend.url + "/v1/events", json={"events": [start("a")]},
                            headers={"Authorization": f"Bearer {backend.api_key}"})
        assert answer.status_code == 404


def test_a_bad_max_events_option_is_refused(tmp_path: Path) -> None:
    """max_events outside 0 to 10,000 raises ValidationError naming it."""
    with pytest.raises(seenn.ValidationError, match="max_events"):
        seenn.server.create_app(tmp_path / "bad.db", max_events=-1)


def test_a_rolled_back_event_takes_its_locks_again(postgres: Any) -> None:
    """On PostgreSQL a rolled-back savepoint releases its advisory locks: they are retaken."""
    from seenn.server._engines import open_store

    store = open_store(postgres.new_database())
    count = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' " \
            "AND pid = pg_backend_pid()"
    try:
        with store.write("app_x") as tx:
            assert tx._lock is not None
            tx._lock("job/before")
            seen: list[int] = []

            def failing_event() -> None:
                with tx.savepoint():
                    tx._lock("job/inside")
                    tx._lock("job/before")
                    seen.append(tx._conn.execute(count).fetchone()[0])
                    raise RuntimeError("a bug in one event")

            with pytest.raises(RuntimeError):
                failing_event()
            assert seen == [2]
            assert tx._conn.execute(count).fetchone()[0] == 1
            tx._lock("job/inside")
            assert tx._conn.execute(count).fetchone()[0] == 2
    finally:
        store.close()


def test_brief_answers_leave_out_the_jobs_of_accepted_updates(raw: httpx.Client) -> None:
    """With "brief": a start still answers its job; an accepted update only its status; a
    refusal its error; a replay says so. The single call's replay still has the job."""
    events = [start("b1", "b1.0"), update("progress", "b1", {"progress": 30}, "b1.1"),
              update("progress", "nope", {"progress": 5}, "b1.2"),
              update("complete", "b1", {}, "b1.3")]
    first = raw.post("/events", json={"events": events, "brief": True}).json()["results"]
    assert first[0]["status"] == 201 and first[0]["body"]["id"] == "b1"
    assert first[1] == {"status": 200} and first[3] == {"status": 200}
    assert first[2]["status"] == 404 and first[2]["body"]["error"]["code"] == "NOT_FOUND"
    again = raw.post("/events", json={"events": events[1:2], "brief": True}).json()
    assert again["results"] == [{"status": 200, "replayed": True}]
    single = raw.post("/jobs/b1/progress", json={"progress": 30},
                      headers={"Idempotency-Key": "b1.1"})
    assert single.headers["Idempotent-Replayed"] == "true"
    assert single.json()["progress"] == 30 and single.json()["id"] == "b1"


@pytest.mark.parametrize("brief", ["yes", 1, None, []])
def test_brief_must_be_a_boolean(raw: httpx.Client, brief: Any) -> None:
    """Anything but true or false is a 400 naming brief, before any event is applied."""
    answer = raw.post("/events", json={"events": [start("nb")], "brief": brief})
    assert answer.status_code == 400 and answer.json()["error"]["details"]["field"] == "brief"
    assert raw.get("/jobs/nb").status_code == 404


def test_rows_keep_their_finished_column_and_other_apps_rows_stay_untouched(
        backend: RunningServer, raw: httpx.Client, tmp_path: Path) -> None:
    """Updates find their row by its rowid and write ``finished`` only when a job ends:
    every row's column still says whether its job is finished, a sequential parent
    still finds its first open child by it, and the job of the same id in another
    app is never written."""
    from seenn.server._jobs import start_job
    from seenn.server._transaction import FINISHED

    store = backend.app.store
    with store.write("app_other") as tx:  # the same ids in another app of the database
        for job_id in ("p", "c0", "c1", "c2", "solo", "gone"):
            start_job(tx, "app_other", {**START, "id": job_id})
    with store.read("app_other") as tx:
        others = tx._conn.execute("SELECT id, data, finished FROM jobs WHERE app_id = ?",
                                  ("app_other",)).fetchall()
    post(raw, start("p", totalChildren=3, childProgressMode="sequential"),
         *(start(f"c{i}", parentJobId="p", childIndex=i) for i in range(3)),
         start("solo"), start("gone"))
    results = post(raw, update("progress", "c0", {"progress": 50}),
                   update("complete", "c0", {}),
                   update("progress", "c1", {"progress": 30}),
                   update("progress", "solo", {"progress": 10}),
                   update("fail", "gone", {"error": {"code": "E", "message": "no"}}),
                   update("progress", "solo", {"progress": 20}))
    assert [r["status"] for r in results] == [200] * 6
    # Sequential: one child done (100) and the first open child at 30, of three.
    assert raw.get("/jobs/p").json()["progress"] == (100 + 30) // 3
    app_id = raw.get("/jobs/p").json()["appId"]
    with store.read(app_id) as tx:
        rows = tx._conn.execute("SELECT id, data, finished FROM jobs WHERE app_id = ?",
                                (app_id,)).fetchall()
    with store.read("app_other") as tx:
        assert tx._conn.execute("SELECT id, data, finished FROM jobs WHERE app_id = ?",
                                ("app_other",)).fetchall() == others
    assert len(rows) == 6
    for job_id, data, finished in rows:
        assert bool(finished) == (json.loads(data)["status"] in FINISHED), job_id
    assert {job_id for job_id, _, finished in rows if finished} == {"c0", "gone"}
