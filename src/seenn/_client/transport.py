"""The HTTP layer shared by the sync and async REST clients.

Everything that does not wait lives in :class:`BaseClient`: configuration and
key checks, building requests, mapping responses to errors, and deciding
whether (and how long) to wait before the next attempt. The two subclasses only
add the loop that sends, sleeps and retries, in their own concurrency style.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import platform
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from seenn._core.validation import fail
from seenn._version import __version__
from seenn.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    RateLimitError,
    SeennError,
    ServerError,
    ValidationError,
)

logger = logging.getLogger("seenn")

DEFAULT_BASE_URL = "https://api.seenn.io"
DEFAULT_BASE_PATH = "/v1"
USER_AGENT = (
    f"seenn-python/{__version__} (python {platform.python_version()}; httpx {httpx.__version__})"
)
KEY_PREFIXES = ("sk_live_", "sk_test_", "pk_live_", "pk_test_")
REDACTED = "[REDACTED]"

_STATUS_ERRORS: dict[int, type[SeennError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    408: APITimeoutError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitError,
}


def quote_id(value: str) -> str:
    """Quote a path segment (a job id) so it can never change the path."""
    return quote(value, safe="")


def is_seenn_cloud(base_url: str) -> bool:
    """Tell whether ``base_url`` points at Seenn Cloud rather than a self-hosted backend."""
    host = (urlsplit(base_url).hostname or "").lower()
    return host == "seenn.io" or host.endswith(".seenn.io")


def describe_key(api_key: str) -> str:
    """Describe a key without revealing it: its kind prefix at most."""
    for prefix in KEY_PREFIXES:
        if api_key.startswith(prefix):
            return f"{prefix}…"
    return "…"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Read ``Retry-After`` as seconds (delta-seconds or an HTTP date); ``None`` if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _parse_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class BaseClient:
    """Configuration, request building and response mapping for both clients."""

    def __init__(
        self,
        api_key: str | None,
        *,
        base_url: str | None,
        base_path: str,
        timeout: float,
        max_retries: int,
        deadline: float | None,
        debug: bool,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("SEENN_API_KEY")
        if not key:
            fail("api_key", "no API key: pass api_key= or set SEENN_API_KEY")
        if not isinstance(key, str) or key != key.strip():
            fail("api_key", "must be a string without surrounding white space")
        url = base_url or os.environ.get("SEENN_BASE_URL") or DEFAULT_BASE_URL
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            fail("base_url", f"must be an http:// or https:// URL, got {url!r}")
        if is_seenn_cloud(url) and not key.startswith("sk_"):
            fail("api_key", "Seenn Cloud needs a secret key (sk_live_… or sk_test_…); "
                            f"the key given is {describe_key(key)}")
        if base_path and not base_path.startswith("/"):
            fail("base_path", f"must start with '/', got {base_path!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            fail("timeout", f"must be a positive number of seconds, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            fail("max_retries", f"must be an integer >= 0, got {max_retries!r}")
        if deadline is not None and (
            isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or deadline <= 0
        ):
            fail("deadline", f"must be a positive number of seconds or None, got {deadline!r}")

        self._api_key = key
        self.base_url = url.rstrip("/")
        self.base_path = base_path.rstrip("/")
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.deadline = float(deadline) if deadline is not None else None
        self.debug = debug
        # Backoff: full jitter over base * 2**n, capped; Retry-After is honoured up to a cap.
        self.backoff_base = 0.5
        self.backoff_max = 8.0
        self.retry_after_max = 60.0
        # Seams for tests: a fake clock and sleep keep retry tests instant.
        self._monotonic = time.monotonic
        self._time = time.time
        self._random = random.random

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(base_url={self.base_url + self.base_path!r}, "
                f"api_key={describe_key(self._api_key)!r})")

    # Building requests -------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.base_url + self.base_path + path

    def _headers(self, idempotency_key: str | None) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    @staticmethod
    def _idempotency_key(method: str, given: str | None) -> str | None:
        if given is not None:
            return given
        return str(uuid.uuid4()) if method == "POST" else None

    def _attempt_timeout(self, started: float) -> float:
        if self.deadline is None:
            return self.timeout
        remaining = self.deadline - (self._monotonic() - started)
        return max(0.001, min(self.timeout, remaining))

    # Reading responses -------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, REDACTED) if self._api_key in text else text

    def _handle_response(self, response: httpx.Response) -> Any:
        """Return the decoded JSON of a 2xx response, or raise the mapped SeennError."""
        status = response.status_code
        if 200 <= status < 300:
            if status == 204 or not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise SeennError(
                    f"the backend sent a {status} response that is not JSON",
                    code="INVALID_RESPONSE", status_code=status,
                ) from None
        raise self._error_from_response(response)

    def _error_from_response(self, response: httpx.Response) -> SeennError:
        status = response.status_code
        code: str | None = None
        message = ""
        details: dict[str, Any] | None = None
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, Mapping) else None
        if isinstance(error, Mapping):
            raw_code, raw_message = error.get("code"), error.get("message")
            code = raw_code if isinstance(raw_code, str) else None
            message = raw_message if isinstance(raw_message, str) else ""
            raw_details = error.get("details")
            details = dict(raw_details) if isinstance(raw_details, Mapping) else None
        elif isinstance(error, str):
            message = error
        elif isinstance(body, Mapping) and isinstance(body.get("message"), str):
            message = body["message"]
        if not message:
            snippet = response.text[:200].strip() if body is None else ""
            message = f"HTTP {status} {response.reason_phrase}"
            if snippet:
                message += f": {snippet}"
        message = self._redact(message)
        cls = _STATUS_ERRORS.get(status)
        if cls is None:
            cls = ServerError if status >= 500 else SeennError
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self._time())
        if cls is RateLimitError:
            return RateLimitError(
                message, code=code, status_code=status, details=details,
                retry_after=retry_after,
                limit=_parse_int(response.headers.get("X-RateLimit-Limit")),
                remaining=_parse_int(response.headers.get("X-RateLimit-Remaining")),
            )
        if cls is ServerError:
            return ServerError(message, code=code, status_code=status, details=details,
                               retry_after=retry_after)
        if cls is SeennError:
            code = code or "HTTP_ERROR"
        return cls(message, code=code, status_code=status, details=details)

    def _transport_error(self, exc: httpx.TransportError, timeout: float) -> SeennError:
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"no answer from {self.base_url} within {timeout:.3g} s "
                                   f"({type(exc).__name__})")
        return APIConnectionError(self._redact(
            f"could not reach {self.base_url}: {type(exc).__name__}: {exc}"))

    # Retrying ----------------------------------------------------------------------

    def _retry_delay(self, error: SeennError, attempt: int, started: float) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up with ``error``."""
        if attempt > self.max_retries:
            return None
        status = error.status_code
        retryable = isinstance(error, (APIConnectionError, RateLimitError, ServerError)) or (
            status is not None and (status == 408 or status >= 500))
        if not retryable:
            return None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            if retry_after > self.retry_after_max:
                return None
            delay = float(retry_after)
        else:
            delay = self._random() * min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        if self.deadline is not None:
            remaining = self.deadline - (self._monotonic() - started)
            if delay >= remaining:
                return None
        return delay

    def _log_attempt(self, method: str, url: str, outcome: str, attempt: int,
                     elapsed: float) -> None:
        if self.debug:
            logger.debug("seenn: %s %s -> %s in %.1f ms (attempt %d of %d)", method,
                         urlsplit(url).path, outcome, elapsed * 1000.0, attempt,
                         self.max_retries + 1)


