"""What a request to ``seenn serve`` carries, parsed and checked for ``_app``.

The path (split on the raw URI, so ``%2F`` stays inside an id) and its route, the
JSON body (size cap, JSON object, no lone surrogates anywhere), ``If-None-Match``,
and the page parameters of lists and children with their opaque cursors.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from seenn._core.validation import MAX_LIST_LIMIT, check_int, fail
from seenn.server._errors import HTTPError
from seenn.server._jobs import Fields

DEFAULT_LIMIT = 20


def read_json(environ: Mapping[str, Any], max_body_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object: 413 past ``max_body_bytes``, 400 if not JSON text."""
    too_large = HTTPError(413, "PAYLOAD_TOO_LARGE",
                          f"request bodies are limited to {max_body_bytes} bytes")
    if not environ.get("CONTENT_LENGTH") and environ.get("wsgi.input_terminated"):
        # A chunked body under a server that ends the input stream itself (gunicorn
        # says so with this flag): read up to one byte past the cap, never more.
        raw = environ["wsgi.input"].read(max_body_bytes + 1)
        if len(raw) > max_body_bytes:
            raise too_large
    else:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise HTTPError(400, "INVALID_REQUEST", "bad Content-Length") from None
        if length > max_body_bytes:
            raise too_large
        raw = environ["wsgi.input"].read(length) if length > 0 else b""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise HTTPError(400, "INVALID_JSON", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "INVALID_JSON", "the request body must be a JSON object")
    # In plain ASCII text (no NUL: json.loads reads UTF-16 and UTF-32 too) a lone
    # surrogate can only come from a \u escape: such a body needs no walk, which is
    # most of the cost of reading a large batch.
    walk = b"\\u" in raw or not raw.isascii() or b"\x00" in raw
    field = _unencodable_field(body) if walk else None
    if field is not None:
        reason = "must be valid Unicode text: it holds a lone surrogate"
        raise HTTPError(400, "VALIDATION_ERROR", f"{field}: {reason}",
                        {"field": field, "reason": reason, "fields": {field: reason}})
    return body


def path_segments(environ: Mapping[str, Any]) -> list[str]:
    """The decoded segments of the request path below the app's mount point."""
    # The raw path keeps %2F inside an id from splitting it; PATH_INFO is already decoded.
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw, str):
        path = raw.split("?", 1)[0]
        mount = str(environ.get("SCRIPT_NAME", "")).rstrip("/")
        if mount and unquote(path).startswith(mount + "/"):
            path = path[len(quote(mount, safe="/")):]
        return [unquote(part, errors="replace") for part in path.split("/") if part]
    path_info = str(environ.get("PATH_INFO", ""))
    with contextlib.suppress(UnicodeError):
        path_info = path_info.encode("latin-1").decode("utf-8")
    return [part for part in path_info.split("/") if part]


def route(segments: list[str]) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """The route of a path (``None`` if unknown) and the methods it allows."""
    if segments == ["v1", "tokens"]:
        return ("tokens",), ("POST",)
    if segments == ["v1", "events"]:
        return ("events",), ("POST",)
    if segments[:2] == ["v1", "eta"] and len(segments) <= 3:
        return tuple(segments[1:]), ("GET",) if len(segments) == 2 else ("GET", "DELETE")
    if len(segments) < 2 or segments[:2] != ["v1", "jobs"]:
        return None, ()
    rest = segments[2:]
    if not rest:
        return ("list",), ("GET", "POST")
    if len(rest) == 1:
        return ("job", rest[0]), ("GET",)
    if len(rest) == 2 and rest[1] == "children":
        return ("children", rest[0]), ("GET",)
    if len(rest) == 2 and rest[1] in ("progress", "complete", "fail"):
        return (rest[1], rest[0]), ("POST",)
    return None, ()


def etag_matches(header: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (or ``*``)."""
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


def one(query: dict[str, list[str]], name: str) -> str | None:
    """The first value of a query parameter, if it was given."""
    values = query.get(name)
    return values[0] if values else None


def _as_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        fail(name, f"must be an integer, got {text!r}")


def page(query: dict[str, list[str]], kind: str, fields: Fields) -> tuple[int, int | None]:
    """A page's ``limit`` and the position of its ``cursor`` of ``kind``; errors go to fields."""
    raw_limit = one(query, "limit")
    limit = fields.check("limit", lambda: DEFAULT_LIMIT if raw_limit is None else check_int(
        "limit", _as_int("limit", raw_limit), minimum=1, maximum=MAX_LIST_LIMIT))
    raw_cursor = one(query, "cursor")
    position = fields.check("cursor", lambda: None if raw_cursor is None
                            else decode_cursor(raw_cursor, kind))
    return limit, position


def encode_cursor(kind: str, position: int) -> str:
    """An opaque cursor: ``s:<seq>`` for a list of jobs, ``c:<childIndex>`` for children."""
    return base64.urlsafe_b64encode(f"{kind}:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    digits = text[len(kind) + 1:]
    # isdigit() alone accepts "²" and other digits int() refuses: ASCII digits only.
    # SQLite integers stop at 2**63 - 1: a larger position would be a 500, not a 400.
    if not (text.startswith(f"{kind}:") and 0 < len(digits) < 20 and digits.isascii()
            and digits.isdigit() and int(digits) < 2 ** 63):
        fail("cursor", "is not a cursor this server made")
    return int(digits)


def _unencodable_field(body: dict[str, Any]) -> str | None:
    """The path of a string (or key) in a body that UTF-8 cannot encode, if there is one.

    ``json.loads`` turns the escape ``"\\ud800"`` into a lone surrogate, which no later
    step could store or send back. Iterative, so a deeply nested body costs no recursion.
    """
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not _encodable(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _encodable(key):
                    # Named with the surrogate escaped: the key cannot be sent back as it is.
                    key = key.encode("utf-8", "backslashreplace").decode("utf-8")
                    return (f"{path}.{key}" if path else key)[:200]
                stack.append(((f"{path}.{key}" if path else key)[:200], item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{index}"[:200], item) for index, item in enumerate(value))
    return None


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
