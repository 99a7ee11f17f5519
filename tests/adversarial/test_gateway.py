"""The HTTP gateway of ``seenn serve`` under attack: framing, smuggling, floods, slow clients."""

from __future__ import annotations

import errno
import json
import os
import resource
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import seenn
from seenn._cli.main import main
from seenn.server import WSGIServer
from seenn.server._app import MAX_BODY_BYTES
from tests.adversarial.conftest import (
    Served,
    is_closed,
    read_until_closed,
    responses,
    start_server,
    stop_server,
)

HIDDEN = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
"""A second request hidden in a body: it must never be executed."""


def _exchange(served: Served, data: bytes) -> tuple[bytes, bool]:
    """Send ``data`` and read until the server closes; also say whether it did close."""
    sock = served.connect()
    try:
        sock.sendall(data)
        answer = read_until_closed(sock)
        return answer, is_closed(sock, timeout=0.5)
    finally:
        sock.close()


def _split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """The status, headers (lowercased names) and body of the one response in ``answer``."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def _assert_json_error(answer: bytes, status: int) -> dict[str, Any]:
    """Check that ``answer`` is one JSON error response with ``status``; return its error."""
    assert responses(answer) == [status]
    code, headers, body = _split(answer)
    assert code == status
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error: dict[str, Any] = json.loads(body)["error"]
    assert isinstance(error["code"], str)
    assert isinstance(error["message"], str)
    return error


def _socket_fds(pid: int) -> int:
    """How many sockets the process holds open (its listener included)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except FileNotFoundError:
            pass  # closed between the listing and the look
    return count


