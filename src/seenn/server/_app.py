"""The WSGI application of ``seenn serve``: the whole wire protocol over SQLite."""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from seenn._core.validation import (
    CHILD_PROGRESS_MODES,
    MAX_JOB_TYPE,
    MAX_LIST_LIMIT,
    MAX_MESSAGE,
    MAX_METADATA_BYTES,
    MAX_TITLE,
    MAX_TOTAL_CHILDREN,
    MAX_TTL_SECONDS,
    MAX_USER_ID,
    MIN_TTL_SECONDS,
    check_bool,
    check_choice,
    check_datetime,
    check_duration_ms,
    check_int,
    check_json,
    check_metadata,
    check_opt_text,
    check_progress,
    check_text,
    coerce_error,
    coerce_queue,
    coerce_result,
    coerce_stage,
    fail,
    format_datetime,
)
from seenn.errors import ValidationError
from seenn.server._store import Store, Transaction, canonical_hash, key_hash

logger = logging.getLogger("seenn.server")

StartResponse = Callable[..., Any]
Response = tuple[int, Any, dict[str, str]]

TERMINAL = ("completed", "failed", "cancelled")
DEFAULT_TTL = MAX_TTL_SECONDS
DEFAULT_LIMIT = 20
MAX_BODY_BYTES = 512 * 1024
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:~-]{0,254}")
_CORS_ALLOW = "Authorization, Content-Type, Idempotency-Key, If-None-Match"
_CORS_EXPOSE = "ETag, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, Idempotent-Replayed"
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
            429: "Too Many Requests", 500: "Internal Server Error"}


class HTTPError(Exception):
    """An error answer: status, code, message and optional details and headers."""

    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, headers or {}

    def response(self) -> Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return self.status, {"error": error}, self.headers


def _now_iso(now: float) -> str:
    return format_datetime(datetime.fromtimestamp(now, tz=timezone.utc))


def new_key(kind: str) -> str:
    """Make a random test key of a kind (``sk`` or ``pk``)."""
    return f"{kind}_test_{base64.b32encode(os.urandom(20)).decode().lower().rstrip('=')}"


def new_job_id() -> str:
    """Make a job id: ``job_`` and a time-ordered, random Crockford base32 string."""
    raw = int(time.time() * 1000).to_bytes(6, "big") + os.urandom(10)
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    number = int.from_bytes(raw, "big")
    return "job_" + "".join(alphabet[(number >> (5 * i)) & 31] for i in range(25, -1, -1))


class _Fields:
    """Collects every field error of a body, so one 400 names them all."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def check(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ValidationError as error:
            details = error.details or {}
            self.errors.setdefault(str(details.get("field", name)),
                                   str(details.get("reason", error.message)))
            return None

    def check_all(self, rules: Mapping[str, Callable[[Any], Any]],
                  body: Mapping[str, Any]) -> dict[str, Any]:
        """Run each rule on its field of ``body`` (absent and null fields are skipped)."""
        values: dict[str, Any] = {}
        for name, rule in rules.items():
            value = body.get(name)
            if value is not None:
                values[name] = self.check(name, functools.partial(rule, value))
        return values

    def raise_if_any(self) -> None:
        if self.errors:
            first = next(iter(self.errors))
            raise HTTPError(400, "VALIDATION_ERROR", f"{first}: {self.errors[first]}",
                            {"field": first, "reason": self.errors[first],
                             "fields": dict(self.errors)})


def _reject(name: str, message: str) -> Any:
    fail(name, message)


def _passthrough(name: str, value: object) -> object:
    """Options the reference server accepts but does not act on (push, Live Activities)."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        fail(name, "must be a bool or an object")
    return check_json(name, value, max_bytes=4096)


