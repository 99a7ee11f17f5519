"""Several server processes on one database: `seenn serve --workers N` and gunicorn gthread."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import seenn
from seenn.errors import ValidationError
from seenn.exporters import HTTPExporter, SimpleProcessor
from seenn.server import WSGIServer
from seenn.server._engines import open_store
from seenn.server.wsgi import ProcessApp, create_app_from_env, settings_from_env
from tests.polling import wait_until
from tests.processes import (
    PUBLIC,
    SECRET,
    Served,
    alive,
    gunicorn_command,
    serving_pid,
    start_gunicorn,
    start_serve,
)
from tests.tracking_helpers import no_job_left_behind  # noqa: F401 (autouse fixture)

AUTH = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}


@pytest.fixture(params=["serve", "gunicorn"])
def backend(request: pytest.FixtureRequest, db: str) -> Iterator[Served]:
    """Three worker processes on one new database (each engine): `serve --workers`, gunicorn."""
    start = start_serve if request.param == "serve" else start_gunicorn
    served = start(db, 3)
    try:
        yield served
    finally:
        if served.proc.poll() is None:
            served.kill()


def _connect(served: Served) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    status, _, _ = _call(conn, "GET", "/healthz")
    assert status == 200
    return conn


def _call(conn: http.client.HTTPConnection, method: str, path: str,
          body: dict[str, Any] | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, Any, http.client.HTTPMessage]:
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers={**AUTH, **(headers or {})})
    response = conn.getresponse()
    raw = response.read()
    return response.status, json.loads(raw) if raw else None, response.headers


def _on_workers(served: Served, count: int) -> list[http.client.HTTPConnection]:
    """Keep-alive connections, each served by a different worker, ``count`` of them.

    Connections are opened until enough distinct workers have accepted one; the
    others are closed.
    """
    pids = served.workers()
    chosen: dict[int, http.client.HTTPConnection] = {}
    spare = []
    for _ in range(300):
        conn = _connect(served)
        assert conn.sock is not None
        pid = serving_pid(conn.sock, pids)
        if pid is not None and pid not in chosen:
            chosen[pid] = conn
            if len(chosen) == count:
                break
        else:
            spare.append(conn)
    for conn in spare:
        conn.close()
    assert len(chosen) == count, f"connections reached {len(chosen)} of {len(pids)} workers"
    return list(chosen.values())


def test_a_tracked_job_lands_through_the_http_exporter(backend: Served) -> None:
    """A job tracked through the HTTP exporter is stored and reads back, from any worker."""
    exporter = HTTPExporter(api_key=backend.secret, base_url=backend.url,
                            progress_interval=0, heartbeat_interval=None)
    tracker = seenn.Tracker(processors=[SimpleProcessor(exporter)])
    try:
        with tracker.track("video", user_id="alice", title="Cat video",
                           stages=["render", "upload"]) as job:
            with job.stage("render"):
                job.set_progress(30, message="frames")
            with job.stage("upload"):
                job.set_result({"type": "video", "url": "https://cdn.example/cat.mp4"})
        assert exporter.force_flush(timeout=30)
        assert exporter.stats.lost == 0
    finally:
        tracker.shutdown(timeout=30)
    for conn in _on_workers(backend, 2):
        status, stored, _ = _call(conn, "GET", f"/v1/jobs/{job.id}")
        assert status == 200
        assert (stored["status"], stored["progress"], stored["title"]) == (
            "completed", 100, "Cat video")
        assert stored["result"]["url"] == "https://cdn.example/cat.mp4"
        conn.close()


def test_writes_to_one_job_from_different_workers_follow_the_state_machine(
        backend: Served) -> None:
    """Progress then completion arrive at different workers; a late write is 409."""
    one, two = _on_workers(backend, 2)
    status, job, _ = _call(one, "POST", "/v1/jobs",
                           {"jobType": "render", "userId": "bob", "title": "Render"})
    assert status == 201
    path = f"/v1/jobs/{job['id']}"
    assert _call(two, "POST", path + "/progress", {"progress": 40})[0] == 200
    status, seen, _ = _call(one, "GET", path)
    assert (seen["status"], seen["progress"]) == ("running", 40)
    assert _call(one, "POST", path + "/progress", {"progress": 70, "message": "m"})[0] == 200
    status, done, _ = _call(two, "POST", path + "/complete", {"message": "done"})
    assert (status, done["status"], done["progress"]) == (200, "completed", 100)
    status, refused, _ = _call(one, "POST", path + "/progress", {"progress": 80})
    assert (status, refused["error"]["code"]) == (409, "CONFLICT")
    for conn in (one, two):
        status, seen, _ = _call(conn, "GET", path)
        assert (seen["status"], seen["progress"], seen["message"]) == (
            "completed", 100, "done")
        conn.close()


def test_an_idempotent_retry_on_another_worker_replays_the_first_answer(
        backend: Served) -> None:
    """The same Idempotency-Key at a second worker replays the answer; another body is 409."""
    one, two = _on_workers(backend, 2)
    start = {"jobType": "export", "userId": "carol", "title": "Export"}
    key = {"Idempotency-Key": "start-export-1"}
    status, first, _ = _call(one, "POST", "/v1/jobs", start, key)
    assert status == 201
    status, again, headers = _call(two, "POST", "/v1/jobs", start, key)
    assert (status, again) == (201, first)
    assert headers["Idempotent-Replayed"] == "true"
    status, reused, _ = _call(two, "POST", "/v1/jobs", {**start, "title": "Other"}, key)
    assert (status, reused["error"]["code"]) == (409, "IDEMPOTENCY_KEY_REUSED")
    status, page, _ = _call(one, "GET", "/v1/jobs?userId=carol")
    assert [j["id"] for j in page["jobs"]] == [first["id"]]
    one.close()
    two.close()


def test_racing_completions_from_many_connections_end_the_job_once(backend: Served) -> None:
    """Twelve connections complete one job at once: one wins, the rest are 409."""
    conns = _on_workers(backend, 2) + [_connect(backend) for _ in range(10)]
    status, job, _ = _call(conns[0], "POST", "/v1/jobs",
                           {"jobType": "race", "userId": "dan", "title": "Race"})
    assert status == 201
    gate = threading.Barrier(len(conns))
    answers: list[tuple[int, Any]] = [(0, None)] * len(conns)

    def complete(index: int) -> None:
        gate.wait()
        answers[index] = _call(conns[index], "POST", f"/v1/jobs/{job['id']}/complete",
                               {"result": {"data": {"winner": index}}})[:2]

    threads = [threading.Thread(target=complete, args=(i,)) for i in range(len(conns))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = [i for i, (status, _) in enumerate(answers) if status == 200]
    assert len(won) == 1
    assert sorted(status for status, _ in answers) == [200] + [409] * (len(conns) - 1)
    status, stored, _ = _call(conns[0], "GET", f"/v1/jobs/{job['id']}")
    assert stored["result"]["data"] == {"winner": won[0]}
    for conn in conns:
        conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_main_process_stops_every_worker(backend: Served, sig: int) -> None:
    """SIGTERM or SIGINT to the main process: it exits 0 and no worker is left running."""
    workers = backend.workers()
    assert len(workers) == 3
    conn = _connect(backend)
    assert backend.stop(sig) == 0
    wait_until(lambda: not any(alive(pid) for pid in workers), what="the workers to end")
    conn.close()


def test_a_killed_serve_worker_is_reported_and_replaced(tmp_path: Path) -> None:
    """A worker killed with SIGKILL is reported on stderr and a new one serves."""
    served = start_serve(tmp_path / "k.db", 3)
    try:
        before = served.workers()
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        served.line(f"worker process {victim} was killed by signal 9")
        after = wait_until(lambda: (w := served.workers()) - before and len(w) == 3 and w,
                           what="a new worker")
        assert victim not in after
        for conn in _on_workers(served, 3):
            assert _call(conn, "GET", "/v1/jobs?userId=u")[0] == 200
            conn.close()
        assert served.stop() == 0
        wait_until(lambda: not any(alive(pid) for pid in after), what="the workers to end")
    finally:
        if served.proc.poll() is None:
            served.kill()


def test_serve_workers_on_a_new_database_make_one_key_pair(db: str) -> None:
    """Without keys, a new database gets one key pair, printed once, valid at every worker."""
    served = start_serve(db, 3, keys=False)
    try:
        secrets = [line for line in served.seen if "secret key" in line]
        assert len(secrets) == 1
        secret = secrets[0].split()[-1]
        for conn in _on_workers(served, 3):
            status, _, _ = _call(conn, "GET", "/v1/jobs?userId=u",
                                 headers={"Authorization": f"Bearer {secret}"})
            assert status == 200
            conn.close()
        assert sum("listening on" in line for line in served.seen) == 1
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.kill()
    assert _apps(db) == 1


def _apps(db: str) -> int:
    """How many apps the database holds, read with the store itself (either engine)."""
    store = open_store(db)
    try:
        return len(store.signing_keys())
    finally:
        store.close()


def test_gunicorn_workers_on_a_new_database_register_one_app(db: str) -> None:
    """Four gunicorn workers booting together on a new database register the pair once."""
    served = start_gunicorn(db, 4)
    try:
        for conn in _on_workers(served, 2):
            assert _call(conn, "GET", "/v1/jobs?userId=u")[0] == 200
            status, _, _ = _call(conn, "GET", "/v1/jobs/job_none",
                                 headers={"Authorization": f"Bearer {PUBLIC}"})
            assert status == 404
            conn.close()
    finally:
        served.stop()
    assert _apps(db) == 1


def test_gunicorn_with_preload_serves_from_apps_made_after_the_fork(tmp_path: Path) -> None:
    """With --preload the master makes the app first; every worker still serves writes."""
    served = start_gunicorn(tmp_path / "pre.db", 2, "--preload")
    try:
        one, two = _on_workers(served, 2)
        status, job, _ = _call(one, "POST", "/v1/jobs",
                               {"jobType": "p", "userId": "u", "title": "Preloaded"})
        assert status == 201
        assert _call(two, "POST", f"/v1/jobs/{job['id']}/complete", {})[0] == 200
        assert _call(one, "GET", f"/v1/jobs/{job['id']}")[1]["status"] == "completed"
        one.close()
        two.close()
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.kill()


def test_gunicorn_refuses_to_start_without_both_keys(tmp_path: Path) -> None:
    """No public key: the worker fails to boot naming the variable; the key is not shown."""
    command, env = gunicorn_command(tmp_path / "bad.db", 1,
                                    env={"SEENN_SERVER_PUBLIC_KEY": ""})
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "SEENN_SERVER_PUBLIC_KEY" in out.stderr
    assert SECRET not in out.stderr
    assert not (tmp_path / "bad.db").exists()


def _raw(served: Served, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_gunicorn_reads_a_chunked_body_within_the_cap(tmp_path: Path) -> None:
    """A chunked start is read whole; a chunked body past 512 KB is 413."""
    served = start_gunicorn(tmp_path / "c.db", 1)
    try:
        body = json.dumps({"jobType": "c", "userId": "u", "title": "Chunked"}).encode()
        head = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                SECRET.encode() + b"\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        answer = _raw(served, head + chunked)
        assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
        big = b"x" * 65536
        flood = b"".join(b"%x\r\n%s\r\n" % (len(big), big) for _ in range(9)) + b"0\r\n\r\n"
        answer = _raw(served, head + flood)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.kill()


# The entry point in this process ---------------------------------------------------------

ENV = {"SEENN_SERVER_DB": "x.db", "SEENN_SERVER_API_KEY": SECRET,
       "SEENN_SERVER_PUBLIC_KEY": PUBLIC}


@pytest.mark.parametrize(("change", "named"), [
    ({"SEENN_SERVER_DB": ""}, "SEENN_SERVER_DB"),
    ({"SEENN_SERVER_API_KEY": ""}, "SEENN_SERVER_API_KEY"),
    ({"SEENN_SERVER_PUBLIC_KEY": ""}, "SEENN_SERVER_PUBLIC_KEY"),
    ({"SEENN_SERVER_API_KEY": f" {SECRET}"}, "SEENN_SERVER_API_KEY"),
    ({"SEENN_SERVER_RATE_LIMIT": "0"}, "SEENN_SERVER_RATE_LIMIT"),
    ({"SEENN_SERVER_RATE_LIMIT": "2.5"}, "SEENN_SERVER_RATE_LIMIT"),
    ({"SEENN_SERVER_RATE_LIMIT": "many"}, "SEENN_SERVER_RATE_LIMIT"),
    ({"SEENN_SERVER_STALE_AFTER": "5"}, "SEENN_SERVER_STALE_AFTER"),
    ({"SEENN_SERVER_STALE_AFTER": "nan"}, "SEENN_SERVER_STALE_AFTER"),
    ({"SEENN_SERVER_MAX_EVENTS": "-1"}, "SEENN_SERVER_MAX_EVENTS"),
    ({"SEENN_SERVER_MAX_EVENTS": "10001"}, "SEENN_SERVER_MAX_EVENTS"),
    ({"SEENN_SERVER_MAX_EVENTS": "2.5"}, "SEENN_SERVER_MAX_EVENTS"),
    ({"SEENN_SERVER_MAX_WAITERS": "-1"}, "SEENN_SERVER_MAX_WAITERS"),
    ({"SEENN_SERVER_MAX_WAITERS": "1.5"}, "SEENN_SERVER_MAX_WAITERS"),
])
def test_a_bad_setting_is_refused_naming_its_variable(change: dict[str, str],
                                                       named: str) -> None:
    """Each missing or invalid variable is a ValidationError that names it, not a key."""
    with pytest.raises(ValidationError) as caught:
        settings_from_env({**ENV, **change})
    assert caught.value.details["field"] == named
    assert SECRET not in str(caught.value)


def test_settings_pass_the_database_through_untouched() -> None:
    """The database setting reaches create_app as given (a path or a URL), options parsed."""
    db, options = settings_from_env({
        **ENV, "SEENN_SERVER_DB": "postgresql://seenn@db/seenn",
        "SEENN_SERVER_RATE_LIMIT": "50", "SEENN_SERVER_STALE_AFTER": "0",
        "SEENN_SERVER_CORS_ORIGIN": "", "SEENN_SERVER_MAX_EVENTS": "0",
        "SEENN_SERVER_MAX_WAITERS": "4"})
    assert db == "postgresql://seenn@db/seenn"
    assert options == {"api_key": SECRET, "public_key": PUBLIC, "rate_limit": 50,
                       "stale_after": 0.0, "cors_origin": None, "max_events": 0,
                       "max_waiters": 4}
    # Long polls hold a gthread thread each: off unless the operator sizes them.
    assert settings_from_env(ENV)[1]["max_waiters"] == 0


def test_the_module_app_is_made_from_the_environment(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`seenn.server.wsgi:app` is made on first look-up and serves under any WSGI server."""
    import seenn.server.wsgi as entry

    monkeypatch.delitem(entry.__dict__, "app", raising=False)
    for name, value in {**ENV, "SEENN_SERVER_DB": str(tmp_path / "m.db")}.items():
        monkeypatch.setenv(name, value)
    app = entry.app
    assert isinstance(app, ProcessApp)
    assert entry.app is app
    server = WSGIServer(("127.0.0.1", 0), app)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with seenn.SeennClient(SECRET, base_url=server.url) as client:
            job = client.jobs.start("m", user_id="u", title="Module app")
            assert client.jobs.get(job.id).status == "pending"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        app.close()
    fresh = create_app_from_env({**ENV, "SEENN_SERVER_DB": str(tmp_path / "m.db")})
    assert fresh.app.created_keys is None
    fresh.close()


