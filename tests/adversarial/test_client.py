"""The REST client against bad options, bad keys, bad text and hostile answers."""

from __future__ import annotations

import gzip
import json
import logging
import math
import socket
import threading
import traceback
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

import seenn
from seenn.exporters import HTTPExporter
from tests.server import RecordingServer

SECRET = "sk_test_adversarialclientkey000000000"
LONE = "caf\udce9"  # a lone surrogate, as os.fsdecode() makes of a non-UTF-8 file name
MiB = 1024 * 1024
CAP = 8 * MiB


class RawServer:
    """A one-answer-per-connection stdlib socket server that counts the bytes it sent.

    ``answer(sock)`` writes the response; it stops when the client goes away.
    """

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self._answer = answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.sent = 0
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with conn:
            # A small send buffer keeps what the kernel holds for the client small.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            try:
                self._answer(conn)
            except OSError:
                pass  # the client closed the connection: that is the point
            finally:
                self.finished.set()

    def send(self, conn: socket.socket, data: bytes) -> None:
        """Send ``data``, counting it."""
        conn.sendall(data)
        self.sent += len(data)

    def close(self) -> None:
        """Stop listening."""
        self._listener.close()


@pytest.fixture
def raw() -> Iterator[Callable[[Callable[[RawServer, socket.socket], None]], RawServer]]:
    """Start RawServers answering with a given function; close them after the test."""
    servers: list[RawServer] = []

    def start(answer: Callable[[RawServer, socket.socket], None]) -> RawServer:
        holder: list[RawServer] = []
        server = RawServer(lambda conn: answer(holder[0], conn))
        holder.append(server)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _client(url: str) -> seenn.SeennClient:
    return seenn.SeennClient(SECRET, base_url=url, max_retries=0)


