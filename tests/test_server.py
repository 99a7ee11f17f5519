"""`seenn serve` (the reference backend) against the real client over loopback HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import seenn
import seenn.server
from seenn.server import RunningServer
from seenn.server._postgres import PostgresStore


@pytest.fixture
def client(backend: RunningServer) -> Iterator[seenn.SeennClient]:
    """A SeennClient with the backend's secret key and no retries."""
    with seenn.SeennClient(backend.api_key, base_url=backend.url, max_retries=0) as c:
        yield c


@pytest.fixture
def raw(backend: RunningServer) -> Iterator[httpx.Client]:
    """A raw httpx client with the secret key, for what SeennClient would refuse to send."""
    with httpx.Client(base_url=backend.url + "/v1",
                      headers={"Authorization": f"Bearer {backend.api_key}"}) as c:
        yield c


def test_job_lifecycle_through_every_endpoint(client: seenn.SeennClient) -> None:
    """start, get, progress, complete, fail, list and children all work end to end."""
    job = client.jobs.start("video", user_id="alice", title="Cat video",
                            metadata={"prompt": "cat"}, stage={"name": "queued", "current": 1,
                                                               "total": 3})
    assert (job.status, job.progress, job.app_id) == ("pending", 0, job.app_id)
    assert job.id.startswith("job_") and len(job.id) == 30
    assert job.workflow_id == "video"
    job.set_progress(42.7, message="Rendering", stage={"name": "render", "current": 2,
                                                       "total": 3})
    assert (job.status, job.progress, job.message) == ("running", 42, "Rendering")
    assert job.started_at is not None
    job.complete(result={"type": "video", "url": "https://cdn/cat.mp4"}, message="Done")
    again = client.jobs.get(job.id)
    assert (again.status, again.progress, again.message) == ("completed", 100, "Done")
    assert again.result == seenn.JobResult("video", "https://cdn/cat.mp4")
    assert again.completed_at is not None
    other = client.jobs.start("video", user_id="alice", title="Dog video")
    other.fail(error={"code": "GPU", "message": "out of memory"}, retryable=True)
    assert other.status == "failed"
    assert other.extra["retryable"] is True
    page = client.jobs.list("alice")
    assert [j.id for j in page.jobs] == [other.id, job.id]
    assert page.next_cursor is None


def test_queue_keeps_a_job_queued_until_work_starts(client: seenn.SeennClient) -> None:
    """A job started with a queue is queued; queue updates keep it queued; progress runs it."""
    job = client.jobs.start("video", user_id="u", title="T", queue={"position": 3, "total": 9})
    assert job.status == "queued"
    job.set_progress(0, queue={"position": 1, "total": 9})
    assert job.status == "queued"
    assert job.started_at is None
    job.set_progress(5)
    assert job.status == "running"
    assert job.started_at is not None


def test_a_queue_sends_a_running_job_back_to_queued(client: seenn.SeennClient) -> None:
    """Progress with a queue on a running job makes it queued again (a retry waits in line)."""
    job = client.jobs.start("video", user_id="u", title="T")
    job.set_progress(40)
    assert job.status == "running"
    job.set_progress(40, queue={"position": 0, "queue_name": "retries"},
                     message="Waiting for attempt 2")
    assert (job.status, job.progress, job.message) == ("queued", 40, "Waiting for attempt 2")
    started = job.started_at
    job.set_progress(45, message="Attempt 2")
    assert job.status == "running" and job.started_at == started


@pytest.mark.parametrize("finish", ["complete", "fail"])
@pytest.mark.parametrize("action", ["progress", "complete", "fail"])
def test_writes_to_finished_jobs_are_conflicts(client: seenn.SeennClient, finish: str,
                                               action: str) -> None:
    """Any write to a completed or failed job is 409 CONFLICT and changes nothing."""
    job = client.jobs.start("video", user_id="u", title="T")
    if finish == "complete":
        job.complete(message="first")
    else:
        job.fail(error={"code": "E", "message": "first"})
    updates = {"progress": lambda: job.set_progress(10),
               "complete": lambda: job.complete(message="second"),
               "fail": lambda: job.fail(error={"code": "E2", "message": "second"})}
    with pytest.raises(seenn.ConflictError):
        updates[action]()
    stored = client.jobs.get(job.id)
    assert stored.status == ("completed" if finish == "complete" else "failed")
    assert stored.message in ("first", None)
    assert stored.error is None or stored.error.code == "E"


