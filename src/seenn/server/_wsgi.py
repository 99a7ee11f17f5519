"""A small threaded HTTP/1.1 server for WSGI apps, on the standard library.

``wsgiref`` speaks HTTP/1.0 (a new connection per request) and writes headers
and body separately, which with Nagle's algorithm and delayed ACKs costs ~40 ms
per keep-alive request. This gateway keeps connections alive, sets
``TCP_NODELAY``, and writes each response in one ``sendall``.

It faces the internet, so it is strict where a lenient server could be abused:

* Framing follows RFC 9112 to the letter. ``Content-Length`` is digits only and
  given once; ``Transfer-Encoding`` may only end in ``chunked``; a request with
  both, a malformed header section or a malformed chunk is answered ``400`` and
  the connection is closed, so nothing left in the stream is read as a second
  request (request smuggling). Bodies, chunked or not, are capped (``413``).
* Time is bounded: a request line and headers must arrive within
  ``header_timeout`` in total (a client dripping a byte at a time does not reset
  it), a kept-alive connection waits ``idle_timeout`` for its next request, and a
  body must arrive, and an answer be taken, within ``body_timeout``.
* At most ``max_connections`` connections are served at once. Beyond that the
  server stops accepting (clients wait in the listen backlog) and closes a
  kept-alive connection that is only waiting, to make room. When ``accept`` fails
  for want of file descriptors it waits for one to be freed, with a growing
  timeout, instead of retrying in a loop.
* Every error it answers itself is in the JSON error shape of the app.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import unquote

from seenn._core.validation import check_int, fail
from seenn._version import __version__
from seenn.server._streams import DeadlineReader, HeaderLines, TimedWriter

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Any]

logger = logging.getLogger("seenn.server")

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_BODY_TIMEOUT = 30.0
_DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # for an app that does not state its own cap
_MAX_REQUEST_LINE = 16 * 1024
_MAX_HEADER_BYTES = 64 * 1024
_MAX_CHUNK_LINE = 1024
_MAX_TRAILER_BYTES = 16 * 1024
# After an error answer, what the client still sends is read and dropped for a moment:
# closing a socket with unread input makes the kernel send a reset, which can destroy
# the answer before the client has read it.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 4 * 1024 * 1024
_MAX_ACCEPT_BACKOFF = 1.0
_ACCEPT_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_WARN_INTERVAL = 60.0

_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
# chunk-size [ BWS ";" chunk-ext ] CRLF, the size in plain hex and of bounded length.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\r\n]*)?\r\n")
_BAD_FIELD_VALUE = re.compile(r"[\r\n\x00]")

_ERRORS = {
    400: ("INVALID_REQUEST", "malformed request"),
    408: ("REQUEST_TIMEOUT", "the request did not arrive in time"),
    413: ("PAYLOAD_TOO_LARGE", "the request body is too large"),
    414: ("URI_TOO_LONG", f"the request line is longer than {_MAX_REQUEST_LINE} bytes"),
    431: ("HEADERS_TOO_LARGE", "the request header section is too large"),
    501: ("NOT_IMPLEMENTED", "not implemented"),
    505: ("HTTP_VERSION_NOT_SUPPORTED", "only HTTP/1.0 and HTTP/1.1 are spoken here"),
}


def _seconds(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        fail(field, f"must be a positive, finite number of seconds, got {value!r}")
    return float(value)


class _Slot:
    """One open connection as the accept loop sees it."""

    __slots__ = ("evicted", "idle_since", "opened", "sock")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.opened = now
        self.idle_since: float | None = now  # waiting for a request's first byte
        self.evicted = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"seenn/{__version__}"
    server: WSGIServer

    def setup(self) -> None:
        self.connection = self.request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = DeadlineReader(self.connection)
        self._buffered = io.BufferedReader(self._reader)
        self.rfile = self._buffered
        self.wfile = TimedWriter(self.connection, self.server.body_timeout)
        self.requestline, self.command = "", ""
        self._answered = self._expect_continue = self._linger = False

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.access_log:
            # Escaped as the standard library does: the request line is the client's text.
            message = (format % args).translate(self._control_char_table)
            sys.stderr.write(f"{self.address_string()} - {message}\n")

    def handle(self) -> None:
        server, slot = self.server, self.server._slot(self.request)
        self.close_connection = True
        # The first request has header_timeout from the connect to its last header line;
        # a later one waits up to idle_timeout for its first byte, then has header_timeout.
        wait_until = slot.opened + server.header_timeout
        header_deadline: float | None = wait_until
        try:
            while True:
                if not server._set_idle(slot, True):
                    return  # closed by the server (to make room, or server_close())
                self._reader.deadline = wait_until
                try:
                    arrived = bool(self._buffered.peek(1))
                except OSError:
                    arrived = False
                if not server._set_idle(slot, False) or not arrived:
                    return  # closed, timed out, or closed by the server to make room
                self._reader.deadline = header_deadline or time.monotonic() + server.header_timeout
                self.handle_one_request()
                if self.close_connection:
                    return
                wait_until, header_deadline = time.monotonic() + server.idle_timeout, None
        except OSError:
            return  # the client went away or stopped reading: nobody to answer
        finally:
            if self._linger:
                self._drain()

    def handle_one_request(self) -> None:
        self._answered = self._expect_continue = False
        try:
            line = self.rfile.readline(_MAX_REQUEST_LINE + 1)
            if len(line) > _MAX_REQUEST_LINE:
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not line.endswith(b"\n"):
                self.close_connection = True  # the client closed in the middle of a line
                return
            self.raw_requestline = line
            rfile, lines = self.rfile, HeaderLines(self.rfile, _MAX_HEADER_BYTES)
            self.rfile = cast(Any, lines)
            try:
                parsed = self.parse_request()
            finally:
                self.rfile = rfile
            if not parsed:
                return
            if lines.truncated:
                self.close_connection = True
                return
            if lines.bare_cr:
                self._refuse(400, "malformed header section")
                return
            self._run()
        except TimeoutError:
            self.close_connection = True
            if self._reader.expired and not self._answered:
                self._refuse(408, _ERRORS[408][1])

    def handle_expect_100(self) -> bool:
        # 100 Continue waits until the framing is known to be acceptable (_start_body):
        # a client about to send a body that will be refused is told so instead.
        self._expect_continue = True
        return True

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """Answer a protocol error in the JSON error shape and close the connection.

        The standard library's message is not used: it can quote the request line,
        and with it whatever the client put there.
        """
        self._refuse(int(code), _ERRORS.get(int(code), _ERRORS[400])[1])

    def _refuse(self, status: int, message: str) -> None:
        """Send a JSON error answer and close the connection afterwards."""
        code = _ERRORS.get(status, _ERRORS[400])[0]
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
                f"Server: {self.server_version}", f"Date: {formatdate(usegmt=True)}",
                "Content-Type: application/json", f"Content-Length: {len(body)}",
                "Connection: close"]
        self.close_connection = self._linger = self._answered = True
        if self.command == "HEAD":
            body = b""
        self.log_request(status, len(body))
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    def _drain(self) -> None:
        """Read and drop what the client still sends, for a moment, then let it close."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self._reader.deadline = time.monotonic() + _LINGER_SECONDS
            left = _LINGER_BYTES
            while left > 0:
                data = self.rfile.read1(min(left, 65536))
                if not data:
                    break
                left -= len(data)
        except OSError:
            pass

    def _start_body(self) -> None:
        """Give the body its own deadline, and send 100 Continue if the client waits for it."""
        self._reader.deadline = time.monotonic() + self.server.body_timeout
        if self._expect_continue:
            self._expect_continue = False
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _http11(self) -> bool:
        major, _, minor = self.request_version.partition("/")[2].partition(".")
        return (int(major), int(minor)) >= (1, 1)

    def _read_body(self) -> bytes | None:
        """The whole request body, or ``None`` once an error answer has been sent.

        When a proxy in front and this server disagree about where a body ends, a
        client can hide a second request in the first (request smuggling), so any
        framing that RFC 9112 section 6 does not allow is refused and the connection
        closed rather than guessed at.
        """
        headers = self.headers
        if headers.defects or any(_BAD_FIELD_VALUE.search(str(value))
                                  for value in headers.values()):
            self._refuse(400, "malformed header section")
            return None
        codings = headers.get_all("Transfer-Encoding")
        lengths = headers.get_all("Content-Length")
        limit = self.server.max_body_bytes
        if codings is not None:
            names = [name.strip(" \t").lower() for name in ",".join(codings).split(",")]
            if lengths is not None:
                self._refuse(400, "a request may not have both Content-Length and "
                                  "Transfer-Encoding")
            elif not self._http11():
                self._refuse(400, "Transfer-Encoding needs HTTP/1.1")
            elif names[-1] != "chunked" or names.count("chunked") > 1:
                self._refuse(400, "chunked must be the last transfer coding, given once")
            elif len(names) > 1:
                self._refuse(501, "chunked is the only transfer coding supported")
            else:
                self._start_body()
                return self._read_chunked(limit)
            return None
        if lengths is None:
            return b""
        if len(lengths) > 1 or not _CONTENT_LENGTH.fullmatch(str(lengths[0]).strip(" \t")):
            self._refuse(400, "Content-Length must be given once, as a decimal number")
            return None
        length = int(str(lengths[0]))
        if length > limit:
            self._refuse(413, f"request bodies are limited to {limit} bytes")
            return None
        if length:
            self._start_body()
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True  # the client closed before the end of its body
            return None
        return body

    def _read_chunked(self, limit: int) -> bytes | None:
        """Decode a chunked body of at most ``limit`` bytes; ``None`` once refused."""
        body = bytearray()
        while True:
            match = _CHUNK_LINE.fullmatch(self.rfile.readline(_MAX_CHUNK_LINE + 1))
            if match is None:
                self._refuse(400, "malformed chunk size line")
                return None
            size = int(match[1], 16)
            if size == 0:
                break
            if len(body) + size > limit:
                self._refuse(413, f"request bodies are limited to {limit} bytes")
                return None
            data = self.rfile.read(size + 2)
            if data[size:] != b"\r\n":
                self._refuse(400, "chunk data does not end where its size says")
                return None
            body += data[:size]
        left = _MAX_TRAILER_BYTES  # trailer fields: read, bounded, and dropped
        while True:
            line = self.rfile.readline(left + 1)
            left -= len(line)
            if line == b"\r\n":
                return bytes(body)
            if left < 0 or not line.endswith(b"\r\n"):
                self._refuse(400, "malformed trailer section")
                return None

    def _run(self) -> None:
        body = self._read_body()
        if body is None:
            return
        path, _, query = self.path.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, encoding="latin-1"),
            "RAW_URI": self.path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "SERVER_NAME": self.server.server_address[0],
            "SERVER_PORT": str(self.server.server_address[1]),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
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
        payload = b"".join(chunks)
        lines = [f"HTTP/1.1 {status}", f"Server: {self.server_version}",
                 f"Date: {formatdate(usegmt=True)}"]
        names = {name.lower() for name, _ in headers}
        lines += [f"{name}: {value}" for name, value in headers]
        if "content-length" not in names:
            lines.append(f"Content-Length: {len(payload)}")
        if self.close_connection:
            lines.append("Connection: close")
        if self.command == "HEAD" or status.startswith(("204", "304")):
            payload = b""
        self._answered = True
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        self.log_request(status.split(" ", 1)[0], len(payload))

    def __getattr__(self, name: str) -> Any:
        # Every method (TRACE, PROPFIND, ...) goes to the app, which answers 405 in
        # JSON, rather than to the standard library's HTML 501 page.
        if name.startswith("do_"):
            return self._run
        raise AttributeError(name)


