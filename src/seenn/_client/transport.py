"""The HTTP layer shared by the sync and async REST clients.

Everything that does not wait lives in :class:`BaseClient`: configuration and
key checks, building requests, mapping responses to errors, and deciding
whether (and how long) to wait before the next attempt. The two subclasses only
add the loop that sends, sleeps and retries, in their own concurrency style.
"""

from __future__ import annotations

import asyncio
import email.utils
import json as jsonlib
import logging
import os
import platform
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from seenn._client.answers import DEFAULT_MAX_RESPONSE_BYTES, Body, parse_int
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
KEY_PREFIXES = ("sk_live_", "sk_test_", "pk_live_", "pk_test_", "ut_")
REDACTED = "[REDACTED]"
# A user token carries its user id: 255 characters of UTF-8 in base64, and a signature.
MAX_KEY_LENGTH = 2048
# Longer waits overflow the platform's timers (a socket timeout of 1e12 s raises).
MAX_WAIT_SECONDS = 86_400.0
# RFC 6750 b64token: what a Bearer credential may hold, so a key can never break a header.
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
Shape = Callable[[Any], "str | None"]
"""Checks a decoded 2xx answer: ``None`` if usable, else what the call expected instead."""
NOT_MODIFIED: Any = object()
"""What a conditional GET returns for a 304 answer (the client's copy is current)."""

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
    """Quote a path segment (a job id, an eta key) so it can never change the path."""
    quoted = quote(value, safe="")
    # "." and ".." would be dot segments, which httpx (as RFC 3986 says) removes.
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


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


def check_api_key(key: object) -> str:
    """Check that ``key`` can be sent as a Bearer credential; the error never shows the key."""
    if key is None or key == "":
        fail("api_key", "no API key: pass api_key= or set SEENN_API_KEY")
    if not isinstance(key, str):
        fail("api_key", f"must be a string, not {type(key).__name__}")
    if len(key) > MAX_KEY_LENGTH:
        fail("api_key", f"is {len(key)} characters long; a key has at most {MAX_KEY_LENGTH}")
    for index, char in enumerate(key):
        if char not in _KEY_CHARS:
            # Neither the key nor the character is shown: both may be part of a secret.
            fail("api_key", f"holds a character that a key cannot hold, at index {index} "
                            "(keys are letters, digits and - . _ ~ + / =)")
    return key


def _printable(field: str, value: object, show: Callable[[str], str] = str) -> str:
    if not isinstance(value, str):
        fail(field, f"must be a string, not {type(value).__name__}")
    # isprintable() is False for control characters, line breaks and lone surrogates.
    if not value.isprintable() or " " in value:
        fail(field, f"must not hold spaces or control characters, got {show(value)[:100]!r}")
    return value


def _without_credentials(url: str) -> str:
    """``url`` with its ``user:password@`` (if any) left out, for an error message."""
    return re.sub(r"^((?:[^:/?#]+:)?//)?[^/?#]*@", r"\1…@", url)