def test_progress_metadata_merges_and_stays_bounded(client: seenn.SeennClient) -> None:
    """metadata on progress merges into the stored metadata; a merge over 10 KB is refused."""
    job = client.jobs.start("video", user_id="u", title="T", metadata={"a": 1, "b": 1})
    job.set_progress(10, metadata={"b": 2, "c": "x" * 6000})
    assert job.metadata == {"a": 1, "b": 2, "c": "x" * 6000}
    with pytest.raises(seenn.ValidationError) as caught:
        job.set_progress(20, metadata={"d": "y" * 6000})
    assert caught.value.details is not None
    assert caught.value.details["field"] == "metadata"
    assert client.jobs.get(job.id).progress == 10


def test_client_chosen_ids(client: seenn.SeennClient) -> None:
    """The same id with the same body returns the stored job; another body is 409."""
    first = client.jobs.start("video", user_id="u", title="T", job_id="job_mine_1")
    first.set_progress(30)
    again = client.jobs.start("video", user_id="u", title="T", job_id="job_mine_1")
    assert (again.id, again.progress) == ("job_mine_1", 30)
    with pytest.raises(seenn.ConflictError):
        client.jobs.start("video", user_id="u", title="Other", job_id="job_mine_1")


def test_bad_client_ids_are_rejected(raw: httpx.Client) -> None:
    """Ids must be URL-safe: a slash or a space is a 400 naming the id field."""
    for bad in ("a/b", "has space", "", "x" * 256, 12):
        response = raw.post("/jobs", json={"id": bad, "jobType": "t", "userId": "u",
                                           "title": "t"})
        assert response.status_code == 400, bad
        assert response.json()["error"]["details"]["field"] == "id"


