"""The error answer of ``seenn serve``, shared by the HTTP shell and the job operations.

``HTTPError`` carries a status, an error code, a message and optional details and
headers, and renders itself as the JSON error body of the wire protocol; ``Response``
is the ``(status, body, headers)`` triple both produce. ``_jobs`` raises it from
inside a transaction and ``_app`` answers with it; it has its own module because it is
part of the HTTP answer rather than of the job operations, and ``_jobs`` must not
import ``_app``, which imports ``_jobs``.
"""

from __future__ import annotations

from typing import Any

Response = tuple[int, Any, dict[str, str]]


class HTTPError(Exception):
    """An error answer: status, code, message and optional details and headers."""

    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, headers or {}

    def response(self) -> Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return self.status, {"error": error}, self.headers
