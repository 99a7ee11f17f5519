"""Who may read what from ``seenn serve``: public keys, per-user read tokens, the database file."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

import seenn.server
from tests.adversarial.conftest import Served, start_server, stop_server

BASE = {"jobType": "t", "title": "t"}


def _client(url: str, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url + "/v1", headers=headers, timeout=30)


@pytest.fixture
def served(tmp_path: Path, db: str) -> Iterator[Served]:
    """A ``seenn serve`` subprocess on each engine (the conftest's is SQLite only)."""
    server = start_server(tmp_path, db=db)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def keys(served: Served) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Raw HTTP to the served backend: one client with its secret key, one with its public key."""
    with _client(served.url, served.secret) as secret, \
            _client(served.url, served.public) as public:
        yield secret, public


def _mint(secret: httpx.Client, user_id: str, **extra: Any) -> str:
    answer = secret.post("/tokens", json={"userId": user_id, **extra})
    assert answer.status_code == 201, answer.text
    token: str = answer.json()["token"]
    return token


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


# Public keys -------------------------------------------------------------------------------

def test_a_public_key_cannot_list_jobs(keys: tuple[httpx.Client, httpx.Client]) -> None:
    """GET /jobs with a public key is 403 FORBIDDEN, whichever userId it asks for."""
    secret, public = keys
    secret.post("/jobs", json={**BASE, "userId": "alice"})
    for params in ({"userId": "alice"}, {}, {"userId": "alice", "limit": "0"}):
        error = _error(public.get("/jobs", params=params), 403, "FORBIDDEN")
        assert "token" in error["message"]


def test_a_public_key_reads_a_job_and_its_children_by_id(
        keys: tuple[httpx.Client, httpx.Client]) -> None:
    """A public key reads a job by its id, and the children of a job it can read."""
    secret, public = keys
    parent = secret.post("/jobs", json={**BASE, "userId": "alice", "totalChildren": 2}).json()
    child = secret.post("/jobs", json={**BASE, "userId": "alice",
                                       "parentJobId": parent["id"]}).json()
    assert public.get(f"/jobs/{parent['id']}").json()["children"] == {
        "total": 2, "completed": 0, "failed": 0, "running": 0, "pending": 1}
    family = public.get(f"/jobs/{parent['id']}/children").json()
    assert [c["id"] for c in family["children"]] == [child["id"]]
    _error(public.post("/tokens", json={"userId": "alice"}), 403, "FORBIDDEN")


# Minting tokens ----------------------------------------------------------------------------

def test_a_secret_key_mints_a_user_token(keys: tuple[httpx.Client, httpx.Client]) -> None:
    """POST /tokens with a secret key answers 201 with a ut_ token and its expiry."""
    secret, _ = keys
    answer = secret.post("/tokens", json={"userId": "alice", "ttlSeconds": 600})
    assert answer.status_code == 201
    body = answer.json()
    assert set(body) == {"token", "expiresAt"}
    assert body["token"].startswith("ut_")
    assert answer.headers["Cache-Control"] == "no-store"
    expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    left = (expires - datetime.now(timezone.utc)).total_seconds()
    assert 0 < left <= 600


@pytest.mark.parametrize(("body", "field"), [
    ({}, "userId"),
    ({"userId": ""}, "userId"),
    ({"userId": "u" * 256}, "userId"),
    ({"userId": 7}, "userId"),
    ({"userId": "alice", "ttlSeconds": 59}, "ttlSeconds"),
    ({"userId": "alice", "ttlSeconds": 2_592_001}, "ttlSeconds"),
    ({"userId": "alice", "ttlSeconds": 60.5}, "ttlSeconds"),
    ({"userId": "alice", "ttlSeconds": "600"}, "ttlSeconds"),
    ({"userId": "alice", "ttlSeconds": True}, "ttlSeconds"),
])
def test_a_bad_token_request_is_a_400_naming_the_field(
        keys: tuple[httpx.Client, httpx.Client], body: dict[str, Any], field: str) -> None:
    """userId (1–255 characters) and ttlSeconds (integer, 60–2,592,000) are checked."""
    secret, _ = keys
    error = _error(secret.post("/tokens", json=body), 400, "VALIDATION_ERROR")
    assert error["details"]["field"] == field


def test_a_lone_surrogate_in_a_token_request_is_a_400(
        keys: tuple[httpx.Client, httpx.Client]) -> None:
    """A userId holding a lone surrogate is a 400 naming userId, not a 500."""
    secret, _ = keys
    answer = secret.post("/tokens", content=b'{"userId": "\\ud800"}')
    assert _error(answer, 400, "VALIDATION_ERROR")["details"]["field"] == "userId"


# What a token reads -------------------------------------------------------------------------

def test_a_token_reads_and_lists_its_users_jobs_only(
        served: Served, keys: tuple[httpx.Client, httpx.Client]) -> None:
    """A user token lists and reads its user's jobs; another user's are 403 to list, 404 to read."""
    secret, _ = keys
    mine = [secret.post("/jobs", json={**BASE, "userId": "alice"}).json() for _ in range(3)]
    theirs = secret.post("/jobs", json={**BASE, "userId": "bob"}).json()
    with _client(served.url, _mint(secret, "alice")) as alice:
        listed = alice.get("/jobs").json()
        assert [j["id"] for j in listed["jobs"]] == [j["id"] for j in reversed(mine)]
        assert alice.get("/jobs", params={"userId": "alice", "limit": 2}).json()["jobs"] \
            == listed["jobs"][:2]
        error = _error(alice.get("/jobs", params={"userId": "bob"}), 403, "FORBIDDEN")
        assert error["details"]["field"] == "userId"
        assert alice.get(f"/jobs/{mine[0]['id']}").json()["userId"] == "alice"
        _error(alice.get(f"/jobs/{theirs['id']}"), 404, "NOT_FOUND")
        _error(alice.get(f"/jobs/{theirs['id']}/children"), 404, "NOT_FOUND")


def test_a_token_sees_only_its_users_children(
        served: Served, keys: tuple[httpx.Client, httpx.Client]) -> None:
    """The children a token reads are those of its user; another user's child is left out."""
    secret, _ = keys
    parent = secret.post("/jobs", json={**BASE, "userId": "alice"}).json()
    own = secret.post("/jobs", json={**BASE, "userId": "alice", "parentJobId": parent["id"]})
    secret.post("/jobs", json={**BASE, "userId": "bob", "parentJobId": parent["id"]})
    with _client(served.url, _mint(secret, "alice")) as alice:
        family = alice.get(f"/jobs/{parent['id']}/children").json()
    assert [c["id"] for c in family["children"]] == [own.json()["id"]]


def test_a_token_never_writes(served: Served, keys: tuple[httpx.Client, httpx.Client]) -> None:
    """Every POST made with a user token is 403 FORBIDDEN and changes nothing."""
    secret, _ = keys
    job = secret.post("/jobs", json={**BASE, "userId": "alice"}).json()
    with _client(served.url, _mint(secret, "alice")) as alice:
        for path, body in [("/jobs", {**BASE, "userId": "alice"}),
                           (f"/jobs/{job['id']}/progress", {"progress": 50}),
                           (f"/jobs/{job['id']}/complete", {}),
                           (f"/jobs/{job['id']}/fail", {"error": {"code": "E", "message": "m"}}),
                           ("/tokens", {"userId": "alice"})]:
            _error(alice.post(path, json=body), 403, "FORBIDDEN")
    assert secret.get(f"/jobs/{job['id']}").json() == job
    assert len(secret.get("/jobs", params={"userId": "alice"}).json()["jobs"]) == 1


def _tamper(token: str, **claims: Any) -> str:
    """The token with some claims changed and its signature kept."""
    payload, _, signature = token.removeprefix("ut_").partition(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    changed = base64.urlsafe_b64encode(json.dumps({**data, **claims}).encode()).decode()
    return f"ut_{changed.rstrip('=')}.{signature}"


def test_a_forged_or_damaged_token_is_a_401(served: Served,
                                            keys: tuple[httpx.Client, httpx.Client]) -> None:
    """A token whose claims or signature were changed, or that is not a token at all, is a 401."""
    secret, _ = keys
    job = secret.post("/jobs", json={**BASE, "userId": "bob"}).json()
    token = _mint(secret, "alice")
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    forgeries = [_tamper(token, user="bob"), _tamper(token, exp=2**40), flipped,
                 token.partition(".")[0], token + "x", "ut_", "ut_.", "ut_%%%.%%%",
                 "ut_" + "A" * 5000, _tamper(token, app=None), "ut_e30." + token.split(".")[1]]
    for forged in forgeries:
        with _client(served.url, forged) as client:
            answer = client.get(f"/jobs/{job['id']}")
        _error(answer, 401, "UNAUTHORIZED")
        assert forged not in answer.text


def test_a_token_of_another_database_is_a_401(tmp_path: Path) -> None:
    """Each database signs with its own key: the same secret key elsewhere does not vouch for it."""
    first = seenn.server.running(tmp_path / "a.db", api_key="sk_test_same")
    second = seenn.server.running(tmp_path / "b.db", api_key="sk_test_same")
    with first as one, second as two, _client(one.url, one.api_key) as secret:
        token = _mint(secret, "alice")
        with _client(two.url, token) as elsewhere:
            _error(elsewhere.get("/jobs"), 401, "UNAUTHORIZED")
        with _client(one.url, token) as here:
            assert here.get("/jobs").status_code == 200


def test_a_token_expires(db: str) -> None:
    """A token reads until ttlSeconds have passed, then every request with it is 401."""
    with seenn.server.running(db) as backend, \
            _client(backend.url, backend.api_key) as secret:
        now = [1_750_000_000.25]
        backend.app.store.clock = lambda: now[0]
        answer = secret.post("/tokens", json={"userId": "alice", "ttlSeconds": 60}).json()
        assert answer["expiresAt"] == "2025-06-15T15:07:40.000Z"
        default = secret.post("/tokens", json={"userId": "alice"}).json()
        assert default["expiresAt"] == "2025-06-15T16:06:40.000Z"
        with _client(backend.url, answer["token"]) as alice:
            now[0] += 59
            assert alice.get("/jobs").status_code == 200
            now[0] += 1
            error = _error(alice.get("/jobs"), 401, "TOKEN_EXPIRED")
            assert answer["token"] not in error["message"]


def test_a_token_outlives_a_restart(db: str) -> None:
    """The signing key is kept in the database, so tokens stay valid across a restart."""
    with seenn.server.running(db, api_key="sk_test_restart") as backend, \
            _client(backend.url, backend.api_key) as secret:
        token = _mint(secret, "alice")
    with seenn.server.running(db, api_key="sk_test_restart") as backend, \
            _client(backend.url, token) as alice:
        assert alice.get("/jobs").json() == {"jobs": []}


def test_tokens_and_keys_stay_out_of_the_access_log(tmp_path: Path) -> None:
    """With --access-log, requests are logged but no token or key appears in the log."""
    served = start_server(tmp_path, "--access-log")
    try:
        with _client(served.url, served.secret) as secret:
            token = _mint(secret, "alice")
            job = secret.post("/jobs", json={**BASE, "userId": "alice"}).json()
        with _client(served.url, token) as alice:
            assert alice.get(f"/jobs/{job['id']}").status_code == 200
            assert alice.get("/jobs").status_code == 200
        served.process.terminate()
        output, _ = served.process.communicate(timeout=30)
    finally:
        stop_server(served)
    assert f"GET /v1/jobs/{job['id']}" in output
    assert "POST /v1/tokens" in output
    for secret_text in (token, token.partition(".")[2], served.secret):
        assert secret_text not in output


# The database file --------------------------------------------------------------------------

def test_the_database_files_are_private(tmp_path: Path) -> None:
    """The database and its -wal and -shm files are created readable by their owner only."""
    db = tmp_path / "private.db"
    previous = os.umask(0o022)
    try:
        with seenn.server.running(db) as backend, _client(backend.url, backend.api_key) as api:
            assert api.post("/jobs", json={**BASE, "userId": "u"}).status_code == 201
            modes = {path.name: stat.S_IMODE(path.stat().st_mode)
                     for path in tmp_path.iterdir()}
    finally:
        os.umask(previous)
    assert modes == {"private.db": 0o600, "private.db-wal": 0o600, "private.db-shm": 0o600}