class _RateLimiter:
    """Fixed one-second windows per key: simple, and the headers are exact."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._windows: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float) -> tuple[bool, int, float]:
        window = int(now)
        with self._lock:
            start, count = self._windows.get(key, (window, 0))
            if start != window:
                start, count = window, 0
            if count >= self.limit:
                return False, 0, max(0.001, window + 1 - now)
            self._windows[key] = (start, count + 1)
            if len(self._windows) > 10_000:
                self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
            return True, self.limit - count - 1, 0.0


class SeennServerApp:
    """The reference Seenn backend as a WSGI application.

    Args:
        db_path: The SQLite database file (created if missing).
        api_key: The secret key of the app to serve (registered if new).
        public_key: Its public key; made up when only ``api_key`` is given.
        rate_limit: Requests per second allowed per key; ``None`` for no limit.
        max_body_bytes: Larger request bodies are answered with 413.
        cors_origin: The ``Access-Control-Allow-Origin`` sent to browsers (``"*"`` by
            default: keys travel in a header, not in cookies); ``None`` sends no CORS
            headers and answers ``OPTIONS`` with 405.

    Attributes:
        created_keys: The ``(secret, public)`` pair made on this start, if one was
            (a new database and no keys given, or only a secret key given).
    """

    def __init__(self, db_path: str | os.PathLike[str], *, api_key: str | None = None,
                 public_key: str | None = None, rate_limit: int | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, cors_origin: str | None = "*") -> None:
        self.store = Store(os.fspath(db_path))
        self.max_body_bytes = max_body_bytes
        self.cors_origin = cors_origin or None
        self.created_keys: tuple[str, str] | None = None
        for name, key in (("api_key", api_key), ("public_key", public_key)):
            if key is not None and (not key or key != key.strip()):
                fail(name, "must be a non-empty string without surrounding white space")
        if public_key is not None and api_key is None:
            fail("api_key", "is required when public_key is given")
        if api_key is not None:
            known = key_hash(api_key) in self.store.apps()
            if public_key is None and not known:
                public_key = new_key("pk")
                self.created_keys = (api_key, public_key)
            try:
                self.store.add_app(f"app_{key_hash(api_key)[:12]}", api_key, public_key)
            except ValueError as error:
                fail("public_key", str(error))
        elif not self.store.apps():
            secret, public = new_key("sk"), new_key("pk")
            self.store.add_app(f"app_{key_hash(secret)[:12]}", secret, public)
            self.created_keys = (secret, public)
        self._keys = self.store.apps()
        self._keys_loaded = time.monotonic()
        self._rate = _RateLimiter(rate_limit) if rate_limit else None

    def close(self) -> None:
        """Close the database connections."""
        self.store.close()

    # WSGI ---------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            status, body, headers = self.handle(environ)
        except HTTPError as error:
            status, body, headers = error.response()
        except Exception:
            logger.exception("seenn serve: internal error on %s %s",
                             environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            status, body, headers = HTTPError(500, "INTERNAL", "internal server error").response()
        payload = b"" if body is None else json.dumps(
            body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        header_list = [("Content-Type", "application/json"),
                       ("Content-Length", str(len(payload))), *headers.items()]
        if self.cors_origin is not None:
            header_list += [("Access-Control-Allow-Origin", self.cors_origin),
                            ("Access-Control-Expose-Headers", _CORS_EXPOSE)]
            if self.cors_origin != "*":
                header_list.append(("Vary", "Origin"))
        start_response(f"{status} {_REASONS.get(status, 'Unknown')}", header_list)
        return [payload]

    def handle(self, environ: dict[str, Any]) -> Response:
        """Answer one request: ``(status, JSON body or None, extra headers)``."""
        method = environ.get("REQUEST_METHOD", "GET").upper()
        segments = _path_segments(environ)
        if segments in (["healthz"], ["v1", "healthz"]):
            if method != "GET":
                raise HTTPError(405, "METHOD_NOT_ALLOWED", "use GET", headers={"Allow": "GET"})
            return 200, {"status": "ok"}, {}
        route, allowed = _route(segments)
        if route is None:
            raise HTTPError(404, "NOT_FOUND", "no such path")
        if method == "OPTIONS" and self.cors_origin is not None:
            # A browser's CORS preflight: no key is sent with it.
            return 204, None, {"Access-Control-Allow-Methods": ", ".join(allowed),
                               "Access-Control-Allow-Headers": _CORS_ALLOW,
                               "Access-Control-Max-Age": "600"}
        if method not in allowed:
            listed = (*allowed, "OPTIONS") if self.cors_origin is not None else allowed
            raise HTTPError(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed here",
                            headers={"Allow": ", ".join(listed)})
        app_id, kind, key_digest = self._authenticate(environ)
        rate_headers = self._rate_limit(key_digest)
        if method == "POST" and kind != "secret":
            raise HTTPError(403, "FORBIDDEN", "public keys can only read",
                            headers=rate_headers)
        self.store.purge()
        try:
            if method == "GET":
                status, body, headers = self._get(route, app_id, environ)
            else:
                status, body, headers = self._post(route, app_id, environ)
        except HTTPError as error:
            error.headers.update(rate_headers)
            raise
        headers.update(rate_headers)
        return status, body, headers

    # Auth and rate limits -----------------------------------------------------------

    def _authenticate(self, environ: Mapping[str, Any]) -> tuple[str, str, str]:
        header = str(environ.get("HTTP_AUTHORIZATION", ""))
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise HTTPError(401, "UNAUTHORIZED", "missing API key: send Authorization: Bearer")
        digest = key_hash(key)
        found = self._keys.get(digest)
        if found is None and time.monotonic() - self._keys_loaded > 1.0:
            # Another process sharing the database may have registered the key.
            self._keys, self._keys_loaded = self.store.apps(), time.monotonic()
            found = self._keys.get(digest)
        if found is None:
            raise HTTPError(401, "UNAUTHORIZED", "unknown API key")
        return found[0], found[1], digest

    def _rate_limit(self, key_digest: str) -> dict[str, str]:
        if self._rate is None:
            return {}
        allowed, remaining, retry_after = self._rate.hit(key_digest, self.store.clock())
        headers = {"X-RateLimit-Limit": str(self._rate.limit),
                   "X-RateLimit-Remaining": str(remaining)}
        if not allowed:
            headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
            raise HTTPError(429, "RATE_LIMITED",
                            f"more than {self._rate.limit} requests per second", headers=headers)
        return headers

    # Reads --------------------------------------------------------------------------

    def _get(self, route: tuple[str, ...], app_id: str, environ: Mapping[str, Any]) -> Response:
        if route == ("list",):
            return self._list(app_id, parse_qs(str(environ.get("QUERY_STRING", ""))))
        job_id = route[1]
        with self.store.read(app_id) as tx:
            stored = tx.get(job_id)
            if stored is None:
                raise HTTPError(404, "NOT_FOUND", f"job {job_id} not found")
            if route[0] == "children":
                return 200, {"parent": stored.data, "children": tx.children(job_id)}, {}
        etag = '"' + hashlib.sha1(json.dumps(stored.data, sort_keys=True).encode(),
                                  usedforsecurity=False).hexdigest()[:27] + '"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if _etag_matches(str(environ.get("HTTP_IF_NONE_MATCH", "")), etag):
            return 304, None, headers
        return 200, stored.data, headers

    def _list(self, app_id: str, query: dict[str, list[str]]) -> Response:
        fields = _Fields()
        user_id = fields.check("userId", lambda: check_text(
            "userId", _one(query, "userId"), max_len=MAX_USER_ID))
        raw_limit = _one(query, "limit")
        limit = fields.check("limit", lambda: DEFAULT_LIMIT if raw_limit is None else check_int(
            "limit", _as_int("limit", raw_limit), minimum=1, maximum=MAX_LIST_LIMIT))
        raw_cursor = _one(query, "cursor")
        before = fields.check("cursor", lambda: None if raw_cursor is None
                              else _decode_cursor(raw_cursor))
        fields.raise_if_any()
        with self.store.read(app_id) as tx:
            rows = tx.list_user(user_id, before_seq=before, limit=limit + 1)
        body: dict[str, Any] = {"jobs": [data for _, data in rows[:limit]]}
        if len(rows) > limit:
            body["nextCursor"] = _encode_cursor(rows[limit - 1][0])
        return 200, body, {}

    # Writes -------------------------------------------------------------------------

    def _post(self, route: tuple[str, ...], app_id: str, environ: Mapping[str, Any]) -> Response:
        body = self._read_json(environ)
        key = str(environ.get("HTTP_IDEMPOTENCY_KEY", "")).strip()
        if len(key) > 255:
            raise HTTPError(400, "VALIDATION_ERROR", "Idempotency-Key: at most 255 characters",
                            {"field": "Idempotency-Key"})
        request_hash = canonical_hash([list(route), body])
        failure: HTTPError | None = None
        with self.store.write(app_id) as tx:
            if key:
                earlier = tx.idempotent(key)
                if earlier is not None:
                    if earlier[0] != request_hash:
                        raise HTTPError(409, "IDEMPOTENCY_KEY_REUSED",
                                        "this Idempotency-Key was used for another request")
                    return earlier[1], json.loads(earlier[2]), {"Idempotent-Replayed": "true"}
            try:
                if route == ("list",):
                    status, answer = self._start(tx, app_id, body)
                else:
                    status, answer = self._update(tx, route[0], route[1], body)
            except HTTPError as error:
                # Every HTTPError is raised before the job is written, so committing
                # here stores the answer for replay and nothing else.
                failure = error
                status, answer, _ = error.response()
            if key:
                tx.remember(key, request_hash, status, json.dumps(answer))
        if failure is not None:
            raise failure
        return status, answer, {}

    def _read_json(self, environ: Mapping[str, Any]) -> dict[str, Any]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise HTTPError(400, "INVALID_REQUEST", "bad Content-Length") from None
        if length > self.max_body_bytes:
            raise HTTPError(413, "PAYLOAD_TOO_LARGE",
                            f"request bodies are limited to {self.max_body_bytes} bytes")
        raw = environ["wsgi.input"].read(length) if length > 0 else b""
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise HTTPError(400, "INVALID_JSON", "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "INVALID_JSON", "the request body must be a JSON object")
        return body

    def _start(self, tx: Transaction, app_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        f = _Fields()
        job_id = f.check("id", lambda: _check_id(body.get("id")))
        job_type = f.check("jobType", lambda: check_text("jobType", body.get("jobType"),
                                                         max_len=MAX_JOB_TYPE))
        user_id = f.check("userId", lambda: check_text("userId", body.get("userId"),
                                                       max_len=MAX_USER_ID))
        title = f.check("title", lambda: check_text("title", body.get("title"),
                                                    max_len=MAX_TITLE))
        optional: dict[str, Callable[[Any], Any]] = {
            "workflowId": lambda v: check_text("workflowId", v, max_len=MAX_JOB_TYPE),
            "metadata": lambda v: check_metadata(v) if isinstance(v, dict)
            else _reject("metadata", "must be a JSON object"),
            "queue": lambda v: coerce_queue(v).to_wire(),
            "stage": lambda v: coerce_stage(v).to_wire(),
            "estimatedCompletionAt": lambda v: check_datetime(
                v if isinstance(v, str) else _reject("estimatedCompletionAt", "must be a string"),
                "estimatedCompletionAt"),
            "estimatedDuration": lambda v: check_duration_ms(v, "estimatedDuration"),
            "ttlSeconds": lambda v: check_int("ttlSeconds", v, minimum=MIN_TTL_SECONDS,
                                              maximum=MAX_TTL_SECONDS),
            "parentJobId": lambda v: check_text("parentJobId", v, max_len=MAX_USER_ID),
            "childIndex": lambda v: check_int("childIndex", v, minimum=0,
                                              maximum=MAX_TOTAL_CHILDREN - 1),
            "totalChildren": lambda v: check_int("totalChildren", v, minimum=1,
                                                 maximum=MAX_TOTAL_CHILDREN),
            "childProgressMode": lambda v: check_choice(v, "childProgressMode",
                                                        CHILD_PROGRESS_MODES),
        }
        values = f.check_all(optional, body)
        if "childIndex" in values and "parentJobId" not in body:
            f.check("childIndex", lambda: _reject("childIndex", "needs parentJobId"))
        if "childProgressMode" in values and "totalChildren" not in values:
            f.check("childProgressMode",
                    lambda: _reject("childProgressMode", "needs totalChildren"))
        f.raise_if_any()

        start_hash = canonical_hash(body)
        if job_id is not None:
            existing = tx.get(job_id)
            if existing is not None:
                if existing.start_hash != start_hash:
                    raise HTTPError(409, "CONFLICT",
                                    f"job {job_id} exists and was started with another body")
                return 200, existing.data
        now_iso = _now_iso(tx.now)
        job: dict[str, Any] = {
            "id": job_id or new_job_id(), "appId": app_id, "userId": user_id,
            "jobType": job_type, "title": title,
            "workflowId": values.get("workflowId", job_type),
            "status": "queued" if "queue" in values else "pending", "progress": 0,
            "createdAt": now_iso, "updatedAt": now_iso,
        }
        for name in ("metadata", "queue", "stage", "estimatedCompletionAt"):
            if name in values:
                job[name] = values[name]
        if "estimatedDuration" in values and "estimatedCompletionAt" not in values:
            job["estimatedCompletionAt"] = _now_iso(tx.now + values["estimatedDuration"] / 1000)
        if "totalChildren" in values:
            job["children"] = {"total": values["totalChildren"], "completed": 0, "failed": 0,
                               "running": 0, "pending": 0}
            job["childProgressMode"] = values.get("childProgressMode", "average")
        if "parentJobId" in values:
            job["parent"] = self._parent_link(tx, values["parentJobId"],
                                              values.get("childIndex"))
        tx.insert(job, start_hash=start_hash,
                  expires_at=tx.now + values.get("ttlSeconds", DEFAULT_TTL))
        if "parent" in job:
            _refresh_parent(tx, job["parent"]["parentJobId"])
        return 201, job

    @staticmethod
    def _parent_link(tx: Transaction, parent_id: str, index: int | None) -> dict[str, Any]:
        parent = tx.get(parent_id)
        if parent is None:
            raise HTTPError(404, "NOT_FOUND", f"parent job {parent_id} not found",
                            {"field": "parentJobId"})
        if parent.data.get("status") in TERMINAL:
            raise HTTPError(409, "CONFLICT", f"parent job {parent_id} is already finished")
        declared = parent.data.get("childProgressMode") is not None
        siblings = tx.children(parent_id)
        if index is None:
            index = max((c["parent"]["childIndex"] for c in siblings), default=-1) + 1
            if index >= MAX_TOTAL_CHILDREN:
                raise HTTPError(400, "VALIDATION_ERROR",
                                f"parentJobId: job {parent_id} has {MAX_TOTAL_CHILDREN} "
                                "children already", {"field": "parentJobId",
                                                     "reason": "too many children"})
        total = parent.data.get("children", {}).get("total", 0)
        if declared and index >= total:
            raise HTTPError(400, "VALIDATION_ERROR",
                            f"childIndex: must be below the parent's totalChildren ({total})",
                            {"field": "childIndex", "reason": "out of range"})
        if tx.child_index_taken(parent_id, index):
            raise HTTPError(409, "CONFLICT", f"parent {parent_id} already has child {index}")
        return {"parentJobId": parent_id, "childIndex": index}

    def _update(self, tx: Transaction, action: str, job_id: str,
                body: dict[str, Any]) -> tuple[int, Any]:
        f = _Fields()
        if action == "progress":
            if body.get("progress") is None:
                f.check("progress", lambda: _reject("progress", "is required"))
            rules: dict[str, Callable[[Any], Any]] = {
                "progress": lambda v: check_progress(v),
                "message": lambda v: check_opt_text("message", v, max_len=MAX_MESSAGE),
                "stage": lambda v: coerce_stage(v).to_wire(),
                "queue": lambda v: coerce_queue(v).to_wire(),
                "metadata": lambda v: check_metadata(v) if isinstance(v, dict)
                else _reject("metadata", "must be a JSON object"),
                "estimatedCompletionAt": lambda v: check_datetime(
                    v if isinstance(v, str) else _reject("estimatedCompletionAt",
                                                         "must be a string"),
                    "estimatedCompletionAt"),
            }
        elif action == "complete":
            rules = {"result": lambda v: coerce_result(v).to_wire(),
                     "message": lambda v: check_opt_text("message", v, max_len=MAX_MESSAGE)}
        else:
            if body.get("error") is None:
                f.check("error", lambda: _reject("error", "is required"))
            rules = {"error": lambda v: coerce_error(v).to_wire(),
                     "retryable": lambda v: check_bool(v, "retryable")}
        rules["push"] = functools.partial(_passthrough, "push")
        rules["liveActivity"] = functools.partial(_passthrough, "liveActivity")
        values = f.check_all(rules, body)
        f.raise_if_any()

        stored = tx.get(job_id)
        if stored is None:
            raise HTTPError(404, "NOT_FOUND", f"job {job_id} not found")
        job = stored.data
        if job.get("status") in TERMINAL:
            raise HTTPError(409, "CONFLICT", f"job {job_id} is already {job['status']}")
        now_iso = _now_iso(tx.now)
        if action == "progress":
            if "metadata" in values:
                merged = {**job.get("metadata", {}), **values["metadata"]}
                f.check("metadata", lambda: check_json("metadata", merged,
                                                       max_bytes=MAX_METADATA_BYTES))
                f.raise_if_any()
                job["metadata"] = merged
            for name in ("message", "stage", "queue", "estimatedCompletionAt"):
                if name in values:
                    job[name] = values[name]
            job["progress"] = values["progress"]
            waiting = job.get("status") in ("pending", "queued")
            job["status"] = "queued" if waiting and "queue" in values else "running"
        elif action == "complete":
            for name in ("result", "message"):
                if name in values:
                    job[name] = values[name]
            job.update(status="completed", progress=100, completedAt=now_iso)
        else:
            job.update(status="failed", error=values["error"], completedAt=now_iso)
            if "retryable" in values:
                job["retryable"] = values["retryable"]
        if job["status"] != "queued":
            job.setdefault("startedAt", now_iso)
        job["updatedAt"] = now_iso
        tx.update(job)
        if "parent" in job:
            _refresh_parent(tx, job["parent"]["parentJobId"])
        return 200, job


def _refresh_parent(tx: Transaction, parent_id: str) -> None:
    """Recompute a parent's children counts and, for a declared parent, its progress."""
    stored = tx.get(parent_id)
    if stored is None:
        return
    parent = stored.data
    children = tx.children(parent_id)
    counts = {"completed": 0, "failed": 0, "running": 0, "pending": 0}
    for child in children:
        status = child.get("status")
        bucket = ("completed" if status == "completed" else
                  "failed" if status in ("failed", "cancelled") else
                  "running" if status == "running" else "pending")
        counts[bucket] += 1
    mode = parent.get("childProgressMode")
    total = parent.get("children", {}).get("total", 0) if mode else len(children)
    total = max(total, len(children))
    parent["children"] = {"total": total, **counts}
    if mode and parent.get("status") not in TERMINAL:
        now_iso = _now_iso(tx.now)
        parent["progress"] = _parent_progress(mode, children, total)
        done = counts["completed"] + counts["failed"]
        if done or counts["running"]:
            parent.setdefault("startedAt", now_iso)
        if total and done >= total:
            parent["completedAt"] = now_iso
            if counts["failed"]:
                parent["status"] = "failed"
                parent["error"] = {"code": "CHILDREN_FAILED",
                                   "message": f"{counts['failed']} of {total} children failed"}
            else:
                parent.update(status="completed", progress=100)
        elif done or counts["running"]:
            parent["status"] = "running"
    parent["updatedAt"] = _now_iso(tx.now)
    tx.update(parent)
    if "parent" in parent:
        _refresh_parent(tx, parent["parent"]["parentJobId"])


