"""docs/openapi.yaml: valid OpenAPI 3.1, and true to what `seenn serve` answers."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest
import yaml
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

import seenn.server
from seenn.server import RunningServer

SPEC_FILE = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch")
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining")
DOCUMENTED_HEADERS = ("ETag", "Cache-Control", "Retry-After", "Idempotent-Replayed", "Allow",
                      *RATE_HEADERS)
SPEC: dict[str, Any] = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
BASE = {"jobType": "t", "userId": "u", "title": "t"}


# Helpers -------------------------------------------------------------------------------


def _follow(parts: tuple[str, ...]) -> Any:
    node: Any = SPEC
    for part in parts:
        node = node[part]
    return node


def _resolve(node: dict[str, Any], parts: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
    """Follow a local ``$ref`` (of a response, header or parameter) to its target."""
    while "$ref" in node:
        parts = tuple(node["$ref"].removeprefix("#/").split("/"))
        node = _follow(parts)
    return node, parts


@functools.cache
def _validator(parts: tuple[str, ...]) -> jsonschema.Draft202012Validator:
    """A validator for the schema at ``parts`` of the spec; its ``$ref``s resolve in the spec."""
    pointer = "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)
    _follow(parts)  # a KeyError here names a schema the spec does not have
    return jsonschema.Draft202012Validator(
        {**SPEC, "$ref": "#" + pointer},
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _schema_errors(instance: Any, parts: tuple[str, ...]) -> list[str]:
    """The reasons ``instance`` is not valid against the schema at ``parts`` of the spec."""
    validator = _validator(parts)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(instance)]


def _server_paths(item: dict[str, Any]) -> list[str]:
    """The URL path prefixes a path item is served under."""
    return [urlsplit(server["url"]).path for server in item.get("servers", SPEC["servers"])]


def _check_answer(response: httpx.Response, path: str, method: str) -> None:
    """Assert that the spec lists this status for the operation and that the answer fits it."""
    operation = SPEC["paths"][path][method]
    status = str(response.status_code)
    assert status in operation["responses"], (
        f"{method.upper()} {path} answered {status}, not listed: {response.text}")
    documented, parts = _resolve(operation["responses"][status],
                                 ("paths", path, method, "responses", status))
    _check_against(response, documented, parts)


def _check_against(response: httpx.Response, documented: dict[str, Any],
                   parts: tuple[str, ...]) -> None:
    content = documented.get("content")
    if content is None:
        assert response.content == b""
    else:
        assert response.headers["Content-Type"] == "application/json"
        errors = _schema_errors(response.json(),
                                (*parts, "content", "application/json", "schema"))
        assert errors == [], f"{response.status_code} {response.text}"
    headers = documented.get("headers", {})
    for name, header in headers.items():
        header, header_parts = _resolve(header, (*parts, "headers", name))
        if header.get("required"):
            assert name in response.headers, name
        if name in response.headers:
            value: Any = response.headers[name]
            if header["schema"].get("type") == "integer":
                value = int(value)
            assert _schema_errors(value, (*header_parts, "schema")) == [], (name, value)
    for name in DOCUMENTED_HEADERS:
        if name in response.headers:
            assert name in headers, f"{name} is sent with {response.status_code} but undocumented"


class Api:
    """Sends requests named by spec path templates and checks every answer against the spec."""

    def __init__(self, backend: RunningServer, key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=backend.url, headers=headers)

    def __call__(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        params = kwargs.pop("path_params", {})
        prefix = _server_paths(SPEC["paths"][path])[0]
        response = self.http.request(method.upper(), prefix + path.format(**params), **kwargs)
        _check_answer(response, path, method)
        return response

    def start(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self("post", "/jobs", json=body)
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        return job


def _example(path: str, method: str, name: str | None = None) -> dict[str, Any]:
    content = SPEC["paths"][path][method]["requestBody"]["content"]["application/json"]
    value = content["examples"][name]["value"] if name else content["example"]
    return copy.deepcopy(value)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[RunningServer]:
    """A `seenn serve` with a rate limit no test reaches, so the rate headers are always sent."""
    with seenn.server.running(tmp_path / "db", rate_limit=1_000_000) as srv:
        yield srv


@pytest.fixture
def api(backend: RunningServer) -> Iterator[Api]:
    """Requests with the secret key, checked against the spec."""
    client = Api(backend, backend.api_key)
    yield client
    client.http.close()


@pytest.fixture(scope="module")
def shared_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One `seenn serve` for the many small cases that need no fresh database."""
    with seenn.server.running(tmp_path_factory.mktemp("openapi") / "db") as srv:
        yield srv


