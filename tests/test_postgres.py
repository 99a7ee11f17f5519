"""Several `seenn serve` processes on one PostgreSQL database behave as one backend.

Each test starts real `seenn serve` subprocesses on a database of the session's
PostgreSQL server. A round-robin proxy in the test sends each request to the next
process, so the writes of one job arrive at different processes.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

import seenn
from seenn.conformance import format_table, run_checks
from seenn.server import WSGIServer
from seenn.server._engines import open_store
from seenn.server._postgres import PostgresStore
from seenn.server._store import Store
from tests.adversarial.conftest import PUBLIC, SECRET, Served, start_server, stop_server
from tests.pg import PostgresServer
from tests.polling import wait_until

PROCESSES = 3


class RoundRobin:
    """A WSGI app that forwards each request to the next backend in turn."""

    def __init__(self, urls: list[str]) -> None:
        self._clients = [httpx.Client(base_url=url, timeout=30) for url in urls]
        self._next = itertools.cycle(range(len(urls)))
        self._lock = threading.Lock()
        self.sent = [0] * len(urls)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with self._lock:
            index = next(self._next)
            self.sent[index] += 1
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {name[5:].replace("_", "-").title(): value
                   for name, value in environ.items() if name.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers.pop("Host", None)
        query = environ.get("QUERY_STRING")
        path = quote(environ["PATH_INFO"].encode("latin-1"), safe="/")
        url = path + (f"?{query}" if query else "")
        answer = self._clients[index].request(environ["REQUEST_METHOD"], url,
                                              headers=headers, content=body)
        kept = [(k, v) for k, v in answer.headers.items()
                if k.lower() not in ("content-length", "connection", "transfer-encoding",
                                     "content-encoding", "keep-alive", "date", "server")]
        start_response(f"{answer.status_code} {answer.reason_phrase}",
                       [*kept, ("Content-Length", str(len(answer.content)))])
        return [answer.content]

    def close(self) -> None:
        for client in self._clients:
            client.close()


@pytest.fixture
def fleet(postgres: PostgresServer, tmp_path: Path) -> Iterator[tuple[str, list[Served]]]:
    """``PROCESSES`` `seenn serve` processes on one fresh database."""
    url = postgres.new_database()
    served: list[Served] = []
    try:
        for _ in range(PROCESSES):
            served.append(start_server(tmp_path, db=url))
        yield url, served
    finally:
        for server in served:
            stop_server(server)


@pytest.fixture
def proxy(fleet: tuple[str, list[Served]]) -> Iterator[tuple[str, RoundRobin]]:
    """A round-robin proxy in front of the fleet: its URL and the app."""
    app = RoundRobin([s.url for s in fleet[1]])
    server = WSGIServer(("127.0.0.1", 0), app)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.url, app
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        app.close()


def test_several_processes_pass_the_conformance_kit_together(
        proxy: tuple[str, RoundRobin]) -> None:
    """Every check passes when consecutive requests land on different processes."""
    url, app = proxy
    results = run_checks(url, SECRET, public_key=PUBLIC)
    assert all(r.passed for r in results), format_table(results)
    assert min(app.sent) > 5  # every process answered a share


def _api(url: str) -> httpx.Client:
    return httpx.Client(base_url=url + "/v1", timeout=60,
                        headers={"Authorization": f"Bearer {SECRET}"})


def test_children_written_through_every_process_at_once_add_up(
        proxy: tuple[str, RoundRobin]) -> None:
    """Children started, moved and ended in parallel on 3 processes leave exact parent sums."""
    url, _ = proxy
    children = 24
    with _api(url) as api:
        parent = api.post("/jobs", json={"jobType": "p", "userId": "u", "title": "p",
                                         "totalChildren": children}).json()

        def child(index: int) -> str:
            with _api(url) as mine:
                job = mine.post("/jobs", json={
                    "jobType": "c", "userId": "u", "title": f"c{index}",
                    "parentJobId": parent["id"], "childIndex": index}).json()
                for step in (20, 60):
                    assert mine.post(f"/jobs/{job['id']}/progress",
                                     json={"progress": step}).status_code == 200
                end = "complete" if index % 4 else "fail"
                body = {} if end == "complete" else {"error": {"code": "E", "message": "x"}}
                assert mine.post(f"/jobs/{job['id']}/{end}", json=body).status_code == 200
                return str(job["id"])

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(child, range(children)))
        final = api.get(f"/jobs/{parent['id']}").json()
    assert final["children"] == {"total": children, "completed": 18, "failed": 6,
                                 "running": 0, "pending": 0}
    assert final["status"] == "failed"  # a declared parent fails when a child does


def test_batches_over_the_same_jobs_through_every_process_at_once_all_land(
        proxy: tuple[str, RoundRobin]) -> None:
    """Batches of POST /v1/events over one set of children, in different orders, sent in
    parallel through 3 processes: each locks its jobs and keys at once, waits or runs
    again after a deadlock, and every event lands once; the parent's sums stay exact."""
    url, _ = proxy
    children, senders, rounds = 12, 6, 5
    with _api(url) as api:
        parent = api.post("/jobs", json={"jobType": "p", "userId": "u", "title": "p",
                                         "totalChildren": children,
                                         "childProgressMode": "average"}).json()
        ids = [api.post("/jobs", json={"jobType": "c", "userId": "u", "title": f"c{i}",
                                       "parentJobId": parent["id"], "childIndex": i}
                        ).json()["id"] for i in range(children)]

    def send(sender: int) -> list[int]:
        statuses: list[int] = []
        with _api(url) as mine:
            for turn in range(rounds):
                order = ids[sender % children:] + ids[:sender % children]
                if sender % 2:
                    order.reverse()
                events = [{"type": "progress", "jobId": job_id,
                           "idempotencyKey": f"s{sender}.{turn}.{job_id}",
                           "body": {"progress": 10 + turn}} for job_id in order]
                answer = mine.post("/events", json={"events": events, "brief": True})
                assert answer.status_code == 200, answer.text
                statuses += [r["status"] for r in answer.json()["results"]]
        return statuses

    with ThreadPoolExecutor(senders) as pool:
        every = [status for statuses in pool.map(send, range(senders)) for status in statuses]
    assert every == [200] * (children * senders * rounds)
    with _api(url) as api:
        final = api.get(f"/jobs/{parent['id']}").json()
        progress = [api.get(f"/jobs/{job_id}").json()["progress"] for job_id in ids]
    # Each child ends at whatever the last batch to reach it set (10 to 14); the parent's
    # average is exactly theirs, kept by difference through every batch.
    assert all(10 <= value <= 14 for value in progress)
    assert final["progress"] == sum(progress) // children
    assert final["children"]["running"] == children


