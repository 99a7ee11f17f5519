"""The HTTP shell of ``seenn serve``: the WSGI application around the job operations.

``SeennServerApp`` owns everything about a request that is HTTP: routing a path to a
read or a write, what each kind of credential may read (who sent it, by key or user
token, and the per-key rate limit, are ``_auth``'s), CORS and its preflight, the
size, JSON and text of a request body, ``GET`` with ETags, lists and children in pages with cursors,
``Idempotency-Key`` replay, and turning ``HTTPError`` into the JSON error answer. A
write opens one ``Store.write`` transaction and hands the parsed body to ``_jobs``
(``start_job`` or ``update_job``), which does what happens to the jobs. A read is a
plain read, unless it meets a running job past its stale limit: that job is ended
(``_jobs.end_stale``) in a write transaction before the answer is read again, so no
reader ever sees it running; a background ``Sweeper`` ends the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs

from seenn._core.validation import (
    MAX_JOB_TYPE,
    MAX_USER_ID,
    check_int,
    check_text,
    fail,
)
from seenn.server._auth import Caller, Keys, RateLimiter, new_key
from seenn.server._changes import DEFAULT_MAX_WAITERS, MAX_WAIT_SECONDS, ChangeFeed
from seenn.server._engines import open_store
from seenn.server._errors import HTTPError, Response
from seenn.server._eta import eta_request, shown
from seenn.server._jobs import Fields, end_stale, sweep
from seenn.server._pages import page as page_answer
from seenn.server._requests import (
    encode_cursor,
    etag_matches,
    one,
    page,
    path_segments,
    read_json,
)
from seenn.server._requests import route as match_route
from seenn.server._stale import DEFAULT_STALE_AFTER, StalePolicy, Sweeper, check_stale_after
from seenn.server._store import key_hash
from seenn.server._transaction import StoredJob, Transaction
from seenn.server._writes import (
    DEFAULT_MAX_EVENTS,
    MAX_EVENTS_LIMIT,
    UnexpectedFailure,
    apply_events,
    apply_write,
    check_events,
    check_key,
)

logger = logging.getLogger("seenn.server")

StartResponse = Callable[..., Any]
T = TypeVar("T")

MAX_BODY_BYTES = 512 * 1024
# Ids one batched read (GET /v1/jobs?ids=) may ask for, once repeats are dropped.
MAX_IDS = 100
_WAIT = re.compile(r"[0-9]{1,2}(?:\.[0-9]{1,3})?")
# A public key reads what every holder of it may read: a shared cache keyed on the
# key (Vary) may answer for a second. Anything else is one caller's: browsers only.
_SHARED = {"Cache-Control": "public, max-age=1", "Vary": "Authorization"}
_PRIVATE = {"Cache-Control": "private, no-cache", "Vary": "Authorization"}
_CORS_ALLOW = "Authorization, Content-Type, Idempotency-Key, If-None-Match"
_CORS_EXPOSE = "ETag, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, Idempotent-Replayed"
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
            429: "Too Many Requests", 500: "Internal Server Error"}


# GET /v1/jobs?recent=1 reads at most this many jobs per page, this many at a time.
_RECENT_SCAN = 2000
_RECENT_BATCH = 200
_STATUSES = frozenset({"pending", "queued", "running", "completed", "failed", "cancelled"})

# The routes whose second part is a job id.
_JOB_ROUTES = frozenset({"job", "children", "progress", "complete", "fail"})


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
        stale_after: Seconds a ``running`` job may go without any write before it is
            ended as ``failed`` with ``WORKER_LOST``, unless it set its own limit
            (``staleAfterSeconds``); 0 turns the server-wide limit off.
        clock: The time source (seconds since the epoch) of timestamps, expiry and
            stale limits; ``time.time`` by default. A seam for tests.
        max_events: The most events one ``POST /v1/events`` may carry (1 to 10,000);
            0 turns that extension off (the path is then 404 and ``/healthz`` does not
            offer it), as on a backend without it.
        max_waiters: Long polls (``?wait=``) that may wait at once in this process,
            each holding a server thread; past it a long poll is answered at once.
            0 turns long polls off.

    Attributes:
        created_keys: The ``(secret, public)`` pair made on this start, if one was
            (a new database and no keys given, or only a secret key given).
        stale_after: The server-wide stale limit in seconds (0: none).
        changes: The change feed of long polls (``changes.waiting`` is how many wait).

    Raises:
        seenn.ValidationError: An option is invalid; the error names it.
    """

    def __init__(self, db_path: str | os.PathLike[str], *, api_key: str | None = None,
                 public_key: str | None = None, rate_limit: int | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, cors_origin: str | None = "*",
                 stale_after: float = DEFAULT_STALE_AFTER,
                 clock: Callable[[], float] | None = None,
                 max_events: int = DEFAULT_MAX_EVENTS,
                 max_waiters: int = DEFAULT_MAX_WAITERS) -> None:
        self.stale_after = check_stale_after("stale_after", stale_after)
        self.max_events = check_int("max_events", max_events, minimum=0,
                                    maximum=MAX_EVENTS_LIMIT)
        check_int("max_waiters", max_waiters, minimum=0, maximum=10_000)
        self.store = open_store(os.fspath(db_path))
        if clock is not None:
            self.store.clock = clock
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
            # Another process starting on the same new database may get there first:
            # then its pair is the one, and this process makes none.
            if self.store.add_first_app(f"app_{key_hash(secret)[:12]}", secret, public):
                self.created_keys = (secret, public)
        self._keys = Keys(self.store)
        self._rate = RateLimiter(rate_limit) if rate_limit else None
        self._stale = StalePolicy(self.stale_after, self.store.clock())
        self._sweeper = Sweeper(self.sweep, self._stale.sweep_interval)
        # Other processes' writes: SQLite's are found by polling, PostgreSQL announces them.
        announced = self.store.engine == "postgresql"
        self.changes = ChangeFeed(max_waiters=max_waiters,
                                  versions=None if announced else self.store.versions,
                                  counter=self.store.commit_counter)
        self.store.on_commit.append(self.changes.notify)
        self.store.listen(self.changes.notify)
        self._health = {"status": "ok", "extensions": self.extensions()}

    def extensions(self) -> dict[str, dict[str, Any]]:
        """The protocol extensions this server offers, as ``GET /healthz`` lists them.

        Clients use an extension only when it is listed here, and fall back to the
        Seenn calls otherwise. Each entry's object holds the extension's limits.
        """
        offered: dict[str, dict[str, Any]] = {}
        if self.max_events:
            offered["events"] = {"maxEvents": self.max_events, "maxBytes": self.max_body_bytes}
        offered["jobsByIds"] = {"maxIds": MAX_IDS}
        if self.changes.max_waiters > 0:
            offered["wait"] = {"maxSeconds": MAX_WAIT_SECONDS}
        offered["eta"] = {}
        offered["tokens"] = {}
        offered["staleAfter"] = {}
        return offered

    def close(self) -> None:
        """Answer the waiting long polls, stop the sweep, close the database connections."""
        self.changes.close()
        self.stop_sweeper()
        self.store.close()

    # Jobs whose worker went silent ------------------------------------------------------

    def sweep(self) -> int:
        """End every running job past its stale limit, in every app of the database.

        This is what the background sweep runs; reads end the jobs they meet themselves.

        Returns:
            How many of the jobs it found it ended.
        """
        return sweep(self.store, self._stale)

    def start_sweeper(self) -> None:
        """Start the background sweep in this process, if it is not running yet.

        The built-in server starts it when it starts serving, and the app itself on
        its first request (so it also runs under another WSGI server, in each of its
        worker processes). It never starts again once stopped.
        """
        self._sweeper.start()

    def stop_sweeper(self) -> None:
        """Stop the background sweep for good (``close()`` and ``server_close()`` do)."""
        self._sweeper.stop()

    @property
    def sweep_interval(self) -> float:
        """Seconds between two background sweeps: ``stale_after / 10``, within 1 to 30."""
        return self._sweeper.interval

    @sweep_interval.setter
    def sweep_interval(self, seconds: float) -> None:
        self._sweeper.interval = seconds

    def _read(self, app_id: str,
              read: Callable[[Transaction], tuple[T, Sequence[StoredJob]]]) -> T:
        """Run ``read`` (an answer and the jobs it shows) with no job in it past its limit.

        A pure read when every job shown is fresh; otherwise the stale ones are ended in
        one write transaction and the answer is read again inside it.
        """
        with self.store.read(app_id) as tx:
            answer, shown = read(tx)
            stale = [job.data["id"] for job in shown if self._stale.is_stale(job, tx.now)]
        if not stale:
            return answer

        def end_and_read(tx: Transaction) -> T:
            for job_id in stale:
                end_stale(tx, job_id, self._stale)
            return read(tx)[0]

        return self.store.transact(app_id, end_and_read)

    # WSGI ---------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        self._sweeper.start()
        shown_page = page_answer(environ)  # the job page, the operator view, their assets
        if shown_page is not None:
            start_response(shown_page[0], shown_page[1])
            return [shown_page[2]]
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
        segments = path_segments(environ)
        if segments in (["healthz"], ["v1", "healthz"]):
            if method != "GET":
                raise HTTPError(405, "METHOD_NOT_ALLOWED", "use GET", headers={"Allow": "GET"})
            return 200, self._health, {}
        route, allowed = match_route(segments)
        if route is None or (route == ("events",) and not self.max_events):
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
        caller = self._keys.authenticate(environ)
        rate_headers = {} if self._rate is None else self._rate.headers(caller.rate_key,
                                                                        self.store.clock())
        if method == "POST" and caller.kind != "secret":
            what = "user tokens" if caller.kind == "token" else "public keys"
            raise HTTPError(403, "FORBIDDEN", f"{what} can only read", headers=rate_headers)
        if route[0] == "eta" and caller.kind != "secret":
            # Statistics describe the whole app's workload, not one job or one user's.
            raise HTTPError(403, "FORBIDDEN", "ETA statistics need a secret key",
                            headers=rate_headers)
        if route[0] in _JOB_ROUTES and "\x00" in route[1]:
            # No job id holds NUL (ids are checked at start), and PostgreSQL could not
            # even look one up.
            raise HTTPError(404, "NOT_FOUND", "job not found", headers=rate_headers)
        self.store.purge()
        try:
            if route == ("tokens",):
                status, body, headers = self._keys.mint_token(
                    caller.app_id, read_json(environ, self.max_body_bytes))
            elif route[0] == "eta":
                status, body, headers = eta_request(self.store, caller.app_id, method, route)
            elif method == "GET":
                status, body, headers = self._get(route, caller, environ)
            elif route == ("events",):
                status, body, headers = self._events(caller.app_id, environ)
            else:
                status, body, headers = self._post(route, caller.app_id, environ)
        except HTTPError as error:
            error.headers.update(rate_headers)
            raise
        headers.update(rate_headers)
        return status, body, headers

    # Reads --------------------------------------------------------------------------

    def _get(self, route: tuple[str, ...], caller: Caller,
             environ: Mapping[str, Any]) -> Response:
        text = str(environ.get("QUERY_STRING", ""))
        query = parse_qs(text)
        # Blank values kept: "?ids=" asks for a batched read of nothing, a 400.
        given = parse_qs(text, keep_blank_values=True)
        if_none_match = str(environ.get("HTTP_IF_NONE_MATCH", ""))
        if route == ("list",) and "ids" in given:
            fields = Fields()
            ids = fields.check("ids", lambda: _ids(given))
            wait = fields.check("wait", lambda: _wait(given))
            fields.raise_if_any()
            cache = _cache(caller, wait)
            return self._waiting(caller.app_id, ids, wait, if_none_match,
                                 lambda: self._by_ids(caller, ids, if_none_match, cache))
        if route == ("list",):
            if caller.kind == "public":
                # A public key ships inside apps, so anyone may hold it: it reads a job
                # whose id it was given, never a list of somebody's jobs.
                raise HTTPError(403, "FORBIDDEN",
                                "a public key cannot list jobs: list with a user token "
                                "(POST /v1/tokens) or a secret key")
            return self._list(caller, query)
        job_id = route[1]
        if route[0] == "children":
            return self._family(job_id, caller, query)
        fields = Fields()
        wait = fields.check("wait", lambda: _wait(given))
        fields.raise_if_any()
        cache = _cache(caller, wait)
        return self._waiting(caller.app_id, [job_id], wait, if_none_match,
                             lambda: self._job(caller, job_id, if_none_match, cache))

    def _waiting(self, app_id: str, job_ids: Sequence[str], wait: float | None,
                 if_none_match: str, read: Callable[[], Response]) -> Response:
        """``read()``, or with ``wait`` the first answer of it that is not a 304.

        A long poll waits only for a client that says what it has (``If-None-Match``),
        for at most ``wait`` seconds; turned away by the bound, it answers at once.
        """
        if wait is None or not if_none_match or if_none_match.strip() == "*":
            # "*" matches whatever the job becomes: nothing to wait for.
            return read()
        deadline = time.monotonic() + wait
        with self.changes.watching(app_id, job_ids) as waiter:
            while True:
                if waiter is not None:
                    waiter.clear()  # before the read: a change after it wakes the wait
                answer = read()
                left = deadline - time.monotonic()
                if answer[0] != 304 or waiter is None or left <= 0 or self.changes.closed:
                    return answer
                waiter.wait(left)

    def _job(self, caller: Caller, job_id: str, if_none_match: str,
             cache: Mapping[str, str]) -> Response:
        """``GET /jobs/{id}``: the job, with its ETag (304 when the client has it)."""

        def read(tx: Transaction) -> tuple[Any, list[StoredJob]]:
            stored = tx.get(job_id)
            if stored is None or (caller.user_id is not None
                                  and stored.data.get("userId") != caller.user_id):
                raise HTTPError(404, "NOT_FOUND", f"job {job_id} not found")
            return stored.data, [stored]

        job = shown(self._read(caller.app_id, read), self.store.clock())
        return _tagged(job, cache, if_none_match)

    def _by_ids(self, caller: Caller, ids: Sequence[str], if_none_match: str,
                cache: Mapping[str, str]) -> Response:
        """``GET /jobs?ids=``: the live jobs the caller may read, in the order asked."""

        def read(tx: Transaction) -> tuple[list[Any], list[StoredJob]]:
            found = tx.get_many(ids)
            # A token reads its user's jobs only: another user's job is missing, as a
            # single read of it would be a 404.
            rows = [found[job_id] for job_id in ids if job_id in found
                    and (caller.user_id is None
                         or found[job_id].data.get("userId") == caller.user_id)]
            return [row.data for row in rows], rows

        jobs = self._read(caller.app_id, read)
        now = self.store.clock()
        present = {job["id"] for job in jobs}
        body = {"jobs": [shown(job, now) for job in jobs],
                "missing": [job_id for job_id in ids if job_id not in present]}
        return _tagged(body, cache, if_none_match)

    def _family(self, job_id: str, caller: Caller, query: dict[str, list[str]]) -> Response:
        """``GET /jobs/{id}/children``: the parent and a page of its children."""
        fields = Fields()
        limit, after = page(query, "c", fields)
        fields.raise_if_any()

        def read(tx: Transaction) -> tuple[Response, list[StoredJob]]:
            stored = tx.get(job_id)
            if stored is None or (caller.user_id is not None
                                  and stored.data.get("userId") != caller.user_id):
                raise HTTPError(404, "NOT_FOUND", f"job {job_id} not found")
            return self._children(tx, stored, caller, limit, after)

        status, family, headers = self._read(caller.app_id, read)
        now = self.store.clock()
        family["parent"] = shown(family["parent"], now)
        family["children"] = [shown(child, now) for child in family["children"]]
        return status, family, headers

    def _list(self, caller: Caller, query: dict[str, list[str]]) -> Response:
        if one(query, "recent") is not None:
            return self._recent(caller, query)
        raw_user = one(query, "userId")
        if raw_user is None and caller.user_id is not None:
            raw_user = caller.user_id  # a token lists its own user's jobs by default
        fields = Fields()
        user_id = fields.check("userId", lambda: check_text(
            "userId", raw_user, max_len=MAX_USER_ID))
        limit, before = page(query, "s", fields)
        fields.raise_if_any()
        if caller.user_id is not None and user_id != caller.user_id:
            raise HTTPError(403, "FORBIDDEN", "a user token lists its own user's jobs only",
                            {"field": "userId"})

        def read(tx: Transaction) -> tuple[list[StoredJob], list[StoredJob]]:
            found = tx.list_user(user_id, before_seq=before, limit=limit + 1)
            return found, found[:limit]

        rows = self._read(caller.app_id, read)
        now = self.store.clock()
        body: dict[str, Any] = {"jobs": [shown(row.data, now) for row in rows[:limit]]}
        if len(rows) > limit:
            body["nextCursor"] = encode_cursor("s", rows[limit - 1].seq)
        return 200, body, {}

    def _recent(self, caller: Caller, query: dict[str, list[str]]) -> Response:
        """``GET /v1/jobs?recent=1``: the app's jobs of every user, newest first (secret key).

        Optional filters ``userId``, ``jobType`` and ``status``. The filters on fields kept
        only in the job document are applied while reading newest first, at most
        ``_RECENT_SCAN`` jobs per page: a page may hold fewer jobs than ``limit`` and still
        have a ``nextCursor``, which goes on from where the scan stopped.
        """
        if caller.kind != "secret":
            raise HTTPError(403, "FORBIDDEN", "listing the jobs of every user needs a secret key")
        fields = Fields()
        recent = one(query, "recent")
        fields.check("recent", lambda: None if recent in ("1", "true") else fail(
            "recent", "must be 1 or true"))
        raw_user, raw_type, status = one(query, "userId"), one(query, "jobType"), one(
            query, "status")
        user_id = fields.check("userId", lambda: None if raw_user is None else check_text(
            "userId", raw_user, max_len=MAX_USER_ID))
        job_type = fields.check("jobType", lambda: None if raw_type is None else check_text(
            "jobType", raw_type, max_len=MAX_JOB_TYPE))
        fields.check("status", lambda: None if status is None or status in _STATUSES else fail(
            "status", f"must be one of {', '.join(sorted(_STATUSES))}"))
        limit, before = page(query, "s", fields)
        fields.raise_if_any()

        def wanted(job: Mapping[str, Any]) -> bool:
            return ((job_type is None or job.get("jobType") == job_type)
                    and (status is None or job.get("status") == status))

        def read(tx: Transaction) -> tuple[tuple[list[StoredJob], int | None],
                                           list[StoredJob]]:
            found: list[StoredJob] = []
            position, scanned = before, 0
            while len(found) <= limit and scanned < _RECENT_SCAN:
                batch = tx.recent(before_seq=position, limit=_RECENT_BATCH, user_id=user_id)
                for row in batch:
                    scanned, position = scanned + 1, row.seq
                    if wanted(row.data):
                        found.append(row)
                        if len(found) > limit:
                            break
                if len(batch) < _RECENT_BATCH:
                    position = None  # nothing older is left
                    break
            return (found, position), found[:limit]

        found, position = self._read(caller.app_id, read)
        now = self.store.clock()
        body: dict[str, Any] = {"jobs": [shown(row.data, now) for row in found[:limit]]}
        if len(found) > limit:
            body["nextCursor"] = encode_cursor("s", found[limit - 1].seq)
        elif position is not None:
            body["nextCursor"] = encode_cursor("s", position)
        return 200, body, {}

    def _children(self, tx: Transaction, parent: StoredJob, caller: Caller,
                  limit: int, after: int | None) -> tuple[Response, list[StoredJob]]:
        """A parent's page of children, and the jobs it shows."""
        # A token sees the children that belong to its user, as it does everywhere.
        rows = tx.children_page(parent.data["id"], after_index=after, limit=limit + 1,
                                user_id=caller.user_id)
        body: dict[str, Any] = {"parent": parent.data,
                                "children": [row.data for row in rows[:limit]]}
        if len(rows) > limit:
            body["nextCursor"] = encode_cursor(
                "c", rows[limit - 1].data["parent"]["childIndex"])
        return (200, body, {}), [parent, *rows[:limit]]

    # Writes -------------------------------------------------------------------------

    def _post(self, route: tuple[str, ...], app_id: str, environ: Mapping[str, Any]) -> Response:
        body = read_json(environ, self.max_body_bytes)
        key = check_key(environ.get("HTTP_IDEMPOTENCY_KEY"), "Idempotency-Key")
        # A refusal is committed too: its answer is stored for replay. A write that
        # PostgreSQL ends as deadlocked runs again from the start.
        done = self.store.transact(
            app_id, lambda tx: apply_write(tx, app_id, route, body, key, self._stale))
        if done.failure is not None:
            raise done.failure
        if done.replayed:
            return done.status, done.body, {"Idempotent-Replayed": "true"}
        return done.status, shown(done.body, self.store.clock()), {}

    def _events(self, app_id: str, environ: Mapping[str, Any]) -> Response:
        """``POST /v1/events``: many job events in one transaction, an answer for each.

        The envelope is checked whole first (400 before anything is written); then each
        event is applied in the order given, as its single call would be.
        """
        envelope = read_json(environ, self.max_body_bytes)
        events = check_events(envelope, self.max_events)
        # "brief": the writer needs no job back for an accepted progress, complete or
        # fail (the exporter); a start still answers its job (the id it was given).
        brief = envelope.get("brief", False)
        if not isinstance(brief, bool):
            raise HTTPError(400, "VALIDATION_ERROR", "brief: must be true or false",
                            {"field": "brief", "reason": "must be true or false"})
        # Many rows in one transaction: two batches may deadlock on an engine with row
        # locks, and the engine's choice of victim runs again from the start.
        try:
            done = self.store.transact(app_id, lambda tx: apply_events(
                tx, app_id, events, self._stale, self.store.retry_errors, careful=False))
        except UnexpectedFailure:
            # Rolled back whole: again, each event in a savepoint, so the failing one is
            # answered 500 alone and the others stand.
            done = self.store.transact(app_id, lambda tx: apply_events(
                tx, app_id, events, self._stale, self.store.retry_errors))
        now = self.store.clock()
        results: list[dict[str, Any]] = []
        for event, result in zip(events, done, strict=True):
            if brief and 200 <= result.status < 300 and event.route[0] != "list":
                results.append({"status": result.status, **(
                    {"replayed": True} if result.replayed else {})})
                continue
            answer: dict[str, Any] = {"status": result.status, "body": result.body}
            if result.replayed:
                answer["replayed"] = True
            elif result.failure is None:
                answer["body"] = shown(result.body, now)
            results.append(answer)
        return 200, {"results": results}, {}