def _stream(total: int, status: bytes = b"200 OK",
            content_type: bytes = b"application/json") -> Callable[[RawServer, socket.socket],
                                                                   None]:
    def answer(server: RawServer, conn: socket.socket) -> None:
        server.send(conn, b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type
                    + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"[" + b"1," * 32767 + b"1"
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        while server.sent < total:
            server.send(conn, frame)
        server.send(conn, b"0\r\n\r\n")

    return answer


# Options ---------------------------------------------------------------------------

@pytest.mark.parametrize("base_url", [
    "http://[::1", 123, "http://h:abc", "http://h:99999", " http://h", "http://h ",
    "http://h\n", "http://exa mple.com", "http://h/?q=1", "http://h/#top",
    "http://user:pw@h", "http://" + LONE, "http://", b"http://h",
])
def test_malformed_base_url_is_a_validation_error(base_url: object) -> None:
    """A base_url that is not a plain http(s) URL raises ValidationError naming base_url."""
    with pytest.raises(seenn.ValidationError) as caught:
        seenn.SeennClient(SECRET, base_url=base_url)  # type: ignore[arg-type]
    assert caught.value.field == "base_url"


@pytest.mark.parametrize("base_url", [
    "ftp://user:hunter2@h", "http://user:hunter2@h\n", "http://user:hunter2@h:abc",
    "user:hunter2@h", "http://user:hunter2@[::1",
])
def test_a_malformed_base_url_never_shows_its_password(base_url: str) -> None:
    """Whatever is wrong with a base_url holding user:password@, the error leaves them out."""
    with pytest.raises(seenn.ValidationError) as caught:
        seenn.SeennClient(SECRET, base_url=base_url)
    assert caught.value.field == "base_url"
    assert "hunter2" not in str(caught.value) and "user" not in str(caught.value)


@pytest.mark.parametrize("base_path", [123, "/v1 ", "/v1?x=1", "/v\n1", "/" + LONE])
def test_malformed_base_path_is_a_validation_error(base_path: object) -> None:
    """A base_path that cannot prefix a URL path raises ValidationError naming base_path."""
    with pytest.raises(seenn.ValidationError) as caught:
        seenn.SeennClient(SECRET, base_url="http://127.0.0.1:1",
                          base_path=base_path)  # type: ignore[arg-type]
    assert caught.value.field == "base_path"


@pytest.mark.parametrize(("option", "value"), [
    ("timeout", math.nan), ("timeout", math.inf), ("timeout", -1.0),
    ("deadline", math.nan), ("deadline", math.inf), ("deadline", -5),
])
def test_non_finite_or_negative_waits_are_validation_errors(option: str, value: float) -> None:
    """timeout and deadline must be finite and positive (None is the deadline's no-limit)."""
    with pytest.raises(seenn.ValidationError) as caught:
        seenn.SeennClient(SECRET, base_url="http://127.0.0.1:1",
                          **{option: value})  # type: ignore[arg-type]
    assert caught.value.field == option


# Keys ------------------------------------------------------------------------------

BAD_KEYS = ["sk_test_abc\nX-Injected: 1", "sk_test_abc\r\n", "sk_test_a b", "sk_test_\x00z",
            "sk_test_clé", "sk_test_" + LONE, "sk_test_" + "a" * 3000]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_malformed_key_is_refused_without_echoing_it(key: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A key that cannot be a Bearer token is a ValidationError on api_key that never shows it."""
    with pytest.raises(seenn.ValidationError) as caught:
        seenn.SeennClient(key, base_url="http://127.0.0.1:1")
    assert caught.value.field == "api_key"
    text = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    assert key not in text
    assert key.strip() not in text
    if "\x00" not in key and LONE not in key:  # the environment cannot hold these
        monkeypatch.setenv("SEENN_API_KEY", key)
        with pytest.raises(seenn.ValidationError) as caught:
            seenn.AsyncSeennClient(base_url="http://127.0.0.1:1")
        assert caught.value.field == "api_key"
        assert key not in str(caught.value)


def test_exporter_refuses_a_malformed_key_without_logging_it(
        caplog: pytest.LogCaptureFixture) -> None:
    """HTTPExporter with a key holding a newline raises ValidationError and logs no key."""
    key = "sk_test_secretpart\nmore"
    with caplog.at_level(logging.DEBUG), pytest.raises(seenn.ValidationError) as caught:
        HTTPExporter(api_key=key, base_url="http://127.0.0.1:1")
    assert caught.value.field == "api_key"
    assert "secretpart" not in str(caught.value)
    assert all("secretpart" not in record.getMessage() for record in caplog.records)


def test_user_tokens_are_accepted_as_keys_and_never_shown() -> None:
    """A user token (ut_...) is a valid key, for Seenn Cloud too, and its repr hides it."""
    token = "ut_dXNlcl8xMjM.1767225600.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    for url in ("http://127.0.0.1:1", "https://api.seenn.io"):
        with seenn.SeennClient(token, base_url=url) as client:
            assert token not in repr(client)
            assert "ut_" in repr(client)


# Text ------------------------------------------------------------------------------

CALLS: list[tuple[Callable[[seenn.SeennClient], object], str]] = [
    (lambda c: c.jobs.start("render", user_id="u", title=LONE), "title"),
    (lambda c: c.jobs.start(LONE, user_id="u", title="t"), "job_type"),
    (lambda c: c.jobs.start("render", user_id=LONE, title="t"), "user_id"),
    (lambda c: c.jobs.start("render", user_id="u", title="t", metadata={"f": LONE}),
     "metadata"),
    (lambda c: c.jobs.start("render", user_id="u", title="t", metadata={LONE: 1}), "metadata"),
    (lambda c: c.jobs.start("render", user_id="u", title="t", stage={"name": LONE}),
     "stage.name"),
    (lambda c: c.jobs.start("render", user_id="u", title="t",
                            queue={"position": 1, "queueName": LONE}), "queue.queue_name"),
    (lambda c: c.jobs.start("render", user_id="u", title="t", job_id=LONE), "job_id"),
    (lambda c: c.jobs.start("render", user_id="u", title="t", estimated_duration=1e15),
     "estimated_duration"),
    (lambda c: c.jobs.start("render", user_id="u", title="t", estimated_duration=1e300),
     "estimated_duration"),
    (lambda c: c.jobs.start("render", user_id="u", title="t",
                            estimated_duration=timedelta(days=365)), "estimated_duration"),
    (lambda c: c.jobs.start("render", user_id="u", title="t",
                            estimated_completion_at="0001-01-01T00:00:00+14:00"),
     "estimated_completion_at"),
    (lambda c: c.jobs.start("render", user_id="u", title="t",
                            estimated_completion_at="9999-12-31T23:59:59-14:00"),
     "estimated_completion_at"),
    (lambda c: c.jobs.get(LONE), "job_id"),
    (lambda c: c.jobs.list("u", cursor=LONE), "cursor"),
    (lambda c: c.jobs.children(LONE), "parent_id"),
    (lambda c: c.create_token(LONE), "user_id"),
]


@pytest.mark.parametrize(("call", "field"), CALLS)
def test_bad_text_and_values_fail_before_any_request(call: Callable[[seenn.SeennClient], object],
                                                     field: str) -> None:
    """Lone surrogates and out-of-range values raise ValidationError before anything is sent."""
    server = RecordingServer().start()
    try:
        with _client(server.url) as client, pytest.raises(seenn.ValidationError) as caught:
            call(client)
        assert caught.value.field == field
        assert server.requests == []
    finally:
        server.stop()


JOB_CALLS: list[tuple[Callable[[seenn.Job], object], str]] = [
    (lambda j: j.set_progress(5, message=LONE), "message"),
    (lambda j: j.set_progress(5, metadata={"k": [LONE]}), "metadata"),
    (lambda j: j.set_progress(5, push={"title": LONE}), "push"),
    (lambda j: j.complete(result={"type": "file", "data": {"name": LONE}}), "result"),
    (lambda j: j.complete(result={"url": "https://x/" + LONE}), "result.url"),
    (lambda j: j.fail(error={"code": "E", "message": LONE}), "error.message"),
    (lambda j: j.fail(error={"code": "E", "message": "m", "details": {"f": LONE}}),
     "error.details"),
]


@pytest.mark.parametrize(("call", "field"), JOB_CALLS)
def test_bad_text_in_job_updates_fails_before_any_request(call: Callable[[seenn.Job], object],
                                                          field: str) -> None:
    """A lone surrogate in any update field raises ValidationError and sends nothing."""
    server = RecordingServer().start()
    try:
        with _client(server.url) as client:
            job = client.jobs.start("render", user_id="u", title="t")
            with pytest.raises(seenn.ValidationError) as caught:
                call(job)
        assert caught.value.field == field
        assert len(server.requests) == 1
    finally:
        server.stop()


# Answers ---------------------------------------------------------------------------

def test_a_200_html_page_is_an_invalid_response_with_a_short_excerpt(raw: Callable[..., RawServer]
                                                                     ) -> None:
    """A 200 that is not JSON raises INVALID_RESPONSE with its status and an escaped excerpt."""
    page = b"<!doctype html>\n<html><body>" + b"Welcome to the captive portal\r\n" * 2000
    server = raw(lambda s, conn: s.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                                        + f"Content-Length: {len(page)}\r\n\r\n".encode()
                                        + page))
    with _client(server.url) as client, pytest.raises(seenn.SeennError) as caught:
        client.jobs.get("job_1")
    error = caught.value
    assert (error.code, error.status_code) == ("INVALID_RESPONSE", 200)
    assert "not JSON" in error.message
    assert "<!doctype html>" in error.message
    assert "\n" not in error.message and "\r" not in error.message
    assert len(error.message) < 300


@pytest.mark.parametrize(("body", "call"), [
    (b"[]", lambda c: c.jobs.get("job_1")),
    (b'{"ok": true}', lambda c: c.jobs.get("job_1")),
    (b"null", lambda c: c.jobs.start("t", user_id="u", title="t")),
    (b'{"jobs": "none"}', lambda c: c.jobs.list("u")),
    (b'{"jobs": [{"title": "no id"}]}', lambda c: c.jobs.list("u")),
    (b'{"children": []}', lambda c: c.jobs.children("job_1")),
    (b'{"token": 5, "expiresAt": "2030-01-01T00:00:00Z"}', lambda c: c.create_token("u")),
    (b'{"token": "ut_x", "expiresAt": "soon"}', lambda c: c.create_token("u")),
])
def test_json_of_the_wrong_shape_is_an_invalid_response(raw: Callable[..., RawServer],
                                                        body: bytes,
                                                        call: Callable[[seenn.SeennClient],
                                                                       object]) -> None:
    """A 2xx JSON answer that is not what the call expects raises INVALID_RESPONSE with status."""
    server = raw(lambda s, conn: s.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: "
                                        b"application/json\r\nContent-Length: "
                                        + str(len(body)).encode() + b"\r\n\r\n" + body))
    with _client(server.url) as client, pytest.raises(seenn.SeennError) as caught:
        call(client)
    assert (caught.value.code, caught.value.status_code) == ("INVALID_RESPONSE", 200)


def test_a_huge_streamed_answer_is_cut_at_the_cap(raw: Callable[..., RawServer]) -> None:
    """A 256 MiB chunked 200 raises RESPONSE_TOO_LARGE; the client stops reading near 8 MiB."""
    server = raw(_stream(256 * MiB))
    with _client(server.url) as client, pytest.raises(seenn.SeennError) as caught:
        client.jobs.get("job_1")
    assert (caught.value.code, caught.value.status_code) == ("RESPONSE_TOO_LARGE", 200)
    assert len(caught.value.message) < 300
    assert server.finished.wait(30)
    # What the client read, plus what the two kernels buffered before it hung up.
    assert server.sent < CAP + 24 * MiB


def test_a_huge_declared_length_is_refused_without_reading(raw: Callable[..., RawServer]) -> None:
    """A Content-Length over the cap raises RESPONSE_TOO_LARGE before the body is read."""
    def answer(server: RawServer, conn: socket.socket) -> None:
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 268435456\r\n\r\n")
        while server.sent < 256 * MiB:
            server.send(conn, b" " * 65536)

    server = raw(answer)
    with _client(server.url) as client, pytest.raises(seenn.SeennError) as caught:
        client.jobs.get("job_1")
    assert (caught.value.code, caught.value.status_code) == ("RESPONSE_TOO_LARGE", 200)
    assert server.finished.wait(30)
    assert server.sent < 24 * MiB


def test_a_huge_error_answer_keeps_its_status(raw: Callable[..., RawServer]) -> None:
    """A 503 with a 256 MiB body is still a ServerError, read only up to the cap."""
    server = raw(_stream(256 * MiB, b"503 Service Unavailable", b"text/html"))
    with _client(server.url) as client, pytest.raises(seenn.ServerError) as caught:
        client.jobs.get("job_1")
    assert caught.value.status_code == 503
    assert len(caught.value.message) < 300
    assert server.finished.wait(30)
    assert server.sent < CAP + 24 * MiB


async def test_the_async_client_cuts_a_huge_answer_too(raw: Callable[..., RawServer]) -> None:
    """AsyncSeennClient raises RESPONSE_TOO_LARGE and stops reading near the cap."""
    server = raw(_stream(256 * MiB))
    async with seenn.AsyncSeennClient(SECRET, base_url=server.url, max_retries=0) as client:
        with pytest.raises(seenn.SeennError) as caught:
            await client.jobs.get("job_1")
    assert caught.value.code == "RESPONSE_TOO_LARGE"
    assert server.finished.wait(30)
    assert server.sent < CAP + 24 * MiB


@pytest.mark.parametrize(("status", "error"), [(b"200 OK", seenn.SeennError),
                                               (b"503 Service Unavailable", seenn.ServerError)])
def test_an_undecodable_answer_is_a_seenn_error(raw: Callable[..., RawServer], status: bytes,
                                                error: type[seenn.SeennError]) -> None:
    """A body that claims gzip but is not raises a SeennError with its status, not httpx's."""
    server = raw(lambda s, conn: s.send(conn, b"HTTP/1.1 " + status + b"\r\nContent-Encoding: "
                                        b"gzip\r\nContent-Length: 8\r\n\r\nnot gzip"))
    with _client(server.url) as client, pytest.raises(error) as caught:
        client.jobs.get("job_1")
    assert caught.value.status_code == int(status[:3])
    if error is seenn.SeennError:
        assert caught.value.code == "INVALID_RESPONSE"


def _gzipped(data: bytes, total: int) -> bytes:
    """``data`` repeated to ``total`` bytes, gzipped without ever holding it whole."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(data) for _ in range(total // len(data))]
    return b"".join(parts) + compressor.flush()


def _coded(status: bytes, coding: bytes, body: bytes) -> Callable[[RawServer, socket.socket],
                                                                   None]:
    return lambda s, conn: s.send(conn, b"HTTP/1.1 " + status + b"\r\nContent-Type: "
                                  b"application/json\r\nContent-Encoding: " + coding
                                  + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize(("layers", "code"), [(1, "RESPONSE_TOO_LARGE"),
                                              (2, "INVALID_RESPONSE")])
async def test_a_compressed_answer_is_inflated_no_further_than_the_cap(
        raw: Callable[..., RawServer], layers: int, code: str, is_async: bool) -> None:
    """A 200 gzipped to inflate to 512 MiB (twice: 6 KB) costs the client about the cap only."""
    body = _gzipped(b"\0" * MiB, 512 * MiB)
    for _ in range(layers - 1):
        body = gzip.compress(body, 9)
    server = raw(_coded(b"200 OK", b", ".join([b"gzip"] * layers), body))
    tracemalloc.start()
    try:
        if is_async:
            async with seenn.AsyncSeennClient(SECRET, base_url=server.url,
                                              max_retries=0) as aclient:
                with pytest.raises(seenn.SeennError) as caught:
                    await aclient.jobs.get("job_1")
        else:
            with _client(server.url) as client, pytest.raises(seenn.SeennError) as caught:
                client.jobs.get("job_1")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (caught.value.code, caught.value.status_code) == (code, 200)
    assert peak < 3 * CAP


@pytest.mark.parametrize("coding", [b"gzip", b"x-gzip", b"deflate", b"deflate (raw)"])
def test_a_compressed_answer_within_the_cap_is_read(raw: Callable[..., RawServer],
                                                    coding: bytes) -> None:
    """A job answered gzipped or deflated (with or without zlib's header) is read as usual."""
    job = {"id": "job_1", "appId": "a", "userId": "u", "jobType": "t", "title": "t",
           "status": "running", "progress": 5, "createdAt": "2024-01-01T00:00:00.000Z",
           "updatedAt": "2024-01-01T00:00:00.000Z", "message": "x" * 100_000}
    data = json.dumps(job).encode()
    if coding == b"deflate (raw)":
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        body, coding = compressor.compress(data) + compressor.flush(), b"deflate"
    else:
        body = zlib.compress(data) if coding == b"deflate" else gzip.compress(data)
    server = raw(_coded(b"200 OK", coding, body))
    with _client(server.url) as client:
        got = client.jobs.get("job_1")
    assert (got.progress, got.message) == (5, "x" * 100_000)


def test_deeply_nested_json_is_an_invalid_response(raw: Callable[..., RawServer]) -> None:
    """A 200 of 100,000 nested arrays raises INVALID_RESPONSE, not RecursionError."""
    body = b"[" * 100_000 + b"]" * 100_000
    server = raw(lambda s, conn: s.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: "
                                        + str(len(body)).encode() + b"\r\n\r\n" + body))
    with _client(server.url) as client, pytest.raises(seenn.SeennError) as caught:
        client.jobs.get("job_1")
    assert (caught.value.code, caught.value.status_code) == ("INVALID_RESPONSE", 200)