def _open_fds(pid: int) -> int:
    """How many file descriptors the process holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of the process so far, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _healthz(served: Served, timeout: float = 10.0) -> int | None:
    """The status of one ``GET /healthz`` on a fresh connection; ``None`` if none came."""
    sock = served.connect(timeout=timeout)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        codes = responses(read_until_closed(sock))
    finally:
        sock.close()
    return codes[0] if codes else None


def _send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; ``False`` once the peer has closed or reset the connection."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


# -- chunked bodies -----------------------------------------------------------------


def test_a_negative_chunk_size_is_refused_at_once(served: Served) -> None:
    """A chunk size of -1 is a 400 and a close while the client still sends; memory stays put."""
    before = served.rss_bytes()
    sock = served.connect()
    try:
        sent = 0
        block = b"x" * 65536
        if _send_quietly(sock, b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n-1\r\n"):
            while sent < 4 * 1024 * 1024 and _send_quietly(sock, block):
                sent += len(block)
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered: stop sending
        answer = read_until_closed(sock)
        closed = is_closed(sock, timeout=0.5)
    finally:
        sock.close()
    assert responses(answer) == [400]
    assert closed
    assert served.rss_bytes() - before < 64 * 1024 * 1024
    assert served.alive()


@pytest.mark.parametrize("size", [b"+0", b"-0", b"0x0", b"0_0", b" 0", b"0 ", b"\t0",
                                  b"00000000000000000000000000000000000000000"])
def test_a_chunk_size_that_is_not_plain_hex_is_refused(served: Served, size: bytes) -> None:
    """A chunk size not of 1-16 plain hex digits is a 400 and a close: nothing after it runs."""
    answer, closed = _exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n"
                                       + size + b"\r\n\r\n" + HIDDEN)
    _assert_json_error(answer, 400)
    assert closed


def test_chunk_lines_need_crlf(served: Served) -> None:
    """A chunk line ended by a bare LF is a 400 and a close: nothing after it runs."""
    answer, closed = _exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n0\n\n" + HIDDEN)
    _assert_json_error(answer, 400)
    assert closed


def test_chunk_data_must_end_with_crlf(served: Served) -> None:
    """Chunk data longer than its size says is a 400 and a close."""
    answer, closed = _exchange(served, b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n"
                                       b"2\r\n{}xx\r\n0\r\n\r\n")
    _assert_json_error(answer, 400)
    assert closed


def test_chunk_extensions_and_trailers_are_accepted(served: Served) -> None:
    """Chunk extensions after ';' and trailer fields are read and ignored."""
    body = json.dumps({"jobType": "t", "userId": "u", "title": "chunked"}).encode()
    sock = served.connect()
    try:
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Authorization: Bearer " + served.secret.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nConnection: close\r\n\r\n"
                     + f"{len(body):x} ; name=value\r\n".encode() + body + b"\r\n"
                     b"0;last\r\nX-Trailer: yes\r\n\r\n")
        answer = read_until_closed(sock)
    finally:
        sock.close()
    status, _, created = _split(answer)
    assert status == 201
    assert json.loads(created)["title"] == "chunked"


def test_an_over_large_chunked_body_is_413(served: Served) -> None:
    """A chunked body over the body cap is answered 413 and closed before all of it is sent."""
    sock = served.connect()
    try:
        sent = 0
        _send_quietly(sock, b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
                            b"Authorization: Bearer " + served.secret.encode() + b"\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        while sent < 8 * 1024 * 1024 and _send_quietly(sock, chunk):
            sent += 0x10000
            if select.select([sock], [], [], 0)[0]:
                break
        answer = read_until_closed(sock)
        closed = is_closed(sock, timeout=0.5)
    finally:
        sock.close()
    error = _assert_json_error(answer, 413)
    assert error == {"code": "PAYLOAD_TOO_LARGE",
                     "message": f"request bodies are limited to {MAX_BODY_BYTES} bytes"}
    assert closed
    assert sent < 8 * 1024 * 1024


def test_a_single_huge_chunk_is_413_before_it_is_read(served: Served) -> None:
    """A chunk whose size alone is over the body cap is answered 413 without waiting for it."""
    answer, closed = _exchange(served, b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\nffffffff\r\n")
    _assert_json_error(answer, 413)
    assert closed


def test_an_over_large_content_length_is_413_before_it_is_read(served: Served) -> None:
    """A Content-Length over the body cap is a 413 on any path, without waiting for the body."""
    answer, closed = _exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                       b"Content-Length: 100000000\r\n\r\n")
    _assert_json_error(answer, 413)
    assert closed


# -- request smuggling --------------------------------------------------------------


@pytest.mark.parametrize(("framing", "padding"), [
    (b"Content-Length: -1\r\n", b""),
    (b"Content-Length: +0\r\n", b""),
    (b"Content-Length: 1_0\r\n", b"0123456789"),
    (b"Content-Length: 0x0\r\n", b""),
    (b"Content-Length: 0\r\nContent-Length: 0\r\n", b""),
    (b"Content-Length: 0\r\nContent-Length: 5\r\n", b""),
    (b"Content-Length: 0, 0\r\n", b""),
    (b"Content-Length: 1234567890123456789012345\r\n", b""),
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding: chunked-false\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"),
    (b"Foo: bar\r\n Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    # A bare CR is no line end (RFC 9112 section 2.2), but the header parser split on it.
    (b"Foo: bar\rContent-Length: %d\r\n" % len(HIDDEN), b""),
    (b"Foo: bar\r\r\nContent-Length: %d\r\n" % len(HIDDEN), b""),
    (b"Foo: bar\r\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
])
def test_invalid_or_conflicting_framing_is_400_and_closed(
        served: Served, framing: bytes, padding: bytes) -> None:
    """Invalid or conflicting framing gets one 400 and a close, never a second response."""
    answer, closed = _exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + framing
                               + b"\r\n" + padding + HIDDEN)
    _assert_json_error(answer, 400)
    assert closed


@pytest.mark.parametrize("coding", [b"identity, chunked", b"gzip, chunked", b"x, chunked"])
def test_unknown_transfer_codings_are_501_and_closed(served: Served, coding: bytes) -> None:
    """A transfer coding other than chunked, ahead of a final chunked, is a 501 and a close."""
    answer, closed = _exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                       b"Transfer-Encoding: " + coding + b"\r\n\r\n0\r\n\r\n"
                                       + HIDDEN)
    assert _assert_json_error(answer, 501)["code"] == "NOT_IMPLEMENTED"
    assert closed


def test_transfer_encoding_in_http_1_0_is_400_and_closed(served: Served) -> None:
    """An HTTP/1.0 request with Transfer-Encoding has faulty framing: a 400 and a close."""
    answer, closed = _exchange(served, b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + HIDDEN)
    _assert_json_error(answer, 400)
    assert closed


def test_plain_content_length_bodies_keep_the_connection(served: Served) -> None:
    """A request with a valid Content-Length body leaves the connection open for the next one."""
    sock = served.connect()
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                     b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = read_until_closed(sock)
    finally:
        sock.close()
    assert responses(answer) == [200, 200]


# -- errors the standard library would write as HTML --------------------------------


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n", 431),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTX/1.1\r\nHost: x\r\n\r\n", 400),
    (b"POST /\r\n\r\n", 400),
])
def test_protocol_errors_answer_in_json(served: Served, request_bytes: bytes, status: int) -> None:
    """Errors in the request line and headers answer in the JSON error shape, and close."""
    answer, closed = _exchange(served, request_bytes)
    _assert_json_error(answer, status)
    assert closed


def test_protocol_errors_do_not_echo_the_request(served: Served) -> None:
    """A malformed request line with a key in it is refused without echoing the key."""
    answer, _ = _exchange(served, b"GET /?key=" + served.secret.encode()
                                  + b" HTTP/1.1 x\r\nHost: x\r\n\r\n")
    _assert_json_error(answer, 400)
    assert served.secret.encode() not in answer


# -- slow clients, idle clients, floods -----------------------------------------------


def _drip(sock: socket.socket, first: bytes, byte: bytes) -> tuple[bytes, bool]:
    """Send ``first``, then ``byte`` after ``byte`` until the server answers or closes (10 s).

    Returns what the server answered and whether it closed the connection.
    """
    answer = b""
    closed = False
    deadline = time.monotonic() + 10
    try:
        sock.sendall(first)
        while not closed and time.monotonic() < deadline:
            if not _send_quietly(sock, byte):
                closed = True
            elif select.select([sock], [], [], 0.2)[0]:
                answer = read_until_closed(sock)
                closed = is_closed(sock, timeout=0.5)
    finally:
        sock.close()
    return answer, closed


def test_a_client_dripping_its_headers_is_cut_off(tmp_path: Path) -> None:
    """A client that sends one header byte at a time is disconnected at the header deadline."""
    served = start_server(tmp_path, "--header-timeout", "1")
    try:
        answer, closed = _drip(served.connect(), b"GET /healthz HTTP/1.1\r\n", b"X")
        assert closed
        assert responses(answer) == [408]
        assert _healthz(served) == 200
    finally:
        stop_server(served)


def test_an_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    """A kept-alive connection that sends nothing more is closed after the idle timeout."""
    served = start_server(tmp_path, "--idle-timeout", "1")
    try:
        sock = served.connect()
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = sock.recv(65536)
            assert responses(first) == [200]
            assert is_closed(sock, timeout=10)
        finally:
            sock.close()
    finally:
        stop_server(served)


def test_idle_connections_beyond_the_cap_do_not_lock_out_a_client(tmp_path: Path) -> None:
    """Beyond --max-connections idle connections, the server holds the cap and still answers."""
    served = start_server(tmp_path, "--max-connections", "20")
    idle: list[socket.socket] = []
    try:
        pid = served.process.pid
        most = 0
        for _ in range(40):
            idle.append(served.connect())
            most = max(most, _socket_fds(pid))
        status = _healthz(served)
        most = max(most, _socket_fds(pid))
        assert status == 200
        assert most <= 20 + 1  # the cap, plus the listening socket
        assert served.alive()
    finally:
        for sock in idle:
            sock.close()
        stop_server(served)


def test_a_full_server_serves_a_waiting_client_once_a_slot_frees(tmp_path: Path) -> None:
    """With every slot taken by a slow request, a client waits for a header deadline to free one."""
    served = start_server(tmp_path, "--max-connections", "5", "--header-timeout", "2")
    slow: list[socket.socket] = []
    try:
        pid = served.process.pid
        for _ in range(5):
            sock = served.connect()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            slow.append(sock)
        deadline = time.monotonic() + 10
        while _socket_fds(pid) < 6 and time.monotonic() < deadline:
            select.select([], [], [], 0.02)  # bounded poll until all five are accepted
        fresh = served.connect()
        try:
            fresh.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            most = _socket_fds(pid)
            deadline = time.monotonic() + 10
            while not select.select([fresh], [], [], 0.05)[0] and time.monotonic() < deadline:
                most = max(most, _socket_fds(pid))  # sampled while the client waits
            most = max(most, _socket_fds(pid))
            answer = fresh.recv(65536)
        finally:
            fresh.close()
        assert responses(answer) == [200]
        assert most <= 5 + 1  # the cap, plus the listening socket
        for sock in slow:
            assert responses(read_until_closed(sock)) == [408]
    finally:
        for sock in slow:
            sock.close()
        stop_server(served)


def test_running_out_of_file_descriptors_does_not_spin(tmp_path: Path) -> None:
    """When accept fails for want of file descriptors the server waits, not spins, and recovers."""
    served = start_server(tmp_path, "--header-timeout", "60")
    held: list[socket.socket] = []
    try:
        pid = served.process.pid
        limit = _open_fds(pid) + 24
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
        # Slow requests, not idle connections: the server may not drop them to make room.
        # Four more than it can accept wait in the backlog and keep the listener readable.
        for _ in range(28):
            sock = served.connect()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            held.append(sock)
        deadline = time.monotonic() + 10
        while _open_fds(pid) < limit and time.monotonic() < deadline:
            select.select([], [], [], 0.02)  # bounded poll until the descriptors run out
        assert _open_fds(pid) >= limit
        before = _cpu_seconds(pid)
        threading.Event().wait(2.0)  # a measurement window, not synchronisation
        spent = _cpu_seconds(pid) - before
        assert spent < 0.5, f"the server used {spent:.2f} s of CPU in 2 s while out of fds"
        for sock in held:
            sock.close()
        held.clear()
        assert _healthz(served) == 200
        assert served.alive()
    finally:
        for sock in held:
            sock.close()
        stop_server(served)


def test_out_of_file_descriptors_idle_connections_make_room(tmp_path: Path) -> None:
    """When idle connections use up the file descriptors, one is closed to serve a new client."""
    served = start_server(tmp_path)
    idle: list[socket.socket] = []
    try:
        pid = served.process.pid
        limit = _open_fds(pid) + 24
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
        for _ in range(26):
            idle.append(served.connect())
        deadline = time.monotonic() + 10
        while _open_fds(pid) < limit and time.monotonic() < deadline:
            select.select([], [], [], 0.02)  # bounded poll until the descriptors run out
        assert _open_fds(pid) >= limit
        assert _healthz(served) == 200
        assert served.alive()
    finally:
        for sock in idle:
            sock.close()
        stop_server(served)


def test_the_listen_backlog_holds_sixty_simultaneous_connects(served: Served) -> None:
    """Sixty connects made while the server cannot accept all complete: the backlog is >= 128."""
    pending: list[socket.socket] = []
    os.kill(served.process.pid, signal.SIGSTOP)
    try:
        for _ in range(60):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            assert sock.connect_ex((served.host, served.port)) in (0, errno.EINPROGRESS)
            pending.append(sock)
        waiting = list(pending)
        deadline = time.monotonic() + 5
        while waiting and time.monotonic() < deadline:
            _, done, _ = select.select([], waiting, [], deadline - time.monotonic())
            for sock in done:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                waiting.remove(sock)
        assert len(pending) - len(waiting) == 60
    finally:
        os.kill(served.process.pid, signal.SIGCONT)
        for sock in pending:
            sock.close()
    assert _healthz(served) == 200


def test_expect_100_continue_comes_only_for_an_acceptable_body(served: Served) -> None:
    """A client waiting for 100 Continue gets it for a body within the cap, a 413 for one over."""
    body = json.dumps({"jobType": "t", "userId": "u", "title": "continued"}).encode()
    head = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Authorization: Bearer " + served.secret.encode() + b"\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n")
    sock = served.connect()
    try:
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body))
        interim = sock.recv(65536)
        sock.sendall(body)
        answer = read_until_closed(sock)
    finally:
        sock.close()
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert responses(answer) == [201]
    refused, closed = _exchange(served, head + b"Content-Length: %d\r\n\r\n"
                                % (MAX_BODY_BYTES + 1))
    _assert_json_error(refused, 413)
    assert closed


@pytest.fixture
def echo_server() -> Iterator[WSGIServer]:
    """An in-process gateway with a one-second body timeout around an app that echoes the body."""

    def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body: bytes = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    server = WSGIServer(("127.0.0.1", 0), echo, body_timeout=1.0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_body_dripped_slower_than_the_body_timeout_is_cut_off(echo_server: WSGIServer) -> None:
    """A client that sends its body a byte at a time gets a 408 at the body deadline and a close."""
    sock = socket.create_connection(("127.0.0.1", echo_server.server_address[1]), timeout=10)
    answer, closed = _drip(
        sock, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", b"x")
    assert closed
    assert responses(answer) == [408]


def test_the_gateway_reads_a_body_in_time(echo_server: WSGIServer) -> None:
    """A body sent promptly reaches the app whole, and the connection stays open."""
    sock = socket.create_connection(("127.0.0.1", echo_server.server_address[1]), timeout=10)
    try:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                     b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        answer = read_until_closed(sock)
    finally:
        sock.close()
    assert responses(answer) == [200, 200]
    assert answer.count(b"\r\n\r\nhello") == 1
    assert answer.endswith(b"\r\n\r\nabc")


def test_server_close_ends_kept_alive_connections(tmp_path: Path) -> None:
    """Once running() has stopped, a kept-alive connection is closed, not served on."""
    with seenn.server.running(tmp_path / "closing.db") as backend:
        sock = socket.create_connection(("127.0.0.1", backend.server.server_address[1]),
                                        timeout=10)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert responses(sock.recv(65536)) == [200]
        except BaseException:
            sock.close()
            raise
    try:
        assert is_closed(sock, timeout=10)  # not at the 30 s idle timeout
    finally:
        sock.close()


def test_the_access_log_escapes_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    """A request line cannot put terminal escapes or a carriage return into the access log."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    server = WSGIServer(("127.0.0.1", 0), app, access_log=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        for request in (b"GET /\x1b[2J HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        b"GET /a\rforged HTTP/1.1 x\r\nHost: x\r\n\r\n"):
            sock = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10)
            try:
                sock.sendall(request)
                read_until_closed(sock)  # the line is logged before the connection closes
            finally:
                sock.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    logged = capsys.readouterr().err
    assert "\x1b" not in logged
    assert "\r" not in logged
    assert "GET /\\x1b[2J HTTP/1.1" in logged


@pytest.mark.parametrize(("option", "value"), [
    ("max_connections", 0), ("max_connections", 2.5), ("header_timeout", 0),
    ("header_timeout", float("nan")), ("idle_timeout", -1.0), ("body_timeout", float("inf")),
    ("body_timeout", True), ("max_body_bytes", -1),
])
def test_gateway_options_out_of_range_are_refused(option: str, value: object) -> None:
    """An out-of-range gateway option raises ValidationError naming it, before anything listens."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        raise AssertionError("never called")

    with pytest.raises(seenn.ValidationError) as caught:
        WSGIServer(("127.0.0.1", 0), app, **{option: value})  # type: ignore[arg-type]
    assert caught.value.field == option


@pytest.mark.parametrize("flag", ["--max-connections", "--header-timeout", "--idle-timeout"])
@pytest.mark.parametrize("value", ["0", "-3", "nan", "many"])
def test_serve_refuses_a_bad_limit(flag: str, value: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """seenn serve with a limit that is not a positive number is a usage error naming the flag."""
    with pytest.raises(SystemExit) as caught:
        main(["serve", flag, value])
    assert caught.value.code == 2
    assert flag in capsys.readouterr().err