def _parent_progress(mode: str, children: list[dict[str, Any]], total: int) -> int:
    """A declared parent's progress from its children; see docs/self-hosted.md."""
    if not total:
        return 0

    def done(child: dict[str, Any]) -> float:
        terminal = child.get("status") in TERMINAL
        return 100.0 if terminal else float(child.get("progress", 0))

    if mode == "weighted":
        weights = [_weight(c) for c in children]
        missing = total - len(children)
        return int(sum(w * done(c) for w, c in zip(weights, children, strict=True))
                   / (sum(weights) + missing))
    if mode == "sequential":
        finished = sum(1 for c in children if c.get("status") in TERMINAL)
        running = next((c for c in children if c.get("status") not in TERMINAL), None)
        current = float(running.get("progress", 0)) if running else 0.0
        return int((finished * 100 + current) / total)
    return int(sum(done(c) for c in children) / total)


def _weight(child: dict[str, Any]) -> float:
    weight = (child.get("metadata") or {}).get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        return 1.0
    return float(min(weight, 1e6))


def _check_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        fail("id", "must be 1 to 255 characters of letters, digits and _ . : ~ -, "
                   "starting with a letter or digit")
    return value


def _path_segments(environ: Mapping[str, Any]) -> list[str]:
    # The raw path keeps %2F inside an id from splitting it; PATH_INFO is already decoded.
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw, str):
        path = raw.split("?", 1)[0]
        mount = str(environ.get("SCRIPT_NAME", "")).rstrip("/")
        if mount and unquote(path).startswith(mount + "/"):
            path = path[len(quote(mount, safe="/")):]
        return [unquote(part, errors="replace") for part in path.split("/") if part]
    path_info = str(environ.get("PATH_INFO", ""))
    with contextlib.suppress(UnicodeError):
        path_info = path_info.encode("latin-1").decode("utf-8")
    return [part for part in path_info.split("/") if part]