def test_one_idempotency_key_sent_to_every_process_at_once_starts_one_job(
        fleet: tuple[str, list[Served]]) -> None:
    """The same start with one Idempotency-Key, raced through 3 processes, makes one job."""
    _, served = fleet
    barrier = threading.Barrier(len(served) * 2)

    def start(server: Served) -> tuple[int, str]:
        with _api(server.url) as api:
            barrier.wait()
            answer = api.post("/jobs", json={"jobType": "t", "userId": "race", "title": "t"},
                              headers={"Idempotency-Key": "one-start"})
            return answer.status_code, answer.json()["id"]

    with ThreadPoolExecutor(len(served) * 2) as pool:
        answers = list(pool.map(start, served * 2))
    assert {status for status, _ in answers} == {201}
    assert len({job_id for _, job_id in answers}) == 1
    with _api(served[0].url) as api:
        assert len(api.get("/jobs", params={"userId": "race"}).json()["jobs"]) == 1


def test_processes_starting_together_create_the_schema_once(postgres: PostgresServer) -> None:
    """Stores opened at once on an empty database migrate it once, to the current version."""
    url = postgres.new_database()
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: open_store(url), range(4)))
    try:
        assert {s.engine for s in stores} == {"postgresql"}
        first = stores[0]
        assert isinstance(first, PostgresStore)
        with first._connection() as conn:
            rows = conn.execute("SELECT version FROM schema_version").fetchall()
        assert [row[0] for row in rows] == [1]
    finally:
        for store in stores:
            store.close()


def test_a_database_newer_than_this_seenn_is_refused(postgres: PostgresServer) -> None:
    """A schema version this seenn does not know stops the start with a clear error."""
    url = postgres.new_database()
    store = open_store(url)
    with store._connection() as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    store.close()
    with pytest.raises(seenn.ValidationError, match="newer than this seenn") as caught:
        open_store(url)
    assert caught.value.field == "db"


