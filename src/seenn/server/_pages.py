"""The pages ``seenn serve`` shows to people: the job page and the operator view.

``/jobs/{id}`` is a job's status page and ``/`` the operator view; both are static HTML
that a browser gets when it asks for HTML (``Accept: text/html``). Their scripts and
style sheet are under ``/assets/``. Everything is read from the package
(``seenn/server/static``) and served from a fixed list of names, so no path a client
sends ever reaches the file system. The pages hold no data: their scripts read the job
through the same ``/v1`` API the phones use, with the key from the URL fragment (which
browsers never send) or, in the operator view, from the tab's session storage.

Other clients asking for ``/`` or ``/jobs/{id}`` get ``406`` in the JSON error shape,
pointing at the API under ``/v1``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from seenn.server._requests import etag_matches, path_segments

# Status line, headers, body: what the WSGI app hands to start_response and returns.
PageResponse = tuple[str, list[tuple[str, str]], bytes]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

# The only files ever served, by the name in /assets/{name}.
ASSETS = {
    "seenn.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "job.js": "text/javascript; charset=utf-8",
    "operator.js": "text/javascript; charset=utf-8",
}
_HTML = "text/html; charset=utf-8"
_PAGES = {"index": "index.html", "job": "job.html"}
_METHODS = "GET, HEAD"


@functools.cache
def _file(name: str) -> tuple[bytes, str]:
    """A packaged file's bytes and its ETag (read once per process)."""
    data = (resources.files("seenn.server") / "static" / name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _security_headers() -> list[tuple[str, str]]:
    return [("Content-Security-Policy", CONTENT_SECURITY_POLICY),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("X-Frame-Options", "DENY"),
            ("Cross-Origin-Opener-Policy", "same-origin"),
            ("Cross-Origin-Resource-Policy", "same-origin")]


def _json(status: str, code: str, message: str,
          extra: list[tuple[str, str]]) -> PageResponse:
    body = json.dumps({"error": {"code": code, "message": message}},
                      separators=(",", ":")).encode("utf-8")
    return status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                    ("X-Content-Type-Options", "nosniff"), *extra], body


def wants_html(environ: Mapping[str, Any]) -> bool:
    """Whether the client asks for HTML, as every browser does when it opens a page."""
    accept = str(environ.get("HTTP_ACCEPT", "")).lower()
    for part in accept.split(","):
        media, _, params = part.partition(";")
        if media.strip() in ("text/html", "application/xhtml+xml"):
            for param in params.split(";"):
                name, _, value = param.strip().partition("=")
                if name == "q":  # "text/html;q=0" says the opposite
                    try:
                        return float(value) > 0
                    except ValueError:
                        return False
            return True
    return False


def _serve(name: str, content_type: str, environ: Mapping[str, Any],
           extra: list[tuple[str, str]]) -> PageResponse:
    data, etag = _file(name)
    # Revalidated on every use (cheap with the ETag), so an upgrade shows at once.
    headers = [("Content-Type", content_type), ("ETag", etag), ("Cache-Control", "no-cache"),
               *_security_headers(), *extra]
    if etag_matches(str(environ.get("HTTP_IF_NONE_MATCH", "")), etag):
        return "304 Not Modified", headers, b""
    return "200 OK", [*headers, ("Content-Length", str(len(data)))], data


def page(environ: Mapping[str, Any]) -> PageResponse | None:
    """Answer a request for a page or an asset; ``None`` when the path is not one.

    ``/`` and ``/jobs/{id}`` (exactly two segments, so ``/v1/...`` never matches) are
    pages, ``/assets/{name}`` the files they load.
    """
    segments = path_segments(environ)
    if not segments:
        kind = "index"
    elif len(segments) == 2 and segments[0] == "jobs":
        kind = "job"
    elif segments[0] == "assets":
        kind = "asset"
    else:
        return None
    method = str(environ.get("REQUEST_METHOD", "GET")).upper()
    if method not in ("GET", "HEAD"):
        return _json("405 Method Not Allowed", "METHOD_NOT_ALLOWED",
                     f"{method[:20]} is not allowed here", [("Allow", _METHODS)])
    if kind == "asset":
        name = segments[1] if len(segments) == 2 else ""
        if name not in ASSETS:
            return _json("404 Not Found", "NOT_FOUND", "no such path", [])
        return _serve(name, ASSETS[name], environ, [])
    vary = [("Vary", "Accept")]
    if not wants_html(environ):
        return _json("406 Not Acceptable", "NOT_ACCEPTABLE",
                     "this address is a page for browsers (Accept: text/html); the API "
                     "is under /v1, e.g. GET /v1/jobs/{id}", vary)
    return _serve(_PAGES[kind], _HTML, environ, vary)