def _route(segments: list[str]) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    if len(segments) < 2 or segments[:2] != ["v1", "jobs"]:
        return None, ()
    rest = segments[2:]
    if not rest:
        return ("list",), ("GET", "POST")
    if len(rest) == 1:
        return ("job", rest[0]), ("GET",)
    if len(rest) == 2 and rest[1] == "children":
        return ("children", rest[0]), ("GET",)
    if len(rest) == 2 and rest[1] in ("progress", "complete", "fail"):
        return (rest[1], rest[0]), ("POST",)
    return None, ()


def _etag_matches(header: str, etag: str) -> bool:
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _as_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        fail(name, f"must be an integer, got {text!r}")


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not (text.startswith("s:") and text[2:].isdigit() and len(text) < 24):
        fail("cursor", "is not a cursor this server made")
    return int(text[2:])


def create_app(db_path: str | os.PathLike[str], *, api_key: str | None = None,
               public_key: str | None = None, rate_limit: int | None = None,
               max_body_bytes: int = MAX_BODY_BYTES,
               cors_origin: str | None = "*") -> SeennServerApp:
    """Create the reference backend's WSGI application on a SQLite database.

    Args:
        db_path: The SQLite file (created if missing; WAL mode).
        api_key: Serve this secret key's app (registered on first use).
        public_key: The app's public, read-only key.
        rate_limit: Requests per second allowed per key (429 beyond it).
        max_body_bytes: Request bodies above this are refused with 413.
        cors_origin: ``Access-Control-Allow-Origin`` for browsers; ``None`` for no CORS.

    Returns:
        A WSGI application; ``app.created_keys`` holds a key pair made on this start.
    """
    return SeennServerApp(db_path, api_key=api_key, public_key=public_key,
                          rate_limit=rate_limit, max_body_bytes=max_body_bytes,
                          cors_origin=cors_origin)