class _Call:
    """The state of one logical call across its attempts (sans I/O, shared by both loops)."""

    __slots__ = (
        "_client",
        "_kwargs",
        "_method",
        "_sent",
        "_started",
        "_timeout",
        "_url",
        "attempt",
    )

    def __init__(self, client: BaseClient, method: str, path: str, json: Any,
                 params: Mapping[str, Any] | None, idempotency_key: str | None) -> None:
        self._client = client
        self._method = method
        self._url = client._url(path)
        # One Idempotency-Key per logical call, the same on every attempt.
        headers = client._headers(client._idempotency_key(method, idempotency_key))
        self._kwargs: dict[str, Any] = {"method": method, "url": self._url, "json": json,
                                        "params": params, "headers": headers}
        self._started = client._monotonic()
        self._sent = self._started
        self._timeout = client.timeout
        self.attempt = 0

    def next_attempt(self) -> dict[str, Any]:
        """Return the keyword arguments of ``httpx.Client.request`` for the next attempt."""
        self.attempt += 1
        self._timeout = self._client._attempt_timeout(self._started)
        self._sent = self._client._monotonic()
        return {**self._kwargs, "timeout": self._timeout}

    def _log(self, outcome: str) -> None:
        client = self._client
        client._log_attempt(self._method, self._url, outcome, self.attempt,
                            client._monotonic() - self._sent)

    def answered(self, response: httpx.Response) -> tuple[bool, Any]:
        """Return ``(True, json)`` when done, ``(False, delay)`` to retry; raise to give up."""
        self._log(str(response.status_code))
        try:
            return True, self._client._handle_response(response)
        except SeennError as error:
            return False, self._retry_or_raise(error, None)

    def transport_failed(self, exc: httpx.TransportError) -> float:
        """Return the delay before retrying after a transport error; raise to give up."""
        self._log(type(exc).__name__)
        return self._retry_or_raise(self._client._transport_error(exc, self._timeout), exc)

    def _retry_or_raise(self, error: SeennError, cause: BaseException | None) -> float:
        delay = self._client._retry_delay(error, self.attempt, self._started)
        if delay is None:
            raise error from cause
        return delay