@pytest.mark.parametrize("count", ["0", "65", "two"])
def test_serve_refuses_a_worker_count_out_of_range(tmp_path: Path, count: str) -> None:
    """--workers takes 1 to 64: anything else is a usage error before a database exists."""
    out = subprocess.run([sys.executable, "-m", "seenn", "serve", "--port", "0", "--db",
                          str(tmp_path / "w.db"), "--workers", count],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--workers" in out.stderr
    assert not (tmp_path / "w.db").exists()


def test_two_gateways_serve_one_listening_socket(tmp_path: Path) -> None:
    """WSGIServer(sock=...) serves a socket bound elsewhere; each of two serves its share."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    app = seenn.server.create_app(tmp_path / "s.db", api_key=SECRET, public_key=PUBLIC)
    # A descriptor each, as each forked worker has.
    servers = [WSGIServer(("", 0), app, sock=socket.socket(fileno=os.dup(listener.fileno())))
               for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05})
               for s in servers]
    for thread in threads:
        thread.start()
    try:
        port = listener.getsockname()[1]
        assert servers[0].url == servers[1].url == f"http://127.0.0.1:{port}"
        with seenn.SeennClient(SECRET, base_url=servers[0].url) as client:
            job = client.jobs.start("s", user_id="u", title="Shared socket")
        servers[0].shutdown()
        servers[0].server_close()  # closes its descriptor only; the other keeps serving
        with seenn.SeennClient(SECRET, base_url=servers[1].url) as client:
            assert client.jobs.get(job.id).title == "Shared socket"
    finally:
        for server in servers[1:]:
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join()
        listener.close()
        app.close()


def test_serve_workers_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL to the parent (no chance to stop anyone): the workers still end."""
    served = start_serve(tmp_path / "orphans.db", 3)
    workers = served.workers()
    try:
        assert served.stop(signal.SIGKILL) == -signal.SIGKILL
        wait_until(lambda: not any(alive(pid) for pid in workers), what="the workers to end")
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# A `seenn serve` whose workers cannot open the database the parent opened.
_FAILING_WORKERS = """
import os, sys
import seenn.server
from seenn.server._engines import open_store
from seenn._cli.main import main

parent, real = os.getpid(), seenn.server.create_app

def create_app(*args, **kwargs):
    if os.getpid() != parent:
        raise OSError("the disk went away")
    return real(*args, **kwargs)

seenn.server.create_app = create_app
sys.exit(main(sys.argv[1:]))
"""


def test_serve_stops_when_a_worker_dies_before_it_is_ready(tmp_path: Path) -> None:
    """Workers that fail to start would fail again: exit 1 in one line, no worker left."""
    out = subprocess.run(
        [sys.executable, "-c", _FAILING_WORKERS, "serve", "--port", "0", "--db",
         str(tmp_path / "f.db"), "--workers", "3", "--api-key", SECRET, "--public-key", PUBLIC],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "listening" not in out.stdout
    assert "cannot open database" in out.stderr
    assert "before it was ready; stopping" in out.stderr.splitlines()[-1]
    assert "Traceback" not in out.stderr


def test_serve_workers_keep_the_gateway_deadlines(tmp_path: Path) -> None:
    """Each worker applies --header-timeout: a client that stops mid-headers gets 408."""
    served = start_serve(tmp_path / "slow.db", 2, "--header-timeout", "1")
    try:
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
            sock.sendall(b"GET /v1/jobs?userId=u HTTP/1.1\r\nHost: x\r\n")  # no blank line
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert b'"REQUEST_TIMEOUT"' in answer
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.kill()
