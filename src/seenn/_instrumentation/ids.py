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

import itertools
import os
import time
from collections.abc import Iterator

__all__ = ["new_job_id"]

_ALPHABET = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Byte b -> the character for its low 5 bits: each random byte gives 5 random bits.
_RANDOM_CHARS = bytes(_ALPHABET[b & 31] for b in range(256))
_POOL_BYTES = 4096  # 256 ids per refill
_RANDOM_LEN = 16

# (pool, counter): each counter value hands out one 16-byte slice of its pool
# exactly once, so threads need no lock; a pool used up is replaced whole (two
# threads may both replace it, which only wastes bytes).
_state: tuple[bytes, Iterator[int]] = (b"", itertools.count())
_time_cache: tuple[int, str] = (-1, "")


def _encode_time(ms: int) -> str:
    chars = bytearray(10)
    for index in range(9, -1, -1):
        chars[index] = _ALPHABET[ms & 31]
        ms >>= 5
    return chars.decode("ascii")


def new_job_id() -> str:
    """Return a new ``job_`` + ULID id."""
    global _state, _time_cache
    ms = time.time_ns() // 1_000_000
    cached_ms, prefix = _time_cache
    if ms != cached_ms:
        prefix = _encode_time(ms)
        _time_cache = (ms, prefix)
    pool, counter = _state
    start = next(counter) * _RANDOM_LEN
    if start + _RANDOM_LEN > len(pool):
        pool, counter = _state = (os.urandom(_POOL_BYTES), itertools.count(1))
        start = 0
    chunk = pool[start:start + _RANDOM_LEN]
    return "job_" + prefix + chunk.translate(_RANDOM_CHARS).decode("ascii")


def _after_fork_in_child() -> None:
    # A child must not hand out the random bytes its parent also holds.
    global _state
    _state = (b"", itertools.count())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
