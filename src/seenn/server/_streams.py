"""The streams a connection of the gateway reads and writes through, each with a bound.

A read side under one deadline for a series of reads, a write side whose every
write is one ``sendall`` within a time limit, and a byte budget over a whole
header section: what keeps a slow or endless client from holding a connection.
"""

from __future__ import annotations

import http.client
import io
import socket
import time
from typing import Any

__all__ = ["DeadlineReader", "HeaderLines", "TimedWriter"]


class DeadlineReader(io.RawIOBase):
    """The connection's read side, under one deadline for a series of reads.

    A per-``recv`` timeout lets a client that sends a byte now and then hold a
    connection for ever; a deadline over the whole request line and headers does not.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline = 0.0
        self.expired = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.expired = True
            raise TimeoutError("read deadline passed")
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            self.expired = True
            raise


class TimedWriter(io.BufferedIOBase):
    """The connection's write side: each write is one ``sendall`` within a time limit."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.settimeout(self._timeout)
        self._sock.sendall(data)
        return len(data)


class HeaderLines:
    """What the header parser reads through: a byte budget for the whole section.

    The standard library bounds each line (64 KiB) and the number of lines (100),
    which still lets one request hold 6.4 MB; ``truncated`` tells a section cut
    short by the client closing from one that ended with an empty line. ``bare_cr``
    tells a CR not followed by LF: the parser would split a line there, where a proxy
    may not (RFC 9112 section 2.2 makes it invalid).
    """

    def __init__(self, rfile: io.BufferedIOBase, budget: int) -> None:
        self._rfile = rfile
        self._left = budget
        self.truncated = False
        self.bare_cr = False

    def readline(self, limit: int = -1) -> bytes:
        allowed = self._left + 1 if limit < 0 else min(limit, self._left + 1)
        line = self._rfile.readline(allowed)
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong("header section")
        if not line.endswith(b"\n"):
            self.truncated = True
        if b"\r" in line.removesuffix(b"\n").removesuffix(b"\r"):
            self.bare_cr = True
        return line
