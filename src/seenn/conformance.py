"""A conformance kit: does a backend speak the Seenn wire protocol?

Run it from the command line (``seenn conformance --base-url URL --api-key KEY``)
or from Python::

    results = seenn.conformance.run_checks("http://127.0.0.1:8080", "sk_test_...")
    print(seenn.conformance.format_table(results))

The checks talk raw HTTP (not through :class:`seenn.SeennClient`), so they see
exactly what a mobile client polling the backend would see. They create a few
jobs for a user named ``seenn-conformance-<random>``.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["CheckResult", "format_table", "run_checks"]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one protocol check.

    Attributes:
        name: What was checked.
        passed: Whether the backend behaved as the protocol says.
        detail: Why it failed (or a note when it passed).
        optional: The behaviour is recommended, not required; a failure does not fail the run.
    """

    name: str
    passed: bool
    detail: str = ""
    optional: bool = False


class _Failed(Exception):
    pass


def _expect(condition: bool, detail: str) -> None:
    if not condition:
        raise _Failed(detail)


class _Runner:
    def __init__(self, http: httpx.Client, base: str, api_key: str,
                 public_key: str | None) -> None:
        self.http = http
        self.base = base
        self.api_key = api_key
        self.public_key = public_key
        self.user = f"seenn-conformance-{os.urandom(4).hex()}"
        self.job: dict[str, Any] | None = None
        self.results: list[CheckResult] = []

    def call(self, method: str, path: str, body: Any = None, *, key: str | None = "secret",
             headers: dict[str, str] | None = None, raw: bytes | None = None,
             params: dict[str, Any] | None = None) -> httpx.Response:
        sent = {"Content-Type": "application/json", **(headers or {})}
        token = {"secret": self.api_key, "public": self.public_key}.get(key or "", key)
        if token:
            sent["Authorization"] = f"Bearer {token}"
        if method == "POST" and "Idempotency-Key" not in sent:
            sent["Idempotency-Key"] = str(uuid.uuid4())
        content = raw if raw is not None else (None if body is None else json.dumps(body))
        return self.http.request(method, self.base + path, content=content, headers=sent,
                                 params=params)

    def run(self, name: str, check: Callable[[], str | None], *, optional: bool = False) -> None:
        try:
            note = check() or ""
        except _Failed as failure:
            self.results.append(CheckResult(name, False, str(failure), optional))
        except httpx.HTTPError as error:
            self.results.append(CheckResult(name, False, f"{type(error).__name__}: {error}",
                                            optional))
        except (ValueError, KeyError, TypeError) as error:
            self.results.append(CheckResult(name, False, f"unexpected response ({error!r})",
                                            optional))
        else:
            self.results.append(CheckResult(name, True, note, optional))

    # Helpers ----------------------------------------------------------------------

    def error_body(self, response: httpx.Response, status: int) -> dict[str, Any]:
        _expect(response.status_code == status,
                f"expected {status}, got {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise _Failed(f"{status} without a JSON body") from None
        error = body.get("error") if isinstance(body, dict) else None
        _expect(isinstance(error, dict) and isinstance(error.get("code"), str)
                and isinstance(error.get("message"), str),
                f'{status} body is not {{"error": {{"code", "message"}}}}: {body!r}'[:200])
        return error  # type: ignore[return-value]

    def start(self, title: str, **extra: Any) -> dict[str, Any]:
        response = self.call("POST", "/jobs", {"jobType": "conformance", "userId": self.user,
                                               "title": title, **extra})
        _expect(response.status_code in (200, 201),
                f"POST /jobs answered {response.status_code}: {response.text[:120]}")
        job = response.json()
        _expect(isinstance(job, dict) and isinstance(job.get("id"), str),
                "POST /jobs did not return a job with an id")
        return job  # type: ignore[no-any-return]

    def need_job(self) -> dict[str, Any]:
        if self.job is None:
            raise _Failed("not checked: starting a job failed")
        return self.job

    # Checks -----------------------------------------------------------------------

    def check_no_key(self) -> None:
        self.error_body(self.call("GET", "/jobs/any", key=None), 401)

    def check_unknown_key(self) -> None:
        self.error_body(self.call("GET", "/jobs/any", key="sk_test_not-a-real-key-0000"), 401)

    def check_start(self) -> None:
        job = self.start("Conformance job", metadata={"a": 1},
                         stage={"name": "queued", "current": 1, "total": 3})
        for name in ("id", "userId", "jobType", "title", "status", "progress", "createdAt",
                     "updatedAt"):
            _expect(name in job, f"the job has no {name!r} field (fields are camelCase)")
        _expect(job["status"] in ("pending", "queued", "running"),
                f"a new job has status {job['status']!r}")
        _expect(job["progress"] == 0 and isinstance(job["progress"], int),
                f"a new job has progress {job['progress']!r}, expected the integer 0")
        _expect(job["userId"] == self.user, "userId was not stored as sent")
        self.job = job

    def check_get(self) -> None:
        job = self.need_job()
        response = self.call("GET", f"/jobs/{job['id']}")
        _expect(response.status_code == 200, f"GET answered {response.status_code}")
        _expect(response.json().get("id") == job["id"], "GET returned another job")

    def check_get_unknown(self) -> None:
        self.error_body(self.call("GET", f"/jobs/job_missing_{uuid.uuid4().hex}"), 404)

    def check_progress(self) -> None:
        job = self.need_job()
        response = self.call("POST", f"/jobs/{job['id']}/progress", {
            "progress": 40, "message": "Working",
            "stage": {"name": "render", "current": 2, "total": 3}, "metadata": {"b": 2}})
        _expect(response.status_code == 200, f"progress answered {response.status_code}")
        body = response.json()
        _expect(body.get("progress") == 40 and isinstance(body.get("progress"), int),
                f"progress reads {body.get('progress')!r}, expected the integer 40")
        _expect(body.get("status") == "running", f"status after progress is {body.get('status')!r}")
        _expect(body.get("message") == "Working", "the message was not stored")
        _expect((body.get("stage") or {}).get("name") == "render", "the stage was not stored")

    def check_metadata_merge(self) -> None:
        job = self.need_job()
        body = self.call("GET", f"/jobs/{job['id']}").json()
        _expect(body.get("metadata") == {"a": 1, "b": 2},
                f"metadata after a progress update is {body.get('metadata')!r}, expected "
                "the start metadata merged with the update")

    def check_bad_progress(self) -> None:
        job = self.need_job()
        self.error_body(self.call("POST", f"/jobs/{job['id']}/progress", {"progress": 150}), 400)

    def check_bad_json(self) -> None:
        self.error_body(self.call("POST", "/jobs", raw=b"{not json"), 400)

    def check_complete(self) -> None:
        job = self.need_job()
        response = self.call("POST", f"/jobs/{job['id']}/complete", {
            "result": {"type": "video", "url": "https://example.com/v.mp4"}, "message": "Done"})
        _expect(response.status_code == 200, f"complete answered {response.status_code}")
        body = self.call("GET", f"/jobs/{job['id']}").json()
        _expect(body.get("status") == "completed", f"status is {body.get('status')!r}")
        _expect(body.get("progress") == 100, f"a completed job reads {body.get('progress')!r}%")
        _expect((body.get("result") or {}).get("url") == "https://example.com/v.mp4",
                "the result was not stored")

    def check_terminal_conflict(self) -> None:
        job = self.need_job()
        response = self.call("POST", f"/jobs/{job['id']}/progress", {"progress": 10})
        self.error_body(response, 409)
        body = self.call("GET", f"/jobs/{job['id']}").json()
        _expect(body.get("status") == "completed", "a refused write changed the finished job")

    def check_fail(self) -> None:
        job = self.start("Conformance failure")
        response = self.call("POST", f"/jobs/{job['id']}/fail", {
            "error": {"code": "BROKEN", "message": "it broke"}, "retryable": True})
        _expect(response.status_code == 200, f"fail answered {response.status_code}")
        body = self.call("GET", f"/jobs/{job['id']}").json()
        _expect(body.get("status") == "failed", f"status is {body.get('status')!r}")
        _expect((body.get("error") or {}).get("code") == "BROKEN", "the error was not stored")

    def check_list(self) -> None:
        response = self.call("GET", "/jobs", params={"userId": self.user, "limit": 100})
        _expect(response.status_code == 200, f"list answered {response.status_code}")
        jobs = response.json().get("jobs")
        _expect(isinstance(jobs, list), "the list has no 'jobs' array")
        titles = [j.get("title") for j in jobs]
        _expect(titles[:2] == ["Conformance failure", "Conformance job"],
                f"the user's jobs are not listed newest first: {titles}")
        _expect(all(j.get("userId") == self.user for j in jobs), "another user's job is listed")

    def check_pagination(self) -> None:
        first = self.call("GET", "/jobs", params={"userId": self.user, "limit": 1}).json()
        cursor = first.get("nextCursor")
        _expect(len(first.get("jobs", [])) == 1, "limit=1 did not return one job")
        _expect(isinstance(cursor, str) and cursor != "", "no nextCursor with more jobs left")
        second = self.call("GET", "/jobs", params={"userId": self.user, "limit": 1,
                                                   "cursor": cursor}).json()
        _expect(len(second.get("jobs", [])) == 1, "the second page is empty")
        _expect(second["jobs"][0]["id"] != first["jobs"][0]["id"],
                "the second page repeats the first")

    def check_children(self) -> None:
        parent = self.start("Conformance parent", totalChildren=2)
        for index in range(2):
            self.start(f"Child {index}", parentJobId=parent["id"], childIndex=index)
        response = self.call("GET", f"/jobs/{parent['id']}/children")
        _expect(response.status_code == 200, f"children answered {response.status_code}")
        body = response.json()
        _expect(body.get("parent", {}).get("id") == parent["id"], "no 'parent' in the answer")
        children = body.get("children") or []
        _expect(len(children) == 2, f"{len(children)} children listed, expected 2")
        stats = body["parent"].get("children") or {}
        _expect(stats.get("total") == 2, f"the parent's children stats are {stats!r}")

    def check_children_pagination(self) -> None:
        parent = self.start("Conformance paged parent", totalChildren=3)
        ids = [self.start(f"Paged child {index}", parentJobId=parent["id"],
                          childIndex=index)["id"] for index in range(3)]
        path = f"/jobs/{parent['id']}/children"
        first = self.call("GET", path, params={"limit": 2})
        _expect(first.status_code == 200, f"children with limit=2 answered {first.status_code}")
        page = first.json()
        cursor = page.get("nextCursor")
        _expect([c.get("id") for c in page.get("children") or []] == ids[:2],
                "limit=2 did not return the first two children in childIndex order")
        _expect(isinstance(cursor, str) and cursor != "", "no nextCursor with a child left")
        second = self.call("GET", path, params={"limit": 2, "cursor": cursor}).json()
        _expect([c.get("id") for c in second.get("children") or []] == ids[2:],
                "the second page does not hold the third child alone")
        _expect("nextCursor" not in second, "a nextCursor on the last page")

    def check_idempotency(self) -> None:
        key = str(uuid.uuid4())
        body = {"jobType": "conformance", "userId": self.user, "title": "Idempotent"}
        first = self.call("POST", "/jobs", body, headers={"Idempotency-Key": key})
        second = self.call("POST", "/jobs", body, headers={"Idempotency-Key": key})
        _expect(first.status_code in (200, 201) and second.status_code in (200, 201),
                f"answers {first.status_code}, {second.status_code}")
        _expect(first.json()["id"] == second.json()["id"],
                "a retried POST with the same Idempotency-Key created a second job")

    def check_public_read(self) -> str | None:
        if self.public_key is None:
            raise _Failed("not checked: pass --public-key")
        job = self.need_job()
        response = self.call("GET", f"/jobs/{job['id']}", key="public")
        _expect(response.status_code == 200, f"a public key read answered {response.status_code}")
        return None

    def check_public_write(self) -> None:
        if self.public_key is None:
            raise _Failed("not checked: pass --public-key")
        response = self.call("POST", "/jobs", {"jobType": "conformance", "userId": self.user,
                                               "title": "Should be refused"}, key="public")
        self.error_body(response, 403)

    def check_unknown_path(self) -> None:
        self.error_body(self.call("GET", "/no-such-endpoint"), 404)

    def check_etag(self) -> str:
        job = self.need_job()
        first = self.call("GET", f"/jobs/{job['id']}")
        etag = first.headers.get("ETag")
        _expect(etag is not None, "no ETag on GET /jobs/{id}")
        again = self.call("GET", f"/jobs/{job['id']}", headers={"If-None-Match": etag or ""})
        _expect(again.status_code == 304, f"If-None-Match answered {again.status_code}")
        return "polling clients save bandwidth"

    def extension(self, name: str) -> dict[str, Any] | None:
        """The entry of an extension in ``GET /healthz``, if the backend offers it."""
        answer = self.call("GET", "/healthz", key=None)
        body = answer.json() if answer.status_code == 200 else None
        listed = body.get("extensions") if isinstance(body, dict) else None
        entry = listed.get(name) if isinstance(listed, dict) else None
        return entry if isinstance(entry, dict) else None

    def check_jobs_by_ids(self) -> str:
        if self.extension("jobsByIds") is None:
            return "not offered (GET /healthz lists no jobsByIds)"
        job = self.start("Batched read")
        gone = f"absent-{uuid.uuid4().hex}"
        first = self.call("GET", "/jobs", params={"ids": f"{gone},{job['id']},{job['id']}"})
        _expect(first.status_code == 200, f"?ids= answered {first.status_code}")
        body = first.json()
        _expect([j.get("id") for j in body.get("jobs", [])] == [job["id"]]
                and body.get("missing") == [gone],
                f'expected {{"jobs": [the job], "missing": [{gone!r}]}}, got {body!r}'[:200])
        etag = first.headers.get("ETag")
        _expect(etag is not None, "no ETag on GET /jobs?ids=")
        again = self.call("GET", "/jobs", params={"ids": f"{gone},{job['id']}"},
                          headers={"If-None-Match": etag or ""})
        _expect(again.status_code == 304, f"If-None-Match on ?ids= answered {again.status_code}")
        return "one request for many jobs"

    def check_wait(self) -> str:
        if self.extension("wait") is None:
            return "not offered (GET /healthz lists no wait)"
        job = self.start("Long poll")
        path = f"/jobs/{job['id']}"
        etag = self.call("GET", path).headers.get("ETag") or ""
        quiet = self.call("GET", path, params={"wait": "0.2"}, headers={"If-None-Match": etag})
        _expect(quiet.status_code == 304, f"a long poll of an unchanged job answered "
                                          f"{quiet.status_code}, not 304")
        answers: list[httpx.Response] = []
        waiter = threading.Thread(target=lambda: answers.append(self.call(
            "GET", path, params={"wait": "5"}, headers={"If-None-Match": etag})))
        waiter.start()
        try:
            moved = self.call("POST", f"{path}/progress", {"progress": 7})
            _expect(moved.status_code == 200, f"progress answered {moved.status_code}")
        finally:
            waiter.join()
        _expect(bool(answers) and answers[0].status_code == 200
                and answers[0].json().get("progress") == 7,
                "a long poll did not answer the job's change (200 with the new job)")
        return "watchers hear of a change at once"


    def check_events(self) -> str:
        """The ``events`` extension, when ``/healthz`` offers it: answers in order, replays."""
        health = self.call("GET", "/healthz", key=None)
        offered = health.json().get("extensions", {}) if health.status_code == 200 else {}
        if not isinstance(offered, dict) or "events" not in offered:
            return "not offered: clients make one call per event"
        job_id = f"conformance-{os.urandom(6).hex()}"
        tag = uuid.uuid4().hex
        body = {"events": [
            {"type": "start", "idempotencyKey": f"{tag}.0",
             "body": {"id": job_id, "jobType": "conformance", "userId": self.user,
                      "title": "Batched"}},
            {"type": "progress", "jobId": job_id, "idempotencyKey": f"{tag}.1",
             "body": {"progress": 30}},
            {"type": "progress", "jobId": f"{job_id}-missing", "idempotencyKey": f"{tag}.2",
             "body": {"progress": 30}}]}
        first = self.call("POST", "/events", body)
        _expect(first.status_code == 200, f"POST /events answered {first.status_code}")
        statuses = [r.get("status") for r in first.json()["results"]]
        _expect(statuses == [201, 200, 404], f"results {statuses}, expected [201, 200, 404]")
        again = self.call("POST", "/events", body)
        replayed = [(r.get("status"), r.get("body")) for r in again.json()["results"]]
        _expect(replayed == [(r["status"], r["body"]) for r in first.json()["results"]],
                "a batch sent again did not get the same answers")
        job = self.call("GET", f"/jobs/{job_id}").json()
        _expect(job.get("progress") == 30, f"the job reads {job.get('progress')}, not 30")
        return f"up to {offered['events'].get('maxEvents')} events per call"


def run_checks(base_url: str, api_key: str, *, public_key: str | None = None,
               base_path: str = "/v1", timeout: float = 10.0,
               http_client: httpx.Client | None = None) -> list[CheckResult]:
    """Run every protocol check against a backend and return one result per check.

    Args:
        base_url: The backend, e.g. ``http://127.0.0.1:8080``.
        api_key: A secret key of one app.
        public_key: A public key of the same app, to check read-only access.
        base_path: The API's path prefix.
        timeout: Seconds each request may take.
        http_client: An ``httpx.Client`` to send with (not closed here).

    Returns:
        The results, in the order the checks ran.
    """
    http = http_client or httpx.Client(timeout=timeout)
    runner = _Runner(http, base_url.rstrip("/") + base_path.rstrip("/"), api_key, public_key)
    checks: list[tuple[str, Callable[[], str | None], bool]] = [
        ("auth: no key is 401", runner.check_no_key, False),
        ("auth: unknown key is 401", runner.check_unknown_key, False),
        ("start: POST /jobs returns the job", runner.check_start, False),
        ("get: GET /jobs/{id}", runner.check_get, False),
        ("get: unknown id is 404", runner.check_get_unknown, False),
        ("progress: integer progress, stage, message", runner.check_progress, False),
        ("progress: metadata merges", runner.check_metadata_merge, False),
        ("validation: progress 150 is 400", runner.check_bad_progress, False),
        ("validation: malformed JSON is 400", runner.check_bad_json, False),
        ("complete: status, progress 100, result", runner.check_complete, False),
        ("terminal: a write to a finished job is 409", runner.check_terminal_conflict, False),
        ("fail: status and error", runner.check_fail, False),
        ("list: a user's jobs, newest first", runner.check_list, False),
        ("list: cursor pagination", runner.check_pagination, False),
        ("children: parent with its children", runner.check_children, False),
        ("children: cursor pagination", runner.check_children_pagination, False),
        ("idempotency: one job per Idempotency-Key", runner.check_idempotency, False),
        ("public key: can read", runner.check_public_read, public_key is None),
        ("public key: cannot write (403)", runner.check_public_write, public_key is None),
        ("errors: unknown path is 404 with an error body", runner.check_unknown_path, False),
        ("etag: If-None-Match answers 304", runner.check_etag, True),
        ("extension: POST /events answers each event, replays", runner.check_events, True),
        ("extension jobsByIds: GET /jobs?ids=", runner.check_jobs_by_ids, True),
        ("extension wait: long poll with ?wait=", runner.check_wait, True),
    ]
    try:
        for name, check, optional in checks:
            runner.run(name, check, optional=optional)
    finally:
        if http_client is None:
            http.close()
    return runner.results


def format_table(results: list[CheckResult]) -> str:
    """Render results as a table with a summary line, for people."""
    width = max((len(r.name) for r in results), default=10)
    lines = []
    for result in results:
        mark = "PASS" if result.passed else ("WARN" if result.optional else "FAIL")
        line = f"{mark}  {result.name.ljust(width)}"
        if result.detail:
            line += f"  {result.detail}"
        lines.append(line.rstrip())
    passed = sum(r.passed for r in results)
    failed = sum(not r.passed and not r.optional for r in results)
    lines.append(f"{passed} passed, {failed} failed")
    return "\n".join(lines) + "\n"
