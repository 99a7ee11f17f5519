"""Bad input to ``seenn serve``: a 400 naming the field, never a 500 or a hang; big families."""

from __future__ import annotations

import base64
import random
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import seenn.server
from seenn.server._jobs import start_job, update_job
from seenn.server._sqlite import SQLiteStore
from seenn.server._store import Store
from seenn.server._transaction import Transaction
from tests.adversarial.conftest import Served, start_server, stop_server

START = '"jobType": "t", "userId": "u", "title": "t"'
"""The required fields of a start, as JSON text to splice raw escapes into."""


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One ``seenn serve`` subprocess for the tests here: each makes its own jobs."""
    server = start_server(tmp_path_factory.mktemp("input"))
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def api(shared: Served) -> Iterator[httpx.Client]:
    """Raw HTTP to the served backend with its secret key."""
    with httpx.Client(base_url=shared.url + "/v1", timeout=30,
                      headers={"Authorization": f"Bearer {shared.secret}",
                               "Content-Type": "application/json"}) as client:
        yield client


def _refused(response: httpx.Response, field: str, status: int = 400) -> None:
    """Assert a JSON error answer with ``status`` whose details name ``field``."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == ("VALIDATION_ERROR" if status == 400 else "CONFLICT")
    assert error["details"]["field"] == field


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# Lone surrogates -------------------------------------------------------------------------

# Each body holds the JSON escape \ud800, which json.loads turns into a lone surrogate.
@pytest.mark.parametrize(("field", "body"), [
    ("jobType", '{"jobType": "\\ud800", "userId": "u", "title": "t"}'),
    ("userId", '{"jobType": "t", "userId": "\\ud800", "title": "t"}'),
    ("title", '{"jobType": "t", "userId": "u", "title": "a\\ud800b"}'),
    ("workflowId", '{' + START + ', "workflowId": "\\ud800"}'),
    ("metadata.note", '{' + START + ', "metadata": {"note": "\\udfff"}}'),
    ("metadata.\\ud800", '{' + START + ', "metadata": {"\\ud800": 1}}'),
    ("metadata.list.1", '{' + START + ', "metadata": {"list": ["ok", "\\ud800"]}}'),
    ("queue.queueName", '{' + START + ', "queue": {"position": 1, "queueName": "\\ud800"}}'),
    ("stage.name", '{' + START + ', "stage": {"name": "\\ud800"}}'),
    ("stage.description", '{' + START + ', "stage": {"name": "s", "description": "\\ud800"}}'),
    ("parentJobId", '{' + START + ', "parentJobId": "\\ud800"}'),
    ("id", '{' + START + ', "id": "\\ud800"}'),
    ("somethingUnknown", '{' + START + ', "somethingUnknown": "\\ud800"}'),
])
def test_a_lone_surrogate_in_a_start_is_a_400_naming_the_field(api: httpx.Client, field: str,
                                                               body: str) -> None:
    """A lone surrogate anywhere in a start body is a 400 VALIDATION_ERROR naming its field."""
    _refused(api.post("/jobs", content=body.encode()), field)


@pytest.mark.parametrize(("action", "field", "body"), [
    ("progress", "message", '{"progress": 1, "message": "\\ud800"}'),
    ("progress", "stage.name", '{"progress": 1, "stage": {"name": "\\ud800"}}'),
    ("progress", "metadata.k", '{"progress": 1, "metadata": {"k": "\\ud800"}}'),
    ("progress", "push.title", '{"progress": 1, "push": {"title": "\\ud800"}}'),
    ("complete", "message", '{"message": "\\ud800"}'),
    ("complete", "result.url", '{"result": {"url": "\\ud800"}}'),
    ("complete", "result.data.x", '{"result": {"data": {"x": "\\ud800"}}}'),
    ("fail", "error.code", '{"error": {"code": "\\ud800", "message": "m"}}'),
    ("fail", "error.message", '{"error": {"code": "E", "message": "\\ud800"}}'),
    ("fail", "error.details.path", '{"error": {"code": "E", "message": "m", '
                                   '"details": {"path": "/tmp/\\udcff"}}}'),
])
def test_a_lone_surrogate_in_an_update_is_a_400_naming_the_field(
        api: httpx.Client, action: str, field: str, body: str) -> None:
    """A lone surrogate in a progress, complete or fail body is a 400; the job is unchanged."""
    job = api.post("/jobs", content=b"{" + START.encode() + b"}").json()
    _refused(api.post(f"/jobs/{job['id']}/{action}", content=body.encode()), field)
    assert api.get(f"/jobs/{job['id']}").json() == job