def _ids(query: dict[str, list[str]]) -> list[str]:
    """The ids of a batched read, repeats dropped, in the order first given."""
    if any(name in query for name in ("userId", "limit", "cursor")):
        fail("ids", "cannot be combined with userId, limit or cursor: a batched read "
                    "answers the jobs asked for, on one page")
    ids: list[str] = []
    for part in ",".join(query["ids"]).split(","):
        if not part or len(part) > 255:
            fail("ids", "must be job ids of 1 to 255 characters, separated by commas")
        ids.append(part)
    distinct = list(dict.fromkeys(ids))
    if len(distinct) > MAX_IDS:
        fail("ids", f"at most {MAX_IDS} ids in one read, got {len(distinct)}")
    return distinct


def _wait(query: dict[str, list[str]]) -> float | None:
    """The seconds of a long poll (``wait``), or ``None`` when not asked for."""
    values = query.get("wait")
    if values is None:
        return None
    text = values[0]
    if len(values) > 1 or not _WAIT.fullmatch(text) or not 0 < float(text) <= MAX_WAIT_SECONDS:
        fail("wait", f"must be a number of seconds above 0 and at most {MAX_WAIT_SECONDS} "
                     "(at most 3 decimals), given once")
    return float(text)


def _cache(caller: Caller, wait: float | None) -> Mapping[str, str]:
    """The caching headers of a read: shared only for a public key's plain poll.

    A long poll is never stored by a shared cache: one that answered it from storage
    would turn every waiting client into a client polling in a loop.
    """
    return _SHARED if caller.kind == "public" and wait is None else _PRIVATE