class SyncHTTP(BaseClient):
    """The blocking request loop over an ``httpx.Client``."""

    def __init__(self, api_key: str | None, *, http_client: httpx.Client | None,
                 **options: Any) -> None:
        super().__init__(api_key, **options)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client()
        self._sleep = time.sleep

    def close(self) -> None:
        """Close the underlying HTTP client if this client created it."""
        if self._owns_http:
            self._http.close()

    def request(self, method: str, path: str, *, json: Any = None,
                params: Mapping[str, Any] | None = None,
                idempotency_key: str | None = None) -> Any:
        """Send one logical call, retrying as the policy allows; return the decoded JSON."""
        call = _Call(self, method, path, json, params, idempotency_key)
        while True:
            try:
                response = self._http.request(**call.next_attempt())
            except httpx.TransportError as exc:
                delay = call.transport_failed(exc)
            else:
                done, value = call.answered(response)
                if done:
                    return value
                delay = value
            self._sleep(delay)


    def send_once(self, method: str, path: str, *, json: Any = None,
                  idempotency_key: str | None = None) -> Any:
        """Send one attempt, without retrying: for callers that schedule retries themselves."""
        call = _Call(self, method, path, json, None, idempotency_key)
        try:
            response = self._http.request(**call.next_attempt())
        except httpx.TransportError as exc:
            call._log(type(exc).__name__)
            raise self._transport_error(exc, call._timeout) from exc
        call._log(str(response.status_code))
        return self._handle_response(response)


class AsyncHTTP(BaseClient):
    """The asyncio request loop over an ``httpx.AsyncClient``."""

    def __init__(self, api_key: str | None, *, http_client: httpx.AsyncClient | None,
                 **options: Any) -> None:
        super().__init__(api_key, **options)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient()
        self._sleep = asyncio.sleep

    async def aclose(self) -> None:
        """Close the underlying HTTP client if this client created it."""
        if self._owns_http:
            await self._http.aclose()

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, Any] | None = None,
                      idempotency_key: str | None = None) -> Any:
        """Send one logical call, retrying as the policy allows; return the decoded JSON."""
        call = _Call(self, method, path, json, params, idempotency_key)
        while True:
            try:
                response = await self._http.request(**call.next_attempt())
            except httpx.TransportError as exc:
                delay = call.transport_failed(exc)
            else:
                done, value = call.answered(response)
                if done:
                    return value
                delay = value
            await self._sleep(delay)
