"""Job ids: ``job_`` followed by a ULID, made without a system call per id.

A ULID is a 48-bit millisecond timestamp (10 characters) and 80 random bits
(16 characters) in Crockford base32, so ids sort by creation time. The random
characters come from ``os.urandom`` read in blocks and mapped to the alphabet
by ``bytes.translate`` (5 random bits per character), so they stay
unpredictable (job ids can be read through public keys: a seeded PRNG would
not do) at a fraction of a system call per id. The timestamp's characters
are cached for the current millisecond.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

__all__ = ["new_job_id"]

_ALPHABET = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Byte b -> the character for its low 5 bits: each random byte gives 5 random bits.
_RANDOM_CHARS = bytes(_ALPHABET[b & 31] for b in range(256))
_POOL_BYTES = 4096  # 256 ids per refill
_RANDOM_LEN = 16

# The random parts of the next ids: 16-character strings cut from one os.urandom()
# read already mapped to the alphabet, one slice per id. Each is handed out once
# (next() of a map of a C method over a list is atomic: threads need no lock); an
# exhausted iterator is replaced whole (two threads may both replace it, which
# only wastes bytes).
_SLICES = [slice(start, start + _RANDOM_LEN) for start in range(0, _POOL_BYTES, _RANDOM_LEN)]
_chunks: Iterator[str] = iter(())
_time_cache: tuple[int, str] = (-1, "")  # (ms, "job_" + its 10 characters)
_time_ns = time.time_ns


def _encode_time(ms: int) -> str:
    chars = bytearray(10)
    for index in range(9, -1, -1):
        chars[index] = _ALPHABET[ms & 31]
        ms >>= 5
    return chars.decode("ascii")


def _random_chunks() -> Iterator[str]:
    pool = os.urandom(_POOL_BYTES).translate(_RANDOM_CHARS).decode("ascii")
    return map(pool.__getitem__, _SLICES)


def new_job_id(now: float | None = None) -> str:
    """Return a new ``job_`` + ULID id.

    Args:
        now: The time to stamp it with, from ``time.time()``, if the caller has
            read the clock already (an event's timestamp); else the clock is read.
    """
    global _chunks, _time_cache
    ms = _time_ns() // 1_000_000 if now is None else int(now * 1000)
    cached_ms, prefix = _time_cache
    if ms != cached_ms:
        prefix = "job_" + _encode_time(ms)
        _time_cache = (ms, prefix)
    chunk = next(_chunks, None)
    while chunk is None:  # (other threads may empty a new block before this one draws)
        chunks = _chunks = _random_chunks()
        chunk = next(chunks, None)
    return prefix + chunk


def _after_fork_in_child() -> None:
    # A child must not hand out the random bytes its parent also holds.
    global _chunks
    _chunks = iter(())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