class WSGIServer(ThreadingHTTPServer):
    """A thread-per-connection HTTP/1.1 server running one WSGI app.

    Args:
        address: The ``(host, port)`` to listen on; port 0 picks a free one.
        app: The WSGI application.
        access_log: Log one line per request to stderr.
        max_connections: Connections served at once. Beyond it the server stops
            accepting, so new clients wait in the listen backlog, and closes a
            kept-alive connection that is only waiting for its next request to
            make room for one of them.
        header_timeout: Seconds a client has to send a request line and its
            headers, in total (from the connect for a connection's first request).
        idle_timeout: Seconds a kept-alive connection may wait for its next request.
        body_timeout: Seconds a client has to send a request body, and to take
            an answer.
        max_body_bytes: Larger request bodies, chunked or not, are answered 413
            without being read. Defaults to the app's ``max_body_bytes`` attribute
            when it has one (as :class:`SeennServerApp` does), else 1 MiB.
        sock: A socket already bound and listening, to serve instead of binding
            ``address`` (``address`` is then ignored). Several processes may serve
            one such socket (``seenn serve --workers``); it is made non-blocking, so
            a process that loses the race for a connection does not wait in
            ``accept`` for the next one.

    Raises:
        seenn.ValidationError: An option is out of range; the error names it.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the kernel caps it at net.core.somaxconn

    def __init__(self, address: tuple[str, int], app: WSGIApp, *,
                 access_log: bool = False,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 body_timeout: float = DEFAULT_BODY_TIMEOUT,
                 max_body_bytes: int | None = None,
                 sock: socket.socket | None = None) -> None:
        self.max_connections = check_int("max_connections", max_connections, minimum=1)
        self.header_timeout = _seconds("header_timeout", header_timeout)
        self.idle_timeout = _seconds("idle_timeout", idle_timeout)
        self.body_timeout = _seconds("body_timeout", body_timeout)
        self._max_body_bytes = None if max_body_bytes is None else check_int(
            "max_body_bytes", max_body_bytes, minimum=0)
        self.app = app
        self.access_log = access_log
        self._lock = threading.Lock()
        self._slots: dict[socket.socket, _Slot] = {}
        self._changed = threading.Event()  # a connection closed, or shutdown() was called
        self._stop = False
        self._stopped = threading.Event()
        self._stopped.set()
        self._backoff = 0.0
        self._resume_at = 0.0
        self._warned_at = -math.inf
        self._shared = sock is not None
        if sock is None:
            super().__init__(address, _Handler)
            return
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()
        # The flag belongs to the open file, shared by every process serving it.
        sock.setblocking(False)

    @property
    def url(self) -> str:
        """The server's base URL."""
        host, port = self.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read; larger ones are answered 413."""
        if self._max_body_bytes is not None:
            return self._max_body_bytes
        # Read at each request: the app may be set after the server is made.
        limit = getattr(self.app, "max_body_bytes", None)
        return limit if isinstance(limit, int) else _DEFAULT_MAX_BODY_BYTES

    @property
    def connections(self) -> int:
        """How many connections are open now."""
        with self._lock:
            return len(self._slots)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept and serve connections until :meth:`shutdown` is called.

        Args:
            poll_interval: The longest the loop sleeps before it looks again at
                a pending shutdown or a full server.
        """
        self._stopped.clear()
        # The app's background work (seenn serve's sweep for silent jobs) runs while
        # it is served; any app may offer it.
        start = getattr(self.app, "start_sweeper", None)
        if callable(start):
            start()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                while not self._stop:
                    self._changed.clear()
                    with self._lock:
                        full = len(self._slots) >= self.max_connections
                    wait = self._resume_at - time.monotonic()
                    if not full and wait <= 0:
                        if selector.select(poll_interval) and not self._stop:
                            self._accept()
                        self.service_actions()
                        continue
                    # Full, or out of file descriptors: make room only for a client
                    # that is waiting, then wait for a connection to close (or the
                    # backoff to pass) rather than try accept() again at once.
                    if selector.select(0):
                        self._evict_idle()
                    self._changed.wait(min(wait, poll_interval) if wait > 0 else poll_interval)
        finally:
            self._stop = False
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait until it has returned."""
        self._stop = True
        self._changed.set()
        self._stopped.wait()

    def server_close(self) -> None:
        """Stop listening, and end the open connections.

        A connection waiting for its next request is closed now; one in the middle of
        a request is closed once its answer is sent. Neither is waited for. The app's
        background sweep, if it has one, is stopped.
        """
        super().server_close()
        stop = getattr(self.app, "stop_sweeper", None)
        if callable(stop):
            stop()
        with self._lock:
            for slot in self._slots.values():
                slot.evicted = True
                if slot.idle_since is not None:
                    with contextlib.suppress(OSError):
                        slot.sock.shutdown(socket.SHUT_RDWR)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            request, address = self.socket.accept()
        except OSError as error:
            if error.errno in _ACCEPT_ERRORS:
                # Retrying at once would spin: the listener stays readable.
                self._backoff = min(_MAX_ACCEPT_BACKOFF, max(0.01, 2 * self._backoff))
                self._resume_at = time.monotonic() + self._backoff
                now = time.monotonic()
                if now - self._warned_at >= _WARN_INTERVAL:
                    self._warned_at = now
                    logger.warning("seenn serve: cannot accept connections (%s, %d open); "
                                   "raise the file descriptor limit or lower "
                                   "--max-connections", error.strerror, self.connections)
            raise
        self._backoff = 0.0
        if self._shared:
            # Some systems (the BSDs, macOS) give an accepted socket the listener's
            # non-blocking flag; the handler expects a blocking one.
            request.setblocking(True)
        return request, address

    def _accept(self) -> None:
        try:
            request, address = self.get_request()
        except OSError:
            return
        try:
            self.process_request(request, address)
        except Exception:
            self.handle_error(request, address)
            self.shutdown_request(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._slots[request] = _Slot(request, time.monotonic())
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away: nothing worth a traceback
        logger.exception("seenn serve: error while serving %s", client_address[0])

    def _slot(self, request: socket.socket) -> _Slot:
        with self._lock:
            return self._slots[request]

    def _set_idle(self, slot: _Slot, idle: bool) -> bool:
        """Mark a connection as waiting for a request or not; ``False`` if it was closed."""
        with self._lock:
            slot.idle_since = time.monotonic() if idle else None
            return not slot.evicted

    def _evict_idle(self) -> None:
        """Close the connection that has waited longest for its next request, if any."""
        with self._lock:
            slots = self._slots.values()
            if any(slot.evicted for slot in slots):
                return  # room is being made already
            idle = [slot for slot in slots if slot.idle_since is not None]
            if not idle:
                return
            slot = min(idle, key=lambda slot: cast(float, slot.idle_since))
            slot.evicted = True
            # Wakes the handler's pending read with end-of-file; it closes the socket.
            with contextlib.suppress(OSError):
                slot.sock.shutdown(socket.SHUT_RDWR)

    def _release(self, request: Any) -> None:
        with self._lock:
            self._slots.pop(request, None)
            self._resume_at = 0.0  # a descriptor was freed: accept() may work again
        self._changed.set()
