"""A small threaded HTTP/1.1 server for WSGI apps, on the standard library.

``wsgiref`` speaks HTTP/1.0 (a new connection per request) and writes headers
and body separately, which with Nagle's algorithm and delayed ACKs costs ~40 ms
per keep-alive request. This gateway keeps connections alive, sets
``TCP_NODELAY``, and writes each response in one ``sendall``.
"""

from __future__ import annotations

import io
import socket
import sys
from collections.abc import Callable
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from seenn._version import __version__

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Any]
_DRAIN_LIMIT = 1024 * 1024


class _Input(io.RawIOBase):
    """``wsgi.input``: reads at most the request's Content-Length."""

    def __init__(self, stream: Any, length: int) -> None:
        self._stream = stream
        self.remaining = length

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self.remaining:
            size = self.remaining
        data: bytes = self._stream.read(size) if size else b""
        self.remaining -= len(data)
        return data


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"seenn/{__version__}"
    # Idle keep-alive connections each hold a thread: let them go after a while.
    timeout = 120
    server: WSGIServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.access_log:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _run(self) -> None:
        try:
            length = max(0, int(self.headers.get("Content-Length") or 0))
        except ValueError:
            length = 0
            self.close_connection = True
        body_input: Any = _Input(self.rfile, length)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self._read_chunked()
            if body is None:
                self.close_connection = True
                body = b""
            length = len(body)
            body_input = _Input(io.BytesIO(body), length)
        path, _, query = self.path.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, encoding="latin-1"),
            "RAW_URI": self.path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(length),
            "SERVER_NAME": self.server.server_address[0],
            "SERVER_PORT": str(self.server.server_address[1]),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": body_input,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                environ[key] = f"{environ[key]},{value}" if key in environ else value
        response: list[Any] = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            response[:] = [status, headers]
            return chunks.append

        result = self.server.app(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = response
        body = b"".join(chunks)
        if body_input.remaining:
            if body_input.remaining <= _DRAIN_LIMIT:
                body_input.read()
            else:
                self.close_connection = True
        lines = [f"HTTP/1.1 {status}", f"Server: {self.server_version}",
                 f"Date: {formatdate(usegmt=True)}"]
        names = {name.lower() for name, _ in headers}
        lines += [f"{name}: {value}" for name, value in headers]
        if "content-length" not in names:
            lines.append(f"Content-Length: {len(body)}")
        if self.close_connection:
            lines.append("Connection: close")
        if self.command == "HEAD" or status.startswith(("204", "304")):
            body = b""
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.log_request(status.split(" ", 1)[0], len(body))

    def _read_chunked(self) -> bytes | None:
        """Decode a chunked body (up to the drain limit); ``None`` if malformed or too big."""
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            if len(body) + size > _DRAIN_LIMIT:
                return None
            body += self.rfile.read(size)
            self.rfile.readline(1024)

    def __getattr__(self, name: str) -> Any:
        # Every method (TRACE, PROPFIND, ...) goes to the app, which answers 405 in
        # JSON, rather than to the standard library's HTML 501 page.
        if name.startswith("do_"):
            return self._run
        raise AttributeError(name)


class WSGIServer(ThreadingHTTPServer):
    """A thread-per-connection HTTP/1.1 server running one WSGI app."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: WSGIApp, *,
                 access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        """The server's base URL."""
        host, port = self.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
