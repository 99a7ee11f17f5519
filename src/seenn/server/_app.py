"""The HTTP shell of ``seenn serve``: the WSGI application around the job operations.

``SeennServerApp`` owns everything about a request that is HTTP: routing a path to a
read or a write, the Bearer key and which app it belongs to, per-key rate limits, CORS
and its preflight, the size and JSON of a request body, ``GET`` with ETags, listing
with cursors, ``Idempotency-Key`` replay, and turning ``HTTPError`` into the JSON error
answer. A write opens one ``Store.write`` transaction and hands the parsed body to
``_jobs`` (``start_job`` or ``update_job``), which does what happens to the jobs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from seenn._core.validation import MAX_LIST_LIMIT, MAX_USER_ID, check_int, check_text, fail
from seenn.server._errors import HTTPError, Response
from seenn.server._jobs import Fields, start_job, update_job
from seenn.server._store import Store, canonical_hash, key_hash

logger = logging.getLogger("seenn.server")

StartResponse = Callable[..., Any]

DEFAULT_LIMIT = 20
MAX_BODY_BYTES = 512 * 1024
_CORS_ALLOW = "Authorization, Content-Type, Idempotency-Key, If-None-Match"
_CORS_EXPOSE = "ETag, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, Idempotent-Replayed"
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
            429: "Too Many Requests", 500: "Internal Server Error"}


def new_key(kind: str) -> str:
    """Make a random test key of a kind (``sk`` or ``pk``)."""
    return f"{kind}_test_{base64.b32encode(os.urandom(20)).decode().lower().rstrip('=')}"


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
        fields = Fields()
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
                    status, answer = start_job(tx, app_id, body)
                else:
                    status, answer = update_job(tx, route[0], route[1], body)
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