def test_an_unreachable_database_names_db_and_not_the_password(
        postgres: PostgresServer) -> None:
    """A wrong port is a ValidationError on ``db`` whose text holds no password."""
    with pytest.raises(seenn.ValidationError) as caught:
        open_store(f"postgresql://seenn:hunter2-secret@127.0.0.1:{_closed_port()}/x"
                   "?connect_timeout=2")
    assert caught.value.field == "db"
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_writes_in_one_process_are_announced_to_another(postgres: PostgresServer) -> None:
    """A write's job ids reach every listening store, after commit only."""
    url = postgres.new_database()
    writer, listener = open_store(url), open_store(url)
    assert isinstance(listener, PostgresStore)
    heard: list[tuple[str, frozenset[str]]] = []
    listener.listen(lambda app_id, job_ids: heard.append((app_id, job_ids)))
    try:
        job = {"id": "j1", "userId": "u", "status": "running"}
        def rolled_back() -> None:
            with writer.write("app") as tx:
                tx.insert({**job, "id": "rolled-back"}, start_hash="h", expires_at=tx.now + 60)
                raise RuntimeError("roll back")

        with pytest.raises(RuntimeError):
            rolled_back()
        with writer.write("app") as tx:
            tx.insert(job, start_hash="h", expires_at=tx.now + 60)
        wait_until(lambda: heard, timeout=10, what="the notification")
        assert heard == [("app", frozenset({"j1"}))]
    finally:
        writer.close()
        listener.close()


def test_nul_in_ids_keys_and_queries_is_refused_or_unknown(
        proxy: tuple[str, RoundRobin]) -> None:
    """NUL, which PostgreSQL text cannot hold, is a 400 or a 404, never a 500."""
    url, _ = proxy
    with _api(url) as api:
        assert api.post("/jobs", json={"jobType": "t", "userId": "a\x00b",
                                       "title": "t"}).status_code == 400
        assert api.get("/jobs", params={"userId": "a\x00"}).status_code == 400
        assert api.get("/jobs/a%00b").status_code == 404
        assert api.post("/jobs/a%00b/progress", json={"progress": 5}).status_code == 404
        assert api.get("/eta/a%00b").status_code == 404
        assert api.post("/jobs", json={"jobType": "t", "userId": "u", "title": "t",
                                       "parentJobId": "p\x00"}).status_code == 400


def test_two_writes_that_deadlock_both_land(postgres: PostgresServer) -> None:
    """Two transactions locking two jobs in opposite orders: one is run again, both land."""
    url = postgres.new_database()
    store = open_store(url)
    with store.write("app") as tx:
        for job_id in ("x", "y"):
            tx.insert({"id": job_id, "userId": "u", "status": "running", "n": 0},
                      start_hash="h", expires_at=tx.now + 600)
    both_hold_one = threading.Barrier(2)
    attempts: list[str] = []

    def cross(first: str, second: str) -> None:
        def work(tx: Any) -> None:
            attempts.append(first)
            held = tx.get(first)
            if len(attempts) <= 2:  # only the first attempts meet at the barrier
                both_hold_one.wait(10)
            other = tx.get(second)
            for stored in (held, other):
                stored.data["n"] += 1
                tx.update(stored.data, seq=stored.seq)
        store.transact("app", work)

    try:
        threads = [threading.Thread(target=cross, args=pair) for pair in (("x", "y"),
                                                                          ("y", "x"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(attempts) == 3  # PostgreSQL broke the deadlock; the loser ran again
        with store.read("app") as tx:
            assert [tx.get(j).data["n"] for j in ("x", "y")] == [2, 2]  # type: ignore[union-attr]
    finally:
        store.close()


def test_serve_never_prints_the_database_password(postgres: PostgresServer,
                                                  tmp_path: Path) -> None:
    """The listening line and a failed start show the URL with its password masked."""
    url = postgres.new_database().replace("seenn@", "seenn:hunter2-secret@")
    served = start_server(tmp_path, db=url)
    try:
        assert served.process.stdout is not None
    finally:
        stop_server(served)
    printed = "".join(served.lines)
    assert "seenn:***@127.0.0.1" in printed and "hunter2" not in printed
    closed = f"postgresql://seenn:hunter2-secret@127.0.0.1:{_closed_port()}/x"
    result = subprocess.run([sys.executable, "-m", "seenn", "serve", "--port", "0", "--db",
                             closed, "--api-key", SECRET], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "hunter2" not in result.stdout + result.stderr
    assert "db" in result.stderr


def test_apps_made_together_on_a_new_database_register_one_pair(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three apps that all find a new database empty, made at once: one pair, one maker."""
    racers = 3
    all_looked = threading.Barrier(racers)
    looked_up = Store.apps

    def apps(store: Store) -> dict[str, tuple[str, str]]:
        found = looked_up(store)
        if not found:
            all_looked.wait(30)  # every racer has seen the empty database
        return found

    monkeypatch.setattr(Store, "apps", apps)
    with ThreadPoolExecutor(racers) as pool:
        apps_made = list(pool.map(lambda _: seenn.server.create_app(db), range(racers)))
    try:
        made = [app.created_keys for app in apps_made if app.created_keys is not None]
        assert len(made) == 1
        assert len(apps_made[0].store.signing_keys()) == 1
    finally:
        for app in apps_made:
            app.close()