def check_base_url(value: object) -> str:
    """Check that ``value`` is an ``http(s)://host[:port][/path]`` URL that paths can extend."""
    url = _printable("base_url", value, _without_credentials)
    shown = _without_credentials(url)[:100]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (reading it is the check: a bad port raises ValueError)
    except ValueError as error:
        fail("base_url", f"is not a valid URL ({error}), got {shown!r}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail("base_url", f"must be an http:// or https:// URL, got {shown!r}")
    if parts.username is not None or parts.password is not None:
        # Not echoed: it holds a password. The Authorization header carries the API key.
        fail("base_url", "must not hold credentials (user:password@)")
    if "?" in url or "#" in url:
        fail("base_url", f"must not have a query or a fragment: paths are appended to it, "
                         f"got {shown!r}")
    try:
        httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as error:
        fail("base_url", f"is not a valid URL ({error}), got {shown!r}")
    return url.rstrip("/")


def check_base_path(value: object) -> str:
    """Check that ``value`` is empty or an absolute path (``/v1``) to put before every path."""
    path = _printable("base_path", value)
    if path and not path.startswith("/"):
        fail("base_path", f"must start with '/', got {path!r}")
    if "?" in path or "#" in path:
        fail("base_path", f"must be a path, without a query or a fragment, got {path!r}")
    return path.rstrip("/")


def check_seconds(field: str, value: object, *, or_none: str = "") -> float:
    """Check a wait in seconds: finite, above 0 and at most a day."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(field, f"must be a number of seconds{or_none}, not {type(value).__name__}")
    # NaN fails the comparison; a huge int is compared exactly, never converted.
    if not 0 < value <= MAX_WAIT_SECONDS:
        fail(field, f"must be above 0 and at most {MAX_WAIT_SECONDS:.0f} seconds{or_none}, "
                    f"got {value!r}")
    return float(value)


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
        key = check_api_key(api_key if api_key is not None
                            else os.environ.get("SEENN_API_KEY"))
        url = check_base_url(base_url if base_url is not None and base_url != ""
                             else os.environ.get("SEENN_BASE_URL") or DEFAULT_BASE_URL)
        if is_seenn_cloud(url) and not key.startswith(("sk_", "ut_")):
            fail("api_key", "Seenn Cloud needs a secret key (sk_live_… or sk_test_…) or a "
                            f"user token (ut_…); the key given is {describe_key(key)}")
        path = check_base_path(base_path)
        wait = check_seconds("timeout", timeout)
        limit = None if deadline is None else check_seconds("deadline", deadline,
                                                             or_none=" (or None)")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            fail("max_retries", f"must be an integer >= 0, got {max_retries!r}")

        self._api_key = key
        self.base_url = url
        self.base_path = path
        self.timeout = wait
        self.max_retries = max_retries
        self.deadline = limit
        self.debug = debug
        self.max_response_bytes = DEFAULT_MAX_RESPONSE_BYTES
        # The protocol extensions the backend offers (GET /healthz), once learned.
        self.extensions: dict[str, Any] | None = None
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
            # The size cap counts decoded bytes; a compressed answer could expand a
            # thousandfold within one chunk before the cap is checked.
            "Accept-Encoding": "identity",
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

    def _attempt_timeout(self, started: float, extra: float = 0.0) -> float:
        """One attempt's timeout; ``extra`` is time the backend is asked to hold it (a wait)."""
        if self.deadline is None:
            return self.timeout + extra
        remaining = self.deadline + extra - (self._monotonic() - started)
        return max(0.001, min(self.timeout + extra, remaining))

    # Reading responses -------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, REDACTED) if self._api_key in text else text

    def _excerpt(self, data: bytes, limit: int = 80) -> str:
        """A short, escaped, key-free excerpt of a body, for an error message."""
        text = self._redact(data[:limit].decode("utf-8", "replace"))
        return repr(text) + ("…" if len(data) > limit else "")

    def _body(self, response: httpx.Response) -> Body:
        return Body(response, self.max_response_bytes)

    def _handle_response(self, response: httpx.Response, body: Body,
                         expect: Shape | None = None) -> Any:
        """Return the decoded JSON of a 2xx response, or raise the mapped SeennError.

        With ``expect``, an answer it does not accept (or an empty one) is an error too.
        """
        status = response.status_code
        if not 200 <= status < 300:
            raise self._error_from_response(response, body.data())
        if body.overflow:
            raise SeennError(
                f"the backend's {status} answer is larger than {self.max_response_bytes} "
                "bytes; reading stopped there", code="RESPONSE_TOO_LARGE", status_code=status)
        data = body.data()
        if status == 204 or not data:
            if expect is None:
                return None
            raise SeennError(f"the backend answered {status} with an empty body",
                             code="INVALID_RESPONSE", status_code=status)
        try:
            value = jsonlib.loads(data)
        except (ValueError, RecursionError):
            kind = response.headers.get("Content-Type", "no content type")
            raise SeennError(
                f"the backend answered {status} with a body that is not JSON "
                f"({kind[:60]!r}): {self._excerpt(data)}",
                code="INVALID_RESPONSE", status_code=status) from None
        if expect is not None:
            wanted = expect(value)
            if wanted is not None:
                raise SeennError(
                    f"the backend answered {status} with JSON that is not {wanted}: "
                    f"{self._excerpt(data)}", code="INVALID_RESPONSE", status_code=status)
        return value

    def _error_from_response(self, response: httpx.Response, data: bytes) -> SeennError:
        status = response.status_code
        code: str | None = None
        message = ""
        details: dict[str, Any] | None = None
        try:
            body = jsonlib.loads(data) if data else None
        except (ValueError, RecursionError):
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
            message = f"HTTP {status} {response.reason_phrase}"
            if body is None and data.strip():
                message += f": {self._excerpt(data.strip(), 200)}"
        message = self._redact(message)
        cls = _STATUS_ERRORS.get(status)
        if cls is None:
            cls = ServerError if status >= 500 else SeennError
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self._time())
        if cls is RateLimitError:
            return RateLimitError(
                message, code=code, status_code=status, details=details,
                retry_after=retry_after,
                limit=parse_int(response.headers.get("X-RateLimit-Limit")),
                remaining=parse_int(response.headers.get("X-RateLimit-Remaining")),
            )
        if cls is ServerError:
            return ServerError(message, code=code, status_code=status, details=details,
                               retry_after=retry_after)
        if cls is SeennError:
            code = code or "HTTP_ERROR"
        return cls(message, code=code, status_code=status, details=details)

    def error_for(self, status: int, body: Any) -> SeennError:
        """The error a call answered ``status`` with ``body`` (decoded JSON) raises.

        For answers that arrive inside another answer (one result of ``POST /v1/events``),
        mapped exactly as a call's own answer would be.
        """
        data = b"" if body is None else jsonlib.dumps(body).encode("utf-8")
        return self._error_from_response(httpx.Response(status), data)

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
        "etag",
        "expect",
        "extra",
    )

    def __init__(self, client: BaseClient, method: str, path: str, json: Any,
                 params: Mapping[str, Any] | None, idempotency_key: str | None,
                 expect: Shape | None = None, if_none_match: str | None = None,
                 extra: float = 0.0) -> None:
        self._client = client
        self.expect = expect
        self._method = method
        self._url = client._url(path)
        self.etag: str | None = None
        # Seconds the backend may hold each attempt (a long poll), on top of the timeout.
        self.extra = extra
        # One Idempotency-Key per logical call, the same on every attempt.
        headers = client._headers(client._idempotency_key(method, idempotency_key))
        if if_none_match is not None:
            headers["If-None-Match"] = if_none_match
        self._kwargs: dict[str, Any] = {"method": method, "url": self._url, "json": json,
                                        "params": params, "headers": headers}
        self._started = client._monotonic()
        self._sent = self._started
        self._timeout = client.timeout
        self.attempt = 0

    def next_attempt(self) -> dict[str, Any]:
        """Return the keyword arguments of ``build_request`` for the next attempt."""
        self.attempt += 1
        self._timeout = self._client._attempt_timeout(self._started, self.extra)
        self._sent = self._client._monotonic()
        return {**self._kwargs, "timeout": self._timeout}

    def _log(self, outcome: str) -> None:
        client = self._client
        client._log_attempt(self._method, self._url, outcome, self.attempt,
                            client._monotonic() - self._sent)

    def answered(self, response: httpx.Response, body: Body) -> tuple[bool, Any]:
        """Return ``(True, json)`` when done, ``(False, delay)`` to retry; raise to give up."""
        self._log(str(response.status_code))
        self.etag = response.headers.get("ETag")
        if response.status_code == 304 and "If-None-Match" in self._kwargs["headers"]:
            return True, NOT_MODIFIED
        try:
            return True, self._client._handle_response(response, body, self.expect)
        except SeennError as error:
            return False, self._retry_or_raise(error, None)

    def check_decoded(self, response: httpx.Response, body: Body) -> None:
        """Raise for a 2xx answer whose body could not be decoded.

        An error answer keeps its status (and retries): only its text is lost.
        """
        status = response.status_code
        if body.unreadable and 200 <= status < 300:
            self._log("DecodingError")
            raise SeennError(f"the backend's {status} answer could not be decoded "
                             f"({body.unreadable})", code="INVALID_RESPONSE",
                             status_code=status)

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

    def _fetch(self, call: _Call) -> tuple[httpx.Response, Body]:
        """Send one attempt and read its answer, stopping at the size cap."""
        response = self._http.send(self._http.build_request(**call.next_attempt()),
                                   stream=True)
        try:
            body = self._body(response)
            if body.reading:
                # Raw, decoded here: httpx would inflate each chunk whole, whatever the cap.
                for chunk in response.iter_raw():
                    if body.feed_raw(chunk):
                        break
            call.check_decoded(response, body)
            return response, body
        finally:
            # Closing a response that was not read to its end drops the connection.
            response.close()

    def request(self, method: str, path: str, *, json: Any = None,
                params: Mapping[str, Any] | None = None,
                idempotency_key: str | None = None, expect: Shape | None = None) -> Any:
        """Send one logical call, retrying as the policy allows; return the decoded JSON.

        Args:
            method: The HTTP method.
            path: The path after the base path, e.g. ``/jobs``.
            json: The request body.
            params: The query parameters.
            idempotency_key: The key of a POST (a fresh one when omitted).
            expect: Checks the shape of a 2xx answer (``INVALID_RESPONSE`` if refused).
        """
        return self._run(_Call(self, method, path, json, params, idempotency_key, expect))

    def get_tagged(self, path: str, *, params: Mapping[str, Any] | None = None,
                   etag: str | None = None, wait: float = 0.0,
                   expect: Shape | None = None) -> tuple[Any, str | None]:
        """A GET with ``If-None-Match: etag``: ``(json or NOT_MODIFIED, the answer's ETag)``.

        ``wait`` is how long the backend may hold the request (a long poll): each
        attempt's timeout, and the call's deadline, grow by it.
        """
        call = _Call(self, "GET", path, None, params, None, expect, etag, wait)
        return self._run(call), call.etag

    def _run(self, call: _Call) -> Any:
        while True:
            try:
                response, body = self._fetch(call)
            except httpx.TransportError as exc:
                delay = call.transport_failed(exc)
            else:
                done, value = call.answered(response, body)
                if done:
                    return value
                delay = value
            self._sleep(delay)

    def send_once(self, method: str, path: str, *, json: Any = None,
                  idempotency_key: str | None = None, expect: Shape | None = None) -> Any:
        """Send one attempt, without retrying: for callers that schedule retries themselves."""
        call = _Call(self, method, path, json, None, idempotency_key, expect)
        try:
            response, body = self._fetch(call)
        except httpx.TransportError as exc:
            call._log(type(exc).__name__)
            raise self._transport_error(exc, call._timeout) from exc
        call._log(str(response.status_code))
        return self._handle_response(response, body, expect)


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

    async def _fetch(self, call: _Call) -> tuple[httpx.Response, Body]:
        """Send one attempt and read its answer, stopping at the size cap."""
        response = await self._http.send(self._http.build_request(**call.next_attempt()),
                                         stream=True)
        try:
            body = self._body(response)
            if body.reading:
                # Raw, decoded here: httpx would inflate each chunk whole, whatever the cap.
                async for chunk in response.aiter_raw():
                    if body.feed_raw(chunk):
                        break
            call.check_decoded(response, body)
            return response, body
        finally:
            await response.aclose()

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, Any] | None = None,
                      idempotency_key: str | None = None, expect: Shape | None = None) -> Any:
        """Send one logical call, retrying as the policy allows; return the decoded JSON.

        The arguments are those of :meth:`SyncHTTP.request`.
        """
        return await self._run(_Call(self, method, path, json, params, idempotency_key,
                                     expect))

    async def get_tagged(self, path: str, *, params: Mapping[str, Any] | None = None,
                         etag: str | None = None, wait: float = 0.0,
                         expect: Shape | None = None) -> tuple[Any, str | None]:
        """A conditional GET, awaited; see :meth:`SyncHTTP.get_tagged`."""
        call = _Call(self, "GET", path, None, params, None, expect, etag, wait)
        return await self._run(call), call.etag

    async def _run(self, call: _Call) -> Any:
        while True:
            try:
                response, body = await self._fetch(call)
            except httpx.TransportError as exc:
                delay = call.transport_failed(exc)
            else:
                done, value = call.answered(response, body)
                if done:
                    return value
                delay = value
            await self._sleep(delay)