def test_idempotency_key_replays_the_first_answer(raw: httpx.Client) -> None:
    """A repeated Idempotency-Key replays the stored answer; another body with it is 409."""
    body = {"jobType": "t", "userId": "u", "title": "t"}
    first = raw.post("/jobs", json=body, headers={"Idempotency-Key": "k1"})
    second = raw.post("/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(raw.get("/jobs", params={"userId": "u"}).json()["jobs"]) == 1
    reused = raw.post("/jobs", json={**body, "title": "other"}, headers={"Idempotency-Key": "k1"})
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    job_id = first.json()["id"]
    done = raw.post(f"/jobs/{job_id}/complete", json={}, headers={"Idempotency-Key": "k2"})
    replay = raw.post(f"/jobs/{job_id}/complete", json={}, headers={"Idempotency-Key": "k2"})
    assert done.status_code == replay.status_code == 200
    assert raw.post(f"/jobs/{job_id}/complete", json={}).status_code == 409


def test_etag_makes_polling_cheap(raw: httpx.Client, client: seenn.SeennClient) -> None:
    """GET /jobs/{id} sends an ETag and answers If-None-Match with 304 until the job changes."""
    job = client.jobs.start("video", user_id="u", title="T")
    first = raw.get(f"/jobs/{job.id}")
    etag = first.headers["ETag"]
    unchanged = raw.get(f"/jobs/{job.id}", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["ETag"] == etag
    job.set_progress(50)
    changed = raw.get(f"/jobs/{job.id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    assert raw.get(f"/jobs/{job.id}", headers={"If-None-Match": "*"}).status_code == 304


def test_validation_errors_name_every_bad_field(raw: httpx.Client) -> None:
    """A body with several bad fields gets one 400 listing each of them."""
    response = raw.post("/jobs", json={"jobType": "", "userId": "u" * 300, "title": "t",
                                       "ttlSeconds": 5, "stage": {"name": "s", "current": 3,
                                                                  "total": 2}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert set(error["details"]["fields"]) == {"jobType", "userId", "ttlSeconds",
                                               "stage.current"}
    assert error["details"]["field"] == "jobType"


@pytest.mark.parametrize(("content", "code"), [
    (b"{oops", "INVALID_JSON"), (b"[1, 2]", "INVALID_JSON"), (b"\xff\xfe", "INVALID_JSON"),
    (b"[" * 100_000, "INVALID_JSON"), (b"", "INVALID_JSON"),
])
def test_malformed_bodies_are_400(raw: httpx.Client, content: bytes, code: str) -> None:
    """Bodies that are not a JSON object are answered 400 with a JSON error."""
    response = raw.post("/jobs", content=content)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize("depth", [3000, 100_000])
def test_deeply_nested_bodies_never_break_the_server(raw: httpx.Client, depth: int) -> None:
    """Nesting deeper than Python can decode or encode is a 400; what it can is stored intact."""
    nested = "[" * depth + "]" * depth
    content = ('{"jobType":"t","userId":"u","title":"t","metadata":{"x":' + nested + "}}")
    response = raw.post("/jobs", content=content.encode())
    # Where the limit lies depends on the Python version (3.13 encodes 3,000 levels).
    assert response.status_code in (201, 400)
    if response.status_code == 201:
        stored = raw.get(f"/jobs/{response.json()['id']}")
        assert stored.json()["metadata"] == response.json()["metadata"]
    else:
        assert response.json()["error"]["code"] in ("VALIDATION_ERROR", "INVALID_JSON")


def test_oversized_bodies_are_413(raw: httpx.Client) -> None:
    """A body over the cap is refused with 413 and a JSON error."""
    response = raw.post("/jobs", content=b"{" + b" " * (600 * 1024) + b"}")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_unknown_paths_and_wrong_methods(raw: httpx.Client, backend: RunningServer) -> None:
    """Unknown paths are 404 and wrong methods 405 with Allow, both with a JSON error body."""
    missing = raw.get("/nothing/here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"
    wrong = raw.delete("/jobs")
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "GET, POST, OPTIONS"
    assert wrong.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert raw.get("/jobs/x/progress").status_code == 405
    assert raw.put("/jobs/x").status_code == 405
    health = httpx.get(backend.url + "/healthz")
    assert (health.status_code, health.json()["status"]) == (200, "ok")


def test_authentication_and_public_keys(backend: RunningServer, raw: httpx.Client) -> None:
    """No key or an unknown key is 401; a public key reads but writing with it is 403."""
    job = raw.post("/jobs", json={"jobType": "t", "userId": "u", "title": "t"}).json()
    url = f"{backend.url}/v1/jobs/{job['id']}"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer sk_test_nope"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Basic abc"}).status_code == 401
    public = {"Authorization": f"Bearer {backend.public_key}"}
    assert httpx.get(url, headers=public).json()["id"] == job["id"]
    refused = httpx.post(url + "/progress", json={"progress": 5}, headers=public)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "FORBIDDEN"
    assert raw.get(f"/jobs/{job['id']}").json()["progress"] == 0


def test_each_key_pair_is_an_app_that_sees_only_its_jobs(db: str) -> None:
    """Jobs of one app are invisible to another app's keys on the same database."""
    with seenn.server.running(db, api_key="sk_test_app_one") as one, \
            seenn.SeennClient(one.api_key, base_url=one.url) as c1:
        job = c1.jobs.start("t", user_id="u", title="t")
    with seenn.server.running(db, api_key="sk_test_app_two") as two, \
            seenn.SeennClient(two.api_key, base_url=two.url, max_retries=0) as c2:
        with pytest.raises(seenn.NotFoundError):
            c2.jobs.get(job.id)
        assert c2.jobs.list("u").jobs == []
        mine = c2.jobs.start("t", user_id="u", title="t", job_id=job.id)
        assert mine.app_id != job.app_id


def test_rate_limit_answers_429_with_headers(tmp_path: Path) -> None:
    """Beyond N requests per second per key the server answers 429 with the rate headers."""
    with seenn.server.running(tmp_path / "r.db", rate_limit=3) as srv:
        srv.app.store.clock = lambda: 5000.25
        headers = {"Authorization": f"Bearer {srv.api_key}"}
        answers = [httpx.get(f"{srv.url}/v1/jobs?userId=u", headers=headers)
                   for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert answers[3].headers["X-RateLimit-Limit"] == "3"
        assert answers[3].headers["Retry-After"] == "1"
        assert answers[3].json()["error"]["code"] == "RATE_LIMITED"
        public = {"Authorization": f"Bearer {srv.public_key}"}
        assert httpx.get(f"{srv.url}/v1/jobs/missing", headers=public).status_code == 404
        srv.app.store.clock = lambda: 5001.0
        assert httpx.get(f"{srv.url}/v1/jobs?userId=u", headers=headers).status_code == 200


def test_client_retries_through_the_rate_limit(tmp_path: Path) -> None:
    """SeennClient waits out a 429 using Retry-After and then succeeds."""
    with seenn.server.running(tmp_path / "r.db", rate_limit=1) as srv, \
            seenn.SeennClient(srv.api_key, base_url=srv.url) as client:
        now = [7000.0]
        srv.app.store.clock = lambda: now[0]
        waits: list[float] = []

        def fake_sleep(seconds: float) -> None:
            waits.append(seconds)
            now[0] += seconds

        client._http._sleep = fake_sleep
        client.jobs.start("t", user_id="u", title="one")
        client.jobs.start("t", user_id="u", title="two")
        assert waits == [1.0]


def test_expired_jobs_read_as_404_and_are_purged(backend: RunningServer,
                                                 client: seenn.SeennClient) -> None:
    """A job past its ttlSeconds is gone for readers and is purged by the next request."""
    store = backend.app.store
    start = store.clock()
    job = client.jobs.start("t", user_id="u", title="t", ttl_seconds=60)
    keeper = client.jobs.start("t", user_id="u", title="t")
    store.clock = lambda: start + 61
    with pytest.raises(seenn.NotFoundError):
        client.jobs.get(job.id)
    assert [j.id for j in client.jobs.list("u").jobs] == [keeper.id]
    with store._connection() as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


def test_restart_keeps_every_job_and_key(db: str) -> None:
    """Stopping and starting on the same database keeps jobs, and makes no new keys."""
    app = seenn.server.create_app(db)
    assert app.created_keys is not None
    secret, _ = app.created_keys
    app.close()
    with seenn.server.running(db, api_key=secret) as srv, \
            seenn.SeennClient(secret, base_url=srv.url) as c:
        ids = [c.jobs.start("t", user_id="u", title=str(i)).id for i in range(3)]
        c.jobs.get(ids[0]).complete()
    again = seenn.server.create_app(db)
    assert again.created_keys is None
    again.close()
    with seenn.server.running(db, api_key=secret) as srv, \
            seenn.SeennClient(secret, base_url=srv.url) as c:
        assert [j.id for j in c.jobs.list("u").jobs] == ids[::-1]
        assert c.jobs.get(ids[0]).status == "completed"


def test_many_threads_writing_at_once(backend: RunningServer) -> None:
    """Eight threads running jobs concurrently lose no update and see no error."""
    errors: list[BaseException] = []
    created: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            with seenn.SeennClient(backend.api_key, base_url=backend.url) as c:
                for i in range(10):
                    job = c.jobs.start("load", user_id=f"user{n}", title=f"{n}-{i}")
                    for p in (20, 40, 60, 80):
                        job.set_progress(p)
                    job.complete()
                    with lock:
                        created.append(job.id)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as c:
        for n in range(8):
            jobs = list(c.jobs.iter(f"user{n}", page_size=3))
            assert len(jobs) == 10
            assert {(j.status, j.progress) for j in jobs} == {("completed", 100)}
    assert len(set(created)) == 80


def test_concurrent_writes_to_one_job_keep_it_consistent(backend: RunningServer,
                                                         client: seenn.SeennClient) -> None:
    """Many threads updating one job, then one completing it: the job ends completed at 100."""
    job = client.jobs.start("t", user_id="u", title="t", metadata={})
    barrier = threading.Barrier(6)

    def writer(n: int) -> None:
        with seenn.SeennClient(backend.api_key, base_url=backend.url) as c:
            barrier.wait()
            for i in range(10):
                c.jobs.get(job.id).set_progress(i * 10, metadata={f"w{n}": i})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = client.jobs.get(job.id)
    assert stored.metadata == {f"w{n}": 9 for n in range(6)}
    stored.complete()
    assert client.jobs.get(job.id).progress == 100


def test_cursor_is_stable_under_concurrent_inserts(client: seenn.SeennClient,
                                                   raw: httpx.Client) -> None:
    """Jobs started between two pages neither repeat nor hide older jobs."""
    ids = [client.jobs.start("t", user_id="pager", title=str(i)).id for i in range(5)]
    first = client.jobs.list("pager", limit=2)
    for i in range(3):
        client.jobs.start("t", user_id="pager", title=f"new{i}")
    rest: list[str] = []
    cursor = first.next_cursor
    while cursor:
        page = client.jobs.list("pager", limit=2, cursor=cursor)
        rest += [j.id for j in page.jobs]
        cursor = page.next_cursor
    assert [j.id for j in first.jobs] + rest == ids[::-1]
    bad = raw.get("/jobs", params={"userId": "pager", "cursor": "garbage!"})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"]["field"] == "cursor"


def _family(client: seenn.SeennClient, mode: str, n: int = 4,
            weights: list[int] | None = None) -> tuple[seenn.Job, list[seenn.Job]]:
    parent = client.jobs.create_parent("batch", user_id="u", title="P", child_count=n,
                                       child_progress_mode=mode)  # type: ignore[arg-type]
    children = [client.jobs.create_child("batch", parent_job_id=parent.id, child_index=i,
                                         user_id="u", title=f"c{i}",
                                         metadata={"weight": weights[i]} if weights else None)
                for i in range(n)]
    return parent, children


def test_parent_progress_average(client: seenn.SeennClient) -> None:
    """average: the mean of the children's progress, finished children counting 100."""
    parent, children = _family(client, "average")
    children[0].set_progress(50)
    children[1].complete()
    assert parent.refresh().progress == (50 + 100) // 4
    assert parent.children == seenn.ChildrenStats(4, completed=1, running=1, pending=2)
    assert parent.status == "running"


def test_parent_progress_weighted(client: seenn.SeennClient) -> None:
    """weighted: children count by their metadata weight."""
    parent, children = _family(client, "weighted", n=2, weights=[3, 1])
    children[0].complete()
    assert parent.refresh().progress == 75
    children[1].set_progress(50)
    assert parent.refresh().progress == int((3 * 100 + 1 * 50) / 4)


def test_parent_progress_sequential(client: seenn.SeennClient) -> None:
    """sequential: finished children plus the progress of the first unfinished one."""
    parent, children = _family(client, "sequential", n=4)
    children[0].complete()
    children[1].set_progress(40)
    children[2].set_progress(90)
    assert parent.refresh().progress == (100 + 40) // 4


def test_parent_finishes_with_its_children(client: seenn.SeennClient) -> None:
    """A declared parent completes when every child completes, and fails if one failed."""
    parent, children = _family(client, "average", n=2)
    for child in children:
        child.complete()
    assert (parent.refresh().status, parent.progress) == ("completed", 100)
    parent2, children2 = _family(client, "average", n=2)
    children2[0].complete()
    children2[1].fail(error={"code": "E", "message": "m"})
    parent2.refresh()
    assert parent2.status == "failed"
    assert parent2.error is not None
    assert parent2.error.code == "CHILDREN_FAILED"
    family = client.jobs.children(parent2.id)
    assert [c.status for c in family.children] == ["completed", "failed"]


def test_child_index_rules(client: seenn.SeennClient) -> None:
    """childIndex must be below totalChildren and unique within a parent."""
    parent = client.jobs.create_parent("b", user_id="u", title="P", child_count=2)
    client.jobs.create_child("b", parent_job_id=parent.id, child_index=0, user_id="u",
                             title="c")
    with pytest.raises(seenn.ConflictError):
        client.jobs.create_child("b", parent_job_id=parent.id, child_index=0, user_id="u",
                                 title="c")
    with pytest.raises(seenn.ValidationError):
        client.jobs.create_child("b", parent_job_id=parent.id, child_index=2, user_id="u",
                                 title="c")
    with pytest.raises(seenn.NotFoundError):
        client.jobs.create_child("b", parent_job_id="job_missing", child_index=0,
                                 user_id="u", title="c")


def test_undeclared_parents_count_children_but_keep_their_progress(
        client: seenn.SeennClient, raw: httpx.Client) -> None:
    """Children may join a job without totalChildren; that parent keeps its own progress."""
    parent = client.jobs.start("t", user_id="u", title="P")
    parent.set_progress(30)
    child = raw.post("/jobs", json={"jobType": "t", "userId": "u", "title": "c",
                                    "parentJobId": parent.id}).json()
    assert child["parent"] == {"parentJobId": parent.id, "childIndex": 0}
    second = raw.post("/jobs", json={"jobType": "t", "userId": "u", "title": "c2",
                                     "parentJobId": parent.id}).json()
    assert second["parent"]["childIndex"] == 1
    raw.post(f"/jobs/{child['id']}/complete", json={})
    parent.refresh()
    assert parent.progress == 30
    assert parent.children == seenn.ChildrenStats(2, completed=1, pending=1)


def test_public_module_surface() -> None:
    """seenn.server exposes create_app, running and the app and server classes."""
    assert sorted(seenn.server.__all__) == ["RunningServer", "SeennServerApp", "WSGIServer",
                                            "create_app", "running"]
    assert json.loads(json.dumps({"ok": True})) == {"ok": True}


def test_database_handles_do_not_pile_up_with_connections(backend: RunningServer) -> None:
    """Clients that connect afresh for every request do not leave database handles behind."""
    store = backend.app.store

    def open_handles() -> int:
        if isinstance(store, PostgresStore):
            return int(store._pool.get_stats()["pool_size"])
        db = str(Path(store.path).resolve())  # type: ignore[attr-defined]
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if _target(fd) == db)

    for _ in range(60):
        with httpx.Client() as fresh:
            fresh.get(backend.url + "/v1/jobs?userId=u",
                      headers={"Authorization": f"Bearer {backend.api_key}"})
    assert 1 <= open_handles() <= 16


def _target(fd: Path) -> str:
    try:
        return str(fd.readlink())
    except OSError:
        return ""


def test_restart_with_a_new_public_key_replaces_the_old_one(db: str) -> None:
    """Giving the same secret key with another public key updates the app's public key."""
    seenn.server.create_app(db, api_key="sk_test_same", public_key="pk_test_old").close()
    restarted = seenn.server.create_app(db, api_key="sk_test_same")
    assert restarted.created_keys is None
    restarted.close()
    with seenn.server.running(db, api_key="sk_test_same", public_key="pk_test_new") as srv:
        url = f"{srv.url}/v1/jobs/missing"
        assert httpx.get(url, headers={"Authorization": "Bearer pk_test_new"}).status_code == 404
        assert httpx.get(url, headers={"Authorization": "Bearer pk_test_old"}).status_code == 401


def test_error_answers_are_replayed_under_their_idempotency_key(raw: httpx.Client) -> None:
    """A 404 or 409 answered to a keyed POST is replayed, not re-executed, on a retry."""
    key = {"Idempotency-Key": "err-1"}
    first = raw.post("/jobs/job_absent/progress", json={"progress": 5}, headers=key)
    raw.post("/jobs", json={"id": "job_absent", "jobType": "t", "userId": "u", "title": "t"})
    again = raw.post("/jobs/job_absent/progress", json={"progress": 5}, headers=key)
    assert (first.status_code, again.status_code) == (404, 404)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert raw.get("/jobs/job_absent").json()["progress"] == 0


def test_cors_preflight_and_headers(backend: RunningServer, tmp_path: Path) -> None:
    """Browsers get a preflight answer without a key and CORS headers on every answer."""
    preflight = httpx.options(f"{backend.url}/v1/jobs/x",
                              headers={"Origin": "https://app.example",
                                       "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET"
    assert "If-None-Match" in preflight.headers["Access-Control-Allow-Headers"]
    answer = httpx.get(f"{backend.url}/v1/jobs/x",
                       headers={"Authorization": f"Bearer {backend.public_key}"})
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "ETag" in answer.headers["Access-Control-Expose-Headers"]
    app = seenn.server.create_app(tmp_path / "nocors.db", cors_origin=None)
    with seenn.server.WSGIServer(("127.0.0.1", 0), app) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        closed = httpx.options(f"{server.url}/v1/jobs")
        server.shutdown()
        thread.join()
    app.close()
    assert closed.status_code == 405
    assert "Access-Control-Allow-Origin" not in closed.headers
    assert closed.headers["Allow"] == "GET, POST"


def test_mounting_under_a_prefix_routes_below_it(backend: RunningServer) -> None:
    """Under a WSGI server that mounts the app at /seenn, /seenn/v1/... is routed."""
    import io

    environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/seenn", "PATH_INFO": "/v1/jobs/abc",
               "RAW_URI": "/seenn/v1/jobs/abc", "QUERY_STRING": "",
               "HTTP_AUTHORIZATION": f"Bearer {backend.api_key}",
               "wsgi.input": io.BytesIO(b"")}
    seen: list[str] = []
    body = b"".join(backend.app(environ, lambda status, headers: seen.append(status)))
    assert seen == ["404 Not Found"]
    assert json.loads(body)["error"]["message"] == "job abc not found"


def test_a_public_key_of_another_app_is_refused(db: str) -> None:
    """Registering a public key that another app already has is a ValidationError."""
    seenn.server.create_app(db, api_key="sk_test_a", public_key="pk_test_shared").close()
    with pytest.raises(seenn.ValidationError) as caught:
        seenn.server.create_app(db, api_key="sk_test_b", public_key="pk_test_shared")
    assert caught.value.field == "public_key"


def test_every_method_and_chunked_bodies_get_json_answers(backend: RunningServer) -> None:
    """TRACE is a JSON 405, and a chunked request body is read like any other."""
    import http.client

    port = backend.server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("TRACE", "/v1/jobs")
    trace = conn.getresponse()
    assert trace.status == 405
    assert json.loads(trace.read())["error"]["code"] == "METHOD_NOT_ALLOWED"
    body = json.dumps({"jobType": "t", "userId": "u", "title": "chunked"}).encode()
    conn.request("POST", "/v1/jobs", body=iter([body[:10], body[10:]]),
                 headers={"Authorization": f"Bearer {backend.api_key}",
                          "Content-Type": "application/json"}, encode_chunked=True)
    created = conn.getresponse()
    assert created.status == 201
    assert json.loads(created.read())["title"] == "chunked"
    conn.close()


def test_child_progress_mode_needs_total_children(raw: httpx.Client) -> None:
    """childProgressMode without totalChildren is a 400 naming the field."""
    response = raw.post("/jobs", json={"jobType": "t", "userId": "u", "title": "t",
                                       "childProgressMode": "average"})
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "childProgressMode"


def test_parents_finished_by_their_children_have_started_at(client: seenn.SeennClient) -> None:
    """A declared parent that completes through its children records when it started."""
    parent, children = _family(client, "average", n=1)
    children[0].complete()
    parent.refresh()
    assert parent.status == "completed"
    assert parent.started_at is not None
    assert parent.completed_at is not None


def test_stores_opened_together_on_a_new_sqlite_file_all_open(tmp_path: Path) -> None:
    """Openers switching a new file to WAL at the same moment wait for each other.

    SQLite may answer "database is locked" at once, without its busy handler, to one
    of several connections switching a new file to WAL together (before the fix, about
    one opener in forty failed so). Forty new files, three openers each at a barrier.
    """
    from concurrent.futures import ThreadPoolExecutor

    from seenn.server._sqlite import SQLiteStore

    for round_ in range(40):
        path = str(tmp_path / f"new-{round_}.db")
        together = threading.Barrier(3)

        def open_store(_: int, path: str = path, together: threading.Barrier = together
                       ) -> SQLiteStore:
            together.wait(30)
            return SQLiteStore(path)

        with ThreadPoolExecutor(3) as pool:
            stores = [future.result() for future in
                      [pool.submit(open_store, index) for index in range(3)]]
        for store in stores:
            assert store.apps() == {}
            store.close()