def test_a_surrogate_pair_is_text_and_is_stored(api: httpx.Client) -> None:
    """A well-formed surrogate pair escape is one character, accepted and read back."""
    body = '{"jobType": "t", "userId": "u", "title": "\\ud83d\\ude00"}'
    answer = api.post("/jobs", content=body.encode())
    assert answer.status_code == 201
    assert api.get(f"/jobs/{answer.json()['id']}").json()["title"] == "\N{GRINNING FACE}"


# Dates and durations ---------------------------------------------------------------------

@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_an_estimated_completion_outside_utc_years_is_a_400(api: httpx.Client, when: str) -> None:
    """An estimatedCompletionAt with no UTC equivalent is a 400 on start and on progress."""
    _refused(api.post("/jobs", json={"jobType": "t", "userId": "u", "title": "t",
                                     "estimatedCompletionAt": when}), "estimatedCompletionAt")
    job = api.post("/jobs", json={"jobType": "t", "userId": "u", "title": "t"}).json()
    _refused(api.post(f"/jobs/{job['id']}/progress",
                      json={"progress": 1, "estimatedCompletionAt": when}),
             "estimatedCompletionAt")


@pytest.mark.parametrize("duration", [1e15, 1e300, 30 * 24 * 3600 * 1000 + 1])
def test_an_estimated_duration_beyond_30_days_is_a_400(api: httpx.Client,
                                                       duration: float) -> None:
    """estimatedDuration (milliseconds) above 30 days, the longest a job lives, is a 400."""
    _refused(api.post("/jobs", json={"jobType": "t", "userId": "u", "title": "t",
                                     "estimatedDuration": duration}), "estimatedDuration")


def test_an_estimated_duration_of_30_days_is_accepted(api: httpx.Client) -> None:
    """An estimatedDuration of exactly 30 days sets estimatedCompletionAt."""
    answer = api.post("/jobs", json={"jobType": "t", "userId": "u", "title": "t",
                                     "estimatedDuration": 30 * 24 * 3600 * 1000})
    assert answer.status_code == 201
    assert "estimatedCompletionAt" in answer.json()


# Cursors ---------------------------------------------------------------------------------

BAD_CURSORS = [_cursor("s:²"), _cursor("c:²"), _cursor("s:"), _cursor("s:-1"), _cursor("s: 1"),
               _cursor("s:" + "9" * 40), _cursor("x:1"), "é", "%%%", "czo", "=" * 8,
               base64.urlsafe_b64encode(b"s:\xff").decode(),
               # 19 digits, past the largest SQLite integer (2**63 - 1): once a 500.
               _cursor("s:" + "9" * 19), _cursor("c:" + "9" * 19), _cursor(f"c:{2 ** 63}")]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_a_malformed_list_cursor_is_a_400(api: httpx.Client, cursor: str) -> None:
    """A cursor this server did not make is a 400 naming cursor, on GET /jobs."""
    _refused(api.get("/jobs", params={"userId": "u", "cursor": cursor}), "cursor")


@pytest.mark.parametrize("cursor", [*BAD_CURSORS, _cursor("s:1")])
def test_a_malformed_children_cursor_is_a_400(api: httpx.Client, cursor: str) -> None:
    """A cursor this server did not make for children (a list cursor too) is a 400."""
    job = api.post("/jobs", json={"jobType": "t", "userId": "u", "title": "t"}).json()
    _refused(api.get(f"/jobs/{job['id']}/children", params={"cursor": cursor}), "cursor")


