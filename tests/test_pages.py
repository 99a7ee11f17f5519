"""The job page and operator view as HTTP sees them: headers, negotiation, traversal, listing."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import httpx
import pytest

import seenn
import seenn.server
from seenn.server import RunningServer, _app
from seenn.server._pages import ASSETS, CONTENT_SECURITY_POLICY

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[RunningServer]:
    with seenn.server.running(tmp_path / "pages.db") as server:
        yield server


@pytest.fixture
def srv(db: str) -> Iterator[RunningServer]:
    """The backend once per storage engine (SQLite and PostgreSQL)."""
    with seenn.server.running(db) as server:
        yield server


def raw_get(server: RunningServer, target: str, accept: str = "text/html") -> tuple[int, bytes]:
    """Send a request line exactly as written (no client normalises the path)."""
    host, port = server.server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n"
                     "Connection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_pages_answer_html_with_the_security_headers(backend: RunningServer) -> None:
    """/ and /jobs/{id} answer HTML with the CSP, nosniff, no-referrer and no framing."""
    assert CONTENT_SECURITY_POLICY == CSP
    for path in ("/", "/jobs/job_123", "/jobs/%3Cimg%3E"):
        answer = httpx.get(backend.url + path, headers=HTML)
        assert answer.status_code == 200, path
        assert answer.headers["content-type"] == "text/html; charset=utf-8"
        assert answer.headers["content-security-policy"] == CSP
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["cache-control"] == "no-cache"
        assert answer.headers["vary"] == "Accept"
        assert "<!doctype html>" in answer.text
        # The page is the same file whatever the id: nothing of the request is in it.
        assert "img" not in answer.text.replace("img-", "")


def test_assets_have_their_types_and_the_same_headers(backend: RunningServer) -> None:
    """Each asset is served with its type, whatever Accept says, with the security headers."""
    for name, content_type in ASSETS.items():
        answer = httpx.get(f"{backend.url}/assets/{name}", headers={"Accept": "*/*"})
        assert answer.status_code == 200, name
        assert answer.headers["content-type"] == content_type
        assert answer.headers["content-security-policy"] == CSP
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.content == (resources.files("seenn.server") / "static" / name).read_bytes()


def test_pages_revalidate_with_their_etag(backend: RunningServer) -> None:
    """A page or an asset asked again with its ETag is a 304 without a body."""
    for path, headers in (("/jobs/x", HTML), ("/assets/job.js", {})):
        first = httpx.get(backend.url + path, headers=headers)
        again = httpx.get(backend.url + path,
                          headers={**headers, "If-None-Match": first.headers["etag"]})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == first.headers["etag"]


def test_head_answers_the_headers_only(backend: RunningServer) -> None:
    """HEAD of a page has its length and type and no body."""
    answer = httpx.head(backend.url + "/jobs/x", headers=HTML)
    assert answer.status_code == 200
    assert int(answer.headers["content-length"]) > 0
    assert answer.content == b""


def test_other_methods_on_pages_are_405(backend: RunningServer) -> None:
    """POST, PUT or DELETE on a page is 405 in the JSON error shape, naming GET and HEAD."""
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        answer = httpx.request(method, backend.url + "/jobs/x", headers=HTML)
        assert answer.status_code == 405, method
        assert answer.headers["allow"] == "GET, HEAD"
        assert answer.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_clients_that_do_not_ask_for_html_are_pointed_at_the_api(
        backend: RunningServer) -> None:
    """Without Accept: text/html, / and /jobs/{id} are 406 JSON naming /v1; /v1 is unchanged."""
    for accept in (None, "application/json", "*/*", "text/html;q=0"):
        headers = {"Accept": accept} if accept else {}
        for path in ("/", "/jobs/job_1"):
            answer = httpx.get(backend.url + path, headers=headers)
            assert answer.status_code == 406, (path, accept)
            assert answer.headers["content-type"] == "application/json"
            assert answer.json()["error"]["code"] == "NOT_ACCEPTABLE"
            assert "/v1" in answer.json()["error"]["message"]
    # The API answers JSON even to a browser's Accept.
    api = httpx.get(backend.url + "/v1/jobs/job_1", headers=HTML)
    assert api.status_code == 401
    assert api.headers["content-type"] == "application/json"
    health = httpx.get(backend.url + "/healthz", headers=HTML)
    assert health.json()["status"] == "ok"


@pytest.mark.parametrize("target", [
    "/assets/../_app.py",
    "/assets/..%2f_app.py",
    "/assets/..%2F..%2Fpyproject.toml",
    "/assets/%2e%2e/_pages.py",
    "/assets/%2e%2e%2f%2e%2e%2f__init__.py",
    "/assets/..\\_app.py",
    "/assets/..%5c_app.py",
    "/assets/static/job.js",
    "/assets/./job.js",
    "/assets/job.js/..",
    "/assets/job.js%00.png",
    "/assets//etc/passwd",
    "/assets/%2Fetc%2Fpasswd",
    "/assets/__init__.py",
    "/assets/_pages.py",
    "/assets/index.html",
    "/assets/",
    "/assets",
    "/static/job.js",
    "/jobs/../../_app.py",
    "/assets/JOB.JS",
    "/assets/job.js?../../_app.py",
])
def test_no_path_reaches_a_file_outside_the_assets(backend: RunningServer, target: str) -> None:
    """Raw paths with .., encoded slashes, NUL or other names never serve any other file."""
    status, body = raw_get(backend, target)
    source = (resources.files("seenn.server") / "_app.py").read_bytes()
    assert body[:100] not in source
    assert b"root:" not in body
    if target == "/assets/job.js?../../_app.py":
        # The query is not part of the name: this is job.js itself.
        assert status == 200
        assert body == (resources.files("seenn.server") / "static" / "job.js").read_bytes()
    else:
        assert status in (404, 406), target
        assert body.startswith(b'{"error":')


def test_pages_load_no_inline_script_or_style() -> None:
    """The HTML has only external scripts and no style attributes: the CSP forbids both."""
    static = resources.files("seenn.server") / "static"
    for name in ("index.html", "job.html"):
        text = (static / name).read_text("utf-8")
        scripts = re.findall(r"<script[^>]*>(.*?)</script>", text, re.S)
        assert scripts and all(body.strip() == "" for body in scripts), name
        assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", text)), name
        assert " style=" not in text and "<style" not in text, name
        assert "http://" not in text and "https://" not in text, name  # no CDN, no fonts
        assert " on" not in re.sub(r"\s+", " ", text).replace(" only", ""), name
    for name in ASSETS:
        text = (static / name).read_text("utf-8")
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, name
        assert "eval(" not in text and "document.write" not in text, name
        assert "http://" not in text and "https://" not in text, name


def test_the_wheel_ships_the_pages(tmp_path: Path) -> None:
    """A wheel built from the source tree holds every static file, byte for byte."""
    root = Path(__file__).resolve().parent.parent
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                            "--wheel-dir", str(tmp_path), str(root)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("seenn-*.whl")
    static = resources.files("seenn.server") / "static"
    with zipfile.ZipFile(wheel) as archive:
        for name in ("index.html", "job.html", *ASSETS):
            assert archive.read(f"seenn/server/static/{name}") == (static / name).read_bytes()


# GET /v1/jobs?recent=1 --------------------------------------------------------------

def recent(server: RunningServer, key: str, **params: str) -> httpx.Response:
    return httpx.get(server.url + "/v1/jobs", params={"recent": "1", **params},
                     headers={"Authorization": f"Bearer {key}"})


def test_recent_lists_every_users_jobs_newest_first(srv: RunningServer) -> None:
    """A secret key lists the app's jobs of all users, newest first, with filters."""
    with seenn.SeennClient(srv.api_key, base_url=srv.url) as client:
        a = client.jobs.start("video", user_id="ann", title="A")
        b = client.jobs.start("export", user_id="bob", title="B")
        c = client.jobs.start("video", user_id="bob", title="C")
        b.fail(error={"code": "BOOM", "message": "no"})
        c.complete()
    ids = [job["id"] for job in recent(srv, srv.api_key).json()["jobs"]]
    assert ids == [c.id, b.id, a.id]
    assert [j["id"] for j in recent(srv, srv.api_key, userId="bob").json()["jobs"]] \
        == [c.id, b.id]
    assert [j["id"] for j in recent(srv, srv.api_key, jobType="video").json()["jobs"]] \
        == [c.id, a.id]
    assert [j["id"] for j in recent(srv, srv.api_key, status="failed").json()["jobs"]] \
        == [b.id]
    assert recent(srv, srv.api_key, userId="bob", jobType="video",
                  status="completed").json()["jobs"][0]["id"] == c.id
    assert recent(srv, srv.api_key, userId="nobody").json() == {"jobs": []}