@pytest.fixture(scope="module")
def shared_api(shared_backend: RunningServer) -> Iterator[Api]:
    """Checked requests to the shared server with its secret key."""
    client = Api(shared_backend, shared_backend.api_key)
    yield client
    client.http.close()


@pytest.fixture(scope="module")
def shared_anonymous(shared_backend: RunningServer) -> Iterator[Api]:
    """Checked requests to the shared server with no key."""
    client = Api(shared_backend, None)
    yield client
    client.http.close()


# The document itself -------------------------------------------------------------------


def test_spec_is_valid_openapi_3_1() -> None:
    """docs/openapi.yaml passes the OpenAPI 3.1 validator."""
    assert SPEC["openapi"].startswith("3.1.")
    validate(SPEC, cls=OpenAPIV31SpecValidator)


def _examples() -> Iterator[tuple[str, Any, tuple[str, ...]]]:
    for path, item in SPEC["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            where = ("paths", path, method)
            if "requestBody" in operation:
                content = operation["requestBody"]["content"]["application/json"]
                schema = (*where, "requestBody", "content", "application/json", "schema")
                if "example" in content:
                    yield f"{method} {path}", content["example"], schema
                for name, example in content.get("examples", {}).items():
                    yield f"{method} {path} {name}", example["value"], schema
    for name, response in SPEC["components"]["responses"].items():
        content = response.get("content", {}).get("application/json", {})
        if "example" in content:
            schema = ("components", "responses", name, "content", "application/json", "schema")
            yield f"response {name}", content["example"], schema
    for name, schema in SPEC["components"]["schemas"].items():
        for example in schema.get("examples", []):
            yield f"schema {name}", example, ("components", "schemas", name)


def test_every_example_fits_its_schema() -> None:
    """Each example in the document is valid against the schema it illustrates."""
    examples = list(_examples())
    assert len(examples) >= 10
    for label, example, schema in examples:
        assert _schema_errors(example, schema) == [], label


# Routes --------------------------------------------------------------------------------


def test_spec_paths_and_methods_are_exactly_the_server_routes(backend: RunningServer,
                                                              api: Api) -> None:
    """Every documented path and method is served, and every other method there is 405."""
    job = api.start(BASE)
    # A job that ran and completed, so its eta key has statistics to read and to reset.
    api("post", "/jobs/{id}/progress", json={"progress": 5}, path_params={"id": job["id"]})
    api("post", "/jobs/{id}/complete", json={}, path_params={"id": job["id"]})
    values = {"id": job["id"], "parentId": job["id"], "etaKey": job["workflowId"]}
    with httpx.Client(base_url=backend.url,
                      headers={"Authorization": f"Bearer {backend.api_key}"}) as http:
        for path, item in SPEC["paths"].items():
            documented = {m for m in METHODS if m in item}
            assert documented, path
            for prefix in _server_paths(item):
                url = prefix + path.format(**values)
                for method in METHODS:
                    response = http.request(method.upper(), url)
                    if method in documented:
                        assert response.status_code not in (404, 405), (method, url)
                    else:
                        assert response.status_code == 405, (method, url)
                        assert set(response.headers["Allow"].lower().split(", ")) == documented
                        if method != "head":
                            _check_against(response,
                                           *_resolve(SPEC["components"]["responses"]
                                                     ["MethodNotAllowed"],
                                                     ("components", "responses",
                                                      "MethodNotAllowed")))


@pytest.mark.parametrize("path", [
    "/v1", "/v1/job", "/v2/jobs", "/jobs", "/v1/jobs/x/cancel", "/v1/jobs/x/children/y",
    "/v1/jobs/x/progress/y", "/v1/health", "/v1/healthz/x",
])
def test_paths_outside_the_spec_are_404(shared_api: Api, shared_anonymous: Api,
                                        path: str) -> None:
    """A path the spec does not list is 404 NOT_FOUND with the error body, key or not."""
    for api in (shared_api, shared_anonymous):
        for method in ("GET", "POST"):
            response = api.http.request(method, path)
            assert response.status_code == 404, (method, path)
            assert response.json()["error"]["code"] == "NOT_FOUND"
            assert _schema_errors(response.json(), ("components", "schemas", "NotFoundError")) \
                == []


# Answers of a running server -----------------------------------------------------------


def test_job_lifecycle_answers_fit_the_spec(api: Api) -> None:
    """Jobs, pages and children answered along a whole lifecycle match the spec's schemas."""
    queued = api.start(_example("/jobs", "post", "job"))
    assert queued["status"] == "queued"
    assert _schema_errors(queued, ("components", "schemas", "Job")) == []
    one = {"path_params": {"id": queued["id"]}}
    first = api("get", "/jobs/{id}", **one)
    etag = first.headers["ETag"]
    assert api("get", "/jobs/{id}", headers={"If-None-Match": etag}, **one).status_code == 304
    assert api("get", "/jobs/{id}", headers={"If-None-Match": f'W/{etag}, "x"'},
               **one).status_code == 304
    running = api("post", "/jobs/{id}/progress", json=_example("/jobs/{id}/progress", "post"),
                  **one).json()
    assert (running["status"], running["progress"]) == ("running", 50)
    assert running["metadata"] == {"prompt": "A cat", "frames": 120}
    done = api("post", "/jobs/{id}/complete", json=_example("/jobs/{id}/complete", "post"),
               **one).json()
    assert (done["status"], done["progress"]) == ("completed", 100)
    for action, body in (("progress", {"progress": 1}), ("complete", {}),
                         ("fail", {"error": {"code": "E", "message": "m"}})):
        refused = api("post", f"/jobs/{{id}}/{action}", json=body, **one)
        assert refused.json()["error"]["code"] == "CONFLICT"

    other = api.start(BASE)
    failed = api("post", "/jobs/{id}/fail", json=_example("/jobs/{id}/fail", "post"),
                 path_params={"id": other["id"]}).json()
    assert (failed["status"], failed["retryable"]) == ("failed", True)

    parent = api.start(_example("/jobs", "post", "parent"))
    again = api("post", "/jobs", json=_example("/jobs", "post", "parent"))
    assert (again.status_code, again.json()["id"]) == (200, parent["id"])
    changed = api("post", "/jobs", json={**_example("/jobs", "post", "parent"), "title": "x"})
    assert changed.json()["error"]["code"] == "CONFLICT"
    child = api.start(_example("/jobs", "post", "child"))
    assert child["parent"] == {"parentJobId": parent["id"], "childIndex": 0}
    second = api.start({**BASE, "userId": "user_123", "parentJobId": parent["id"]})
    api("post", "/jobs/{id}/progress", json={"progress": 30},
        path_params={"id": second["id"]})
    api("post", "/jobs/{id}/complete", json={}, path_params={"id": child["id"]})
    family = api("get", "/jobs/{parentId}/children", path_params={"parentId": parent["id"]})
    assert [c["id"] for c in family.json()["children"]] == [child["id"], second["id"]]
    assert family.json()["parent"]["children"] == {"total": 3, "completed": 1, "failed": 0,
                                                   "running": 1, "pending": 0}
    alone = api("get", "/jobs/{parentId}/children", path_params={"parentId": other["id"]})
    assert alone.json()["children"] == []

    seen: list[str] = []
    query: dict[str, Any] = {"userId": "user_123", "limit": 2}
    while True:
        page = api("get", "/jobs", params=query).json()
        assert _schema_errors(page, ("components", "schemas", "JobPage")) == []
        seen += [j["id"] for j in page["jobs"]]
        if "nextCursor" not in page:
            break
        query["cursor"] = page["nextCursor"]
    assert seen == [second["id"], child["id"], parent["id"], queued["id"]]
    health = api("get", "/healthz").json()
    assert health["status"] == "ok"
    assert _schema_errors(health, ("components", "schemas", "Health")) == []
    assert "jobsByIds" in health["extensions"]

    batch = api("get", "/jobs", params={"ids": f"{child['id']},nope"})
    assert _schema_errors(batch.json(), ("components", "schemas", "JobsByIds")) == []
    assert batch.json()["missing"] == ["nope"]
    unchanged = api("get", "/jobs", params={"ids": f"{child['id']},nope", "wait": "0.01"},
                    headers={"If-None-Match": batch.headers["ETag"]})
    assert unchanged.status_code == 304
    api("get", "/jobs/{id}", path_params={"id": child["id"]}, params={"wait": "31"})
    api("get", "/jobs", params={"ids": "", "wait": "1"})


def test_idempotent_replays_fit_the_spec(api: Api) -> None:
    """A replayed POST and a reused Idempotency-Key are answered as the spec documents."""
    key = {"Idempotency-Key": "key-1"}
    first = api("post", "/jobs", json=BASE, headers=key)
    replay = api("post", "/jobs", json=BASE, headers=key)
    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.json() == first.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    reused = api("post", "/jobs", json={**BASE, "title": "other"}, headers=key)
    assert (reused.status_code, reused.json()["error"]["code"]) == (409,
                                                                     "IDEMPOTENCY_KEY_REUSED")
    one = {"path_params": {"id": first.json()["id"]}}
    moved = api("post", "/jobs/{id}/progress", json={"progress": 5}, headers=key, **one)
    assert moved.status_code == 409
    update = {"Idempotency-Key": "key-2"}
    api("post", "/jobs/{id}/progress", json={"progress": 5}, headers=update, **one)
    again = api("post", "/jobs/{id}/progress", json={"progress": 5}, headers=update, **one)
    assert again.headers["Idempotent-Replayed"] == "true"
    too_long = api("post", "/jobs", json=BASE, headers={"Idempotency-Key": "k" * 256})
    assert too_long.json()["error"]["details"]["field"] == "Idempotency-Key"


def test_error_answers_fit_the_spec(backend: RunningServer, api: Api) -> None:
    """Each error status an endpoint can give comes with the documented code and body."""
    job = api.start(BASE)
    one = {"path_params": {"id": job["id"]}}
    cases: list[tuple[httpx.Response, int, str]] = [
        (api("get", "/jobs"), 400, "VALIDATION_ERROR"),
        (api("get", "/jobs", params={"userId": "u", "limit": "0", "cursor": "nope"}), 400,
         "VALIDATION_ERROR"),
        (api("post", "/jobs", json={**BASE, "title": "", "ttlSeconds": 1}), 400,
         "VALIDATION_ERROR"),
        (api("post", "/jobs", content=b"{oops"), 400, "INVALID_JSON"),
        (api("post", "/jobs/{id}/complete", **one), 400, "INVALID_JSON"),
        (api("post", "/jobs", json={**BASE, "parentJobId": "job_missing"}), 404, "NOT_FOUND"),
        (api("get", "/jobs/{id}", path_params={"id": "job_missing"}), 404, "NOT_FOUND"),
        (api("get", "/jobs/{parentId}/children", path_params={"parentId": "job_missing"}), 404,
         "NOT_FOUND"),
        (api("post", "/jobs/{id}/progress", json={"progress": 1},
             path_params={"id": "job_missing"}), 404, "NOT_FOUND"),
        (api("post", "/jobs", content=b"{" + b" " * (512 * 1024) + b"}"), 413,
         "PAYLOAD_TOO_LARGE"),
        (api("post", "/jobs/{id}/fail", content=b"[" * 600_000, **one), 413,
         "PAYLOAD_TOO_LARGE"),
    ]
    anonymous = Api(backend, None)
    cases += [(anonymous("get", "/jobs/{id}", **one), 401, "UNAUTHORIZED"),
              (anonymous("post", "/jobs", json=BASE), 401, "UNAUTHORIZED")]
    anonymous.http.close()
    assert backend.public_key is not None
    public = Api(backend, backend.public_key)
    assert public("get", "/jobs/{id}", **one).json()["id"] == job["id"]
    cases += [(public("get", "/jobs", params={"userId": "u"}), 403, "FORBIDDEN"),
              (public("post", "/jobs", json=BASE), 403, "FORBIDDEN"),
              (public("post", "/jobs/{id}/complete", json={}, **one), 403, "FORBIDDEN")]
    public.http.close()
    for response, status, code in cases:
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert api("get", "/jobs/{id}", **one).json()["status"] == "pending"


def test_jobs_ended_by_the_stale_limit_fit_the_spec(tmp_path: Path) -> None:
    """A job with its own limit, and the WORKER_LOST job it becomes, match the Job schema."""
    now = [1_800_000_000.0]
    with seenn.server.running(tmp_path / "db", clock=lambda: now[0]) as srv:
        api = Api(srv, srv.api_key)
        job = api.start({**BASE, "staleAfterSeconds": 60})
        one = {"path_params": {"id": job["id"]}}
        running = api("post", "/jobs/{id}/progress",
                      json={"progress": 32, "staleAfterSeconds": 90}, **one).json()
        assert running["staleAfterSeconds"] == 90
        now[0] += 91
        lost = api("get", "/jobs/{id}", **one).json()
        late = api("post", "/jobs/{id}/progress", json={"progress": 33}, **one)
        listed = api("get", "/jobs", params={"userId": "u"}).json()
        api.http.close()
    assert (lost["status"], lost["error"]["code"]) == ("failed", "WORKER_LOST")
    assert _schema_errors(lost["error"], ("components", "schemas", "JobError")) == []
    assert (late.status_code, late.json()["error"]["code"]) == (409, "CONFLICT")
    assert listed["jobs"] == [lost]


def test_eta_answers_fit_the_spec(tmp_path: Path) -> None:
    """Statistics, their list and reset, jobs with an ETA and every eta error fit the spec."""
    now = [1_800_000_000.0]
    with seenn.server.running(tmp_path / "db", clock=lambda: now[0]) as srv:
        api = Api(srv, srv.api_key)
        for seconds in (20.0, 24.0, 30.0, 26.0, 22.0, 28.0):
            one = {"path_params": {"id": api.start({**BASE, "workflowId": "w/1"})["id"]}}
            api("post", "/jobs/{id}/progress", json={"progress": 0, "stage": {"name": "a"}},
                **one)
            now[0] += seconds / 2
            api("post", "/jobs/{id}/progress", json={"progress": 50, "stage": {"name": "b"}},
                **one)
            now[0] += seconds / 2
            api("post", "/jobs/{id}/complete", json={}, **one)
        key = {"path_params": {"etaKey": "w%2F1"}}  # the Api helper does not quote
        listed = api("get", "/eta").json()
        detail = api("get", "/eta/{etaKey}", **key).json()
        one = {"path_params": {"id": api.start({**BASE, "workflowId": "w/1"})["id"]}}
        api("post", "/jobs/{id}/progress", json={"progress": 0}, **one)
        now[0] += 10
        running = api("post", "/jobs/{id}/progress", json={"progress": 40}, **one).json()
        now[0] += 120  # past the ETA, within the stale limit
        overdue = api("get", "/jobs/{id}", **one).json()
        reset = api("delete", "/eta/{etaKey}", **key)
        errors = [(api("get", "/eta/{etaKey}", **key), 404, "NOT_FOUND"),
                  (api("delete", "/eta/{etaKey}", **key), 404, "NOT_FOUND"),
                  (api("get", "/eta/{etaKey}", path_params={"etaKey": "x" * 101}), 400,
                   "VALIDATION_ERROR")]
        for credential in (srv.public_key, None):
            other = Api(srv, credential)
            status, code = (403, "FORBIDDEN") if credential else (401, "UNAUTHORIZED")
            errors += [(other("get", "/eta"), status, code),
                       (other("get", "/eta/{etaKey}", **key), status, code),
                       (other("delete", "/eta/{etaKey}", **key), status, code)]
            other.http.close()
        api.http.close()
    assert [entry["etaKey"] for entry in listed["stats"]] == ["w/1"]
    assert (detail["count"], set(detail["stages"])) == (6, {"a", "b"})
    assert (running["etaBasedOn"], running["status"]) == (6, "running")
    assert overdue["etaOverdue"] is True
    assert reset.json() == {"etaKey": "w/1", "reset": True}
    for response, status, code in errors:
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_rate_limited_answers_fit_the_spec(tmp_path: Path) -> None:
    """Beyond the rate limit the answer is 429 with Retry-After and the rate headers."""
    with seenn.server.running(tmp_path / "db", rate_limit=2) as srv:
        srv.app.store.clock = lambda: 9000.5
        api = Api(srv, srv.api_key)
        answers = [api("get", "/jobs", params={"userId": "u"}) for _ in range(3)]
        answers.append(api("post", "/jobs", json=BASE))
        api.http.close()
    assert [a.status_code for a in answers] == [200, 200, 429, 429]
    assert answers[2].headers["Retry-After"] == "1"
    assert answers[3].json()["error"]["code"] == "RATE_LIMITED"


# Request schemas against the server's validation ---------------------------------------

_LONG = "x" * 1001
REQUEST_CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("/jobs", BASE, True),
    ("/jobs", {**BASE, "workflowId": "w", "metadata": {"a": [1, None]},
               "queue": {"position": 0, "total": 0, "queueName": "q"},
               "stage": {"name": "s", "current": 2, "total": 3, "description": "d"},
               "estimatedCompletionAt": "2030-01-01T00:00:00Z", "estimatedDuration": 5000.5,
               "ttlSeconds": 60, "unknownField": 1}, True),
    ("/jobs", {**BASE, "queue": {"position": 1, "queue_name": "q"}}, True),
    ("/jobs", {**BASE, "stage": {"name": "s"}}, True),
    ("/jobs", {**BASE, "id": "A0_.:~-z"}, True),
    ("/jobs", {**BASE, "id": "x" * 255}, True),
    ("/jobs", {**BASE, "id": "x" * 256}, False),
    ("/jobs", {**BASE, "id": "a/b"}, False),
    ("/jobs", {**BASE, "id": "-a"}, False),
    ("/jobs", {**BASE, "id": ""}, False),
    ("/jobs", {**BASE, "id": 7}, False),
    ("/jobs", {"userId": "u", "title": "t"}, False),
    ("/jobs", {**BASE, "jobType": ""}, False),
    ("/jobs", {**BASE, "jobType": "x" * 100}, True),
    ("/jobs", {**BASE, "jobType": "x" * 101}, False),
    ("/jobs", {**BASE, "userId": "x" * 255}, True),
    ("/jobs", {**BASE, "userId": "x" * 256}, False),
    ("/jobs", {**BASE, "title": "x" * 200}, True),
    ("/jobs", {**BASE, "title": "x" * 201}, False),
    ("/jobs", {**BASE, "workflowId": ""}, False),
    ("/jobs", {**BASE, "ttlSeconds": 59}, False),
    ("/jobs", {**BASE, "ttlSeconds": 2_592_000}, True),
    ("/jobs", {**BASE, "ttlSeconds": 2_592_001}, False),
    ("/jobs", {**BASE, "ttlSeconds": 60.5}, False),
    ("/jobs", {**BASE, "staleAfterSeconds": 10}, True),
    ("/jobs", {**BASE, "staleAfterSeconds": 2_592_000}, True),
    ("/jobs", {**BASE, "staleAfterSeconds": 9}, False),
    ("/jobs", {**BASE, "staleAfterSeconds": 2_592_001}, False),
    ("/jobs", {**BASE, "staleAfterSeconds": 60.5}, False),
    ("/jobs", {**BASE, "staleAfterSeconds": "60"}, False),
    ("/jobs", {**BASE, "staleAfterSeconds": True}, False),
    ("/jobs", {**BASE, "totalChildren": 1000, "childProgressMode": "sequential"}, True),
    ("/jobs", {**BASE, "totalChildren": 0}, False),
    ("/jobs", {**BASE, "totalChildren": 1001}, False),
    ("/jobs", {**BASE, "totalChildren": 2, "childProgressMode": "median"}, False),
    ("/jobs", {**BASE, "childIndex": 0}, False),
    ("/jobs", {**BASE, "metadata": "text"}, False),
    ("/jobs", {**BASE, "metadata": [1]}, False),
    ("/jobs", {**BASE, "queue": {"total": 3}}, False),
    ("/jobs", {**BASE, "queue": {"position": -1}}, False),
    ("/jobs", {**BASE, "queue": {"position": 1, "name": "q"}}, False),
    ("/jobs", {**BASE, "stage": {"current": 1}}, False),
    ("/jobs", {**BASE, "stage": {"name": "s", "current": 0}}, False),
    ("/jobs", {**BASE, "stage": {"name": "x" * 101}}, False),
    ("/jobs", {**BASE, "estimatedCompletionAt": "tomorrow"}, False),
    ("/jobs", {**BASE, "estimatedDuration": -1}, False),
    ("/jobs/{id}/progress", {"progress": 0}, True),
    ("/jobs/{id}/progress", {"progress": 100}, True),
    ("/jobs/{id}/progress", {"progress": 42.5, "message": "", "push": True,
                             "liveActivity": {"a": 1}}, True),
    ("/jobs/{id}/progress", {"progress": 5, "queue": {"position": 2}}, True),
    ("/jobs/{id}/progress", {"progress": 5, "staleAfterSeconds": 600}, True),
    ("/jobs/{id}/progress", {"progress": 5, "staleAfterSeconds": 0}, False),
    ("/jobs/{id}/progress", {"progress": 5, "staleAfterSeconds": -600}, False),
    ("/jobs/{id}/progress", {}, False),
    ("/jobs/{id}/progress", {"progress": 101}, False),
    ("/jobs/{id}/progress", {"progress": -0.5}, False),
    ("/jobs/{id}/progress", {"progress": True}, False),
    ("/jobs/{id}/progress", {"progress": "5"}, False),
    ("/jobs/{id}/progress", {"progress": 5, "message": _LONG}, False),
    ("/jobs/{id}/progress", {"progress": 5, "push": "yes"}, False),
    ("/jobs/{id}/progress", {"progress": 5, "metadata": []}, False),
    ("/jobs/{id}/complete", {}, True),
    ("/jobs/{id}/complete", {"result": {"type": "video", "url": "https://x", "data": [1]},
                             "message": "done"}, True),
    ("/jobs/{id}/complete", {"result": {"kind": "video"}}, False),
    ("/jobs/{id}/complete", {"result": "https://x"}, False),
    ("/jobs/{id}/complete", {"result": {"type": "x" * 101}}, False),
    ("/jobs/{id}/complete", {"message": _LONG}, False),
    ("/jobs/{id}/fail", {"error": {"code": "E", "message": ""}, "retryable": False}, True),
    ("/jobs/{id}/fail", {"error": {"code": "E", "message": "m", "details": {"k": 1}}}, True),
    ("/jobs/{id}/fail", {}, False),
    ("/jobs/{id}/fail", {"error": {"code": "", "message": "m"}}, False),
    ("/jobs/{id}/fail", {"error": {"code": "E"}}, False),
    ("/jobs/{id}/fail", {"error": {"code": "E", "message": "m", "details": [1]}}, False),
    ("/jobs/{id}/fail", {"error": {"code": "E", "message": "m"}, "retryable": "yes"}, False),
    ("/events", {"events": [{"type": "start", "body": BASE, "idempotencyKey": "k"}]}, True),
    ("/events", {"events": [{"type": "progress", "jobId": "x", "body": {"progress": 1}}]},
     True),
    ("/events", {"events": [{"type": "complete", "jobId": "x", "body": {}}] * 500}, True),
    ("/events", {"events": [{"type": "complete", "jobId": "x", "body": {}}] * 501}, False),
    ("/events", {"events": []}, False),
    ("/events", {}, False),
    ("/events", {"events": [{"type": "cancel", "jobId": "x", "body": {}}]}, False),
    ("/events", {"events": [{"type": "start", "jobId": "x", "body": BASE}]}, False),
    ("/events", {"events": [{"type": "fail", "body": {}}]}, False),
    ("/events", {"events": [{"type": "fail", "jobId": "", "body": {}}]}, False),
    ("/events", {"events": [{"type": "fail", "jobId": "x"}]}, False),
    ("/events", {"events": [{"type": "fail", "jobId": "x", "body": {},
                             "idempotencyKey": "k" * 256}]}, False),
]


@pytest.mark.parametrize(("path", "body", "accepted"), REQUEST_CASES)
def test_request_schemas_accept_what_the_server_accepts(shared_api: Api, path: str,
                                                        body: dict[str, Any],
                                                        accepted: bool) -> None:
    """The spec's request schema and the server agree on whether a body is valid."""
    params = {"id": shared_api.start(BASE)["id"]} if "{id}" in path else {}
    response = shared_api("post", path, json=body, path_params=params)
    assert (response.status_code < 300) is accepted, response.text
    if not accepted:
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"
    schema = ("paths", path, "post", "requestBody", "content", "application/json", "schema")
    assert (_schema_errors(body, schema) == []) is accepted