# Parents: depth and cycles ----------------------------------------------------------------

def test_parents_nest_at_most_32_levels(api: httpx.Client) -> None:
    """A chain of 32 jobs is accepted; a 33rd level is a 400 naming parentJobId."""
    parent = None
    for _ in range(32):
        body: dict[str, Any] = {"jobType": "t", "userId": "u", "title": "t"}
        if parent is not None:
            body["parentJobId"] = parent
        answer = api.post("/jobs", json=body)
        assert answer.status_code == 201, answer.text
        parent = answer.json()["id"]
    _refused(api.post("/jobs", json={"jobType": "t", "userId": "u", "title": "t",
                                     "parentJobId": parent}), "parentJobId")
    assert api.post(f"/jobs/{parent}/complete", json={}).status_code == 200


@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[httpx.Client, list[float], seenn.server.RunningServer]]:
    """An in-process backend whose clock the test moves, and a raw client for it."""
    with seenn.server.running(tmp_path / "local.db") as backend:
        now = [backend.app.store.clock()]
        backend.app.store.clock = lambda: now[0]
        with httpx.Client(base_url=backend.url + "/v1", timeout=30,
                          headers={"Authorization": f"Bearer {backend.api_key}"}) as client:
            yield client, now, backend


def test_reusing_an_expired_id_cannot_close_a_parent_cycle(
        local: tuple[httpx.Client, list[float], seenn.server.RunningServer]) -> None:
    """An expired parent's id is not free while its children live: a cycle through it is a 409."""
    api, now, _ = local
    base = {"jobType": "t", "userId": "u", "title": "t"}
    assert api.post("/jobs", json={**base, "id": "A", "ttlSeconds": 60}).status_code == 201
    assert api.post("/jobs", json={**base, "id": "B", "parentJobId": "A",
                                   "ttlSeconds": 120}).status_code == 201
    now[0] += 61
    _refused(api.post("/jobs", json={**base, "id": "A", "parentJobId": "B"}), "id", status=409)
    _refused(api.post("/jobs", json={**base, "id": "A"}), "id", status=409)
    assert api.post("/jobs/B/progress", json={"progress": 5}).status_code == 200
    now[0] += 60
    assert api.post("/jobs", json={**base, "id": "A"}).status_code == 201


def test_expired_children_drop_out_of_their_parents_counts(
        local: tuple[httpx.Client, list[float], seenn.server.RunningServer]) -> None:
    """Once a child has expired, the next change of a sibling leaves it out of the parent."""
    api, now, _ = local
    base = {"jobType": "t", "userId": "u", "title": "t"}
    parent = api.post("/jobs", json={**base, "totalChildren": 4}).json()
    short = api.post("/jobs", json={**base, "parentJobId": parent["id"], "ttlSeconds": 60})
    api.post(f"/jobs/{short.json()['id']}/complete", json={})
    keeper = api.post("/jobs", json={**base, "parentJobId": parent["id"]}).json()
    assert api.get(f"/jobs/{parent['id']}").json()["progress"] == 25
    now[0] += 61
    api.post(f"/jobs/{keeper['id']}/progress", json={"progress": 40})
    stored = api.get(f"/jobs/{parent['id']}").json()
    assert stored["children"] == {"total": 4, "completed": 0, "failed": 0, "running": 1,
                                  "pending": 0}
    assert stored["progress"] == 10


# Children: pages and the cost of a change --------------------------------------------------

def _family(api: httpx.Client, count: int, **parent: Any) -> tuple[str, list[str]]:
    base = {"jobType": "t", "userId": "u", "title": "t"}
    parent_id = api.post("/jobs", json={**base, **parent}).json()["id"]
    children = [api.post("/jobs", json={**base, "parentJobId": parent_id}).json()["id"]
                for _ in range(count)]
    return parent_id, children