def _tagged(body: Any, cache: Mapping[str, str], if_none_match: str) -> Response:
    """A read's answer with its ETag (a hash of the body): 304 if the client holds it."""
    etag = '"' + hashlib.sha1(json.dumps(body, sort_keys=True).encode(),
                              usedforsecurity=False).hexdigest()[:27] + '"'
    headers = {"ETag": etag, **cache}
    if etag_matches(if_none_match, etag):
        return 304, None, headers
    return 200, body, headers


def create_app(db_path: str | os.PathLike[str], *, api_key: str | None = None,
               public_key: str | None = None, rate_limit: int | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, cors_origin: str | None = "*",
               stale_after: float = DEFAULT_STALE_AFTER,
               clock: Callable[[], float] | None = None,
               max_events: int = DEFAULT_MAX_EVENTS,
               max_waiters: int = DEFAULT_MAX_WAITERS) -> SeennServerApp:
    """Create the reference backend's WSGI application on a SQLite database.

    Args:
        db_path: The SQLite file (created if missing; WAL mode).
        api_key: Serve this secret key's app (registered on first use).
        public_key: The app's public, read-only key.
        rate_limit: Requests per second allowed per key (429 beyond it).
        max_body_bytes: Request bodies above this are refused with 413.
        cors_origin: ``Access-Control-Allow-Origin`` for browsers; ``None`` for no CORS.
        stale_after: Seconds without any write after which a running job is ended as
            failed with ``WORKER_LOST`` (0 or 10 to 2,592,000; 0 turns it off for jobs
            that set no ``staleAfterSeconds`` of their own).
        clock: The time source, ``time.time`` by default (a seam for tests).
        max_events: The most events one ``POST /v1/events`` may carry (1 to 10,000);
            0 turns the extension off.
        max_waiters: Long polls that may wait at once in this process (each holds a
            server thread); 0 turns long polls off.

    Returns:
        A WSGI application; ``app.created_keys`` holds a key pair made on this start.

    Raises:
        seenn.ValidationError: An option is invalid; the error names it.
    """
    return SeennServerApp(db_path, api_key=api_key, public_key=public_key,
                          rate_limit=rate_limit, max_body_bytes=max_body_bytes,
                          cors_origin=cors_origin, stale_after=stale_after, clock=clock,
                          max_events=max_events, max_waiters=max_waiters)

