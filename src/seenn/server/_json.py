"""JSON on the server's write path: the standard library's C encoder and scanner, built once.

Every event of ``POST /v1/events`` reads a job document and its ETA state and writes
them back, and hashes its body for the idempotency key: several small documents per
event. ``json.dumps`` with any argument builds a new ``JSONEncoder`` and a new C
encoder each call, and ``json.loads`` runs two regular expressions around the scan;
for documents of a few hundred bytes that overhead is about half the cost. The
output is the same text ``json.dumps(value, separators=(",", ":"),
ensure_ascii=False)`` (with ``sort_keys=True`` for :func:`dumps_sorted`) gives,
since that call uses the same C encoder.

Values are what the server built from parsed JSON, never cyclic, so the encoders
skip the cycle check (which would need a fresh dictionary per call).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _encoder
from json.scanner import make_scanner
from typing import Any, cast

__all__ = ["dumps", "dumps_sorted", "loads"]


def _unserialisable(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _encoder_for(*, sort_keys: bool) -> Callable[[object], str]:
    make = getattr(_encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has the C accelerator
        def fallback(value: object) -> str:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                              sort_keys=sort_keys)
        return fallback
    # markers=None: no cycle check; the string encoder of ensure_ascii=False; no
    # indent; compact separators; allow_nan=True as json.dumps.
    encode = make(None, _unserialisable, _encoder.encode_basestring, None, ":", ",",
                  sort_keys, False, True)

    def dumps(value: object) -> str:
        return "".join(encode(value, 0))

    return dumps


dumps = _encoder_for(sort_keys=False)
"""``value`` as compact JSON, non-ASCII characters as they are."""

dumps_sorted = _encoder_for(sort_keys=True)
"""``value`` as compact JSON with the keys of every object sorted (for hashing)."""

# The decoder's C scanner (typeshed types make_scanner oddly, hence the casts).
_scan = cast(Callable[[str, int], tuple[Any, int]], make_scanner(cast(Any, json.JSONDecoder())))


def loads(text: str) -> Any:
    """Parse JSON text: the C scanner alone for text without surrounding whitespace.

    Anything else (whitespace around the value, trailing text, malformed JSON) goes
    through ``json.loads``, which accepts or refuses it with its usual error.
    """
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return json.loads(text)
    if end != len(text):
        return json.loads(text)
    return value
