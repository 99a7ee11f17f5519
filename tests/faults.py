"""A fault-injecting HTTP proxy for delivery tests: in front of a real `seenn serve`.

It forwards each request to the upstream backend unless a fault rule says
otherwise, and records what it forwarded and answered, so tests can check
order and exactly-once delivery from the outside.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Exchange:
    """One request through the proxy and what came back."""

    method: str
    path: str
    key: str | None
    status: int
    forwarded: bool
    body: bytes = b""  # the request body, for calls that carry many (POST /v1/events)
    answer: bytes = b""  # the answer's body, when the backend's came back
    replayed: bool = False  # the backend answered with a stored answer (Idempotent-Replayed)


class FaultProxy:
    """Forwards to ``upstream``; ``fail_next``, ``slow_next`` and ``down`` inject faults."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.log: list[Exchange] = []
        self._lock = threading.Lock()
        self.fail_next = 0  # answer the next N requests with 500 without forwarding
        self.fail_every = 0  # answer every Nth request with 500 (0: never)
        self.slow_next = 0  # forward the next N, then hold the answers past the timeout
        self.slow_seconds = 1.0
        # GET /healthz: answered here without the backend's extensions (exporters then
        # make one call per event, which these tests follow), unless this is set.
        self.pass_healthz = False
        self._count = 0
        self._released = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,),
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._released.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def exchanges(self, suffix: str) -> list[Exchange]:
        """Logged exchanges whose path ends with ``suffix``."""
        with self._lock:
            return [e for e in self.log if e.path.endswith(suffix)]

    def _decide(self) -> str:
        with self._lock:
            self._count += 1
            if self.fail_next > 0:
                self.fail_next -= 1
                return "fail"
            if self.slow_next > 0:
                self.slow_next -= 1
                return "slow"
            if self.fail_every and self._count % self.fail_every == 0:
                return "fail"
        return "pass"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}",
                        *(f"{k}: {v}" for k, v in headers.items())]
                self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                key = self.headers.get("Idempotency-Key")
                if self.path.endswith("/healthz") and not proxy.pass_healthz:
                    self._reply(200, b'{"status": "ok"}', {"Content-Type": "application/json"})
                    return
                action = proxy._decide()
                if action == "fail":
                    payload = json.dumps({"error": {"code": "INJECTED", "message": "fault"}})
                    self._reply(500, payload.encode(), {"Content-Type": "application/json"})
                    with proxy._lock:
                        proxy.log.append(Exchange(self.command, self.path, key, 500, False))
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "content-length")}
                try:
                    conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    out_headers = {k: v for k, v in response.getheaders()
                                   if k.lower() in ("content-type", "retry-after", "etag",
                                                    "x-ratelimit-limit",
                                                    "x-ratelimit-remaining")}
                    status = response.status
                    replayed = response.getheader("Idempotent-Replayed") == "true"
                    conn.close()
                except OSError:
                    # The backend is down: look like it, by dropping the connection.
                    self.close_connection = True
                    with proxy._lock:
                        proxy.log.append(Exchange(self.command, self.path, key, 0, False))
                    return
                if action == "slow":
                    # The backend applied the call, but its answer comes too late: the
                    # client times out and must retry without applying it twice.
                    with proxy._lock:
                        proxy.log.append(Exchange(self.command, self.path, key, status, True,
                                                  body, data, replayed))
                    proxy._released.wait(proxy.slow_seconds)
                    self.close_connection = True
                    return
                with proxy._lock:
                    proxy.log.append(Exchange(self.command, self.path, key, status, True,
                                              body, data, replayed))
                self._reply(status, data, out_headers)

            do_GET = do_POST = _serve

        return Handler


class ServeProcess:
    """`python -m seenn serve` in a subprocess on a fixed port: it can be killed and restarted."""

    def __init__(self, db: Path, port: int, api_key: str, *extra: str) -> None:
        self.db, self.port, self.api_key, self.extra = db, port, api_key, extra
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServeProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seenn", "serve", "--port", str(self.port), "--db",
             str(self.db), "--api-key", self.api_key, *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # bounded: the process prints this line or exits
            if "listening on" in line:
                return self
        raise AssertionError(f"seenn serve did not start: exit {self.proc.wait()}")

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
