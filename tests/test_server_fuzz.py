"""Property tests: nothing a client sends makes `seenn serve` answer 500 or corrupt a job."""

from __future__ import annotations

import http.client
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seenn.server
from seenn.server import SeennServerApp

SECRET, PUBLIC = "sk_test_fuzz", "pk_test_fuzz"
STATUSES = {"pending", "queued", "running", "completed", "failed"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An app with a target job (fuzzed at) and a sentinel job (never addressed)."""
    app = seenn.server.create_app(tmp_path_factory.mktemp("fuzz") / "f.db", api_key=SECRET,
                                  public_key=PUBLIC)
    world: dict[str, Any] = {"app": app}
    for name in ("target", "sentinel", "parent"):
        body = {"jobType": "t", "userId": "u", "title": name, "metadata": {"k": name}}
        if name == "parent":
            body["totalChildren"] = 3
        status, job = call(app, "POST", "/v1/jobs", body=json.dumps(body).encode())
        assert status == 201
        world[name] = job["id"]
    _, world["sentinel_doc"] = call(app, "GET", f"/v1/jobs/{world['sentinel']}")
    yield world
    app.close()


def call(app: SeennServerApp, method: str, raw_path: str, *, body: bytes = b"",
         headers: dict[str, str] | None = None, key: str | None = SECRET) -> tuple[int, Any]:
    """Call the WSGI app directly (the real app, without a socket) and decode the answer."""
    path, _, query = raw_path.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": unquote(path, encoding="latin-1"),
        "RAW_URI": raw_path, "QUERY_STRING": query, "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    if key is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"] = int(status.split()[0])

    payload = b"".join(app(environ, start_response))
    return answer["status"], json.loads(payload) if payload else None


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
protocol_keys = st.sampled_from([
    "id", "jobType", "userId", "title", "workflowId", "metadata", "queue", "stage",
    "estimatedCompletionAt", "estimatedDuration", "ttlSeconds", "parentJobId", "childIndex",
    "totalChildren", "childProgressMode", "progress", "message", "result", "error",
    "retryable", "push", "liveActivity"])
field_values = st.one_of(
    json_value, st.integers(-5, 1100), st.sampled_from(["t", "u", "average", "bogus", ""]),
    st.fixed_dictionaries({"name": st.text(max_size=5), "current": st.integers(-1, 5),
                           "total": st.integers(-1, 5)}),
    st.fixed_dictionaries({"position": st.integers(-2, 9)}),
    st.fixed_dictionaries({"code": st.text(max_size=5), "message": st.text(max_size=5)}))
bodies = st.one_of(
    st.dictionaries(protocol_keys, field_values, max_size=8).map(
        lambda d: json.dumps(d).encode()),
    st.binary(max_size=64), json_value.map(lambda v: json.dumps(v).encode()))


valid_bodies = st.fixed_dictionaries({}, optional={
    "progress": st.one_of(st.integers(0, 100), st.floats(0, 100), field_values),
    "message": st.one_of(st.text(max_size=20), field_values),
    "stage": st.fixed_dictionaries({"name": st.text(min_size=1, max_size=5),
                                    "current": st.integers(1, 3),
                                    "total": st.integers(3, 4)}),
    "queue": st.fixed_dictionaries({"position": st.integers(0, 9)}),
    "metadata": st.dictionaries(st.text(max_size=8), json_value, max_size=3),
    "result": st.fixed_dictionaries({"type": st.text(max_size=5), "url": st.text(max_size=9)}),
    "error": st.fixed_dictionaries({"code": st.text(min_size=1, max_size=5),
                                    "message": st.text(max_size=9)}),
    "retryable": st.booleans(),
    "jobType": st.text(min_size=1, max_size=5), "userId": st.just("u"),
    "title": st.text(min_size=1, max_size=5),
    "parentJobId": st.just("PARENT"), "childIndex": st.integers(-1, 4),
}).map(lambda d: json.dumps(d).encode().replace(b'"PARENT"', b'"%PARENT%"'))


@st.composite
def requests(draw: st.DrawFn, world: dict[str, Any]) -> dict[str, Any]:
    if draw(st.integers(0, 9)) < 7:
        # Well-formed calls with fuzzed fields: these reach the job-changing code.
        job = draw(st.sampled_from([world["target"], world["parent"]]))
        path = draw(st.sampled_from([f"/v1/jobs/{job}/progress", f"/v1/jobs/{job}/complete",
                                     f"/v1/jobs/{job}/fail", "/v1/jobs"]))
        body = draw(valid_bodies).replace(b"%PARENT%", world["parent"].encode())
        return {"method": "POST", "path": path, "body": body, "headers": {},
                "key": SECRET}
    job = draw(st.sampled_from([world["target"], world["parent"], "job_nope",
                                draw(st.text(max_size=12))]))
    action = draw(st.sampled_from(["", "progress", "complete", "fail", "children",
                                   draw(st.text(max_size=6))]))
    segments = ["v1", "jobs", quote(job, safe=""), action][:draw(st.integers(0, 4))]
    path = "/" + "/".join(s for s in segments if s)
    if draw(st.booleans()):
        path += "?" + draw(st.sampled_from(["userId=u", "userId=u&limit=0", "limit=x",
                                            "userId=u&cursor=zz", "userId=&limit=5"]))
    headers = {}
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(st.text(max_size=20).filter(str.isprintable))
    if draw(st.booleans()):
        headers["If-None-Match"] = draw(st.sampled_from(['"x"', "*", "", 'W/"a", "b"']))
    return {"method": draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"])),
            "path": path, "body": draw(bodies), "headers": headers,
            "key": draw(st.sampled_from([SECRET, SECRET, PUBLIC, "sk_test_wrong", None]))}


def assert_valid_job(job: dict[str, Any]) -> None:
    """The invariants every stored job keeps."""
    assert job["status"] in STATUSES
    assert isinstance(job["progress"], int)
    assert 0 <= job["progress"] <= 100
    if job["status"] == "completed":
        assert job["progress"] == 100
    for name in ("id", "userId", "jobType", "title", "createdAt", "updatedAt"):
        assert isinstance(job[name], str)
    assert isinstance(job.get("metadata", {}), dict)
    assert len(json.dumps(job.get("metadata", {}), separators=(",", ":"),
                          ensure_ascii=False).encode()) <= 10240


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_request_gets_a_500_or_corrupts_a_job(world: dict[str, Any],
                                                 data: st.DataObject) -> None:
    """Any method, path, header and body gets a <500 JSON answer; stored jobs stay valid."""
    app = world["app"]
    for name, extra in (("target", {}), ("parent", {"totalChildren": 3})):
        body = {"jobType": "t", "userId": "u", "title": name, **extra}
        world[name] = call(app, "POST", "/v1/jobs", body=json.dumps(body).encode())[1]["id"]
    request = data.draw(requests(world))
    status, body = call(world["app"], request["method"], request["path"], body=request["body"],
                        headers=request["headers"], key=request["key"])
    assert status < 500
    if status >= 400:
        assert isinstance(body["error"]["code"], str)
        assert isinstance(body["error"]["message"], str)
    assert call(app, "GET", f"/v1/jobs/{world['sentinel']}")[1] == world["sentinel_doc"]
    for name in ("target", "parent"):
        status, job = call(app, "GET", f"/v1/jobs/{world[name]}")
        assert status == 200
        assert_valid_job(job)


@pytest.mark.parametrize("path", [
    "/v1/jobs/%ff%fe", "/v1/jobs/%2e%2e/%2e%2e", "/v1//jobs", "/v1/jobs/" + "a" * 5000,
    "/v1/jobs/%00", "/v1/jobs?userId=%ff", "/%", "/v1/jobs/x%2Fy/progress",
])
def test_odd_raw_paths_over_http(tmp_path: Path, path: str) -> None:
    """Odd raw request paths sent over a real socket are answered with a JSON 4xx (or 200)."""
    with seenn.server.running(tmp_path / "p.db", api_key=SECRET) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.server.server_address[1],
                                          timeout=30)
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {SECRET}")
        conn.endheaders()
        response = conn.getresponse()
        payload = response.read()
        conn.close()
    assert response.status < 500
    assert isinstance(json.loads(payload), dict)