def test_children_come_in_pages(api: httpx.Client) -> None:
    """GET /children answers at most `limit` children (20 by default) and a cursor to the rest."""
    parent_id, children = _family(api, 25)
    first = api.get(f"/jobs/{parent_id}/children").json()
    assert [c["id"] for c in first["children"]] == children[:20]
    assert first["parent"]["id"] == parent_id
    seen, cursor = [], None
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = api.get(f"/jobs/{parent_id}/children", params=params).json()
        assert len(page["children"]) <= 7
        seen += [c["id"] for c in page["children"]]
        cursor = page.get("nextCursor")
        if cursor is None:
            break
    assert seen == children


@pytest.mark.parametrize("limit", ["0", "101", "x", "-1"])
def test_a_children_limit_out_of_range_is_a_400(api: httpx.Client, limit: str) -> None:
    """limit on GET /children is an integer from 1 to 100, like on GET /jobs."""
    parent_id, _ = _family(api, 1)
    _refused(api.get(f"/jobs/{parent_id}/children", params={"limit": limit}), "limit")


def _vm_steps(store: Store, operation: Callable[[Transaction], object]) -> int:
    """How many SQLite virtual-machine steps ``operation`` takes in one write transaction."""
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0

    with store.write("app") as tx:
        tx._conn.set_progress_handler(step, 1)
        try:
            operation(tx)
        finally:
            tx._conn.set_progress_handler(None, 1)
    return steps


def _change_costs(path: Path, siblings: int, mode: str | None) -> tuple[int, int, int]:
    """Steps of a child's progress, of a child's completion and of a new child's start."""
    store = SQLiteStore(str(path))
    parent: dict[str, Any] = {"jobType": "t", "userId": "u", "title": "p", "id": "parent"}
    if mode is not None:
        parent.update(totalChildren=1000, childProgressMode=mode)
    with store.write("app") as tx:
        start_job(tx, "app", parent)
    for index in range(siblings):
        with store.write("app") as tx:
            start_job(tx, "app", {"jobType": "t", "userId": "u", "title": "c", "id": f"c{index}",
                                  "parentJobId": "parent", "metadata": {"weight": 2}})
    try:
        return (_vm_steps(store, lambda tx: update_job(tx, "progress", "c5", {"progress": 40})),
                _vm_steps(store, lambda tx: update_job(tx, "complete", "c0", {})),
                _vm_steps(store, lambda tx: start_job(tx, "app", {
                    "jobType": "t", "userId": "u", "title": "c", "parentJobId": "parent"})))
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["average", "weighted", "sequential", None])
def test_a_child_change_costs_the_same_whatever_the_number_of_siblings(
        tmp_path: Path, mode: str | None) -> None:
    """A child's progress, completion or start does the same database work beside 10 or 400."""
    few = _change_costs(tmp_path / "few.db", 10, mode)
    many = _change_costs(tmp_path / "many.db", 400, mode)
    assert many == few


