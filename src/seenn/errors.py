"""Exceptions raised by seenn.

Every exception seenn raises on purpose derives from :class:`SeennError`::

    SeennError
     ├── ValidationError        (also a ValueError)
     ├── AuthenticationError
     ├── NotFoundError
     ├── ConflictError
     ├── RateLimitError
     ├── ServerError
     └── APIConnectionError
          └── APITimeoutError

None of them ever carries an API key in its message, ``repr`` or ``details``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AuthenticationError",
    "ConflictError",
    "NotFoundError",
    "RateLimitError",
    "SeennError",
    "ServerError",
    "ValidationError",
]


class SeennError(Exception):
    """The root of every seenn error, carrying the backend's error code and message.

    Attributes:
        code: A stable, machine-readable code such as ``"NOT_FOUND"``.
        message: A human-readable description.
        status_code: The HTTP status that caused the error, if any.
        details: Extra structured information (for validation, the field).
    """

    default_code = "SEENN_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status_code = status_code
        self.details = details

    def __str__(self) -> str:
        prefix = f"[{self.status_code} {self.code}]" if self.status_code else f"[{self.code}]"
        return f"{prefix} {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, code={self.code!r}, "
            f"status_code={self.status_code!r}, details={self.details!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments are lost by the default pickling of exceptions.
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[SeennError], message: str, state: dict[str, Any]) -> SeennError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class ValidationError(SeennError, ValueError):
    """An argument or request body broke a rule; ``details["field"]`` names the culprit."""

    default_code = "VALIDATION_ERROR"

    @property
    def field(self) -> str | None:
        """The name of the offending field, when known."""
        field = (self.details or {}).get("field")
        return field if isinstance(field, str) else None


class AuthenticationError(SeennError):
    """The API key is missing, unknown, or not allowed to do this (HTTP 401 or 403)."""

    default_code = "UNAUTHORIZED"


class NotFoundError(SeennError):
    """The job (or path) does not exist, or has expired (HTTP 404)."""

    default_code = "NOT_FOUND"


class ConflictError(SeennError):
    """The request conflicts with the job's state, e.g. a write to a finished job (HTTP 409)."""

    default_code = "CONFLICT"


class RateLimitError(SeennError):
    """The backend asked us to slow down (HTTP 429); ``retry_after`` says for how long.

    Attributes:
        retry_after: Seconds to wait before trying again, if the backend said.
        limit: The request limit of the current window, if the backend said.
        remaining: The requests left in the current window, if the backend said.
    """

    default_code = "RATE_LIMITED"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = 429,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
        limit: int | None = None,
        remaining: int | None = None,
    ) -> None:
        super().__init__(message, code=code, status_code=status_code, details=details)
        self.retry_after = retry_after
        self.limit = limit
        self.remaining = remaining


class ServerError(SeennError):
    """The backend failed (HTTP 5xx) and kept failing through every retry.

    Attributes:
        retry_after: Seconds the backend asked us to wait (``Retry-After`` on a 503), if any.
    """

    default_code = "SERVER_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status_code=status_code, details=details)
        self.retry_after = retry_after


class APIConnectionError(SeennError):
    """The backend could not be reached, or the connection broke mid-request."""

    default_code = "CONNECTION_ERROR"


class APITimeoutError(APIConnectionError):
    """The backend did not answer in time, or the call's overall deadline passed."""

    default_code = "TIMEOUT"
