"""`seenn serve`: batched reads (`GET /v1/jobs?ids=`), caching headers, long polls (`?wait=`)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import seenn
import seenn.server
from seenn.server import RunningServer
from seenn.server._changes import ChangeFeed
from seenn.server._engines import open_store
from tests.polling import wait_until


@pytest.fixture
def client(backend: RunningServer) -> Iterator[seenn.SeennClient]:
    """A SeennClient with the backend's secret key and no retries."""
    with seenn.SeennClient(backend.api_key, base_url=backend.url, max_retries=0) as c:
        yield c


def _http(backend: RunningServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=backend.url + "/v1", timeout=60.0,
                        headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def raw(backend: RunningServer) -> Iterator[httpx.Client]:
    """A raw httpx client with the secret key."""
    with _http(backend, backend.api_key) as c:
        yield c


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """Threads for requests that wait."""
    with ThreadPoolExecutor(max_workers=8) as executor:
        yield executor


def _ids(*ids: str) -> dict[str, str]:
    return {"ids": ",".join(ids)}


# Batched reads ---------------------------------------------------------------------------


def test_ids_answers_the_jobs_in_the_order_asked_and_names_the_missing(
        raw: httpx.Client, client: seenn.SeennClient) -> None:
    """Jobs come back in the order asked, repeats once, unknown ids under `missing`."""
    a = client.jobs.start("t", user_id="u", title="A")
    b = client.jobs.start("t", user_id="v", title="B")
    answer = raw.get("/jobs", params=_ids(b.id, "nope", a.id, b.id))
    assert answer.status_code == 200
    body = answer.json()
    assert [job["id"] for job in body["jobs"]] == [b.id, a.id]
    assert body["missing"] == ["nope"]
    assert body["jobs"][0] == raw.get(f"/jobs/{b.id}").json()
    repeated = raw.get("/jobs", params=[("ids", a.id), ("ids", f"{b.id},{a.id}")]).json()
    assert [job["id"] for job in repeated["jobs"]] == [a.id, b.id]


@pytest.mark.parametrize(("params", "why"), [
    ({"ids": ""}, "empty"),
    ({"ids": "a,,b"}, "empty id"),
    ({"ids": "a,"}, "trailing comma"),
    ({"ids": "x" * 256}, "id too long"),
    ({"ids": ",".join(f"j{i}" for i in range(101))}, "101 distinct ids"),
    ({"ids": "a", "userId": "u"}, "with userId"),
    ({"ids": "a", "limit": "5"}, "with limit"),
    ({"ids": "a", "cursor": "x"}, "with cursor"),
])
def test_bad_ids_are_400_naming_ids(raw: httpx.Client, params: dict[str, str], why: str) -> None:
    """An empty list, an empty or overlong id, over 100 ids, or list parameters: 400 on ids."""
    answer = raw.get("/jobs", params=params)
    assert answer.status_code == 400, why
    assert answer.json()["error"]["code"] == "VALIDATION_ERROR"
    assert answer.json()["error"]["details"]["field"] == "ids"


def test_a_hundred_distinct_ids_with_repeats_are_fine(raw: httpx.Client) -> None:
    """The limit counts distinct ids: 100 of them, each given twice, is one read."""
    ids = [f"j{i}" for i in range(100)]
    answer = raw.get("/jobs", params=_ids(*ids, *ids))
    assert answer.status_code == 200
    assert answer.json() == {"jobs": [], "missing": ids}


def test_public_keys_read_by_ids_and_tokens_only_their_users_jobs(
        backend: RunningServer, client: seenn.SeennClient) -> None:
    """pk_ reads any job by id; a ut_ token sees another user's job as missing."""
    mine = client.jobs.start("t", user_id="alice", title="A")
    theirs = client.jobs.start("t", user_id="bob", title="B")
    token = client.create_token("alice").token
    assert backend.public_key is not None
    with _http(backend, backend.public_key) as public, _http(backend, token) as user:
        by_public = public.get("/jobs", params=_ids(mine.id, theirs.id)).json()
        assert [job["id"] for job in by_public["jobs"]] == [mine.id, theirs.id]
        assert public.get("/jobs").status_code == 403  # listing stays refused
        by_token = user.get("/jobs", params=_ids(mine.id, theirs.id)).json()
        assert [job["id"] for job in by_token["jobs"]] == [mine.id]
        assert by_token["missing"] == [theirs.id]
        assert user.get(f"/jobs/{theirs.id}").status_code == 404


def test_other_apps_jobs_are_missing(tmp_path: Path) -> None:
    """Ids are scoped to the key's app: another app's job is missing."""
    db = tmp_path / "a.db"
    seenn.server.create_app(db, api_key="sk_test_other").close()
    with seenn.server.running(db, api_key="sk_test_mine") as srv, \
            seenn.SeennClient("sk_test_mine", base_url=srv.url) as client, \
            _http(srv, "sk_test_other") as other:
        job = client.jobs.start("t", user_id="u", title="T")
        answer = other.get("/jobs", params=_ids(job.id))
        assert answer.json() == {"jobs": [], "missing": [job.id]}


def test_one_etag_over_the_answer_and_304_until_any_job_changes(
        raw: httpx.Client, client: seenn.SeennClient) -> None:
    """If-None-Match with the combined ETag is 304 until one of the jobs changes."""
    a = client.jobs.start("t", user_id="u", title="A")
    b = client.jobs.start("t", user_id="u", title="B")
    first = raw.get("/jobs", params=_ids(a.id, b.id))
    etag = first.headers["ETag"]
    again = raw.get("/jobs", params=_ids(a.id, b.id), headers={"If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", etag)
    b.set_progress(10)
    changed = raw.get("/jobs", params=_ids(a.id, b.id), headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    assert changed.json()["jobs"][1]["progress"] == 10
    # Another order is another answer, and another tag.
    assert raw.get("/jobs", params=_ids(b.id, a.id)).headers["ETag"] != changed.headers["ETag"]


def test_a_stale_job_read_by_ids_is_ended_first(tmp_path: Path) -> None:
    """A running job past its stale limit reads failed with WORKER_LOST in a batched read."""
    now = [1_000_000.0]
    with seenn.server.running(tmp_path / "s.db", stale_after=60, clock=lambda: now[0]) as srv, \
            _http(srv, srv.api_key) as raw:
        job = raw.post("/jobs", json={"jobType": "t", "userId": "u", "title": "T"}).json()
        raw.post(f"/jobs/{job['id']}/progress", json={"progress": 5})
        now[0] += 61
        body = raw.get("/jobs", params=_ids(job["id"])).json()
        assert body["jobs"][0]["status"] == "failed"
        assert body["jobs"][0]["error"]["code"] == "WORKER_LOST"


def test_transaction_get_many_and_changed(db: str) -> None:
    """get_many reads live jobs of the app by id; a write transaction records what it wrote."""
    store = open_store(db)
    seen: list[tuple[str, frozenset[str]]] = []
    store.on_commit.append(lambda app, ids: seen.append((app, ids)))
    job = {"id": "j1", "userId": "u", "status": "pending"}
    with store.write("app") as tx:
        tx.insert(job, start_hash="h", expires_at=tx.now + 60)
        tx.insert({**job, "id": "j2"}, start_hash="h", expires_at=tx.now - 1)
        assert tx.changed == {"j1", "j2"}
    with store.write("app") as tx:
        stored = tx.get("j1")
        assert stored is not None
        tx.update({**job, "status": "running"}, seq=stored.seq)
    with store.write("app") as tx:
        assert tx.get("j1") is not None  # a read-only write transaction tells nobody
    assert seen == [("app", frozenset({"j1", "j2"})), ("app", frozenset({"j1"}))]
    with store.read("app") as tx:
        found = tx.get_many(["j2", "j1", "j3", "j1"])
    assert list(found) == ["j1"]
    assert found["j1"].data["status"] == "running"
    with store.read("other") as tx:
        assert tx.get_many(["j1"]) == {}
    store.close()


# Cache-Control ---------------------------------------------------------------------------


def test_cache_headers_share_only_public_key_reads(
        backend: RunningServer, client: seenn.SeennClient) -> None:
    """pk_ reads may be kept a second by shared caches (per key); others are private."""
    job = client.jobs.start("t", user_id="u", title="T")
    token = client.create_token("u").token
    assert backend.public_key is not None
    with _http(backend, backend.public_key) as public, _http(backend, token) as user, \
            _http(backend, backend.api_key) as secret:
        for http, expected in ((public, "public, max-age=1"), (user, "private, no-cache"),
                               (secret, "private, no-cache")):
            for answer in (http.get(f"/jobs/{job.id}"), http.get("/jobs", params=_ids(job.id))):
                assert answer.headers["Cache-Control"] == expected
                assert "Authorization" in answer.headers.get_list("Vary")
                tagged = http.get(answer.url, headers={"If-None-Match": answer.headers["ETag"]})
                assert tagged.status_code == 304
                assert tagged.headers["Cache-Control"] == expected
        long_poll = public.get(f"/jobs/{job.id}", params={"wait": "0.001"},
                               headers={"If-None-Match": '"other"'})
        assert long_poll.headers["Cache-Control"] == "private, no-cache"


# Long polls ------------------------------------------------------------------------------


def _wait_for(http: httpx.Client, path: str, etag: str, seconds: float = 30,
              params: dict[str, str] | None = None) -> httpx.Response:
    return http.get(path, params={**(params or {}), "wait": str(seconds)},
                    headers={"If-None-Match": etag})


def _waiting(srv: RunningServer, count: int = 1) -> Callable[[], bool]:
    return lambda: srv.app.changes.waiting == count


def test_a_long_poll_answers_when_this_process_changes_the_job(
        backend: RunningServer, raw: httpx.Client, client: seenn.SeennClient,
        pool: ThreadPoolExecutor) -> None:
    """A waiting GET answers 200 with the new job as soon as a write of this process lands."""
    job = client.jobs.start("t", user_id="u", title="T")
    etag = raw.get(f"/jobs/{job.id}").headers["ETag"]
    answer = pool.submit(_wait_for, raw, f"/jobs/{job.id}", etag)
    wait_until(_waiting(backend), what="the long poll to wait")
    job.set_progress(40, message="Rendering")
    got = answer.result(timeout=60)
    assert got.status_code == 200
    assert (got.json()["progress"], got.json()["message"]) == (40, "Rendering")
    assert got.json() == raw.get(f"/jobs/{job.id}").json()
    assert got.headers["ETag"] == raw.get(f"/jobs/{job.id}").headers["ETag"]
    assert backend.app.changes.waiting == 0


def test_a_long_poll_answers_when_another_app_on_the_file_changes_the_job(
        db: str, pool: ThreadPoolExecutor) -> None:
    """A write by a second server on the same database wakes the waiter: on SQLite by
    its poll, on PostgreSQL by the write's NOTIFY."""
    key = "sk_test_shared"
    with seenn.server.running(db, api_key=key) as first, \
            seenn.server.running(db, api_key=key) as second, \
            _http(first, key) as watcher, \
            seenn.SeennClient(key, base_url=second.url) as writer:
        job = writer.jobs.start("t", user_id="u", title="T")
        etag = watcher.get(f"/jobs/{job.id}").headers["ETag"]
        answer = pool.submit(_wait_for, watcher, f"/jobs/{job.id}", etag)
        wait_until(_waiting(first), what="the long poll to wait")
        job.set_progress(70)
        got = answer.result(timeout=60)
        assert (got.status_code, got.json()["progress"]) == (200, 70)


def test_a_long_poll_answers_when_a_seenn_serve_process_changes_the_job(
        db: str, pool: ThreadPoolExecutor) -> None:
    """A write through `seenn serve` in another process wakes a waiter of this one."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from _serve import start_server
    finally:
        sys.path.pop(0)
    key = "sk_test_procs"
    with seenn.server.running(db, api_key=key) as here:
        served = start_server(db, "--api-key", key)
        try:
            with _http(here, key) as watcher, \
                    seenn.SeennClient(key, base_url=served.url) as writer:
                job = writer.jobs.start("t", user_id="u", title="T")
                etag = watcher.get(f"/jobs/{job.id}").headers["ETag"]
                answer = pool.submit(_wait_for, watcher, f"/jobs/{job.id}", etag)
                wait_until(_waiting(here), what="the long poll to wait")
                job.complete(message="done")
                got = answer.result(timeout=60)
                assert (got.status_code, got.json()["status"]) == (200, "completed")
        finally:
            served.stop()


def test_a_long_poll_on_ids_answers_when_any_of_them_changes(
        backend: RunningServer, raw: httpx.Client, client: seenn.SeennClient,
        pool: ThreadPoolExecutor) -> None:
    """?ids= with wait answers when one of its jobs changes, with the whole new answer."""
    a = client.jobs.start("t", user_id="u", title="A")
    b = client.jobs.start("t", user_id="u", title="B")
    etag = raw.get("/jobs", params=_ids(a.id, b.id, "gone")).headers["ETag"]
    answer = pool.submit(_wait_for, raw, "/jobs", etag, 30, _ids(a.id, b.id, "gone"))
    wait_until(_waiting(backend), what="the long poll to wait")
    client.jobs.start("t", user_id="u", title="C")  # another job: no answer yet
    b.set_progress(3)
    got = answer.result(timeout=60)
    assert got.status_code == 200
    assert [job["progress"] for job in got.json()["jobs"]] == [0, 3]
    assert got.json()["missing"] == ["gone"]


def test_a_long_poll_times_out_with_304(raw: httpx.Client, client: seenn.SeennClient) -> None:
    """Nothing changes within `wait`: 304 with the same tag."""
    job = client.jobs.start("t", user_id="u", title="T")
    etag = raw.get(f"/jobs/{job.id}").headers["ETag"]
    got = _wait_for(raw, f"/jobs/{job.id}", etag, seconds=0.05)
    assert (got.status_code, got.headers["ETag"]) == (304, etag)


def test_a_long_poll_answers_at_once_when_the_job_already_changed(
        raw: httpx.Client, client: seenn.SeennClient) -> None:
    """A stale tag, no tag, or an unknown job: the plain answer, whatever `wait` says."""
    job = client.jobs.start("t", user_id="u", title="T")
    old = raw.get(f"/jobs/{job.id}").headers["ETag"]
    job.set_progress(9)
    assert _wait_for(raw, f"/jobs/{job.id}", old).json()["progress"] == 9
    assert raw.get(f"/jobs/{job.id}", params={"wait": "30"}).status_code == 200
    assert _wait_for(raw, "/jobs/nope", old).status_code == 404


@pytest.mark.parametrize("wait", ["0", "-1", "30.001", "31", "abc", "nan", "inf", "1e1",
                                  "1.2345", "", " 1", "١"])
def test_bad_wait_is_400_naming_wait(raw: httpx.Client, client: seenn.SeennClient,
                                     wait: str) -> None:
    """wait must be a number of seconds in (0, 30] with at most 3 decimals."""
    job = client.jobs.start("t", user_id="u", title="T")
    for path, params in ((f"/jobs/{job.id}", {}), ("/jobs", _ids(job.id))):
        answer = raw.get(path, params={**params, "wait": wait})
        assert answer.status_code == 400, wait
        assert answer.json()["error"]["details"]["field"] == "wait"
    twice = raw.get(f"/jobs/{job.id}", params=[("wait", "1"), ("wait", "2")])
    assert twice.status_code == 400


def test_waiters_past_the_bound_get_a_plain_answer(
        tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    """With max_waiters=1, a second long poll is answered at once (304) and counted."""
    with seenn.server.running(tmp_path / "b.db", max_waiters=1) as srv, \
            _http(srv, srv.api_key) as raw, \
            seenn.SeennClient(srv.api_key, base_url=srv.url) as client:
        job = client.jobs.start("t", user_id="u", title="T")
        etag = raw.get(f"/jobs/{job.id}").headers["ETag"]
        first = pool.submit(_wait_for, raw, f"/jobs/{job.id}", etag)
        wait_until(_waiting(srv), what="the first long poll to wait")
        with _http(srv, srv.api_key) as other:
            turned = _wait_for(other, f"/jobs/{job.id}", etag)
        assert turned.status_code == 304
        assert (srv.app.changes.turned_away, srv.app.changes.waiting) == (1, 1)
        job.set_progress(1)
        assert first.result(timeout=60).status_code == 200


def test_long_polls_off_answer_at_once_and_are_not_advertised(tmp_path: Path) -> None:
    """max_waiters=0: healthz lists no `wait`, and ?wait= answers as a plain poll."""
    with seenn.server.running(tmp_path / "off.db", max_waiters=0) as srv, \
            _http(srv, srv.api_key) as raw:
        assert "wait" not in httpx.get(srv.url + "/v1/healthz").json()["extensions"]
        job = raw.post("/jobs", json={"jobType": "t", "userId": "u", "title": "T"}).json()
        etag = raw.get(f"/jobs/{job['id']}").headers["ETag"]
        assert _wait_for(raw, f"/jobs/{job['id']}", etag).status_code == 304


def test_healthz_advertises_batched_reads_and_long_polls(backend: RunningServer) -> None:
    """GET /v1/healthz lists jobsByIds (maxIds) and wait (maxSeconds)."""
    extensions = httpx.get(backend.url + "/v1/healthz").json()["extensions"]
    assert extensions["jobsByIds"] == {"maxIds": 100}
    assert extensions["wait"] == {"maxSeconds": 30}


def test_closing_the_app_wakes_the_waiters(
        tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    """Server shutdown answers a waiting long poll at once (304) instead of holding it."""
    srv_cm = seenn.server.running(tmp_path / "close.db")
    srv = srv_cm.__enter__()
    raw = _http(srv, srv.api_key)
    try:
        job = raw.post("/jobs", json={"jobType": "t", "userId": "u", "title": "T"}).json()
        etag = raw.get(f"/jobs/{job['id']}").headers["ETag"]
        answer: Future[httpx.Response] = pool.submit(_wait_for, raw, f"/jobs/{job['id']}", etag)
        wait_until(_waiting(srv), what="the long poll to wait")
    finally:
        srv_cm.__exit__(None, None, None)
    assert answer.result(timeout=60).status_code == 304
    assert srv.app.changes.closed
    raw.close()


# Hostile clients -------------------------------------------------------------------------


def _raw_long_poll(srv: RunningServer, job_id: str, etag: str) -> socket.socket:
    sock = socket.create_connection((srv.server.server_address[0],
                                     srv.server.server_address[1]), timeout=60)
    sock.sendall(f"GET /v1/jobs/{job_id}?wait=30 HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {srv.api_key}\r\nIf-None-Match: {etag}\r\n\r\n"
                 .encode())
    return sock


def _status(sock: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        data = sock.recv(4096)
        assert data, "closed without an answer"
        head += data
    return int(head.split(b" ", 2)[1])


def test_many_slow_waiters_never_starve_writes(tmp_path: Path) -> None:
    """Raw sockets that wait and never read fill the bound; writes still go through, and
    waiters past the bound are answered at once; one write wakes them all."""
    with seenn.server.running(tmp_path / "h.db", max_waiters=8) as srv, \
            _http(srv, srv.api_key) as raw, \
            seenn.SeennClient(srv.api_key, base_url=srv.url, max_retries=0) as client:
        job = client.jobs.start("t", user_id="u", title="T")
        etag = raw.get(f"/jobs/{job.id}").headers["ETag"]
        held = [_raw_long_poll(srv, job.id, etag) for _ in range(8)]
        wait_until(_waiting(srv, 8), what="eight long polls to wait")
        extra = [_raw_long_poll(srv, job.id, etag) for _ in range(4)]
        assert [_status(sock) for sock in extra] == [304] * 4
        assert srv.app.changes.turned_away == 4  # answered at once, not after waiting
        others = [client.jobs.start("t", user_id="u", title=f"W{i}") for i in range(20)]
        for other in others:
            other.complete()
        assert client.jobs.get(others[-1].id).status == "completed"
        job.set_progress(50)
        assert [_status(sock) for sock in held] == [200] * 8
        for sock in held + extra:
            sock.close()
        wait_until(_waiting(srv, 0), what="the waiters to leave")


def test_a_flood_of_waiters_and_writers_ends_consistent(
        backend: RunningServer, pool: ThreadPoolExecutor) -> None:
    """Waiters and writers racing on one job: every waiter ends with an answer."""
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
        job = client.jobs.start("t", user_id="u", title="T")
    clients = [_http(backend, backend.api_key) for _ in range(4)]
    try:
        def watcher(http: httpx.Client) -> list[int]:
            progress: list[int] = []
            etag = '"none"'
            while not progress or progress[-1] < 100:
                got = _wait_for(http, f"/jobs/{job.id}", etag)
                if got.status_code == 200:
                    etag = got.headers["ETag"]
                    progress.append(got.json()["progress"])
            return progress

        watchers = [pool.submit(watcher, http) for http in clients]
        with seenn.SeennClient(backend.api_key, base_url=backend.url) as writer:
            for value in range(1, 100, 7):
                writer._http.request("POST", f"/jobs/{job.id}/progress",
                                     json={"progress": value})
            writer._http.request("POST", f"/jobs/{job.id}/complete", json={})
        results: list[Any] = [w.result(timeout=120) for w in watchers]
        for progress in results:
            assert progress == sorted(progress) and progress[-1] == 100
    finally:
        for http in clients:
            http.close()


def test_waiting_holds_no_database_connection(
        backend: RunningServer, client: seenn.SeennClient, pool: ThreadPoolExecutor) -> None:
    """Waiters keep no pooled connection busy: writes and reads go on meanwhile."""
    job = client.jobs.start("t", user_id="u", title="T")
    clients = [_http(backend, backend.api_key) for _ in range(4)]
    try:
        etag = clients[0].get(f"/jobs/{job.id}").headers["ETag"]
        answers = [pool.submit(_wait_for, http, f"/jobs/{job.id}", etag) for http in clients]
        wait_until(_waiting(backend, 4), what="four long polls to wait")
        for i in range(30):
            client.jobs.start("t", user_id="u", title=f"{i}")
        assert len(client.jobs.list("u", limit=100).jobs) == 31
        job.complete()
        assert {a.result(timeout=60).status_code for a in answers} == {200}
    finally:
        for http in clients:
            http.close()


def test_if_none_match_star_never_waits(backend: RunningServer, raw: httpx.Client,
                                        client: seenn.SeennClient) -> None:
    """`*` matches whatever the job becomes, so a long poll with it answers at once (304)."""
    job = client.jobs.start("t", user_id="u", title="T")
    # Were it to wait, the 30 s wait would outlast the 20 s timeout and fail the test.
    got = raw.get(f"/jobs/{job.id}", params={"wait": "30"}, headers={"If-None-Match": "*"},
                  timeout=20)
    assert got.status_code == 304
    assert backend.app.changes.turned_away == 0


def test_a_failing_commit_callback_never_fails_the_write(
        db: str, caplog: pytest.LogCaptureFixture) -> None:
    """The write is committed before the callbacks run: one that raises is logged, the
    others still run, and the write's caller sees no error."""
    store = open_store(db)
    seen: list[frozenset[str]] = []

    def broken(app_id: str, ids: frozenset[str]) -> None:
        raise RuntimeError("boom")

    store.on_commit += [broken, lambda app_id, ids: seen.append(ids)]
    with store.write("app") as tx:
        tx.insert({"id": "j1", "userId": "u", "status": "pending"}, start_hash="h",
                  expires_at=tx.now + 60)
    assert seen == [frozenset({"j1"})]
    assert "a commit callback failed" in caplog.text
    with store.read("app") as tx:
        assert tx.get("j1") is not None
    store.close()


def test_the_change_feed_starts_afresh_after_a_fork() -> None:
    """A forked worker (gunicorn --preload) inherits neither the waiters nor the poll
    thread (whose lock it may hold at the fork): its own waiter is the only one there."""
    feed = ChangeFeed(max_waiters=4, versions=lambda keys: {}, poll_interval=0.001)
    with feed.watching("app", ["j"]) as waiter:
        assert waiter is not None and feed.waiting == 1
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            status = 1
            try:
                with feed.watching("app", ["j"]) as mine:
                    alone = mine is not None and feed.waiting == 1
                    feed.notify("app", ["j"])
                    status = 0 if alone and mine is not None and mine.wait(5) else 2
                feed.close()
            finally:
                os._exit(status)
        _, code = os.waitpid(pid, 0)
        assert feed.waiting == 1
    assert os.waitstatus_to_exitcode(code) == 0
    feed.close()
