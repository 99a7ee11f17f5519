"""A real ``seenn serve`` in a subprocess, and raw sockets to talk to it as an attacker would."""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SECRET = "sk_test_adversarialsecretkey0000000000"
PUBLIC = "pk_test_adversarialpublickey000000000"


@dataclass
class Served:
    """A ``seenn serve`` subprocess: where it listens, its keys and its process."""

    host: str
    port: int
    secret: str
    public: str
    process: subprocess.Popen[str]
    db: Path | str
    lines: list[str] = field(default_factory=list)  # what it printed until it listened

    @property
    def url(self) -> str:
        """The base URL a client takes."""
        return f"http://{self.host}:{self.port}"

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """Open a raw TCP connection to the server."""
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def rss_bytes(self) -> int:
        """The server process's resident memory, from ``/proc``."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")

    def alive(self) -> bool:
        """Whether the server process still runs."""
        return self.process.poll() is None


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the peer sends until it closes (or ``limit`` bytes, or the socket's timeout)."""
    data = bytearray()
    try:
        while len(data) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    return bytes(data)


def is_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the peer closed the connection (EOF or reset) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], deadline - time.monotonic())
        if not ready:
            return False
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def responses(data: bytes) -> list[int]:
    """The status codes of the HTTP responses in ``data``, each framed by its Content-Length.

    Reads response after response, so one that follows a JSON body (which does not end
    in CRLF) is counted too; anything left over that is not a response fails the test.
    """
    codes: list[int] = []
    while data:
        head, found, rest = data.partition(b"\r\n\r\n")
        assert found, f"not an HTTP response: {data[:80]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        assert re.fullmatch(r"HTTP/1\.1 \d{3} .*", status_line), status_line
        codes.append(int(status_line.split()[1]))
        length = 0
        for line in lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        data = rest[length:]
    return codes


def start_server(tmp_path: Path, *extra: str, db: str | Path | None = None) -> Served:
    """Start ``seenn serve`` on a free loopback port and wait until it listens.

    Its database is ``db`` (a file or a PostgreSQL URL), by default a file in ``tmp_path``.
    """
    db = tmp_path / "adversarial.db" if db is None else db
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "seenn", "serve", "--host", "127.0.0.1", "--port", "0",
         "--db", str(db), "--api-key", SECRET, "--public-key", PUBLIC, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if match:
            return Served("127.0.0.1", int(match.group(1)), SECRET, PUBLIC, process, db, seen)
    process.kill()
    raise AssertionError("seenn serve did not start:\n" + "".join(seen))


def stop_server(served: Served) -> None:
    """Stop the server and reap it."""
    served.process.terminate()
    try:
        served.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        served.process.kill()
        served.process.wait()
    if served.process.stdout is not None:
        served.process.stdout.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A ``seenn serve`` subprocess with known keys, stopped after the test."""
    server = start_server(tmp_path)
    try:
        yield server
    finally:
        stop_server(server)