def test_recent_pages_with_cursors(srv: RunningServer) -> None:
    """limit and nextCursor page through the recent jobs without gaps or repeats."""
    with seenn.SeennClient(srv.api_key, base_url=srv.url) as client:
        made = [client.jobs.start("t", user_id=f"u{i % 3}", title="x").id for i in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        body = recent(srv, srv.api_key, **params).json()
        seen += [job["id"] for job in body["jobs"]]
        cursor = body.get("nextCursor")
        if cursor is None:
            break
    assert seen == made[::-1]


def test_recent_filters_scan_a_bounded_number_of_jobs_per_page(
        srv: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sparse filter answers short pages with a cursor that goes on where the scan stopped."""
    monkeypatch.setattr(_app, "_RECENT_SCAN", 4)
    monkeypatch.setattr(_app, "_RECENT_BATCH", 2)
    with seenn.SeennClient(srv.api_key, base_url=srv.url) as client:
        rare = [client.jobs.start("rare", user_id="u", title="r").id for _ in range(2)]
        for _ in range(9):
            client.jobs.start("common", user_id="u", title="c")
    found: list[str] = []
    pages = 0
    cursor = None
    while True:
        params = {"jobType": "rare", "limit": "5", **({"cursor": cursor} if cursor else {})}
        body = recent(srv, srv.api_key, **params).json()
        pages += 1
        found += [job["id"] for job in body["jobs"]]
        cursor = body.get("nextCursor")
        if cursor is None:
            break
    assert found == rare[::-1]
    assert pages >= 3


def test_recent_needs_a_secret_key(srv: RunningServer) -> None:
    """A public key or a user token may not list every user's jobs (403)."""
    assert srv.public_key is not None
    with seenn.SeennClient(srv.api_key, base_url=srv.url) as client:
        client.jobs.start("t", user_id="ann", title="x")
        token = client.create_token("ann").token
    for key in (srv.public_key, token):
        answer = recent(srv, key)
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "FORBIDDEN"
    assert recent(srv, "sk_test_wrong").status_code == 401


@pytest.mark.parametrize(("params", "field"), [
    ({"status": "done"}, "status"),
    ({"jobType": "x" * 101}, "jobType"),
    ({"userId": "u" * 256}, "userId"),
    ({"recent": "yes"}, "recent"),
    ({"limit": "0"}, "limit"),
    ({"cursor": "nope"}, "cursor"),
])
def test_recent_refuses_bad_parameters_naming_them(srv: RunningServer,
                                                   params: dict[str, str], field: str) -> None:
    """A bad filter or page parameter is 400 VALIDATION_ERROR naming the field."""
    answer = recent(srv, srv.api_key, **params)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert field in error["details"]["fields"]
