"""A real HTTP server on 127.0.0.1 for tests: records requests, plays scripted replies.

Replies queued with :meth:`RecordingServer.reply` are played first, in order;
when none is queued, a small in-memory backend (:class:`FakeBackend`) answers,
so tests can also run whole flows. ``GET /v1/eta/{key}`` (the HTTP exporter
fetches it on a thread of its own, at moments of its choosing) is kept apart: it
never takes a scripted reply, is recorded in ``eta_requests`` rather than
``requests``, and is answered from ``backend.eta`` (404 for a key not there).
A test of the client's own ``eta`` calls sets ``eta_apart = False`` to script them.
``GET .../healthz`` (the HTTP exporter asks it once, for the protocol extensions) is
kept apart the same way: recorded in ``health_requests`` and answered ``health``
(``{"status": "ok"}`` by default: no extensions, so exporters make single calls).
Responses go out in one write with ``TCP_NODELAY`` set (small split writes
cost ~40 ms per keep-alive request).
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        """The request body decoded as JSON."""
        return json.loads(self.body)


@dataclass
class Reply:
    """A scripted answer; ``drop`` closes the connection without answering."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    drop: bool = False
    hold: threading.Event | None = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class FakeBackend:
    """Just enough of the wire protocol, in memory, for whole-flow tests."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        # eta key -> (status, body) of GET /v1/eta/{key}
        self.eta: dict[str, tuple[int, Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               body: Any) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        if parts[:2] != ["v1", "jobs"]:
            return 404, {"error": {"code": "NOT_FOUND", "message": "no such path"}}
        with self._lock:
            if method == "POST" and len(parts) == 2:
                return self._start(body)
            if method == "GET" and len(parts) == 2:
                return self._list(query)
            job = self.jobs.get(unquote(parts[2])) if len(parts) > 2 else None
            if job is None:
                return 404, {"error": {"code": "NOT_FOUND", "message": "job not found"}}
            if method == "GET" and len(parts) == 3:
                return 200, job
            if method == "GET" and parts[3:] == ["children"]:
                children = sorted((j for j in self.jobs.values()
                                   if j.get("parent", {}).get("parentJobId") == job["id"]),
                                  key=lambda j: j["parent"]["childIndex"])
                return 200, {"parent": job, "children": children}
            if method == "POST" and len(parts) == 4:
                return self._update(job, parts[3], body)
        return 405, {"error": {"code": "METHOD_NOT_ALLOWED", "message": "no"}}

    def eta_answer(self, key: str) -> tuple[int, Any]:
        """The answer to ``GET /v1/eta/{key}``."""
        with self._lock:
            return self.eta.get(key, (404, {"error": {"code": "NOT_FOUND",
                                                      "message": "no ETA statistics"}}))

    def _start(self, body: dict[str, Any]) -> tuple[int, Any]:
        job_id = body.get("id") or f"job_{next(self._ids):04d}"
        job = {"id": job_id, "appId": "app_test", "userId": body["userId"],
               "jobType": body["jobType"], "title": body["title"], "status": "pending",
               "progress": 0, "createdAt": _now(), "updatedAt": _now(), "seq": len(self.jobs)}
        for key in ("metadata", "queue", "stage", "estimatedCompletionAt", "workflowId"):
            if key in body:
                job[key] = body[key]
        if "totalChildren" in body:
            job["children"] = {"total": body["totalChildren"], "completed": 0, "failed": 0,
                               "running": 0, "pending": 0}
            job["childProgressMode"] = body.get("childProgressMode", "average")
        if "parentJobId" in body:
            parent = self.jobs.get(body["parentJobId"])
            if parent is None:
                return 404, {"error": {"code": "NOT_FOUND", "message": "parent not found"}}
            if parent["status"] in ("completed", "failed"):  # as seenn serve answers
                return 409, {"error": {"code": "CONFLICT", "message": "parent is finished"}}
            job["parent"] = {"parentJobId": parent["id"], "childIndex": body["childIndex"]}
            counts = parent.setdefault("children", {"total": 0, "completed": 0, "failed": 0,
                                                     "running": 0, "pending": 0})
            counts["pending"] += 1
        self.jobs[job_id] = job
        return 201, job

    def _list(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        user = query.get("userId", [""])[0]
        limit = int(query.get("limit", ["20"])[0])
        start = int(query.get("cursor", ["0"])[0])
        mine = sorted((j for j in self.jobs.values() if j["userId"] == user),
                      key=lambda j: -j["seq"])
        page = mine[start:start + limit]
        more = start + limit < len(mine)
        return 200, {"jobs": page, **({"nextCursor": str(start + limit)} if more else {})}

    def _update(self, job: dict[str, Any], action: str, body: dict[str, Any]) -> tuple[int, Any]:
        if job["status"] in ("completed", "failed"):
            return 409, {"error": {"code": "CONFLICT", "message": "job is already finished"}}
        job["updatedAt"] = _now()
        if action == "progress":
            job.update(status="running", progress=body["progress"])
            for key in ("message", "stage", "queue"):
                if key in body:
                    job[key] = body[key]
            if "metadata" in body:
                job["metadata"] = {**job.get("metadata", {}), **body["metadata"]}
        elif action == "complete":
            job.update(status="completed", progress=100, completedAt=_now())
            for key in ("result", "message"):
                if key in body:
                    job[key] = body[key]
        elif action == "fail":
            job.update(status="failed", error=body["error"], completedAt=_now())
        else:
            return 404, {"error": {"code": "NOT_FOUND", "message": "no such action"}}
        return 200, job


class RecordingServer:
    """A threaded HTTP server on a free loopback port; see the module docstring."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.eta_requests: list[Recorded] = []
        self.eta_apart = True
        self.health_requests: list[Recorded] = []
        self.health: tuple[int, Any] = (200, {"status": "ok"})
        self.backend = FakeBackend()
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._released: list[threading.Event] = []
        self._gates: list[tuple[Callable[[Recorded], bool], threading.Event]] = []
        handler = self._handler_class()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,),
                                        daemon=True)

    def start(self) -> RecordingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        for event in self._released:
            event.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def reply(self, status: int = 200, body: Any = None, *, headers: dict[str, str] | None = None,
              raw: bytes | None = None, drop: bool = False,
              hold: threading.Event | None = None, times: int = 1) -> None:
        """Queue ``times`` identical scripted replies."""
        if hold is not None:
            self._released.append(hold)
        for _ in range(times):
            self._replies.append(Reply(status, body, headers or {}, raw, drop, hold))

    def hold_requests(self, match: Callable[[Recorded], bool]) -> threading.Event:
        """Hold every request ``match`` accepts, unanswered, until the returned event is set."""
        gate = threading.Event()
        self._released.append(gate)
        with self._lock:
            self._gates.append((match, gate))
        return gate

    def _next_reply(self) -> Reply | None:
        with self._lock:
            return self._replies.popleft() if self._replies else None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                record = Recorded(self.command, parts.path, parse_qs(parts.query),
                                  dict(self.headers.items()), body)
                if self.command == "GET" and parts.path.endswith("/healthz"):
                    with server._lock:
                        server.health_requests.append(record)
                    status, payload = server.health
                    data = json.dumps(payload).encode()
                    self.wfile.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(data)}\r\n"
                                     f"Content-Type: application/json\r\n\r\n".encode() + data)
                    return
                eta = (server.eta_apart and self.command == "GET"
                       and parts.path.startswith("/v1/eta/"))
                with server._lock:
                    (server.eta_requests if eta else server.requests).append(record)
                    gates = [gate for match, gate in server._gates if match(record)]
                for gate in gates:
                    gate.wait(30)
                reply = None if eta else server._next_reply()
                if eta:
                    status, payload = server.backend.eta_answer(
                        unquote(parts.path[len("/v1/eta/"):]))
                    reply = Reply(status, payload)
                if reply is None:
                    status, payload = server.backend.handle(
                        self.command, parts.path, record.query,
                        json.loads(body) if body else None)
                    reply = Reply(status, payload)
                if reply.hold is not None:
                    reply.hold.wait(10)
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                data = reply.raw if reply.raw is not None else (
                    b"" if reply.body is None else json.dumps(reply.body).encode())
                head = [f"HTTP/1.1 {reply.status} {self.responses.get(reply.status, ('',))[0]}",
                        f"Content-Length: {len(data)}", "Content-Type: application/json"]
                head += [f"{k}: {v}" for k, v in reply.headers.items()]
                self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        return Handler