def _expected_parent(children: list[dict[str, Any]], total: int, mode: str) -> int:
    """A declared parent's progress computed from scratch, as docs/self-hosted.md defines it."""
    def done(child: dict[str, Any]) -> int:
        return 100 if child["status"] in ("completed", "failed") else int(child["progress"])

    if mode == "average":
        return sum(done(c) for c in children) // total
    if mode == "weighted":
        weights = [c.get("metadata", {}).get("weight", 1) for c in children]
        units = [round(w * 1_000_000) for w in weights]
        return (sum(u * done(c) for u, c in zip(units, children, strict=True))
                // (sum(units) + (total - len(children)) * 1_000_000))
    finished = sum(c["status"] in ("completed", "failed") for c in children)
    first_open = next((c for c in children if c["status"] not in ("completed", "failed")), None)
    return (finished * 100 + (first_open["progress"] if first_open else 0)) // total


@pytest.mark.parametrize("mode", ["average", "weighted", "sequential"])
def test_a_parent_kept_up_to_date_matches_one_computed_from_scratch(
        local: tuple[httpx.Client, list[float], seenn.server.RunningServer], mode: str) -> None:
    """After random child changes, a parent's progress and counts equal a count from scratch."""
    api, _, _ = local
    rng = random.Random(f"seenn-{mode}")
    total = 12
    base = {"jobType": "t", "userId": "u", "title": "t"}
    parent_id = api.post("/jobs", json={**base, "totalChildren": total,
                                        "childProgressMode": mode}).json()["id"]
    open_ids: list[str] = []
    for step in range(80):
        created = len(api.get(f"/jobs/{parent_id}/children", params={"limit": 100})
                      .json()["children"])
        if created < total and (not open_ids or rng.random() < 0.3):
            weight = rng.choice([1, 2, 0.5, 0.1, 3.25])
            child = api.post("/jobs", json={**base, "parentJobId": parent_id,
                                            "metadata": {"weight": weight}}).json()
            open_ids.append(child["id"])
        elif open_ids:
            child_id = rng.choice(open_ids)
            roll = rng.random()
            if roll < 0.7:
                body: dict[str, Any] = {"progress": rng.randint(0, 100)}
                if rng.random() < 0.2:
                    body["metadata"] = {"weight": rng.choice([1, 4, 0.25])}
                api.post(f"/jobs/{child_id}/progress", json=body)
            else:
                action = "complete" if roll < 0.9 else "fail"
                api.post(f"/jobs/{child_id}/{action}",
                         json={} if action == "complete" else
                         {"error": {"code": "E", "message": "m"}})
                open_ids.remove(child_id)
        family = api.get(f"/jobs/{parent_id}/children", params={"limit": 100}).json()
        children, parent = family["children"], family["parent"]
        statuses = [c["status"] for c in children]
        assert parent["children"] == {
            "total": total, "completed": statuses.count("completed"),
            "failed": statuses.count("failed"), "running": statuses.count("running"),
            "pending": statuses.count("pending") + statuses.count("queued")}, step
        if parent["status"] not in ("completed", "failed"):
            assert parent["progress"] == _expected_parent(children, total, mode), step


def test_an_older_database_gets_its_new_columns(tmp_path: Path) -> None:
    """A database written before the aggregates keeps its jobs, and its parents keep counting."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE apps (id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL UNIQUE,
                               public_hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);
            CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, app_id TEXT NOT NULL,
                               id TEXT NOT NULL, user_id TEXT NOT NULL, parent_id TEXT,
                               child_index INTEGER, start_hash TEXT NOT NULL,
                               expires_at REAL NOT NULL, data TEXT NOT NULL,
                               UNIQUE (app_id, id));
        """)
        parent = ('{"id": "p", "userId": "u", "status": "running", "progress": 50, '
                  '"childProgressMode": "sequential", "children": {"total": 2, "completed": 1, '
                  '"failed": 0, "running": 0, "pending": 1}}')
        rows = [("p", None, None, parent),
                ("c0", "p", 0, '{"id": "c0", "userId": "u", "status": "completed", '
                               '"progress": 100, "parent": {"parentJobId": "p", "childIndex": 0}}'),
                ("c1", "p", 1, '{"id": "c1", "userId": "u", "status": "pending", '
                               '"progress": 0, "parent": {"parentJobId": "p", "childIndex": 1}}')]
        db.executemany("INSERT INTO jobs (app_id, id, user_id, parent_id, child_index, "
                       "start_hash, expires_at, data) VALUES ('app', ?, 'u', ?, ?, '', 1e12, ?)",
                       rows)
    store = SQLiteStore(str(path))
    try:
        with store.write("app") as tx:
            update_job(tx, "progress", "c1", {"progress": 40})
        with store.read("app") as tx:
            stored = tx.get("p")
        assert stored is not None
        assert stored.data["progress"] == 70
        assert stored.data["children"]["running"] == 1
    finally:
        store.close()
