"""Reading a backend's answer within a size cap, whatever its content coding.

``Body`` is sans I/O: the sync and async request loops feed it the raw bytes
they receive, and it inflates gzip or deflate itself, never further than the
cap has room for (httpx would inflate each network chunk whole).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "MAX_ERROR_BODY_BYTES", "Body", "parse_int"]

# Answers are JSON of a few KB: a larger one is a broken or hostile backend, and is never
# held in memory whole. An error answer is only read for its message.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024
# Content codings an answer may come in despite "Accept-Encoding: identity" (a proxy's
# doing), with the zlib window of each: zlib inflates only as much as the cap has room
# for. Other codings, and codings applied twice (a few KB that inflate to gigabytes),
# are not read.
_INFLATE_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
                  "deflate": zlib.MAX_WBITS}


def parse_int(value: str | None) -> int | None:
    """A header's integer value; ``None`` if absent or not an integer."""
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class Body:
    """Collects an answer's body up to a cap (sans I/O: both request loops feed it)."""

    __slots__ = ("_chunks", "_coding", "_inflater", "_limit", "overflow", "size", "unreadable")

    def __init__(self, response: httpx.Response, max_bytes: int) -> None:
        success = 200 <= response.status_code < 300
        self._limit = max_bytes if success else min(max_bytes, MAX_ERROR_BODY_BYTES)
        self._chunks: list[bytes] = []
        self.size = 0
        # A success over the cap is an error; an error answer is merely cut short.
        self.overflow = False
        declared = parse_int(response.headers.get("Content-Length"))
        if success and declared is not None and declared > self._limit:
            self.overflow = True
        codings = [coding.strip().lower() for coding in
                   response.headers.get_list("Content-Encoding", split_commas=True)]
        codings = [coding for coding in codings if coding not in ("", "identity")]
        self._coding = codings[0] if len(codings) == 1 else ""
        self._inflater = None
        # Why the body cannot be read (within the cap): its coding, or its bytes.
        self.unreadable = f"Content-Encoding: {', '.join(codings)[:60]!r}" if codings else ""
        if self._coding in _INFLATE_WBITS:
            self._inflater = zlib.decompressobj(_INFLATE_WBITS[self._coding])
            self.unreadable = ""

    @property
    def reading(self) -> bool:
        """Whether the body is still to be read (not over the cap, not unreadable)."""
        return not (self.overflow or self.unreadable)

    def feed(self, chunk: bytes) -> bool:
        """Take one chunk; return ``True`` when no more should be read."""
        room = self._limit - self.size
        if len(chunk) > room:
            self._chunks.append(chunk[:room])
            self.size = self._limit
            self.overflow = True
            return True
        self._chunks.append(chunk)
        self.size += len(chunk)
        return False

    def feed_raw(self, chunk: bytes) -> bool:
        """Take one chunk as received, content coding and all; ``True`` to stop reading.

        A body that is not in the content coding it claims stops the reading and
        is marked ``unreadable``.
        """
        inflater = self._inflater
        if inflater is None:
            return self.feed(chunk)
        while chunk:
            try:
                # One byte past the room at most: enough to see the cap overrun.
                out = inflater.decompress(chunk, self._limit - self.size + 1)
            except zlib.error as exc:
                if self._coding != "deflate" or self.size:
                    self.unreadable = type(exc).__name__
                    return True
                # "deflate" without its zlib header, as some servers send it.
                self._coding = "raw deflate"
                self._inflater = inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                continue
            if self.feed(out):
                return True
            chunk = inflater.unconsumed_tail
        return False

    def data(self) -> bytes:
        """The bytes read so far."""
        return b"".join(self._chunks)
